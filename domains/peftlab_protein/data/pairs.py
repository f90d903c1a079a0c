"""Protein pairs (protein-protein interaction): the reader, a split that keeps
test proteins out of training, and the pair DataModule.

The pairs file is D-SCRIPT's (and Bernett et al.'s gold standard's) layout: one
pair per line, ``idA idB label`` separated by tabs, commas or spaces, no
header (a first line whose third cell is ``label`` is skipped); the sequences
come from a FASTA holding every id. Both proteins go through the same adapted
backbone; the head combines their pooled embeddings
(:class:`peftlab.model.heads.PairCombination`).

Random pair splits leak: a protein of a test pair usually sits in training pairs
too, and models learn which proteins interact often rather than how (Park &
Marcotte 2012; Bernett et al. 2024). ``split_by_protein`` (the default) assigns
whole proteins to train, validation or test and keeps only pairs whose two
proteins fall in the same part; the pairs in between are dropped and counted.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from peftlab.data import SPLITS, DataError, LabelVocabulary, LoadedData, assign_splits, existing_file, open_text
from peftlab_protein.data.base import ProteinDataModule
from peftlab_protein.data.fasta import read_fasta_entries
from peftlab_protein.data.records import ASCII_WHITESPACE, PathLike, clean_sequence, parse_label

PAIR_TASK_TYPES = ("binary", "regression")
DUPLICATE_PAIR_POLICIES = ("error", "drop")
_SEPARATORS = re.compile(r"[\t, ]+")


@dataclass
class ProteinPair:
    """One pair example: ``id`` is ``"<protein_a>|<protein_b>"``."""

    id: str
    protein_a: str
    protein_b: str
    sequence_a: str
    sequence_b: str
    label: Any
    split: str | None = None


def _pair_lines(path: PathLike):
    """``(line number, [idA, idB, label])`` for every pair line."""
    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            line = line.strip(ASCII_WHITESPACE)
            if not line or line.startswith("#"):
                continue
            cells = _SEPARATORS.split(line)
            if n == 1 and len(cells) == 3 and cells[2].lower() == "label":
                continue  # a header line
            if len(cells) != 3:
                raise DataError(path, f"line {n}", f"expected 'idA idB label', got {len(cells)} cell(s): {line[:80]!r}")
            yield n, cells


def read_pairs(pairs_path: PathLike, fasta_path: PathLike, *, task_type: str = "binary",
               unknown_residues: str = "error", allow_self_pairs: bool = False,
               duplicate_pairs: str = "error") -> list[ProteinPair]:
    """The pairs of ``pairs_path`` with their sequences from ``fasta_path``.

    ``duplicate_pairs``: ``"error"``, or ``"drop"``: leave out every copy of a pair
    given more than once (in either order; D-SCRIPT's yeast file repeats 32 pairs,
    4 of them with the other label, so no copy is more right than another).

    Raises:
        DataError: naming the file and line: an id that is not in the FASTA, a
            protein paired with itself (unless ``allow_self_pairs``), a pair given
            twice (in either order; unless dropped), a bad label; and the FASTA's own errors.
    """
    if duplicate_pairs not in DUPLICATE_PAIR_POLICIES:
        raise ValueError(f"duplicate_pairs must be one of {DUPLICATE_PAIR_POLICIES}, got {duplicate_pairs!r}")
    if task_type not in PAIR_TASK_TYPES:
        raise ValueError(f"pair task_type must be one of {PAIR_TASK_TYPES}, got {task_type!r}")
    pairs_path, fasta_path = existing_file(pairs_path), existing_file(fasta_path)
    raw_sequences = {e.id: e.body for e in read_fasta_entries(fasta_path)}
    sequences: dict[str, str] = {}  # cleaned once per protein, when a pair first needs it
    seen: dict[frozenset[str], int] = {}  # pair -> the line it is first on
    repeated: dict[frozenset[str], bool] = {}
    pairs = []
    for n, (a, b, raw_label) in _pair_lines(pairs_path):
        where = f"line {n} ({a}, {b})"
        for pid in (a, b):
            if pid not in raw_sequences:
                raise DataError(pairs_path, where, f"protein {pid!r} is not in {fasta_path}")
            if pid not in sequences:
                sequences[pid] = clean_sequence(raw_sequences[pid], path=fasta_path, record_id=pid,
                                                unknown_residues=unknown_residues)
        if a == b and not allow_self_pairs:
            raise DataError(pairs_path, where, "a protein paired with itself (set allow_self_pairs: true for "
                                               "homo-oligomer data)")
        key = frozenset((a, b))
        if key in seen and duplicate_pairs == "error":
            raise DataError(pairs_path, where, f"the pair is given twice (first on line {seen[key]}, either "
                                               f"order); set duplicate_pairs: drop to leave out repeated pairs")
        repeated[key] = key in seen
        seen.setdefault(key, n)
        pairs.append(ProteinPair(id=f"{a}|{b}", protein_a=a, protein_b=b, sequence_a=sequences[a],
                                 sequence_b=sequences[b], label=parse_label([raw_label], task_type, pairs_path, where)))
    pairs = [p for p in pairs if not repeated[frozenset((p.protein_a, p.protein_b))]]
    if not pairs:
        raise DataError(pairs_path, None, "no pairs found")
    return pairs


def split_by_protein(pairs: Sequence[ProteinPair], val_fraction: float, test_fraction: float,
                     seed: int) -> tuple[dict[str, list[ProteinPair]], int]:
    """Train / val / test pairs whose proteins never cross parts, and how many pairs were dropped.

    Proteins (sorted, then shuffled with ``seed``) go to test with share
    ``sqrt(test_fraction)`` and to validation with share ``sqrt(val_fraction)``,
    so that about ``test_fraction`` / ``val_fraction`` of the pairs keep both
    proteins in test / validation; a pair with its proteins in two parts is dropped.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1:
        raise ValueError(f"split fractions must be in [0, 1), got val={val_fraction} test={test_fraction}")
    proteins = sorted({p for pair in pairs for p in (pair.protein_a, pair.protein_b)})
    random.Random(seed).shuffle(proteins)
    n_test, n_val = round(len(proteins) * math.sqrt(test_fraction)), round(len(proteins) * math.sqrt(val_fraction))
    if n_test + n_val >= len(proteins):
        raise ValueError(f"{len(proteins)} proteins are too few to split by protein with val={val_fraction}, "
                         f"test={test_fraction}")
    part = {p: "test" for p in proteins[:n_test]}
    part.update({p: "val" for p in proteins[n_test:n_test + n_val]})
    splits: dict[str, list[ProteinPair]] = {s: [] for s in SPLITS}
    dropped = 0
    for pair in pairs:
        a, b = part.get(pair.protein_a, "train"), part.get(pair.protein_b, "train")
        if a == b:
            splits[a].append(pair)
        else:
            dropped += 1
    return splits, dropped


class ProteinPairDataModule(ProteinDataModule):
    """Protein pairs (PPI) for a pair head: both sequences through the same adapted ESM-2.

    Args:
        path: the FASTA with every protein of the pairs file.
        pairs_path: the pairs file (``idA idB label`` per line, see the module doc).
        split_by_protein: split proteins, not pairs (see :func:`split_by_protein`);
            ``False``: a seeded random split of the pairs.
        allow_self_pairs: accept a protein paired with itself (homo-oligomers).
        duplicate_pairs: ``error``, or ``drop`` every copy of a pair given more than once
            (see :func:`read_pairs`).
        max_pairs: read at most this many pairs, a seeded sample (CPU runs); ``None``: all.

    Batches: ``tokens`` ``[2B, T]`` (the B first proteins, then the B second ones,
    padded to the longest of all), ``labels`` ``[B]`` and ``ids`` once per pair.
    ``max_tokens`` budgets both sides together. ``task_type``: ``binary``
    (interaction) or ``regression`` (e.g. affinity). Other options: see
    :class:`~peftlab_protein.data.ProteinDataModule` (``labels_path``,
    ``mask_path`` and ``test_path`` do not apply to pairs).
    """

    pairs = True

    def __init__(self, path: str | None = None, pairs_path: str | None = None, *, task_type: str = "binary",
                 split_by_protein: bool = True, allow_self_pairs: bool = False, duplicate_pairs: str = "error",
                 max_pairs: int | None = None, **kwargs: Any):
        super().__init__(path, task_type=task_type, **kwargs)
        if self.task_type not in PAIR_TASK_TYPES:
            raise ValueError(f"pair task_type must be one of {PAIR_TASK_TYPES}, got {self.task_type!r}")
        self.pairs_path, self.split_by_protein = pairs_path, split_by_protein
        self.allow_self_pairs, self.max_pairs = allow_self_pairs, max_pairs
        if duplicate_pairs not in DUPLICATE_PAIR_POLICIES:
            raise ValueError(f"duplicate_pairs must be one of {DUPLICATE_PAIR_POLICIES}, got {duplicate_pairs!r}")
        self.duplicate_pairs = duplicate_pairs
        unused = [n for n in ("labels_path", "mask_path", "test_path", "test_labels_path") if getattr(self, n)]
        if unused:
            raise ValueError(f"{', '.join(unused)} do(es) not apply to pairs: the pairs file holds the labels")
        self.dropped_pairs = 0

    @property
    def source(self) -> str:
        return str(self.pairs_path)

    def read_records(self) -> list[ProteinPair]:
        if self.path is None or self.pairs_path is None:
            raise ValueError(f"{type(self).__name__} needs the sequences FASTA (--data.path) and the pairs file "
                             f"(--data.pairs_path)")
        pairs = read_pairs(self.pairs_path, self.path, task_type=self.task_type,
                           unknown_residues=self.unknown_residues, allow_self_pairs=self.allow_self_pairs,
                           duplicate_pairs=self.duplicate_pairs)
        if self.max_pairs is not None and self.max_pairs < len(pairs):
            keep = sorted(random.Random(self.seed).sample(range(len(pairs)), self.max_pairs))
            pairs = [pairs[i] for i in keep]
        return pairs

    def load_data(self) -> LoadedData:
        pairs = self.read_records()
        if self.split_by_protein:
            splits, self.dropped_pairs = split_by_protein(pairs, self.val_fraction, self.test_fraction, self.seed)
        else:
            splits = assign_splits(pairs, self.val_fraction, self.test_fraction, self.seed, self.source)
        return LoadedData(splits, LabelVocabulary(num_outputs=1, names=self.given_label_names))

    def record_length(self, record: ProteinPair) -> int:
        return min(max(len(record.sequence_a), len(record.sequence_b)), self.max_length)

    def sampler_options(self) -> dict[str, Any]:
        """The token budget covers both sides of each pair: half of it per row of pairs."""
        return {} if self.max_tokens is None else {"max_tokens": max(1, self.max_tokens // 2), "extra_tokens": 2}

    def collate(self, records: list[ProteinPair]) -> dict[str, Any]:
        if not records:
            raise ValueError("collate got an empty batch")
        tokens = self.tokenize([r.sequence_a for r in records] + [r.sequence_b for r in records])
        labels = torch.tensor([r.label for r in records], dtype=torch.float32)
        return {"tokens": tokens, "labels": labels, "ids": [r.id for r in records]}
