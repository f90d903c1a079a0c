"""Train on the real FLIP GB1 two_vs_rest split (a small random-init ESM-2 with
LoRA) until it has learnt, and test on its whole test set: what was loaded, a
Spearman well above chance, and that every test variant was scored, once."""

from __future__ import annotations

import zipfile

import lightning as L
import pytest

from peftlab import PeftModule, build_method
from peftlab_protein import ESM2Backbone
from peftlab_protein.data import ProteinDataModule
from peftlab_protein.metrics import benchmark_metric

from tests.real_data import SeenByTestMetrics

# row counts of two_vs_rest.csv: set=train without / with validation=True, set=test
TWO_VS_REST = {"train": 381, "val": 43, "test": 8309}
GB1_SITES = (39, 40, 41, 54)  # the four mutated residues (1-based) of every GB1 variant


@pytest.fixture
def two_vs_rest(data_root, tmp_path):
    with zipfile.ZipFile(data_root / "flip_gb1" / "splits.zip") as z:
        z.extract("splits/two_vs_rest.csv", tmp_path)
    return tmp_path / "splits" / "two_vs_rest.csv"


def test_lora_on_real_gb1_learns_fitness_well_above_chance(two_vs_rest, tmp_path):
    """Trained on the 381 double mutants, ranked on the 8,309 triple and quadruple mutants.

    Chance (a model that has learnt nothing): Spearman 0. A one-hot ridge regression on the four
    mutated sites reaches 0.56 here. This setup (30 epochs, 360 steps, ~20 s on 2 cores) measured
    Spearman 0.356 / 0.396 / 0.342 with seeds 0 / 1 / 2 (10 epochs: 0.304 / 0.294 / 0.228); the test
    runs seed 0 and asks for > 0.2. Sequences are cropped to their first 64 residues (max_length), which
    keeps all four mutated sites and makes every step ~4x cheaper than the full 265.
    """
    data = ProteinDataModule(path=str(two_vs_rest), task_type="regression", batch_size=32, seed=0, max_length=64)
    assert data.split_sizes() == TWO_VS_REST and sum(TWO_VS_REST.values()) == 8733
    test_records = data.splits["test"]
    assert all(len(r.sequence) == 265 for r in test_records)
    # the variants differ only at the four sites, all inside the crop
    wild = test_records[0].sequence
    assert {i + 1 for r in test_records for i, (a, b) in enumerate(zip(r.sequence, wild)) if a != b} \
        <= set(GB1_SITES) and max(GB1_SITES) <= data.max_length

    L.seed_everything(0)
    backbone = ESM2Backbone(num_layers=2, embed_dim=32, attention_heads=4, seed=0)
    module = PeftModule(backbone, build_method("lora", r=4, targets="qv"), task_type=data.task_type,
                        num_outputs=data.num_outputs, lr=1e-2)
    seen = SeenByTestMetrics()
    trainer = L.Trainer(max_epochs=30, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[seen])
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 30 * -(-TWO_VS_REST["train"] // 32)
    results = trainer.test(module, datamodule=data, verbose=False)[0]
    assert {"test/spearman", "test/pearson", "test/mse", "test/mae"} <= set(results)
    assert benchmark_metric("flip_gb1") == "test/spearman"
    assert results["test/spearman"] > 0.2  # chance: 0; seeds 0-2 gave 0.34-0.40
    # every test variant was scored, once, by every metric
    seen.check([r.id for r in test_records], must_hold={"spearman", "pearson", "mse", "mae"})
