"""Images listed in a CSV manifest: ``path,label`` (paths relative to the CSV's
folder), or one 0/1 column per label for multi-label tasks, with an optional
``split`` column. The row checks (file, header, ragged rows, empty cells,
duplicated ids) are the shared ones of :mod:`peftlab.data.manifest`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab.data import (DataError, LabelVocabulary, UniqueIds, file_exists, manifest_rows, required_cell,
                          split_name)
from peftlab_medical.data.base import ImageRecord, MedicalImageDataModule, infer_task_type
from peftlab_medical.data.transforms import IMAGE_SUFFIXES, PathLike, image_format


@dataclass
class ManifestRow:
    """One checked row of an image manifest (see :func:`read_image_csv`)."""

    row: str  # "row{N}", 1-based data row
    id: str
    image: Path
    labels: list[str]
    split: str | None


def _manifest_rows(path: PathLike, required: Sequence[str]) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    """:func:`peftlab.data.manifest_rows`, a ragged row's problem led by the words this
    reader has always used for it ("the row's number of fields differs from the header's")."""
    try:
        return manifest_rows(path, required)
    except DataError as error:
        if error.problem.endswith("fields than the header has columns") and "number of fields" not in error.problem:
            raise DataError(error.path, error.record, "the row's number of fields differs from the header's "
                                                      f"({error.problem})") from None
        raise


def _image_file(path: Path, where: str, base: Path, cell: str, image_suffix: str) -> Path:
    """The image file a row names: of a supported type, and there."""
    image = base / (cell + image_suffix)
    if image_format(image) is None:
        raise DataError(path, where, f"image file {image} has an unsupported type; expected one of "
                                     f"{', '.join(IMAGE_SUFFIXES)}")
    if not file_exists(path, where, image, cell, "image"):
        raise DataError(path, where, f"image file {image} does not exist")
    return image


def read_image_csv(path: PathLike, *, image_column: str = "path", label_columns: Sequence[str] = ("label",),
                   split_column: str | None = "split", id_column: str | None = None,
                   image_root: str | None = None, image_suffix: str = "") -> list[ManifestRow]:
    """Rows of an image manifest, with resolved and checked image paths.

    Image paths are ``image_root / (cell + image_suffix)``; relative paths (and
    a relative ``image_root``) are relative to the CSV's folder. A split column
    is used when the header has it (split names as :data:`peftlab.data.SPLIT_NAMES`
    has them: train/val/test, also valid/validation/dev ...).

    Raises:
        DataError: missing file or columns, an empty cell, an unknown split, an
            image file that does not exist or has an unsupported type, a duplicated id.
    """
    path = Path(path)
    header, table = _manifest_rows(path, [image_column, *label_columns] + ([id_column] if id_column else []))
    base = path.parent if image_root is None else path.parent / image_root
    has_split = split_column is not None and split_column in header
    ids = UniqueIds(path)
    rows: list[ManifestRow] = []
    for where, row in table:
        cell = required_cell(row, image_column, path, where)
        labels = [required_cell(row, c, path, where, what=f"cell (missing label in column {c!r})")
                  for c in label_columns]
        image = _image_file(path, where, base, cell, image_suffix)
        record_id = ids.add(required_cell(row, id_column, path, where) if id_column else cell, where)
        split = split_name(row[split_column], path, where) if has_split else None  # type: ignore[index]
        rows.append(ManifestRow(where, record_id, image, labels, split))
    return rows


def _binary_value(text: str, path: PathLike, record: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        raise DataError(path, record, f"multilabel column {column!r} must hold 0 or 1, got {text!r}")
    return value


class ImageCSVDataModule(MedicalImageDataModule):
    """Images listed in a CSV manifest (PNG, JPEG, DICOM, NIfTI files).

    Args:
        path: the CSV file, e.g. ``path,label`` / ``img/a.png,pneumonia``.
        image_column: column holding the image path (relative to the CSV's folder,
            or to ``image_root``).
        label_column: column holding the class name (binary, multiclass).
        label_columns: one 0/1 column per label: a multilabel task (the label
            names default to these column names). Replaces ``label_column``.
        split_column: column with train/val/test; used when the header has it,
            else the rows are split with ``seeded_split``. A split with no rows
            (e.g. no val rows) is carved out of train.
        id_column: column holding the record id; default: the image cell.
        image_root: folder the image paths are relative to (relative to the
            CSV's folder); default: the CSV's folder.
        image_suffix: appended to every image cell (``".jpg"`` for HAM10000's
            ``image_id`` column).
        task_type: ``binary``, ``multiclass`` or ``multilabel``; ``None`` infers it
            (``label_columns`` -> multilabel, 2 classes -> binary, else multiclass).

    The other options: see :class:`MedicalImageDataModule` (``label_names``:
    the class list and its order, binary ``[negative, positive]``; default the
    labels seen, sorted, numerically when all are integers; a label outside a
    given list is a DataError) and :class:`peftlab.data.PeftDataModule`.
    """

    def __init__(self, path: str, image_column: str = "path", label_column: str = "label",
                 label_columns: list[str] | None = None, split_column: str | None = "split",
                 id_column: str | None = None, image_root: str | None = None, image_suffix: str = "",
                 task_type: str | None = None, **kwargs: Any):
        if label_columns is not None and not label_columns:
            raise ValueError("label_columns must name at least one column (or be None)")
        if task_type == "multilabel" and label_columns is None:
            raise ValueError("a multilabel manifest needs label_columns (one 0/1 column per label)")
        if label_columns is not None and task_type not in (None, "multilabel"):
            raise ValueError(f"label_columns give a multilabel task, but task_type is {task_type!r}")
        columns = list(label_columns) if label_columns is not None else [label_column]
        options = dict(image_column=image_column, label_columns=columns, split_column=split_column,
                       id_column=id_column, image_root=image_root, image_suffix=image_suffix)
        rows = None
        if task_type is None:
            if label_columns is not None:
                task_type = "multilabel"
            else:
                rows = read_image_csv(path, **options)  # type: ignore[arg-type]
                label_names = kwargs.get("label_names")
                classes = len(label_names) if label_names is not None else len({r.labels[0] for r in rows})
                task_type = infer_task_type(classes)
        super().__init__(task_type=task_type, **kwargs)
        self.path = path
        self.image_column = image_column
        self.label_column = label_column
        self.label_columns = list(label_columns) if label_columns is not None else None
        self.split_column = split_column
        self.id_column = id_column
        self.image_root = image_root
        self.image_suffix = image_suffix
        self._options = options
        self._rows = rows

    @property
    def source(self) -> str:
        return str(self.path)

    def read_records(self) -> tuple[list[ImageRecord], LabelVocabulary]:
        rows = self._rows if self._rows is not None else read_image_csv(self.path, **self._options)  # type: ignore
        self._rows = None
        path = self.path
        if self.task_type == "multilabel":
            columns = self.label_columns or [self.label_column]
            names = self.given_label_names if self.given_label_names is not None else columns
            if len(names) != len(columns):
                raise DataError(path, None, f"{len(columns)} label columns but label_names has {len(names)}: {names}")
            records = [ImageRecord(r.id, str(r.image), [_binary_value(v, path, r.row, c)
                                                        for c, v in zip(columns, r.labels)], r.split) for r in rows]
            return records, self.class_index_vocabulary(list(names), len(names))
        labels = self.class_names_vocabulary([(r.row, r.labels[0]) for r in rows], path)
        return [ImageRecord(r.id, str(r.image), labels.index[r.labels[0]], r.split) for r in rows], labels
