"""A synthetic imaging task that ships with the code: find the bright blob ("lesion").

Each image is a small grayscale square of uniform noise; every other image (the
positives, so the classes are exactly balanced) has one bright disc planted in
it. The binary label says whether a disc is present. Images come from MONAI's
``monai.data.synthetic.create_test_image_2d`` (one circle, or none, over uniform
noise, rescaled to [0, 1]), drawn from one ``numpy.random.RandomState(seed)``,
so the same seed gives the same images, independently of torch's RNG.

The task is easy for a CNN or ViT (at the default noise of 0.6 a disc of radius
2 to 4 pixels at 28x28 has brightness 0.5 to 1 over noise below 0.6; the
largest 3x3 mean alone separates 98% of the images) and needs no download,
which makes it the offline demo and smoke test of the medical pipeline. Batches have the same
format as every other peftlab image DataModule (see :mod:`peftlab_medical.data.base`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.data.synthetic import create_test_image_2d

from peftlab.data import LabelVocabulary
from peftlab_medical.data.base import ImageRecord, MedicalImageDataModule

__all__ = ["SyntheticLesionDataModule", "make_lesion_images"]

LABEL_NAMES = ("normal", "lesion")


def make_lesion_images(num_images: int = 600, size: int = 28, noise: float = 0.6,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noise images with a bright disc in every other one.

    Args:
        num_images: how many images.
        size: side of the square images, in pixels (at least 12).
        noise: the background is uniform noise on ``[0, noise)``; a disc has a
            brightness in ``[0.5, 1)`` (before each image is rescaled to [0, 1]),
            so lower noise makes the disc easier to see.
        seed: the generator seed; the same arguments give the same images.

    Returns:
        ``images`` float32 ``(num_images, size, size)`` in [0, 1] and ``labels``
        int64 ``(num_images,)``: 1 for images with a disc (odd indices), else 0.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if size < 12:
        raise ValueError(f"size must be >= 12 pixels, got {size}")
    if not 0.0 < noise <= 1.0:
        raise ValueError(f"noise must be in (0, 1], got {noise}")
    rad_min = max(2, size // 14)
    rad_max = max(rad_min + 1, size // 7)
    state = np.random.RandomState(seed)
    labels = np.arange(num_images) % 2
    images = np.empty((num_images, size, size), dtype=np.float32)
    for i, positive in enumerate(labels):
        image, _ = create_test_image_2d(size, size, num_objs=int(positive), rad_min=rad_min, rad_max=rad_max,
                                        noise_max=noise, num_seg_classes=1, random_state=state)
        images[i] = image
    return images, labels.astype(np.int64)


class SyntheticLesionDataModule(MedicalImageDataModule):
    """The synthetic lesion task (see the module doc): binary, split with ``seeded_split``.

    Args:
        num_images: how many images to generate.
        native_size: side of the generated images, in pixels (default 28, as MedMNIST).
        noise: background noise level in ``(0, 1]`` (lower: easier).

    The other options (``image_size`` to resize, e.g. 224 for a ViT; ``channels``
    1 or 3; the augmentation; ``cache``; batches, ``val_fraction`` /
    ``test_fraction``): see :class:`~peftlab_medical.data.MedicalImageDataModule`;
    ``seed`` also seeds the generator.

    Record ids are ``synthetic{i}``; label names are ``["normal", "lesion"]``.
    """

    def __init__(self, num_images: int = 600, native_size: int = 28, noise: float = 0.6, **kwargs: Any):
        super().__init__(task_type="binary", label_names=list(LABEL_NAMES), spatial_dims=2, **kwargs)
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.num_images = num_images
        self.native_size = native_size
        self.noise = noise

    @property
    def source(self) -> str:
        return f"<synthetic lesions seed={self.seed}>"

    def read_records(self) -> tuple[list[ImageRecord], LabelVocabulary]:
        """The generated images, none with a split (the base splits them with ``seeded_split``)."""
        images, labels = make_lesion_images(self.num_images, self.native_size, self.noise, self.seed)
        records = [ImageRecord(id=f"synthetic{i}", image=images[i], label=int(labels[i]))
                   for i in range(len(images))]
        return records, self.class_index_vocabulary(list(LABEL_NAMES), len(LABEL_NAMES))
