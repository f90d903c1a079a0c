"""For the real-data training tests: what the test metrics really saw.

:class:`SeenByTestMetrics` records, during ``trainer.test``, the rows each
``module.test_metrics.update`` call received and the ids of the test batches,
and, right before the metrics are computed, how many examples each metric holds
in its own state (torchmetrics' lists of predictions for Spearman and AUROC,
its counters for MSE, MAE and Pearson, the confusion counts of the
accuracy-type metrics). A test then asserts that every one of these is the size
of the test split: the reported numbers are computed on every test example,
once.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


def examples_held(metric: Any) -> int | None:
    """How many examples a torchmetrics metric has accumulated (None: a kind not read here)."""
    preds = getattr(metric, "preds", None)
    if isinstance(preds, list):  # Spearman, AUROC (exact: every prediction is kept)
        return sum(len(p) for p in preds)
    n_total = getattr(metric, "n_total", None)
    if torch.is_tensor(n_total):  # Pearson: per output
        return int(n_total.max())
    total = getattr(metric, "total", None)
    if torch.is_tensor(total) and total.numel() == 1:  # MSE, MAE: one term per example (one output)
        return int(total)
    if all(torch.is_tensor(getattr(metric, s, None)) for s in ("tp", "fp", "tn", "fn")):
        tp, fp, tn, fn = (getattr(metric, s).sum() for s in ("tp", "fp", "tn", "fn"))
        if getattr(metric, "num_classes", None) and getattr(metric, "average", None) == "micro":
            return int(tp + fp)  # multiclass micro: one hit or one miss per example
        if getattr(metric, "num_classes", None):
            return int((tp + fn).sum())  # per class: each example is a positive of its own class once
        return int(tp + fp + tn + fn)  # binary
    return None


class SeenByTestMetrics(L.Callback):
    """Counts the rows given to ``module.test_metrics.update`` and what each metric holds before compute."""

    def __init__(self) -> None:
        self.rows = 0
        self.ids: list[str] = []
        self.held: dict[str, int] = {}

    def on_test_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        metrics = module.test_metrics
        update, compute = metrics.update, metrics.compute

        def counting_update(preds, target, *args, **kwargs):
            self.rows += len(target)
            return update(preds, target, *args, **kwargs)

        def recording_compute():
            for name, metric in metrics.items(keep_base=True, copy_state=True):
                held = examples_held(metric)
                if held is not None:
                    self.held[name] = held
            return compute()

        metrics.update, metrics.compute = counting_update, recording_compute
        self._restore = (metrics, update, compute)

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.ids += [str(i) for i in batch["ids"]]

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        metrics, update, compute = self._restore
        metrics.update, metrics.compute = update, compute

    def check(self, expected_ids: list[str], must_hold: set[str], scored_units: int | None = None) -> None:
        """Every metric saw exactly the test split: ``expected_ids``, each once; per-token tasks
        give ``scored_units`` (the scored residues of the split), which the metrics must hold."""
        n = len(expected_ids)
        units = n if scored_units is None else scored_units
        assert self.rows == units, f"the test metrics were updated with {self.rows} rows, the split has {units}"
        assert sorted(self.ids) == sorted(map(str, expected_ids)) and len(set(self.ids)) == n
        assert must_hold <= set(self.held), f"no example count read from {sorted(must_hold - set(self.held))}"
        assert self.held == {name: units for name in self.held}, self.held


def fit_then_test(module: L.LightningModule, data: L.LightningDataModule, epochs: int,
                  root: Any) -> tuple[dict[str, float], SeenByTestMetrics]:
    """Train ``epochs`` epochs on the CPU (no validation, no checkpoints), then test the final
    weights, recording what the test metrics saw; returns the test metrics and the record."""
    seen = SeenByTestMetrics()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=root, callbacks=[seen])
    trainer.fit(module, datamodule=data)
    return trainer.test(module, datamodule=data, verbose=False)[0], seen
