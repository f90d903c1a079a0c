"""Faults and safe loading: atomic checkpoint writes, a real SIGKILL in the
middle of an epoch followed by an exact resume, NaN / infinite losses, bit-for-bit
determinism, weights-only loading of checkpoints (truncated, altered and
code-carrying files refused with errors that name them), and the backbone check
on the ``--ckpt_path`` paths of the CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from safetensors.torch import load_file

from peftlab import BackboneMismatchError, PeftModule
from peftlab.errors import AdapterFileError, CheckpointFileError, NonFiniteLossError
from peftlab.model.loading import load_adapter
from peftlab.persistence.adapter import save_adapter
from peftlab.persistence.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file
from peftlab.errors import RunFolderError
from peftlab.cli import PeftLabCLI, main
from peftlab.data import LengthGroupedBatchSampler, PeftDataModule, ResumableDataLoader
from peftlab_protein.synthetic import SyntheticMotifDataModule

from tests.tiny_runs import STEPS_PER_EPOCH, tiny_protein_run
from tests.unpickling_audit import check_files

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RUN = tiny_protein_run(2, "--trainer.log_every_n_steps=1")  # 8 training batches an epoch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run here (and the subprocess) uses one CPU thread: the models are tiny,
    and on a busy machine two spinning OpenMP threads per process made each fit
    several times slower. The thread count stays the same for all runs that are
    compared, since parallel reductions may round differently with another one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def adapter_of(root: Path, version: int = 0) -> dict[str, torch.Tensor]:
    return load_file(root / "lightning_logs" / f"version_{version}" / "adapter" / "adapter.safetensors")


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensor(s) differ, e.g. {differ[:2]}"


def checkpoint_config(path: Path, dirpath: Path, every: int, extra: list[dict] | None = None) -> Path:
    """A YAML (JSON is YAML) that adds a ModelCheckpoint (every ``every`` steps, last.ckpt) and ``extra`` callbacks."""
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(dirpath), "every_n_train_steps": every, "save_last": True}}]
    path.write_text(json.dumps({"trainer": {"callbacks": callbacks + (extra or [])}}))
    return path


# ---- 1. atomic checkpoint writes -------------------------------------------------------------

def _cli(tmp_path: Path, *extra: str) -> PeftLabCLI:
    return PeftLabCLI(PeftModule, PeftDataModule, subclass_mode_data=True, run=False,
                      args=[*RUN, f"--trainer.default_root_dir={tmp_path}", *extra])


class OwnCheckpointIO(TorchCheckpointIO):
    """A user's own CheckpointIO: the CLI must leave it in place."""


def test_every_cli_run_uses_the_atomic_checkpoint_io_and_keeps_a_users_own(tmp_path):
    assert type(_cli(tmp_path).trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    wrapped = _cli(tmp_path, "--trainer.plugins=lightning.pytorch.plugins.io.AsyncCheckpointIO")
    io = wrapped.trainer.strategy.checkpoint_io
    assert type(io) is AsyncCheckpointIO and type(io.checkpoint_io) is AtomicCheckpointIO
    own = _cli(tmp_path, "--trainer.plugins=tests.test_reliability.OwnCheckpointIO")
    assert type(own.trainer.strategy.checkpoint_io) is OwnCheckpointIO


class BreaksWhilePickled:
    def __reduce__(self):
        raise OSError("No space left on device (simulated)")


def test_a_failure_in_the_middle_of_a_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    path.parent.mkdir()
    stale = path.with_name(".last.ckpt.999999999.0123abcd.tmp")  # a writer killed mid-write (no such process)
    stale.write_bytes(b"half a checkpoint")
    good = {"state_dict": {"w": torch.arange(4.0)}, "global_step": 3}
    io.save_checkpoint(good, path)
    assert not stale.exists()
    before = path.read_bytes()
    # (a) the serialisation fails part-way (the tensors before it are already written out)
    bad = {"state_dict": {"w": torch.full((100_000,), 7.0)}, "global_step": 4, "z": BreaksWhilePickled()}
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint(bad, path)
    # (b) the writer dies after half the bytes are on disk
    real_save = torch.save

    def half_then_crash(obj, f):
        real_save(obj, f)
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        raise KeyboardInterrupt  # a BaseException, as a signal would raise

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.full((100_000,), 7.0)}, "global_step": 4}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["last.ckpt"]  # no temporary file left behind
    assert io.load_checkpoint(path)["global_step"] == 3


# ---- 2. a real SIGKILL in the middle of an epoch, then resume ------------------------------------

class HangAfterStep(L.Callback):
    """For the SIGKILL test: after optimiser step ``step``, touch ``marker`` and
    wait to be killed: the kill lands at a known point, mid-epoch, two steps
    after the last checkpoint (whose steps the resumed run must redo)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).touch()
            time.sleep(300)


def peftlab_command() -> list[str]:
    script = Path(sys.executable).with_name("peftlab")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "peftlab.cli"]


def start_peftlab(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(torch.get_num_threads()), "MKL_NUM_THREADS": str(torch.get_num_threads())}
    with open(log, "w") as out:  # the child keeps its own copy of the file
        return subprocess.Popen([*peftlab_command(), *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def metrics_csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def hang_config(path: Path, step: int, marker: Path) -> Path:
    callbacks = [{"class_path": "tests.test_reliability.HangAfterStep", "init_args": {"step": step, "marker": str(marker)}}]
    path.write_text(json.dumps({"trainer": {"callbacks": callbacks}}))
    return path


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_run(tmp_path):
    """The README's resume, as a user runs it: `peftlab fit --run_dir DIR` in a
    subprocess, SIGKILLed mid-epoch (after step 5; last.ckpt is step 3's, with
    ``--checkpoint.every_n_train_steps 3``), then the same command with
    ``--ckpt_path last``: it continues in DIR (no new folder) and ends with the
    uninterrupted run's adapter, bit for bit, and its metrics.csv, row for row.
    (The uninterrupted and the resumed runs go in-process: one interpreter
    start-up instead of three keeps the test short.)"""
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    marker = tmp_path / "step5.done"
    every = ["--checkpoint.every_n_train_steps=3"]  # last.ckpt after steps 3 and 6 (epoch 0 has 8 steps)
    hang = hang_config(tmp_path / "hang.yaml", 5, marker)
    log = tmp_path / "killed.log"
    killed = start_peftlab(["fit", *RUN, *every, "--config", str(hang), f"--run_dir={broken}"], log)
    try:
        # the uninterrupted run, while the other one starts
        main(["fit", *RUN, *every, f"--run_dir={straight}"])
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert killed.poll() is None, f"the run ended before step 5:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "the run did not reach step 5 in time"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
    finally:
        if killed.poll() is None:
            killed.kill()
    last = broken / "checkpoints" / "last.ckpt"
    at_kill = torch.load(last, weights_only=True)
    assert at_kill["global_step"] == 3 and at_kill["epoch"] == 0  # mid-epoch: 3 of 8 batches done
    assert not (broken / "adapter").exists()  # it never finished
    # a new fit into the killed run's folder would overwrite it: refused, naming the way to resume
    with pytest.raises(RunFolderError, match="already holds a run.*--ckpt_path last"):
        main(["fit", *RUN, *every, f"--run_dir={broken}"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", *RUN, *every, f"--run_dir={broken}", "--ckpt_path=last"])
    assert not [w for w in caught if "not resumable" in str(w.message)]  # Lightning sees a resumable loader
    assert sorted(p.name for p in broken.iterdir()) == sorted(p.name for p in straight.iterdir())
    assert_identical(load_file(broken / "adapter" / "adapter.safetensors"),
                     load_file(straight / "adapter" / "adapter.safetensors"))
    assert torch.load(last, weights_only=True)["global_step"] == 2 * STEPS_PER_EPOCH  # the final state
    # one metrics.csv for the run, as if it had never stopped (train loss per step, both validations)
    assert metrics_csv_rows(broken) == metrics_csv_rows(straight)
    assert sum("train/loss" in r for r in metrics_csv_rows(straight)) == 2 * STEPS_PER_EPOCH


def test_ckpt_path_last_without_a_run_dir_resumes_the_newest_run_in_its_folder(tmp_path, capsys):
    """``--ckpt_path last`` on its own resumes the newest ``lightning_logs/version_N``
    (Lightning would look in a new version_N+1, find nothing, warn and start
    again from scratch), continuing in that folder: no version_N+1 appears."""
    one_epoch = [a for a in RUN if not a.startswith("--trainer.max_epochs")] + ["--trainer.max_epochs=1"]
    main(["fit", *one_epoch, f"--trainer.default_root_dir={tmp_path}"])
    first = load_checkpoint_file(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    assert first["global_step"] == STEPS_PER_EPOCH
    main(["fit", *RUN, f"--trainer.default_root_dir={tmp_path}", "--ckpt_path=last"])
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    resumed = load_checkpoint_file(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 2 * STEPS_PER_EPOCH and resumed["epoch"] == 1
    assert "resuming the run in" in capsys.readouterr().out


def test_resuming_a_run_keeps_its_metrics_csv_without_the_rows_logged_after_the_checkpoint(every_step, tmp_path):
    """A run killed after its last checkpoint had logged (and flushed) more rows; resumed
    in its folder, metrics.csv keeps the rows up to the checkpoint, drops the later ones
    (the resumed run logs those steps again) and appends: the uninterrupted run's file.
    Here the killed run is the uninterrupted one's folder whose last.ckpt is put back to step 11."""
    run = tmp_path / "run"
    shutil.copytree(every_step / "lightning_logs" / "version_0", run)
    shutil.copy(every_step / "ckpt" / "step=11.ckpt", run / "checkpoints" / "last.ckpt")
    shutil.rmtree(run / "adapter")
    complete = metrics_csv_rows(run)
    assert any(float(r["step"]) >= 11 for r in complete)  # rows after the checkpoint are there to drop
    main(["fit", *RUN, f"--run_dir={run}", "--ckpt_path=last"])
    assert metrics_csv_rows(run) == complete
    assert_identical(load_file(run / "adapter" / "adapter.safetensors"), adapter_of(every_step))


def test_a_resume_with_nothing_to_resume_fails_loudly(tmp_path):
    """No silent fresh start: a missing run or checkpoint is an error that names what was looked for."""
    with pytest.raises(RunFolderError, match=r"no run to take it from: no lightning_logs/version_N/checkpoints/"
                                             r"last\.ckpt under"):
        main(["fit", *RUN, f"--trainer.default_root_dir={tmp_path}", "--ckpt_path=last"])
    with pytest.raises(RunFolderError, match=r"--run_dir .*nope: no such run folder"):
        main(["fit", *RUN, f"--run_dir={tmp_path / 'nope'}", "--ckpt_path=last"])
    (tmp_path / "killed_early" / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunFolderError, match=r"last\.ckpt: not found, so there is nothing to resume"):
        main(["fit", *RUN, f"--run_dir={tmp_path / 'killed_early'}", "--ckpt_path=last"])
    with pytest.raises(CheckpointFileError, match=r"missing\.ckpt: file not found"):
        main(["fit", *RUN, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={tmp_path / 'missing.ckpt'}"])


@pytest.fixture(scope="module")
def every_step(tmp_path_factory) -> Path:
    """An uninterrupted two-epoch run that keeps a checkpoint of every step."""
    root = tmp_path_factory.mktemp("every_step")
    config = checkpoint_config(root / "c.yaml", root / "ckpt", 1)
    main(["fit", *RUN, "--config", str(config), "--trainer.callbacks.save_top_k=-1",
          "--trainer.callbacks.filename={step}", f"--trainer.default_root_dir={root}"])
    return root


@pytest.mark.parametrize("resume_step", [2, 8, 11])  # mid-epoch 0, the last batch of epoch 0, mid-epoch 1
def test_resume_from_a_step_checkpoint_is_exact(every_step, tmp_path, resume_step):
    """In-process: resuming from a checkpoint taken after any step (mid-epoch,
    or after an epoch's last batch but before its validation) ends with the
    uninterrupted run's weights, bit for bit."""
    ckpt = every_step / "ckpt" / f"step={resume_step}.ckpt"
    position = torch.load(ckpt, weights_only=True)["SyntheticMotifDataModule"]["train_position"]
    assert position == {"epoch": (resume_step - 1) // STEPS_PER_EPOCH,
                        "batches_done": (resume_step - 1) % STEPS_PER_EPOCH + 1}
    config = checkpoint_config(tmp_path / "c.yaml", tmp_path / "ckpt", 1)
    main(["fit", *RUN, "--config", str(config), f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={ckpt}"])
    assert_identical(adapter_of(tmp_path), adapter_of(every_step))


def test_the_sampler_continues_an_epoch_from_its_saved_position():
    lengths = [(i * 7) % 13 + 1 for i in range(30)]
    straight = LengthGroupedBatchSampler(lengths, batch_size=4, seed=3, window_batches=2)
    epoch0, epoch1 = list(straight), list(straight)
    sampler = LengthGroupedBatchSampler(lengths, batch_size=4, seed=3, window_batches=2)
    it = iter(sampler)
    taken = [next(it) for _ in range(3)]
    state = sampler.state_dict()
    assert state == {"epoch": 0, "batches_done": 3} and taken == epoch0[:3]
    resumed = LengthGroupedBatchSampler(lengths, batch_size=4, seed=3, window_batches=2)
    resumed.load_state_dict(state)
    iter(resumed)  # an iterator that is made and never used takes no epoch
    assert list(resumed) == epoch0[3:] and list(resumed) == epoch1
    done = LengthGroupedBatchSampler(lengths, batch_size=4, seed=3, window_batches=2)
    done.load_state_dict({"epoch": 0, "batches_done": len(epoch0)})  # a finished epoch: the next one follows
    assert list(done) == epoch1

    class Wrapper(torch.utils.data.Sampler):  # as a domain wraps the sampler (e.g. to tag epochs)
        def __init__(self, batch_sampler):
            self.batch_sampler = batch_sampler

        def __iter__(self):
            return iter(self.batch_sampler)

        def __len__(self):
            return len(self.batch_sampler)

    inner = LengthGroupedBatchSampler(lengths, batch_size=4, seed=3, window_batches=2)
    loader = ResumableDataLoader(list(range(30)), batch_sampler=Wrapper(inner), collate_fn=list)
    it = iter(loader)
    assert [next(it) for _ in range(2)] == epoch0[:2] and loader.state_dict() == {"epoch": 0, "batches_done": 2}


# ---- 3. NaN / infinite loss ----------------------------------------------------------------------

class PoisonedMotifData(SyntheticMotifDataModule):
    """The synthetic regression task with one example's target set to NaN."""

    def __init__(self, poison_id: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.poison_id = poison_id

    def read_records(self):
        return [dataclasses.replace(r, label=math.nan) if r.id == self.poison_id else r
                for r in super().read_records()]


def test_a_nan_loss_stops_training_naming_step_epoch_batch_and_ids_and_keeps_the_last_checkpoint(tmp_path):
    data = SyntheticMotifDataModule(num_sequences=40, batch_size=4, task_type="regression", seed=0)
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert len(batches) == STEPS_PER_EPOCH
    victim = batches[5]["ids"][1]  # the sixth batch of epoch 0: five steps (and checkpoints) before it
    ckpts = checkpoint_config(tmp_path / "c.yaml", tmp_path / "ckpt", 1)
    args = [*RUN, "--config", str(ckpts), "--data=tests.test_reliability.PoisonedMotifData",
            "--data.init_args.task_type=regression", f"--data.init_args.poison_id={victim}",
            "--data.init_args.num_sequences=40", "--data.init_args.batch_size=4",
            f"--trainer.default_root_dir={tmp_path}"]
    last = tmp_path / "ckpt" / "last.ckpt"
    with pytest.raises(NonFiniteLossError) as error:
        main(["fit", *args])
    message = str(error.value)
    assert "non-finite training loss (nan) at global step 5, epoch 0, batch 5" in message
    assert all(i in message for i in batches[5]["ids"])
    # the last checkpoint is the one after step 5's predecessor, intact and finite
    state = load_checkpoint_file(last)
    assert state["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not list((tmp_path / "ckpt").glob(".*.tmp"))
    assert not list(tmp_path.rglob("adapter.safetensors"))  # no adapter from a failed run


def test_a_checkpoint_of_diverged_weights_is_refused_and_the_previous_one_stays(tmp_path):
    from tests.test_training import tiny_data, tiny_module

    module = tiny_module()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        plugins=[AtomicCheckpointIO()])
    trainer.fit(module, datamodule=tiny_data())
    path = tmp_path / "good.ckpt"
    trainer.save_checkpoint(path)
    before = path.read_bytes()
    with torch.no_grad():
        next(p for n, p in module.named_parameters() if "lora_B" in n).fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match="refusing to write a checkpoint .*NaN or infinite"):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == before


# ---- 4. determinism ------------------------------------------------------------------------------

def test_two_runs_with_the_same_seed_give_bit_identical_adapters(tmp_path):
    for name in ("one", "two"):
        main(["fit", *RUN, f"--trainer.default_root_dir={tmp_path / name}"])
    one = adapter_of(tmp_path / "one")
    assert_identical(one, adapter_of(tmp_path / "two"))
    assert all(v.abs().sum() > 0 for k, v in one.items() if "lora_B" in k)  # trained (LoRA's B starts at zero)


# ---- 5. safe loading -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One short CLI fit: its checkpoint and adapter, for the loading tests to copy and alter."""
    root = tmp_path_factory.mktemp("trained")
    main(["fit", *RUN, "--trainer.max_epochs=1", f"--trainer.default_root_dir={root}"])
    return root


def ckpt_of(root: Path) -> Path:
    return next((root / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt"))


class WritesAMarker:
    """A pickle payload: unpickling it would create a file (any code could run instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_code_is_refused_before_anything_runs(trained, tmp_path):
    marker = tmp_path / "pwned"
    state = torch.load(ckpt_of(trained), weights_only=True)
    state["hyper_parameters"]["note"] = WritesAMarker(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(state, evil)
    with pytest.raises(CheckpointFileError, match=rf"{evil}: refused: .*pickled objects.*pathlib.Path"):
        load_checkpoint_file(evil)
    with pytest.raises(CheckpointFileError, match=rf"{evil}: refused"):  # --ckpt_path through the CLI
        main(["test", *RUN, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={evil}"])
    with pytest.raises(CheckpointFileError, match=rf"{evil}: refused"):  # a Trainer with the plugin
        L.Trainer(accelerator="cpu", logger=False, plugins=[AtomicCheckpointIO()]).strategy.checkpoint_io \
            .load_checkpoint(evil)
    with pytest.raises(ValueError, match="weights-only mode only"):
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not_a_dict", "missing"])
def test_a_damaged_checkpoint_gives_an_error_naming_the_file(trained, tmp_path, damage):
    path = tmp_path / "broken.ckpt"
    data = ckpt_of(trained).read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all " * 40)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not_a_dict":
        torch.save([torch.zeros(2)], path)
    expected = {"missing": "file not found", "not_a_dict": "not a Lightning checkpoint"}.get(
        damage, "not a readable checkpoint, truncated or corrupted")
    with pytest.raises(CheckpointFileError, match=rf"^{path}: {expected}"):
        load_checkpoint_file(path)
    if damage in ("truncated", "garbage"):
        with pytest.raises(CheckpointFileError, match=rf"^{path}: {expected}"):
            main(["test", *RUN, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={path}"])


@pytest.mark.parametrize("tamper", ["shape", "no_metadata", "bad_metadata", "missing_tensor"])
def test_an_altered_checkpoint_is_refused_by_the_cli_with_the_file_named(trained, tmp_path, tamper):
    state = torch.load(ckpt_of(trained), weights_only=True)
    head = next(k for k in state["state_dict"] if k.startswith("head.") and k.endswith("weight"))
    if tamper == "shape":
        state["state_dict"][head] = torch.zeros(3, 3)
        expected = "tensor shapes do not fit this model"
    elif tamper == "no_metadata":
        del state["peftlab"]
        expected = "was not written by peftlab"
    elif tamper == "bad_metadata":
        del state["peftlab"]["method"]
        expected = "its peftlab metadata is damaged"
    else:
        del state["state_dict"][head]
        expected = "lacks 1 trained tensor"
    path = tmp_path / "altered.ckpt"
    torch.save(state, path)
    with pytest.raises(CheckpointFileError, match=rf"the checkpoint {path}.*{expected}"):
        main(["test", *RUN, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={path}"])


def _adapter_copy(trained: Path, tmp_path: Path) -> Path:
    target = tmp_path / "adapter"
    shutil.copytree(trained / "lightning_logs" / "version_0" / "adapter", target)
    return target


def test_an_adapter_config_naming_a_function_to_call_is_refused(trained, tmp_path):
    directory = _adapter_copy(trained, tmp_path)
    config = directory / "adapter_config.json"
    meta = json.loads(config.read_text())
    marker = tmp_path / "pwned"
    meta["backbone"] = {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}
    config.write_text(json.dumps(meta))
    with pytest.raises(AdapterFileError, match=rf"{config}: names 'os.system', which is not a class of peftlab's packages"):
        load_adapter(directory)
    meta["backbone"]["class_path"] = "peftlab.checkpoint.atomic_write"  # importable, but not a backbone
    config.write_text(json.dumps(meta))
    with pytest.raises(AdapterFileError, match=rf"{config}: 'peftlab.checkpoint.atomic_write' is not a Backbone"):
        load_adapter(directory)
    assert not marker.exists()


PLANTED_MODULE = """
from peftlab.methods import LoRA
from peftlab.toy import ToyTransformer

CONSTRUCTED = []


class PlantedBackbone(ToyTransformer):  # any code could run here
    def __init__(self, **kwargs):
        CONSTRUCTED.append(type(self).__name__)
        super().__init__(**kwargs)


class PlantedLoRA(LoRA):
    name = "planted_lora"  # not registered: the config names its class

    def __init__(self, r: int = 2):
        CONSTRUCTED.append(type(self).__name__)
        super().__init__(r=r)
"""


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A module outside peftlab's packages, already imported, defining a Backbone and a Method subclass."""
    import importlib

    (tmp_path / "planted_classes.py").write_text(PLANTED_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "planted_classes", raising=False)
    module = importlib.import_module("planted_classes")
    yield module
    sys.modules.pop("planted_classes", None)


def test_an_adapter_config_may_name_only_peftlabs_classes_or_trusted_ones(planted, tmp_path, monkeypatch):
    backbone = planted.PlantedBackbone(dim=32, depth=2, heads=4, mlp_ratio=2, seed=0)
    module = PeftModule(backbone, planted.PlantedLoRA(r=2), task_type="regression", num_outputs=1)
    directory = save_adapter(module, tmp_path / "adapter")
    config = directory / "adapter_config.json"
    meta = json.loads(config.read_text())
    assert meta["backbone"]["class_path"] == "planted_classes.PlantedBackbone"
    assert meta["method"]["class_path"] == "planted_classes.PlantedLoRA"
    planted.CONSTRUCTED.clear()
    # the module is imported and both are subclasses of the right base: still refused, before any is built
    with pytest.raises(AdapterFileError, match=rf"{config}: names 'planted_classes.PlantedBackbone', which is not "
                                               rf"a class of peftlab's packages .*trusted_classes"):
        load_adapter(directory)
    with pytest.raises(AdapterFileError, match=rf"{config}: names 'planted_classes.PlantedLoRA', which is not"):
        load_adapter(directory, trusted_classes=[planted.PlantedBackbone])
    with pytest.raises(AdapterFileError, match=rf"{config}: names 'planted_classes.PlantedLoRA', which is not"):
        load_adapter(directory, backbone=planted.PlantedBackbone(dim=32, depth=2, heads=4, mlp_ratio=2, seed=0))
    assert planted.CONSTRUCTED == ["PlantedBackbone", "PlantedBackbone"]  # the backbone given above, no method
    # a peftlab module's name for the planted class is no way around it
    import peftlab.toy

    monkeypatch.setattr(peftlab.toy, "PlantedBackbone", planted.PlantedBackbone, raising=False)
    meta["backbone"]["class_path"] = "peftlab.toy.PlantedBackbone"
    config.write_text(json.dumps(meta))
    with pytest.raises(AdapterFileError, match=rf"{config}: 'peftlab.toy.PlantedBackbone' is "
                                               rf"planted_classes.PlantedBackbone, not a class of peftlab's"):
        load_adapter(directory)
    # the caller's explicit allow-list: exactly these classes, each in its role
    meta["backbone"]["class_path"] = "planted_classes.PlantedLoRA"
    config.write_text(json.dumps(meta))
    with pytest.raises(AdapterFileError, match=r"'planted_classes.PlantedLoRA' \(in trusted_classes\) is not a "
                                               r"Backbone class"):
        load_adapter(directory, trusted_classes=[planted.PlantedLoRA])
    meta["backbone"]["class_path"] = "planted_classes.PlantedBackbone"
    config.write_text(json.dumps(meta))
    loaded = load_adapter(directory, trusted_classes=[planted.PlantedBackbone, planted.PlantedLoRA])
    assert type(loaded.backbone) is planted.PlantedBackbone and type(loaded.method) is planted.PlantedLoRA
    from tests.conftest import make_batch

    batch = make_batch("toy")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(batch), module.eval()(batch), rtol=0, atol=0)


@pytest.mark.parametrize("tamper", ["missing_field", "wrong_type", "newer_format", "header", "dtype"])
def test_an_altered_adapter_gives_an_error_naming_the_file(trained, tmp_path, tamper):
    directory = _adapter_copy(trained, tmp_path)
    config, weights = directory / "adapter_config.json", directory / "adapter.safetensors"
    meta = json.loads(config.read_text())
    if tamper == "missing_field":
        del meta["backbone_identity"]
        config.write_text(json.dumps(meta))
        expected = rf"{config}: field 'backbone_identity' is missing"
    elif tamper == "wrong_type":
        meta["head"]["num_outputs"] = "one"
        config.write_text(json.dumps(meta))
        expected = rf"{config}: field 'head.num_outputs' has a wrong type"
    elif tamper == "newer_format":
        meta["format_version"] = 99
        config.write_text(json.dumps(meta))
        expected = rf"{config}: written by a newer peftlab"
    elif tamper == "header":
        data = bytearray(weights.read_bytes())
        data[8:20] = b"#" * 12  # the JSON header after its 8-byte length
        weights.write_bytes(bytes(data))
        expected = rf"{weights}: not a readable safetensors file"
    else:
        from safetensors.torch import save_file
        tensors = load_file(weights)
        tensors = {k: v.to(torch.int64) if k.startswith("head.") else v for k, v in tensors.items()}
        save_file(tensors, weights)
        expected = rf"{weights}: tensor types do not match"
    with pytest.raises(AdapterFileError, match=expected):
        load_adapter(directory)


def test_the_code_never_unpickles_unsafely():
    """Audit of shared/, domains/, benchmarks/ and scripts/ (see tests/unpickling_audit.py): every
    torch / numpy unpickling entry point, under any alias, is called in its safe mode (weights-only,
    no pickles), nothing calls pickle-family loaders, and no download reaches an unsafe loader."""
    paths = [p for d in ("shared", "domains", "benchmarks", "scripts") for p in (ROOT / d).rglob("*.py")]
    assert len(paths) > 40
    assert check_files(paths, ROOT) == []


UNSAFE_LOADING = {  # planted source -> what the audit must name
    "import torch\ntorch.load(f)": "(torch.load) without weights_only=True",
    "import torch as t\nt.load(f, map_location='cpu')": "(torch.load) without weights_only=True",
    "from torch import load as tl\ntl(f)": "tl (torch.load) without weights_only=True",
    "from torch import load\nload(f, weights_only=False)": "unsafe loading flag",
    "import torch\ntorch.serialization.load(f)": "(torch.serialization.load) without weights_only=True",
    "from torch.serialization import load\nload(f)": "(torch.serialization.load) without weights_only=True",
    "import torch.serialization as ser\nser.load(f)": "(torch.serialization.load) without weights_only=True",
    "import torch\ntorch.hub.load_state_dict_from_url(u)": "load_state_dict_from_url) without weights_only=True",
    "from torch.hub import load_state_dict_from_url as get\nget(u)": "without weights_only=True",
    "from torch.utils import model_zoo\nmodel_zoo.load_url(u)": "(torch.utils.model_zoo.load_url) without",
    "import torch\ntorch.hub.load('repo', 'model')": "(torch.hub.load) can run code",
    "import torch\ntorch.jit.load(f)": "(torch.jit.load) can run code",
    "from torch.package import PackageImporter\nPackageImporter(f)": "PackageImporter) can run code",
    "import torch.distributed.checkpoint as dcp\ndcp.load(s, checkpoint_id=d)": "(torch.distributed.checkpoint.load)",
    "import pickle\npickle.load(f)": "(pickle.load) can run code",
    "import pickle\npickle.loads(b)": "(pickle.loads) can run code",
    "from pickle import loads as l\nl(b)": "(pickle.loads) can run code",
    "import _pickle\n_pickle.Unpickler(f).load()": "(_pickle.Unpickler) can run code",
    "import pickle\nclass U(pickle.Unpickler): pass": "pickle.Unpickler referenced, not called",
    "import dill, joblib\ndill.loads(b)\njoblib.load(f)": "(joblib.load) can run code",
    "import shelve\nshelve.open(f)": "(shelve.open) can run code",
    "import pandas as pd\npd.read_pickle(f)": "(pandas.read_pickle) can run code",
    "import numpy as np\nnp.load(f)": "(numpy.load) without allow_pickle=False",
    "import numpy as np\nnp.load(f, allow_pickle=True)": "unsafe loading flag",
    "from numpy import load as nl\nnl(f)": "nl (numpy.load) without allow_pickle=False",
    "import numpy\nnumpy.lib.format.read_array(f, allow_pickle=True)": "unsafe loading flag",
    "import torch\nloader = torch.load\nloader(f, weights_only=True)": "torch.load referenced, not called",
    "import functools, torch\nfunctools.partial(torch.load, weights_only=False)": "torch.load referenced",
    "import torch\ngetattr(torch, 'load')(f)": "getattr reaches torch.load",
    "import torchaudio\ntorchaudio.pipelines.HUBERT_BASE.get_model()": "get_model without dl_kwargs",
    "import esm\nesm.pretrained.load_model_and_alphabet('esm2_t6_8M_UR50D')": "fair-esm reads the file itself",
}
SAFE_LOADING = [
    "import torch as t\nt.load(f, map_location='cpu', weights_only=True)",
    "from torch import load as tl\ntl(f, weights_only=True)",
    "from torch.serialization import load\nload(f, weights_only=True)",
    "import numpy as np\nnp.load(f, allow_pickle=False)",
    "import pickle\ntry:\n    x()\nexcept pickle.UnpicklingError:\n    pass",
    "import yaml, json\nyaml.safe_load(s)\njson.load(f)",
    "from safetensors.torch import load_file\nload_file(f)",
]


@pytest.mark.parametrize("source", list(UNSAFE_LOADING), ids=lambda s: s.replace("\n", "; "))
def test_the_unpickling_audit_sees_through_aliases(source, tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(source + "\n")
    problems = check_files([planted], tmp_path)
    assert problems and all(p.startswith("planted.py:") for p in problems)
    assert any(UNSAFE_LOADING[source] in p for p in problems), problems


def test_the_unpickling_audit_passes_safe_loading(tmp_path):
    for i, source in enumerate(SAFE_LOADING):
        (tmp_path / f"safe{i}.py").write_text(source + "\n")
    assert check_files(sorted(tmp_path.glob("*.py")), tmp_path) == []


# ---- 6. backbone identity on the CLI's --ckpt_path paths -------------------------------------------

@pytest.mark.parametrize("subcommand,change,differs", [
    ("test", "--model.backbone.init_args.seed=1", "fingerprint"),  # same shape, other weights
    ("fit", "--model.backbone.init_args.embed_dim=64", "config"),  # resume onto another size
])
def test_the_cli_refuses_a_checkpoint_of_another_backbone(trained, tmp_path, subcommand, change, differs):
    ckpt = ckpt_of(trained)
    with pytest.raises(BackboneMismatchError, match=rf"the checkpoint {ckpt} was trained on a different "
                                                    rf"backbone \(.*{differs}: trained on"):
        main([subcommand, *RUN, change, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={ckpt}"])
