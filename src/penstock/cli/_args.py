"""Argument types the command modules share."""

from __future__ import annotations

import argparse
import sys
from typing import TypeAlias

__all__ = ["SubParsers", "port_number", "positive_int", "usage_error"]

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``ArgumentParser.add_subparsers`` returns; ``add_<name>_parser`` functions take it."""


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    return _int_within(text, 1, None)


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free one) to 65535."""
    return _int_within(text, 0, 65535)


def _int_within(text: str, low: int, high: int | None) -> int:
    try:
        value = int(text)
    except ValueError:
        msg = f"not an integer: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < low:
        msg = f"must be at least {low}, got {value}"
        raise argparse.ArgumentTypeError(msg)
    if high is not None and value > high:
        msg = f"must be at most {high}, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def usage_error(command: str, message: str) -> int:
    """Prints ``penstock COMMAND: error: MESSAGE`` on stderr, as argparse does; returns 2."""
    print(f"penstock {command}: error: {message}", file=sys.stderr)
    return 2
