"""Run folders: what a fit writes, which checkpoint it selects, and how a later
command finds the run again.

A run folder (``--run_dir DIR``, else ``lightning_logs/version_N`` under the
trainer's ``default_root_dir``) holds::

    config.yaml         the resolved configuration
    metrics.csv         every logged value (CSVLogger)
    checkpoints/
      last.ckpt         the latest training state, always (what ``--ckpt_path last`` resumes)
      best-epoch=E-step=S.ckpt
                        the best on the monitored validation metric (``checkpoint.monitor``)
    adapter/            the trained tensors of the *selected* checkpoint (see below)
    predictions.csv     ``peftlab predict``
    test_metrics.json   ``peftlab test``: the metrics, the checkpoint and the data that produced them

**Selection.** A run with a monitored validation metric selects its best
checkpoint on that metric; a run without one selects the last. ``adapter/``
is exported from the selected checkpoint, the recipes and sweep cells test it,
and ``adapter_config.json`` records which one and why.

Lightning (2.6) gives neither guarantee on its own: ``ModelCheckpoint(save_last=True)``
next to a monitor rewrites ``last.ckpt`` only when a new best is saved, and
``ckpt_path="last"`` looks in the *new* run's folder, so it resumes nothing.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from peftlab.errors import RunFolderError
from peftlab.tasks import lower_is_better

CHECKPOINT_DIR = "checkpoints"
LAST_NAME = "last"
LAST_FILE = f"{LAST_NAME}.ckpt"
BEST_PREFIX = "best"
LOGS_DIR = "lightning_logs"
#: the attribute the CLI sets on a trainer whose run folder the user named (``--run_dir``)
RUN_DIR_ATTR = "peftlab_run_dir"


def run_folder(trainer: L.Trainer) -> Path:
    """The run's folder: the one ``--run_dir`` named, else the logger's
    ``log_dir``, else the trainer's root (``logger=False`` / ``fast_dev_run``)."""
    named = getattr(trainer, RUN_DIR_ATTR, None)
    return Path(named or trainer.log_dir or trainer.default_root_dir)


class RunCSVLogger(CSVLogger):
    """Lightning's CSVLogger writing into the run folder itself (no
    ``version_N`` below it). When a run is resumed in its folder it keeps the
    run's ``metrics.csv`` and appends to it (Lightning's writer deletes the file
    of a non-empty folder); the rows logged after the resumed checkpoint were
    dropped beforehand (:func:`drop_metric_rows_after`)."""

    def __init__(self, run_dir: str | os.PathLike, resuming: bool = False) -> None:
        super().__init__(save_dir=str(run_dir), name="", version="")
        self.resuming = resuming

    @property
    def log_dir(self) -> str:
        return os.path.normpath(super().log_dir)

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = (_ContinuingWriter if self.resuming else ExperimentWriter)(log_dir=self.log_dir)
        return self._experiment


class _ContinuingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):  # keep the run's rows; new columns widen the header
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])


# ---- the two checkpoints a fit keeps ----------------------------------------------------------

class LatestCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt``: the latest training state, rewritten at the end
    of every epoch (after its validation), every ``every_n_train_steps``
    optimiser steps when set, and when training stops. It is a one-file top-1
    ModelCheckpoint without a monitor (which always keeps the newest) instead
    of ``save_last`` (which follows a monitored callback's saves). Its state
    key carries its class name, so it never takes a user's own callback's state."""

    def __init__(self, dirpath: str | os.PathLike | None = None, every_n_train_steps: int | None = None) -> None:
        super().__init__(dirpath=dirpath, filename=LAST_NAME, monitor=None, save_top_k=1, save_last=False,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # training stopped between saves (max_steps mid-epoch, early stopping): save where it stopped
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


class BestCheckpoint(ModelCheckpoint):
    """``checkpoints/best-epoch=E-step=S.ckpt``: the best state on a validation
    metric (one file; a better one replaces it)."""

    def __init__(self, monitor: str, mode: str, dirpath: str | os.PathLike | None = None) -> None:
        super().__init__(dirpath=dirpath, filename=BEST_PREFIX + "-{epoch}-{step}", monitor=monitor, mode=mode,
                         save_top_k=1, save_last=False)


class CheckpointOptions:
    """Which checkpoints a fit keeps in ``<run folder>/checkpoints`` (the
    ``checkpoint:`` section of a config, ``--checkpoint.*`` on the command line).

    ``last.ckpt`` always holds the latest state. With ``monitor``, the best
    state on that validation metric is kept beside it and the run selects it:
    ``adapter/`` is exported from it and recipes and sweeps test it.

    Args:
        monitor: a logged validation metric such as ``val/spearman`` or
            ``val/auroc``; ``null`` = select the last checkpoint.
        mode: ``max`` or ``min``; ``null`` = ``min`` for losses and errors
            (``loss``, ``mse``, ``mae``, ``wer`` ...), ``max`` otherwise.
        every_n_train_steps: also rewrite ``last.ckpt`` every N optimiser
            steps (a run killed mid-epoch then loses at most N steps);
            ``null`` = at the end of each epoch only.
    """

    def __init__(self, monitor: str | None = None, mode: str | None = None,
                 every_n_train_steps: int | None = None) -> None:
        if monitor is not None and not monitor.startswith("val/"):
            raise ValueError(f"checkpoint.monitor must be a validation metric (val/...), got {monitor!r}: "
                             "selecting on training or test metrics would report an optimistic number")
        if mode not in (None, "max", "min"):
            raise ValueError(f"checkpoint.mode must be 'max', 'min' or null, got {mode!r}")
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"checkpoint.every_n_train_steps must be >= 1 or null, got {every_n_train_steps}")
        self.monitor = monitor
        self.mode = mode or (("min" if lower_is_better(monitor) else "max") if monitor else "max")
        self.every_n_train_steps = every_n_train_steps

    def callbacks(self, dirpath: str | os.PathLike | None = None) -> list[ModelCheckpoint]:
        checkpoints: list[ModelCheckpoint] = []
        if self.monitor:
            checkpoints.append(BestCheckpoint(self.monitor, self.mode, dirpath))
        checkpoints.append(LatestCheckpoint(dirpath, self.every_n_train_steps))
        return checkpoints


# ---- which checkpoint the run selects ----------------------------------------------------------

def selected_checkpoint(trainer: L.Trainer) -> dict[str, Any]:
    """Which checkpoint a finished fit selects, and why: the best on the monitored
    validation metric when one was monitored and computed, else the latest.

    Returns ``selected`` (``best`` / ``last`` / ``final weights``), ``path`` (the
    file, ``None`` when nothing was saved), ``reason``, and for ``best`` the
    ``monitor``, ``mode`` and ``score``. Our :class:`BestCheckpoint` comes first;
    a user's own monitored ``ModelCheckpoint`` is honoured too.
    """
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    monitored = sorted((cb for cb in callbacks if cb.monitor), key=lambda cb: not isinstance(cb, BestCheckpoint))
    for cb in monitored:
        if cb.best_model_path and Path(cb.best_model_path).exists():
            score = cb.best_model_score
            return {"selected": "best", "path": str(cb.best_model_path), "monitor": cb.monitor, "mode": cb.mode,
                    "score": None if score is None else float(score),
                    "reason": f"best {cb.monitor} ({cb.mode}) on the validation split"}
    unmet = (f"{monitored[0].monitor} was monitored but never computed (no validation ran), so "
             if monitored else "no validation metric was monitored, so ")
    latest = next((cb for cb in callbacks if isinstance(cb, LatestCheckpoint)), None)
    path = latest.best_model_path if latest is not None else ""
    if not path:  # a user's own un-monitored callback, or Lightning's default one
        path = next((cb.last_model_path or cb.best_model_path for cb in callbacks
                     if not cb.monitor and (cb.last_model_path or cb.best_model_path)), "")
    if path and Path(path).exists():
        return {"selected": "last", "path": str(path), "reason": unmet + "the latest state"}
    return {"selected": "final weights", "path": None,
            "reason": unmet + "the weights at the end of training (no checkpoint was written)"}


def describe_selection(selection: dict[str, Any], relative_to: Path | None = None) -> str:
    """One line for summaries: ``best-epoch=3-step=40.ckpt (best val/spearman = 0.5310, max)``."""
    path = selection.get("path")
    shown = Path(path).name if path else "the in-memory weights"
    if path and relative_to is not None and Path(path).is_relative_to(relative_to):
        shown = str(Path(path).relative_to(relative_to))
    if selection["selected"] == "best":
        score = selection.get("score")
        value = f" = {score:.4f}" if score is not None else ""
        return f"{shown} (best {selection['monitor']}{value}, {selection['mode']})"
    return f"{shown} ({selection['reason']})"


# ---- finding a run again -------------------------------------------------------------------------

def latest_run(root: str | os.PathLike) -> Path | None:
    """The newest ``lightning_logs/version_N`` under ``root`` that holds a ``checkpoints/last.ckpt``."""
    logs = Path(root) / LOGS_DIR
    versions = []
    for folder in logs.glob("version_*") if logs.is_dir() else []:
        match = re.fullmatch(r"version_(\d+)", folder.name)
        if match and (folder / CHECKPOINT_DIR / LAST_FILE).is_file():
            versions.append((int(match.group(1)), folder))
    return max(versions)[1] if versions else None


def best_checkpoint(run: Path) -> Path | None:
    """The run's ``best-*.ckpt`` (the newest, should there be several)."""
    found = sorted((run / CHECKPOINT_DIR).glob(f"{BEST_PREFIX}-*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def run_of_checkpoint(path: str | os.PathLike) -> Path | None:
    """The run folder a checkpoint file lies in (``<run>/checkpoints/x.ckpt``), if it does."""
    path = Path(path)
    return path.parent.parent if path.parent.name == CHECKPOINT_DIR else None


def resolve_checkpoint(keyword: str, run_dir: str | os.PathLike | None, root: str | os.PathLike) -> tuple[Path, Path]:
    """``(checkpoint file, run folder)`` for ``--ckpt_path last`` / ``best``: in the
    run ``--run_dir`` names, else in the newest run under ``root/lightning_logs``.
    A missing run or checkpoint is a :class:`RunFolderError` that says what exists."""
    if run_dir is not None:
        run = Path(run_dir)
        if not run.is_dir():
            raise RunFolderError(f"--run_dir {run}: no such run folder, so there is no '{keyword}' checkpoint "
                                 f"to load (a fit with --run_dir {run} creates it)")
    else:
        found = latest_run(root)
        if found is None:
            raise RunFolderError(
                f"--ckpt_path {keyword}: no run to take it from: no {LOGS_DIR}/version_N/{CHECKPOINT_DIR}/"
                f"{LAST_FILE} under {Path(root).resolve()}. Name the run with --run_dir DIR (the folder a "
                f"fit with --run_dir DIR wrote), or give the checkpoint file itself")
        run = found
    folder = run / CHECKPOINT_DIR
    if keyword == "last":
        path = folder / LAST_FILE
        if not path.is_file():
            held = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
            raise RunFolderError(f"{path}: not found, so there is nothing to resume in {run} "
                                 f"(its {CHECKPOINT_DIR}/ holds {held or 'nothing'}; a run killed before its "
                                 f"first checkpoint starts again without --ckpt_path)")
        return path, run
    best = best_checkpoint(run)
    if best is None:
        raise RunFolderError(f"{folder}: no {BEST_PREFIX}-*.ckpt: this run monitored no validation metric "
                             f"(checkpoint.monitor), so its selected checkpoint is {LAST_FILE}; use "
                             f"--ckpt_path last")
    return best, run


def check_new_run_folder(run: Path) -> None:
    """Refuse to start a new fit in a folder that holds a run's checkpoints: it
    would overwrite them. (Resuming it is ``--ckpt_path last``.)"""
    last = run / CHECKPOINT_DIR / LAST_FILE
    if last.is_file():
        raise RunFolderError(f"--run_dir {run} already holds a run ({CHECKPOINT_DIR}/{LAST_FILE}); a new fit "
                             f"there would overwrite it. Resume it with --ckpt_path last, or give another --run_dir")


def drop_metric_rows_after(run: Path, step: int) -> int:
    """Before resuming a run in its own folder from a checkpoint of ``step``
    optimiser steps: remove the rows of ``metrics.csv`` logged after that
    checkpoint (a killed run logged steps that the resumed run logs again).
    Returns the number of rows removed."""
    path = run / "metrics.csv"
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or [], list(reader)

    def logged_at(row: dict[str, str]) -> float:
        try:
            return float(row.get("step") or 0)
        except ValueError:
            return 0.0

    kept = [r for r in rows if logged_at(r) < step]
    if len(kept) == len(rows):
        return 0
    from peftlab.persistence.atomic import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)

    atomic_write(path, write)
    return len(rows) - len(kept)
