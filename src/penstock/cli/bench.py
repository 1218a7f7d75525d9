"""``penstock bench``: the network benchmarks, printed as a table or one JSON document.

Each benchmark is a subcommand of ``bench`` with two functions: ``add_<name>_parser``
adds its subparser and sets ``handler`` to ``run_<name>``, which runs it and returns the
exit status. ``BENCHMARKS`` lists the ``add_<name>_parser`` functions in the order
``penstock bench --help`` shows them; a new benchmark adds its pair here and its
function to that tuple.

The benchmark modules themselves are imported by ``run_<name>`` only, so that building
the parser does not load numpy and the whole stack.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from penstock.cli._args import SubParsers, positive_int
from penstock.cli._output import Column, format_count, is_terminal, print_table, rich_console

if TYPE_CHECKING:
    from penstock.bench.local_pipeline import PipelineResult

__all__ = [
    "BENCHMARKS",
    "LOCAL_PIPELINE_RECORDS",
    "add_bench_parser",
    "add_local_pipeline_parser",
    "print_json",
    "run_local_pipeline",
]

LOCAL_PIPELINE_RECORDS: Final = {"int8": 2_000_000, "bytes100": 1_000_000, "bytes1k": 300_000}
"""Records per kind of ``bench local-pipeline`` without ``--records``: about 2 s each."""

_KINDS: Final = ("int8", "bytes100", "bytes1k")
_MODES: Final = ("one-thread", "threaded")


def print_json(benchmark: str, results: Sequence[dict[str, object]]) -> None:
    """Prints ``{"benchmark": ..., "results": [...]}`` as one JSON document on stdout."""
    json.dump({"benchmark": benchmark, "results": list(results)}, sys.stdout, indent=2)
    print()


# -- local-pipeline ------------------------------------------------------------------


def add_local_pipeline_parser(subparsers: SubParsers) -> None:
    """Adds ``bench local-pipeline``: writer → partition → local channel → deserializer."""
    parser = subparsers.add_parser(
        "local-pipeline",
        help="the in-process data plane, one producer and one consumer",
        description=(
            "Measures records/s and MB/s through RecordWriter, ResultPartition, "
            "LocalInputChannel, SingleInputGate and RecordDeserializer in one process: "
            "8-byte ints, 100-byte and 1 KiB byte strings, emitted one by one and in "
            "batches, in one thread and with a producer and a consumer thread."
        ),
    )
    parser.add_argument(
        "--records",
        type=positive_int,
        metavar="N",
        help=(
            "records per configuration (default: "
            + ", ".join(f"{count:,} {kind}" for kind, count in LOCAL_PIPELINE_RECORDS.items())
            + ")"
        ),
    )
    parser.add_argument(
        "--kind", choices=(*_KINDS, "all"), default="all", help="record kind (default: all)"
    )
    parser.add_argument(
        "--mode", choices=(*_MODES, "all"), default="all", help="threading (default: all)"
    )
    emit = parser.add_mutually_exclusive_group()
    emit.add_argument(
        "--batch",
        dest="emit",
        action="store_const",
        const="batch",
        help="emit records in batches (emit_batch) only",
    )
    emit.add_argument(
        "--no-batch",
        dest="emit",
        action="store_const",
        const="record",
        help="emit records one at a time (emit) only",
    )
    emit.add_argument(
        "--both",
        dest="emit",
        action="store_const",
        const="both",
        help="both ways (the default)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run_local_pipeline, emit="both")


def run_local_pipeline(args: argparse.Namespace) -> int:
    """Runs ``bench local-pipeline`` as ``args`` asks; prints a table or JSON."""
    from penstock.bench import local_pipeline

    kinds = _KINDS if args.kind == "all" else (args.kind,)
    modes = _MODES if args.mode == "all" else (args.mode,)
    batches = {"record": (False,), "batch": (True,), "both": (False, True)}[args.emit]
    plan = [(kind, mode, batch) for kind in kinds for mode in modes for batch in batches]
    show_progress = not args.json and is_terminal()

    def measure(kind: str, mode: str, batch: bool) -> PipelineResult:
        records = args.records or LOCAL_PIPELINE_RECORDS[kind]
        return local_pipeline.run_local_pipeline(kind, records, mode, batch)

    results: list[PipelineResult] = []
    if show_progress:
        console = rich_console()
        with console.status("") as status:
            for step, (kind, mode, batch) in enumerate(plan, start=1):
                status.update(f"[{step}/{len(plan)}] {kind} {mode} {_emit_name(batch)}")
                results.append(measure(kind, mode, batch))
    else:
        results = [measure(kind, mode, batch) for kind, mode, batch in plan]

    if args.json:
        print_json("local-pipeline", [result.to_dict() for result in results])
        return 0
    columns = (
        Column("kind"),
        Column("bytes", numeric=True),
        Column("mode"),
        Column("emit"),
        Column("records", numeric=True),
        Column("seconds", numeric=True),
        Column("records/s", numeric=True),
        Column("MB/s", numeric=True),
    )
    rows = [
        (
            result.record_kind,
            str(result.payload_bytes),
            result.mode,
            _emit_name(result.batch),
            format_count(result.records),
            f"{result.seconds:.3f}",
            format_count(result.records_per_s),
            f"{result.mb_per_s:.1f}",
        )
        for result in results
    ]
    print_table(columns, rows, title="penstock bench local-pipeline")
    return 0


def _emit_name(batch: bool) -> str:
    return "emit_batch" if batch else "emit"


# -- the group -----------------------------------------------------------------------

BENCHMARKS: Final[tuple[Callable[[SubParsers], None], ...]] = (add_local_pipeline_parser,)
"""The ``add_<name>_parser`` function of every benchmark, in help order."""


def add_bench_parser(subparsers: SubParsers) -> None:
    """Adds ``bench`` and, under it, every benchmark of ``BENCHMARKS``."""
    parser = subparsers.add_parser(
        "bench",
        help="run a network benchmark and print a table or JSON",
        description="Runs a network benchmark and prints a table (or JSON with --json).",
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for add_parser in BENCHMARKS:
        add_parser(benchmarks)

    def missing_benchmark(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(handler=missing_benchmark)
