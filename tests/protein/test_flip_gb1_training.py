"""Train on the real FLIP GB1 two_vs_rest split (a small random-init ESM-2, a
few steps) and test on its whole test set: what was loaded, and that Spearman
is computed on the test split."""

from __future__ import annotations

import zipfile

import lightning as L
import pytest

from peftlab import PeftModule, build_method
from peftlab_protein import ESM2Backbone
from peftlab_protein.data import ProteinDataModule
from peftlab_protein.metrics import benchmark_metric

# row counts of two_vs_rest.csv: set=train without / with validation=True, set=test
TWO_VS_REST = {"train": 381, "val": 43, "test": 8309}


@pytest.fixture
def two_vs_rest(data_root, tmp_path):
    with zipfile.ZipFile(data_root / "flip_gb1" / "splits.zip") as z:
        z.extract("splits/two_vs_rest.csv", tmp_path)
    return tmp_path / "splits" / "two_vs_rest.csv"


def test_lora_on_real_gb1_reports_test_spearman(two_vs_rest, tmp_path):
    data = ProteinDataModule(path=str(two_vs_rest), task_type="regression", batch_size=64, seed=0)
    assert data.split_sizes() == TWO_VS_REST and sum(TWO_VS_REST.values()) == 8733
    assert all(len(r.sequence) == 265 for r in data.splits["test"][:50])

    L.seed_everything(0)
    backbone = ESM2Backbone(num_layers=2, embed_dim=32, attention_heads=4)
    module = PeftModule(backbone, build_method("lora", r=4, targets="qv"), task_type=data.task_type,
                        num_outputs=data.num_outputs, lr=3e-3)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    results = trainer.test(module, datamodule=data, verbose=False)[0]
    assert {"test/spearman", "test/pearson", "test/mse", "test/mae"} <= set(results)
    assert -1.0 <= results[benchmark_metric("flip_gb1")] <= 1.0 and results["test/mse"] > 0
    # the metric saw every test variant, once
    assert trainer.test_loop.max_batches == [-(-TWO_VS_REST["test"] // 64)]
