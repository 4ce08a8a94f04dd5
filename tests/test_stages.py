"""The staged trainer (docs/stages.md): every stage's objective falls when its network trains, the
frozen parts stay fixed, stage=all runs end to end with its table and plots, resumes bit-identically
in the middle of the diffusion stage, and runs on 2 ranks under DDP and FSDP2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import crash_run
from ups.config import ConfigError
from ups.data.datasets import MultiTaskDataset, WindowDataset
from ups.evaluation.ttc import TestTimeCorrection
from ups.models.spec import spec_of
from ups.objectives import (
    Autoencoder,
    ConsistencyCorrection,
    DiffusionResidual,
    InverseConsistency,
    NextStep,
    SteadyPrior,
)
from ups.records import read_records
from ups.runner import build_model, build_tasks, run
from ups.training.checkpoint import load_consolidated

SMALL = [
    "task=pdebench2",
    "stage=all",
    "stages.operator.steps=6",
    "stages.diffusion.steps=8",
    "stages.consistency.steps=4",
    "stages.steady.steps=4",
    "trainer.steps_per_epoch=3",
    "stages.diffusion.objective.steps=2",
    "data.eval_samples=2",
]


@pytest.fixture
def staged(tiny_cfg, tmp_path: Path):
    cfg = tiny_cfg("task=pdebench2", "stage=all")
    tasks = build_tasks(cfg, tmp_path)
    torch.manual_seed(0)
    return tasks, build_model(cfg.model, tasks, cfg.stages)


def _batch(task, n: int = 8) -> dict:
    windows = WindowDataset(task, "train")
    return MultiTaskDataset([windows]).collate(
        [{"task_index": 0, **windows[i * (len(windows) // n)]} for i in range(n)]
    )[0]


# Parameter-name prefixes of the latent model's encoder and decoder groups (their shared blocks
# and their per-task maps).
ENCODER = ("encoder.", "encode_basis.", "input_proj.", "position_proj.")
DECODER = ("decoder.", "basis.", "output_head.")


def _fixed_loss(objective, model, batch) -> float:
    torch.manual_seed(123)  # the same noise levels and noise before and after training
    with torch.no_grad():
        return float(sum(objective.loss(model, batch) for _ in range(4)))


def _train(objective, model, batch, steps: int = 60, lr: float = 2e-3) -> tuple[float, float, set[str]]:
    """Loss on the batch before and after ``steps`` Adam steps on the parameters the objective trains;
    and the names of the parameters that changed."""
    groups = spec_of(model).groups(model)
    trained = groups[objective.head].parameters() if objective.head else model.parameters()
    objective.setup(model, [batch])
    before_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = _fixed_loss(objective, model, batch)
    opt = torch.optim.Adam(list(trained), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        objective.loss(model, batch).backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before_params[n])}
    return before, _fixed_loss(objective, model, batch), changed


@pytest.mark.parametrize("name", ["inverse", "autoencoder", "diffusion", "diffusion_inverted", "consistency", "steady"])
def test_each_stage_lowers_its_own_objective(staged, name: str) -> None:
    tasks, model = staged
    advection, darcy = tasks
    objective, batch = {
        "inverse": (InverseConsistency(), _batch(advection)),
        "autoencoder": (Autoencoder(), _batch(advection)),
        "diffusion": (DiffusionResidual(steps=2), _batch(advection)),
        "diffusion_inverted": (DiffusionResidual(steps=2, invert_steps=5), _batch(advection)),
        "consistency": (ConsistencyCorrection(), _batch(advection)),
        "steady": (SteadyPrior(), _batch(darcy)),
    }[name]
    before, after, changed = _train(objective, model, batch)
    assert after < 0.8 * before, (before, after)
    if objective.head:  # only the stage's own network moved
        assert changed and all(n.startswith(f"stage_heads.{objective.head}.") for n in changed), changed


def test_inverse_losses_reach_the_encoder_and_decoder_beyond_next_step(staged) -> None:
    tasks, model = staged
    batch = _batch(tasks[0])

    def grads(objective):
        model.zero_grad()
        objective.loss(model, batch).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads(NextStep())
    for weights, moved in (((1.0, 0.0), (ENCODER, DECODER)), ((0.0, 1.0), (ENCODER, ("operator.",)))):
        extra = grads(InverseConsistency(*weights))
        for prefix in moved:
            assert any(not torch.allclose(extra[n], plain[n]) for n in plain if n.startswith(prefix)), (weights, prefix)


def test_inverse_objective_fits_the_frame_its_own_predict_returns(staged) -> None:
    """With both inverse weights 0 the loss is next-step MSE of exactly what ``predict`` returns: a
    model that predicts the change decodes the change. (Fitting the decoded value to the field while
    ``predict`` added the last frame made stage=all's rollouts double the field every step, 1e7 nRMSE.)"""
    tasks, model = staged
    batch = _batch(tasks[0])
    assert model.predict_change
    objective = InverseConsistency(decode_weight=0.0, encode_weight=0.0)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(objective.predict(model, batch), batch["y"].float())
        torch.testing.assert_close(objective.loss(model, batch), expected)
        torch.testing.assert_close(NextStep().loss(model, batch), expected)


def test_ttc_never_keeps_a_candidate_scoring_worse_than_the_uncorrected(staged) -> None:
    tasks, model = staged
    corrector = DiffusionResidual(steps=2)
    ttc = TestTimeCorrection(corrector, model.eval(), tasks, candidates=6)
    batch = _batch(tasks[0], n=16)
    with torch.no_grad():
        chosen, rewards, best = ttc.choose(batch)
        cands = corrector.candidates(model, batch, 6)
    assert rewards.shape == (7, 16)
    assert torch.all(rewards.gather(0, best[None])[0] >= rewards[0])
    assert torch.equal(chosen, cands[best, torch.arange(16)])
    assert ttc.stats["advection1d"]["samples"] == 16


def test_a_stage_without_its_kind_of_task_keeps_the_weights(tiny_cfg) -> None:
    result = run(
        tiny_cfg("task=advection1d", "stage=[operator,steady]", "stages.operator.steps=2", "stages.steady.steps=5")
    )
    run_dir = Path(result["run_dir"])
    assert {r["stage"] for r in read_records(run_dir) if r["kind"] == "train"} == {"operator"}
    a, b = (load_consolidated(run_dir / "checkpoints" / s / "final")["model"] for s in ("operator", "steady"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "steady prior" not in (run_dir / "eval" / "stages.md").read_text()  # no steady task to report


def test_heads_need_a_latent_model_and_a_teacher(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="stages.diffusion: DiffusionResidual .* no latent space"):
        run(tiny_cfg("task=advection1d", "stage=diffusion", "model=fno"))
    with pytest.raises(ConfigError, match="teacher='diffusion'"):
        run(tiny_cfg("task=advection1d", "stage=consistency"))
    with pytest.raises(ConfigError, match="stages.diffusion.objective under parallelism.strategy=fsdp2: invert_steps"):
        run(
            tiny_cfg(
                "task=advection1d", "stage=all", "parallelism=fsdp2_2", "stages.diffusion.objective.invert_steps=5"
            )
        )
    with pytest.raises(ConfigError, match="need steps >= 1, samples >= 1"):
        run(tiny_cfg("task=advection1d", "stage=diffusion", "stages.diffusion.objective.samples=0"))
    with pytest.raises(ConfigError, match="its objective trains only the head"):
        run(
            tiny_cfg(
                "task=advection1d",
                "stage=[operator,diffusion]",
                "stages.operator.steps=2",
                "stages.diffusion.freeze=[encoder]",
            )
        )


def test_stage_all_trains_each_stage_and_writes_the_table(tiny_cfg, tmp_path: Path) -> None:
    """Also: ups.evaluate and the one-step diagnostics on the finished run."""
    result = run(tiny_cfg(*SMALL, f"paths.output_dir={tmp_path / 'a'}"))
    run_dir = Path(result["run_dir"])
    trained = [(r["stage"], r["stage_step"]) for r in read_records(run_dir) if r["kind"] == "train"]
    assert [s for s, _ in trained] == ["operator"] * 6 + ["diffusion"] * 8 + ["consistency"] * 4 + ["steady"] * 4
    final = {
        s: load_consolidated(run_dir / "checkpoints" / s / "final")["model"]
        for s in ("operator", "diffusion", "consistency", "steady")
    }
    for prev, stage in (("operator", "diffusion"), ("diffusion", "consistency"), ("consistency", "steady")):
        moved = {
            k.split(".")[1]
            for k in final[stage]
            if k.startswith("stage_heads.") and not torch.equal(final[stage][k], final[prev][k])
        }
        assert moved == {stage}, (stage, moved)  # the stage's own head, nothing else
        assert all(
            torch.equal(final[stage][k], final[prev][k]) for k in final[stage] if not k.startswith("stage_heads.")
        )
    table = (run_dir / "eval" / "stages.md").read_text()
    for row in (
        "| operator |",
        "operator + diffusion (2 Heun steps)",
        "operator + consistency (1 step)",
        "operator + TTC",
        "| steady prior |",
        "| persistence |",
        "| training-mean field |",
    ):
        assert row in table, row
    results = json.loads((run_dir / "eval" / "stages.json").read_text())["results"]
    assert results["operator + diffusion (2 Heun steps)"]["nfe"] == 4
    assert results["operator + consistency (1 step)"]["nfe"] == 2

    # python -m ups.evaluate rewrites the table of the finished run with the same numbers
    from omegaconf import OmegaConf

    from ups.evaluate import evaluate_run

    written = evaluate_run(
        OmegaConf.create(
            {
                "run": str(run_dir),
                "checkpoint": "final",
                "split": "test",
                "device": "cpu",
                "eval_samples": None,
                "batch_size": None,
                "data_dir": None,
            }
        )
    )
    assert run_dir / "eval" / "final_test_stages.md" in written
    again = json.loads((run_dir / "eval" / "final_test_stages.json").read_text())["results"]
    trained = json.loads((run_dir / "eval" / "stages.json").read_text())["results"]
    # the same weights, data and evaluation noise: the same numbers as at the end of training
    assert again["operator"]["metrics"]["nrmse/advection1d"] == trained["operator"]["metrics"]["nrmse/advection1d"]
    name = "operator + diffusion (2 Heun steps)"
    assert again[name]["metrics"]["nrmse/advection1d"] == pytest.approx(trained[name]["metrics"]["nrmse/advection1d"])

    from ups.evaluation.stage_diagnostics import diagnose

    rows = {
        line.split(" | ")[1]: float(line.split(" | ")[2].rstrip(" |"))
        for line in diagnose(run_dir, windows=8, k=3).splitlines()
        if line.startswith("| advection1d")
    }
    label = "diffusion (2 Heun steps)"
    assert (
        rows[f"+ {label}, best of 3 + uncorrected by the truth (ceiling of TTC)"]
        <= min(
            rows["operator"],
            rows[f"+ {label}, one sample"],
            rows[f"+ {label}, best of 3 + uncorrected by the physics reward (TTC)"],
        )
        + 1e-6
    )
    assert rows["operator + true encoder residual (ceiling of the default target)"] > 0
    # the operator row is the error of what the run predicts one step ahead (a model that predicts the
    # change decodes it: the row once left the last frame out and read 0.98 for a 0.05 prediction)
    from ups.data.datasets import MultiTaskDataset, WindowDataset
    from ups.evaluation.loading import load_run

    loaded = load_run(run_dir, "final", device="cpu")
    (task,) = [t for t in loaded.tasks if t.name == "advection1d"]
    w = WindowDataset(task, "val")
    batch = MultiTaskDataset([w]).collate(
        [{"task_index": 0, **w[i]} for i in range(0, len(w), max(1, len(w) // 8))][:8]
    )[0]
    with torch.no_grad():
        err = (loaded.predict(batch).float() - batch["y"].float()).pow(2).mean((-2, -1)).sqrt().mean()
    assert rows["operator"] == pytest.approx(float(err), rel=1e-3)

    pytest.importorskip("matplotlib")
    for png in ("stages_nrmse_vs_step.png", "stages_fields_advection1d.png", "stages_fields_darcy2d.png"):
        assert (run_dir / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # over 30 s on 2 cores: pytest -m slow (the default suite stays near 15 min)
def test_stage_all_resumes_mid_diffusion_bit_identically(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    straight = run(tiny_cfg(*SMALL, f"paths.output_dir={tmp_path / 'a'}"))
    cfg = tiny_cfg(*SMALL, f"paths.output_dir={tmp_path / 'b'}")
    crash_run(cfg, lambda t: t.stage_name == "diffusion" and t.step == 5, monkeypatch)
    resumed = run(cfg)
    again = [(r["stage"], r["stage_step"]) for r in read_records(tmp_path / "b") if r["kind"] == "train"]
    assert again[:11] == [("operator", s) for s in range(1, 7)] + [("diffusion", s) for s in range(1, 6)]
    assert again[11:14] == [("diffusion", s) for s in (4, 5, 6)]  # back to its step-3 checkpoint
    for stage in ("diffusion", "consistency", "steady"):
        a, b = (load_consolidated(tmp_path / d / "checkpoints" / stage / "final")["model"] for d in ("a", "b"))
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    losses = lambda d: {r["step"]: r["loss"] for r in read_records(tmp_path / d) if r["kind"] == "train"}  # noqa: E731
    assert losses("a") == losses("b")
    assert resumed["test/nrmse/advection1d"] == straight["test/nrmse/advection1d"]


# DDP is also covered by the unrolled stage's two-rank test; FSDP2 is the stricter layout for heads
@pytest.mark.parametrize(
    "layout", [pytest.param("ddp2", marks=pytest.mark.slow), pytest.param("fsdp2_2", marks=pytest.mark.slow)]
)  # 54 s
def test_stage_all_runs_on_two_ranks(layout: str, data_dir: Path, tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "ups.train",
        "model=tiny",
        "hardware=cpu",
        "data.generate=true",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={tmp_path / 'run'}",
        f"parallelism={layout}",
        *SMALL,
        "stages.operator.steps=2",
        "stages.diffusion.steps=2",
        "stages.consistency.steps=2",
        "stages.steady.steps=2",
        "trainer.batch_size=4",
        "parallelism.timeout_s=60",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stages = {r["stage"] for r in read_records(tmp_path / "run") if r["kind"] == "train"}
    assert stages == {"operator", "diffusion", "consistency", "steady"}
    assert "operator + TTC" in (tmp_path / "run" / "eval" / "stages.md").read_text()


def test_autoencoder_pretraining_then_the_operator_on_its_cached_latents(tiny_cfg, tmp_path: Path) -> None:
    result = run(
        tiny_cfg(
            "task=advection1d",
            "stage=autoencoder_pretrain",
            "stages.autoencoder.steps=6",
            "stages.operator.steps=6",
            "trainer.steps_per_epoch=3",
        )
    )
    run_dir = Path(result["run_dir"])
    assert [r["stage"] for r in read_records(run_dir) if r["kind"] == "train"] == ["autoencoder"] * 6 + ["operator"] * 6
    ae, op = (load_consolidated(run_dir / "checkpoints" / s / "final")["model"] for s in ("autoencoder", "operator"))
    assert all(torch.equal(ae[k], op[k]) for k in ae if k.startswith(ENCODER))
    assert any(not torch.equal(ae[k], op[k]) for k in ae if k.startswith(DECODER))
    assert list((run_dir / "latent_cache").glob("*")), "the operator stage did not read the latent cache"
