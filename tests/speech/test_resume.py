"""A speech run resumed from a mid-epoch checkpoint ends bit for bit where the
uninterrupted run ends: the training loader (epoch-tagged for augmentation) is
a ResumableDataLoader, so Lightning restores its position, and the random
crops and shift/gain augmentation are drawn per (seed, epoch, item)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peftlab.data import ResumableDataLoader
from peftlab_speech.synthetic import SyntheticToneDataModule

from tests.resume_checks import check_resume_is_exact, one_thread, run_keeping_every_step  # noqa: F401 (autouse)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
# tiny HuBERT (2 x 64), LoRA, 40 synthetic 0.25 s clips (32 train) in batches of 4: 8 batches per epoch,
# augmentation (random shift and gain) on
RUN = ["--config", str(CONFIGS / "speech/backbones/hubert_tiny.yaml"), "--config", str(CONFIGS / "methods/lora.yaml"),
       "--config", str(CONFIGS / "speech/data/synthetic_tones.yaml"),
       "--data.init_args.num_clips=40", "--data.init_args.clip_seconds=0.25", "--data.init_args.batch_size=4",
       "--data.init_args.augment=true", "--data.init_args.shift_prob=0.5", "--data.init_args.gain_prob=0.5",
       "--trainer.accelerator=cpu", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
       "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1", "--seed_everything=0"]
STEPS_PER_EPOCH = 8


def tones() -> SyntheticToneDataModule:
    data = SyntheticToneDataModule(num_clips=40, clip_seconds=0.25, batch_size=4)
    data.setup("fit")
    return data


def test_the_speech_training_loader_is_resumable():
    whole = list(tones().train_dataloader())  # epoch 0, uninterrupted
    loader = tones().train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches_done": 3}
    resumed = tones().train_dataloader()
    resumed.load_state_dict(state)
    for a, b in zip(first + list(resumed), whole, strict=True):  # the same items, augmented alike
        assert a["ids"] == b["ids"] and torch.equal(a["waveforms"], b["waveforms"])


@pytest.fixture(scope="module")
def every_step(tmp_path_factory) -> Path:
    """An uninterrupted two-epoch run that keeps a checkpoint of every step."""
    return run_keeping_every_step(tmp_path_factory.mktemp("every_step"), RUN)


@pytest.mark.parametrize("resume_step", [3, 11])  # mid-epoch 0, mid-epoch 1
def test_speech_resume_from_a_mid_epoch_checkpoint_is_exact(every_step, tmp_path, resume_step):
    check_resume_is_exact(every_step, tmp_path, RUN, resume_step, "SyntheticToneDataModule", STEPS_PER_EPOCH)
