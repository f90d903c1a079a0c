"""``search`` in a sweep YAML: tune each method before the table, so that the table compares tuned methods.

    search:
      trials: 8                # the budget of each (task, backbone, method) study
      lr: [1.0e-4, 3.0e-2]     # learning rate, log-uniform (model.lr; the head trains with it too)
      size: [2, 32]            # optional: the method's size, log-uniform integers: LoRA's r, an adapter's
                               # bottleneck, prompt num_tokens ... (each method class's ``size_option``)
      size_options: {lora: r}  # optional: another option as a method's size, or null for the rate only
      methods: [lora, adapter] # optional: the methods to tune (default: every method)
      metric: auroc            # the validation metric (val/METRIC) when a task names no metric
      seed: 0                  # optional: the seed the trials run with (default: the sweep's first)
      pruning: true            # optional: stop trials whose validation metric trails the median (default true)
      overrides: {}            # optional: CLI overrides for the trials only (e.g. fewer epochs)

Each study is an Optuna study (TPE sampler, median pruner) stored in ``<output>/search/<task>__<method>.db``
(SQLite): a rerun continues it up to its budget. A trial is a fit without a test, in its own process like a
cell (``search/<study>/trial<N>/``), scored on the validation metric only: its best epoch, which Optuna's
``PyTorchLightningPruningCallback`` reports each epoch (and prunes on). Every seed of the sweep then runs
with each method's best parameters and is tested as usual; ``results.md`` names the parameters that won
and the trials behind them.
"""

from __future__ import annotations

import inspect
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab.errors import SweepConfigError
from peftlab.sweep.config import Cell, Sweep
from peftlab.tasks import lower_is_better

SEARCH_DIR = "search"
SEARCH_KEYS = {"trials", "lr", "size", "size_options", "methods", "metric", "seed", "pruning", "overrides"}


@dataclass(frozen=True)
class SearchSpec:
    trials: int
    lr: tuple[float, float]
    size: tuple[int, int] | None
    size_options: dict[str, str | None]  # tuned method -> its size option (None: the rate only)
    metric: str | None
    seed: int
    pruning: bool
    overrides: tuple[tuple[str, Any], ...]


def _range(value: Any, kind: type, where: str) -> tuple[Any, Any]:
    ok = (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
          and 0 < value[0] <= value[1] and (kind is float or all(float(v).is_integer() for v in value)))
    if not ok:
        raise SweepConfigError(f"{where}: expected [low, high] with 0 < low <= high"
                               f"{' (integers)' if kind is int else ''}, got {value!r}")
    return kind(value[0]), kind(value[1])


def parse_search(raw: Any, sweep: Sweep, where: str) -> SearchSpec:
    """Check the ``search`` block against the sweep (its methods, their options, the tasks' metrics)."""
    from peftlab.sweep.config import _overrides

    if not isinstance(raw, dict) or set(raw) - SEARCH_KEYS or "trials" not in raw or "lr" not in raw:
        raise SweepConfigError(f"{where}: a mapping with trials and lr (and optionally "
                               f"{sorted(SEARCH_KEYS - {'trials', 'lr'})}), got {raw!r}")
    trials = raw["trials"]
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise SweepConfigError(f"{where}.trials: a positive integer, got {trials!r}")
    names = [m.name for m in sweep.methods]
    methods = raw.get("methods") or names
    unknown = [m for m in methods if m not in names] + [m for m in raw.get("size_options") or {} if m not in methods]
    if unknown:
        raise SweepConfigError(f"{where}: method(s) {unknown} are not among the tuned methods {methods}")
    metric = raw.get("metric")
    untargeted = [t.name for t in sweep.tasks if not (t.metric or metric)]
    if untargeted:
        raise SweepConfigError(f"{where}: task(s) {untargeted} name no metric; give search a metric (the "
                               "validation metric to tune on, e.g. metric: auroc) or each task a metric")
    size = _range(raw["size"], int, f"{where}.size") if raw.get("size") is not None else None
    options = {m: _size_option(sweep, m, (raw.get("size_options") or {}), size is not None, where) for m in methods}
    return SearchSpec(trials=trials, lr=_range(raw["lr"], float, f"{where}.lr"), size=size, size_options=options,
                      metric=metric, seed=int(raw.get("seed", sweep.seeds[0])), pruning=bool(raw.get("pruning", True)),
                      overrides=_overrides(raw.get("overrides"), f"{where}.overrides"))


def _size_option(sweep: Sweep, method: str, explicit: dict[str, Any], sized: bool, where: str) -> str | None:
    """The option that sets ``method``'s size: the one ``size_options`` names (checked against the
    method class's ``__init__``), else the class's ``size_option``; None without ``size``."""
    cls = method_class(next(c for c in sweep.cells() if c.method == method), f"{where}: method {method!r}")
    option = explicit.get(method, cls.size_option) if sized else None
    options = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    if option is not None and option not in options:
        raise SweepConfigError(f"{where}.size_options.{method}: {cls.__name__} has no option {option!r}; "
                               f"its options: {', '.join(options)}")
    return option


def method_class(cell: Cell, where: str) -> type:
    """The method class a cell's arguments name (``model.method``'s ``class_path``)."""
    import importlib

    from peftlab.catalog import class_references
    from peftlab.methods import METHODS

    named = [name for _, key, name in class_references(list(cell.args)) if key == "model.method"]
    if not named:
        raise SweepConfigError(f"{where}: its configs name no model.method class_path")
    path = named[-1]
    by_name = {n: c for c in METHODS.values() for n in (c.name, c.__name__)}
    if "." not in path and path in by_name:
        return by_name[path]
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SweepConfigError(f"{where}: cannot import its method class {path!r}: {exc}") from exc


# ---- the studies (parent process) --------------------------------------------------------------

@dataclass
class Study:
    """One (task, backbone, method) study and what it found."""
    task: str
    backbone: str
    method: str
    metric: str  # val/...
    size_option: str | None
    trials: int = 0
    pruned: int = 0
    failed: int = 0
    best_value: float | None = None
    best_params: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return "__".join([self.task] + ([self.backbone] if self.backbone else []) + [self.method])

    def overrides(self) -> tuple[tuple[str, Any], ...]:
        """The best parameters as cell overrides."""
        if not self.best_params:
            return ()
        lr = self.best_params["lr"]
        out: list[tuple[str, Any]] = [("model.lr", lr), ("model.head_lr", lr)]
        if self.size_option and "size" in self.best_params:
            out.append((f"model.method.init_args.{self.size_option}", self.best_params["size"]))
        return tuple(out)


def studies(sweep: Sweep) -> list[Study]:
    spec: SearchSpec = sweep.search
    found = []
    for cell in sweep.cells():
        if cell.seed != sweep.seeds[0] or cell.method not in spec.size_options:
            continue
        task = next(t for t in sweep.tasks if t.name == cell.task)
        found.append(Study(cell.task, cell.backbone, cell.method, f"val/{task.metric or spec.metric}",
                           spec.size_options[cell.method]))
    return found


def run_search(sweep: Sweep, dry_run: bool = False, cold: bool = False) -> list[Study]:
    """Run (or continue) every study up to its budget; set ``sweep.tuned`` to the winners."""
    from peftlab.sweep.warm import WarmStarter, preload_modules

    found = studies(sweep)
    warm = None
    try:
        for study in found:
            if dry_run and not _storage_path(sweep, study).is_file():
                print(f"search {study.name}: {sweep.search.trials} trial(s) on {study.metric} (not started)")
                continue
            if not dry_run and warm is None and not cold:
                warm = WarmStarter(preload_modules([c.args for c in sweep.cells()[:1]], sweep.root))
            _run_study(sweep, study, warm, dry_run)
            sweep.tuned[(study.task, study.backbone, study.method)] = study.overrides()
    finally:
        if warm is not None:
            warm.close()
    sweep.search_outcomes = {(s.task, s.backbone, s.method): s for s in found}
    return found


def _storage_path(sweep: Sweep, study: Study) -> Path:
    return sweep.output / SEARCH_DIR / f"{study.name}.db"


def _open_study(sweep: Sweep, study: Study) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec: SearchSpec = sweep.search
    path = _storage_path(sweep, study)
    path.parent.mkdir(parents=True, exist_ok=True)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=max(1, spec.trials // 4)) if spec.pruning
              else optuna.pruners.NopPruner())
    return optuna.create_study(study_name=study.name, storage=f"sqlite:///{path}", load_if_exists=True,
                               direction="minimize" if lower_is_better(study.metric) else "maximize",
                               # a sampler seed of its own per study: the studies do not all draw the same rates
                               sampler=optuna.samplers.TPESampler(seed=spec.seed + zlib.crc32(study.name.encode())),
                               pruner=pruner)


def _distributions(sweep: Sweep, study: Study) -> dict[str, Any]:
    from optuna.distributions import FloatDistribution, IntDistribution

    spec: SearchSpec = sweep.search
    out: dict[str, Any] = {"lr": FloatDistribution(*spec.lr, log=True)}
    if study.size_option and spec.size:
        out["size"] = IntDistribution(*spec.size, log=True)
    return out


def _run_study(sweep: Sweep, study: Study, warm: Any, dry_run: bool) -> None:
    """Trials up to the budget (one after another: each learns from the ones before), then the best."""
    from optuna.trial import TrialState

    handle = _open_study(sweep, study)
    for stale in handle.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        # a trial of an interrupted sweep: closed, and not counted against the budget
        handle._storage.set_trial_user_attr(stale._trial_id, "interrupted", True)
        handle.tell(stale.number, state=TrialState.FAIL)
    counted = [t for t in handle.get_trials(deepcopy=False) if not t.user_attrs.get("interrupted")]
    print(f"search {study.name}: {len(counted)}/{sweep.search.trials} trial(s) done, on {study.metric}", flush=True)
    while not dry_run and len(counted) < sweep.search.trials:
        trial = handle.ask(_distributions(sweep, study))
        state, value, error = _trial(sweep, study, handle, trial, warm)
        handle.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        if error:
            handle._storage.set_trial_user_attr(trial._trial_id, "error", error)
        counted.append(trial)
        print(f"search {study.name}: trial {trial.number} {dict(trial.params)} -> "
              f"{state.name.lower()}{'' if value is None else f', {study.metric} = {value:.4f}'}"
              f"{f' ({error})' if error else ''}", flush=True)
    finished = [t for t in handle.get_trials(deepcopy=False) if not t.user_attrs.get("interrupted")]
    study.trials = len(finished)
    study.pruned = sum(t.state == TrialState.PRUNED for t in finished)
    study.failed = sum(t.state == TrialState.FAIL for t in finished)
    if any(t.state == TrialState.COMPLETE for t in finished):
        best = handle.best_trial
        study.best_value, study.best_params = best.value, dict(best.params)


def _trial(sweep: Sweep, study: Study, handle: Any, trial: Any, warm: Any) -> tuple[Any, float | None, str]:
    """One trial in its own process: its state, its best validation value and an error."""
    from optuna.trial import TrialState

    from peftlab.sweep.cell import write_json
    from peftlab.sweep.runner import run_prepared

    cell = next(c for c in sweep.cells() if (c.task, c.backbone, c.method) == (study.task, study.backbone, study.method))
    params = dict(trial.params)
    overrides = list(sweep.search.overrides) + list(Study(**{**study.__dict__, "best_params": params}).overrides())
    args = _with_seed(list(cell.args), sweep.search.seed) + [f"--{k}={v}" for k, v in overrides]
    cell_dir = sweep.output / SEARCH_DIR / study.name / f"trial{trial.number}"
    cell_dir.mkdir(parents=True, exist_ok=True)
    write_json(cell_dir / "cell.json", {
        "label": f"{study.name} trial {trial.number}", "args": args, "metric": study.metric,
        "trial": {"storage": f"sqlite:///{_storage_path(sweep, study)}", "study": study.name,
                  "trial_id": trial._trial_id, "monitor": study.metric}})
    result = run_prepared(sweep, cell_dir, warm)
    reported = handle._storage.get_trial(trial._trial_id).intermediate_values
    values = list(reported.values())
    best = (min(values) if lower_is_better(study.metric) else max(values)) if values else None
    if result.get("status") == "pruned":
        return TrialState.PRUNED, best, ""
    if result.get("status") != "ok" or best is None or not math.isfinite(best):
        return TrialState.FAIL, None, result.get("error") or f"no finite {study.metric} was logged"
    return TrialState.COMPLETE, best, ""


def _with_seed(args: list[str], seed: int) -> list[str]:
    return [f"--seed_everything={seed}" if a.startswith("--seed_everything=") else
            f"--data.init_args.seed={seed}" if a.startswith("--data.init_args.seed=") else a for a in args]


# ---- one trial (its own process, like a cell) --------------------------------------------------

def run_trial(spec: dict[str, Any], cell_dir: Path) -> dict[str, Any]:
    """Fit (no test) with Optuna's pruning callback reporting the validation metric each epoch."""
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    from peftlab.lightning_cli import build_cli

    info = spec["trial"]
    study = optuna.load_study(study_name=info["study"], storage=info["storage"])
    trial = optuna.trial.Trial(study, info["trial_id"])
    cli = build_cli(list(spec["args"]) + [f"--trainer.default_root_dir={cell_dir}"], run=False)
    cli.trainer.callbacks.append(PyTorchLightningPruningCallback(trial, monitor=info["monitor"]))
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    except optuna.TrialPruned as exc:
        return {"status": "pruned", "error": "", "note": str(exc)}
    return {"status": "ok", "error": ""}
