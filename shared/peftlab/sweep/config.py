"""The sweep YAML: its schema (see :mod:`peftlab.sweep`), the cells it defines and their arguments."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from peftlab.errors import SweepConfigError


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

_TOP_KEYS = {"root", "output", "seeds", "data_seed", "cell_timeout_s", "parallel_cells", "configs", "overrides",
             "backbones", "tasks", "methods", "exclude", "baseline", "executor", "resources", "search", "tracking"}

#: where the cells run: here, one process each (``local``), or one submitit job per cell or chunk of cells
#: (``slurm``; ``submitit_local``: submitit's local executor, the same machinery without a cluster)
EXECUTORS = ("local", "submitit_local", "slurm")

#: ``resources``: what each job asks for (``executor: slurm`` / ``submitit_local``)
RESOURCE_KEYS = {"gpus", "cpus", "mem_gb", "time_min", "partition", "cells_per_job", "slurm_additional_parameters",
                 "slurm_setup", "poll_s"}

#: ``tracking``: a Lightning logger that every cell also logs to, with a local file store
TRACKERS = ("tensorboard", "mlflow")

_ENTRY_KEYS = {"name", "configs", "overrides"}

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
    baseline: str | None = None  # the method every other is compared with in results.md
    executor: str = "local"
    parallel_cells: int = 1  # executor local: how many cells run at once (they share the cores: peftlab.threads)
    resources: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, Any] | None = None  # {"logger": tensorboard | mlflow, "uri": ...}
    search: Any = None  # a peftlab.sweep.search.SearchSpec
    #: (task, backbone, method) -> the overrides the search chose (after the method's own, before ``--set``)
    tuned: dict[tuple[str, str, str], tuple[tuple[str, Any], ...]] = field(default_factory=dict)
    search_outcomes: dict[tuple[str, str, str], Any] = field(default_factory=dict)  # -> search.Study

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
        tuned = self.tuned.get((task.name, backbone.name, method.name), ())
        overrides = [*self.overrides, *backbone.overrides, *task.overrides, *method.overrides, *tuned,
                     *self.command_overrides]
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
    sweep.baseline = raw.get("baseline", "full" if "full" in names["method"] else None)
    if sweep.baseline is not None and sweep.baseline not in names["method"]:
        raise SweepConfigError(f"{where}: baseline {sweep.baseline!r} is not one of the methods "
                               f"{sorted(names['method'])}")
    _run_options(sweep, raw, where)
    return sweep


def set_parallel_cells(sweep: Sweep, parallel: Any, where: str) -> None:
    """``parallel_cells`` (the YAML's or ``--parallel-cells``): a whole number >= 1, above 1 only for
    executor local (the job executors group cells with ``resources.cells_per_job``)."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise SweepConfigError(f"{where}: parallel_cells must be a whole number >= 1, got {parallel!r}")
    if parallel > 1 and sweep.executor != "local":
        raise SweepConfigError(f"{where}: parallel_cells is for executor local; {sweep.executor} runs cells as jobs "
                               f"(resources.cells_per_job)")
    sweep.parallel_cells = parallel


def _run_options(sweep: Sweep, raw: dict[str, Any], where: str) -> None:
    """``executor``, ``resources``, ``tracking`` and ``search``: how and where the cells run."""
    sweep.executor = str(raw.get("executor") or "local")
    if sweep.executor not in EXECUTORS:
        raise SweepConfigError(f"{where}: executor {sweep.executor!r} is not one of {list(EXECUTORS)}")
    set_parallel_cells(sweep, raw.get("parallel_cells", 1), where)
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict) or set(resources) - RESOURCE_KEYS:
        raise SweepConfigError(f"{where}: resources must map some of {sorted(RESOURCE_KEYS)} to values, got "
                               f"{resources!r}")
    if resources and sweep.executor == "local":
        raise SweepConfigError(f"{where}: resources are for executor slurm or submitit_local; executor is local")
    sweep.resources = dict(resources)
    tracking = raw.get("tracking")
    if tracking is not None:
        if isinstance(tracking, str):
            tracking = {"logger": tracking}
        if (not isinstance(tracking, dict) or set(tracking) - {"logger", "uri"}
                or tracking.get("logger") not in TRACKERS):
            raise SweepConfigError(f"{where}: tracking must be one of {list(TRACKERS)} or {{logger: "
                                   f"{'|'.join(TRACKERS)}, uri: ...}}, got {tracking!r}")
        sweep.tracking = dict(tracking)
    if raw.get("search") is not None:
        from peftlab.sweep.search import parse_search

        sweep.search = parse_search(raw["search"], sweep, f"{where}: search")
