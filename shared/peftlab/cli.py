"""The ``peftlab`` console script: a LightningCLI over PeftModule and any
domain DataModule.

    peftlab fit --config configs/protein/esm2_t12_35M.yaml \\
                --config configs/methods/lora.yaml \\
                --config configs/protein/flip_gb1.yaml --data.path two_vs_rest.csv

``peftlab sweep --config configs/paper/NAME.yaml`` runs a whole paper table
instead (see :mod:`peftlab.sweep`).

Lightning (>= 2.5) ships no ``lightning`` command, hence our own. The data
module's task facts are linked into the model, so they are never typed twice.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from peftlab.callbacks import AdapterExport, PredictionCSVWriter, StepTimer
from peftlab.checkpoint import load_checkpoint_file, use_atomic_checkpoint_io
from peftlab.data import PeftDataModule
from peftlab.module import PeftModule


class PeftLabCLI(LightningCLI):
    """LightningCLI over PeftModule and a domain DataModule. Every run writes
    checkpoints atomically and loads ``--ckpt_path`` in torch's weights-only
    mode (:class:`peftlab.checkpoint.AtomicCheckpointIO`, unless the run names
    a CheckpointIO plugin of its own)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.task_type", "model.task_type", apply_on="instantiate")
        parser.link_arguments("data.num_outputs", "model.num_outputs", apply_on="instantiate")
        parser.link_arguments("data.label_names", "model.label_names", apply_on="instantiate")
        parser.add_lightning_class_args(PredictionCSVWriter, "predictions")
        parser.add_lightning_class_args(AdapterExport, "adapter")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoint_io(trainer.strategy)
        return trainer

    def _parse_ckpt_path(self) -> None:
        """What LightningCLI (2.6) does with ``--ckpt_path`` before building the
        model: read the checkpoint's ``hyper_parameters`` into the config. Its
        own version calls ``torch.load`` directly, so a truncated or altered file
        failed deep inside torch; here the file goes through peftlab's
        weights-only loader, whose errors name it."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = load_checkpoint_file(ckpt_path).get("hyper_parameters") or {}
        hparams = dict(hparams)
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"Parsing of the hyperparameters in {ckpt_path} failed!\n")
            raise


def main(args: list[str] | None = None) -> int | None:
    """The console script: ``peftlab fit|validate|test|predict ...`` (the
    LightningCLI), and ``peftlab sweep ...`` (:mod:`peftlab.sweep`, a paper
    table over tasks x methods x seeds), whose exit status it returns."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "sweep":
        from peftlab.sweep import main as sweep_main

        return sweep_main(argv[1:])
    if argv and argv[0] == "predict-adapters":  # several adapters on one backbone, a CSV each
        from peftlab.multi_adapter import main as predict_adapters_main

        return predict_adapters_main(argv[1:])
    try:
        PeftLabCLI(PeftModule, PeftDataModule, subclass_mode_data=True,
                   save_config_kwargs={"overwrite": True}, args=args)
    finally:
        _leave_process_group()
    return None


def _leave_process_group() -> None:
    """Close the process group a multi-process run opened (Lightning leaves it open).
    A gloo group still alive when the interpreter exits can abort a process at exit
    ("terminate called without an active exception", seen under torchrun on a busy CPU)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def fit_and_test(args: list[str] | None = None, title: str = "peftlab run") -> dict[str, Any]:
    """Fit, then test the trained weights, then print (and return) one summary:
    the test metrics and the cost (trainable parameters, time per step, peak
    memory). Takes the same ``--config`` / ``--section.key value`` arguments as
    ``peftlab fit``. This is what the domain recipe scripts run."""
    cli = PeftLabCLI(PeftModule, PeftDataModule, subclass_mode_data=True, run=False, args=args,
                     save_config_kwargs={"overwrite": True})
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    model = cli.model
    summary: dict[str, Any] = {
        "backbone": model.backbone.name, "backbone_config": model.backbone.config(), "method": repr(model.method),
        "task_type": model.task_type, "split_sizes": cli.datamodule.split_sizes(),
        **model.parameter_summary(), **timer.summary(), "fit_seconds": fit_seconds,
        "test": {k: float(v) for k, v in tested.items()}, "log_dir": cli.trainer.log_dir,
    }
    primary = f"test/{model.primary_metric}"
    print(f"\n== {title} ==")
    print(f"backbone        {summary['backbone']} {summary['backbone_config']}")
    print(f"method          {summary['method']}")
    print(f"data            {summary['split_sizes']}")
    print(f"trainable       {summary['trainable_params']:,} of {summary['total_params']:,} parameters "
          f"({100 * summary['trainable_share']:.3f}%)")
    print(f"cost            {1000 * summary['s_per_step']:.1f} ms/step, {summary['samples_per_s']:.1f} samples/s, "
          f"peak memory {summary['peak_memory_mb']:.0f} MB ({summary['peak_memory_kind']}), fit {fit_seconds:.1f} s")
    for k, v in sorted(summary["test"].items()):
        print(f"{k:<15} {v:.4f}{'   <- primary metric' if k == primary else ''}")
    if cli.trainer.log_dir:
        print(f"run folder      {cli.trainer.log_dir}")
    return summary


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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
