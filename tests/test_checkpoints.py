"""Checkpoints are verified: a corrupt, truncated or incomplete one is never loaded; resume falls back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from ups.runner import run
from ups.training.checkpoint import Checkpointer, CheckpointError, load_consolidated, pack
from ups.training.checksums import CHECKSUMS, verify


def _shard(folder: Path) -> Path:
    return next(p for p in folder.iterdir() if p.suffix == ".distcp")


def _flip_one_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def saved(tmp_path: Path) -> Checkpointer:
    ckpt = Checkpointer(tmp_path / "checkpoints" / "operator")
    for step in (2, 4):
        ckpt.save(
            {"model": {"w": torch.arange(64.0) * step}, "trainer": pack({"step": step})}, f"step_{step:08d}", step
        )
    return ckpt


@pytest.mark.parametrize("damage", ["bit", "truncate", "missing", "checksums"])
def test_damage_is_found_and_names_the_file(saved: Checkpointer, damage: str) -> None:
    folder = saved.root / "step_00000004"
    verify(folder)  # intact
    shard = _shard(folder)
    if damage == "bit":
        _flip_one_byte(shard)
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage == "missing":
        shard.unlink()
    else:
        (folder / CHECKSUMS).write_text("{not json")
    name = CHECKSUMS if damage == "checksums" else shard.name
    with pytest.raises(CheckpointError, match=name):
        Checkpointer.load_into(folder, {"model": {"w": torch.zeros(64)}})


def test_an_unreadable_meta_is_skipped_and_the_next_checkpoint_found(saved: Checkpointer, caplog) -> None:
    (saved.root / "step_00000004" / "meta.json").write_text("{")
    with caplog.at_level(logging.WARNING, logger="ups.training.checkpoint"):
        assert saved.latest().name == "step_00000002"
    assert "step_00000004/meta.json is unreadable" in caplog.text


def test_resume_falls_back_past_a_corrupt_final_checkpoint_bit_identically(tiny_cfg, tmp_path: Path, caplog) -> None:
    common = ["task=darcy2d", "trainer.max_steps=9", "trainer.steps_per_epoch=3"]
    straight = run(tiny_cfg(*common, f"paths.output_dir={tmp_path / 'a'}"))
    run(tiny_cfg(*common, f"paths.output_dir={tmp_path / 'b'}"))
    root = tmp_path / "b" / "checkpoints" / "operator"
    for name in ("final", "step_00000009"):  # the two newest: the run must go back to step 6
        _flip_one_byte(_shard(root / name))
    with caplog.at_level(logging.WARNING, logger="ups.training.resume"):
        again = run(tiny_cfg(*common, f"paths.output_dir={tmp_path / 'b'}"))
    assert f"checkpoint {root / 'final'} is not usable" in caplog.text and "does not match its checksum" in caplog.text
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [*range(1, 10), 7, 8, 9]  # redone from step 6
    a, b = (
        load_consolidated(d / "checkpoints" / "operator" / "final")["model"] for d in (tmp_path / "a", tmp_path / "b")
    )
    assert all(torch.equal(a[k], b[k]) for k in a) and again["step"] == straight["step"] == 9
    for folder in [p for p in root.iterdir() if not p.name.startswith(".")]:
        _flip_one_byte(_shard(folder))
    with pytest.raises(CheckpointError, match="no usable checkpoint of stage operator"):
        run(tiny_cfg(*common, f"paths.output_dir={tmp_path / 'b'}"))
    # unreadable metadata everywhere is no excuse to start afresh over the damaged checkpoints either
    for folder in [p for p in root.iterdir() if not p.name.startswith(".")]:
        (folder / "meta.json").write_text("{")
    with pytest.raises(CheckpointError, match="no usable checkpoint of stage operator"):
        run(tiny_cfg(*common, f"paths.output_dir={tmp_path / 'b'}"))


def test_a_write_error_names_what_was_being_written(tmp_path: Path) -> None:
    import errno

    from torch.distributed.checkpoint.api import CheckpointException

    from ups.training.failures import writing

    with pytest.raises(OSError, match=rf"No space left on device while writing {tmp_path}/m.jsonl; free some space"):
        with writing(tmp_path / "m.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")  # what a full disk raises on close: no name
    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match=r"No space left on device while writing .*step_4 \(rank 1\)") as caught:
        with writing(tmp_path / "step_4"):
            raise CheckpointException("save failed", {1: (full, None)})  # a BaseException, from torch's writer
    assert caught.value.errno == errno.ENOSPC
    with pytest.raises(FileNotFoundError, match="already named"):  # an error that names its file is left alone
        with writing(tmp_path / "x"):
            raise FileNotFoundError(errno.ENOENT, "already named", str(tmp_path / "y"))


def test_a_short_write_on_a_full_disk_is_named_as_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's file writer reports a full disk as a RuntimeError without errno; the free space says why."""
    import errno
    import shutil

    from torch.distributed.checkpoint.api import CheckpointException

    from ups.training import failures

    short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(failures.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(
        OSError,
        match=r"No space left on device \(.*unexpected pos.*\) while writing .*final\.tmp "
        r"\(rank 0\); free some space",
    ) as caught:
        with failures.writing(tmp_path / ".final.tmp"):
            raise CheckpointException("save failed", {0: (short, None)})
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.setattr(failures.shutil, "disk_usage", lambda p: usage._replace(free=2**30))
    with pytest.raises(OSError, match=r"unexpected pos 704 vs 598 while writing") as caught:  # not a full disk
        with failures.writing(tmp_path / ".final.tmp"):
            raise CheckpointException("save failed", {0: (short, None)})
    assert caught.value.errno is None
