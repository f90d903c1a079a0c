"""Batches: length-grouped, seeded, resumable mid-epoch, sharded across
data-parallel processes, and tagged with their epoch for per-item augmentation."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, Sampler


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

    Token budget (``max_tokens``): a process's batch also stays within
    ``max_tokens`` padded tokens, i.e. its size times its longest
    ``length + extra_tokens`` (``extra_tokens``: what each example adds to its
    length once collated, e.g. BOS and EOS); short examples still fill a batch
    up to ``batch_size``. An example longer than the budget forms a batch on
    its own (one per process), so nothing is dropped. Global batches are then
    cut from each sorted window in rows of ``num_replicas`` examples, so every
    process takes the same number of examples from a global batch (the
    averaged gradient stays the single process's) and a process's slice is
    within the budget; a window's unfinished batch moves on to the next
    window, so only an epoch's last batch can be smaller. The batches are
    drawn once from ``seed`` and only their order changes with the epoch (as
    fairseq's ``batch_by_size``): Lightning counts an epoch's batches once, so
    every epoch must have as many. ``drop_last`` does not apply to it.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0,
                 shuffle: bool = True, window_batches: int = 50, drop_last: bool = False,
                 num_replicas: int = 1, rank: int = 0, pad_shards: bool = True, sampler: Any = None,
                 max_tokens: int | None = None, extra_tokens: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (or None for no token budget), got {max_tokens}")
        if max_tokens is not None and drop_last:
            raise ValueError("drop_last does not apply with max_tokens (batches of a token budget vary in size)")
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
        self.max_tokens, self.extra_tokens = max_tokens, extra_tokens
        self._budget_cache: list[list[int]] | None = None
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
        order of a single process with that batch size (with ``max_tokens``: see the class doc)."""
        if self.max_tokens is not None:
            batches = [list(b) for b in self._budget_batches()]
            if self.shuffle:
                random.Random(self.seed * 100_003 + epoch).shuffle(batches)
            return batches
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

    def _budget_batches(self) -> list[list[int]]:
        """The global batches of a token budget, drawn once from the seed (their order is the epoch's)."""
        if self._budget_cache is None:
            order = list(range(len(self.lengths)))
            if self.shuffle:
                random.Random(self.seed * 100_003 - 1).shuffle(order)
            else:
                order.sort(key=lambda i: self.lengths[i])
            batches: list[list[int]] = []
            unfinished: list[int] = []
            for start in range(0, len(order), self.window):
                window = sorted(unfinished + order[start : start + self.window], key=lambda i: self.lengths[i])
                *done, unfinished = self._cut_by_budget(window)
                batches += done
            self._budget_cache = batches + ([unfinished] if unfinished else [])
        return self._budget_cache

    def _cut_by_budget(self, window: list[int]) -> list[list[int]]:
        """Cut a window sorted by length into global batches, in rows of ``num_replicas`` examples: at most
        ``batch_size`` rows, and rows x longest length within ``max_tokens`` (a first row always fits)."""
        batches: list[list[int]] = [[]]
        rows = 0
        for start in range(0, len(window), self.num_replicas):  # a row: one example per process
            row = window[start : start + self.num_replicas]
            longest = self.lengths[row[-1]] + self.extra_tokens  # sorted: the row's last is the batch's longest
            if rows and (rows + 1 > self.batch_size or (rows + 1) * longest > self.max_tokens):
                batches.append([])
                rows = 0
            batches[-1] += row
            rows += 1
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
        if self.max_tokens is not None:  # the same batches every epoch, in another order
            return sum(1 for b in self._budget_batches() if self.pad_shards or len(b) > self.rank)
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
