"""penstock: Apache Flink's network stack in Python.

Records travel length-prefixed through fixed-size network buffers drawn from bounded
pools; a slow consumer slows its producers down (backpressure) instead of growing memory.

The DataStream API mirrors PyFlink's::

    from penstock import StreamExecutionEnvironment

    env = StreamExecutionEnvironment.get_execution_environment({"parallelism.default": 2})
    env.from_sequence(1, 100).map(lambda x: x * x).print()
    env.execute("squares")

The names below load on first use, so ``import penstock`` stays cheap for processes
that need only part of it (a TaskManager, the command line).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from penstock.api.datastream import DataStream, DataStreamSink, KeyedStream
    from penstock.api.environment import StreamExecutionEnvironment
    from penstock.config import Configuration
    from penstock.errors import (
        ClusterError,
        ConfigurationError,
        IllegalStateError,
        JobExecutionError,
        PenstockError,
        RemoteError,
        SerializationError,
        TaskCancelledError,
        TaskError,
    )
    from penstock.functions import (
        FilterFunction,
        FlatMapFunction,
        KeyedProcessFunction,
        KeySelector,
        MapFunction,
        Partitioner,
        ReduceFunction,
        SinkFunction,
    )
    from penstock.runtime.client import JobExecutionResult
    from penstock.task.operator import RuntimeContext

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS: Final = {
    "StreamExecutionEnvironment": "penstock.api.environment",
    "DataStream": "penstock.api.datastream",
    "DataStreamSink": "penstock.api.datastream",
    "KeyedStream": "penstock.api.datastream",
    "Configuration": "penstock.config",
    "JobExecutionResult": "penstock.runtime.client",
    "RuntimeContext": "penstock.task.operator",
    "FilterFunction": "penstock.functions",
    "FlatMapFunction": "penstock.functions",
    "KeySelector": "penstock.functions",
    "KeyedProcessFunction": "penstock.functions",
    "MapFunction": "penstock.functions",
    "Partitioner": "penstock.functions",
    "ReduceFunction": "penstock.functions",
    "SinkFunction": "penstock.functions",
    "ClusterError": "penstock.errors",
    "ConfigurationError": "penstock.errors",
    "IllegalStateError": "penstock.errors",
    "JobExecutionError": "penstock.errors",
    "PenstockError": "penstock.errors",
    "RemoteError": "penstock.errors",
    "SerializationError": "penstock.errors",
    "TaskCancelledError": "penstock.errors",
    "TaskError": "penstock.errors",
}

__all__ = [
    "ClusterError",
    "Configuration",
    "ConfigurationError",
    "DataStream",
    "DataStreamSink",
    "FilterFunction",
    "FlatMapFunction",
    "IllegalStateError",
    "JobExecutionError",
    "JobExecutionResult",
    "KeySelector",
    "KeyedProcessFunction",
    "KeyedStream",
    "MapFunction",
    "Partitioner",
    "PenstockError",
    "ReduceFunction",
    "RemoteError",
    "RuntimeContext",
    "SerializationError",
    "SinkFunction",
    "StreamExecutionEnvironment",
    "TaskCancelledError",
    "TaskError",
    "__version__",
]


def __getattr__(name: str) -> object:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
