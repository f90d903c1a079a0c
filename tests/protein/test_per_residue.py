"""Per-residue regression: CheZOD's file and folder layouts, FLIP's residue masks,
missing values, and that unscored residues change neither loss nor metrics."""

from __future__ import annotations

import math

import pytest
import torch

from peftlab import PeftModule, build_method
from peftlab.errors import DataError
from peftlab.model.task_kinds import task_kind
from peftlab_protein import ESM2Backbone
from peftlab_protein.data import ProteinDataModule


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.fixture
def chezod_like(tmp_path):
    """Two training proteins (scores file) and one test protein (scores folder), as CheZOD ships them."""
    train_fasta = write(tmp_path / "train.fasta", ">p1\nMKTA\n>p2\nGGS\n")
    train_scores = write(tmp_path / "train_scores.txt", "p1:\t999, 2.5, -1.0, 3.0,\np2: 1.0, 999, 0.5\n")
    folder = tmp_path / "test_scores"
    folder.mkdir()
    test_fasta = write(tmp_path / "test.fasta", ">t1\nACDE\n")
    write(folder / "zscorest1.txt", "A   2  0.255\nC   3  999\nD   4  4.240\nE   5  7.138\n")
    return dict(path=train_fasta, labels_path=train_scores, test_path=test_fasta, test_labels_path=str(folder))


def test_chezod_layouts_read_into_train_and_test_with_999_unscored(chezod_like):
    data = ProteinDataModule(**chezod_like, task_type="token_regression", missing_value=999, val_fraction=0.0,
                             batch_size=2)
    assert data.split_sizes() == {"train": 2, "val": 0, "test": 1} and data.num_outputs == 1
    batch = data.collate(data.splits["test"])
    nan = float("nan")
    # BOS, the four residues (999 unscored), EOS
    torch.testing.assert_close(batch["labels"], torch.tensor([[nan, 0.255, nan, 4.240, 7.138, nan]]),
                               equal_nan=True)
    train = data.collate(sorted(data.splits["train"], key=lambda r: r.id))
    assert torch.isfinite(train["labels"]).sum(1).tolist() == [3, 2]


def test_a_scores_folder_whose_residues_differ_from_the_sequence_names_the_file_and_residue(chezod_like, tmp_path):
    write(tmp_path / "test_scores" / "zscorest1.txt", "A 2 0.1\nC 3 0.2\nW 4 0.3\nE 5 0.4\n")
    data = ProteinDataModule(**chezod_like, task_type="token_regression")
    with pytest.raises(DataError, match=r"zscorest1.txt, record t1: its residues differ from the sequence at "
                                        r"residue 3 \(4 rows, sequence of 4\)"):
        data.splits


@pytest.mark.parametrize("scores,message", [
    ("p1: 1, 2, 3, 4\np2: 1, 2\n", "record p2: 2 per-residue values but the sequence has 3 residues"),
    ("p1: 1, 2, x, 4\np2: 1, 2, 3\n", "record p1: per-residue value 'x' at residue 3 is not a number"),
    ("p1 1, 2, 3, 4\n", r"record line 1: expected 'ID: value, value, ...'"),
])
def test_bad_scores_files_name_the_record(chezod_like, tmp_path, scores, message):
    write(tmp_path / "train_scores.txt", scores)
    data = ProteinDataModule(path=chezod_like["path"], labels_path=chezod_like["labels_path"],
                             task_type="token_regression")
    with pytest.raises(DataError, match=message):
        data.splits


def test_a_missing_scores_file_in_the_folder_names_the_protein(chezod_like, tmp_path):
    (tmp_path / "test_scores" / "zscorest1.txt").unlink()
    with pytest.raises(DataError, match="record t1: no scores file zscorest1.txt for this protein"):
        ProteinDataModule(**chezod_like, task_type="token_regression").splits


def test_a_residue_mask_unscores_masked_residues_for_both_per_residue_tasks(tmp_path):
    fasta = write(tmp_path / "s.fasta", ">a\nMKTAY\n>b\nGGS\n")
    mask = write(tmp_path / "mask.fasta", ">a\n11001\n>b\n011\n")
    values = write(tmp_path / "v.csv", "id,target\na,1 2 3 4 5\nb,6 7 8\n")
    classes = write(tmp_path / "c.csv", "id,target\na,HHEEC\nb,CCE\n")
    reg = ProteinDataModule(fasta, values, task_type="token_regression", mask_path=mask, val_fraction=0,
                            test_fraction=0)
    batch = reg.collate(sorted(reg.splits["train"], key=lambda r: r.id))
    assert torch.isfinite(batch["labels"]).tolist() == [[False, True, True, False, False, True, False],
                                                        [False, False, True, True, False, False, False]]
    cls = ProteinDataModule(fasta, classes, task_type="token_classification", mask_path=mask, val_fraction=0,
                            test_fraction=0)
    labels = cls.collate(sorted(cls.splits["train"], key=lambda r: r.id))["labels"]
    assert (labels != -100).tolist() == [[False, True, True, False, False, True, False],
                                         [False, False, True, True, False, False, False]]


@pytest.mark.parametrize("mask,message", [
    (">a\n1100\n>b\n011\n", "record a: the residue mask has 4 positions but the sequence has 5 residues"),
    (">a\n11001\n", "record b: no residue mask for this record"),
    (">a\n11021\n>b\n011\n", "record a: a residue mask holds one 0 or 1 per residue; found '2'"),
])
def test_bad_residue_masks_name_the_record(tmp_path, mask, message):
    fasta = write(tmp_path / "s.fasta", ">a\nMKTAY\n>b\nGGS\n")
    values = write(tmp_path / "v.csv", "id,target\na,1 2 3 4 5\nb,6 7 8\n")
    data = ProteinDataModule(fasta, values, task_type="token_regression", mask_path=write(tmp_path / "m.fa", mask))
    with pytest.raises(DataError, match=message):
        data.splits


def test_a_mask_on_a_sequence_level_task_is_refused():
    with pytest.raises(ValueError, match="mask_path marks residues of a per-residue task, not of regression"):
        ProteinDataModule("x.fasta", task_type="regression", mask_path="m.fasta")


def test_unscored_residues_change_neither_the_loss_nor_any_metric():
    """The issue's check: change the predictions of masked / unmeasured residues (NaN labels) and of
    padding; the loss and every metric stay exactly the same. Scored residues are pooled over the
    split (one Spearman over residues, not a mean of per-protein values)."""
    kind = task_kind("token_regression")
    labels = torch.tensor([[math.nan, 1.0, 2.0, math.nan, 4.0, math.nan],
                           [math.nan, 3.0, math.nan, 0.5, math.nan, math.nan]])
    logits = torch.randn(2, 6, 1, generator=torch.Generator().manual_seed(0))
    changed = logits.clone()
    changed[~torch.isfinite(labels)] = 1e6  # every unscored position predicts something absurd

    def evaluate(out):
        loss, preds, target = kind.loss_and_predictions(out, {"labels": labels})
        metrics = kind.build_metrics(1)
        metrics.update(preds, target)
        return loss, {k: v.item() for k, v in metrics.compute().items()}, len(target)

    loss, metrics, scored = evaluate(logits)
    loss2, metrics2, _ = evaluate(changed)
    assert scored == 5 and loss.item() == loss2.item() and metrics == metrics2
    expected = torch.nn.functional.mse_loss(logits[torch.isfinite(labels)].squeeze(-1), labels[torch.isfinite(labels)])
    assert loss.item() == pytest.approx(expected.item())
    changed[0, 1] += 1.0  # a scored residue does count
    assert evaluate(changed)[0].item() != loss.item()


def test_a_per_residue_model_trains_and_predicts_one_row_per_scored_residue(chezod_like):
    data = ProteinDataModule(**chezod_like, task_type="token_regression", missing_value=999, val_fraction=0.0)
    module = PeftModule(ESM2Backbone(num_layers=1, embed_dim=16, attention_heads=2), build_method("lora", r=2),
                        task_type="token_regression", num_outputs=1)
    batch = data.collate(data.splits["test"])
    assert module(batch).shape == (1, 6, 1)
    header, rows = module.task.prediction_table([module.predict_step(batch, 0)], None)
    assert header == ["id", "position", "prediction"]
    assert [(r[0], r[1]) for r in rows] == [("t1", 1), ("t1", 3), ("t1", 4)]  # residue 2 (999) is not scored
