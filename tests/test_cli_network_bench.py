"""``penstock bench network-throughput`` and ``network-latency`` through ``main``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from penstock.bench import network
from penstock.bench.network import PRESETS
from penstock.cli import main
from penstock.cli.bench import DEFAULT_PRESET, PRESET_NAMES
from penstock.testing import tls

needs_openssl = pytest.mark.skipif(
    not tls.openssl_available(), reason="the openssl command is needed to create certificates"
)


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, object]]:
    """Runs ``penstock bench ARGV --json`` and returns its results."""
    status = main(["bench", *argv, "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    document = json.loads(captured.out)
    assert document["benchmark"] == argv[0]
    results: list[dict[str, object]] = document["results"]
    return results


def as_float(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


# -- network-throughput --------------------------------------------------------------


@pytest.mark.cluster
def test_throughput_between_two_processes(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--records", "20000", "--writers", "2", "--channels", "4"]
    [result] = run_json(capsys, "network-throughput", *argv)

    assert result["preset"] == DEFAULT_PRESET
    assert (result["writers"], result["channels"], result["flush_timeout_ms"]) == (2, 4, 100)
    assert result["local"] is False
    assert result["ssl"] is False
    assert result["received"] == result["records"] == 20000
    assert as_float(result["records_per_ms"]) > 0
    assert as_float(result["records_per_s"]) > 0
    assert as_float(result["mb_per_s"]) > 0
    assert result["sender_segments_returned"] is True


def test_throughput_with_local_channels(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--records", "20000", "--writers", "2", "--channels", "4", "--local"]
    [result] = run_json(capsys, "network-throughput", *argv)

    assert result["local"] is True
    assert result["received"] == 20000
    assert as_float(result["records_per_ms"]) > 0
    assert result["sender_segments_returned"] is True


def test_flags_override_the_preset(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["skew", "--records", "3000", "--channels", "3", "--flush-timeout", "-1"]
    [result] = run_json(capsys, "network-throughput", *argv, "--record-size", "32", "--local")

    skew = PRESETS["skew"]
    assert result["preset"] == "skew"
    assert result["skew"] is True
    assert result["writers"] == skew.writers
    assert (result["channels"], result["flush_timeout_ms"], result["record_size"]) == (3, -1, 32)
    # 3000 records over 10 writers: 300 each, all received.
    assert result["received"] == 3000
    assert as_float(result["mb_per_s"]) == pytest.approx(
        as_float(result["records_per_s"]) * 32 / 1e6, rel=0.01
    )


def test_repeat_reports_the_median_run_and_the_range(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--records", "4000", "--channels", "2", "--local", "--repeat", "3"]
    [result] = run_json(capsys, "network-throughput", *argv)

    runs = result["runs"]
    assert isinstance(runs, list)
    assert len(runs) == result["repeat"] == 3
    rates = sorted(as_float(run["records_per_ms"]) for run in runs)
    assert result["records_per_ms"] == rates[1]
    assert (result["records_per_ms_min"], result["records_per_ms_max"]) == (rates[0], rates[2])


def test_throughput_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "network-throughput", "--records", "4000", "--channels", "2", "--local"]
    assert main(argv) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "penstock bench network-throughput (local channels)"
    assert lines[1].split() == [
        "preset", "writers×channels", "timeout", "SSL", "records",
        "seconds", "records/ms", "records/s", "MB/s",
    ]  # fmt: skip
    cells = lines[3].split()
    assert cells[:6] == [DEFAULT_PRESET, "4×2", "100", "ms", "no", "4,000"]


def test_unknown_preset_lists_the_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "network-throughput", "100,10ms"]) == 2

    err = capsys.readouterr().err
    assert "unknown preset '100,10ms'" in err
    for name in PRESETS:
        assert name in err


def test_preset_names_in_the_help_are_the_presets() -> None:
    assert tuple(PRESETS) == PRESET_NAMES
    assert DEFAULT_PRESET in PRESETS


@pytest.mark.parametrize(
    "argv",
    [
        ["network-throughput", "--flush-timeout", "-2"],
        ["network-throughput", "--writers", "0"],
        ["network-throughput", "skew", "--records", "9"],
        ["network-throughput", "-D", "no-equals-sign"],
        ["network-throughput", "-D", "taskmanager.memory.segment-size=lots"],
        ["network-latency", "--rate", "0"],
        ["network-latency", "--warmup", "-1"],
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *argv]) == 2
    assert "error" in capsys.readouterr().err


# -- TLS -------------------------------------------------------------------------------


@needs_openssl
@pytest.mark.cluster
def test_ssl_preset_with_generated_certificates(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    made_in: list[Path] = []
    make_ca = tls.make_ca

    def recording_make_ca(directory: Path, name: str = "ca") -> tls.CertificateAuthority:
        made_in.append(directory)
        return make_ca(directory, name)

    monkeypatch.setattr(tls, "make_ca", recording_make_ca)
    argv = ["100,100ms,SSL", "--records", "20000", "--channels", "4"]
    [result] = run_json(capsys, "network-throughput", *argv)

    assert result["ssl"] is True
    assert result["local"] is False
    assert result["received"] == 20000
    assert as_float(result["records_per_ms"]) > 0
    # One throwaway CA, in a directory that is gone once the command is over.
    assert len(made_in) == 1
    assert not made_in[0].exists()


def test_missing_openssl_asks_for_key_material(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["bench", "network-throughput", "1000,100ms,SSL", "--records", "100"]) == 2

    err = capsys.readouterr().err
    assert "openssl" in err
    assert "-D security.ssl.internal.keystore=" in err
    assert "-D security.ssl.internal.truststore=" in err


def test_no_certificates_for_local_channels(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no openssl, and none needed
    [result] = run_json(capsys, "network-throughput", "--ssl", "--local", "--records", "400")

    assert result["received"] == 400


def test_given_key_material_is_checked_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    argv = ["bench", "network-throughput", "--ssl", "--records", "100"]
    keys = [
        "-D", f"security.ssl.internal.keystore={missing}",
        "-D", f"security.ssl.internal.truststore={missing}",
    ]  # fmt: skip
    assert main([*argv, *keys]) == 2

    err = capsys.readouterr().err
    assert "security.ssl.internal.keystore" in err
    assert str(missing) in err


def test_half_the_key_material_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keystore = tmp_path / "keystore.pem"
    argv = ["bench", "network-latency", "--ssl"]
    assert main([*argv, "-D", f"security.ssl.internal.keystore={keystore}"]) == 2

    assert "security.ssl.internal.truststore" in capsys.readouterr().err


# -- network-latency -----------------------------------------------------------------


@pytest.mark.cluster
def test_latency_between_two_processes(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--records", "300", "--rate", "2000", "--warmup", "50"]
    [result] = run_json(capsys, "network-latency", *argv)

    assert result["samples"] == 250
    assert result["flush_timeout_ms"] == 0
    assert result["local"] is False
    p50, p99, most = (as_float(result[key]) for key in ("p50_us", "p99_us", "max_us"))
    assert 0 < p50 <= p99 <= most


def test_latency_table_with_local_channels(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "network-latency", "--records", "200", "--rate", "5000", "--warmup", "20"]
    assert main([*argv, "--flush-timeout", "1", "--local"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "penstock bench network-latency (5000 records/s, local channels)"
    assert lines[1].split() == ["timeout", "SSL", "samples", "p50", "µs", "p99", "µs", "max", "µs"]
    assert lines[3].split()[:4] == ["1", "ms", "no", "180"]


def sender_that_exits_at_once(benchmark: object, connection: object) -> None:
    """Stands in for the sender process's main: it dies before saying anything."""
    os._exit(3)


def test_a_sender_process_that_dies_is_reported_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The spawned process imports this module to find the function by name.
    monkeypatch.setattr(network, "_sender_main", sender_that_exits_at_once)
    status = main(["bench", "network-throughput", "--records", "1000"])
    assert status == 1
    err = capsys.readouterr().err
    assert "the sender process ended (exit status 3)" in err
    assert "Traceback" not in err
