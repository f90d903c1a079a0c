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

import codecs
import csv
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from peftlab.errors import DataError  # noqa: F401 (re-exported: peftlab.data.DataError)

TASK_TYPES = ("binary", "multiclass", "multilabel", "regression", "token_classification")
SPLITS = ("train", "val", "test")
IGNORE_INDEX = -100  # label value that losses and metrics skip (padding, special tokens)


def _not_utf8(path: Any) -> DataError:
    """A DataError naming the line and byte of the first thing in ``path`` that is not UTF-8."""
    data = Path(path).read_bytes()
    for bom, name in ((codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
                      (codecs.BOM_UTF32_LE, "UTF-32")):
        if data.startswith(bom):
            return DataError(path, "line 1", f"{name} text (byte-order mark {bom.hex(' ').upper()}); "
                                             "save the file as UTF-8")
    body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        start = error.start
    else:  # decodable after all (should not happen): blame the file
        return DataError(path, None, "cannot be decoded as UTF-8 text")
    newline = b"\n" if b"\n" in body else b"\r"
    line = body.count(newline, 0, start) + 1
    column = start - (body.rfind(newline, 0, start) + 1) + 1
    shown = body[start : start + 4].hex(" ").upper()
    return DataError(path, f"line {line}", f"not UTF-8 text: byte(s) {shown} at column {column} cannot be "
                                           "decoded (latin-1 / binary data?); save the file as UTF-8")


@contextmanager
def open_text(path: Any, newline: str | None = None) -> Iterator[TextIO]:
    """Open a UTF-8 text file (a BOM is skipped) for reading.

    A byte sequence that is not UTF-8, met anywhere while the file is read
    inside the ``with`` block, raises :class:`DataError` naming the file, the
    line and the bytes (instead of a bare ``UnicodeDecodeError``).
    """
    with open(path, encoding="utf-8-sig", newline=newline) as f:
        try:
            yield f
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


class _CSVRows:
    """A ``csv.reader`` whose ``csv.Error`` (a field over the size limit, ...) becomes a DataError."""

    def __init__(self, path: Any, reader: Any):
        self.path, self.reader = path, reader

    def __iter__(self) -> _CSVRows:
        return self

    def __next__(self) -> list[str]:
        try:
            return next(self.reader)
        except csv.Error as error:
            raise DataError(self.path, f"line {self.reader.line_num}", f"malformed CSV: {error}") from None

    @property
    def line_num(self) -> int:
        return self.reader.line_num

    @property
    def dialect(self) -> Any:
        return self.reader.dialect


def file_exists(source: Any, record: Any, file: Path, written: str, what: str) -> bool:
    """Whether the ``what`` file (``audio``, ``image``) that ``source``'s
    ``record`` names as ``written`` exists; a name the file system cannot
    even look up (e.g. a component over 255 bytes) is a DataError, not an OSError."""
    try:
        return file.is_file()
    except OSError as error:
        shown = written if len(written) <= 80 else written[:80] + "..."
        raise DataError(source, record, f"{what} path {shown!r} is not a usable file name ({error.strerror})") from None


def csv_dict_reader(f: TextIO, path: Any) -> csv.DictReader:
    """``csv.DictReader`` over an open file (see :func:`open_text`, ``newline=""``).

    Malformed CSV (e.g. a field longer than the csv module's limit) raises
    :class:`DataError` naming the line, and so does a header that names a
    column twice (the later one would silently hide the earlier).
    """
    reader = csv.DictReader(f)
    reader.reader = _CSVRows(path, reader.reader)
    header = reader.fieldnames or []
    repeated = sorted({c for c in header if c and header.count(c) > 1})
    if repeated:
        raise DataError(path, "line 1", f"the header names column(s) {repeated} more than once")
    return reader


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


class LengthGroupedBatchSampler(BatchSampler):
    """Batches of similar length, in a random order that changes every epoch.

    Indices are shuffled, cut into windows of ``batch_size * window_batches``,
    sorted by length inside each window and cut into batches; the batches are
    then shuffled. Padding drops sharply while batches stay random. (torch has
    no such sampler; Hugging Face's ``LengthGroupedSampler`` is tied to its
    Trainer, so this small one is written here.)

    The order depends on ``seed`` and the epoch: ``epoch`` is the epoch the
    next pass uses, a counter of passes (``set_epoch`` sets it). The order is
    drawn when the pass yields its first batch, so an iterator that is made
    but never used takes no epoch. ``state_dict`` is the position in the order
    (the pass's epoch and how many of its batches were handed out);
    ``load_state_dict`` makes the next pass continue that epoch after those
    batches, which is what an exact mid-epoch resume needs (PeftDataModule
    and :class:`ResumableDataLoader` checkpoint it).

    Data-parallel runs (DDP, FSDP, DeepSpeed: ``num_replicas`` processes) shard
    the order themselves: the global batches are those a single process with
    ``batch_size * num_replicas`` would see, in the same order, and process
    ``rank`` takes its ``batch_size`` slice of each. With equal slices the
    averaged gradient is the single process's. A last, smaller global batch is
    split as evenly as possible; in training (``pad_shards``) a process left
    without an example repeats one, since every process must take each step,
    while evaluation never repeats (each example is counted once; a process
    may then have one batch fewer). ``sampler`` exists only because Lightning
    rebuilds batch samplers with one injected (when predicting, or with
    ``use_distributed_sampler``); it is ignored, as this class orders and
    shards every index itself.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0,
                 shuffle: bool = True, window_batches: int = 50, drop_last: bool = False,
                 num_replicas: int = 1, rank: int = 0, pad_shards: bool = True, sampler: Any = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas, self.rank, self.pad_shards = num_replicas, rank, pad_shards
        self.global_batch_size = batch_size * num_replicas
        self.window = self.global_batch_size * window_batches
        self.drop_last = drop_last
        self.epoch = 0
        self._skip = 0  # batches of ``epoch`` that a resumed pass leaves out
        self._pass_epoch: int | None = None  # epoch of the pass in progress (or the last one)
        self._handed_out = 0  # batches of that pass handed out, skipped ones included
        self.counted_by_loader = False  # a ResumableDataLoader counts what it delivers instead

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._skip = epoch, 0

    def batches(self, epoch: int) -> list[list[int]]:
        """The whole order of one epoch (this process's share of it)."""
        batches = self.global_batches(epoch)
        if self.num_replicas == 1:
            return batches
        return [shard for shard in map(self._shard, batches) if shard]

    def _shard(self, batch: list[int]) -> list[int]:
        """This process's slice of one global batch (see the class doc)."""
        if len(batch) == self.global_batch_size:
            return batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        size, extra = divmod(len(batch), self.num_replicas)
        start = self.rank * size + min(self.rank, extra)
        shard = batch[start : start + size + (self.rank < extra)]
        return shard or ([batch[self.rank % len(batch)]] if self.pad_shards else [])

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of one epoch, of ``batch_size * num_replicas``: the
        order of a single process with that batch size."""
        batch_size = self.global_batch_size
        rng = random.Random(self.seed * 100_003 + epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        else:
            order.sort(key=lambda i: self.lengths[i])
        batches = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start : start + self.window], key=lambda i: self.lengths[i])
            batches += [window[i : i + batch_size] for i in range(0, len(window), batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == batch_size]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def start_pass(self) -> tuple[int, int]:
        """Begin a pass: returns its epoch and the batches it skips (a resumed position)."""
        epoch, skip = self.epoch, self._skip
        self.epoch, self._skip = epoch + 1, 0  # a fresh order every epoch
        self._pass_epoch, self._handed_out = epoch, skip
        return epoch, skip

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = self.start_pass()
        for batch in self.batches(epoch)[skip:]:
            if not self.counted_by_loader:
                self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The position in the order: ``epoch`` and its ``batches_done``."""
        if self._pass_epoch is None:
            return {"epoch": self.epoch, "batches_done": self._skip}
        return {"epoch": self._pass_epoch, "batches_done": self._handed_out}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, done = int(state["epoch"]), int(state.get("batches_done", 0))
        if done >= len(self):  # that epoch is complete: the next pass starts the next one
            epoch, done = epoch + 1, 0
        self.epoch, self._skip, self._pass_epoch, self._handed_out = epoch, done, None, 0

    def __len__(self) -> int:
        # windows hold whole global batches, so only the last one can be smaller
        full, rest = divmod(len(self.lengths), self.global_batch_size)
        if rest == 0 or self.drop_last:
            return full
        return full + (1 if self.pad_shards or rest > self.rank else 0)


def position_sampler(batch_sampler: Any) -> LengthGroupedBatchSampler | None:
    """The :class:`LengthGroupedBatchSampler` that orders ``batch_sampler``:
    itself, or the one a wrapper holds (a domain's epoch-tagging wrapper,
    Lightning's index wrapper when predicting); ``None`` if there is none."""
    for _ in range(4):
        if isinstance(batch_sampler, LengthGroupedBatchSampler):
            return batch_sampler
        batch_sampler = next((getattr(batch_sampler, a) for a in ("batch_sampler", "_batch_sampler")
                              if getattr(batch_sampler, a, None) is not None), None)
    return None


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`LengthGroupedBatchSampler` (or a wrapper of
    one, see :func:`position_sampler`) whose position Lightning checkpoints
    (it has ``state_dict`` / ``load_state_dict``, so Lightning treats it as
    resumable): a run resumed from a mid-epoch checkpoint gets the rest of
    that epoch's batches, in the same order, instead of the epoch again from
    its start.

    It counts the batches it hands out (with worker processes the sampler
    runs ahead of training, so the sampler cannot count them itself), and
    seeds the generator that draws worker seeds from the seed and the epoch,
    so that making an iterator takes nothing from torch's global random state
    (a resumed run then draws the same dropout masks as an uninterrupted one).
    """

    def __iter__(self) -> Iterator[Any]:
        sampler = position_sampler(self.batch_sampler)
        if sampler is None:
            yield from super().__iter__()
            return
        sampler.counted_by_loader = True
        if self.generator is not None:
            self.generator.manual_seed(sampler.seed * 100_003 + sampler.epoch)
        for batch in super().__iter__():  # the sampler starts its pass before the first batch
            sampler._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler = position_sampler(self.batch_sampler)
        return sampler.state_dict() if sampler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = position_sampler(self.batch_sampler)
        if sampler is not None and state:
            sampler.load_state_dict(state)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for the random draws of one item in one epoch (distinct for distinct triples in practice):
    training augmentation seeded with it is the same for a (seed, epoch, item) whatever the number of
    DataLoader workers, and a run resumed mid-epoch draws what the uninterrupted run drew."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2**63 - 1)


class EpochTaggedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Wraps a batch sampler so each index travels with the epoch it is drawn in: the
    dataset gets ``(epoch, index)`` keys and can seed the item's augmentation with
    :func:`item_seed`.

    The epoch is the wrapped sampler's ``epoch`` counter (the one
    :class:`LengthGroupedBatchSampler` uses for its order and that the DataModule
    checkpoints), read before each pass. :class:`ResumableDataLoader` finds the
    wrapped sampler's position through it (see :func:`position_sampler`).
    """

    def __init__(self, batch_sampler: Any):
        self.batch_sampler = batch_sampler

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = int(getattr(self.batch_sampler, "epoch", 0))
        for batch in self.batch_sampler:
            yield [(epoch, int(i)) for i in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler)


def rebuild_loader(loader: DataLoader, *, dataset: Any | None = None, batch_sampler: Any | None = None) -> DataLoader:
    """A loader like ``loader`` with another dataset and/or batch sampler: a
    :class:`ResumableDataLoader`, as :class:`PeftDataModule` builds, so that
    Lightning checkpoints its position (the wrapped sampler's) and a run resumed
    from a mid-epoch checkpoint continues that epoch exactly."""
    workers = loader.num_workers
    return ResumableDataLoader(dataset if dataset is not None else loader.dataset,
                               batch_sampler=batch_sampler if batch_sampler is not None else loader.batch_sampler,
                               collate_fn=loader.collate_fn, num_workers=workers, pin_memory=loader.pin_memory,
                               timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                               multiprocessing_context=loader.multiprocessing_context if workers else None,
                               generator=loader.generator,
                               prefetch_factor=loader.prefetch_factor if workers else None,
                               persistent_workers=loader.persistent_workers)


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
        self._train_position: dict[str, int] | None = None

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

    #: the batch keys this module's batches give the backbone (``tokens``, ``images``, ``waveforms``);
    #: checked against the backbone's ``input_keys`` before anything runs (``None``: not declared)
    input_keys: tuple[str, ...] | None = None

    #: the training loader hands the dataset ``(epoch, index)`` keys (:class:`EpochTaggedBatchSampler`), so
    #: that a domain seeds each item's augmentation per (seed, epoch, item) with :func:`item_seed`
    tags_epochs: bool = False

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
        # keeps the position that makes resumed runs exact)
        lengths = [self.record_length(r) for r in records] if self.group_by_length else [1] * len(records)
        shards = self._data_parallel_shards()
        if not train and len(records) < shards["num_replicas"]:
            raise ValueError(f"the {split!r} split has {len(records)} example(s), fewer than the "
                             f"{shards['num_replicas']} data-parallel processes: each process needs one")
        sampler = LengthGroupedBatchSampler(lengths, self.batch_size, seed=self.seed, shuffle=train,
                                            pad_shards=train, **shards)
        if train:
            if self._train_sampler is not None:  # a new loader in the same run continues the order
                sampler.set_epoch(self._train_sampler.epoch)
            elif self._train_position is not None:  # restored from a checkpoint
                sampler.load_state_dict(self._train_position)
            self._train_sampler = sampler
        # a generator of its own: making an iterator draws worker seeds from it, not from
        # torch's global random state (which checkpoints restore for dropout)
        generator = torch.Generator().manual_seed(self.seed)
        batches = EpochTaggedBatchSampler(sampler) if train and self.tags_epochs else sampler
        return ResumableDataLoader(self.dataset(split, records), batch_sampler=batches, collate_fn=self.collate,
                                   num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                                   generator=generator)

    def _data_parallel_shards(self) -> dict[str, int]:
        """``num_replicas`` and ``rank`` of this process in a data-parallel run
        (DDP, FSDP, DeepSpeed): the sampler shards every global batch itself,
        since Lightning cannot put a DistributedSampler into a batch sampler."""
        trainer = getattr(self, "trainer", None)
        kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
        if not kwargs:
            return {"num_replicas": 1, "rank": 0}
        return {"num_replicas": int(kwargs["num_replicas"]), "rank": int(kwargs["rank"])}

    # Lightning saves a DataModule's state_dict in checkpoints: the position in the
    # training order goes there (the loader's own state holds it too), so a resumed
    # run continues the order, from the middle of an epoch if need be.
    def state_dict(self) -> dict[str, Any]:
        sampler = self._train_sampler
        position = sampler.state_dict() if sampler is not None else self._train_position
        return {"train_position": position or {"epoch": 0, "batches_done": 0}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "train_position" in state:
            self._train_position = {k: int(v) for k, v in state["train_position"].items()}
        else:  # checkpoints before the position was saved: the next epoch's number
            self._train_position = {"epoch": int(state.get("train_epochs_done", 0)), "batches_done": 0}
        self._train_sampler = None  # the next train loader starts from the restored position

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
