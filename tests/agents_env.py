"""The virtual environment that runs LiveKit Agents workers in tests. livekit-agents pins its own `livekit` (rtc)
version, which clashes with the one the test extra installs, so it lives apart: created on first use (or by .ci/run)
from tests/agents-requirements.txt, at TERN_AGENTS_VENV or .venv-agents in the checkout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "tests" / "agents-requirements.txt"


def agents_python() -> Path:
    """The environment's interpreter, after installing what tests/agents-requirements.txt pins if it has not."""
    venv = Path(os.environ.get("TERN_AGENTS_VENV", ROOT / ".venv-agents"))
    python = venv / "bin" / "python"
    installed = venv / "tern-requirements.txt"  # what was installed, so a changed pin reinstalls
    wanted = REQUIREMENTS.read_text()
    if not python.exists() or not installed.exists() or installed.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
        installed.write_text(wanted)
    return python


if __name__ == "__main__":  # .ci/run prepares it before the tests
    print(agents_python())
