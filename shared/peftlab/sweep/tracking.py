"""``tracking`` in a sweep YAML: every cell also logs to a Lightning TensorBoardLogger or MLFlowLogger with
a local file store (no server), one run per cell named after its folder, with the cell's task, backbone,
method and seed as parameters (MLflow params; TensorBoard hparams), and its cost (``cost/...``: trainable
parameters and share, peak memory, time per step, samples per second, fit time) and test metrics as
metrics::

    tracking: mlflow                      # -> <output>/mlflow.db (mlflow ui --backend-store-uri sqlite:///...)
    tracking: {logger: tensorboard}       # -> <output>/tensorboard (tensorboard --logdir <output>/tensorboard)
    tracking: {logger: mlflow, uri: runs/all.db}   # a SQLite file relative to the sweep's root, or any
                                                   # MLflow tracking URI (http://server:5000 ...)

MLflow 3 keeps its ``./mlruns`` folder store in maintenance mode (it refuses to open it unless
``MLFLOW_ALLOW_FILE_STORE`` is set), so the local store is a SQLite file, as MLflow recommends.
The run folder, ``metrics.csv`` and ``adapter/`` stay where they are (peftlab's CSV logger stays first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftlab.sweep.config import Cell, Sweep

DEFAULT_STORES = {"mlflow": "mlflow.db", "tensorboard": "tensorboard"}


def tracking_spec(sweep: Sweep, cell: Cell) -> dict[str, Any] | None:
    """What the cell process needs to build its logger (``cell.json``'s ``tracking``), or None."""
    if sweep.tracking is None:
        return None
    kind = sweep.tracking["logger"]
    uri = str(sweep.tracking.get("uri") or sweep.output / DEFAULT_STORES[kind])
    if ":" not in uri:  # a path, relative to the sweep's root
        path = (Path(uri) if Path(uri).is_absolute() else sweep.root / uri).resolve()
        uri = f"sqlite:///{path}" if kind == "mlflow" else str(path)
    return {"logger": kind, "uri": uri, "experiment": sweep.name, "run_name": cell.dirname,
            "params": {"task": cell.task, "backbone": cell.backbone, "method": cell.method, "seed": cell.seed}}


def tracking_logger(spec: dict[str, Any]) -> Any:
    """The Lightning logger a cell adds next to its CSV logger."""
    if spec["logger"] == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=spec["uri"], name=spec["run_name"], default_hp_metric=False)
    from lightning.pytorch.loggers import MLFlowLogger

    tags = {"peftlab.sweep": spec["experiment"], **{f"peftlab.{k}": str(v) for k, v in spec["params"].items()}}
    artifacts = None
    if spec["uri"].startswith("sqlite:///"):  # artifacts beside the database, not in the cell's cwd
        artifacts = (Path(spec["uri"].removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return MLFlowLogger(experiment_name=spec["experiment"], run_name=spec["run_name"], tracking_uri=spec["uri"],
                        tags=tags, artifact_location=artifacts)
