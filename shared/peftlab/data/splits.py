"""Splits: the one table of split names every reader accepts, and the seeded
split of records that name none (or only some) of them."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from peftlab.errors import DataError

SPLITS = ("train", "val", "test")
#: how data files name the splits (case-insensitive) -> peftlab's name
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}


def split_name(value: str, source: Any, record: Any) -> str:
    """peftlab's name for a split as a data file writes it (:data:`SPLIT_NAMES`);
    anything else is a :class:`DataError` naming the file and the record."""
    name = SPLIT_NAMES.get(value.strip().lower())
    if name is None:
        raise DataError(source, record, f"unknown split {value!r}; expected one of {', '.join(sorted(SPLIT_NAMES))}")
    return name


def seeded_split(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Indices of a reproducible random train/val/test split of ``n`` items."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"split fractions must be in [0, 1) and sum below 1, got val={val_fraction} test={test_fraction}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test : n_test + n_val]),
        "train": sorted(order[n_test + n_val :]),
    }

def assign_splits(records: Sequence[Any], val_fraction: float, test_fraction: float, seed: int,
                  source: Any) -> dict[str, list[Any]]:
    """Group records (with ``id`` and ``split`` attributes) into train / val / test.

    With no split marks at all, a seeded random split; a split that nobody is
    marked for (often val) is carved out of train with its fraction. Some
    records marked and others not is an error naming the first unmarked one.
    """
    marked = [r for r in records if r.split is not None]
    if not marked:
        idx = seeded_split(len(records), val_fraction, test_fraction, seed)
        return {s: [records[i] for i in idx[s]] for s in SPLITS}
    if len(marked) != len(records):
        first = next(r for r in records if r.split is None)
        raise DataError(source, first.id, "has no split (set / split value), while other records have one")
    splits = {s: [r for r in records if r.split == s] for s in SPLITS}
    carve_val = 0.0 if splits["val"] else val_fraction
    carve_test = 0.0 if splits["test"] else test_fraction
    if carve_val or carve_test:
        train = splits["train"]
        idx = seeded_split(len(train), carve_val, carve_test, seed)
        splits = {"train": [train[i] for i in idx["train"]],
                  "val": splits["val"] or [train[i] for i in idx["val"]],
                  "test": splits["test"] or [train[i] for i in idx["test"]]}
    return splits
