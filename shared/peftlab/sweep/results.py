"""The results store: the sweep folder's layout and ``results.csv`` (one row per cell, rewritten
atomically after each cell; a rerun skips the rows recorded as ok with unchanged arguments)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

from peftlab.persistence.atomic import atomic_write
from peftlab.sweep.config import Cell


CELLS_DIR = "cells"

RESULTS_CSV = "results.csv"

RESULTS_MD = "results.md"

CELL_SPEC = "cell.json"

CELL_RESULT = "result.json"

CELL_LOG = "run.log"

# results.csv: these columns, then one column per test metric (``test/...``), sorted
COLUMNS = [
    "task", "backbone", "method", "seed", "status", "error", "primary_metric", "primary_value",
    "trainable_params", "total_params", "backbone_params", "trainable_share", "trainable_pct_of_backbone",
    "adapter_bytes", "peak_memory_mb", "peak_memory_kind", "peak_memory_growth_mb", "ms_per_step", "samples_per_s",
    "fit_seconds", "cell_seconds", "backbone_name", "checkpoint", "run_dir", "args_hash",
]

def read_results(path: Path) -> list[dict[str, str]]:
    """The rows of ``results.csv`` (none when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))

def write_results(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``results.csv`` atomically (:func:`peftlab.persistence.atomic.atomic_write`)."""
    metric_cols = sorted({k for r in rows for k in r if k.startswith("test/")})
    extra = sorted({k for r in rows for k in r} - set(COLUMNS) - set(metric_cols))

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS + metric_cols + extra, restval="")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_value(v) for k, v in row.items()})

    atomic_write(path, write)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value

def row_key(row: dict[str, str]) -> tuple[str, str, str, str]:
    return (row.get("task", ""), row.get("backbone", ""), row.get("method", ""), str(row.get("seed", "")))

def row_from_result(cell: Cell, result: dict[str, Any], output: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"task": cell.task, "backbone": cell.backbone, "method": cell.method,
                           "seed": cell.seed, "status": result.get("status", "failed"),
                           "error": result.get("error", ""), "args_hash": cell.args_hash,
                           "cell_seconds": result.get("cell_seconds")}
    summary = result.get("summary")
    if summary:
        row.update(
            primary_metric=result["primary_metric"], primary_value=result["primary_value"],
            trainable_params=summary["trainable_params"], total_params=summary["total_params"],
            backbone_params=summary["backbone_params"], trainable_share=summary["trainable_share"],
            trainable_pct_of_backbone=100 * summary["trainable_params"] / max(1, summary["backbone_params"]),
            adapter_bytes=result.get("adapter_bytes"), peak_memory_mb=summary["peak_memory_mb"],
            peak_memory_kind=summary["peak_memory_kind"],
            peak_memory_growth_mb=summary.get("peak_memory_growth_mb"), ms_per_step=1000 * summary["s_per_step"],
            samples_per_s=summary["samples_per_s"], fit_seconds=summary["fit_seconds"],
            backbone_name=summary["backbone"], checkpoint=checkpoint_label(summary.get("checkpoint")),
            run_dir=os.path.relpath(result["run_dir"], output),
        )
        row.update(summary["test"])
    return row

def checkpoint_label(selection: dict[str, Any] | None) -> str:
    """The selected checkpoint in a results row: ``best val/auroc (max) epoch=3-step=40`` or ``last``."""
    if not selection:
        return ""
    if selection.get("selected") == "best":
        name = Path(selection.get("path") or "").stem.removeprefix("best-")
        return f"best {selection.get('monitor')} ({selection.get('mode')}) {name}".strip()
    return str(selection.get("selected", ""))
