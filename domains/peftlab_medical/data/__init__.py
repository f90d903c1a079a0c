"""Medical image data through MONAI: MedMNIST ``.npz`` files, class folders and CSV manifests.

    base          ImageRecord, MedicalImageDataModule (transforms, datasets, batches, label vocabulary)
    transforms    LoadImageRecordd (files and arrays decoded and checked), the item-seeded datasets,
                  the grayscale-to-RGB repeat
    medmnist      MedMNISTDataModule: a MedMNIST v2 ``.npz`` with its official splits
    image_folder  ImageFolderDataModule: one folder per class, optionally in train/ val/ test/
    image_csv     ImageCSVDataModule: a CSV manifest (``path,label`` or one 0/1 column per label)
    msd           MSDDataModule: a Medical Segmentation Decathlon task folder (segmentation, NIfTI volumes)
    dicom_series  DicomSeriesDataModule: DICOM series folders + NIfTI masks from a CSV (segmentation, 3D)
    image_mask    ImageMaskDataModule: image + mask pairs (images/ + masks/ folders or a CSV manifest; segmentation)

Three DataModules read three layouts, all producing :class:`ImageRecord` objects
that MONAI transforms turn into items (see :mod:`.base` for the transform chain
and the batches, :mod:`.transforms` for decoding; the synthetic lesion task is
:mod:`peftlab_medical.synthetic`).

Every problem in the input raises :class:`peftlab.data.DataError`, whose message
names the file, the record and what is wrong. Decoding errors raised inside a
MONAI transform chain are unwrapped from MONAI's ``RuntimeError`` so that the
DataError itself reaches the caller (in the main process; a DataLoader worker
re-raises it as a ``RuntimeError`` carrying the same message).

Every name of the former ``peftlab_medical.data`` module that configs
(``class_path: peftlab_medical.data.MedMNISTDataModule``), data cards and code
import is importable from here.
"""

from peftlab_medical.data.dicom_series import DicomSeriesDataModule, read_dicom_series_manifest
from peftlab_medical.data.base import IMAGE_TASK_TYPES, ImageRecord, MedicalImageDataModule, infer_task_type
from peftlab_medical.data.image_csv import ImageCSVDataModule, ManifestRow, read_image_csv
from peftlab_medical.data.image_mask import ImageMaskDataModule, read_image_mask_csv, read_image_mask_folder
from peftlab_medical.data.image_folder import ImageFolderDataModule, scan_image_folder
from peftlab_medical.data.medmnist import MedMNISTDataModule, read_medmnist
from peftlab_medical.data.msd import MSDDataModule, read_msd_task
from peftlab_medical.data.transforms import IMAGE_SUFFIXES, MIN_IMAGE_SIDE, LoadImageRecordd, image_format

__all__ = [
    "DicomSeriesDataModule",
    "IMAGE_SUFFIXES",
    "IMAGE_TASK_TYPES",
    "ImageCSVDataModule",
    "ImageFolderDataModule",
    "ImageMaskDataModule",
    "ImageRecord",
    "LoadImageRecordd",
    "MIN_IMAGE_SIDE",
    "ManifestRow",
    "MedMNISTDataModule",
    "MSDDataModule",
    "MedicalImageDataModule",
    "image_format",
    "infer_task_type",
    "read_dicom_series_manifest",
    "read_image_csv",
    "read_image_mask_csv",
    "read_image_mask_folder",
    "read_medmnist",
    "read_msd_task",
    "scan_image_folder",
]
