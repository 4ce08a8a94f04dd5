"""The run report: both figures from a tiny run, what is left when parts of the run are gone, the notebook."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from ups.evaluation.report import main, timeline, write_report  # noqa: E402
from ups.runner import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ("trainer.max_steps=6", "trainer.steps_per_epoch=3", "optim.warmup_steps=1")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra", [(), ("callbacks=[default,ema]", "callbacks.ema.decay=0.5")], ids=["weights", "ema"])
def test_report_draws_curves_and_rollouts_of_the_run(tiny_cfg, caplog, extra) -> None:
    run_dir = Path(run(tiny_cfg(*TINY, *extra))["run_dir"])
    with caplog.at_level(logging.INFO, logger="ups.evaluation.report"):
        paths = write_report(run_dir)
    assert [p.name for p in paths] == ["curves.png", "rollouts.png"]
    assert all(p.parent == run_dir / "report" for p in paths)
    for p in paths:
        width, height = png_size(p)
        assert p.stat().st_size > 10_000 and width >= 800 and height >= 400, (p, width, height)
    # The report rebuilds data, model and weights (EMA's when the run evaluated with them) as the run
    # did: on the one validation trajectory per task (16 samples -> 1), its nRMSE is the run's own.
    last_val = [r for r in records(run_dir) if r["kind"] == "eval" and r["split"] == "val"][-1]
    logged = {m.split(":")[0]: float(m.rsplit(" ", 1)[1]) for m in caplog.messages if "trajectory 0: nRMSE" in m}
    assert logged.keys() == {"advection1d", "darcy2d"}
    for task, value in logged.items():
        assert value == pytest.approx(last_val[f"nrmse/{task}"], rel=1e-4)


def test_curves_survive_missing_eval_records_and_data(tiny_cfg, data_dir: Path, tmp_path: Path, capsys, caplog) -> None:
    own_data = tmp_path / "data"
    shutil.copytree(data_dir, own_data)  # removed below; the session's data stays for other tests
    run_dir = Path(run(tiny_cfg(*TINY, f"paths.data_dir={own_data}"))["run_dir"])
    train_only = [r for r in records(run_dir) if r["kind"] == "train"]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_only))
    shutil.rmtree(own_data)
    out, _ = tmp_path / "figs", capsys.readouterr()  # drop the run's own printout
    with caplog.at_level(logging.WARNING, logger="ups.evaluation.report"):
        assert main([str(run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out / "curves.png")]
    assert png_size(out / "curves.png")[0] >= 800 and (out / "curves.png").stat().st_size > 10_000
    assert not (out / "rollouts.png").exists()
    message = " ".join(caplog.messages)
    assert "rollouts.png not written" in message and str(own_data) in message and "--data-dir" in message


def test_missing_checkpoint_is_reported_and_a_bad_split_refused(tiny_cfg, caplog) -> None:
    run_dir = Path(run(tiny_cfg("trainer.max_steps=2", "trainer.steps_per_epoch=2", "task=advection1d"))["run_dir"])
    shutil.rmtree(run_dir / "checkpoints")
    with caplog.at_level(logging.WARNING, logger="ups.evaluation.report"):
        assert [p.name for p in write_report(run_dir)] == ["curves.png"]
    assert "no complete checkpoint" in caplog.text
    with pytest.raises(ValueError, match="split"):
        write_report(run_dir, split="train")


def test_timeline_keeps_the_last_record_of_a_repeated_step_and_marks_the_restart() -> None:
    def train(stage: str, step: int, offset: int, loss: float) -> dict:
        return {"kind": "train", "stage": stage, "step": offset + step, "stage_step": step, "loss": loss}

    recs = [train("a", s, 0, float(s)) for s in (1, 2, 3)]
    recs += [{"kind": "eval", "stage": "a", "split": "val", "step": 3, "stage_step": 3, "nrmse/mean": 1.0}]
    recs += [train("a", s, 0, 10.0 + s) for s in (2, 3, 4)]  # resumed after step 1
    recs += [train("b", s, 4, 1.0) for s in (1, 2)]  # the next stage continues the global step
    recs += [{"kind": "eval", "stage": "final", "split": "test", "step": 6, "nrmse/mean": 0.5}]
    tl = timeline(recs)
    assert list(tl["train"]) == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in tl["train"].values()] == [1.0, 12.0, 13.0, 14.0, 1.0, 1.0]
    assert tl["restarts"] == [2] and tl["stages"] == {"a": 0, "b": 4}
    assert list(tl["val"]) == [3] and tl["test"]["nrmse/mean"] == 0.5


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install "ups\[plot\]"'):
        write_report(tmp_path)


def test_quickstart_notebook_is_valid_and_its_code_compiles() -> None:
    nb = json.loads((ROOT / "notebooks" / "quickstart.ipynb").read_text())
    assert nb["nbformat"] == 4 and len(nb["cells"]) >= 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and any(c["cell_type"] == "markdown" for c in nb["cells"])
    for i, cell in enumerate(code):
        assert cell["outputs"] == [] and cell["execution_count"] is None
        compile("".join(cell["source"]), f"quickstart.ipynb cell {i}", "exec")
    text = "".join("".join(c["source"]) for c in code)
    for needed in ("register_configs()", "initialize_config_module", "run(cfg)", "write_report", "metrics.jsonl"):
        assert needed in text
