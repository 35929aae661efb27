"""Durations as operators type them on a command line (`90`, `90s`, `15m`, `6h`, `1d`), for every `tern` command.

A leaf module so that signaling/cli.py (`tern token --valid-for`) and the clients it dispatches to
(`tern load-test --duration`) share one parser without importing each other.
"""
from __future__ import annotations

import argparse
import re

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in `90`, `90s`, `15m`, `6h` or `1d`; an argparse type, so bad input is a usage error."""
    match = _DURATION.match(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 3600, 30m, 6h, 1d)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
