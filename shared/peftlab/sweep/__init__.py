"""``peftlab sweep``: run a paper-style grid (task x backbone x method x seed)
and write the table, the CSV and the plots.

    peftlab sweep --config configs/paper/demo_cpu.yaml [--output DIR] [--dry-run] [--set KEY=VALUE ...]

The sweep YAML (``configs/paper/*.yaml``; every file there explains it in its
header) has these keys::

    root: ../..               # folder the paths below are relative to, itself relative to this
                              # YAML's folder (default: the YAML's folder); cells run with it as cwd
    output: runs/paper/demo   # results folder, relative to root (``--output`` overrides it, relative to cwd)
    seeds: [0, 1, 2]          # each cell gets --seed_everything SEED ...
    data_seed: true           # ... and --data.init_args.seed SEED (split / batch order / synthetic data)
    cell_timeout_s: null      # optional: a cell running longer is killed and recorded as failed
    parallel_cells: 1         # optional: cells run at once (executor local; also --parallel-cells); they share
                              # the cores (peftlab.threads), so their time-per-step columns are measured sharing
    configs: []               # optional: --config files for every cell (e.g. configs/trainer/gpu.yaml)
    overrides: {}             # optional: CLI overrides for every cell, {trainer.max_epochs: 2, ...}
    backbones:                # optional axis, crossed with every task; leave it out when the
      - name: vit-b           # task configs name the backbone themselves
        configs: [configs/medical/backbones/vit_base.yaml]
        overrides: {}
    tasks:                    # required: the data (and backbone, without a backbones axis)
      - name: protein-motif
        configs: [configs/protein/backbones/esm2_tiny.yaml, configs/protein/data/synthetic_motif.yaml]
        overrides: {trainer.max_epochs: 2}
        metric: null          # optional: the reported metric (default: the task type's primary metric)
    methods:                  # required
      - name: lora
        configs: [configs/methods/lora.yaml]
        overrides: {model.method.init_args.r: 16}
    baseline: full            # optional: the method every other is compared with in results.md (paired over
                              # seeds: mean difference and p-value); default: the method named full, if any
    exclude:                  # optional: cells not to run; each entry matches on the keys it has
      - {backbone: resnet50, method: adapter, reason: "bottleneck adapters need token states"}
    executor: local           # optional: local (default) | slurm | submitit_local (peftlab.sweep.jobs)
    resources: {}             # optional, for the submitit executors: gpus, cpus, mem_gb, time_min, partition,
                              # cells_per_job, slurm_additional_parameters, slurm_setup, poll_s
    search: null              # optional: tune each method first (peftlab.sweep.search)
    tracking: null            # optional: mlflow | tensorboard | {logger, uri} (peftlab.sweep.tracking)

A cell's arguments are ``--config`` files in the order global, backbone, task,
method, then ``--trainer.enable_progress_bar=false`` (a log file is no
terminal; an override may turn it back on), the overrides in the same order
(later wins), then what the sweep sets itself: the seed(s) and
``--trainer.default_root_dir`` (its cell folder). Override values are passed
as they are (lists and mappings as JSON), so a relative ``data.path`` is
relative to ``root``. Every peftlab data module takes ``seed``; set
``data_seed: false`` for one that does not.

Each cell runs ``peftlab.experiment.fit_and_test`` (fit, then test the selected checkpoint) in its own
subprocess (``python -m peftlab.sweep --run-cell DIR``), so that a crash is
confined to the cell and peak memory is that run's alone: CUDA max allocated
on a GPU, else the child's peak resident set (``VmHWM``; ``ru_maxrss`` would
include the parent's memory, which Linux carries across fork and exec). The
output folder gets:

* ``results.csv``: one row per cell (see ``COLUMNS``; ``trainable_share`` is
  of all parameters, head included, so it lies in (0, 1];
  ``trainable_pct_of_backbone`` is relative to the backbone alone), rewritten
  atomically after each cell. A rerun skips the cells recorded as ``ok`` with
  unchanged arguments (``args_hash``) and retries the rest, so a killed sweep
  resumes where it stopped; rows of cells no longer in the YAML are kept in
  the CSV but left out of the tables;
* ``results.md``: one table per task (mean +- sample std over the seeds, the 95% confidence interval
  of the mean, and each method against the baseline paired over seeds: difference and p-value);
* ``<task>_pareto.png`` (metric vs trainable share, Pareto front marked) and
  ``<task>_cost.png`` (peak memory and time per step) per task;
* ``cells/<task>[__<backbone>]__<method>__seed<seed>/``: ``cell.json`` (the
  exact arguments), ``run.log``, ``result.json`` and the Lightning run folder
  with ``adapter/adapter.safetensors``.

This module is domain-agnostic: domains come in only through the configs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import yaml

from peftlab.errors import SweepConfigError
from peftlab.sweep.cell import run_cell
from peftlab.sweep.config import Cell, Entry, Sweep, format_value, load_sweep, set_parallel_cells
from peftlab.sweep.report import make_plots, pareto_front, render_markdown
from peftlab.sweep.results import COLUMNS, RESULTS_CSV, read_results, row_key, write_results
from peftlab.sweep.runner import SweepReport, run_sweep
from peftlab.tasks import lower_is_better

__all__ = ["COLUMNS", "Cell", "Entry", "Sweep", "SweepConfigError", "SweepReport", "format_value", "load_sweep",
           "lower_is_better", "main", "make_plots", "pareto_front", "read_results", "render_markdown", "run_cell",
           "run_sweep", "write_results"]


def main(argv: Sequence[str] | None = None) -> int:
    """``peftlab sweep --config SWEEP.yaml [--output DIR] [--dry-run]``; returns the exit status
    (1 when a cell failed)."""
    parser = argparse.ArgumentParser(
        prog="peftlab sweep", description="Run a task x backbone x method x seed grid (a paper table): one "
        "subprocess per cell, resumable; writes results.csv, results.md and plots.")
    parser.add_argument("--config", help="the sweep YAML (configs/paper/*.yaml)")
    parser.add_argument("--output", help="results folder (default: the YAML's output, relative to its root)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their arguments; run nothing")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="an override for every cell, after the YAML's own (repeatable), e.g. --set "
                             "trainer.accelerator=gpu or --set trainer.max_epochs=1; changes the cells' arguments, "
                             "so finished cells run again")
    parser.add_argument("--cold", action="store_true", help="start every cell as a new Python process that "
                        "imports everything again (the default forks each cell from one warm worker that has "
                        "imported peftlab and the sweep's domains; also PEFTLAB_SWEEP_COLD=1)")
    parser.add_argument("--parallel-cells", type=int, metavar="N", help="run N cells at once (executor local; "
                        "default: the YAML's parallel_cells, else 1); each takes cores // N torch threads")
    parser.add_argument("--no-wait", action="store_true", help="executor slurm / submitit_local: submit the "
                        "jobs and exit; the same command later collects the finished cells and resubmits failed ones")
    parser.add_argument("--run-cell", metavar="DIR", help=argparse.SUPPRESS)  # internal: the child process
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if ns.run_cell:
        return run_cell(ns.run_cell)
    if not ns.config:
        parser.error("--config is required")
    try:
        sweep = load_sweep(ns.config, ns.output, overrides=[_key_value(o) for o in ns.overrides])
        if ns.parallel_cells is not None:
            set_parallel_cells(sweep, ns.parallel_cells, "--parallel-cells")
    except SweepConfigError as exc:
        parser.error(str(exc))
    report = run_sweep(sweep, dry_run=ns.dry_run, cold=ns.cold or None, wait=not ns.no_wait)
    if report.pending:  # --no-wait: the cells are in their jobs
        return 1 if report.failed else 0
    return 1 if report.failed or (not ns.dry_run and _any_failed(sweep)) else 0

def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``; the value is read as YAML (numbers, booleans, null, lists)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SweepConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. trainer.max_epochs=1")
    return key.strip().removeprefix("--"), yaml.safe_load(value) if value.strip() else value

def _any_failed(sweep: Sweep) -> bool:
    rows = {row_key(r): r for r in read_results(sweep.output / RESULTS_CSV)}
    return any(rows.get(c.key, {}).get("status") != "ok" for c in sweep.cells())
