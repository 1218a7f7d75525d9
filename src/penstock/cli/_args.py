"""Argument types the command modules share."""

from __future__ import annotations

import argparse
import sys
from typing import TypeAlias

__all__ = ["SubParsers", "positive_int", "usage_error"]

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``ArgumentParser.add_subparsers`` returns; ``add_<name>_parser`` functions take it."""


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        msg = f"not an integer: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def usage_error(command: str, message: str) -> int:
    """Prints ``penstock COMMAND: error: MESSAGE`` on stderr, as argparse does; returns 2."""
    print(f"penstock {command}: error: {message}", file=sys.stderr)
    return 2
