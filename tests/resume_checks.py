"""Shared by the domains' resume tests: an uninterrupted run that keeps a
checkpoint of every step, and the check that resuming from one of them ends
with the same adapter, bit for bit."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftlab.cli import main


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread for every run compared in a module (import it there): the models are
    tiny, and parallel reductions with another thread count may round differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def every_step_config(path: Path, dirpath: Path) -> Path:
    """A YAML (JSON is YAML) adding a ModelCheckpoint that keeps every step as ``step=N.ckpt``."""
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(dirpath), "every_n_train_steps": 1, "save_top_k": -1,
                                "filename": "{step}"}}]
    path.write_text(json.dumps({"trainer": {"callbacks": callbacks}}))
    return path


def adapter_of(root: Path) -> dict[str, torch.Tensor]:
    return load_file(root / "lightning_logs" / "version_0" / "adapter" / "adapter.safetensors")


def run_keeping_every_step(root: Path, run: list[str]) -> Path:
    main(["fit", *run, "--config", str(every_step_config(root / "c.yaml", root / "ckpt")),
          f"--trainer.default_root_dir={root}"])
    return root


def check_resume_is_exact(every_step: Path, tmp_path: Path, run: list[str], resume_step: int,
                          data_module: str, steps_per_epoch: int) -> None:
    """Resume ``run`` from ``step=resume_step.ckpt`` of the uninterrupted run: the data
    position is where the step left it, Lightning sees a resumable loader, and the
    final adapter equals the uninterrupted run's."""
    ckpt = every_step / "ckpt" / f"step={resume_step}.ckpt"
    position = torch.load(ckpt, weights_only=True)[data_module]["train_position"]
    assert position == {"epoch": (resume_step - 1) // steps_per_epoch,
                        "batches_done": (resume_step - 1) % steps_per_epoch + 1}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", *run, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={ckpt}"])
    assert not [w for w in caught if "not resumable" in str(w.message)]  # Lightning sees a resumable loader
    a, b = adapter_of(tmp_path), adapter_of(every_step)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensor(s) differ, e.g. {differ[:2]}"
