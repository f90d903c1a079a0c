"""The common DataModule base.

A domain DataModule implements three things: :meth:`PeftDataModule.load_data`
(the records of each split and the label vocabulary, see
:mod:`peftlab.data.labels`), ``collate`` (records -> the batch dict its
backbone reads, plus ``labels`` and ``ids``) and ``record_length`` (to group
similar lengths into one batch). Everything the model needs to know about the
task (``task_type``, ``num_outputs``, ``label_names``) is read from it, so the
CLI links it into the model instead of asking the user to type it twice.

Options shared by every data module (batch size, workers, seed, splits) are
declared once, here: a subclass takes its own options and passes the rest on
with ``**kwargs``, which jsonargparse resolves from this signature for
``--help``, YAML and the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from peftlab.data.labels import LabelVocabulary
from peftlab.data.sampling import EpochTaggedBatchSampler, LengthGroupedBatchSampler, ResumableDataLoader
from peftlab.data.splits import SPLITS
from peftlab.tasks import check_task_type


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, records: Sequence[Any]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Any:
        return self.records[i]


@dataclass
class LoadedData:
    """What :meth:`PeftDataModule.load_data` returns: the records of each split and the label vocabulary."""

    splits: dict[str, list[Any]]
    labels: LabelVocabulary


class PeftDataModule(L.LightningDataModule):
    """Base DataModule for every domain.

    Args:
        task_type: one of :data:`peftlab.tasks.TASK_TYPES` (``binary``,
            ``multiclass``, ``multilabel``, ``regression``, ``token_classification``,
            ``token_regression``).
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
        self._loaded: LoadedData | None = None
        self._train_sampler: LengthGroupedBatchSampler | None = None
        self._train_position: dict[str, int] | None = None

    # ---- what a domain implements -------------------------------------------------
    def load_data(self) -> LoadedData:
        """Read the data: the records of ``train``, ``val`` and ``test`` and the label
        vocabulary (built once from all records, :mod:`peftlab.data.labels`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_data")

    def collate(self, records: list[Any]) -> dict[str, Any]:
        """Turn records into a batch dict with the backbone inputs, ``labels`` and ``ids``."""
        raise NotImplementedError

    def record_length(self, record: Any) -> int:
        return 1

    def sampler_options(self) -> dict[str, Any]:
        """Further :class:`LengthGroupedBatchSampler` options of this module's batches (e.g. a
        token budget: ``max_tokens``, ``extra_tokens``)."""
        return {}

    def dataset(self, split: str, records: list[Any]) -> torch.utils.data.Dataset:
        """The Dataset for one split's records (override to decode files or apply
        transforms per item, e.g. MONAI datasets; ``collate`` then gets its items)."""
        return _ListDataset(records)

    #: the batch keys this module's batches give the backbone (``tokens``, ``images``, ``waveforms``);
    #: checked against the backbone's ``input_keys`` before anything runs (``None``: not declared)
    input_keys: tuple[str, ...] | None = None

    #: each example is a pair of inputs (linked into the model's ``pairs``): batches hold the first
    #: sides' rows, then the second sides', and ``labels`` / ``ids`` once per pair
    pairs: bool = False

    #: the training loader hands the dataset ``(epoch, index)`` keys (:class:`EpochTaggedBatchSampler`), so
    #: that a domain seeds each item's augmentation per (seed, epoch, item) with :func:`item_seed`
    tags_epochs: bool = False

    @property
    def loaded(self) -> LoadedData:
        """The data, read once (:meth:`load_data`), its splits checked."""
        if self._loaded is None:
            data = self.load_data()
            missing = [s for s in SPLITS if s not in data.splits]
            if missing:
                raise ValueError(f"{type(self).__name__}.load_data returned no {missing} split(s)")
            self._loaded = LoadedData({s: list(data.splits[s]) for s in SPLITS}, data.labels)
        return self._loaded

    @property
    def splits(self) -> dict[str, list[Any]]:
        return self.loaded.splits

    @property
    def labels(self) -> LabelVocabulary:
        """The label vocabulary (reading the data fixes it)."""
        return self.loaded.labels

    @property
    def num_outputs(self) -> int:
        """Outputs of the task head: 1 for binary/regression, classes or labels otherwise."""
        return self.labels.num_outputs

    @property
    def label_names(self) -> list[str] | None:
        """Class (or label) names in output order, when the data has them."""
        names = self.labels.names
        return None if names is None else list(names)

    def setup(self, stage: str | None = None) -> None:
        self.splits  # read once, early, so that bad input fails before training starts

    def _loader(self, split: str, train: bool, records: list[Any] | None = None) -> DataLoader:
        """The loader of ``split`` (or of ``records`` given under that name, e.g. audio to transcribe)."""
        records = self.splits[split] if records is None else records
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
                                            pad_shards=train, **shards, **self.sampler_options())
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

    def data_source(self) -> str:
        """Where the examples come from, for run summaries and metric files: the data path the module
        reads, else ``built in (synthetic)`` (the modules that generate their data)."""
        path = getattr(self, "path", None)
        return str(path) if path else "built in (synthetic)"
