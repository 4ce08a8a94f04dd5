"""Latent cache: same latents as encode, keyed on everything they depend on, atomic builds."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_cfg
from ups.data import latent_cache as lc
from ups.data.datasets import MultiTaskDataset, WindowDataset
from ups.data.latent_dataset import LatentWindowDataset, MultiTaskLatentDataset
from ups.data.tasks import TaskData, build_task
from ups.models import LatentSurrogate, TaskIO
from ups.objectives.next_step import predict_next


def _tasks(data_dir: Path, names: str = "pdebench2") -> list[TaskData]:
    cfg = compose_cfg([f"task={names}", f"paths.data_dir={data_dir}", "data.generate=true"])
    for ds in cfg.task.datasets.values():
        ds.synth.n_samples = 8
        if ds.family == "darcy2d":
            ds.synth.nx = 32
    return [build_task(n, ds, cfg.data, data_dir, [data_dir]) for n, ds in cfg.task.datasets.items()]


def _model(tasks: list[TaskData]) -> LatentSurrogate:
    torch.manual_seed(0)
    io = {t.name: TaskIO(t.initial_step * t.channels, t.channels, t.family.dim) for t in tasks}
    return LatentSurrogate(tasks=io, hidden=32, depth=2, heads=2, encoder_layers=1)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> list[TaskData]:
    return _tasks(tmp_path_factory.mktemp("latent_data"))


def test_cached_latents_equal_encode_and_training_from_them_equals_the_full_forward(tasks, tmp_path: Path) -> None:
    model = _model(tasks)
    windows = [WindowDataset(t, "train", preload_max_gb=0) for t in tasks]  # lazy: every item reads the file
    cached = [lc.load_or_build(model, w, tmp_path, "cpu", batch_size=7) for w in windows]
    assert model.training, "the build must restore the model's mode"
    for t, w, c in zip(tasks, windows, cached):
        assert len(c) == len(w) and c.meta["task"] == t.name and c.meta["split"] == "train"
        coords = torch.from_numpy(t.coords)[None]
        for i in sorted({0, 6, 7, len(w) // 2, len(w) - 1} & set(range(len(w)))):
            raw, item = w[i], c[i]
            with torch.no_grad():
                z = model.encode(t.name, raw["x"][None], coords)[0]
            torch.testing.assert_close(item["z"], z, rtol=1e-5, atol=1e-5)
            assert torch.equal(item["y"], raw["y"]) and torch.equal(item["cond"], raw["cond"])
            assert torch.equal(item["last"], raw["x"][:, -t.channels :])
    # Same sampler keys through both multi-task datasets -> same predictions, with and without residual.
    raw_set, lat_set = MultiTaskDataset(windows), MultiTaskLatentDataset(cached)
    assert lat_set.sizes() == raw_set.sizes()
    keys = [(0, 0), (1, 0), (0, 5), (1, 2), (0, len(windows[0]) - 1)]
    for rb, lb in zip(raw_set.collate([raw_set[k] for k in keys]), lat_set.collate([lat_set[k] for k in keys])):
        assert rb["task"] == lb["task"] and "x" not in lb and lb["z"].shape[1:] == (model.n_tokens(lb["task"]), 32)
        assert torch.equal(rb["y"], lb["y"]) and torch.equal(rb["coords"], lb["coords"])
        for residual in (False, True):
            with torch.no_grad():
                full = predict_next(model, rb, residual)
                fast = predict_next(model, lb, residual)
            torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-5)
    # A second call opens the cache instead of encoding again; the dataset pickles without its maps.
    model.encode = lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-encoded"))  # type: ignore[method-assign]
    again = lc.load_or_build(model, windows[0], tmp_path, "cpu")
    assert again.cache_dir == cached[0].cache_dir
    clone = pickle.loads(pickle.dumps(again))
    assert torch.equal(clone[3]["z"], cached[0][3]["z"])


def test_key_follows_encoder_weights_split_and_settings_only(tasks) -> None:
    model, adv, darcy = _model(tasks), tasks[0], tasks[1]
    key = lc.latent_key(model, adv, "train")
    assert key == lc.latent_key(model, adv, "train", {}) and len(key) == 20
    with torch.no_grad():
        next(model.operator.parameters()).add_(1.0)
        next(model.output_head.parameters()).add_(1.0)
        model.input_proj[model._keys[darcy.name]].weight.add_(1.0)  # another task's projection
    assert lc.latent_key(model, adv, "train") == key
    wrapper = torch.nn.Module()
    wrapper.module = model  # as DDP holds it
    assert lc.latent_key(wrapper, adv, "train") == key  # wrappers are seen through
    changed = {
        "val split": lc.latent_key(model, adv, "val"),
        "dtype": lc.latent_key(model, adv, "train", dtype=torch.float16),
        "extra": lc.latent_key(model, adv, "train", {"note": 1}),
        "stats": lc.latent_key(
            model,
            dataclasses.replace(adv, stats=dataclasses.replace(adv.stats, in_mean=[m + 1 for m in adv.stats.in_mean])),
            "train",
        ),
        "initial_step": lc.latent_key(model, dataclasses.replace(adv, initial_step=adv.initial_step - 1), "train"),
    }
    with torch.no_grad():
        model.input_proj[model._keys[adv.name]].bias.add_(1e-3)
    changed["own input projection"] = lc.latent_key(model, adv, "train")
    with torch.no_grad():
        model.position_proj[model._keys[adv.name]].out.bias.add_(1e-3)
    changed["own positions"] = lc.latent_key(model, adv, "train")
    with torch.no_grad():
        model.encoder.blocks[0].attn.proj.bias.add_(1e-3)
    changed["shared encoder"] = lc.latent_key(model, adv, "train")
    assert key not in changed.values() and len(set(changed.values())) == len(changed), changed


def test_key_changes_when_a_data_file_changes(tmp_path: Path) -> None:
    (adv,) = _tasks(tmp_path, "advection1d")
    model = _model([adv])
    key = lc.latent_key(model, adv, "train")
    path = adv.files[0].path
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert lc.latent_key(model, adv, "train") != key


def test_a_cache_from_other_weights_cannot_be_read(tasks, tmp_path: Path) -> None:
    model = _model(tasks[:1])
    windows = WindowDataset(tasks[0], "val", preload_max_gb=0)
    old = lc.load_or_build(model, windows, tmp_path, "cpu")
    with torch.no_grad():
        model.encoder.blocks[0].attn.proj.weight.mul_(1.5)
    with pytest.raises(FileNotFoundError):
        lc.load_or_build(model, windows, tmp_path, "cpu", build=False)
    new_key = lc.latent_key(model, tasks[0], "val")
    with pytest.raises(FileNotFoundError):
        LatentWindowDataset(old.cache_dir, windows, key=new_key)
    new = lc.load_or_build(model, windows, tmp_path, "cpu")
    assert new.cache_dir != old.cache_dir and not torch.allclose(new[0]["z"], old[0]["z"])


def test_a_killed_build_leaves_nothing_that_is_read(tasks, tmp_path: Path, monkeypatch) -> None:
    model, windows = _model(tasks[:1]), WindowDataset(tasks[0], "train", preload_max_gb=0)
    key = lc.latent_key(model, tasks[0], "train")
    real_encode, calls = model.encode, {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("killed mid-build")
        return real_encode(*args, **kwargs)

    model.encode = crashing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="killed"):  # an exception: the build removes its own folder
        lc.build_latent_cache(model, windows, tmp_path, key, "cpu", batch_size=8)
    assert list(tmp_path.iterdir()) == []
    calls["n"] = 0
    with monkeypatch.context() as m:  # SIGKILL: no clean-up runs, the partial folder stays behind
        m.setattr(lc.shutil, "rmtree", lambda *a, **k: None)
        with pytest.raises(RuntimeError, match="killed"):
            lc.build_latent_cache(model, windows, tmp_path, key, "cpu", batch_size=8)
    (debris,) = tmp_path.iterdir()
    assert ".tmp-" in debris.name and (debris / "z.npy").exists() and not (debris / lc.MARKER).exists()
    # Even a partial folder under the final name (no marker) is not a cache.
    final = tmp_path / lc.cache_name(tasks[0].name, "train", key)
    final.mkdir()
    (final / "z.npy").write_bytes(b"partial")
    assert lc.find_cache(tmp_path, tasks[0].name, "train", key) is None
    with pytest.raises(FileNotFoundError):
        lc.load_or_build(model, windows, tmp_path, "cpu", build=False)
    model.encode = real_encode  # type: ignore[method-assign]
    rebuilt = lc.load_or_build(model, windows, tmp_path, "cpu")
    assert rebuilt.cache_dir == final and len(rebuilt) == len(windows)
    assert lc.prune_cache(tmp_path, keep_keys=[key], tmp_older_than_s=0) == [debris]
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_concurrent_builders_first_complete_one_wins(tasks, tmp_path: Path) -> None:
    model, windows = _model(tasks[:1]), WindowDataset(tasks[0], "val", preload_max_gb=0)
    key = lc.latent_key(model, tasks[0], "val")
    winner: list[Path] = []

    def other_rank_finishes_first(done: int, total: int) -> None:
        if not winner:  # while this build is running, a second builder completes the same cache
            winner.append(lc.build_latent_cache(model, windows, tmp_path, key, "cpu", batch_size=4))

    path = lc.build_latent_cache(model, windows, tmp_path, key, "cpu", batch_size=4, progress=other_rank_finishes_first)
    assert path == winner[0] and [p.name for p in tmp_path.iterdir()] == [path.name]
    assert LatentWindowDataset(path, windows, key)[0]["z"].shape == (16, 32)


def test_half_precision_storage(tasks, tmp_path: Path) -> None:
    model, windows = _model(tasks[1:]), WindowDataset(tasks[1], "train", preload_max_gb=0)
    for dtype in (torch.float16, torch.bfloat16):
        cached = lc.load_or_build(model, windows, tmp_path, "cpu", dtype=dtype)
        assert cached.meta["z_dtype"] == str(dtype).split(".")[1]
        with torch.no_grad():
            z = model.encode(tasks[1].name, windows[1]["x"][None], torch.from_numpy(tasks[1].coords)[None])[0]
        assert cached[1]["z"].dtype == torch.float32
        torch.testing.assert_close(cached[1]["z"], z, rtol=2e-2, atol=2e-2)


def test_copies_of_the_samples_are_cached_as_windows_under_their_own_key(tasks, tmp_path: Path) -> None:
    """data.augment: the cache of a set with rotated and reflected copies holds every copy's window."""
    darcy = next(t for t in tasks if t.name == "darcy2d")
    model = _model(tasks)
    plain, copies = WindowDataset(darcy, "train"), WindowDataset(darcy, "train", copies=True)
    assert len(copies) == 8 * len(plain)
    cached_plain = lc.load_or_build(model, plain, tmp_path, "cpu")
    cached = lc.load_or_build(model, copies, tmp_path, "cpu")
    assert cached.cache_dir != cached_plain.cache_dir and len(cached) == len(copies)
    coords = torch.from_numpy(darcy.coords)[None]
    for i in (0, len(plain) + 1, len(copies) - 1):
        with torch.no_grad():
            z = model.encode(darcy.name, copies[i]["x"][None], coords)[0]
        torch.testing.assert_close(cached[i]["z"], z, rtol=1e-5, atol=1e-5)
        assert torch.equal(cached[i]["y"], copies[i]["y"])
