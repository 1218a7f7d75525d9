"""RSS of each TaskManager through a long backpressured job.

A fast source feeds, across two TaskManager processes, a sink that is throttled to a
fixed rate, so the source is backpressured for the whole run. Every second the resident
set size of each TaskManager process is read from /proc; the table shows, per process,
the configured network memory, the peak RSS, the peak minus the network memory, and the
growth from the end of the warm-up to the end of the run (flat means bounded memory).

    .venv/bin/python benchmarks/rss_backpressure.py --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time

from penstock import StreamExecutionEnvironment
from penstock.config import Configuration, network_memory_bytes
from penstock.runtime.client import observe_jobs

MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def task_manager_pids() -> list[int]:
    """TaskManager processes that are children of this process."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if parent == os.getpid() and b"penstock.runtime.taskmanager" in command:
            pids.append(int(entry))
    return sorted(pids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--sink-rate", type=float, default=200_000.0, help="records/s")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = Configuration(
        {
            "execution.target": "minicluster",
            "minicluster.number-of-taskmanagers": 2,
            "taskmanager.numberOfTaskSlots": 1,
        }
    )
    env = StreamExecutionEnvironment.get_execution_environment(config)
    deadline_s = args.seconds
    rate = args.sink_rate

    def throttled_sink_job() -> None:
        source = env.from_sequence(1, 10**12).slot_sharing_group("source")
        payloads = source.map(lambda v: (v, b"x" * 100))

        def slow_sink() -> object:
            # Built in the TaskManager: a sink that takes 1/rate seconds per record.
            from penstock.functions import SinkFunction

            class Throttled(SinkFunction):
                def open(self, runtime_context: object) -> None:
                    self.count = 0
                    self.started = time.monotonic()

                def invoke(self, value: object) -> None:
                    self.count += 1
                    if self.count % 1000 == 0:
                        due = self.started + self.count / rate
                        delay = due - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)

            return Throttled()

        payloads.rebalance().add_sink(slow_sink()).slot_sharing_group("sink")

    throttled_sink_job()
    samples: dict[int, list[tuple[float, int]]] = {}
    started = time.monotonic()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            now = time.monotonic() - started
            for pid in task_manager_pids():
                with contextlib.suppress(OSError):  # the process may just have ended
                    samples.setdefault(pid, []).append((now, rss_bytes(pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def on_update(_: object) -> None:
        if time.monotonic() - started > deadline_s:
            raise TimeoutError("the measured run is over")

    try:
        with observe_jobs(on_update):
            env.execute("rss under backpressure")
    except Exception as exc:  # the observer ends the endless job after --seconds
        if "the measured run is over" not in repr(exc) and "TimeoutError" not in repr(exc):
            raise
    finally:
        stop.set()
        sampler.join()

    network = network_memory_bytes(config)
    rows = []
    for pid, series in sorted(samples.items()):
        after = [rss for at, rss in series if at >= args.warmup]
        if not after:
            continue
        peak = max(rss for _, rss in series)
        rows.append(
            {
                "pid": pid,
                "samples": len(series),
                "network_memory_mib": network / MIB,
                "peak_rss_mib": round(peak / MIB, 1),
                "peak_minus_network_mib": round((peak - network) / MIB, 1),
                "rss_after_warmup_first_mib": round(after[0] / MIB, 1),
                "rss_after_warmup_last_mib": round(after[-1] / MIB, 1),
                "growth_after_warmup_mib": round((after[-1] - after[0]) / MIB, 1),
            }
        )
    if args.json:
        print(
            json.dumps({"benchmark": "rss-backpressure", "seconds": args.seconds, "results": rows})
        )
        return
    print(f"RSS of each TaskManager over {args.seconds:.0f} s of backpressure (MiB)")
    print("pid      samples  network  peak RSS  peak-network  after warm-up first→last  growth")
    for row in rows:
        print(
            f"{row['pid']:<8} {row['samples']:>7} {row['network_memory_mib']:>8.0f} "
            f"{row['peak_rss_mib']:>9} {row['peak_minus_network_mib']:>13} "
            f"{row['rss_after_warmup_first_mib']:>12} → {row['rss_after_warmup_last_mib']:<10}"
            f"{row['growth_after_warmup_mib']:>7}"
        )


if __name__ == "__main__":
    main()
