"""Protein data loading: readers, validation, splits, collate and the synthetic task."""

from __future__ import annotations

import csv
import os
import re
import zipfile
from pathlib import Path

import pytest
import torch

from peftlab.data import IGNORE_INDEX, DataError
from peftlab_protein.data import (
    ALLOWED_RESIDUES,
    ProteinDataModule,
    ProteinRecord,
    read_fasta_with_labels,
    read_flip_csv,
    read_flip_fasta,
)
from peftlab_protein.backbones import esm_alphabet
from peftlab_protein.synthetic import DEFAULT_MOTIF, SyntheticMotifDataModule, make_synthetic_records

ALPHABET = esm_alphabet()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def raises_data_error(path: Path, record: object, problem: str):
    """``pytest.raises`` for a DataError whose message names ``path``, ``record`` and the problem."""
    where = re.escape(f"{path}, record {record}") if record is not None else re.escape(str(path))
    return pytest.raises(DataError, match=f"^{where}: .*{problem}")


FLIP_CSV = """sequence,target,set,validation
MKTAYIAK,0.5,train,
mktw yiak,1.5,train,True
ACDEFGHIK,-0.25,test,
MKV,2.0,train,False
MKVLA,3.0,test,
"""

FLIP_FASTA = """>Sequence0 TARGET=0.5 SET=train VALIDATION=False
MKTAYIAK
>Sequence1 TARGET=1.5 SET=train VALIDATION=True
MKTW
YIAK
>Sequence2 TARGET=-0.25 SET=test VALIDATION=False
ACDEFGHIK
>Sequence3 TARGET=2.0 SET=train VALIDATION=False
MKV
>Sequence4 TARGET=3.0 SET=test VALIDATION=False
MKVLA
"""


# ---- readers --------------------------------------------------------------------------

def test_read_flip_csv_records(tmp_path):
    records = read_flip_csv(write(tmp_path / "d.csv", FLIP_CSV))
    assert [r.id for r in records] == ["row1", "row2", "row3", "row4", "row5"]
    assert records[1] == ProteinRecord("row2", "MKTWYIAK", 1.5, "val")  # lower-case, inner space removed
    assert [r.label for r in records] == [0.5, 1.5, -0.25, 2.0, 3.0]
    assert [r.split for r in records] == ["train", "val", "test", "train", "test"]


def test_read_flip_csv_id_column_and_custom_columns(tmp_path):
    path = write(tmp_path / "d.csv", "name,seq,fitness\nalpha,MKV,1\nbeta,MKVL,2\n")
    records = read_flip_csv(path, sequence_column="seq", target_column="fitness")
    assert [(r.id, r.sequence, r.label, r.split) for r in records] == [("alpha", "MKV", 1.0, None),
                                                                      ("beta", "MKVL", 2.0, None)]


def test_read_flip_fasta_matches_csv(tmp_path):
    fasta = read_flip_fasta(write(tmp_path / "d.fasta", FLIP_FASTA))
    table = read_flip_csv(write(tmp_path / "d.csv", FLIP_CSV))
    assert [r.id for r in fasta] == [f"Sequence{i}" for i in range(5)]
    assert fasta[1].sequence == "MKTWYIAK"  # multi-line sequence joined
    assert [(r.sequence, r.label, r.split) for r in fasta] == [(r.sequence, r.label, r.split) for r in table]


def test_plain_fasta_with_labels_csv(tmp_path):
    fasta = write(tmp_path / "seqs.fasta", ">P1 some description\nMKV\n>P2\nMKVL\n")
    for header in ("id,label", "id,target"):
        labels = write(tmp_path / "labels.csv", f"{header}\nP2,0.25\nP1,1.0\nP9,3.0\n")  # extra id is ignored
        records = read_fasta_with_labels(fasta, labels)
        assert [(r.id, r.sequence, r.label) for r in records] == [("P1", "MKV", 1.0), ("P2", "MKVL", 0.25)]
    labels = write(tmp_path / "labels.csv", "id,label\nP1,1.0\n")
    with raises_data_error(labels, "P2", "no label for sequence id 'P2'"):
        read_fasta_with_labels(fasta, labels)


def test_plain_fasta_with_flip_secondary_structure_labels(tmp_path):
    fasta = write(tmp_path / "sequences.fasta", ">Seq1\nMKVLAG\n>Seq2\nMKV\n")
    labels = write(tmp_path / "sampled.fasta",
                   ">Seq1 SET=train VALIDATION=False\nCCH\nHEE\n>Seq2 SET=test VALIDATION=False\nCHE\n")
    records = read_fasta_with_labels(fasta, labels, task_type="token_classification")
    assert [(r.id, r.label, r.split) for r in records] == [("Seq1", "CCHHEE", "train"), ("Seq2", "CHE", "test")]


# ---- splits ---------------------------------------------------------------------------

def test_splits_from_set_and_validation(tmp_path):
    expected = {
        "d.csv": (FLIP_CSV, {"train": ["row1", "row4"], "val": ["row2"], "test": ["row3", "row5"]}),
        "d.fasta": (FLIP_FASTA, {"train": ["Sequence0", "Sequence3"], "val": ["Sequence1"],
                                 "test": ["Sequence2", "Sequence4"]}),
    }
    for name, (text, splits) in expected.items():
        dm = ProteinDataModule(path=str(write(tmp_path / name, text)))
        assert {s: [r.id for r in recs] for s, recs in dm.splits.items()} == splits


def test_val_is_carved_out_of_train_when_unmarked(tmp_path):
    rows = "".join(f"M{'K' * (i % 7)}V,{i},{'test' if i % 4 == 0 else 'train'},\n" for i in range(40))
    path = str(write(tmp_path / "d.csv", "sequence,target,set,validation\n" + rows))
    dm = ProteinDataModule(path=path, val_fraction=0.2, seed=3)
    train, val, test = (sorted(r.id for r in dm.splits[s]) for s in ("train", "val", "test"))
    assert len(test) == 10 and all(int(i[3:]) % 4 == 1 for i in test)  # row{N} is 1-based: value i -> row i+1
    assert len(val) == 6 and not set(val) & set(train)
    assert sorted(train + val, key=lambda i: int(i[3:])) == [f"row{i + 1}" for i in range(40) if i % 4]
    again = ProteinDataModule(path=path, val_fraction=0.2, seed=3)
    assert sorted(r.id for r in again.splits["val"]) == val


def test_seeded_split_without_split_columns(tmp_path):
    rows = "".join(f"MKV{'L' * (i % 5)},{i}\n" for i in range(50))
    path = str(write(tmp_path / "d.csv", "sequence,target\n" + rows))
    ids = lambda dm: {s: [r.id for r in recs] for s, recs in dm.splits.items()}  # noqa: E731
    first = ids(ProteinDataModule(path=path, seed=7, val_fraction=0.2, test_fraction=0.1))
    assert first == ids(ProteinDataModule(path=path, seed=7, val_fraction=0.2, test_fraction=0.1))
    assert {s: len(v) for s, v in first.items()} == {"train": 35, "val": 10, "test": 5}
    everything = first["train"] + first["val"] + first["test"]
    assert sorted(everything) == sorted(f"row{i}" for i in range(1, 51))  # disjoint and complete
    assert first != ids(ProteinDataModule(path=path, seed=8, val_fraction=0.2, test_fraction=0.1))


# ---- labels ---------------------------------------------------------------------------

def test_multiclass_labels_map_to_sorted_indices_across_splits(tmp_path):
    path = str(write(tmp_path / "d.csv", "sequence,target,set\nMKV,nucleus,train\nMKL,cytoplasm,train\n"
                                         "MKA,membrane,test\nMKC,nucleus,test\n"))
    dm = ProteinDataModule(path=path, task_type="multiclass", val_fraction=0.5)
    assert dm.label_names == ["cytoplasm", "membrane", "nucleus"] and dm.num_outputs == 3
    index = {"MKV": 2, "MKL": 0, "MKA": 1, "MKC": 2}
    for split in ("train", "val", "test"):
        batch = dm.collate(dm.splits[split])
        assert batch["labels"].dtype == torch.long
        assert batch["labels"].tolist() == [index[r.sequence] for r in dm.splits[split]]
    given = ProteinDataModule(path=path, task_type="multiclass", label_names=["nucleus", "membrane", "cytoplasm"])
    assert given.label_names == ["nucleus", "membrane", "cytoplasm"]
    assert {r.sequence: r.label for s in given.splits.values() for r in s}["MKL"] == 2
    with raises_data_error(Path(path), "row3", "label 'membrane' is not one of label_names"):
        ProteinDataModule(path=path, task_type="multiclass", label_names=["cytoplasm", "nucleus"]).splits


def test_binary_multilabel_and_multi_output_regression(tmp_path):
    path = str(write(tmp_path / "d.csv", "sequence,target,a,b,tags\nMKV,1,0.5,1.5,\"0,1,1\"\nMKL,0,2,3,1;0;0\n"))
    binary = ProteinDataModule(path=path, task_type="binary")
    records = sorted((r for s in binary.splits.values() for r in s), key=lambda r: r.id)
    labels = binary.collate(records)["labels"]
    assert labels.dtype == torch.float32 and labels.tolist() == [1.0, 0.0] and binary.num_outputs == 1

    regression = ProteinDataModule(path=path, target_column=["a", "b"], test_fraction=0, val_fraction=0)
    batch = regression.collate(regression.splits["train"])
    assert regression.num_outputs == 2 and batch["labels"].tolist() == [[0.5, 1.5], [2.0, 3.0]]

    for columns, names in ((["a", "b"], None), ("tags", None)):
        if columns == ["a", "b"]:  # several 0/1 columns
            path2 = str(write(tmp_path / "m.csv", "sequence,a,b\nMKV,1,0\nMKL,0,1\n"))
            dm = ProteinDataModule(path=path2, task_type="multilabel", target_column=columns,
                                   val_fraction=0, test_fraction=0)
            assert dm.label_names == ["a", "b"]
        else:  # one column with a list of 0/1 values
            dm = ProteinDataModule(path=path, task_type="multilabel", target_column=columns,
                                   val_fraction=0, test_fraction=0)
            assert dm.label_names is None
        batch = dm.collate(dm.splits["train"])
        assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (2, dm.num_outputs)
    assert batch["labels"].tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


def test_token_classification_labels_and_alignment(tmp_path):
    path = str(write(tmp_path / "ss.csv", "id,sequence,target\nA,MKVLA,CCHHE\nB,MKV,EEC\n"))
    dm = ProteinDataModule(path=path, task_type="token_classification", val_fraction=0, test_fraction=0)
    assert dm.label_names == ["C", "E", "H"] and dm.num_outputs == 3
    batch = dm.collate(dm.splits["train"])
    assert batch["ids"] == ["A", "B"]
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == batch["tokens"].shape == (2, 7)
    assert batch["labels"].tolist() == [[-100, 0, 0, 2, 2, 1, -100],
                                        [-100, 1, 1, 0, -100, -100, -100]]
    cropped = ProteinDataModule(path=path, task_type="token_classification", max_length=4,
                                val_fraction=0, test_fraction=0)
    batch = cropped.collate(cropped.splits["train"])
    assert batch["tokens"].shape == (2, 6)
    assert batch["labels"][0].tolist() == [-100, 0, 0, 2, 2, -100]  # the 5th residue's label is cropped away
    assert batch["tokens"][0, -1] == ALPHABET.eos_idx


def test_collate_tokens_use_the_esm_alphabet(tmp_path):
    path = str(write(tmp_path / "d.csv", "id,sequence,target\nlong,MKVLAGW,1\nshort,MK,2\n"))
    dm = ProteinDataModule(path=path, val_fraction=0, test_fraction=0)
    batch = dm.collate(dm.splits["train"])
    tokens = batch["tokens"]
    assert tokens.dtype == torch.long and tokens.shape == (2, 9)
    assert tokens[:, 0].tolist() == [ALPHABET.cls_idx] * 2
    assert tokens[0, 1:8].tolist() == [ALPHABET.get_idx(c) for c in "MKVLAGW"]
    assert tokens[0, 8] == ALPHABET.eos_idx
    assert tokens[1].tolist() == [ALPHABET.cls_idx, ALPHABET.get_idx("M"), ALPHABET.get_idx("K"),
                                  ALPHABET.eos_idx] + [ALPHABET.padding_idx] * 5
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [1.0, 2.0]
    assert dm.record_length(dm.splits["train"][0]) == 7

    cropped = ProteinDataModule(path=path, max_length=3, val_fraction=0, test_fraction=0)
    tokens = cropped.collate(cropped.splits["train"])["tokens"]
    assert tokens.shape == (2, 5)  # max_length + 2
    assert tokens[0].tolist() == [ALPHABET.cls_idx, *(ALPHABET.get_idx(c) for c in "MKV"), ALPHABET.eos_idx]
    assert cropped.record_length(cropped.splits["train"][0]) == 3


def test_token_labels_ignore_bos_eos_and_padding(tmp_path):
    path = str(write(tmp_path / "ss.csv", "sequence,target\nMKVLA,CCHHE\nMK,EE\n"))
    dm = ProteinDataModule(path=path, task_type="token_classification", val_fraction=0, test_fraction=0)
    batch = dm.collate(dm.splits["train"])
    special = torch.isin(batch["tokens"], torch.tensor([ALPHABET.cls_idx, ALPHABET.eos_idx, ALPHABET.padding_idx]))
    assert (batch["labels"] == IGNORE_INDEX).equal(special)


def test_every_allowed_residue_is_a_known_esm_token():
    assert all(ALPHABET.get_idx(c) != ALPHABET.unk_idx for c in ALLOWED_RESIDUES)


# ---- bad input ------------------------------------------------------------------------

BAD_CSV = [
    ("sequence,target\nMKV,1\nMKJV,2\n", "row2", r"invalid residue 'J' at position 3"),
    ("sequence,target\nMKV,1\n  ,2\n", "row2", "empty sequence"),
    ("sequence,target\nMKV,1\nMKV,high\n", "row2", "target 'high' is not a number"),
    ("sequence,target\nMKV,1\nMKV,\n", "row2", "missing target value"),
    ("id,sequence,target\nP1,MKV,1\nP1,MKL,2\n", "P1", "duplicated id 'P1'"),
    ("sequence,target,set\nMKV,1,train\nMKL,2,holdout\n", "row2", "unknown set value 'holdout'"),
    ("sequence,target,set,validation\nMKV,1,test,True\n", "row1", "validation=True on a test row"),
    ("sequence,target,set,validation\nMKV,1,train,maybe\n", "row1", "validation value 'maybe'"),
    ("sequence,target\nMKV,1,extra\n", "row1", "more fields than the header"),
]


@pytest.mark.parametrize(("text", "record", "problem"), BAD_CSV)
def test_bad_csv_names_file_and_record(tmp_path, text, record, problem):
    path = write(tmp_path / "bad.csv", text)
    with raises_data_error(path, record, problem) as info:
        read_flip_csv(path)
    assert info.value.path == str(path) and info.value.record == record


def test_bad_targets_for_binary_and_token_tasks(tmp_path):
    path = write(tmp_path / "b.csv", "sequence,target\nMKV,1\nMKL,yes\n")
    with raises_data_error(path, "row2", "target 'yes' is not a number"):
        read_flip_csv(path, task_type="binary")
    path = write(tmp_path / "b2.csv", "sequence,target\nMKV,2\n")
    with raises_data_error(path, "row1", "binary target must be 0 or 1"):
        read_flip_csv(path, task_type="binary")
    path = write(tmp_path / "ss.csv", "sequence,target\nMKVL,CCH\n")
    with raises_data_error(path, "row1", "label string has 3 characters but the sequence has 4 residues"):
        read_flip_csv(path, task_type="token_classification")
    fasta = write(tmp_path / "s.fasta", ">S1\nMKVL\n")
    labels = write(tmp_path / "l.fasta", ">S1 SET=train\nCCHHH\n")
    with raises_data_error(labels, "S1", "label string has 5 characters"):
        read_fasta_with_labels(fasta, labels, task_type="token_classification")


def test_missing_column_and_missing_file(tmp_path):
    path = write(tmp_path / "d.csv", "seq,target\nMKV,1\n")
    with pytest.raises(DataError, match=re.escape(f"{path}: missing required column(s) ['sequence']")):
        read_flip_csv(path)
    labels = write(tmp_path / "labels.csv", "id,score\nP1,1\n")
    with pytest.raises(DataError, match=re.escape(f"{labels}: missing required column(s) ['target']")):
        read_fasta_with_labels(write(tmp_path / "s.fasta", ">P1\nMKV\n"), labels)
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=re.escape(f"{missing}: file not found")):
        read_flip_csv(missing)
    with pytest.raises(DataError, match="file not found"):
        ProteinDataModule(path=str(missing)).setup("fit")


def test_bad_fasta_names_file_and_record(tmp_path):
    cases = [
        (">S1 TARGET=1\nMKV\n>S1 TARGET=2\nMKL\n", "S1", "duplicated id 'S1'"),
        (">S1 TARGET=1\nMK*V\n", "S1", r"invalid residue '\*' at position 3"),
        (">S1 TARGET=1\n>S2 TARGET=2\nMKV\n", "S1", "empty sequence"),
        (">S1 SET=train\nMKV\n", "S1", "header has no TARGET= attribute"),
        (">S1 TARGET=1 SET=dev\nMKV\n", "S1", "unknown set value 'dev'"),
        (">S1 TARGET=abc\nMKV\n", "S1", "target 'abc' is not a number"),
        ("MKV\n>S1 TARGET=1\nMKV\n", "line 1", "sequence text before the first '>' header"),
    ]
    for i, (text, record, problem) in enumerate(cases):
        path = write(tmp_path / f"bad{i}.fasta", text)
        with raises_data_error(path, record, problem):
            read_flip_fasta(path)


def test_mixed_split_marks_and_unknown_suffix(tmp_path):
    path = write(tmp_path / "d.fasta", ">S1 TARGET=1 SET=train\nMKV\n>S2 TARGET=2\nMKL\n")
    with raises_data_error(path, "S2", "has no split .*while other records have one"):
        ProteinDataModule(path=str(path)).splits
    odd = write(tmp_path / "d.txt", FLIP_CSV)
    with raises_data_error(odd, None, "cannot tell the format"):
        ProteinDataModule(path=str(odd)).splits
    assert ProteinDataModule(path=str(odd), format="csv").split_sizes() == {"train": 2, "val": 1, "test": 2}


def test_map_to_x_policy(tmp_path):
    path = write(tmp_path / "d.csv", "sequence,target\nmkjvb,1\n")
    with raises_data_error(path, "row1", "invalid residue 'J' at position 3.*unknown_residues='map_to_x'"):
        read_flip_csv(path)
    assert read_flip_csv(path, unknown_residues="map_to_x")[0].sequence == "MKXVB"  # B is allowed as is
    bad = write(tmp_path / "star.csv", "sequence,target\nMKV*,1\n")
    with raises_data_error(bad, "row1", r"invalid residue '\*' at position 4"):
        read_flip_csv(bad, unknown_residues="map_to_x")  # only letters are mapped
    with pytest.raises(ValueError, match="unknown_residues"):
        ProteinDataModule(path=str(path), unknown_residues="drop")


# ---- synthetic task -------------------------------------------------------------------

def test_synthetic_records_are_deterministic_and_learnable():
    first = make_synthetic_records(num_sequences=200, seed=5)
    assert first == make_synthetic_records(num_sequences=200, seed=5)
    assert first != make_synthetic_records(num_sequences=200, seed=6)
    assert sum(r.label for r in first) == 100  # balanced
    assert all(r.label == int(DEFAULT_MOTIF in r.sequence) for r in first)
    assert all(30 <= len(r.sequence) <= 60 and set(r.sequence) <= set(ALLOWED_RESIDUES) for r in first)

    counts = make_synthetic_records(num_sequences=100, task_type="regression", seed=1)
    assert all(r.label == float(r.sequence.count(DEFAULT_MOTIF)) for r in counts)
    assert {r.label for r in counts} == {0.0, 1.0, 2.0, 3.0}

    tokens = make_synthetic_records(num_sequences=50, task_type="token_classification", seed=2)
    for r in tokens:
        marked = "".join(c for c, m in zip(r.sequence, r.label) if m == "1")
        assert len(r.label) == len(r.sequence) and marked == DEFAULT_MOTIF * r.sequence.count(DEFAULT_MOTIF)


def test_synthetic_datamodule_splits_and_batches():
    dm = SyntheticMotifDataModule(num_sequences=100, seed=4, batch_size=8)
    assert dm.split_sizes() == {"train": 80, "val": 10, "test": 10}
    assert dm.num_outputs == 1 and dm.task_type == "binary"
    same = SyntheticMotifDataModule(num_sequences=100, seed=4)
    assert [r.id for r in dm.splits["test"]] == [r.id for r in same.splits["test"]]
    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens"].shape[0] == 8 and batch["labels"].shape == (8,)

    token = SyntheticMotifDataModule(num_sequences=40, task_type="token_classification")
    assert token.label_names == ["0", "1"] and token.num_outputs == 2
    with pytest.raises(ValueError, match="synthetic task_type"):
        SyntheticMotifDataModule(task_type="multiclass")


# ---- real data ------------------------------------------------------------------------

GB1_TWO_VS_REST = {"train": 381, "val": 43, "test": 8309}  # measured with the csv module: 8,733 rows


def test_real_flip_gb1_two_vs_rest(tmp_path):
    root = os.environ.get("PEFTLAB_DATA")
    if not root:
        pytest.skip("PEFTLAB_DATA is not set: the real FLIP GB1 data lives in ../shared/data")
    with zipfile.ZipFile(Path(root) / "flip_gb1" / "splits.zip") as archive:
        path = archive.extract("splits/two_vs_rest.csv", tmp_path)
    with open(path, newline="") as f:
        rows = sum(1 for _ in csv.DictReader(f))
    assert rows == sum(GB1_TWO_VS_REST.values()) == 8733
    dm = ProteinDataModule(path=path, task_type="regression")
    assert dm.split_sizes() == GB1_TWO_VS_REST
    assert dm.num_outputs == 1
    assert {len(r.sequence) for s in dm.splits.values() for r in s} == {265}
    batch = dm.collate(dm.splits["val"][:4])
    assert batch["tokens"].shape == (4, 267) and batch["labels"].shape == (4,)
