"""Protein pairs: the D-SCRIPT reader and its located errors, the split by protein,
the pair head's symmetry, AUPR, and a pair model through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from peftlab import PeftModule, build_method
from peftlab.backbone import Features
from peftlab.errors import DataError
from peftlab.model.heads import TaskHead
from peftlab.model.task_kinds import task_kind
from peftlab_protein import ESM2Backbone
from peftlab_protein.data import ProteinPairDataModule, read_pairs, split_by_protein

from peftlab.cli import main as run_cli

from tests.tiny_runs import CONFIGS

SEQUENCES = {"A": "MKTAYIAK", "B": "GGSGG", "C": "PPLLW", "D": "MKKKL", "E": "ACDEFG"}


@pytest.fixture
def ppi(tmp_path):
    fasta = tmp_path / "seqs.fasta"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in SEQUENCES.items()))
    return tmp_path, fasta


def pairs_file(tmp_path, text):
    path = tmp_path / "pairs.tsv"
    path.write_text(text)
    return path


def test_pairs_read_with_their_sequences_in_file_order(ppi):
    tmp_path, fasta = ppi
    pairs = read_pairs(pairs_file(tmp_path, "A\tB\t1.0\nC,D,0\nE D 0.0\n"), fasta)
    assert [(p.id, p.sequence_a, p.sequence_b, p.label) for p in pairs] == [
        ("A|B", "MKTAYIAK", "GGSGG", 1), ("C|D", "PPLLW", "MKKKL", 0), ("E|D", "ACDEFG", "MKKKL", 0)]


@pytest.mark.parametrize("text,message", [
    ("A\tB\t1\nA\tZ\t0\n", r"line 2 \(A, Z\): protein 'Z' is not in .*seqs.fasta"),
    ("A\tB\t1\nC\tC\t0\n", r"line 2 \(C, C\): a protein paired with itself \(set allow_self_pairs"),
    ("A\tB\t1\nC\tD\t0\nB\tA\t0\n", r"line 3 \(B, A\): the pair is given twice \(first on line 1, either order\)"),
    ("A\tB\t1\nC\tD\n", r"line 2: expected 'idA idB label', got 2 cell\(s\)"),
    ("A\tB\t2\n", r"line 1 \(A, B\): binary target must be 0 or 1, got '2'"),
])
def test_bad_pair_files_name_the_file_and_line(ppi, text, message):
    tmp_path, fasta = ppi
    with pytest.raises(DataError, match=r"pairs.tsv, record " + message):
        read_pairs(pairs_file(tmp_path, text), fasta)


def test_self_pairs_when_allowed_and_repeated_pairs_dropped_in_every_copy(ppi):
    tmp_path, fasta = ppi
    path = pairs_file(tmp_path, "protA\tprotB\tlabel\nA\tB\t1\nC\tC\t1\nB\tA\t0\nD\tE\t0\n")
    pairs = read_pairs(path, fasta, allow_self_pairs=True, duplicate_pairs="drop")
    assert [p.id for p in pairs] == ["C|C", "D|E"]  # A|B and B|A disagree: neither copy stays


def test_the_split_by_protein_keeps_test_proteins_out_of_training_and_counts_what_it_drops():
    from peftlab_protein.data import ProteinPair

    ids = [f"P{i}" for i in range(40)]
    pairs = [ProteinPair(f"{a}|{b}", a, b, "M", "M", int(i % 7 == 0))
             for i, (a, b) in enumerate((ids[i], ids[j]) for i in range(40) for j in range(i + 1, 40))]
    splits, dropped = split_by_protein(pairs, 0.1, 0.1, seed=3)
    proteins = {s: {p for pair in splits[s] for p in (pair.protein_a, pair.protein_b)} for s in splits}
    assert not proteins["train"] & proteins["test"] and not proteins["train"] & proteins["val"]
    assert not proteins["val"] & proteins["test"]
    assert sum(len(v) for v in splits.values()) + dropped == len(pairs) == 780
    # 13 of 40 proteins in test (round(40 * sqrt(0.1))): C(13, 2) = 78 test pairs, 10% of all
    assert len(proteins["test"]) == 13 and len(splits["test"]) == 78
    assert split_by_protein(pairs, 0.1, 0.1, seed=3) == (splits, dropped)  # seeded


def features(n_pairs=3, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * n_pairs, 5, dim, generator=g)
    return Features(hidden=hidden, mask=torch.ones(2 * n_pairs, 5, dtype=torch.bool))


def swapped(f):
    a, b = f.hidden.chunk(2)
    return Features(hidden=torch.cat([b, a]), mask=f.mask)


@pytest.mark.parametrize("combination,symmetric", [("symmetric", True), ("both_orders", True), ("ordered", False)])
def test_the_pair_head_is_symmetric_by_construction_or_by_averaging_both_orders(combination, symmetric):
    torch.manual_seed(0)
    head = TaskHead(4, "binary", 1, pair_combination=combination, dropout=0.0)
    f = features()
    out, out_swapped = head(f), head(swapped(f))
    assert out.shape == (3, 1)
    assert torch.allclose(out, out_swapped, atol=1e-6) is symmetric


def test_a_pair_batch_must_hold_both_sides():
    head = TaskHead(4, "binary", 1, pair_combination="symmetric")
    f = features()
    with pytest.raises(ValueError, match="a pair batch holds 2B rows"):
        head(Features(hidden=f.hidden[:5], mask=f.mask[:5]))


def test_binary_and_multilabel_tasks_report_aupr():
    metrics = task_kind("binary").build_metrics(1)
    metrics.update(torch.tensor([0.9, 0.8, 0.3, 0.2]), torch.tensor([1, 0, 1, 0]))
    # ranked: positive, negative, positive, negative -> precision 1 at recall 0.5, 2/3 at recall 1
    assert metrics.compute()["aupr"].item() == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    multi = task_kind("multilabel").build_metrics(2)
    multi.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([[1, 0], [0, 1]]))
    assert multi.compute()["aupr"].item() == pytest.approx(1.0)


def test_a_pair_model_runs_both_sides_through_one_backbone(ppi):
    tmp_path, fasta = ppi
    data = ProteinPairDataModule(str(fasta), str(pairs_file(tmp_path, "A\tB\t1\nC\tD\t0\nE\tA\t1\n")),
                                 split_by_protein=False, val_fraction=0, test_fraction=0)
    batch = data.collate(data.splits["train"])
    assert batch["tokens"].shape == (6, 10) and batch["labels"].tolist() == [1.0, 0.0, 1.0]
    module = PeftModule(ESM2Backbone(num_layers=1, embed_dim=16, attention_heads=2), build_method("lora", r=2),
                        task_type="binary", num_outputs=1, pairs=True)
    assert module(batch).shape == (3, 1)
    with pytest.raises(ValueError, match="cache_frozen_features supports sequence-level tasks on single inputs"):
        PeftModule(ESM2Backbone(num_layers=1, embed_dim=16, attention_heads=2), build_method("linear_probe"),
                   pairs=True, task_type="binary", cache_frozen_features=True)


def test_pairs_fit_test_and_predict_through_the_cli_and_the_adapter_keeps_the_pair_head(ppi):
    tmp_path, fasta = ppi
    lines = [f"{a}\t{b}\t{int(a < b)}" for a in SEQUENCES for b in SEQUENCES if a != b and (a + b) not in ("BA",)]
    path = pairs_file(tmp_path, "\n".join(lines[:12]) + "\n")
    run = tmp_path / "run"
    args = ["--config", str(CONFIGS / "protein/backbones/esm2_tiny.yaml"), "--config",
            str(CONFIGS / "methods/lora.yaml"), "--config", str(CONFIGS / "protein/data/ppi_dscript.yaml"),
            f"--data.path={fasta}", f"--data.pairs_path={path}", "--data.split_by_protein=false",
            "--data.val_fraction=0.25", "--data.test_fraction=0.25", "--data.duplicate_pairs=drop",
            "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--run_dir={run}"]
    run_cli(["fit", *args])
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["head"]["pairs"] is True and config["head"]["pair_combination"] == "symmetric"
    run_cli(["test", f"--run_dir={run}"])
    assert "test/aupr" in json.loads((run / "test_metrics.json").read_text())["metrics"]
    run_cli(["predict", f"--run_dir={run}"])
    rows = (run / "predictions.csv").read_text().splitlines()
    assert rows[0] == "id,probability,predicted" and all("|" in r.split(",")[0] for r in rows[1:])


def test_the_synthetic_pair_config_fits_through_the_cli(tmp_path):
    run_cli(["fit", "--config", str(CONFIGS / "protein/backbones/esm2_tiny.yaml"), "--config",
             str(CONFIGS / "methods/lora.yaml"), "--config", str(CONFIGS / "protein/data/synthetic_motif_pairs.yaml"),
             "--data.init_args.num_proteins=40", "--data.init_args.num_pairs=80", "--trainer.fast_dev_run=1",
             "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}"])
