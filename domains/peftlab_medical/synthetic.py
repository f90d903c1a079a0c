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
format as every other peftlab image DataModule (see :mod:`peftlab_medical.data`).
"""

from __future__ import annotations

import numpy as np
from monai.data.synthetic import create_test_image_2d

from peftlab.data import seeded_split
from peftlab_medical.data import ImageRecord, MedicalImageDataModule

__all__ = ["SyntheticLesionDataModule", "make_lesion_images"]


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
        image_size: resize to ``image_size`` per side (e.g. 224 for a ViT); ``None`` keeps ``native_size``.
        channels: 1 or 3 (grayscale repeated to 3); ``None`` keeps 1.
        augment: random flip/rotation/zoom on the train split only.
        flip_prob, rotate_prob, rotate_degrees, zoom_prob, zoom_range: the augmentation.
        cache: MONAI ``CacheDataset``.
        seed: seed of the generator, the split, batch order and augmentation.
        batch_size: examples per batch.
        num_workers: DataLoader worker processes.
        group_by_length: off for images.
        val_fraction / test_fraction: split shares.
        predict_split: split that ``predict`` runs on.

    Record ids are ``synthetic{i}``; label names are ``["normal", "lesion"]``.
    """

    def __init__(self, num_images: int = 600, native_size: int = 28, noise: float = 0.6,
                 image_size: int | None = None, channels: int | None = None, augment: bool = True,
                 flip_prob: float = 0.5, rotate_prob: float = 0.5, rotate_degrees: float = 15.0,
                 zoom_prob: float = 0.5, zoom_range: tuple[float, float] = (0.9, 1.1), cache: bool = False,
                 seed: int = 0, batch_size: int = 32, num_workers: int = 0, group_by_length: bool = False,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, predict_split: str = "test"):
        super().__init__(task_type="binary", label_names=["normal", "lesion"], image_size=image_size,
                         channels=channels, spatial_dims=2, augment=augment, flip_prob=flip_prob,
                         rotate_prob=rotate_prob, rotate_degrees=rotate_degrees, zoom_prob=zoom_prob,
                         zoom_range=zoom_range, cache=cache, batch_size=batch_size, num_workers=num_workers,
                         seed=seed, group_by_length=group_by_length, val_fraction=val_fraction,
                         test_fraction=test_fraction, predict_split=predict_split)
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.num_images = num_images
        self.native_size = native_size
        self.noise = noise

    @property
    def source(self) -> str:
        return f"<synthetic lesions seed={self.seed}>"

    def read_splits(self) -> dict[str, list[ImageRecord]]:
        images, labels = make_lesion_images(self.num_images, self.native_size, self.noise, self.seed)
        records = [ImageRecord(id=f"synthetic{i}", image=images[i], label=int(labels[i]))
                   for i in range(len(images))]
        self._set_classes(["normal", "lesion"], 2)
        idx = seeded_split(len(records), self.val_fraction, self.test_fraction, self.seed)
        return {s: [records[i] for i in idx[s]] for s in ("train", "val", "test")}
