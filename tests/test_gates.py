"""Gates: the small evaluation after each stage, a failed gate stopping stage=all after its first stage
with its own exit status and the numbers, passing gates running to the end, the checks themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_cfg
from ups.config import ConfigError
from ups.gates import GATE_EXIT, build_gates, judge
from ups.runner import run

STAGES = [
    "task=pdebench2",
    "stage=all",
    "stages.operator.steps=4",
    "stages.diffusion.steps=2",
    "stages.consistency.steps=2",
    "stages.steady.steps=2",
    "trainer.steps_per_epoch=2",
    "stages.diffusion.objective.steps=2",
    "data.eval_samples=2",
    "eval.small=2",
]


def _scores(model: dict, persistence: dict | None = None, mean_field: dict | None = None) -> dict:
    as_nrmse = lambda d: {f"nrmse/{k}": v for k, v in (d or {}).items()}  # noqa: E731
    return {"model": as_nrmse(model), "persistence": as_nrmse(persistence), "mean_field": as_nrmse(mean_field)}


def test_each_kind_of_gate_checks_its_numbers(tmp_path: Path) -> None:
    now = _scores({"a": 0.2, "b": 0.5, "mean": 0.35}, {"a": 1.0}, {"a": 0.3, "b": 0.4})
    before = _scores({"a": 0.1, "b": 0.5, "mean": 0.3})
    gates = {
        "trivial": {"kind": "beats_trivial"},
        "previous": {"kind": "no_worse_than_previous", "tolerance": 0.5},
        "budget": {"kind": "below", "value": 0.3},
    }
    assert judge(gates, now, before) == [
        "trivial: b 0.5 not below mean_field 0.4",
        "previous: a 0.2 worse than the previous stage's 0.1",
        "budget: mean 0.35 not below 0.3",
    ]
    assert judge({"previous": {"kind": "no_worse_than_previous"}}, now, None) == []  # the first stage
    ref = tmp_path / "ref"
    (ref / "eval").mkdir(parents=True)
    (ref / "eval" / "final_test.json").write_text(json.dumps({"results": {"model": {"nrmse/a": 0.21, "nrmse/b": 0.6}}}))
    assert judge({"entry": {"kind": "beats_run", "run": str(ref), "margin": 0.1}}, now, None) == [
        f"entry: a 0.2 not below {ref}'s 0.21 by 0.1"
    ]


@pytest.mark.parametrize(
    "gate,needle",
    [({"kind": "beats_trivia"}, "not one of beats_trivial"), ({"kind": "below", "valeu": 1}, "gates.g \\(below\\)")],
)
def test_a_misspelt_gate_is_a_config_error(gate: dict, needle: str) -> None:
    cfg = compose_cfg(["paths.data_dir=d", "paths.output_dir=o"])
    cfg.gates = {"g": gate}
    with pytest.raises(ConfigError, match=needle):
        build_gates(cfg)
    assert build_gates(compose_cfg(["gates=none", "paths.data_dir=d", "paths.output_dir=o"])) is None
    dropped = compose_cfg(
        ["gates=default", "gates.previous=null", "gates.trivial=null", "paths.data_dir=d", "paths.output_dir=o"]
    )
    assert build_gates(dropped) is None


def test_a_gate_that_cannot_pass_stops_stage_all_after_its_first_stage(tmp_path: Path, data_dir: Path) -> None:
    run_dir, board = tmp_path / "run", tmp_path / "board"
    args = [
        sys.executable,
        "-m",
        "ups.train",
        "model=tiny",
        "hardware=cpu",
        "hardware.threads=1",
        f"paths.data_dir={data_dir}",
        "data.generate=true",
        f"paths.output_dir={run_dir}",
        "trainer.batch_size=8",
        *STAGES,
        "gates=default",
        "+gates.never.kind=below",
        "+gates.never.value=0",
        f"leaderboard.path={board}",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == GATE_EXIT, proc.stderr[-3000:]
    assert "a gate failed after stage operator" in proc.stderr and "never: mean " in proc.stderr
    record = json.loads((run_dir / "eval" / "gates.json").read_text())
    assert not record["passed"] and record["stage"] == "operator" and list(record["stages"]) == ["operator"]
    assert any(f.startswith("never: mean ") and f.endswith("not below 0") for f in record["failed"])
    assert set(record["stages"]["operator"]) == {"model", "persistence", "mean_field"}
    assert not (run_dir / "checkpoints" / "diffusion").exists() and not (run_dir / "eval" / "final_test.json").exists()
    row = json.loads((board / "rows.jsonl").read_text())
    assert row["status"] == "gated" and "never: mean" in row["why"]
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)  # a rerun stops too
    assert again.returncode == GATE_EXIT and "gates stopped this run after stage operator" in again.stderr


def test_passing_gates_let_stage_all_run_to_the_end(tiny_cfg) -> None:
    cfg = tiny_cfg(*STAGES, "gates=default", "gates.trivial.margin=-1e9", "gates.previous.tolerance=1e9")
    result = run(cfg)
    record = json.loads((Path(result["run_dir"]) / "eval" / "gates.json").read_text())
    assert record["passed"] and list(record["stages"]) == ["operator", "diffusion", "consistency", "steady"]
    assert (Path(result["run_dir"]) / "eval" / "final_test.json").exists()
