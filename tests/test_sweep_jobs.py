"""``executor: submitit_local`` (submitit's local executor: the SLURM path without a cluster): the same
table as the local runner; the parent may leave and a later call collects the jobs, resubmitting a cell
whose job ended without a result; a requeued job resumes its stopped cell from ``last.ckpt``."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from peftlab import sweep as sw
from peftlab.sweep import jobs
from peftlab.sweep.runner import prepare_cell
from tests.test_sweep import FAST, LORA, PROBE, ROOT, TINY_TASK, rows_of

pytest.importorskip("submitit", reason="submitit is in the 'cluster' extra (part of 'all')")

JOBS = {"executor": "submitit_local", "resources": {"poll_s": 0.3}}


def write(path: Path, output: Path, **extra) -> Path:
    spec = {"root": str(ROOT), "output": str(output), "seeds": [0], "overrides": FAST, "tasks": [TINY_TASK],
            "methods": [LORA, PROBE], **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_submitit_local_writes_the_table_the_local_runner_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_THREADS", "1")  # the same arithmetic whether the cells run together or not
    local = sw.run_sweep(sw.load_sweep(write(tmp_path / "local.yaml", tmp_path / "local")))
    report = sw.run_sweep(sw.load_sweep(write(tmp_path / "jobs.yaml", tmp_path / "jobs", **JOBS)))
    assert sorted(report.launched) == sorted(local.launched) and not report.failed
    by_cell = {tuple(r[k] for k in ("method", "seed")): r for r in rows_of(tmp_path / "local")}
    for row in rows_of(tmp_path / "jobs"):
        twin = by_cell[(row["method"], row["seed"])]
        assert row["status"] == twin["status"] == "ok"
        metrics = sorted(k for k in row if k.startswith("test/"))
        assert metrics and [row[k] for k in metrics] == [twin[k] for k in metrics]
        assert row["trainable_params"] == twin["trainable_params"] and row["args_hash"] == twin["args_hash"]
    book = json.loads((tmp_path / "jobs" / jobs.JOBS_FILE).read_text())
    assert sorted(book) == ["motif__linear_probe__seed0", "motif__lora__seed0"]
    assert len({e["job_id"] for e in book.values()}) == 2  # one job per cell (cells_per_job: 1)

    def metric_columns(md: str) -> list[str]:
        return [ln.split(" | ")[:2] for ln in md.splitlines() if ln.startswith(("| lora |", "| linear_probe |"))]
    assert metric_columns((tmp_path / "jobs" / "results.md").read_text()) == \
        metric_columns((tmp_path / "local" / "results.md").read_text())


def test_a_later_call_collects_the_jobs_and_resubmits_a_cell_whose_job_died(tmp_path):
    config = write(tmp_path / "grid.yaml", tmp_path / "out", executor="submitit_local",
                   resources={"poll_s": 0.3, "cells_per_job": 2})
    first = sw.run_sweep(sw.load_sweep(config), wait=False)  # the parent submits and leaves
    assert sorted(first.pending) == ["motif__linear_probe__seed0", "motif__lora__seed0"]
    book = json.loads((tmp_path / "out" / jobs.JOBS_FILE).read_text())
    assert len({e["job_id"] for e in book.values()}) == 1  # both cells in one job
    second = sw.run_sweep(sw.load_sweep(config))  # collects (waits for the job it did not start)
    assert second.launched == [] and not second.failed
    assert json.loads((tmp_path / "out" / jobs.JOBS_FILE).read_text()) == book  # nothing resubmitted
    assert [r["status"] for r in rows_of(tmp_path / "out")] == ["ok", "ok"]
    # a cell whose job ended without its result (a node failure): the next call submits it again
    deadline = time.monotonic() + 30
    while jobs._local_job_alive(int(book["motif__lora__seed0"]["job_id"])) and time.monotonic() < deadline:
        time.sleep(0.1)  # the job's controller ends a moment after its last cell
    rows = [r for r in rows_of(tmp_path / "out") if r["method"] != "lora"]
    sw.write_results(tmp_path / "out" / "results.csv", rows)
    (tmp_path / "out" / "cells" / "motif__lora__seed0" / "result.json").unlink()
    third = sw.run_sweep(sw.load_sweep(config))
    assert third.launched == ["motif__lora__seed0"] and third.skipped == ["motif__linear_probe__seed0"]
    after = json.loads((tmp_path / "out" / jobs.JOBS_FILE).read_text())
    assert after["motif__lora__seed0"]["job_id"] != book["motif__lora__seed0"]["job_id"]
    assert [r["status"] for r in rows_of(tmp_path / "out")] == ["ok", "ok"]


def _kill_once():
    import lightning as L

    class KillOnceAtSecondEpoch(L.Callback):
        """SIGKILLs its process as the second epoch starts, once (the file ``PEFTLAB_TEST_MARKER`` names
        remembers): what a pre-emption does to a cell."""

        def on_train_epoch_start(self, trainer, pl_module):
            marker = Path(os.environ["PEFTLAB_TEST_MARKER"])
            if trainer.current_epoch == 1 and not marker.exists():
                marker.write_text("")
                os.kill(os.getpid(), signal.SIGKILL)

    KillOnceAtSecondEpoch.__module__, KillOnceAtSecondEpoch.__qualname__ = __name__, "KillOnceAtSecondEpoch"
    return KillOnceAtSecondEpoch


KillOnceAtSecondEpoch = _kill_once()


def test_a_requeued_job_resumes_its_stopped_cell_from_last_ckpt(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_TEST_MARKER", str(tmp_path / "killed-once"))
    kill = tmp_path / "kill.yaml"
    kill.write_text("trainer:\n  callbacks:\n    - class_path: tests.test_sweep_jobs.KillOnceAtSecondEpoch\n")
    method = {**LORA, "configs": [*LORA["configs"], str(kill)], "overrides": {"trainer.max_epochs": 2}}
    sweep = sw.load_sweep(write(tmp_path / "grid.yaml", tmp_path / "out", methods=[method], **JOBS))
    (cell,) = sweep.cells()
    cell_dir = tmp_path / "out" / "cells" / cell.dirname
    prepare_cell(cell, sweep, cell_dir)
    job = jobs.CellJob([str(cell_dir)], str(ROOT))
    assert job() == ["no result"]  # stopped in its second epoch, after epoch 1's last.ckpt
    requeued = job.checkpoint()  # what submitit calls on SLURM's pre-emption signal
    assert requeued.function(*requeued.args) == ["ok"]
    log = (cell_dir / "run.log").read_text()
    assert "resuming the run in" in log and "from last.ckpt" in log
    assert len(list(cell_dir.glob("lightning_logs/version_*"))) == 1  # the same run folder, continued


def test_executor_options_are_checked(tmp_path):
    with pytest.raises(sw.SweepConfigError, match="executor 'kubernetes' is not one of"):
        sw.load_sweep(write(tmp_path / "a.yaml", tmp_path / "out", executor="kubernetes"))
    with pytest.raises(sw.SweepConfigError, match="resources are for executor slurm"):
        sw.load_sweep(write(tmp_path / "b.yaml", tmp_path / "out", resources={"gpus": 1}))
    with pytest.raises(sw.SweepConfigError, match="resources must map some of"):
        sw.load_sweep(write(tmp_path / "c.yaml", tmp_path / "out", executor="slurm", resources={"gpu": 1}))
    sweep = sw.load_sweep(write(tmp_path / "d.yaml", tmp_path / "out", executor="slurm", resources={
        "gpus": 1, "cpus": 8, "mem_gb": 32, "time_min": 120, "partition": "gpu",
        "slurm_additional_parameters": {"account": "lab"}}))
    from submitit.slurm.slurm import _make_sbatch_string

    sbatch = _make_sbatch_string(command="python -m x", folder=tmp_path, **jobs.sbatch_parameters(sweep))
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB",
                 "#SBATCH --time=120", "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --signal=USR2@90",
                 "#SBATCH --job-name=peftlab-d"):
        assert line in sbatch.splitlines(), f"{line} not in\n{sbatch}"
