"""LiveKit-style identifiers (RM_, PA_, TR_ prefixes) and wall-clock milliseconds."""
from __future__ import annotations

import secrets
import string
import time

_ID_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """LiveKit-style ids: clients check the RM_/PA_/TR_ prefixes."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


def now_ms() -> int:
    return int(time.time() * 1000)
