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
    configs: []               # optional: --config files for every cell (e.g. configs/trainer/gpu.yaml)
    overrides: {}             # optional: CLI overrides for every cell, {trainer.max_epochs: 2, ...}
    backbones:                # optional axis, crossed with every task; leave it out when the
      - name: vit-b           # task configs name the backbone themselves
        configs: [configs/medical/vit_base.yaml]
        overrides: {}
    tasks:                    # required: the data (and backbone, without a backbones axis)
      - name: protein-motif
        configs: [configs/protein/esm2_tiny.yaml, configs/protein/synthetic_motif.yaml]
        overrides: {trainer.max_epochs: 2}
        metric: null          # optional: the reported metric (default: PRIMARY_METRIC of the task type)
    methods:                  # required
      - name: lora
        configs: [configs/methods/lora.yaml]
        overrides: {model.method.init_args.r: 16}
    exclude:                  # optional: cells not to run; each entry matches on the keys it has
      - {backbone: resnet50, method: adapter, reason: "bottleneck adapters need token states"}

A cell's arguments are ``--config`` files in the order global, backbone, task,
method, then ``--trainer.enable_progress_bar=false`` (a log file is no
terminal; an override may turn it back on), the overrides in the same order
(later wins), then what the sweep sets itself: the seed(s) and
``--trainer.default_root_dir`` (its cell folder). Override values are passed
as they are (lists and mappings as JSON), so a relative ``data.path`` is
relative to ``root``. Every peftlab data module takes ``seed``; set
``data_seed: false`` for one that does not.

Each cell runs ``peftlab.cli.fit_and_test`` (fit, then test) in its own
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
* ``results.md``: one table per task (mean +- sample std over the seeds);
* ``<task>_pareto.png`` (metric vs trainable share, Pareto front marked) and
  ``<task>_cost.png`` (peak memory and time per step) per task;
* ``cells/<task>[__<backbone>]__<method>__seed<seed>/``: ``cell.json`` (the
  exact arguments), ``run.log``, ``result.json`` and the Lightning run folder
  with ``adapter/adapter.safetensors``.

This module is domain-agnostic: domains come in only through the configs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from peftlab.errors import SweepConfigError
from peftlab.tasks import lower_is_better

CELLS_DIR = "cells"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
CELL_SPEC = "cell.json"
CELL_RESULT = "result.json"
CELL_LOG = "run.log"
PARENT_ENV = "PEFTLAB_SWEEP_PARENT"

# results.csv: these columns, then one column per test metric (``test/...``), sorted
COLUMNS = [
    "task", "backbone", "method", "seed", "status", "error", "primary_metric", "primary_value",
    "trainable_params", "total_params", "backbone_params", "trainable_share", "trainable_pct_of_backbone",
    "adapter_bytes", "peak_memory_mb", "peak_memory_kind", "peak_memory_growth_mb", "ms_per_step", "samples_per_s",
    "fit_seconds", "cell_seconds", "backbone_name", "checkpoint", "run_dir", "args_hash",
]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOP_KEYS = {"root", "output", "seeds", "data_seed", "cell_timeout_s", "configs", "overrides",
             "backbones", "tasks", "methods", "exclude"}
_ENTRY_KEYS = {"name", "configs", "overrides"}


# ---- the sweep definition ------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One value of an axis (a task, a backbone or a method): its config files and overrides."""
    name: str
    configs: tuple[Path, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    metric: str | None = None  # tasks only


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""
    task: str
    backbone: str  # "" without a backbones axis
    method: str
    seed: int
    args: tuple[str, ...]  # for fit_and_test, without --trainer.default_root_dir
    args_hash: str
    metric: str | None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.task, self.backbone, self.method, str(self.seed))

    @property
    def dirname(self) -> str:
        parts = [self.task] + ([self.backbone] if self.backbone else []) + [self.method, f"seed{self.seed}"]
        return "__".join(parts)

    @property
    def label(self) -> str:
        parts = [self.task] + ([self.backbone] if self.backbone else []) + [self.method, f"seed {self.seed}"]
        return " / ".join(parts)


@dataclass
class Sweep:
    """A parsed sweep YAML."""
    path: Path
    root: Path
    output: Path
    seeds: list[int]
    data_seed: bool
    cell_timeout_s: float | None
    configs: tuple[Path, ...]
    overrides: tuple[tuple[str, Any], ...]
    backbones: list[Entry]
    tasks: list[Entry]
    methods: list[Entry]
    exclude: list[dict[str, Any]] = field(default_factory=list)
    command_overrides: tuple[tuple[str, Any], ...] = ()  # ``--set KEY=VALUE``: after everything else

    @property
    def name(self) -> str:
        return self.path.stem

    def excluded(self, task: str, backbone: str, method: str, seed: int) -> dict[str, Any] | None:
        """The exclude entry that matches this cell, if any."""
        values = {"task": task, "backbone": backbone, "method": method, "seed": seed}
        for rule in self.exclude:
            if all(values[k] == v for k, v in rule.items() if k != "reason"):
                return rule
        return None

    def cells(self) -> list[Cell]:
        """Every cell to run, in order task, backbone, method, seed."""
        out = []
        for task in self.tasks:
            for backbone in self.backbones or [Entry("")]:
                for method in self.methods:
                    for seed in self.seeds:
                        if self.excluded(task.name, backbone.name, method.name, seed) is None:
                            out.append(self._cell(task, backbone, method, seed))
        return out

    def excluded_cells(self) -> list[tuple[str, str, str, str]]:
        """``(task, backbone, method, reason)`` for every excluded combination (seeds folded)."""
        out = []
        for task in self.tasks:
            for backbone in self.backbones or [Entry("")]:
                for method in self.methods:
                    rule = self.excluded(task.name, backbone.name, method.name, self.seeds[0])
                    if rule is not None:
                        out.append((task.name, backbone.name, method.name, str(rule.get("reason", ""))))
        return out

    def _cell(self, task: Entry, backbone: Entry, method: Entry, seed: int) -> Cell:
        configs = [*self.configs, *backbone.configs, *task.configs, *method.configs]
        overrides = [*self.overrides, *backbone.overrides, *task.overrides, *method.overrides, *self.command_overrides]
        args = [a for c in configs for a in ("--config", str(c))]
        args.append("--trainer.enable_progress_bar=false")  # a log file, not a terminal; overridable
        args += [f"--{k}={format_value(v)}" for k, v in overrides]
        args.append(f"--seed_everything={seed}")
        if self.data_seed:
            args.append(f"--data.init_args.seed={seed}")
        # the hash ignores where root is, so moving the repo does not invalidate results
        portable = [os.path.relpath(a, self.root) if os.path.isabs(a) else a for a in args]
        digest = hashlib.sha256(json.dumps(portable).encode()).hexdigest()[:12]
        return Cell(task.name, backbone.name, method.name, seed, tuple(args), digest, task.metric)


def format_value(value: Any) -> str:
    """An override value as jsonargparse reads it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _as_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        return [value]
    if isinstance(value, list):
        return value
    raise SweepConfigError(f"{where}: expected a list, got {value!r}")


def _overrides(value: Any, where: str) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise SweepConfigError(f"{where}: overrides must be a mapping of CLI keys to values, got {value!r}")
    return tuple((str(k).removeprefix("--"), v) for k, v in value.items())


def _configs(value: Any, root: Path, where: str) -> tuple[Path, ...]:
    paths = []
    for item in _as_list(value, where):
        path = (root / str(item)).resolve()
        if not path.is_file():
            raise SweepConfigError(f"{where}: config file {item} not found (looked for {path})")
        paths.append(path)
    return tuple(paths)


def _entries(raw: Any, root: Path, where: str, is_task: bool = False, required: bool = True) -> list[Entry]:
    items = _as_list(raw, where)
    if required and not items:
        raise SweepConfigError(f"{where}: at least one entry is required")
    entries, seen = [], set()
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if not isinstance(item, dict) or "name" not in item:
            raise SweepConfigError(f"{here}: each entry is a mapping with a name, got {item!r}")
        allowed = _ENTRY_KEYS | ({"metric"} if is_task else set())
        unknown = set(item) - allowed
        if unknown:
            raise SweepConfigError(f"{here}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        name = str(item["name"])
        if not _NAME.match(name) or "__" in name:
            raise SweepConfigError(f"{here}: name {name!r} must be letters, digits, '.', '_' or '-' "
                                   "(no '__', it separates the parts of a cell folder)")
        if name in seen:
            raise SweepConfigError(f"{here}: duplicate name {name!r}")
        seen.add(name)
        entries.append(Entry(name, _configs(item.get("configs"), root, f"{here}.configs"),
                             _overrides(item.get("overrides"), f"{here}.overrides"),
                             item.get("metric") if is_task else None))
    return entries


def load_sweep(path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
               overrides: Sequence[tuple[str, Any]] = ()) -> Sweep:
    """Parse and check a sweep YAML (see the module doc). ``output`` replaces its ``output``;
    ``overrides`` (``--set``) come after every override of the YAML, for every cell."""
    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SweepConfigError(f"{path}: cannot read the sweep YAML: {exc}") from exc
    where = str(path)
    if not isinstance(raw, dict):
        raise SweepConfigError(f"{where}: expected a mapping at the top level")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise SweepConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    root = (path.parent / str(raw.get("root") or ".")).resolve()
    out = Path(output).resolve() if output is not None else None
    if out is None:
        if not raw.get("output"):
            raise SweepConfigError(f"{where}: 'output' is required (or pass --output)")
        out = (root / str(raw["output"])).resolve()
    seeds = _as_list(raw.get("seeds", [0]), f"{where}: seeds")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepConfigError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepConfigError(f"{where}: duplicate seeds in {seeds!r}")
    timeout = raw.get("cell_timeout_s")
    sweep = Sweep(
        path=path, root=root, output=out, seeds=list(seeds), data_seed=bool(raw.get("data_seed", True)),
        cell_timeout_s=float(timeout) if timeout is not None else None,
        configs=_configs(raw.get("configs"), root, f"{where}: configs"),
        overrides=_overrides(raw.get("overrides"), f"{where}: overrides"),
        command_overrides=tuple(overrides),
        backbones=_entries(raw.get("backbones"), root, f"{where}: backbones", required=False),
        tasks=_entries(raw.get("tasks"), root, f"{where}: tasks", is_task=True),
        methods=_entries(raw.get("methods"), root, f"{where}: methods"),
    )
    names = {"task": {t.name for t in sweep.tasks}, "backbone": {b.name for b in sweep.backbones},
             "method": {m.name for m in sweep.methods}, "seed": set(sweep.seeds)}
    for i, rule in enumerate(_as_list(raw.get("exclude"), f"{where}: exclude")):
        if not isinstance(rule, dict) or not set(rule) - {"reason"} or set(rule) - set(names) - {"reason"}:
            raise SweepConfigError(f"{where}: exclude[{i}] must map some of {sorted(names)} (and 'reason') "
                                   f"to values, got {rule!r}")
        for key, value in rule.items():
            if key != "reason" and value not in names[key]:
                raise SweepConfigError(f"{where}: exclude[{i}] names {key} {value!r}, which the sweep does not have")
        sweep.exclude.append(dict(rule))
    if not sweep.cells():
        raise SweepConfigError(f"{where}: every cell is excluded")
    return sweep


# ---- results.csv ---------------------------------------------------------------------------

def read_results(path: Path) -> list[dict[str, str]]:
    """The rows of ``results.csv`` (none when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_results(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``results.csv`` atomically (a temporary file, then ``os.replace``)."""
    metric_cols = sorted({k for r in rows for k in r if k.startswith("test/")})
    extra = sorted({k for r in rows for k in r} - set(COLUMNS) - set(metric_cols))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + metric_cols + extra, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _row_key(row: dict[str, str]) -> tuple[str, str, str, str]:
    return (row.get("task", ""), row.get("backbone", ""), row.get("method", ""), str(row.get("seed", "")))


# ---- one cell (the child process) ------------------------------------------------------------

def _die_with_parent() -> None:
    """Linux: have the kernel kill this cell when the sweep process dies (even by
    SIGKILL), so a killed sweep leaves no orphan training behind."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)


def one_line(text: str, limit: int = 400) -> str:
    """Collapse an error message to one line for the CSV and the table."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _StderrTail:
    """Passes stderr through and keeps its last lines (argparse-style errors end
    in a ``SystemExit`` whose message only went to stderr)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.text = stream, ""

    def write(self, s: str) -> int:
        self.text = (self.text + s)[-20000:]
        return self.stream.write(s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def error_line(self) -> str | None:
        """The last ``error: ...`` message and what follows it, else the last line."""
        lines = [ln.strip() for ln in self.text.splitlines() if ln.strip()]
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].lower().startswith("error:") or ": error:" in lines[i].lower():
                return " ".join(lines[i:])
        return lines[-1] if lines else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def run_cell(cell_dir: str | os.PathLike[str]) -> int:
    """Run one cell (``python -m peftlab.sweep --run-cell DIR``): fit and test
    with the arguments in ``DIR/cell.json``; write ``DIR/result.json``."""
    _die_with_parent()
    cell_dir = Path(cell_dir)
    spec = json.loads((cell_dir / CELL_SPEC).read_text())
    tail = _StderrTail(sys.stderr)
    sys.stderr = tail
    result: dict[str, Any] = {"status": "failed"}
    start = time.perf_counter()
    try:
        from peftlab.callbacks import proc_status_mb
        from peftlab.experiment import fit_and_test
        from peftlab.metrics import PRIMARY_METRIC

        baseline_mb = proc_status_mb("VmRSS")  # torch + Lightning imported, nothing built yet
        summary = fit_and_test(list(spec["args"]) + [f"--trainer.default_root_dir={cell_dir}"],
                               title=f"sweep cell {spec['label']}")
        metric = spec.get("metric") or PRIMARY_METRIC[summary["task_type"]]
        run_dir = Path(summary["log_dir"] or cell_dir)
        adapter = run_dir / "adapter" / "adapter.safetensors"
        # StepTimer reports VmHWM on the CPU: this process image's own peak (not the forking sweep's)
        if summary["peak_memory_kind"] == "cpu_peak_rss" and baseline_mb is not None:
            summary["peak_memory_growth_mb"] = summary["peak_memory_mb"] - baseline_mb
        result = {
            "status": "ok", "error": "", "primary_metric": f"test/{metric}",
            "primary_value": summary["test"].get(f"test/{metric}"),
            "adapter_bytes": adapter.stat().st_size if adapter.is_file() else None,
            "run_dir": str(run_dir), "summary": summary,
        }
        if result["primary_value"] is None:
            result.update(status="failed", error=f"the test metrics have no test/{metric} "
                                                 f"(logged: {', '.join(sorted(summary['test']))})")
    except SystemExit as exc:  # the CLI's argument errors
        result["error"] = (one_line(tail.error_line() or f"exited with status {exc.code}")
                           if exc.code not in (0, None) else "the CLI exited before training (status 0)")
    except BaseException as exc:  # noqa: BLE001 - a cell's failure is data, not a crash
        import traceback
        traceback.print_exc()
        result["error"] = one_line(f"{type(exc).__name__}: {exc}")
    finally:
        sys.stderr = tail.stream
    result["cell_seconds"] = time.perf_counter() - start
    _write_json(cell_dir / CELL_RESULT, result)
    return 0 if result["status"] == "ok" else 1


def _row_from_result(cell: Cell, result: dict[str, Any], output: Path) -> dict[str, Any]:
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
            backbone_name=summary["backbone"], checkpoint=_checkpoint_label(summary.get("checkpoint")),
            run_dir=os.path.relpath(result["run_dir"], output),
        )
        row.update(summary["test"])
    return row


def _checkpoint_label(selection: dict[str, Any] | None) -> str:
    """The selected checkpoint in a results row: ``best val/auroc (max) epoch=3-step=40`` or ``last``."""
    if not selection:
        return ""
    if selection.get("selected") == "best":
        name = Path(selection.get("path") or "").stem.removeprefix("best-")
        return f"best {selection.get('monitor')} ({selection.get('mode')}) {name}".strip()
    return str(selection.get("selected", ""))


# ---- the sweep (the parent process) -----------------------------------------------------------

@dataclass
class SweepReport:
    """What one invocation did: which cells it launched and which it skipped."""
    output: Path
    launched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    markdown: Path | None = None
    plots: list[Path] = field(default_factory=list)


class _Interrupted(Exception):
    pass


def _launch(cell: Cell, sweep: Sweep, cell_dir: Path) -> dict[str, Any]:
    """Run one cell in a subprocess; return its result (an error result when the
    subprocess died without writing one)."""
    if cell_dir.exists():
        shutil.rmtree(cell_dir)  # a failed or stale earlier attempt
    cell_dir.mkdir(parents=True)
    _write_json(cell_dir / CELL_SPEC, {
        "label": cell.label, "task": cell.task, "backbone": cell.backbone, "method": cell.method,
        "seed": cell.seed, "metric": cell.metric, "args": list(cell.args), "cwd": str(sweep.root),
        "equivalent_command": "peftlab fit " + shlex.join([*cell.args, f"--trainer.default_root_dir={cell_dir}"])
                              + "  # then test",
    })
    env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
    command = [sys.executable, "-m", "peftlab.sweep", "--run-cell", str(cell_dir)]
    with open(cell_dir / CELL_LOG, "wb") as log:
        # own session: a Ctrl-C reaches only the sweep, which then stops the cell itself
        proc = subprocess.Popen(command, cwd=sweep.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=sweep.cell_timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return {"status": "failed", "error": f"timed out after {sweep.cell_timeout_s:g} s (cell_timeout_s)"}
        except BaseException:
            _kill(proc)
            raise
    result_path = cell_dir / CELL_RESULT
    if result_path.is_file():
        return json.loads(result_path.read_text())
    why = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    return {"status": "failed", "error": one_line(f"the cell process {why} without a result; "
                                                  f"last output: {_last_line(cell_dir / CELL_LOG)}")}


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the cell and any data loader workers
    except (AttributeError, ProcessLookupError, PermissionError):  # no process groups (Windows), or gone
        proc.kill()
    proc.wait()


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_sweep(sweep: Sweep, dry_run: bool = False) -> SweepReport:
    """Run (or, with ``dry_run``, list) every cell not yet recorded as ok, then
    write the tables and plots."""
    out = sweep.output
    cells = sweep.cells()
    csv_path = out / RESULTS_CSV
    rows = read_results(csv_path)
    by_key = {_row_key(r): r for r in rows}
    report = SweepReport(output=out)
    n_axes = " x ".join([f"{len(sweep.tasks)} task(s)"]
                        + ([f"{len(sweep.backbones)} backbone(s)"] if sweep.backbones else [])
                        + [f"{len(sweep.methods)} method(s)", f"{len(sweep.seeds)} seed(s)"])
    n_excluded = len(sweep.tasks) * max(1, len(sweep.backbones)) * len(sweep.methods) * len(sweep.seeds) - len(cells)
    print(f"peftlab sweep {sweep.name}: {len(cells)} cells ({n_axes}"
          f"{f', {n_excluded} excluded' if n_excluded else ''}) -> {out}", flush=True)

    def state(cell: Cell) -> str:
        row = by_key.get(cell.key)
        if row is None:
            return "pending"
        if row.get("status") != "ok":
            return "failed, will retry"
        return "done" if row.get("args_hash") == cell.args_hash else "config changed, will rerun"

    if dry_run:
        for k, cell in enumerate(cells, 1):
            print(f"[{k}/{len(cells)}] {cell.label}  ({state(cell)})  -> {CELLS_DIR}/{cell.dirname}")
            print("    peftlab fit " + shlex.join(_show_path(Path(a), sweep.root) if os.path.isabs(a) else a
                                                  for a in cell.args))
        for task, backbone, method, reason in sweep.excluded_cells():
            print(f"excluded: {' / '.join(p for p in (task, backbone, method) if p)}  ({reason})")
        return report

    out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells if state(c) != "done"]
    start, durations, k_run = time.perf_counter(), [], 0
    interrupted = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:  # signal handlers can only be set there
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        for k, cell in enumerate(cells, 1):
            if cell not in todo:
                report.skipped.append(cell.dirname)
                print(f"[{k}/{len(cells)}] {cell.label}: ok in {RESULTS_CSV}, skipped", flush=True)
                continue
            print(f"[{k}/{len(cells)}] {cell.label}: running ({state(cell)}) ...", flush=True)
            t0 = time.perf_counter()
            report.launched.append(cell.dirname)
            result = _launch(cell, sweep, out / CELLS_DIR / cell.dirname)
            durations.append(time.perf_counter() - t0)
            k_run += 1
            result["cell_seconds"] = durations[-1]  # wall time, process start included
            row = _row_from_result(cell, result, out)
            by_key[cell.key] = row
            rows = [r for r in rows if _row_key(r) != cell.key] + [row]
            write_results(csv_path, rows)
            left = len(todo) - k_run
            eta = left * sum(durations) / len(durations)
            what = (f"ok, {row['primary_metric']} = {row['primary_value']:.4f}" if row["status"] == "ok"
                    else f"FAILED: {row['error']}")
            if row["status"] != "ok":
                report.failed.append(cell.dirname)
            print(f"[{k}/{len(cells)}] {cell.label}: {what} ({durations[-1]:.1f} s) | elapsed "
                  f"{_fmt_seconds(time.perf_counter() - start)}, ETA {_fmt_seconds(eta)} "
                  f"({left} cell(s) left)", flush=True)
    except (KeyboardInterrupt, _Interrupted) as exc:
        print(f"\nsweep interrupted ({exc or 'Ctrl-C'}); {RESULTS_CSV} holds every finished cell, "
              "run the same command again to resume", flush=True)
        raise SystemExit(130) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, interrupted)

    ordered = {c.key: c for c in cells}
    planned = [by_key[c.key] for c in cells if c.key in by_key]
    if set(by_key) - set(ordered):
        print(f"note: {RESULTS_CSV} also keeps {len(set(by_key) - set(ordered))} row(s) of cells that are no "
              "longer in the sweep; the tables leave them out")
    report.markdown = out / RESULTS_MD
    markdown = render_markdown(sweep, planned)
    tmp = report.markdown.with_name(f".{RESULTS_MD}.tmp")
    tmp.write_text(markdown)
    os.replace(tmp, report.markdown)
    report.plots = make_plots(sweep, planned, out)
    print("\n" + markdown)
    print(f"results:  {csv_path}\ntables:   {report.markdown}")
    for p in report.plots:
        print(f"plot:     {p}")
    print(f"{len(report.launched)} cell(s) run, {len(report.skipped)} skipped (done), "
          f"{sum(r.get('status') != 'ok' for r in planned)} failed; total {_fmt_seconds(time.perf_counter() - start)}")
    return report


# ---- tables and plots ---------------------------------------------------------------------------

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
             f"Sweep `{_show_path(sweep.path, sweep.root)}`, {len(sweep.seeds)} seed(s) {sweep.seeds}; machine: "
             f"{platform.machine()}, {os.cpu_count()} CPU cores. Metric: mean ± sample std over the seeds "
             "(n = seeds that finished). Trainable params: trained parameters, head included, and their share of "
             "the backbone's parameters. Peak memory: " + (", ".join(kinds) or "-") + " (cpu_peak_rss = the cell "
             "process's peak resident set, in brackets its growth over the process after importing torch and "
             "Lightning; cuda_max_allocated = torch's CUDA max allocated). Cost columns: means over the seeds.", ""]
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
        lines.append("| " + " | ".join(head + ["method", metric.removeprefix("test/"), "trainable params",
                                                  "adapter size", "peak memory MB", "ms/step", "samples/s"]) + " |")
        lines.append("|" + "---|" * len(head) + "---|---:|---:|---:|---:|---:|---:|")
        for g in _groups(sweep, task_rows, task.name):
            first = [g.backbone] if sweep.backbones else []
            failed = [r for r in g.rows if r.get("status") != "ok"]
            if not g.ok():
                err = failed[0].get("error", "") if failed else ""
                lines.append("| " + " | ".join(first + [g.method, f"failed: {_md(err)}"] + ["-"] * 5) + " |")
                continue
            mean, std, n = g.stat("primary_value")
            if mean is None:  # the metric was NaN for every seed (e.g. a constant prediction)
                value = f"nan (n={len(g.ok())})"
            else:
                value = (f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}") + f" (n={n})"
            if failed:
                value += f"; {len(failed)} seed(s) failed: {_md(failed[0].get('error', ''))}"
            params, _, _ = g.stat("trainable_params")
            pct, _, _ = g.stat("trainable_pct_of_backbone")
            size, _, _ = g.stat("adapter_bytes")
            mem, _, _ = g.stat("peak_memory_mb")
            growth, _, _ = g.stat("peak_memory_growth_mb")
            ms, ms_std, _ = g.stat("ms_per_step")
            sps, _, _ = g.stat("samples_per_s")
            lines.append("| " + " | ".join(first + [
                g.method, value, f"{params:,.0f} ({pct:.3g}%)" if params is not None else "-", _bytes(size),
                (f"{mem:,.0f}" + (f" (+{growth:,.0f})" if growth is not None else "")) if mem is not None else "-",
                (f"{ms:.1f} ± {ms_std:.1f}" if ms_std is not None else f"{ms:.1f}") if ms is not None else "-",
                f"{sps:.1f}" if sps is not None else "-"]) + " |")
        for t, backbone, method, reason in sweep.excluded_cells():
            if t == task.name:
                lines.append(f"\nNot run: {' / '.join(p for p in (backbone, method) if p)} (excluded in the sweep "
                             f"config{': ' + reason if reason else ''}).")
        lines.append("")
    return "\n".join(lines)


def _show_path(path: Path, root: Path) -> str:
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
        metric = groups[0].ok()[0].get("primary_metric", "metric")
        pts, labels, errs = [], [], []
        for g in groups:
            share, _, _ = g.stat("trainable_share")
            mean, std, _ = g.stat("primary_value")
            if share is not None and share > 0 and mean is not None:
                pts.append((share, mean))
                errs.append(std or 0.0)
                labels.append(g.label)
        if pts:
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
            ax.set_title(f"{sweep.name}: {task.name}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = out / f"{task.name}_pareto.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
        fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(max(6.4, 1.1 * len(groups) + 3), 4.0))
        names = [g.label for g in groups]
        x = list(range(len(groups)))
        for ax, key, title in ((ax_mem, "peak_memory_mb", "peak memory (MB)"),
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
            ax.set_title(title)
            ax.grid(True, axis="y", alpha=0.3)
        fig.suptitle(f"{sweep.name}: {task.name} (cost per method)")
        fig.tight_layout()
        path = out / f"{task.name}_cost.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


# ---- command line -----------------------------------------------------------------------------

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
    parser.add_argument("--run-cell", metavar="DIR", help=argparse.SUPPRESS)  # internal: the child process
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if ns.run_cell:
        return run_cell(ns.run_cell)
    if not ns.config:
        parser.error("--config is required")
    try:
        sweep = load_sweep(ns.config, ns.output, overrides=[_key_value(o) for o in ns.overrides])
    except SweepConfigError as exc:
        parser.error(str(exc))
    report = run_sweep(sweep, dry_run=ns.dry_run)
    return 1 if report.failed or (not ns.dry_run and _any_failed(sweep)) else 0


def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``; the value is read as YAML (numbers, booleans, null, lists)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SweepConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. trainer.max_epochs=1")
    return key.strip().removeprefix("--"), yaml.safe_load(value) if value.strip() else value


def _any_failed(sweep: Sweep) -> bool:
    rows = {_row_key(r): r for r in read_results(sweep.output / RESULTS_CSV)}
    return any(rows.get(c.key, {}).get("status") != "ok" for c in sweep.cells())


if __name__ == "__main__":
    sys.exit(main())
