"""Images in one folder per class (PNG, JPEG, DICOM ``.dcm``, NIfTI ``.nii`` /
``.nii.gz``), optionally inside ``train/``, ``val/`` and ``test/`` folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftlab.data import SPLIT_NAMES, DataError, LabelVocabulary
from peftlab_medical.data.base import ImageRecord, MedicalImageDataModule, infer_task_type
from peftlab_medical.data.transforms import IMAGE_SUFFIXES, PathLike, image_format


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith(".") and image_format(p) is not None)


def _split_folders(root: Path) -> list[tuple[str | None, Path]]:
    """``(split, folder)`` of the folders holding class folders: the split folders (names of
    :data:`peftlab.data.SPLIT_NAMES`, any case) when there are any, else ``(None, root)``."""
    tops = _visible_dirs(root)
    split_dirs = [d for d in tops if d.name.lower() in SPLIT_NAMES]
    if not split_dirs:
        return [(None, root)]
    others = [d.name for d in tops if d not in split_dirs]
    if others:
        raise DataError(root, None, f"has split folders {[d.name for d in split_dirs]} and other folders "
                                    f"{others}; put every class folder inside train/ val/ test/")
    if not any(SPLIT_NAMES[d.name.lower()] == "train" for d in split_dirs):
        raise DataError(root, None, f"has split folders {[d.name for d in split_dirs]} but no train/ folder")
    return [(SPLIT_NAMES[d.name.lower()], d) for d in split_dirs]


def scan_image_folder(root: PathLike) -> list[tuple[str | None, str, Path]]:
    """``(split or None, class name, file)`` for every image under a class-folder tree.

    Layouts: ``root/<class>/...`` or ``root/{train,val,test}/<class>/...``
    (split folders are named as :data:`peftlab.data.SPLIT_NAMES` has it:
    ``valid``/``validation``/``dev`` are read as ``val``). Files are found at any depth
    below a class folder; only PNG, JPEG, DICOM and NIfTI files are taken (see
    :data:`IMAGE_SUFFIXES`), hidden files are skipped.

    Raises:
        DataError: the root is missing, no class folders, a class folder without
            images, or split folders mixed with other folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, None, "is a file, not a folder" if root.exists() else "folder not found")
    suffixes = ", ".join(IMAGE_SUFFIXES)
    found: list[tuple[str | None, str, Path]] = []
    for split, folder in _split_folders(root):
        classes = _visible_dirs(folder)
        if not classes:
            raise DataError(folder, None, "no class folders: expected one sub-folder per class holding image "
                                          f"files ({suffixes})" + ("" if split else ", or train/ val/ test/ folders"))
        for class_dir in classes:
            files = _image_files(class_dir)
            if not files:
                raise DataError(class_dir, None, f"class folder has no image files ({suffixes})")
            found += [(split, class_dir.name, f) for f in files]
    return found


class ImageFolderDataModule(MedicalImageDataModule):
    """Images in one folder per class (PNG, JPEG, DICOM ``.dcm``, NIfTI ``.nii``/``.nii.gz``).

    Args:
        path: the root folder: ``path/<class>/<files>`` (split with
            ``seeded_split``) or ``path/{train,val,test}/<class>/<files>``
            (a missing ``val``/``test`` folder is carved out of train).
        task_type: ``binary`` or ``multiclass``; ``None`` infers it (2 classes -> binary).

    The other options: see :class:`MedicalImageDataModule` (``label_names``:
    the class list and its order, default the folder names sorted; a folder
    outside the list is a DataError; ``spatial_dims`` 3 for NIfTI volumes) and
    :class:`peftlab.data.PeftDataModule` (``val_fraction`` / ``test_fraction``).

    Record ids are the file paths relative to ``path`` (``train/NORMAL/a.png``).
    Each file is one image: a DICOM series stored as many files gives many
    2D images.
    """

    def __init__(self, path: str, task_type: str | None = None, **kwargs: Any):
        scanned = None
        if task_type is None:
            scanned = scan_image_folder(path)
            label_names = kwargs.get("label_names")
            classes = len(label_names) if label_names is not None else len({c for _, c, _ in scanned})
            task_type = infer_task_type(classes)
        if task_type == "multilabel":
            raise ValueError("class folders hold one label per image: use binary or multiclass "
                             "(ImageCSVDataModule reads multilabel manifests)")
        super().__init__(task_type=task_type, **kwargs)
        self.path = path
        self._scanned = scanned

    @property
    def source(self) -> str:
        return str(self.path)

    def read_records(self) -> tuple[list[ImageRecord], LabelVocabulary]:
        scanned = self._scanned if self._scanned is not None else scan_image_folder(self.path)
        self._scanned = None
        root = Path(self.path)
        given = self.given_label_names
        if given is not None:
            for _, name, file in scanned:
                if name not in given:
                    class_dir = next(p for p in file.parents if p.name == name)
                    raise DataError(class_dir, None, f"class folder {name!r} is not one of label_names {given}")
        ids = [f.relative_to(root).as_posix() for _, _, f in scanned]
        labels = self.class_names_vocabulary([(i, name) for i, (_, name, _) in zip(ids, scanned)], root)
        return [ImageRecord(id=i, image=str(f), label=labels.index[name], split=split)
                for i, (split, name, f) in zip(ids, scanned)], labels
