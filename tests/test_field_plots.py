"""The evaluation's field figures: every kind writes a PNG; bad shapes fail loudly, naming the variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from ups.evaluation.field_plots import plot_error_vs_step_variants, plot_fields  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 1000, f"{path} missing or tiny"
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"


def fields(T: int, grid: tuple[int, ...], C: int, variants: list[str], seed: int = 0):
    """A smooth truth (so the figures are worth a look) and noisy predictions, half as torch tensors."""
    rng = np.random.default_rng(seed)
    coords = np.meshgrid(*[np.linspace(0, 2 * np.pi, n) for n in grid], indexing="ij")
    base = sum(np.sin((i + 1) * x) for i, x in enumerate(coords)).reshape(-1)
    truth = np.stack([np.stack([base * np.cos(0.2 * t) * (c + 1) for c in range(C)], -1) for t in range(T)])
    preds = {}
    for i, v in enumerate(variants):
        p = (truth + (0.1 * (i + 1)) * rng.standard_normal(truth.shape)).astype(np.float32)
        preds[v] = torch.from_numpy(p) if i % 2 else p
    return torch.from_numpy(truth.astype(np.float32)), preds


def test_1d_spacetime(tmp_path: Path):
    truth, preds = fields(12, (32,), 2, ["model", "persistence"])
    out = plot_fields(
        "burgers1d", 1, (32,), ("u", "v"), False, truth, preds, tmp_path / "f1d.png", context=truth[:2] * 0.9
    )
    assert out == tmp_path / "f1d.png"
    assert_png(out)


def test_1d_steady(tmp_path: Path):
    truth, preds = fields(1, (32,), 1, ["model", "mean_field"])
    assert_png(
        plot_fields("steady1d", 1, (32,), ("u",), True, truth, preds, tmp_path / "s1d.png", context=np.ones((1, 32, 1)))
    )


def test_2d_time_dependent_caps_variants(tmp_path: Path):
    names = [f"variant_{i}" for i in range(7)]  # more than 5: only the first 5 are drawn
    truth, preds = fields(10, (16, 16), 3, names)
    assert_png(
        plot_fields(
            "ns2d", 2, (16, 16), ("vx", "vy", "rho"), False, truth, preds, tmp_path / "f2d.png", context=truth[:1]
        )
    )


def test_2d_steady(tmp_path: Path):
    truth, preds = fields(1, (16, 16), 1, ["model", "persistence", "mean_field"])
    coef = torch.rand(1, 256, 1)
    assert_png(plot_fields("darcy2d", 2, (16, 16), ("u",), True, truth, preds, tmp_path / "darcy.png", context=coef))


def test_3d_mid_plane(tmp_path: Path):
    truth, preds = fields(3, (8, 8, 6), 2, ["model"])
    assert_png(plot_fields("cns3d", 3, (8, 8, 6), ("rho", "p"), False, truth, preds, tmp_path / "f3d.png"))


def test_non_finite_prediction_still_draws(tmp_path: Path):
    truth, preds = fields(5, (16, 16), 1, ["diverged"])
    preds["diverged"][2:] = np.nan
    assert_png(plot_fields("ns2d", 2, (16, 16), ("u",), False, truth, preds, tmp_path / "nan.png"))


def test_shape_mismatch_names_the_variant(tmp_path: Path):
    truth, preds = fields(4, (16,), 1, ["good", "short_rollout"])
    preds["short_rollout"] = preds["short_rollout"][:3]
    with pytest.raises(ValueError, match="short_rollout"):
        plot_fields("burgers1d", 1, (16,), ("u",), False, truth, preds, tmp_path / "x.png")
    with pytest.raises(ValueError, match="grid"):  # P does not match the grid
        plot_fields("burgers1d", 1, (17,), ("u",), False, truth, {"good": preds["good"]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="context"):
        plot_fields(
            "burgers1d",
            1,
            (16,),
            ("u",),
            False,
            truth,
            {"good": preds["good"]},
            tmp_path / "x.png",
            context=np.zeros((1, 8, 1)),
        )
    assert not (tmp_path / "x.png").exists()


def test_error_vs_step(tmp_path: Path):
    curves = {
        "model": {"burgers1d": [0.01, 0.02, 0.05], "darcy2d": [0.1]},
        "finetuned": {"burgers1d": [0.008, 0.015, 0.03], "ns2d": [0.05, 0.08]},
        "persistence": {"burgers1d": [0.1, 0.2, 0.3], "ns2d": [0.2, 0.3]},
        "mean_field": {"burgers1d": [0.5, 0.5, 0.5], "ns2d": [0.6, 0.6]},
    }
    out = plot_error_vs_step_variants(curves, tmp_path / "steps.png")
    assert out == tmp_path / "steps.png"
    assert_png(out)


def test_error_vs_step_none_when_single_steps(tmp_path: Path):
    curves = {"model": {"darcy2d": [0.1]}, "persistence": {"darcy2d": [0.4], "other": []}}
    assert plot_error_vs_step_variants(curves, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
