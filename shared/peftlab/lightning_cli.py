"""PeftLabCLI: LightningCLI over PeftModule and any domain DataModule, with
peftlab's run folders, checkpoint selection and messages.

What it adds to Lightning's CLI (2.6):

* ``--run_dir DIR`` names the run folder (:mod:`peftlab.runs`); without it a
  fit opens ``lightning_logs/version_N``. ``fit --ckpt_path last`` resumes a
  run in its own folder: the one ``--run_dir`` names, else the newest under
  ``lightning_logs``; a missing checkpoint stops with an error instead of
  Lightning's warning and a fresh start. ``test`` / ``validate`` / ``predict``
  take ``--ckpt_path last|best|FILE`` (or just ``--run_dir``: the run's
  selected checkpoint) and write their outputs into that run's folder instead
  of opening a new ``version_N``.
* ``--checkpoint.monitor val/METRIC`` (:class:`peftlab.runs.CheckpointOptions`):
  ``last.ckpt`` always holds the latest state; the monitored best is kept
  beside it and selected for ``adapter/`` and test metrics.
* Every run writes checkpoints atomically and loads ``--ckpt_path`` in torch's
  weights-only mode (:class:`peftlab.checkpoint.AtomicCheckpointIO`).
* The data module's task facts are linked into the model, so they are never typed twice.
* Shorter errors (no usage dump), and library messages that tell a peftlab user
  nothing are filtered out (:func:`quiet_libraries`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from peftlab.callbacks import AdapterExport, CoreShare, EvaluationRecord, PredictionCSVWriter, RunFeedback
from peftlab.persistence.checkpoint_io import load_checkpoint_file, use_atomic_checkpoint_io
from peftlab.data import PeftDataModule
from peftlab.errors import RunFolderError
from peftlab.model.module import PeftModule
from peftlab.runs import (CHECKPOINT_DIR, RUN_DIR_ATTR, CheckpointOptions, RunCSVLogger, best_checkpoint,
                          check_new_run_folder, drop_metric_rows_after, resolve_checkpoint, run_of_checkpoint)

LIGHTNING_KEYWORDS = ("hpc", "registry")


class PeftLabArgumentParser(LightningArgumentParser):
    """Lightning's parser, whose errors are one line (and a pointer to ``--help``)
    instead of the whole usage text."""

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {message.strip()}\n({prog} --help lists the options; "
                         f"'peftlab list' the methods, backbones and data modules)\n")
        sys.exit(2)


class PeftLabCLI(LightningCLI):
    """LightningCLI over PeftModule and a domain DataModule (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", PeftLabArgumentParser)
        self.subcommand_mode = kwargs.get("run", True)  # run=False: one fit's arguments (fit_and_test)
        self.run_dir: Path | None = None   # the run folder this command works in, when it has one
        self.resuming = False              # fit continues a run in its folder
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.task_type", "model.task_type", apply_on="instantiate")
        parser.link_arguments("data.num_outputs", "model.num_outputs", apply_on="instantiate")
        parser.link_arguments("data.label_names", "model.label_names", apply_on="instantiate")
        parser.link_arguments("data.pairs", "model.pairs", apply_on="instantiate")
        parser.add_lightning_class_args(PredictionCSVWriter, "predictions")
        parser.add_lightning_class_args(AdapterExport, "adapter")
        parser.add_class_arguments(CheckpointOptions, "checkpoint")
        parser.add_argument("--run_dir", type=Optional[str], default=None,
                            help="The run folder (config, metrics, checkpoints/, adapter/). fit: where to write, "
                                 "or, with --ckpt_path last, the run to resume; test/validate/predict: the run "
                                 "whose checkpoint to use (its selected one unless --ckpt_path says) and where "
                                 "the outputs go. Default: lightning_logs/version_N under trainer.default_root_dir.")
        if not self.subcommand_mode:  # a fit's --ckpt_path (fit_and_test; with subcommands, fit has its own)
            parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                                help="last: resume the run --run_dir names, else the newest under lightning_logs")

    # ---- before anything is built: which run, which checkpoint -----------------------------
    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path`` (``last`` / ``best`` in the named or newest run) and the
        run folder; then do what LightningCLI (2.6) does with a checkpoint before building
        the model (read its ``hyper_parameters`` into the config), through peftlab's
        weights-only loader, whose errors name the file."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config  # run=False: a fit (fit_and_test)
        ckpt_path = self._resolve_run(subcommand or "fit", config)
        if not ckpt_path or ckpt_path in LIGHTNING_KEYWORDS or "://" in ckpt_path:
            return
        checkpoint = load_checkpoint_file(ckpt_path)  # also: a missing file is an error naming it
        if self.resuming and self.run_dir is not None and rank_zero_only.rank == 0:  # (launched ranks parse too)
            dropped = drop_metric_rows_after(self.run_dir, int(checkpoint.get("global_step", 0)))
            if dropped:
                print(f"peftlab: {dropped} metric row(s) of {self.run_dir / 'metrics.csv'} logged after the "
                      f"checkpoint were dropped (the resumed run logs those steps again)")
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            update = {subcommand: {"model": hparams}} if subcommand else {"model": hparams}
            self.config = self.parser.parse_object(update, self.config)
        except SystemExit:
            sys.stderr.write(f"Parsing of the hyperparameters in {ckpt_path} failed!\n")
            raise

    def _resolve_run(self, subcommand: str, config: Any) -> str | None:
        ckpt_path, run_dir = config.get("ckpt_path"), config.get("run_dir")
        root = config.get("trainer", {}).get("default_root_dir") or os.getcwd()
        if ckpt_path in ("last", "best"):
            if subcommand == "fit" and ckpt_path == "best":
                raise RunFolderError("fit --ckpt_path best: a fit resumes a run from its latest state "
                                     "(--ckpt_path last); to train on from the best checkpoint, give its file "
                                     "and a new --run_dir")
            path, run = resolve_checkpoint(ckpt_path, run_dir, root)
            config.ckpt_path, self.run_dir = str(path), run
            self.resuming = subcommand == "fit"
            if self.resuming and rank_zero_only.rank == 0:
                print(f"peftlab: resuming the run in {run} from {path.name}")
            return str(path)
        if subcommand == "fit":
            if run_dir is not None:
                self.run_dir = Path(run_dir)
                same = ckpt_path and run_of_checkpoint(ckpt_path) is not None and \
                    run_of_checkpoint(ckpt_path).resolve() == self.run_dir.resolve()
                if same:
                    self.resuming = True
                else:
                    check_new_run_folder(self.run_dir)
            return ckpt_path
        # test / validate / predict
        if run_dir is not None:
            self.run_dir = Path(run_dir)
            if not ckpt_path:  # the run's selected checkpoint
                if not self.run_dir.is_dir():
                    raise RunFolderError(f"--run_dir {self.run_dir}: no such run folder")
                path = best_checkpoint(self.run_dir) or self.run_dir / CHECKPOINT_DIR / "last.ckpt"
                if not path.is_file():
                    raise RunFolderError(f"{self.run_dir}: holds no checkpoint ({CHECKPOINT_DIR}/ has neither "
                                         f"best-*.ckpt nor last.ckpt) to {subcommand}")
                config.ckpt_path = ckpt_path = str(path)
                print(f"peftlab: {subcommand} with {path.relative_to(self.run_dir)} of {self.run_dir}")
        elif ckpt_path and ckpt_path not in LIGHTNING_KEYWORDS:
            self.run_dir = run_of_checkpoint(ckpt_path)
        if not ckpt_path:
            print(f"peftlab: note: {subcommand} without --ckpt_path or --run_dir uses the model as built "
                  f"(untrained head); pass the run's checkpoint to {subcommand} what was trained", file=sys.stderr)
        return ckpt_path

    # ---- the trainer ----------------------------------------------------------------------------
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        subcommand = self.subcommand
        config = self.config_init[subcommand] if subcommand else self.config_init
        trainer_config = config["trainer"]
        own_logger = trainer_config.get("logger") not in (None, True)
        run = self.run_dir
        if subcommand in (None, "fit"):
            if run is not None:
                kwargs["default_root_dir"] = str(run)
            csv = (RunCSVLogger(run, resuming=self.resuming) if run is not None else
                   CSVLogger(save_dir=trainer_config.get("default_root_dir") or os.getcwd()))
            if not own_logger and trainer_config.get("logger") is not False:
                # metrics.csv in every run folder (Lightning would pick TensorBoard when it is installed;
                # --trainer.logger TensorBoardLogger asks for it)
                kwargs["logger"] = csv
            elif own_logger and not _has_run_folder(trainer_config["logger"]):
                # a tracker without a folder per run (MLflow): peftlab's CSV logger first keeps the run
                # folder (checkpoints, adapter/, metrics.csv) one per run instead of the tracker's store
                kwargs["logger"] = [csv, *_as_list(trainer_config["logger"])]
        else:  # evaluation writes into the run it evaluates, never a new version_N
            if not own_logger:
                kwargs["logger"] = False
            if run is not None:
                kwargs["default_root_dir"] = str(run)
        callbacks = list(trainer_config.get("callbacks") or [])
        if subcommand in (None, "fit") and trainer_config.get("enable_checkpointing") is not False:
            options: CheckpointOptions = config.get("checkpoint") or CheckpointOptions()
            ours = options.callbacks(run / CHECKPOINT_DIR if run is not None else None)
            _leave_last_ckpt_to_peftlab(callbacks)
            callbacks = ours + callbacks
        kwargs["callbacks"] = callbacks
        trainer = super().instantiate_trainer(**kwargs)
        # last, so that their messages follow the adapter's
        trainer.callbacks += [RunFeedback(log_every_n_steps_set=trainer_config.get("log_every_n_steps") is not None),
                              EvaluationRecord(), CoreShare()]
        if run is not None:
            setattr(trainer, RUN_DIR_ATTR, run)
        use_atomic_checkpoint_io(trainer.strategy)
        return trainer


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _has_run_folder(logger: Any) -> bool:
    """Whether Lightning takes a run folder from the (first) logger: a TensorBoard or CSV logger's
    ``log_dir``; any other logger (MLflow ...) would put checkpoints under its ``save_dir``."""
    from lightning.pytorch.loggers import TensorBoardLogger

    first = _as_list(logger)[0] if _as_list(logger) else None
    return isinstance(first, (TensorBoardLogger, CSVLogger))


def _leave_last_ckpt_to_peftlab(callbacks: list[Any]) -> None:
    """A user's own ``ModelCheckpoint(save_last=True)`` writing into the run's
    checkpoint folder would fight peftlab's ``last.ckpt`` (and, next to a monitor,
    lag behind it): its ``save_last`` is turned off, saying so."""
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath is None:
            cb.save_last = False
            print("peftlab: note: ModelCheckpoint(save_last=True) without a dirpath: peftlab writes "
                  "checkpoints/last.ckpt itself (always the latest state), so this callback's save_last is off")


# ---- library noise --------------------------------------------------------------------------------

#: Lightning / torch messages that tell a peftlab user nothing (tips, deprecations inside libraries,
#: hardware lines, a warning about a default that peftlab replaces)
QUIET_MESSAGES = (
    "💡 Tip", "GPU available:", "TPU available:", "HPU available:", "Loading `train_dataloader` to estimate",
    "Seed set to",
)
QUIET_WARNINGS = (
    r".*does not have many workers.*", r"No seed found, seed set to 0", r"Starting from v1\.9\.0, `tensorboardX`.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*", r"Checkpoint directory .* exists and is not empty\.",
    r"Experiment logs directory .* exists and is not empty.*", r"The number of training batches .* is smaller than "
    r"the logging interval.*", r"LightningCLI's args parameter is intended.*",
    r".*will save all targets and predictions in the buffer.*",
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided.*",
)


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(m) for m in QUIET_MESSAGES)


def quiet_libraries() -> None:
    """Filter the messages of :data:`QUIET_MESSAGES` / :data:`QUIET_WARNINGS` (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed",
                 "lightning.fabric.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages())
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def build_cli(args: list[str] | None, run: bool = True) -> PeftLabCLI:
    """The CLI over ``args`` (``fit ...`` etc.; with ``run=False``, a fit's arguments without the
    subcommand, built but not run). A fit records its config as ``config.yaml`` in its run folder;
    evaluation commands record theirs beside it (``test_config.yaml`` ...), never over it."""
    quiet_libraries()
    subcommand = args[0] if run and args else None
    name = "config.yaml" if subcommand in (None, "fit") else f"{subcommand}_config.yaml"
    return PeftLabCLI(PeftModule, PeftDataModule, subclass_mode_data=True, run=run, args=args,
                      parser_kwargs={"prog": "peftlab"},
                      save_config_kwargs={"overwrite": True, "config_filename": name})
