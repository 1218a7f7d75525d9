"""``penstock bench``: the network benchmarks, printed as a table or one JSON document.

Each benchmark is a subcommand of ``bench`` with two functions: ``add_<name>_parser``
adds its subparser and sets ``handler`` to ``run_<name>``, which runs it and returns the
exit status. ``BENCHMARKS`` lists the ``add_<name>_parser`` functions in the order
``penstock bench --help`` shows them; a new benchmark adds its pair here and its
function to that tuple.

The benchmark modules themselves are imported by ``run_<name>`` only, so that building
the parser does not load numpy and the whole stack.

``network-throughput`` and ``network-latency`` run with TLS when asked to
(``--ssl`` or an SSL preset). Without ``-D security.ssl.internal.keystore=...`` and
``-D security.ssl.internal.truststore=...`` they make a throwaway CA and one certificate
it signs (``penstock.testing.tls``, with the ``openssl`` command) in a temporary
directory that is removed when the command ends; sender and receiver share that identity.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

from penstock.cli._args import SubParsers, positive_int, usage_error
from penstock.cli._output import Column, format_count, is_terminal, print_table, rich_console

if TYPE_CHECKING:
    from penstock.bench.compare import Measurement
    from penstock.bench.local_pipeline import PipelineResult
    from penstock.bench.network import NetworkBenchmark, ThroughputResult

__all__ = [
    "BENCHMARKS",
    "DEFAULT_PRESET",
    "LOCAL_PIPELINE_RECORDS",
    "PRESET_NAMES",
    "add_bench_parser",
    "add_local_pipeline_parser",
    "add_network_latency_parser",
    "add_network_throughput_parser",
    "print_json",
    "run_local_pipeline",
    "run_network_latency",
    "run_network_throughput",
]

LOCAL_PIPELINE_RECORDS: Final = {"int8": 2_000_000, "bytes100": 1_000_000, "bytes1k": 300_000}
"""Records per kind of ``bench local-pipeline`` without ``--records``: about 2 s each."""

PRESET_NAMES: Final = (
    "100,100ms",
    "100,100ms,SSL",
    "1000,1ms",
    "1000,100ms",
    "1000,100ms,SSL",
    "broadcast",
    "skew",
)
"""The names of ``penstock.bench.network.PRESETS``, for help text without importing it."""

DEFAULT_PRESET: Final = "100,100ms"

T = TypeVar("T")

_KINDS: Final = ("int8", "bytes100", "bytes1k")
_KEYSTORE: Final = "security.ssl.internal.keystore"
_TRUSTSTORE: Final = "security.ssl.internal.truststore"
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


# -- network-throughput --------------------------------------------------------------


def add_network_throughput_parser(subparsers: SubParsers) -> None:
    """Adds ``bench network-throughput``: Flink's StreamNetworkThroughputBenchmark."""
    parser = subparsers.add_parser(
        "network-throughput",
        help="Flink's network throughput benchmark between two processes",
        description=(
            "Runs Flink's StreamNetworkThroughputBenchmark: W writer threads in a sender "
            "process, each writing a partition of C subpartitions round robin, read by a "
            "receiver process over loopback TCP with credit-based flow control (or local "
            "channels in one process with --local). Flags override the preset's values."
        ),
    )
    parser.add_argument(
        "preset",
        nargs="?",
        default=DEFAULT_PRESET,
        metavar="PRESET",
        help=f"one of {', '.join(PRESET_NAMES)}, or all (default: {DEFAULT_PRESET})",
    )
    parser.add_argument("--writers", type=positive_int, metavar="W", help="writer threads")
    parser.add_argument(
        "--channels", type=positive_int, metavar="C", help="subpartitions per writer"
    )
    _add_flush_timeout(parser, default=None)
    parser.add_argument(
        "--records",
        type=positive_int,
        metavar="N",
        help="records of all writers together (default: as the preset says)",
    )
    parser.add_argument(
        "--record-size",
        type=positive_int,
        metavar="BYTES",
        help="8 sends longs; more sends byte strings of that size (default: 8)",
    )
    parser.add_argument(
        "--ssl",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TLS on the data connections (default: as the preset says)",
    )
    parser.add_argument(
        "--local", action="store_true", help="sender and receiver in one process, no TCP"
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        metavar="K",
        help="run each preset K times and report the median and min–max (default: 1)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    _add_dynamic_properties(parser)
    parser.set_defaults(handler=run_network_throughput)


def run_network_throughput(args: argparse.Namespace) -> int:
    """Runs ``bench network-throughput`` as ``args`` asks; prints a table or JSON."""
    from penstock.bench import network
    from penstock.errors import ConfigurationError, PenstockError

    command = "bench network-throughput"
    if args.preset != "all" and args.preset not in network.PRESETS:
        message = (
            f"unknown preset {args.preset!r}; choose one of {', '.join(network.PRESETS)} or all"
        )
        return usage_error(command, message)
    names = list(network.PRESETS) if args.preset == "all" else [args.preset]
    config = _dynamic_config(command, args.dynamic)
    if config is None:
        return 2
    plan = [(name, _override(network.PRESETS[name], args, config)) for name in names]
    for name, benchmark in plan:
        if benchmark.records < benchmark.writers:
            message = (
                f"{name}: {benchmark.records} records cannot be shared by "
                f"{benchmark.writers} writers; pass --records {benchmark.writers} or more"
            )
            return usage_error(command, message)
    show_progress = not args.json and is_terminal()
    results: dict[str, list[ThroughputResult]] = {name: [] for name, _ in plan}
    with contextlib.ExitStack() as stack:
        # Local channels never use TLS: no certificates for them.
        remote = [benchmark for _, benchmark in plan if not benchmark.local]
        key_material = _key_material(command, remote, stack)
        if key_material is None:
            return 2
        plan = [(name, _with_key_material(b, key_material)) for name, b in plan]
        try:
            for _, benchmark in plan:
                _check_tls(benchmark)
            steps = [(name, b, run) for name, b in plan for run in range(args.repeat)]
            status = stack.enter_context(rich_console().status("")) if show_progress else None
            for step, (name, benchmark, run) in enumerate(steps, start=1):
                if status is not None:
                    again = f" (run {run + 1}/{args.repeat})" if args.repeat > 1 else ""
                    status.update(f"[{step}/{len(steps)}] {name}{again}")
                results[name].append(network.run_throughput(benchmark))
        except ConfigurationError as exc:
            return usage_error(command, str(exc))
        except (PenstockError, RuntimeError, TimeoutError) as exc:
            return _failed(command, exc)

    runs = list(results.items())
    summaries = [_summarize(name, name_results) for name, name_results in runs]
    if args.json:
        print_json("network-throughput", summaries)
        return 0
    _print_throughput_table(runs, local=args.local)
    if not all(result.sender_segments_returned for rs in results.values() for result in rs):
        print(
            "warning: the sender's network buffer pool was not complete at the end of a run",
            file=sys.stderr,
        )
    return 0


def _override(
    preset: NetworkBenchmark, args: argparse.Namespace, config: dict[str, str]
) -> NetworkBenchmark:
    """The preset with the values the flags give, and the ``-D`` properties."""
    from dataclasses import replace

    return replace(
        preset,
        writers=_given(args.writers, preset.writers),
        channels=_given(args.channels, preset.channels),
        flush_timeout_ms=_given(args.flush_timeout, preset.flush_timeout_ms),
        records=_given(args.records, preset.records),
        record_size=_given(args.record_size, preset.record_size),
        ssl=_given(args.ssl, preset.ssl),
        local=args.local or preset.local,
        config=config,
    )


def _given(flag: T | None, preset_value: T) -> T:
    return preset_value if flag is None else flag


def _median(results: Sequence[ThroughputResult]) -> ThroughputResult:
    """The run with the (lower) median records/ms: one real run, so its fields agree."""
    ranked = sorted(results, key=lambda result: result.records_per_ms)
    return ranked[(len(ranked) - 1) // 2]


def _summarize(name: str, results: Sequence[ThroughputResult]) -> dict[str, object]:
    median = _median(results)
    summary: dict[str, object] = {"preset": name, **median.to_dict()}
    if len(results) > 1:
        rates = [result.records_per_ms for result in results]
        summary["repeat"] = len(results)
        summary["records_per_ms_min"] = round(min(rates), 1)
        summary["records_per_ms_max"] = round(max(rates), 1)
        summary["runs"] = [result.to_dict() for result in results]
    return summary


def _print_throughput_table(
    runs: Sequence[tuple[str, Sequence[ThroughputResult]]], *, local: bool
) -> None:
    repeated = any(len(results) > 1 for _, results in runs)
    columns = [
        Column("preset"),
        Column("writers×channels"),
        Column("timeout", numeric=True),
        Column("SSL"),
        Column("records", numeric=True),
        Column("seconds", numeric=True),
        Column("records/ms", numeric=True),
    ]
    if repeated:
        columns.append(Column("min–max", numeric=True))
    columns += [Column("records/s", numeric=True), Column("MB/s", numeric=True)]
    rows: list[list[str]] = []
    for name, results in runs:
        median = _median(results)
        benchmark = median.benchmark
        row = [
            name,
            f"{benchmark.writers}×{benchmark.channels}",
            _timeout_text(benchmark.flush_timeout_ms),
            "yes" if benchmark.ssl and not benchmark.local else "no",
            format_count(median.records),
            f"{median.seconds:.3f}",
            f"{median.records_per_ms:,.1f}",
        ]
        if repeated:
            rates = [result.records_per_ms for result in results]
            row.append(f"{min(rates):,.1f}–{max(rates):,.1f}")
        row += [format_count(median.records_per_s), f"{median.mb_per_s:.2f}"]
        rows.append(row)
    notes = ["local channels"] if local else []
    if repeated:
        notes.append(f"median of {max(len(results) for _, results in runs)} runs")
    title = "penstock bench network-throughput"
    if notes:
        title += f" ({', '.join(notes)})"
    print_table(columns, rows, title=title)


# -- network-latency -----------------------------------------------------------------


def add_network_latency_parser(subparsers: SubParsers) -> None:
    """Adds ``bench network-latency``: one record at a time, send to receive."""
    parser = subparsers.add_parser(
        "network-latency",
        help="send-to-receive latency of single records between two processes",
        description=(
            "Sends timestamped records at a fixed rate from one writer over one channel "
            "to a receiver process (or a thread with --local) and reports the p50, p99 "
            "and maximum latency in microseconds."
        ),
    )
    _add_flush_timeout(parser, default=0)
    parser.add_argument(
        "--records",
        type=positive_int,
        default=5000,
        metavar="N",
        help="records to send (default: 5000)",
    )
    parser.add_argument(
        "--rate",
        type=_positive_float,
        default=1000.0,
        metavar="R",
        help="records per second (default: 1000)",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_int,
        default=1000,
        metavar="W",
        help="leading samples to drop (default: 1000; none if fewer arrive)",
    )
    parser.add_argument("--ssl", action="store_true", help="TLS on the data connection")
    parser.add_argument(
        "--local", action="store_true", help="sender and receiver in one process, no TCP"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    _add_dynamic_properties(parser)
    parser.set_defaults(handler=run_network_latency)


def run_network_latency(args: argparse.Namespace) -> int:
    """Runs ``bench network-latency`` as ``args`` asks; prints a table or JSON."""
    from penstock.bench import network
    from penstock.errors import ConfigurationError, PenstockError

    command = "bench network-latency"
    config = _dynamic_config(command, args.dynamic)
    if config is None:
        return 2
    benchmark = network.NetworkBenchmark(
        writers=1,
        channels=1,
        flush_timeout_ms=args.flush_timeout,
        records=args.records,
        ssl=args.ssl,
        local=args.local,
        config=config,
    )
    with contextlib.ExitStack() as stack:
        key_material = _key_material(command, [benchmark], stack)
        if key_material is None:
            return 2
        benchmark = _with_key_material(benchmark, key_material)
        try:
            _check_tls(benchmark)
            if not args.json and is_terminal():
                with rich_console().status(f"{args.records:,} records at {args.rate:g}/s"):
                    result = network.run_latency(benchmark, args.rate, args.warmup)
            else:
                result = network.run_latency(benchmark, args.rate, args.warmup)
        except ConfigurationError as exc:
            return usage_error(command, str(exc))
        except (PenstockError, RuntimeError, TimeoutError) as exc:
            return _failed(command, exc)
    if args.json:
        print_json("network-latency", [result.to_dict()])
        return 0
    columns = (
        Column("timeout", numeric=True),
        Column("SSL"),
        Column("samples", numeric=True),
        Column("p50 µs", numeric=True),
        Column("p99 µs", numeric=True),
        Column("max µs", numeric=True),
    )
    row = (
        _timeout_text(benchmark.flush_timeout_ms),
        "yes" if benchmark.ssl and not benchmark.local else "no",
        format_count(result.samples),
        f"{result.p50_us:,.1f}",
        f"{result.p99_us:,.1f}",
        f"{result.max_us:,.1f}",
    )
    title = f"penstock bench network-latency ({args.rate:g} records/s"
    title += ", local channels)" if args.local else ")"
    print_table(columns, [row], title=title)
    return 0


# -- shared by the network benchmarks --------------------------------------------------


def _add_flush_timeout(parser: argparse.ArgumentParser, default: int | None) -> None:
    shown = "as the preset says" if default is None else str(default)
    parser.add_argument(
        "--flush-timeout",
        type=_flush_timeout,
        default=default,
        metavar="MS",
        help=(
            "execution.buffer-timeout of the writers: 0 flushes every record, -1 only "
            f"full buffers (default: {shown})"
        ),
    )


def _add_dynamic_properties(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-D",
        dest="dynamic",
        action="append",
        default=[],
        metavar="key=value",
        help=(
            "set a configuration key of both ends (repeatable), e.g. "
            f"-D {_KEYSTORE}=tm.pem -D {_TRUSTSTORE}=ca.pem"
        ),
    )


def _flush_timeout(text: str) -> int:
    value = _integer(text)
    if value < -1:
        msg = f"must be -1, 0 or positive, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        msg = f"must be at least 0, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        msg = f"not an integer: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        msg = f"not a number: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not value > 0 or value == float("inf"):
        msg = f"must be a positive number, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _timeout_text(flush_timeout_ms: int) -> str:
    return "full" if flush_timeout_ms < 0 else f"{flush_timeout_ms} ms"


def _dynamic_config(command: str, properties: Iterable[str]) -> dict[str, str] | None:
    """The configuration, validated, by canonical key; ``None`` after a usage error.

    That is the ``PENSTOCK_*`` environment with the ``-D`` properties over it.
    """
    from penstock.config import Configuration
    from penstock.errors import ConfigurationError

    try:
        config = Configuration.load(dynamic=properties)
    except ConfigurationError as exc:
        usage_error(command, str(exc))
        return None
    pairs = (item.partition("=") for item in config.to_dynamic_properties())
    return {key: value for key, _, value in pairs}


def _key_material(
    command: str, benchmarks: Sequence[NetworkBenchmark], stack: contextlib.ExitStack
) -> dict[str, str] | None:
    """Keystore and truststore for benchmarks that need them; ``None`` after an error.

    Empty if no benchmark asks for TLS without key material of its own. Otherwise a
    throwaway CA and certificate, in a directory that ``stack`` removes.
    """
    if not any(_lacks_key_material(benchmark) for benchmark in benchmarks):
        return {}
    from penstock.testing import tls

    advice = f"pass -D {_KEYSTORE}=PEM -D {_TRUSTSTORE}=PEM instead"
    if not tls.openssl_available():
        message = f"--ssl needs the openssl command to make throwaway certificates; {advice}"
        usage_error(command, message)
        return None
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="penstock-tls-")))
    try:
        ca = tls.make_ca(directory, "penstock-bench-ca")
        identity = tls.make_certificate(directory, ca, "penstock-bench")
    except (RuntimeError, OSError, ValueError) as exc:
        usage_error(command, f"could not make throwaway certificates ({exc}); {advice}")
        return None
    return {_KEYSTORE: str(identity.combined), _TRUSTSTORE: str(ca.cert)}


def _lacks_key_material(benchmark: NetworkBenchmark) -> bool:
    return (
        benchmark.ssl and _KEYSTORE not in benchmark.config and _TRUSTSTORE not in benchmark.config
    )


def _with_key_material(
    benchmark: NetworkBenchmark, key_material: dict[str, str]
) -> NetworkBenchmark:
    from dataclasses import replace

    if not _lacks_key_material(benchmark):
        return benchmark
    return replace(benchmark, config={**key_material, **benchmark.config})


def _check_tls(benchmark: NetworkBenchmark) -> None:
    """Builds both ends' SSL contexts once here, so bad key material is a usage error.

    Otherwise the sender process would fail on it while the receiver waits for it.

    Raises:
        ConfigurationError: A keystore or truststore is missing, unreadable or invalid.
    """
    if not benchmark.ssl or benchmark.local:
        return
    from penstock.config import Configuration
    from penstock.transport.tls import SslOptions, client_context, server_context

    config = Configuration({**benchmark.config, "security.ssl.internal.enabled": "true"})
    options = SslOptions.from_configuration(config)
    if options.enabled:
        server_context(options)
        client_context(options)


def _failed(command: str, error: BaseException) -> int:
    print(f"penstock {command}: failed: {error}", file=sys.stderr)
    return 1


# -- compare ---------------------------------------------------------------------------


def add_compare_parser(subparsers: SubParsers) -> None:
    """Adds ``bench compare``: penstock and Flink side by side on Flink's workloads."""
    from penstock.bench.compare import COMPARISONS

    ids = ", ".join(comparison.id for comparison in COMPARISONS)
    parser = subparsers.add_parser(
        "compare",
        help="penstock against Apache Flink on the same workloads, interleaved",
        description=(
            "Runs each workload on penstock and on Flink (shared/bench/flink) in turn, "
            "each run a fresh process, and prints the median and range of each side and "
            f"their ratio. Workloads: {ids}."
        ),
    )
    parser.add_argument(
        "--only", default="", metavar="IDS", help="comma-separated workload ids (default: all)"
    )
    parser.add_argument(
        "--reps", type=positive_int, default=3, metavar="K", help="runs per side (default: 3)"
    )
    parser.add_argument(
        "--scale",
        type=_positive_float,
        default=1.0,
        metavar="F",
        help="multiply every throughput workload's record count (default: 1)",
    )
    parser.add_argument(
        "--flink-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the Flink harness (default: $PENSTOCK_FLINK_BENCH or ../shared/bench/flink)",
    )
    parser.add_argument("--penstock-only", action="store_true", help="do not run Flink")
    parser.add_argument(
        "--cpu-latency-us",
        type=_non_negative_int,
        default=None,
        metavar="US",
        help=(
            "hold the machine's CPU latency limit (/dev/cpu_dma_latency; Linux, root) at US "
            "during all runs of both sides; 0 keeps idle CPUs polling instead of halting, "
            "which on a virtual machine spares the runs the host's wake-up delays"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    """Runs ``bench compare`` as ``args`` asks; prints a table or JSON."""
    import penstock.bench.compare as comparing
    from penstock.bench.compare import COMPARISONS, FlinkHarness

    wanted = [item for item in args.only.split(",") if item]
    known = {comparison.id for comparison in COMPARISONS}
    unknown = [item for item in wanted if item not in known]
    if unknown:
        return usage_error(
            "bench compare", f"unknown workload {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    selected = [c for c in COMPARISONS if not wanted or c.id in wanted]
    flink: FlinkHarness | None = None
    if not args.penstock_only:
        located = FlinkHarness.locate(args.flink_dir)
        if isinstance(located, str):
            print(f"penstock bench compare: {located} Running penstock alone.", file=sys.stderr)
        else:
            flink = located
    limit = args.cpu_latency_us
    with contextlib.ExitStack() as held:
        if limit is not None:
            try:
                held.enter_context(comparing.cpu_latency_limit(limit, comparing.CPU_DMA_LATENCY))
            except ValueError as exc:
                return usage_error("bench compare", str(exc))
            except OSError as exc:
                hint = (
                    " --cpu-latency-us needs Linux and write access to it (root)."
                    if isinstance(exc, FileNotFoundError | PermissionError)
                    else ""
                )
                print(
                    f"penstock bench compare: cannot hold the CPU latency limit: {exc}.{hint}",
                    file=sys.stderr,
                )
                return 1
        results = comparing.compare(
            selected,
            reps=args.reps,
            scale=args.scale,
            flink=flink,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    if args.json:
        print_json("compare", [result.to_dict() | {"cpu_latency_us": limit} for result in results])
        return 0
    rows = []
    for result in results:
        data = result.to_dict()
        unit = "p99 µs" if result.comparison.is_latency else "records/s"
        rows.append(
            [
                result.comparison.id,
                unit,
                _cell(data["penstock_median"], data["penstock_range"]),
                _cell(data["flink_median"], data["flink_range"]),
                "-" if data["ratio"] is None else f"{data['ratio']:.2f}",
                _steal_cell(data["penstock_steal_s"], data["flink_steal_s"]),
            ]
        )
    print_table(
        [
            Column("workload"),
            Column("metric"),
            Column("penstock median [min-max]", numeric=True),
            Column("Flink median [min-max]", numeric=True),
            Column("ratio", numeric=True),
            Column("host steal s", numeric=True),
        ],
        rows,
        title="penstock bench compare (ratio: penstock/Flink; for latency Flink/penstock)",
    )
    if limit is not None:
        print(f"The CPU latency limit was held at {limit} µs during all runs.")
    runs = [run for r in results for run in (*r.penstock, *r.flink) if run.steal_s is not None]
    disturbed = [run for run in runs if _disturbed(run)]
    if disturbed:
        print(
            f"{len(disturbed)} of {len(runs)} runs lost more than "
            f"{_DISTURBED_SHARE:.0%} of a CPU to the host over their wall time (host steal: "
            "CPU seconds over all CPUs, start-up included, penstock's runs / Flink's). "
            "Their rows compare less well; rerun them with --only."
        )
    failed = [run.error for r in results for run in (*r.penstock, *r.flink) if not run.ok]
    for error in failed:
        print(f"penstock bench compare: a run failed: {error}", file=sys.stderr)
    return 1 if failed else 0


_DISTURBED_SHARE: Final = 0.1


def _disturbed(run: Measurement) -> bool:
    """Whether the host took a noticeable share of a CPU from ``run`` (its steal)."""
    steal = run.steal_s or 0.0
    return run.process_wall_s > 0 and steal > _DISTURBED_SHARE * run.process_wall_s


def _steal_cell(penstock: object, flink: object) -> str:
    def seconds(value: object) -> str:
        return f"{value:.1f}" if isinstance(value, int | float) else "-"

    if penstock is None and flink is None:
        return "-"
    return f"{seconds(penstock)} / {seconds(flink)}"


def _cell(median: object, spread: object) -> str:
    if not isinstance(median, int | float):
        return "-"
    low, high = spread if isinstance(spread, tuple | list) else (median, median)
    return f"{_short(median)} [{_short(low)}-{_short(high)}]"


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


# -- the group -----------------------------------------------------------------------

BENCHMARKS: Final[tuple[Callable[[SubParsers], None], ...]] = (
    add_local_pipeline_parser,
    add_network_throughput_parser,
    add_network_latency_parser,
    add_compare_parser,
)
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
