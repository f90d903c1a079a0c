"""A speech run resumed from a mid-epoch checkpoint ends bit for bit where the
uninterrupted run ends: the training loader (epoch-tagged for augmentation) is
a ResumableDataLoader, so Lightning restores its position, and the random
crops and shift/gain augmentation are drawn per (seed, epoch, item)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftlab.cli import main
from peftlab.data import ResumableDataLoader
from peftlab_speech.synthetic import SyntheticToneDataModule

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
# tiny HuBERT (2 x 64), LoRA, 40 synthetic 0.25 s clips (32 train) in batches of 4: 8 batches per epoch,
# augmentation (random shift and gain) on
RUN = ["--config", str(CONFIGS / "speech/hubert_tiny.yaml"), "--config", str(CONFIGS / "methods/lora.yaml"),
       "--config", str(CONFIGS / "speech/synthetic_tones.yaml"),
       "--data.init_args.num_clips=40", "--data.init_args.clip_seconds=0.25", "--data.init_args.batch_size=4",
       "--data.init_args.augment=true", "--data.init_args.shift_prob=0.5", "--data.init_args.gain_prob=0.5",
       "--trainer.accelerator=cpu", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
       "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1", "--seed_everything=0"]
STEPS_PER_EPOCH = 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread for every run compared here (as tests/test_reliability.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def adapter_of(root: Path) -> dict[str, torch.Tensor]:
    return load_file(root / "lightning_logs" / "version_0" / "adapter" / "adapter.safetensors")


def every_step_config(path: Path, dirpath: Path) -> Path:
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(dirpath), "every_n_train_steps": 1, "save_top_k": -1,
                                "filename": "{step}"}}]
    path.write_text(json.dumps({"trainer": {"callbacks": callbacks}}))
    return path


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
    root = tmp_path_factory.mktemp("every_step")
    main(["fit", *RUN, "--config", str(every_step_config(root / "c.yaml", root / "ckpt")),
          f"--trainer.default_root_dir={root}"])
    return root


@pytest.mark.parametrize("resume_step", [3, 11])  # mid-epoch 0, mid-epoch 1
def test_speech_resume_from_a_mid_epoch_checkpoint_is_exact(every_step, tmp_path, resume_step):
    ckpt = every_step / "ckpt" / f"step={resume_step}.ckpt"
    position = torch.load(ckpt, weights_only=True)["SyntheticToneDataModule"]["train_position"]
    assert position == {"epoch": (resume_step - 1) // STEPS_PER_EPOCH,
                        "batches_done": (resume_step - 1) % STEPS_PER_EPOCH + 1}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", *RUN, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={ckpt}"])
    assert not [w for w in caught if "not resumable" in str(w.message)]  # Lightning sees a resumable loader
    a, b = adapter_of(tmp_path), adapter_of(every_step)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensor(s) differ, e.g. {differ[:2]}"
