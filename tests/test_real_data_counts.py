"""The example count behind the real-data tests (tests/real_data.py): it reads
how many examples every kind of test metric holds, and it fails when the test
metrics saw fewer examples than the split, or some twice."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from peftlab import PeftModule, build_method
from peftlab.model.task_kinds import task_kind
from peftlab_protein import ESM2Backbone
from peftlab_protein.synthetic import SyntheticMotifDataModule

from tests.real_data import SeenByTestMetrics, examples_held


@pytest.mark.parametrize("task,outputs", [("regression", 1), ("binary", 1), ("multiclass", 4)])
def test_every_metric_kind_reports_the_examples_it_holds(task, outputs):
    metrics = task_kind(task).build_metrics(outputs)
    g = torch.Generator().manual_seed(0)
    for n in (7, 5):  # two updates: 12 examples
        if task == "regression":
            preds, target = torch.randn(n, generator=g), torch.randn(n, generator=g)
        elif task == "binary":
            preds, target = torch.rand(n, generator=g), torch.randint(0, 2, (n,), generator=g)
        else:
            preds, target = torch.rand(n, outputs, generator=g).softmax(-1), torch.randint(0, outputs, (n,), generator=g)
        metrics.update(preds, target)
    held = {name: examples_held(m) for name, m in metrics.items(keep_base=True, copy_state=True)}
    readable = {name: n for name, n in held.items() if n is not None}
    assert set(readable.values()) == {12}
    assert {"regression": {"spearman", "pearson", "mse", "mae"},
            "binary": {"accuracy", "balanced_accuracy", "f1", "auroc"},
            "multiclass": {"accuracy", "balanced_accuracy", "f1", "auroc", "auroc_per_class"}}[task] <= set(readable)


def _tested(tmp_path, **trainer_options) -> tuple[SeenByTestMetrics, list[str]]:
    data = SyntheticMotifDataModule(num_sequences=60, batch_size=4, seed=0)  # test: 6, in 2 batches
    module = PeftModule(ESM2Backbone(num_layers=1, embed_dim=16, attention_heads=2), build_method("lora", r=2),
                        task_type="binary", num_outputs=1)
    seen = SeenByTestMetrics()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[seen], **trainer_options)
    trainer.test(module, datamodule=data, verbose=False)
    return seen, [r.id for r in data.splits["test"]]


def test_the_count_holds_when_the_metrics_saw_the_whole_split_once(tmp_path):
    seen, ids = _tested(tmp_path)
    assert len(ids) == 6 and seen.rows == 6
    seen.check(ids, must_hold={"auroc", "accuracy", "balanced_accuracy"})


def test_the_count_fails_when_the_metrics_saw_part_of_the_split(tmp_path):
    seen, ids = _tested(tmp_path, limit_test_batches=1)  # the first batch only
    assert seen.rows == 4 and set(seen.held.values()) == {4}
    with pytest.raises(AssertionError, match="updated with 4 rows, the split has 6"):
        seen.check(ids, must_hold={"auroc"})


def test_the_count_fails_when_an_example_is_counted_twice(tmp_path):
    seen, ids = _tested(tmp_path)
    seen.ids[-1] = seen.ids[0]  # as if one example were tested twice and another never
    with pytest.raises(AssertionError):
        seen.check(ids, must_hold={"auroc"})
    seen, ids = _tested(tmp_path)
    seen.held["auroc"] += 1  # a metric that holds one example more than the rows it was given
    with pytest.raises(AssertionError, match="'auroc': 7"):
        seen.check(ids, must_hold={"auroc"})
