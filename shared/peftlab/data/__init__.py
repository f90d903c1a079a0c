"""Data: the common DataModule base and what every domain's readers share.

    io        UTF-8 text and CSV reading with errors that name file and line
    splits    the split-name table, seeded splits
    labels    the label vocabulary (one builder per kind of task, returning it)
    manifest  the row checks of CSV manifests (ragged rows, empty cells, missing files, duplicate ids)
    sampling  length-grouped, resumable, data-parallel batches
    module    PeftDataModule, the base every domain DataModule extends

Every name that lived in the former ``peftlab.data`` module is importable from here.
"""

from peftlab.data.io import csv_dict_reader, file_exists, open_text
from peftlab.data.labels import LabelVocabulary, class_vocabulary, output_vocabulary
from peftlab.data.manifest import UniqueIds, existing_file, listed_file, manifest_rows, required_cell
from peftlab.data.module import LoadedData, PeftDataModule
from peftlab.data.sampling import (EpochTaggedBatchSampler, LengthGroupedBatchSampler, ResumableDataLoader,
                                   item_seed, position_sampler, rebuild_loader)
from peftlab.data.splits import SPLIT_NAMES, SPLITS, assign_splits, seeded_split, split_name
from peftlab.errors import DataError
from peftlab.tasks import IGNORE_INDEX, TASK_TYPES, check_task_type

__all__ = ["DataError", "EpochTaggedBatchSampler", "IGNORE_INDEX", "LabelVocabulary", "LengthGroupedBatchSampler",
           "LoadedData", "PeftDataModule", "ResumableDataLoader", "SPLITS", "SPLIT_NAMES", "TASK_TYPES", "UniqueIds",
           "assign_splits", "check_task_type", "class_vocabulary", "csv_dict_reader", "existing_file", "file_exists",
           "item_seed", "listed_file", "manifest_rows", "open_text", "output_vocabulary", "position_sampler",
           "rebuild_loader", "required_cell", "seeded_split", "split_name"]
