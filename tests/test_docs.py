"""The docs match the code: every config option is documented, CI runs the README's commands."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_option_is_in_the_configuration_reference() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for group in sorted(p for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "__pycache__"):
        row = next((line for line in text.splitlines() if line.startswith(f"| `{group.name}` |")), None)
        assert row is not None, f"group {group.name} missing from docs/configuration.md"
        for option in group.glob("*.yaml"):
            assert f"`{option.stem}`" in row, f"{group.name}={option.stem} missing from docs/configuration.md"


def test_ci_runs_the_readme_quickstart_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme.split("## Quickstart")[1].split("\n## ")[0], re.S)
    assert len(commands) == 2, "the Quickstart has exactly two commands"
    assert commands[1].endswith("pytest")
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_train_main_stays_thin() -> None:
    assert len((ROOT / "ups" / "train.py").read_text().splitlines()) <= 60
    big = [p for p in (ROOT / "ups").rglob("*.py") if len(p.read_text().splitlines()) > 400]
    assert not big, f"files over 400 lines: {big}"
