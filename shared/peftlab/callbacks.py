"""Lightning callbacks that every run gets from the CLI."""

from __future__ import annotations

import csv
import os
import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from peftlab.checkpoint import save_adapter
from peftlab.distributed import gather_to_rank_zero, gather_trainable_state


def run_dir(trainer: L.Trainer) -> str:
    """The run's log directory; the trainer's root when no logger names one
    (``fast_dev_run`` and ``logger=False`` runs)."""
    return trainer.log_dir or trainer.default_root_dir


class PredictionCSVWriter(BasePredictionWriter):
    """Writes ``predict`` results to a CSV: ``id`` then one column per output
    (class names for classification, ``prediction`` for regression); token
    tasks get one row per content token (``id``, ``position``, then scores).

    Args:
        output: CSV path; ``None`` puts ``predictions.csv`` in the run's log directory.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = output

    def _columns(self, module: Any, width: int) -> list[str]:
        names = module.label_names
        if names and len(names) == width:
            return [str(n) for n in names]
        if module.task_type in ("regression", "binary") and width == 1:
            return ["prediction" if module.task_type == "regression" else "probability"]
        return [f"output_{k}" for k in range(width)]

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        path = Path(self.output or os.path.join(run_dir(trainer), "predictions.csv"))
        # multi-process runs: each rank predicted its share; rank 0 writes them all (peftlab.distributed)
        predictions = gather_to_rank_zero(trainer, list(predictions))
        if predictions is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[list[Any]] = []
        header: list[str] | None = None
        for out in predictions:
            scores = out["scores"]
            width = scores.shape[-1] if scores.ndim > 1 else 1
            cols = self._columns(pl_module, width)
            if out.get("mask") is not None:  # token task
                header = ["id", "position"] + cols
                for i, id_ in enumerate(out["ids"]):
                    for pos in out["mask"][i].nonzero().flatten().tolist():
                        rows.append([id_, pos] + scores[i, pos].tolist())
            else:
                header = ["id"] + cols
                values = scores.reshape(len(out["ids"]), -1).tolist()
                rows += [[id_] + v for id_, v in zip(out["ids"], values)]
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header or ["id"])
            writer.writerows(rows)
        os.replace(tmp, path)
        self.written_path = path


class AdapterExport(L.Callback):
    """At the end of ``fit``, writes the adapter (trained tensors + config) to
    ``<log dir>/adapter`` or ``directory``.

    Args:
        directory: where to write; ``None`` = ``<log dir>/adapter``.
    """

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        # multi-process runs (peftlab.distributed): every rank joins, since log_dir is a
        # broadcast and FSDP / ZeRO-3 gather the trained shards; rank 0 writes
        target = self.directory or os.path.join(run_dir(trainer), "adapter")
        state = gather_trainable_state(trainer, pl_module)
        if trainer.is_global_zero:
            self.written_path = save_adapter(pl_module, target, state=state)
            pl_module.print(f"peftlab: adapter written to {self.written_path}")


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
