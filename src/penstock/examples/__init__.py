"""Jobs that ship with penstock: ``penstock run --example NAME`` or ``python -m``.

Each example module defines ``JOB_NAME``, ``build(env)`` (adds the job's operators to
a ``StreamExecutionEnvironment``), ``describe_results(records)`` (a line about what the
job's sinks reported back, or ``None``) and ``main()``.

* ``word_count`` (the default of ``penstock run``): generated sentences, split into
  words, keyed by word and counted; the sink reports the most frequent words.
* ``slow_sink``: a fast source, a map and a sink that cannot keep up. The sink's
  input buffers fill, then the map's output pool, then the source's: backpressure
  moves upstream, and the source and map vertices show HIGH.
* ``broadcast``: a small stream broadcast to every subtask of a parallel consumer.

Sinks report back with ``penstock.examples.reporting.ReportingSink``: it keeps what it
needs while the job runs and, when its input ends, sends a few records to the client
through ``RuntimeContext.results_sink``, which ``observe_jobs(..., on_records=...)``
receives.
Nothing prints in the TaskManager processes, so a live view stays intact.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Final

__all__ = ["EXAMPLES", "load_example"]

EXAMPLES: Final = ("word_count", "slow_sink", "broadcast")
"""The names of the bundled examples; the first is the default of ``penstock run``."""


def load_example(name: str) -> ModuleType:
    """The module of example ``name`` (``-`` and ``_`` are the same).

    Raises:
        KeyError: No example has that name.
    """
    module = name.replace("-", "_")
    if module not in EXAMPLES:
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{module}")
