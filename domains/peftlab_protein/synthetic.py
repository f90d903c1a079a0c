"""A synthetic, offline protein task: find a planted motif.

Random sequences are drawn from a realistic amino-acid background (the
UniProtKB/Swiss-Prot composition) and copies of a short motif of rare residues
are planted in them. The label is then a simple, learnable function of the
sequence:

* ``binary``: 1 if the sequence carries the motif (one or two copies), else 0
  (exactly balanced: every other sequence is positive);
* ``regression``: the number of motif copies (0 to 3), as a float;
* ``token_classification``: ``"1"`` on residues inside a motif copy, ``"0"``
  elsewhere (label names ``["0", "1"]``);
* ``token_regression``: ``1.0`` on residues inside a motif copy, ``0.0``
  elsewhere, and NaN (not measured) on every 10th residue, as real per-residue
  data has gaps.

:class:`SyntheticMotifPairDataModule` pairs such sequences: a pair is positive
when both of its proteins carry the motif (a symmetric rule that needs both
sides), balanced by construction.

Generation is deterministic for a seed and independent of torch's RNG. The
background never contains the motif by chance: a sequence whose motif count
differs from the planted count is redrawn.
"""

from __future__ import annotations

import random
from typing import Any

from peftlab_protein.data import (ALLOWED_RESIDUES, ProteinDataModule, ProteinPair, ProteinPairDataModule,
                                  ProteinRecord, clean_sequence)

__all__ = ["BACKGROUND_FREQUENCIES", "DEFAULT_MOTIF", "SyntheticMotifDataModule", "SyntheticMotifPairDataModule",
           "make_synthetic_records"]

# Amino-acid composition of UniProtKB/Swiss-Prot, in percent.
BACKGROUND_FREQUENCIES: dict[str, float] = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75, "G": 7.07, "H": 2.27,
    "I": 5.96, "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70, "S": 6.56, "T": 5.34, "W": 1.08,
    "Y": 2.92, "V": 6.87,
}
DEFAULT_MOTIF = "WCMHW"  # the rarest residues (W, C, M, H): ~1e-9 chance per position in the background
SYNTHETIC_TASKS = ("binary", "regression", "token_classification", "token_regression")
UNMEASURED_EVERY = 10  # token_regression: every 10th residue has no value (NaN)
MAX_COPIES = 3


def _count(sequence: str, motif: str) -> int:
    """Occurrences of ``motif`` in ``sequence``, overlapping ones included."""
    return sum(sequence.startswith(motif, i) for i in range(len(sequence) - len(motif) + 1))


def _plant(rng: random.Random, length: int, motif: str, copies: int) -> tuple[str, list[int]]:
    """A background sequence of ``length`` residues with ``copies`` non-overlapping motif copies."""
    residues, weights = list(BACKGROUND_FREQUENCIES), list(BACKGROUND_FREQUENCIES.values())
    while True:
        seq = rng.choices(residues, weights=weights, k=length)
        # choose start positions among non-overlapping slots: pick offsets in the
        # shortened sequence, then shift each by the motifs placed before it
        free = length - copies * len(motif)
        offsets = sorted(rng.sample(range(free + 1), copies)) if copies else []
        starts = [offset + k * len(motif) for k, offset in enumerate(offsets)]
        for start in starts:
            seq[start : start + len(motif)] = motif
        text = "".join(seq)
        if _count(text, motif) == copies:
            return text, starts


def make_synthetic_records(num_sequences: int = 600, min_length: int = 30, max_length: int = 60,
                           task_type: str = "binary", motif: str = DEFAULT_MOTIF,
                           seed: int = 0) -> list[ProteinRecord]:
    """Random protein sequences with planted motif copies and a label derived from them.

    Args:
        num_sequences: how many records.
        min_length, max_length: sequence length range (inclusive), in residues.
        task_type: one of :data:`SYNTHETIC_TASKS` (see module doc).
        motif: the planted motif (amino-acid letters).
        seed: the generator seed; the same arguments give the same records.

    Returns:
        Records ``synthetic0`` ... with no split (the DataModule splits them).
    """
    if task_type not in SYNTHETIC_TASKS:
        raise ValueError(f"synthetic task_type must be one of {SYNTHETIC_TASKS}, got {task_type!r}")
    motif = clean_sequence(motif, path="<synthetic>", record_id="motif")
    if not set(motif) <= set(ALLOWED_RESIDUES[:20]):
        raise ValueError(f"motif must use the 20 standard amino acids, got {motif!r}")
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    if min_length < MAX_COPIES * len(motif):
        raise ValueError(f"min_length must fit {MAX_COPIES} motif copies ({MAX_COPIES * len(motif)} residues)")
    rng = random.Random(seed)
    records = []
    for i in range(num_sequences):
        length = rng.randint(min_length, max_length)
        if task_type == "binary":
            positive = i % 2 == 1
            copies = rng.randint(1, 2) if positive else 0
        else:
            copies = rng.randint(0, MAX_COPIES)
        sequence, starts = _plant(rng, length, motif, copies)
        if task_type == "binary":
            label: object = int(positive)
        elif task_type == "regression":
            label = float(copies)
        else:
            marks = ["0"] * length
            for start in starts:
                marks[start : start + len(motif)] = "1" * len(motif)
            label = "".join(marks)
            if task_type == "token_regression":
                label = [float("nan") if (k + 1) % UNMEASURED_EVERY == 0 else float(m) for k, m in enumerate(marks)]
        records.append(ProteinRecord(id=f"synthetic{i}", sequence=sequence, label=label))
    return records


class SyntheticMotifDataModule(ProteinDataModule):
    """The synthetic motif task (see the module doc), split with ``seeded_split``.

    ``seed`` seeds the generator as well as the split and the batch order; the
    other shared options (batch size, workers, split shares...) are
    :class:`~peftlab.data.PeftDataModule`'s.

    Args:
        num_sequences: how many sequences to generate.
        min_length: shortest sequence, in residues.
        max_length_residues: longest sequence, in residues.
        task_type: ``binary``, ``regression``, ``token_classification`` or ``token_regression``.
        motif: the planted motif (default: rare residues ``WCMHW``).
    """

    def __init__(self, num_sequences: int = 600, min_length: int = 30, max_length_residues: int = 60,
                 task_type: str = "binary", motif: str = DEFAULT_MOTIF, **kwargs: Any):
        if task_type not in SYNTHETIC_TASKS:
            raise ValueError(f"synthetic task_type must be one of {SYNTHETIC_TASKS}, got {task_type!r}")
        # generated records: ProteinDataModule's file options do not apply, so they are fixed (and not options here)
        super().__init__(path=None, labels_path=None, format="auto", sequence_column="sequence",
                         target_column="target", label_names=None, max_length=1022, unknown_residues="error",
                         task_type=task_type, **kwargs)
        self.num_sequences = num_sequences
        self.min_length = min_length
        self.max_length_residues = max_length_residues
        self.motif = motif

    @property
    def source(self) -> str:
        return f"<synthetic motif {self.motif}>"

    def read_records(self) -> list[ProteinRecord]:
        return make_synthetic_records(self.num_sequences, self.min_length, self.max_length_residues,
                                      self.task_type, self.motif, self.seed)


class SyntheticMotifPairDataModule(ProteinPairDataModule):
    """Pairs of synthetic motif sequences (see the module doc): ``num_pairs`` pairs
    of ``num_proteins`` generated proteins, half of them positive (both carry the
    motif), split by protein like real PPI data (``split_by_protein``).

    Args:
        num_proteins: proteins generated (half carry the motif).
        num_pairs: pairs drawn among them (distinct, no self pairs).
        min_length / max_length_residues / motif: as :class:`SyntheticMotifDataModule`.
    """

    def __init__(self, num_proteins: int = 120, num_pairs: int = 600, min_length: int = 30,
                 max_length_residues: int = 60, motif: str = DEFAULT_MOTIF, **kwargs: Any):
        super().__init__(path=None, pairs_path=None, **kwargs)
        if self.task_type != "binary":
            raise ValueError(f"synthetic pairs are binary (both proteins carry the motif), got {self.task_type!r}")
        if num_pairs > num_proteins * (num_proteins - 1) // 4:
            raise ValueError(f"{num_pairs} pairs are too many for {num_proteins} proteins (at most a quarter "
                             f"of all pairs, so that positives and negatives can be balanced)")
        self.num_proteins, self.num_pairs = num_proteins, num_pairs
        self.min_length, self.max_length_residues, self.motif = min_length, max_length_residues, motif

    @property
    def source(self) -> str:
        return f"<synthetic motif pairs {self.motif}>"

    def read_records(self) -> list[ProteinPair]:
        proteins = make_synthetic_records(self.num_proteins, self.min_length, self.max_length_residues, "binary",
                                          self.motif, self.seed)
        rng = random.Random(self.seed + 1)
        carriers = [p for p in proteins if p.label == 1]
        seen: set[frozenset[str]] = set()
        pairs = []
        while len(pairs) < self.num_pairs:
            positive = len(pairs) % 2 == 0
            a, b = rng.sample(carriers if positive else proteins, 2)
            if frozenset((a.id, b.id)) in seen or (not positive and a.label == b.label == 1):
                continue
            seen.add(frozenset((a.id, b.id)))
            pairs.append(ProteinPair(f"{a.id}|{b.id}", a.id, b.id, a.sequence, b.sequence, int(positive)))
        return pairs
