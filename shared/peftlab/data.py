"""The common DataModule base, split logic and length-grouped batching.

A domain DataModule subclasses :class:`PeftDataModule` and implements three
things: ``load_splits`` (records per split), ``collate`` (records -> batch dict
that the domain's backbone understands, plus ``labels`` and ``ids``) and
``record_length`` (used to group similar lengths into one batch).

Everything the model needs to know about the task (``task_type``,
``num_outputs``, ``label_names``) is read from the DataModule, so the CLI links
it into the model instead of asking the user to type it twice.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

TASK_TYPES = ("binary", "multiclass", "multilabel", "regression", "token_classification")
SPLITS = ("train", "val", "test")
IGNORE_INDEX = -100  # label value that losses and metrics skip (padding, special tokens)


class DataError(ValueError):
    """Bad input data: the message names the file, the record and what is wrong."""

    def __init__(self, path: Any, record: Any, problem: str):
        self.path, self.record, self.problem = str(path), record, problem
        where = f"{path}" if record is None else f"{path}, record {record}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # so the error survives DataLoader workers (they pickle exceptions)
        return type(self), (self.path, self.record, self.problem)


def check_task_type(task_type: str) -> str:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task_type {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
    return task_type


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


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length, in a random order that changes every epoch.

    Indices are shuffled, cut into windows of ``batch_size * window_batches``,
    sorted by length inside each window and cut into batches; the batches are
    then shuffled. Padding drops sharply while batches stay random. (torch has
    no such sampler; Hugging Face's ``LengthGroupedSampler`` is tied to its
    Trainer, so this small one is written here.)

    The order depends on ``seed`` and the epoch: a counter of iterations
    (``set_epoch`` sets it; PeftDataModule checkpoints it, so that a resumed
    run sees the same batches as an uninterrupted one).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0,
                 shuffle: bool = True, window_batches: int = 50, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.window = batch_size * window_batches
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        self.epoch += 1  # a fresh order every epoch
        rng = random.Random(self.seed * 100_003 + epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        else:
            order.sort(key=lambda i: self.lengths[i])
        batches = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start : start + self.window], key=lambda i: self.lengths[i])
            batches += [window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        if self.drop_last:
            # windows are cut separately, so count per window
            full, rest = divmod(len(self.lengths), self.window)
            return full * (self.window // self.batch_size) + rest // self.batch_size
        full, rest = divmod(len(self.lengths), self.window)
        return full * math.ceil(self.window / self.batch_size) + math.ceil(rest / self.batch_size)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, records: Sequence[Any]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Any:
        return self.records[i]


class PeftDataModule(L.LightningDataModule):
    """Base DataModule for every domain.

    Args:
        task_type: one of ``binary``, ``multiclass``, ``multilabel``,
            ``regression``, ``token_classification``.
        batch_size: examples per batch.
        num_workers: DataLoader worker processes.
        seed: seed for generated splits and batch order.
        group_by_length: batch similar lengths together (less padding).
        val_fraction / test_fraction: used only when the data names no splits.
        predict_split: which split ``predict`` runs on.
    """

    def __init__(self, task_type: str = "regression", batch_size: int = 16, num_workers: int = 0,
                 seed: int = 0, group_by_length: bool = True, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, predict_split: str = "test"):
        super().__init__()
        self.task_type = check_task_type(task_type)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.group_by_length = group_by_length
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        if predict_split not in SPLITS:
            raise ValueError(f"predict_split must be one of {SPLITS}, got {predict_split!r}")
        self.predict_split = predict_split
        self._splits: dict[str, list[Any]] | None = None
        self._train_sampler: LengthGroupedBatchSampler | None = None
        self._train_epochs_done = 0

    # ---- what a domain implements -------------------------------------------------
    def load_splits(self) -> dict[str, list[Any]]:
        """Read the data and return ``{"train": [...], "val": [...], "test": [...]}``."""
        raise NotImplementedError

    def collate(self, records: list[Any]) -> dict[str, Any]:
        """Turn records into a batch dict with the backbone inputs, ``labels`` and ``ids``."""
        raise NotImplementedError

    def record_length(self, record: Any) -> int:
        return 1

    def dataset(self, split: str, records: list[Any]) -> torch.utils.data.Dataset:
        """The Dataset for one split's records (override to decode files or apply
        transforms per item, e.g. MONAI datasets; ``collate`` then gets its items)."""
        return _ListDataset(records)

    # ``load_splits`` sets these while reading (the label vocabulary comes from the data)
    _num_outputs: int | None = None
    _label_names: list[str] | None = None

    @property
    def num_outputs(self) -> int:
        """Outputs of the task head: 1 for binary/regression, classes or labels otherwise."""
        if self._num_outputs is None:
            self.splits  # reading the data fixes the labels
        if self._num_outputs is None:
            raise NotImplementedError(f"{type(self).__name__}.load_splits must set _num_outputs")
        return self._num_outputs

    @property
    def label_names(self) -> list[str] | None:
        """Class (or label) names in output order, when the data has them."""
        if self._num_outputs is None:
            self.splits
        return None if self._label_names is None else list(self._label_names)

    # ---- shared behaviour ----------------------------------------------------------
    @property
    def splits(self) -> dict[str, list[Any]]:
        if self._splits is None:
            splits = self.load_splits()
            missing = [s for s in SPLITS if s not in splits]
            if missing:
                raise ValueError(f"{type(self).__name__}.load_splits returned no {missing} split(s)")
            self._splits = {s: list(splits[s]) for s in SPLITS}
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        self.splits  # read once, early, so that bad input fails before training starts

    def _loader(self, split: str, train: bool) -> DataLoader:
        records = self.splits[split]
        if not records:
            raise ValueError(f"the {split!r} split is empty")
        # equal lengths when not grouping: the sampler then only shuffles (and still
        # keeps the epoch counter that makes resumed runs exact)
        lengths = [self.record_length(r) for r in records] if self.group_by_length else [1] * len(records)
        sampler = LengthGroupedBatchSampler(lengths, self.batch_size, seed=self.seed, shuffle=train)
        if train:
            sampler.epoch = self._train_epochs_done
            self._train_sampler = sampler
        return DataLoader(self.dataset(split, records), batch_sampler=sampler, collate_fn=self.collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    # Lightning saves a DataModule's state_dict in checkpoints: the training
    # order's epoch counter goes there, so a resumed run continues the order.
    def state_dict(self) -> dict[str, Any]:
        sampler = self._train_sampler
        return {"train_epochs_done": sampler.epoch if sampler is not None else self._train_epochs_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._train_epochs_done = int(state.get("train_epochs_done", 0))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, train=False)

    def split_sizes(self) -> dict[str, int]:
        return {s: len(r) for s, r in self.splits.items()}
