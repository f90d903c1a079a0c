"""Tracking: Lightning's MLFlowLogger and TensorBoardLogger with local file stores, from the CLI
(``--trainer.logger``) and from a sweep's ``tracking``: one run per cell with its task, method and seed
as parameters and its cost and test metrics as metrics (read back from the stores)."""

from __future__ import annotations

import pytest
import yaml

from peftlab import sweep as sw
from peftlab.cli import main
from tests.test_sweep import FAST, PROBE, ROOT, TINY_TASK, rows_of

COST = {"cost/trainable_params", "cost/trainable_share", "cost/peak_memory_mb", "cost/ms_per_step",
        "cost/samples_per_s", "cost/fit_seconds"}


def write(path, output, tracking):
    spec = {"root": str(ROOT), "output": str(output), "seeds": [3], "overrides": FAST, "tasks": [TINY_TASK],
            "methods": [PROBE], "tracking": tracking}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_sweep_logs_one_mlflow_run_per_cell(tmp_path):
    pytest.importorskip("mlflow", reason="mlflow-skinny is in the 'tracking' extra (part of 'all')")
    from mlflow.tracking import MlflowClient

    sw.run_sweep(sw.load_sweep(write(tmp_path / "grid.yaml", tmp_path / "out", "mlflow")))
    (row,) = rows_of(tmp_path / "out")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("grid")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "motif__linear_probe__seed3" and run.info.status == "FINISHED"
    assert {k: run.data.params[k] for k in ("task", "method", "seed")} == \
        {"task": "motif", "method": "linear_probe", "seed": "3"}
    metrics = run.data.metrics
    assert COST <= set(metrics) and metrics["cost/trainable_params"] == float(row["trainable_params"])
    assert metrics["test/auroc"] == pytest.approx(float(row["test/auroc"]), abs=1e-6)
    assert "train/loss" in metrics  # the training curve too
    run_dir = tmp_path / "out" / row["run_dir"]  # the run folder stays the CSV logger's
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "adapter" / "adapter.safetensors").is_file()


def test_a_sweep_logs_one_tensorboard_run_per_cell(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the 'tensorboard' extra (part of 'all')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sw.run_sweep(sw.load_sweep(write(tmp_path / "grid.yaml", tmp_path / "out", {"logger": "tensorboard"})))
    (run,) = (tmp_path / "out" / "tensorboard" / "motif__linear_probe__seed3").iterdir()
    events = EventAccumulator(str(run))
    events.Reload()
    assert COST | {"test/auroc"} <= set(events.Tags()["scalars"])
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert (hparams["task"], hparams["method"], hparams["seed"]) == ("motif", "linear_probe", 3)


def test_the_cli_takes_an_mlflow_logger_and_keeps_its_run_folder(tmp_path):
    pytest.importorskip("mlflow", reason="mlflow-skinny is in the 'tracking' extra (part of 'all')")
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow 3's local store (its folder store is frozen)
    main(["fit", "--config", str(ROOT / "configs/protein/backbones/esm2_tiny.yaml"),
          "--config", str(ROOT / "configs/methods/linear_probe.yaml"),
          "--config", str(ROOT / "configs/protein/data/synthetic_motif.yaml"),
          *[f"--{k}={v}" for k, v in {**TINY_TASK["overrides"], **FAST}.items()],
          "--trainer.logger=MLFlowLogger", f"--trainer.logger.init_args.tracking_uri={store}",
          "--trainer.logger.init_args.experiment_name=cli", f"--trainer.default_root_dir={tmp_path}"])
    run_dir = tmp_path / "lightning_logs" / "version_0"  # not the MLflow store's root
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "adapter" / "adapter.safetensors").is_file()
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    assert "train/loss" in run.data.metrics and run.data.params["task_type"] == "binary"
