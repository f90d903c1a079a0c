"""``peftlab predict-adapters``: several adapters trained on one backbone, one
predictions CSV each (the model is :class:`peftlab.multi_adapter.MultiAdapterModel`).

    peftlab predict-adapters --adapters gb1=runs/gb1/adapter stab=runs/stab/adapter \\
        --data-config configs/protein/data/flip_gb1.yaml --data.path test.csv --output-dir predictions/
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftlab.backbone import check_backbone_reads_data
from peftlab.errors import AdapterFileError, BackboneMismatchError
from peftlab.multi_adapter import MultiAdapterModel, PathLike, build_backbone


def _parse_adapters(items: Sequence[str]) -> list[str] | dict[str, str]:
    pairs = [item.split("=", 1) if "=" in item and not Path(item).exists() else [None, item] for item in items]
    if all(n is None for n, _ in pairs):
        return [d for _, d in pairs]
    if any(n is None for n, _ in pairs):
        raise ValueError("name either every adapter (NAME=DIR) or none")
    named: dict[str, str] = {}
    for n, d in pairs:
        if n in named:
            raise ValueError(f"adapter name {n!r} is given twice")
        named[n] = d
    return named

def _yaml_section(path: str, keys: Sequence[str]) -> Any:
    import yaml

    text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data

def build_data_module(configs: Sequence[str], overrides: Sequence[str]):
    """A data module from the ``data:`` sections of YAML configs (later ones win; the same
    files as for ``peftlab fit``, whose other sections are ignored) and ``--data.KEY=VALUE``
    overrides, through jsonargparse as the LightningCLI does."""
    from jsonargparse import ArgumentParser

    from peftlab.data import PeftDataModule

    parser = ArgumentParser(prog="peftlab predict-adapters", exit_on_error=False)
    parser.add_subclass_arguments(PeftDataModule, "data", required=True)
    args: list[str] = []
    for path in configs:
        section = _yaml_section(path, ["data"])
        if section is None:
            raise ValueError(f"{path}: no data: section (expected a data config such as configs/protein/data/flip_gb1.yaml)")
        args += ["--data", json.dumps(section)]
    cfg = parser.parse_args(args + list(overrides))
    return parser.instantiate(cfg).data

def predict_to_csvs(model: MultiAdapterModel, datamodule, output_dir: PathLike, accelerator: str = "auto",
                    devices: int | str = 1) -> dict[str, Path]:
    """Run every adapter over the data module's predict split with a Lightning
    ``Trainer``; ``<output_dir>/<name>.csv`` per adapter, as ``peftlab predict`` writes it."""
    import lightning as L

    from peftlab.callbacks import PredictionCSVWriter

    output_dir = Path(output_dir)
    written: dict[str, Path] = {}
    for name in model.names:
        path = output_dir / f"{name}.csv"
        trainer = L.Trainer(accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[PredictionCSVWriter(output=str(path))])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            trainer.predict(model.module(name), datamodule=datamodule)
        written[name] = path
    return written

def main(argv: Sequence[str] | None = None) -> int:
    """``peftlab predict-adapters --adapters [NAME=]DIR ... --data-config DATA.yaml [--data.KEY=VALUE ...]``"""
    parser = argparse.ArgumentParser(
        prog="peftlab predict-adapters",
        description="Load several adapters onto one backbone and write one predictions CSV per adapter "
                    "(LoRA / DoRA / IA3 share the backbone through peft's multi-adapter support; other "
                    "methods get a copy each). Every adapter must have been trained on the same backbone.",
        epilog="Data overrides: --data.KEY=VALUE (as for peftlab fit, e.g. --data.path test.csv).")
    parser.add_argument("--adapters", nargs="+", required=True, metavar="[NAME=]DIR",
                        help="adapter directories (adapter.safetensors + adapter_config.json); names default to "
                             "the folder's name (the parent's for an 'adapter' folder)")
    parser.add_argument("--data-config", action="append", required=True, metavar="YAML",
                        help="YAML whose data: section is the data module (repeatable, later wins)")
    parser.add_argument("--backbone-config", metavar="YAML",
                        help="YAML with the backbone (model: backbone: or backbone: class_path / init_args); "
                             "default: the first adapter's recorded spec")
    parser.add_argument("--output-dir", default="predictions", help="where <name>.csv go (default: predictions)")
    parser.add_argument("--split", choices=("train", "val", "test"), help="split to predict (default: the data "
                        "module's predict_split, test)")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    parser.add_argument("--force", action="store_true",
                        help="accept adapters whose recorded backbone identity differs from the backbone's")
    ns, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    bad = [a for i, a in enumerate(rest) if not a.startswith("--data.")
           and not (i > 0 and rest[i - 1].startswith("--data.") and "=" not in rest[i - 1])]  # --data.KEY VALUE
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)}")
    try:
        overrides = list(rest) + ([f"--data.predict_split={ns.split}"] if ns.split else [])
        datamodule = build_data_module(ns.data_config, overrides)
        backbone = None
        if ns.backbone_config:
            spec = (_yaml_section(ns.backbone_config, ["model", "backbone"])
                    or _yaml_section(ns.backbone_config, ["backbone"]) or _yaml_section(ns.backbone_config, []))
            if not isinstance(spec, dict) or "class_path" not in spec:
                raise ValueError(f"{ns.backbone_config}: no backbone (model: backbone: class_path / init_args)")
            backbone = build_backbone(spec, Path(ns.backbone_config), trusted=True)
        model = MultiAdapterModel(_parse_adapters(ns.adapters), backbone=backbone, force=ns.force)
        for name in model.names:  # before any batch: a backbone that cannot read this data's batches
            check_backbone_reads_data(model.module(name).backbone, datamodule)
    except (BackboneMismatchError, AdapterFileError, ValueError, FileNotFoundError, KeyError,
            argparse.ArgumentError) as e:
        print(f"peftlab predict-adapters: error: {e}", file=sys.stderr)
        return 2
    for name in model.names:
        how = "shared backbone (peft)" if model.shared[name] else "own backbone copy"
        print(f"peftlab: adapter {name!r} ({model.module(name).method.name}, {how})")
    written = predict_to_csvs(model, datamodule, ns.output_dir, accelerator=ns.accelerator)
    for name, path in written.items():
        print(f"peftlab: {name}: predictions written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
