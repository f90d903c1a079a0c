"""The sweep's tables (``results.md``: one per task, mean +- sample std over the seeds) and plots
(metric against trainable share with the Pareto front; memory and time per method)."""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from peftlab.sweep.config import Sweep
from peftlab.sweep.statistics import confidence_interval, paired_comparison
from peftlab.tasks import lower_is_better


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None

def _mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, 0
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return mean, std, len(vals)

def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"

@dataclass
class _Group:
    """The seeds of one (backbone, method) row of a task table."""
    backbone: str
    method: str
    rows: list[dict[str, str]]

    def ok(self) -> list[dict[str, str]]:
        return [r for r in self.rows if r.get("status") == "ok"]

    def stat(self, key: str) -> tuple[float | None, float | None, int]:
        return _mean_std(_float(r.get(key)) for r in self.ok())

    def by_seed(self) -> dict[int, float]:
        """seed -> the metric, for the seeds that finished with a finite value."""
        values = {int(r["seed"]): _float(r.get("primary_value")) for r in self.ok() if r.get("seed") not in (None, "")}
        return {seed: v for seed, v in values.items() if v is not None}

    @property
    def label(self) -> str:
        return f"{self.backbone} / {self.method}" if self.backbone else self.method

def _groups(sweep: Sweep, rows: Sequence[dict[str, str]], task: str) -> list[_Group]:
    groups: list[_Group] = []
    for backbone in [b.name for b in sweep.backbones] or [""]:
        for method in [m.name for m in sweep.methods]:
            mine = [r for r in rows if r.get("task") == task and r.get("backbone", "") == backbone
                    and r.get("method") == method]
            if mine:
                groups.append(_Group(backbone, method, mine))
    return groups

def render_markdown(sweep: Sweep, rows: Sequence[dict[str, str]]) -> str:
    """One Markdown table per task: mean +- sample std over the seeds."""
    kinds = sorted({r["peak_memory_kind"] for r in rows if r.get("peak_memory_kind")})
    lines = [f"# {sweep.name}", "",
             f"Sweep `{show_path(sweep.path, sweep.root)}`, {len(sweep.seeds)} seed(s) {sweep.seeds}; machine: "
             f"{platform.machine()}, {os.cpu_count()} CPU cores. Metric: mean ± sample std over the seeds, the "
             "95% confidence interval of the mean (Student t; given when at least 2 seeds finished) and n = seeds that finished"
             + (f"; vs {sweep.baseline}: the mean per-seed difference from the {sweep.baseline} row of the same "
                "backbone over the seeds both finished, and the paired t-test's two-sided p-value (p - : "
                "fewer than 2 pairs or identical differences)" if sweep.baseline else "") + ". Trainable params: trained parameters, head included, and their share of "
             "the backbone's parameters. Peak memory: " + (", ".join(kinds) or "-") + " (cpu_peak_rss = the cell "
             "process's peak resident set, in brackets what the cell added: its growth over the warm worker it "
             "forked from, which had imported torch, Lightning, peftlab and the field's libraries (with --cold: "
             "over its own process after those imports); cuda_max_allocated = torch's CUDA max allocated). Cost columns: means over the seeds"
             + (f"; the cells ran {sweep.parallel_cells} at a time, sharing the cores (each took cores // "
                f"{sweep.parallel_cells} torch threads), so ms/step and samples/s are measured sharing the machine"
                if sweep.parallel_cells > 1 else "") + ".", ""]
    for task in sweep.tasks:
        task_rows = [r for r in rows if r.get("task") == task.name]
        metrics = sorted({r["primary_metric"] for r in task_rows if r.get("primary_metric")})
        metric = metrics[0] if metrics else (f"test/{task.metric}" if task.metric else "primary metric")
        direction = "lower" if lower_is_better(metric) else "higher"
        chosen = sorted({r["checkpoint"].split(" epoch=")[0] for r in task_rows if r.get("checkpoint")})
        selection = ("the test metric is that of the checkpoint selected on validation: "
                     + ", ".join(f"`{c}`" for c in chosen) + " (`last` = no validation metric monitored, the "
                     "final state)") if chosen else "checkpoint: -"
        lines += [f"## {task.name}", "", f"{metric} ({direction} is better); {selection}", ""]
        head = ["backbone"] if sweep.backbones else []
        versus = [f"vs {sweep.baseline} (Δ, p)"] if sweep.baseline else []
        lines.append("| " + " | ".join(head + ["method", metric.removeprefix("test/")] + versus + [
            "trainable params", "adapter size", "peak memory MB", "ms/step", "samples/s"]) + " |")
        lines.append("|" + "---|" * len(head) + "---|---:|" + "---:|" * len(versus) + "---:|---:|---:|---:|---:|")
        groups = _groups(sweep, task_rows, task.name)
        for g in groups:
            baseline = next((b for b in groups if b.backbone == g.backbone and b.method == sweep.baseline), None)
            first = [g.backbone] if sweep.backbones else []
            lines.append("| " + " | ".join(first + _row_cells(g, baseline if versus else None, bool(versus))) + " |")
        lines += _search_lines(sweep, task.name)
        for t, backbone, method, reason in sweep.excluded_cells():
            if t == task.name:
                lines.append(f"\nNot run: {' / '.join(p for p in (backbone, method) if p)} (excluded in the sweep "
                             f"config{': ' + reason if reason else ''}).")
        lines.append("")
    return "\n".join(lines)

def _search_lines(sweep: Sweep, task: str) -> list[str]:
    """The search's outcome for a task: per method the trials it had and the parameters that won."""
    found = [s for (t, _, _), s in sweep.search_outcomes.items() if t == task]
    if not found:
        return []
    spec = sweep.search
    lines = ["", f"Tuned before the table (`search`): per method an Optuna study of up to {spec.trials} trials "
             f"(learning rate log-uniform in [{spec.lr[0]:g}, {spec.lr[1]:g}]"
             + (f", size in [{spec.size[0]}, {spec.size[1]}]" if spec.size else "")
             + f"), seed {spec.seed}, scored on {found[0].metric} (validation, best epoch; pruned trials stopped "
             "early); the seeds above ran with the winner.", "",
             "| " + ("backbone | " if sweep.backbones else "") + "method | trials (pruned, failed) | best "
             f"{found[0].metric} | lr | size |", "|" + "---|" * bool(sweep.backbones) + "---|---:|---:|---:|---|"]
    for s in found:
        params = s.best_params or {}
        size = f"{s.size_option}={params['size']}" if "size" in params else "-"
        best = f"{s.best_value:.4f}" if s.best_value is not None else "none completed"
        lines.append("| " + (f"{s.backbone} | " if sweep.backbones else "") + f"{s.method} | {s.trials} "
                     f"({s.pruned}, {s.failed}) | {best} | "
                     + (f"{params['lr']:.3g}" if "lr" in params else "-") + f" | {size} |")
    return lines


def _metric_cell(g: _Group) -> str:
    """Mean ± sample std, the 95% confidence interval of the mean, and n; failed seeds named."""
    failed = [r for r in g.rows if r.get("status") != "ok"]
    mean, std, n = g.stat("primary_value")
    if mean is None:  # the metric was NaN for every seed (e.g. a constant prediction)
        value = f"nan (n={len(g.ok())})"
    else:
        interval = confidence_interval(list(g.by_seed().values()))
        value = ((f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}")
                 + (f", CI [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "") + f" (n={n})")
    if failed:
        value += f"; {len(failed)} seed(s) failed: {_md(failed[0].get('error', ''))}"
    return value


def _versus_cell(g: _Group, baseline: _Group | None) -> str:
    """The paired comparison with the baseline's row over the seeds both finished."""
    if baseline is None:
        return "-"
    if baseline is g:
        return "baseline"
    paired = paired_comparison(g.by_seed(), baseline.by_seed())
    if paired is None:
        return "-"
    p = f"p={paired.p_value:.3g}" if paired.p_value is not None else "p -"
    return f"{paired.difference:+.4f} ({p}, n={paired.n})"


def _row_cells(g: _Group, baseline: _Group | None, versus: bool) -> list[str]:
    """One table row after the backbone column: method, metric, [vs baseline], cost columns."""
    if not g.ok():
        failed = [r for r in g.rows if r.get("status") != "ok"]
        err = failed[0].get("error", "") if failed else ""
        return [g.method, f"failed: {_md(err)}"] + ["-"] * (5 + versus)
    params, _, _ = g.stat("trainable_params")
    pct, _, _ = g.stat("trainable_pct_of_backbone")
    size, _, _ = g.stat("adapter_bytes")
    mem, _, _ = g.stat("peak_memory_mb")
    growth, _, _ = g.stat("peak_memory_growth_mb")
    ms, ms_std, _ = g.stat("ms_per_step")
    sps, _, _ = g.stat("samples_per_s")
    return [g.method, _metric_cell(g)] + ([_versus_cell(g, baseline)] if versus else []) + [
        f"{params:,.0f} ({pct:.3g}%)" if params is not None else "-", _bytes(size),
        (f"{mem:,.0f}" + (f" (+{growth:,.0f})" if growth is not None else "")) if mem is not None else "-",
        (f"{ms:.1f} ± {ms_std:.1f}" if ms_std is not None else f"{ms:.1f}") if ms is not None else "-",
        f"{sps:.1f}" if sps is not None else "-"]


def show_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies inside it."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

def _md(text: str) -> str:
    return text.replace("|", "\\|")

def pareto_front(points: Sequence[tuple[float, float]], lower_better: bool = False) -> list[int]:
    """Indices of the points no other point beats: fewer (or as many) trainable
    parameters and a better (or equal) metric, one of them strictly."""
    sign = -1.0 if lower_better else 1.0
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and sign * y2 >= sign * y) and (x2 < x or sign * y2 > sign * y)
            for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])

def make_plots(sweep: Sweep, rows: Sequence[dict[str, str]], out: Path) -> list[Path]:
    """Per task: metric vs trainable share (log x, Pareto front marked) and the
    cost bars (peak memory, ms/step). Needs matplotlib (the ``bench`` extra);
    without it the plots are skipped with a note."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed (pip install 'peftlab[bench]'), no plots written")
        return []
    written: list[Path] = []
    for task in sweep.tasks:
        groups = [g for g in _groups(sweep, rows, task.name) if g.ok()]
        if not groups:
            continue
        title = f"{sweep.name}: {task.name}"
        pareto = _pareto_plot(plt, groups, title, out / f"{task.name}_pareto.png")
        written += [pareto] if pareto else []
        written.append(_cost_plot(plt, groups, title, out / f"{task.name}_cost.png"))
    return written


def _pareto_plot(plt: Any, groups: list[_Group], title: str, path: Path) -> Path | None:
    """Metric against trainable share (log), the Pareto front marked; None when no group has both."""
    metric = groups[0].ok()[0].get("primary_metric", "metric")
    pts, labels, errs = [], [], []
    for g in groups:
        share, _, _ = g.stat("trainable_share")
        mean, std, _ = g.stat("primary_value")
        if share is not None and share > 0 and mean is not None:
            pts.append((share, mean))
            errs.append(std or 0.0)
            labels.append(g.label)
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ax.errorbar(xs, ys, yerr=errs, fmt="o", color="tab:blue", ecolor="0.6", capsize=3, label="method")
    for x, y, lab in zip(xs, ys, labels):
        ax.annotate(lab, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = pareto_front(pts, lower_is_better(metric))
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", color="tab:red", lw=1.5, zorder=0)
    ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=120, facecolors="none",
               edgecolors="tab:red", label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("trainable share of all parameters (log)")
    ax.set_ylabel(f"{metric} (mean over seeds)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cost_plot(plt: Any, groups: list[_Group], title: str, path: Path) -> Path:
    """Peak memory (the process after imports, then its growth, where measured) and time per step."""
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(max(6.4, 1.1 * len(groups) + 3), 4.0))
    names = [g.label for g in groups]
    x = list(range(len(groups)))
    for ax, key, subtitle in ((ax_mem, "peak_memory_mb", "peak memory (MB)"),
                              (ax_time, "ms_per_step", "time per step (ms)")):
        stats = [g.stat(key) for g in groups]
        means = [m or 0.0 for m, _, _ in stats]
        stds = [s or 0.0 for _, s, _ in stats]
        growth = [g.stat("peak_memory_growth_mb")[0] for g in groups] if key == "peak_memory_mb" else []
        if growth and all(v is not None for v in growth):  # CPU: the process after imports, then the run
            base = [m - v for m, v in zip(means, growth)]
            ax.bar(x, base, color="0.8", label="process after imports")
            ax.bar(x, growth, bottom=base, color="tab:blue", label="growth during the run")
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.bar(x, means, color="tab:blue")
        if any(stds):
            ax.errorbar(x, means, yerr=stds, fmt="none", ecolor="black", capsize=3)
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_title(subtitle)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"{title} (cost per method)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
