"""Lightning callbacks that every run gets from the CLI."""

from __future__ import annotations

import csv
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from peftlab.persistence.adapter import save_adapter
from peftlab.persistence.atomic import atomic_write
from peftlab.persistence.checkpoint_io import load_checkpoint_file
from peftlab.distributed import gather_to_rank_zero, gather_trainable_state
from peftlab.errors import CheckpointFileError
from peftlab.runs import describe_selection, run_folder, selected_checkpoint
from peftlab import threads


class PredictionCSVWriter(BasePredictionWriter):
    """Writes ``predict`` results to a CSV (see :meth:`peftlab.model.task_kinds.TaskKind.prediction_table` for the
    columns; token tasks get one row per content token) and prints its path.

    Args:
        output: CSV path; ``None`` puts ``predictions.csv`` in the run folder
            (the folder of the checkpoint's run, or ``--run_dir``).
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = output

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        path = Path(self.output or run_folder(trainer) / "predictions.csv")
        # multi-process runs: each rank predicted its share; rank 0 writes them all (peftlab.distributed)
        predictions = gather_to_rank_zero(trainer, list(predictions))
        if predictions is None:
            return
        pl_module.task.write_prediction_files(predictions, path)  # e.g. segmentation masks, a Kaldi text file
        header, rows = pl_module.task.prediction_table(predictions, pl_module.label_names)

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                writer.writerows(rows)

        atomic_write(path, write)
        self.written_path = path
        source = f" of {trainer.ckpt_path}" if trainer.ckpt_path else ""
        pl_module.print(f"peftlab: {len(rows)} prediction row(s){source} written to {path}")


class AdapterExport(L.Callback):
    """At the end of ``fit``, writes the adapter (trained tensors + config) of
    the checkpoint the run selects (:func:`peftlab.runs.selected_checkpoint`:
    the best on the monitored validation metric, else the last) to
    ``<run folder>/adapter`` or ``directory``; ``adapter_config.json`` records
    which checkpoint and why.

    Args:
        directory: where to write; ``None`` = ``<run folder>/adapter``.
    """

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        run = run_folder(trainer)
        target = self.directory or run / "adapter"
        selection = dict(selected_checkpoint(trainer))
        path = selection.get("path")
        if selection["selected"] == "best" and not Path(path).is_file():  # a DeepSpeed checkpoint directory
            selection = {"selected": "final weights", "path": None,
                         "reason": f"the best checkpoint ({path}) is a directory that peftlab cannot read tensors "
                                   f"from; the adapter holds the weights at the end of training"}
        if selection["selected"] == "best":
            # every rank agrees on the selection; rank 0 reads the file (it holds the trained tensors only)
            state, position = (trained_state_of_checkpoint(path, pl_module) if trainer.is_global_zero
                               else (None, {}))
        else:
            # multi-process runs (peftlab.distributed): every rank joins, since FSDP / ZeRO-3 gather
            # the trained shards; rank 0 writes
            state = gather_trainable_state(trainer, pl_module)
            position = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        if not trainer.is_global_zero:
            return
        record = {k: v for k, v in selection.items() if k != "path"}
        record.update(position)
        record["file"] = _relative(path, run) if path else None
        self.selection = selection
        self.written_path = save_adapter(pl_module, target, state=state, checkpoint=record)
        source = Path(path).name if path else "the final weights"
        pl_module.print(f"peftlab: adapter written to {self.written_path} (from {source})")


def _relative(path: str | os.PathLike, folder: Path) -> str:
    """``path`` relative to ``folder`` when it lies inside it (as the adapter config records it)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


def trained_state_of_checkpoint(path: str | os.PathLike, module: Any) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The trained tensors of ``module`` as a checkpoint file holds them (weights-only),
    and its ``epoch`` / ``global_step``."""
    checkpoint = load_checkpoint_file(path)
    state, expected = checkpoint["state_dict"], module.trainable_state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointFileError(f"{path}: lacks {len(missing)} trained tensor(s) of this model, e.g. {missing[:3]}")
    return ({k: state[k] for k in expected},
            {"epoch": int(checkpoint.get("epoch", -1)), "global_step": int(checkpoint.get("global_step", -1))})


class RunFeedback(L.Callback):
    """What a user sees of a run: a logging interval that fits the data (when
    the config sets none: about five logged training losses per epoch, at most
    every 50 steps), and, when a fit ends, which checkpoint the run selected and
    where the run folder is. Every CLI run gets it.

    Args:
        log_every_n_steps_set: the config set ``trainer.log_every_n_steps`` itself (then it is kept).
    """

    def __init__(self, log_every_n_steps_set: bool = False) -> None:
        self.log_every_n_steps_set = log_every_n_steps_set

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        data = trainer.datamodule
        if stage != "fit" or self.log_every_n_steps_set or data is None or not hasattr(data, "split_sizes"):
            return
        world = max(1, trainer.world_size)
        batches = max(1, -(-data.split_sizes()["train"] // (data.batch_size * world)))
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            batches = min(batches, limit)
        elif isinstance(limit, float):
            batches = max(1, int(batches * limit))
        trainer.log_every_n_steps = max(1, min(50, batches // 5))

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        run = run_folder(trainer)
        pl_module.print(f"peftlab: fit done after {trainer.global_step} step(s); selected "
                        f"{describe_selection(selected_checkpoint(trainer), run)}; run folder {run}")


class EvaluationRecord(L.Callback):
    """After ``test`` / ``validate``: ``<run folder>/test_metrics.json`` (or
    ``validate_metrics.json``) with the metrics, the checkpoint that produced
    them, the backbone (random-init tiny backbones say so) and the data
    (module, source, split, its size and how many of its examples the metrics
    saw: fewer when ``limit_test_batches`` cut the split), so that a number
    never travels without where it came from."""

    def __init__(self) -> None:
        self.examples = 0

    def on_test_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.examples = 0

    def on_validation_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.examples = 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.examples += len(batch["ids"])

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.examples += len(batch["ids"])

    def on_test_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._write(trainer, pl_module, "test")

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, pl_module, "val")

    def _write(self, trainer: L.Trainer, pl_module: Any, split: str) -> None:
        if trainer.sanity_checking:
            return
        seen = trainer.strategy.reduce(torch.tensor(float(self.examples)), reduce_op="sum")  # every rank's share
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{split}/")}
        data = trainer.datamodule
        sizes = data.split_sizes() if data is not None and hasattr(data, "split_sizes") else {}
        record = {
            "metrics": metrics, "primary_metric": f"{split}/{pl_module.primary_metric}",
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else "the in-memory weights (no --ckpt_path)",
            "backbone": pl_module.backbone.name, "method": repr(pl_module.method),
            "data": {"module": type(data).__name__ if data is not None else None,
                     "source": data.data_source() if hasattr(data, "data_source") else None,
                     "split": split, "split_size": sizes.get(split), "examples": int(seen)},
        }
        name = "test_metrics.json" if split == "test" else "validate_metrics.json"
        path = run_folder(trainer) / name
        text = json.dumps(record, indent=2, sort_keys=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        self.written_path = path
        source = Path(trainer.ckpt_path).name if trainer.ckpt_path else "the in-memory weights"
        pl_module.print(f"peftlab: {split} metrics of {source} on {int(seen)} of the {sizes.get(split)} {split} "
                        f"examples written to {path}")


def proc_status_mb(field_name: str) -> float | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the
    process image; ``ru_maxrss`` would also carry a forking parent's peak."""
    peak = proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepTimer(L.Callback):
    """Measures the cost of training: mean wall time per optimiser step (the
    first ``skip`` steps, which include warm-up work, are left out), samples
    per second, and peak memory (CUDA max allocated on a GPU, else the
    process's peak resident set size)."""

    def __init__(self, skip: int = 2) -> None:
        self.skip = skip
        self.times: list[float] = []
        self.samples = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._t0)
        if len(self.times) > self.skip:
            self.samples += len(batch["ids"])

    def summary(self) -> dict[str, float]:
        timed = self.times[self.skip:] or self.times
        mean = sum(timed) / max(1, len(timed))
        if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
            peak_mb, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
        else:
            peak_mb, kind = peak_rss_mb(), "cpu_peak_rss"
        return {"steps": len(self.times), "s_per_step": mean,
                "samples_per_s": self.samples / max(1e-9, sum(self.times[self.skip:])) if self.samples else 0.0,
                "peak_memory_mb": peak_mb, "peak_memory_kind": kind}


class CoreShare(L.Callback):
    """torch's threads from the cores this process may use and how many peftlab processes share them
    (:mod:`peftlab.threads`): chosen when a run starts, counted again every few seconds while it
    trains, withdrawn when it ends."""

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        threads.share_cores(force=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        threads.share_cores()

    def teardown(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        threads.leave()
