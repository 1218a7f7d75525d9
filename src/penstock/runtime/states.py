"""ExecutionState: the life of one subtask, with Flink's names."""

from __future__ import annotations

from enum import Enum
from typing import Final

__all__ = ["TERMINAL_STATES", "ExecutionState"]


class ExecutionState(Enum):
    """Flink's execution states.

    CREATED → DEPLOYING → INITIALIZING → RUNNING → FINISHED, or from any non-terminal
    state → CANCELING → CANCELED, or → FAILED.
    """

    CREATED = "CREATED"
    DEPLOYING = "DEPLOYING"
    INITIALIZING = "INITIALIZING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    CANCELING = "CANCELING"
    CANCELED = "CANCELED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES: Final = frozenset(
    {ExecutionState.FINISHED, ExecutionState.CANCELED, ExecutionState.FAILED}
)
