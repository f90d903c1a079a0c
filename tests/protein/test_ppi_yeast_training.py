"""Train a pair model on real D-SCRIPT yeast PPI pairs (a small random-init ESM-2 with
LoRA, both proteins through the same backbone) with a split that keeps test proteins
out of training, and test it: AUPR well above the positive rate, every test pair once."""

from __future__ import annotations

import lightning as L

from peftlab import PeftModule, build_method
from peftlab_protein import ESM2Backbone
from peftlab_protein.data import ProteinPairDataModule
from peftlab_protein.metrics import benchmark_metric

from tests.real_data import fit_then_test


def test_lora_pair_model_on_real_yeast_ppi_beats_the_positive_rate(data_root, tmp_path):
    """Chance for AUPR is the positive rate of the test pairs (about 0.09: D-SCRIPT's set has one
    positive in 11). 6,000 of the 55,000 pairs (a seeded sample), split by protein (val 5%, test 10%
    of the pairs' share; pairs across parts dropped), proteins cropped to 96 residues, 2 epochs of a
    2 x 32 ESM-2 with LoRA r=4 on q/v (~18 s on one core). The split keeps 1,326 train, 289 val and
    561 test pairs (3,824 dropped across parts); test positive rate 0.071. Seeds 0 / 1 / 2 measured
    test AUPR 0.236 / 0.174 / 0.305 (AUROC 0.75-0.76); the test runs seed 0 and asks for more than
    twice the positive rate. (Random negatives make PPI sets like this one partly learnable from
    each protein alone, which is why a tiny model gets this far.)"""
    d = data_root / "ppi_yeast"
    data = ProteinPairDataModule(str(d / "sequences.fasta"), str(d / "pairs.tsv"), max_pairs=6000, seed=0,
                                 val_fraction=0.05, test_fraction=0.1, allow_self_pairs=True,
                                 duplicate_pairs="drop", max_length=96, batch_size=16)
    sizes = data.split_sizes()
    assert sum(sizes.values()) + data.dropped_pairs == 6000 and min(sizes.values()) > 200
    proteins = {s: {p for pair in data.splits[s] for p in (pair.protein_a, pair.protein_b)} for s in sizes}
    assert not proteins["train"] & proteins["test"]  # no test protein was seen in training
    test_pairs = data.splits["test"]
    positive_rate = sum(p.label for p in test_pairs) / len(test_pairs)
    assert 0.03 < positive_rate < 0.2

    L.seed_everything(0)
    module = PeftModule(ESM2Backbone(num_layers=2, embed_dim=32, attention_heads=4, seed=0),
                        build_method("lora", r=4, targets="qv"), task_type="binary", num_outputs=1, pairs=True,
                        lr=5e-3)
    results, seen = fit_then_test(module, data, epochs=2, root=tmp_path)
    assert benchmark_metric("ppi_yeast") == "test/aupr"
    assert results["test/aupr"] > 2 * positive_rate, (results["test/aupr"], positive_rate)
    seen.check([p.id for p in test_pairs], must_hold={"aupr", "auroc"})
