"""The protein DataModule: one class over every protein file format
(FLIP CSV, FLIP FASTA, plain FASTA + labels), its label vocabulary and the
ESM-2 batches.

The readers live in their format modules (:mod:`~peftlab_protein.data.flip`,
:mod:`~peftlab_protein.data.fasta`); the record type and what they share, in
:mod:`~peftlab_protein.data.records`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from peftlab.tasks import PER_TOKEN_TASK_TYPES
from peftlab.data import (IGNORE_INDEX, DataError, LabelVocabulary, LoadedData, PeftDataModule, assign_splits,
                          class_vocabulary, output_vocabulary)
from peftlab_protein.backbones import esm_alphabet  # the ESM-1b/ESM-2 alphabet of fair-esm
from peftlab_protein.data.fasta import FASTA_SUFFIXES, read_fasta_with_labels, read_residue_masks
from peftlab_protein.data.flip import CSV_SUFFIXES, read_flip_csv, read_flip_fasta
from peftlab_protein.data.records import PathLike, ProteinRecord, check_policy, target_columns

FORMATS = ("auto", "csv", "fasta")


def detect_format(path: PathLike, format: str) -> str:
    """``"csv"`` or ``"fasta"``: ``format`` itself, or with ``"auto"`` the file suffix's."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format != "auto":
        return format
    suffix = Path(path).suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in FASTA_SUFFIXES:
        return "fasta"
    raise DataError(path, None, f"cannot tell the format from the suffix {suffix!r}: use "
                                f"{'/'.join(CSV_SUFFIXES + FASTA_SUFFIXES)} or set format='csv'/'fasta'")


class ProteinDataModule(PeftDataModule):
    """Protein sequences for ESM-2 fine-tuning, from FLIP-style CSV or FASTA files.

    ``task_type`` (see :class:`~peftlab.data.PeftDataModule` for it and the
    other shared options) decides how targets are read: ``regression``,
    ``binary``, ``multiclass``, ``multilabel``, ``token_classification``
    (per-residue label strings, one character per residue) or
    ``token_regression`` (one value per residue; residues without one count in
    neither loss nor metrics).

    Args:
        path: the data file (``.csv``, or ``.fasta``/``.fa``/``.faa``).
        labels_path: labels for a plain FASTA ``path`` (CSV ``id,label`` /
            ``id,<target_column>``, or a FASTA of labels); ``None`` when the
            labels are in ``path`` itself.
        format: ``"auto"`` (from the suffix), ``"csv"`` or ``"fasta"``.
        sequence_column: CSV column holding the sequence.
        target_column: CSV column (or FASTA header attribute, case-insensitive)
            holding the target; a list of columns gives multi-output regression
            or multilabel targets.
        label_names: class names (multiclass), residue label characters (token
            classification) or label names (multilabel); default: the sorted
            set of labels seen in the data (multilabel: the target columns).
        max_length: residues kept per sequence; longer ones are cropped to the
            first ``max_length`` residues (ESM-2 takes 1024 tokens incl. BOS/EOS).
        unknown_residues: ``"error"`` rejects letters outside the ESM amino-acid
            alphabet; ``"map_to_x"`` turns them into ``X``.
        max_tokens: a token budget per batch (and per process in data-parallel runs), next to
            ``batch_size``: batch size x longest tokens (residues + BOS + EOS) stays within it, so long
            proteins come in small batches and short ones still fill ``batch_size``. A sequence
            longer than the budget (after cropping to ``max_length``) forms a batch on its own.
            ``None``: no budget. Needs ``group_by_length``. With a budget the batches are drawn
            once from ``seed`` and shuffled every epoch (see
            :class:`~peftlab.data.LengthGroupedBatchSampler`).
        mask_path: per-residue tasks: a FASTA of ``1`` (scored) / ``0`` (not scored) per residue
            for every record (FLIP's mask files); masked residues count in neither loss nor metrics.
        missing_value: token regression: the value that marks a residue without a measurement
            (CheZOD: ``999``); such residues are not scored (NaN in a file is always unscored).
        test_path / test_labels_path: a separate test file (and its labels), read like
            ``path`` / ``labels_path``; then ``path`` holds train (and validation, carved out
            with ``val_fraction`` unless marked) and every record of ``test_path`` is test.

    Splits come from the ``set``/``validation`` columns (FASTA ``SET``/
    ``VALIDATION`` attributes) when present; otherwise
    :func:`peftlab.data.seeded_split` makes them. With a ``set`` column but no
    validation rows, ``val_fraction`` is the share of the train rows carved out.
    """

    input_keys = ("tokens",)

    def __init__(self, path: str | None = None, labels_path: str | None = None, format: str = "auto", *,
                 sequence_column: str = "sequence", target_column: str | list[str] = "target",
                 label_names: list[str] | None = None, max_length: int = 1022, unknown_residues: str = "error",
                 max_tokens: int | None = None, mask_path: str | None = None, missing_value: float | None = None,
                 test_path: str | None = None, test_labels_path: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        check_policy(unknown_residues)
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if max_tokens is not None and (max_tokens < 1 or not self.group_by_length):
            raise ValueError(f"max_tokens must be >= 1 and needs group_by_length: true (got {max_tokens}, "
                             f"group_by_length {self.group_by_length})")
        if label_names is not None and self.task_type == "token_classification":
            bad = [n for n in label_names if len(n) != 1]
            if bad:
                raise ValueError(f"token_classification label_names must be single characters, got {bad}")
        self.path = path
        self.labels_path = labels_path
        self.format = format
        self.sequence_column = sequence_column
        self.target_column = target_column
        self.given_label_names = list(label_names) if label_names is not None else None
        self.max_length = max_length
        self.unknown_residues = unknown_residues
        self.max_tokens = max_tokens
        if mask_path is not None and self.task_type not in PER_TOKEN_TASK_TYPES:
            raise ValueError(f"mask_path marks residues of a per-residue task, not of {self.task_type}")
        self.mask_path, self.missing_value = mask_path, missing_value
        self.test_path, self.test_labels_path = test_path, test_labels_path
        self.alphabet = esm_alphabet()

    # ---- reading ------------------------------------------------------------------
    @property
    def source(self) -> str:
        """Where the labels come from, for error messages."""
        return str(self.labels_path or self.path)

    def read_records(self) -> list[ProteinRecord]:
        """All records of the data set, in file order (subclasses may generate them instead):
        ``path``'s, then ``test_path``'s (marked test), with their residue masks."""
        if self.path is None:
            raise ValueError(f"{type(self).__name__} needs a data path (--data.path)")
        records = self.read_file(self.path, self.labels_path)
        if self.test_path is not None:
            records = [r if r.split else dataclasses.replace(r, split="train") for r in records]
            records += [dataclasses.replace(r, split="test") for r in self.read_file(self.test_path,
                                                                                      self.test_labels_path)]
        return self.with_masks(records) if self.mask_path is not None else records

    def read_file(self, path: PathLike, labels_path: PathLike | None) -> list[ProteinRecord]:
        """The records of one data file (and its labels file)."""
        options = dict(task_type=self.task_type, target_column=self.target_column,
                       unknown_residues=self.unknown_residues)
        fmt = detect_format(path, self.format)
        if fmt == "csv":
            if labels_path is not None:
                raise ValueError("labels_path is only used with a FASTA path; a CSV holds its own targets")
            return read_flip_csv(path, sequence_column=self.sequence_column, **options)
        if labels_path is not None:
            return read_fasta_with_labels(path, labels_path, **options)
        return read_flip_fasta(path, **options)

    def with_masks(self, records: list[ProteinRecord]) -> list[ProteinRecord]:
        """The records with their residue masks from ``mask_path`` (each record needs one of its length)."""
        masks = read_residue_masks(self.mask_path)
        out = []
        for r in records:
            mask = masks.get(r.id)
            if mask is None:
                raise DataError(self.mask_path, r.id, "no residue mask for this record")
            if len(mask) != len(r.sequence):
                raise DataError(self.mask_path, r.id, f"the residue mask has {len(mask)} positions but the "
                                                      f"sequence has {len(r.sequence)} residues")
            out.append(dataclasses.replace(r, mask=mask))
        return out

    def load_data(self) -> LoadedData:
        """The records, split, and the label vocabulary of all of them (so every split maps labels alike);
        multiclass records then hold class indices."""
        records = self.read_records()
        labels = self.label_vocabulary(records)
        if self.task_type == "multiclass":
            records = [dataclasses.replace(r, label=labels.index[r.label]) for r in records]
        return LoadedData(assign_splits(records, self.val_fraction, self.test_fraction, self.seed, self.source),
                          labels)

    def label_vocabulary(self, records: Sequence[ProteinRecord]) -> LabelVocabulary:
        """What the head predicts: classes (multiclass; residue labels for token
        classification), or the width every record's targets share (regression,
        multilabel; named by ``label_names`` or, for multilabel, the target columns)."""
        task, given, source = self.task_type, self.given_label_names, self.source
        if task == "token_classification":
            return class_vocabulary(((r.id, c) for r in records for c in r.label), given, source)
        if task == "multiclass":
            return class_vocabulary(((r.id, r.label) for r in records), given, source)
        if task == "binary":
            return LabelVocabulary(num_outputs=1, names=given)
        if task == "token_regression":
            return LabelVocabulary(num_outputs=1, names=given)
        widths = ((r.id, len(r.label) if isinstance(r.label, list) else 0) for r in records)
        if task == "multilabel":
            columns = target_columns(self.target_column)
            return output_vocabulary(widths, given if given is not None else (columns if len(columns) > 1 else None),
                                     source)
        # regression: label_names, when given, are kept as they are (not checked against the width)
        return LabelVocabulary(num_outputs=output_vocabulary(widths, None, source).num_outputs, names=given)

    # ---- task description -----------------------------------------------------------
    def record_length(self, record: ProteinRecord) -> int:
        """Residues the model sees (the sequence length, after cropping to ``max_length``)."""
        return min(len(record.sequence), self.max_length)

    # ---- batching -------------------------------------------------------------------
    def sampler_options(self) -> dict[str, Any]:
        """The token budget: a batch is ``[B, longest residues + 2]`` (BOS and EOS)."""
        return {} if self.max_tokens is None else {"max_tokens": self.max_tokens, "extra_tokens": 2}

    def collate(self, records: list[ProteinRecord]) -> dict[str, Any]:
        """Records -> ``{"tokens": [B, T], "labels": ..., "ids": [...]}`` in the ESM-2 alphabet.

        Each row is ``<cls> residues <eos>`` padded with ``<pad>`` to the longest
        (cropped) sequence; T <= max_length + 2. Token labels are aligned with
        the tokens and hold ``IGNORE_INDEX`` on BOS, EOS, padding and cropped residues.
        """
        if not records:
            raise ValueError("collate got an empty batch")
        tokens = self.tokenize([r.sequence for r in records])
        return {"tokens": tokens, "labels": self._collate_labels(records, tokens.shape[1]),
                "ids": [r.id for r in records]}

    def tokenize(self, sequences: list[str]) -> torch.Tensor:
        """``[N, T]`` ESM-2 tokens: ``<cls> residues <eos>`` per sequence (cropped to ``max_length``),
        padded with ``<pad>`` to the longest."""
        alphabet = self.alphabet
        sequences = [s[: self.max_length] for s in sequences]
        tokens = torch.full((len(sequences), max(len(s) for s in sequences) + 2), alphabet.padding_idx,
                            dtype=torch.long)
        for i, seq in enumerate(sequences):
            tokens[i, 0] = alphabet.cls_idx
            tokens[i, 1 : len(seq) + 1] = torch.tensor([alphabet.get_idx(c) for c in seq], dtype=torch.long)
            tokens[i, len(seq) + 1] = alphabet.eos_idx
        return tokens

    def _collate_labels(self, records: list[ProteinRecord], width: int) -> torch.Tensor:
        task = self.task_type
        if task == "token_classification":
            index = self.labels.index  # the label vocabulary comes from the data
            labels = torch.full((len(records), width), IGNORE_INDEX, dtype=torch.long)
            for i, r in enumerate(records):
                kept = r.label[: self.max_length]
                labels[i, 1 : len(kept) + 1] = torch.tensor([index[c] for c in kept], dtype=torch.long)
                self._mask_residues(labels[i], r, IGNORE_INDEX)
            return labels
        if task == "token_regression":  # NaN: not scored (BOS, EOS, padding, cropped, missing, masked)
            labels = torch.full((len(records), width), float("nan"), dtype=torch.float32)
            for i, r in enumerate(records):
                kept = torch.tensor(r.label[: self.max_length], dtype=torch.float32)
                if self.missing_value is not None:
                    kept[kept == self.missing_value] = float("nan")
                labels[i, 1 : len(kept) + 1] = kept
                self._mask_residues(labels[i], r, float("nan"))
            return labels
        if task == "multiclass":
            index = self.labels.index
            return torch.tensor([r.label if isinstance(r.label, int) else index[r.label] for r in records],
                                dtype=torch.long)
        # regression ([B] or [B, K]), binary ([B] of 0/1), multilabel ([B, K])
        return torch.tensor([r.label for r in records], dtype=torch.float32)

    def _mask_residues(self, row: torch.Tensor, record: ProteinRecord, unscored: float) -> None:
        """Set the labels of residues the record's mask marks ``0`` to ``unscored`` (BOS is position 0)."""
        if record.mask is None:
            return
        off = torch.tensor([c == "0" for c in record.mask[: self.max_length]], dtype=torch.bool)
        row[1 : len(off) + 1][off] = unscored
