"""README.md stays true to the code: options, module names and the runnable examples."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from penstock.config import OPTIONS

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_configuration_key_is_documented() -> None:
    rows = {match.group(1) for match in re.finditer(r"^\| `([^`]+)` \| ", README, re.MULTILINE)}
    missing = [key for key in OPTIONS if key not in rows]
    assert not missing, f"README.md's configuration table lacks {missing}"


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


@pytest.mark.parametrize("name", sorted(set(re.findall(r"`(penstock(?:\.[A-Za-z_]+)+)`", README))))
def test_every_named_module_and_class_exists(name: str) -> None:
    assert _resolves(name), f"README.md names {name}, which does not exist"


def test_the_python_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    assert blocks
    for number, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {number}", "exec"), {})
    printed = capsys.readouterr().out
    shown = README.split("It prints:\n\n```\n", 1)[1].split("```", 1)[0]
    assert printed.startswith(shown)
