"""The DataStream API: PyFlink's environment and streams, and the graphs they build.

``environment`` holds ``StreamExecutionEnvironment``, ``datastream`` the streams
(``DataStream``, ``KeyedStream``, ``DataStreamSink``) and ``stream_graph`` the
StreamGraph that a job's operators become and its chaining into a JobGraph.
"""

from __future__ import annotations

from penstock.api.datastream import DataStream, DataStreamSink, KeyedStream
from penstock.api.environment import StreamExecutionEnvironment
from penstock.api.stream_graph import StreamGraph

__all__ = [
    "DataStream",
    "DataStreamSink",
    "KeyedStream",
    "StreamExecutionEnvironment",
    "StreamGraph",
]
