"""The names ``penstock`` exports: what ``__all__`` promises resolves, and nothing else."""

from __future__ import annotations

import importlib

import pytest

import penstock
from penstock import errors, functions
from penstock.api.datastream import DataStream, DataStreamSink, KeyedStream
from penstock.api.environment import StreamExecutionEnvironment
from penstock.config import Configuration

EXPECTED = {
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
}


def test_all_lists_exactly_the_public_names_sorted() -> None:
    assert set(penstock.__all__) == EXPECTED
    assert len(penstock.__all__) == len(EXPECTED)
    assert penstock.__all__ == sorted(penstock.__all__)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(penstock, name) is not None
    assert name in dir(penstock)


def test_exports_are_the_objects_of_their_modules() -> None:
    assert penstock.StreamExecutionEnvironment is StreamExecutionEnvironment
    assert penstock.DataStream is DataStream
    assert penstock.KeyedStream is KeyedStream
    assert penstock.DataStreamSink is DataStreamSink
    assert penstock.Configuration is Configuration
    assert penstock.PenstockError is errors.PenstockError
    assert penstock.JobExecutionError is errors.JobExecutionError
    assert penstock.MapFunction is functions.MapFunction
    client = importlib.import_module("penstock.runtime.client")
    assert penstock.JobExecutionResult is client.JobExecutionResult


def test_star_import_gives_every_name() -> None:
    namespace: dict[str, object] = {}
    exec("from penstock import *", namespace)
    assert set(namespace) >= EXPECTED


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'StreamEnvironment'"):
        _ = penstock.StreamEnvironment


def test_the_version_is_a_string() -> None:
    assert isinstance(penstock.__version__, str)
    assert penstock.__version__.count(".") == 2
