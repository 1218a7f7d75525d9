"""The in-process data-plane benchmark: writer → partition → local channel → deserializer.

Three record shapes (8-byte ints, 100-byte and 1 KiB byte strings), each emitted one
record at a time (``emit``) and in batches (``emit_batch``), measured two ways:

* ``one-thread``: one thread alternates between producing a chunk that fits in the
  pool and draining it, so the figure is the per-record cost of the stack itself;
* ``threaded``: a producer thread and a consumer thread, as a TaskManager runs them,
  with buffer hand-offs between them and the GIL shared.

Records/s count records deserialized at the consumer; MB/s counts payload bytes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Final

from penstock.serialization.types import BytesSerializer, IntSerializer, TypeSerializer
from penstock.testing.pipeline import LocalPipeline, PipelineOptions

__all__ = ["RECORD_KINDS", "PipelineResult", "run_local_pipeline", "run_matrix"]

RECORD_KINDS: Final = ("int8", "bytes100", "bytes1k")
MODES: Final = ("one-thread", "threaded")


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """One measured configuration."""

    record_kind: str
    payload_bytes: int
    mode: str
    batch: bool
    records: int
    seconds: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.records * self.payload_bytes / self.seconds / 1e6

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["records_per_s"] = round(self.records_per_s)
        data["mb_per_s"] = round(self.mb_per_s, 1)
        return data


def _records(kind: str, count: int) -> tuple[Sequence[object], TypeSerializer[object], int]:
    if kind == "int8":
        return range(count), IntSerializer(), 8  # type: ignore[return-value]
    size = 100 if kind == "bytes100" else 1024
    return [bytes(size)] * count, BytesSerializer(), size  # type: ignore[return-value]


def run_local_pipeline(
    kind: str,
    records: int,
    mode: str = "one-thread",
    batch: bool = False,
    buffer_timeout_ms: int = -1,
    batch_size: int = 1000,
) -> PipelineResult:
    """Measures one configuration; see the module docstring."""
    data, serializer, payload = _records(kind, records)
    options = PipelineOptions(num_channels=1, buffer_timeout_ms=buffer_timeout_ms)
    with LocalPipeline(serializer, options=options) as pipeline:
        if mode == "one-thread":
            # Four buffers' worth per chunk: fits the pool, amortizes the drain.
            chunk = max(1, 4 * options.segment_size // (payload + 4))
            started = time.perf_counter()
            counts = pipeline.run_in_one_thread(data, chunk, batch=batch)
        else:
            started = time.perf_counter()
            pipeline.run(data, batch_size if batch else 0, collect=False)
            counts = pipeline.consumed_counts
        elapsed = time.perf_counter() - started
    received = sum(counts)
    if received != records:
        msg = f"lost records: sent {records}, received {received}"
        raise AssertionError(msg)
    return PipelineResult(kind, payload, mode, batch, received, elapsed)


def run_matrix(records: dict[str, int] | None = None) -> list[PipelineResult]:
    """Every record kind × mode × emit style, with per-kind record counts."""
    counts = records or {"int8": 2_000_000, "bytes100": 1_000_000, "bytes1k": 300_000}
    return [
        run_local_pipeline(kind, counts[kind], mode, batch)
        for kind in RECORD_KINDS
        for mode in MODES
        for batch in (False, True)
    ]
