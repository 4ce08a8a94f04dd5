"""The benchmark's tables (markdown), its scaling plots, and the sections of docs/benchmarks.md it owns."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def _f(value: Any, fmt: str = "{:,.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def _header(info: dict) -> list[str]:
    device = info["device"] + (
        f" ({info['gpu']})"
        if info.get("gpu")
        else f" ({info['cpu']}, {info['threads']} torch threads of {info['cpu_count']} CPUs)"
    )
    return [
        f"Measured {info['date']} on {device}, torch {info['torch']}; load average {info['loadavg_before']} → "
        f"{info.get('loadavg_after', '?')}.",
        "",
        f"Command: `{info['command']}`",
        "",
        f"Composed run: model {info['model']}, task {info['task']}, per-device batch {info['batch_size']}"
        + (" (the axis changes one of them)." if "axis" in info else "."),
    ]


def variants_markdown(result: dict) -> str:
    """The variant table (ratios to the baseline), the pipeline check, MFU and the start-up split."""
    info, peaks, flops = result["info"], result["peaks"], result.get("flops")
    lines = _header(info) + [
        "",
        "| variant | samples/s | × baseline | latent tokens/s | step ms | data ms | "
        "forward ms | backward ms | optimizer ms | loader-only samples/s | model-only "
        "samples/s | real / model-only | loader / model-only | peak MB | val loss | MFU "
        "(measured matmul) | MFU (bf16 data sheet) | GFLOP/sample | ops/step |",
        "|" + "---|" * 19,
    ]
    for r in result["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | failed: {r['error']} |" + " |" * 17)
            continue
        w = r.get("work") or {}
        model = r["model_samples_per_s"]
        lines.append(
            f"| {r['variant']} | {_f(r['samples_per_s'])} | {_f(r.get('ratio'), '{:.2f}×')} | {_f(r['tokens_per_s'], '{:,.0f}')} | "
            f"{_f(r['step_ms'])} | {_f(r['data_ms'])} | {_f(r['forward_ms'])} | {_f(r['backward_ms'])} | "
            f"{_f(r['optimizer_ms'])} | {_f(r['loader_samples_per_s'])} | {_f(model)} | "
            f"{_f(r['samples_per_s'] / model, '{:.2f}')} | {_f(r['loader_samples_per_s'] / model, '{:.2f}')} | "
            f"{_f(r['peak_memory_mb'], '{:,.0f}')} | {_f(r['val_loss'], '{:.4g}')} | "
            f"{_f(r.get('mfu_measured'), '{:.1%}')} | {_f(r.get('mfu_datasheet_bf16'), '{:.1%}')} | "
            f"{_f(w.get('flops_per_sample') and w['flops_per_sample'] / 1e9, '{:.3g}')} | "
            f"{_f(w.get('ops_per_step'), '{:,.0f}')} |"
        )
    if "baseline_drift" in result:
        lines += [
            "",
            f"× baseline is against the mean of the baseline's two runs, first and last; they differ by "
            f"{result['baseline_drift']:+.1%}, which is how much the machine itself changed meanwhile: "
            "ratios closer to 1 than that are noise.",
        ]
    lines += ["", "What each variant is (each is the baseline plus its switch):", ""]
    lines += [f"- `{r['variant']}`: {r['what']}" for r in result["rows"] if r["variant"] != "baseline (again)"]
    for a, c in result.get("same_measurement", []):
        lines += [
            "",
            f"**Warning: `{a}` and `{c}` report the same real-pass time to the nanosecond: one "
            "measurement reported twice, not two.**",
        ]
    notes = [
        f"`{r['variant']}`: {r['compile']['message']}"
        for r in result["rows"]
        if r["status"] == "ok" and r.get("compile", {}).get("message")
    ]
    notes += [
        f"`{r['variant']}`: the latent cache was not used (the model has no cacheable encoder, or the "
        "stage does not allow it), so it measured the frozen encoder"
        for r in result["rows"]
        if r["status"] == "ok" and r["variant"] == "latent_cache" and not r.get("latent_cache_used")
    ]
    if notes:
        lines += ["", "Checks: " + "; ".join(notes) + "."]
    if flops:
        lines += [
            "",
            f"GFLOP/sample and MFU are each variant's own: the FLOPs of the steps its real pass ran "
            f"({flops['steps']} steps, {flops['samples']} samples), one step of each task's batch counted and "
            "weighted by how many such batches ran (tasks differ in cost; a latent cache skips the "
            "encoder). ops/step: aten ops that launch a kernel in one training step (forward, "
            "backward, optimizer; views apart), weighted the same way; for a compiled variant the "
            "kernels its step launches as it runs: the ops left eager, the extern calls of its "
            "graphs and each kernel inductor generated (ups/bench/ops.py).",
            "",
            f"FLOPs of the first variant's real pass: {flops['analytic']:.4g} from the layer formulas, "
            f"{flops['counted']:.4g} counted by `torch.utils.flop_counter` (ratio "
            f"{flops['analytic'] / flops['counted']:.3f}); per task: "
            + ", ".join(
                f"{t} {v['steps']} steps, {v['flops'] / v['samples'] / 1e9:.3g} GFLOP/sample, "
                f"{v['ops'] / v['steps']:,.0f} ops/step"
                for t, v in flops["per_task"].items()
            )
            + ". Most frequent ops per step: "
            + ", ".join(f"{k} {v:,.0f}" for k, v in flops["top_ops"])
            + ". Peaks: matmul measured here "
            f"{peaks['measured_fp32'] / 1e9:,.1f} GFLOP/s fp32"
            + (f", {peaks['measured_bf16'] / 1e12:,.1f} TFLOP/s bf16" if peaks.get("measured_bf16") else "")
            + (
                f"; data sheet {peaks['datasheet_bf16'] / 1e12:,.0f} TFLOP/s bf16 ({peaks['device_name']})"
                if peaks.get("datasheet_bf16")
                else f"; {peaks['device_name']}"
            )
            + ".",
        ]
    lines += [
        "",
        "Start-up (seconds): config is the process start to the measurement (imports, composition); the "
        "first step includes compilation when on.",
        "",
        "| variant | config | data open | model build | parallelize | training set | first batch | first step "
        "| of which compile |",
        "|" + "---|" * 9,
    ]
    for r in result["rows"]:
        if r["status"] == "ok" and r["variant"] in ("baseline", "compile", "all", "latent_cache"):
            s = r["startup"]
            lines.append(
                f"| {r['variant']} | {info.get('config_s', float('nan')):.2f} | {s['data_open_s']:.2f} | {s['model_build_s']:.2f} | "
                f"{s['parallelize_s']:.2f} | {s['train_set_s']:.2f} | {s['first_batch_s']:.2f} | "
                f"{s['first_step_s']:.2f} | {s['compile_s']:.2f} |"
            )
    return "\n".join(lines)


def axis_markdown(result: dict, plot_dir: str | Path) -> str:
    """The scaling table of one axis, and its plot (samples/s and peak memory against the axis)."""
    info, axis = result["info"], result["axis"]
    ranks = axis == "ranks"  # real training runs: samples/s over all ranks, from their metrics.jsonl
    extra = " world size | global batch |" if ranks else " MFU (measured matmul) | MFU (bf16 data sheet) |"
    lines = _header(info) + [
        "",
        f"| {axis} | samples/s | step ms | peak MB |{extra} status |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        cells = (
            f" {r.get('world_size', '–')} | {r.get('global_batch', '–')} |"
            if ranks
            else f" {_f(r.get('mfu_measured'), '{:.1%}')} | {_f(r.get('mfu_datasheet_bf16'), '{:.1%}')} |"
        )
        lines.append(
            f"| {r['value']} | {_f(r.get('samples_per_s'))} | {_f(r.get('step_ms'))} | "
            f"{_f(r.get('peak_memory_mb'), '{:,.0f}')} |{cells} {r['status']}"
            f"{': ' + r['error'] if r.get('error') else ''} |"
        )
    png = plot_axis(result, Path(plot_dir) / f"bench_{axis}.png")
    if png:
        lines += ["", f"![samples/s and peak memory against {axis}]({png.name})"]
    return "\n".join(lines)


def plot_axis(result: dict, path: Path) -> Path | None:
    """Samples/s and peak memory against the axis's values, side by side; None when nothing ran."""
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["value"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(labels, [r["samples_per_s"] for r in rows], "o-")
    a.set(xlabel=result["axis"], ylabel="samples/s", title="throughput")
    rates = [r["samples_per_s"] for r in rows]
    if max(rates) > 20 * min(rates):  # e.g. model sizes: orders of magnitude apart
        a.set_yscale("log")
    b.plot(labels, [r["peak_memory_mb"] for r in rows], "s-", color="tab:red")
    b.set(xlabel=result["axis"], ylabel="MB", title="peak memory")
    i = result["info"]
    fig.suptitle(
        f"{i['device']}{' ' + i['gpu'] if i.get('gpu') else ''}, torch {i['torch']}, {i['date'][:10]}", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def replace_section(path: Path, key: str, text: str) -> None:
    """Put ``text`` between the markers of ``key`` in ``path`` (appended when the markers are absent),
    leaving the rest of the file as it is."""
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{begin}\n{text}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
