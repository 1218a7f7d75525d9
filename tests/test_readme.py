"""README.md stays true to the code: options, module names, metrics and the first job."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from penstock.api.environment import StreamExecutionEnvironment
from penstock.config import EXECUTION_TARGET, OPTIONS, Configuration
from penstock.task.metrics import METRIC_NAMES

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

FIRST_JOB_HEADING = "## A first job in ten lines\n"


def _section(heading: str) -> str:
    """The README's text from ``heading`` to the next heading of the same level."""
    assert heading in README, f"README.md lacks the heading {heading.strip()!r}"
    rest = README.split(heading, 1)[1]
    return rest.split("\n## ", 1)[0]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def _first_job() -> tuple[str, str]:
    """The first job's code and the output the README says it prints."""
    section = _section(FIRST_JOB_HEADING)
    blocks = _python_blocks(section)
    assert blocks, "the first-job section has no python block"
    assert "It prints:\n\n```\n" in section
    shown = section.split("It prints:\n\n```\n", 1)[1].split("```", 1)[0]
    return blocks[0], shown


def _run(code: str, name: str) -> None:
    exec(compile(code, name, "exec"), {"__name__": "__readme__"})


# -- configuration ----------------------------------------------------------------------


def test_every_configuration_key_is_documented() -> None:
    rows = {match.group(1) for match in re.finditer(r"^\| `([^`]+)` \| ", README, re.MULTILINE)}
    missing = [key for key in OPTIONS if key not in rows]
    assert not missing, f"README.md's configuration table lacks {missing}"


def test_the_configuration_table_names_only_real_keys() -> None:
    table = _section("## Configuration\n")
    keys = re.findall(r"^\| `([^`]+)` \| ", table, re.MULTILINE)
    assert keys
    unknown = [key for key in keys if key not in OPTIONS]
    assert not unknown, f"README.md documents keys that do not exist: {unknown}"


# -- module and class names -------------------------------------------------------------


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[end:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


_DOTTED_NAMES = sorted(
    {match.rstrip(".") for match in re.findall(r"\bpenstock(?:\.[A-Za-z_]\w*)+", README)}
)


def test_the_readme_names_modules() -> None:
    assert len(_DOTTED_NAMES) > 40


@pytest.mark.parametrize("name", _DOTTED_NAMES)
def test_every_named_module_and_class_exists(name: str) -> None:
    assert _resolves(name), f"README.md names {name}, which does not exist"


def test_the_resolver_refuses_names_that_do_not_exist() -> None:
    assert _resolves("penstock.transport.credit.CreditBasedReader")
    assert not _resolves("penstock.transport.credit.NoSuchReader")
    assert not _resolves("penstock.no_such_module")


# -- metrics ----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_every_task_metric_is_documented(metric: str) -> None:
    table = _section("## Metrics\n")
    assert re.search(rf"^\| `{metric}` \| \S", table, re.MULTILINE), (
        f"README.md's metrics table lacks {metric}"
    )


def test_the_metrics_table_names_only_real_metrics() -> None:
    table = _section("## Metrics\n")
    names = re.findall(r"^\| `([A-Za-z]+)` \| ", table, re.MULTILINE)
    assert sorted(names) == sorted(METRIC_NAMES)


# -- the first job ----------------------------------------------------------------------


@pytest.fixture
def local_target(monkeypatch: pytest.MonkeyPatch) -> list[StreamExecutionEnvironment]:
    """Every new environment runs its jobs on ``execution.target: local``; lists them."""
    environments: list[StreamExecutionEnvironment] = []
    original = StreamExecutionEnvironment.get_execution_environment

    def local_environment(
        config: Configuration | Mapping[str, object] | None = None,
    ) -> StreamExecutionEnvironment:
        env = original(config)
        env.configuration.set("execution.target", "local")
        environments.append(env)
        return env

    monkeypatch.setattr(StreamExecutionEnvironment, "get_execution_environment", local_environment)
    return environments


def _targets(environments: list[StreamExecutionEnvironment]) -> list[str]:
    return [env.configuration.get(EXECUTION_TARGET) for env in environments]


def test_the_first_job_prints_what_the_readme_shows(
    local_target: list[StreamExecutionEnvironment], capsys: pytest.CaptureFixture[str]
) -> None:
    code, shown = _first_job()
    _run(code, "README.md, first job")
    assert capsys.readouterr().out == shown
    assert _targets(local_target) == ["local"]


def test_every_python_example_runs(
    local_target: list[StreamExecutionEnvironment], capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = _python_blocks(README)
    assert len(blocks) >= 2
    for number, block in enumerate(blocks):
        _run(block, f"README.md, python block {number}")
    capsys.readouterr()
    assert _targets(local_target) == ["local"] * len(blocks)


@pytest.mark.cluster
def test_the_first_job_prints_the_same_on_the_default_minicluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, shown = _first_job()
    assert "execution.target" not in code  # so it runs on the default target
    _run(code, "README.md, first job")
    assert capsys.readouterr().out == shown


def test_make_bench_passes_options_that_pytest_accepts() -> None:
    """The benchmarks' own command line, as ``make bench`` gives it, collects them."""
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^bench:.*\n\t\$\(BIN\)/python -m pytest (.+)$", makefile, re.MULTILINE)
    assert match is not None
    arguments = [*match.group(1).split(), "--collect-only", "-q"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "benchmarks/test_local_pipeline_bench.py" in done.stdout
