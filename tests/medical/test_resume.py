"""Reproducible augmentation and exact resume on images: MONAI's random
transforms are seeded per (seed, epoch, item), so the augmented stream is the
same whatever the number of DataLoader workers, the cache, or where a run was
interrupted; a run resumed from a mid-epoch checkpoint ends bit for bit where
the uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peftlab.data import ResumableDataLoader
from peftlab_medical.synthetic import SyntheticLesionDataModule

from tests.resume_checks import check_resume_is_exact, one_thread, run_keeping_every_step  # noqa: F401 (autouse)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
ALWAYS = dict(flip_prob=0.5, rotate_prob=1.0, zoom_prob=1.0)  # every item rotated and zoomed, half flipped
# tiny ViT (1 block x 192, 4 px patches, 28 px), LoRA, 40 synthetic images (32 train) in batches of 4:
# 8 batches per epoch, augmentation on
RUN = ["--config", str(CONFIGS / "medical/backbones/vit_tiny.yaml"), "--config", str(CONFIGS / "methods/lora.yaml"),
       "--config", str(CONFIGS / "medical/data/synthetic_lesion.yaml"), "--model.backbone.init_args.depth=1",
       "--data.init_args.num_images=40", "--data.init_args.batch_size=4", "--data.init_args.augment=true",
       *[f"--data.init_args.{k}={v}" for k, v in ALWAYS.items()],
       "--trainer.accelerator=cpu", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
       "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1", "--seed_everything=0"]
STEPS_PER_EPOCH = 8


def lesions(**kw) -> SyntheticLesionDataModule:
    data = SyntheticLesionDataModule(num_images=40, batch_size=4, **ALWAYS, **kw)
    data.setup("fit")
    return data


def images(batches) -> list[torch.Tensor]:
    return [b["images"] for b in batches]


def assert_same_batches(a, b) -> None:
    assert [x["ids"] for x in a] == [y["ids"] for y in b]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["images"], y["images"])


def test_augmentation_is_seeded_per_epoch_and_item():
    data = lesions()
    loader = data.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    epoch0, epoch1 = list(loader), list(data.train_dataloader())
    assert_same_batches(epoch0, list(lesions().train_dataloader()))  # a fresh module draws the same
    dataset = data.dataset("train", data.splits["train"])
    plain = lesions(augment=False).dataset("train", data.splits["train"])
    first = epoch0[0]["ids"][0]
    index = next(i for i, r in enumerate(data.splits["train"]) if r.id == first)
    assert torch.equal(dataset[(0, index)]["image"], epoch0[0]["images"][0])  # an item depends on (epoch, index)
    assert not torch.equal(dataset[(1, index)]["image"], dataset[(0, index)]["image"])  # a new draw every epoch
    assert not torch.equal(dataset[(0, index)]["image"], plain[index]["image"])  # augmented
    # plain int keys count the reads of an index: read n of an index is epoch n's draw
    fresh = lesions().dataset("train", data.splits["train"])
    assert torch.equal(fresh[index]["image"], dataset[(0, index)]["image"])
    assert torch.equal(fresh[index]["image"], dataset[(1, index)]["image"])
    assert len({tuple(b["ids"]) for b in epoch0} & {tuple(b["ids"]) for b in epoch1}) < len(epoch0)


@pytest.mark.parametrize("kw", [dict(num_workers=1), dict(cache=True)], ids=["worker", "cache"])
def test_workers_and_the_cache_do_not_change_the_augmented_stream(kw):
    reference = lesions()
    other = lesions(**kw)
    for _ in range(2):  # two epochs
        assert_same_batches(list(other.train_dataloader()), list(reference.train_dataloader()))


def test_the_image_training_loader_resumes_mid_epoch():
    whole = list(lesions().train_dataloader())
    loader = lesions().train_dataloader()
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches_done": 3}
    resumed = lesions().train_dataloader()
    resumed.load_state_dict(state)
    assert_same_batches(first + list(resumed), whole)


@pytest.fixture(scope="module")
def every_step(tmp_path_factory) -> Path:
    """An uninterrupted two-epoch run that keeps a checkpoint of every step."""
    return run_keeping_every_step(tmp_path_factory.mktemp("every_step"), RUN)


@pytest.mark.parametrize("resume_step", [3, 11])  # mid-epoch 0, mid-epoch 1
def test_image_resume_with_augmentation_from_a_mid_epoch_checkpoint_is_exact(every_step, tmp_path, resume_step):
    check_resume_is_exact(every_step, tmp_path, RUN, resume_step, "SyntheticLesionDataModule", STEPS_PER_EPOCH)
