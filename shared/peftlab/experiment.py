"""One experiment: fit, then test the checkpoint the run selected, then one
summary (test metrics and which checkpoint produced them, data, cost). What
the domain recipe scripts and every sweep cell run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from peftlab.callbacks import StepTimer
from peftlab.lightning_cli import build_cli
from peftlab.runs import describe_selection, run_folder, selected_checkpoint

#: the summary's cost figures a tracking logger gets as ``cost/...`` metrics (and ``cost/ms_per_step``)
COST_METRICS = ("trainable_params", "total_params", "trainable_share", "peak_memory_mb", "samples_per_s",
                "fit_seconds")


def fit_and_test(args: list[str] | None = None, title: str = "peftlab run", loggers: Sequence[Any] = (),
                 params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit, then test the checkpoint the run selects (the best on the
    monitored validation metric, else the last; :mod:`peftlab.runs`), then
    print (and return) one summary: the test metrics with that checkpoint and
    the data they were computed on, and the cost (trainable parameters, time
    per step, peak memory). Takes the same ``--config`` / ``--section.key
    value`` arguments as ``peftlab fit`` (``--ckpt_path last`` resumes the newest run). ``loggers`` are
    added after the trainer's own (a sweep's tracking logger); every logger but the CSV ones also gets
    ``params`` (before the fit) and the cost metrics (after the test, :func:`log_cost`)."""
    cli = build_cli(args, run=False)
    if loggers:
        cli.trainer.loggers = [*cli.trainer.loggers, *loggers]
    for logger in _trackers(cli.trainer):
        if params:  # before the fit: TensorBoard writes hparams.yaml once, at its first save
            logger.log_hyperparams(params)
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.get("ckpt_path"))
    fit_seconds = time.perf_counter() - start
    selection = selected_checkpoint(cli.trainer)
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=selection["path"], verbose=False)[0]
    model, run = cli.model, run_folder(cli.trainer)
    checkpoint = {k: v for k, v in selection.items()}
    checkpoint["description"] = describe_selection(selection, run)
    summary: dict[str, Any] = {
        "backbone": model.backbone.name, "backbone_config": model.backbone.config(), "method": repr(model.method),
        "task_type": model.task_type, "split_sizes": cli.datamodule.split_sizes(),
        "data": {"module": type(cli.datamodule).__name__,
                 "source": cli.datamodule.data_source()},
        **model.parameter_summary(), **timer.summary(), "fit_seconds": fit_seconds,
        "checkpoint": checkpoint, "test": {k: float(v) for k, v in tested.items()},
        "log_dir": str(run) if cli.trainer.log_dir or cli.run_dir else None,
    }
    # the metric the checkpoint was selected on (its test value; not a loss), else the task type's primary metric
    monitor = selection.get("monitor") or ""
    chosen = monitor.split("/", 1)[1] if monitor.startswith("val/") and monitor != "val/loss" else None
    primary = f"test/{chosen or model.primary_metric}"
    summary["primary_metric"] = primary
    log_cost(cli.trainer, summary)
    print(f"\n== {title} ==")
    print(f"backbone        {summary['backbone']} {summary['backbone_config']}")
    print(f"method          {summary['method']}")
    print(f"data            {summary['data']['module']} ({summary['data']['source']}): {summary['split_sizes']}")
    print(f"trainable       {summary['trainable_params']:,} of {summary['total_params']:,} parameters "
          f"({100 * summary['trainable_share']:.3f}%)")
    print(f"cost            {1000 * summary['s_per_step']:.1f} ms/step, {summary['samples_per_s']:.1f} samples/s, "
          f"peak memory {summary['peak_memory_mb']:.0f} MB ({summary['peak_memory_kind']}), fit {fit_seconds:.1f} s")
    print(f"tested          {checkpoint['description']}, on the test split "
          f"({summary['split_sizes'].get('test', '?')} examples)")
    for k, v in sorted(summary["test"].items()):
        print(f"{k:<15} {v:.4f}{'   <- primary metric' if k == primary else ''}")
    if "random init" in summary["backbone"]:
        print("note            a random-init backbone learning from scratch: these numbers test the pipeline, "
              "not the published model")
    if summary["log_dir"]:
        print(f"run folder      {summary['log_dir']}")
    return summary


def _trackers(trainer: Any) -> list[Any]:
    """The trainer's loggers but the CSV ones (``metrics.csv`` keeps its training rows)."""
    from lightning.pytorch.loggers import CSVLogger

    return [logger for logger in trainer.loggers if not isinstance(logger, CSVLogger)]


def log_cost(trainer: Any, summary: dict[str, Any]) -> None:
    """Give every tracking logger the run's cost as ``cost/...`` metrics, then close it (MLflow ends its run)."""
    cost = {f"cost/{k}": float(summary[k]) for k in COST_METRICS if summary.get(k) is not None}
    cost["cost/ms_per_step"] = 1000 * float(summary["s_per_step"])
    for logger in _trackers(trainer):
        logger.log_metrics(cost, step=trainer.global_step)
        logger.finalize("success")


def recipe_main(argv: list[str], setups_dir: Path, setups: tuple[str, ...], title: str) -> dict[str, Any]:
    """What a domain recipe script runs: ``--setup NAME`` prepends
    ``setups_dir/NAME.yaml`` (a published setup); every other argument goes to
    :func:`fit_and_test` as for ``peftlab fit``."""
    if "--setup" in argv:
        i = argv.index("--setup")
        name = argv[i + 1] if i + 1 < len(argv) else ""
        if name not in setups:
            raise SystemExit(f"--setup must be one of {', '.join(setups)}, got {name!r}")
        argv = ["--config", str(setups_dir / f"{name}.yaml")] + argv[:i] + argv[i + 2:]
    return fit_and_test(argv, title=title)
