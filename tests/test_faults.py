"""The fault-injection harness (``python -m ups.faults``): its measurements can fail, a few cheap
scenarios pass end to end in the default suite, and the whole table passes under ``-m slow``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from ups.faults.harness import Proc, changed, data_checksums
from ups.faults.resume_scenarios import redone_steps
from ups.records import read_records


def test_one_paragraph_means_short_and_without_a_traceback() -> None:
    assert Proc(1, 1.0, "", "Data error: x.hdf5 is missing\n").paragraph() == (True, 1)
    traceback = 'Traceback (most recent call last):\n  File "a.py", line 1\nOSError: full\n'
    assert Proc(1, 1.0, "", traceback).paragraph()[0] is False
    assert Proc(1, 1.0, "", "".join(f"line {i}\n" for i in range(20))).paragraph()[0] is False
    assert Proc(1, 1.0, "", "").paragraph()[0] is False


def test_data_checksums_see_a_modified_or_removed_file_but_not_ups_caches(tmp_path: Path) -> None:
    (tmp_path / "a.hdf5").write_bytes(b"one")
    (tmp_path / "b.hdf5").write_bytes(b"two")
    before = data_checksums(tmp_path)
    (tmp_path / ".ups_stats").mkdir()
    (tmp_path / ".ups_stats" / "s.json").write_text("{}")
    assert changed(before, data_checksums(tmp_path)) == 0
    (tmp_path / "a.hdf5").write_bytes(b"ONE")
    (tmp_path / "b.hdf5").unlink()
    assert changed(before, data_checksums(tmp_path)) == 2


def test_redone_steps_counts_steps_logged_twice(tmp_path: Path) -> None:
    steps = [1, 2, 3, 4, 3, 4, 5]  # a resume from step 2 after step 4 was logged
    lines = [json.dumps({"kind": "train", "step": s}) for s in steps] + ['{"kind": "tra']  # torn last line
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert redone_steps(tmp_path) == 2


def _faults(tmp_path: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ups.faults", "--workdir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow  # over 30 s on 2 cores: pytest -m slow (the default suite stays near 15 min)
def test_cheap_scenarios_pass_end_to_end(tmp_path: Path) -> None:
    out = _faults(tmp_path, "--only", "lr-nan,mistyped-data-dir,group-file-test-split-n48", timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / "faults.json").read_text())
    assert [r["ok"] for r in rows] == [True, True, True] and all(r["data_changed"] == 0 for r in rows)
    assert "| 11 | lr-nan |" in (tmp_path / "faults.md").read_text()


def test_an_unknown_scenario_is_refused(tmp_path: Path) -> None:
    out = _faults(tmp_path, "--only", "no-such-thing", timeout=60)
    assert out.returncode == 2 and "unknown scenarios ['no-such-thing']" in out.stderr


@pytest.mark.slow
def test_every_fault_scenario_behaves_as_documented(tmp_path: Path) -> None:
    out = _faults(tmp_path, timeout=1800)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]


def test_read_records_skips_a_torn_line_and_allows_a_missing_file_only_when_told(tmp_path: Path, caplog) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n\n{"step": 2}\n{"st')
    with caplog.at_level(logging.WARNING, logger="ups.records"):
        assert read_records(tmp_path) == [{"step": 1}, {"step": 2}]
    assert "metrics.jsonl:4 is not JSON" in caplog.text
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "absent")
    assert read_records(tmp_path / "absent", missing_ok=True) == []
