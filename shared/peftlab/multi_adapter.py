"""Several adapters on one backbone: load them, switch per task, predict with each.

    model = MultiAdapterModel(["runs/gb1/adapter", "runs/stability/adapter"])
    model.predict(batch, adapter="gb1")          # {"ids", "scores"} as ``peftlab predict`` computes them
    model(batch, adapter="stability")            # the head's raw outputs

Each adapter directory is what ``save_adapter`` / the ``AdapterExport``
callback writes (``adapter.safetensors`` + ``adapter_config.json``). Every
adapter keeps its own task head (task type, outputs, label names, pooling).
The backbone is built once, from the first adapter's recorded spec (or given),
and every adapter must have been trained on that backbone's identity (name,
architecture, weight fingerprint): another one is refused with
:class:`peftlab.BackboneMismatchError` unless ``force=True``.

How the adapters share the backbone:

* LoRA / DoRA adapters (methods ``lora``, ``dora``) are injected into the one
  backbone side by side through HF peft's multi-adapter support
  (``inject_adapter_in_model`` with each adapter's name instead of
  ``"default"``; their trained tensors are renamed from ``default`` to that
  name), and ``peft.functional.set_adapter`` switches between them before each
  forward. Adapters may differ in rank, targets and layers; a layer that one
  adapter does not adapt runs as the base layer while that adapter is active.
  IA3 adapters share a backbone the same way, a second copy when LoRA adapters
  are present too (peft cannot nest IA3 and LoRA layers in one module).
* Every other method (bottleneck adapters, prompts, SSF, BitFit, full
  fine-tuning, linear probes, PiSSA / OLoRA, which rewrite the frozen weights,
  and the other peft methods) gets its own copy of the backbone, loaded with
  :func:`peftlab.checkpoint.load_adapter`: correct for every method, at the
  memory cost of one backbone per such adapter (:attr:`MultiAdapterModel.shared`
  says which adapters share).

Adapter names come from the directories (the folder's name; for the
``adapter`` folder that ``AdapterExport`` writes, its parent's, e.g.
``version_3``) or are given (a mapping, or ``NAME=DIR`` on the command line).

The command line, ``peftlab predict-adapters``, writes one predictions CSV per
adapter (the columns of ``peftlab predict``)::

    peftlab predict-adapters --adapters gb1=runs/gb1/adapter stab=runs/stab/adapter \\
        --data-config configs/protein/data/flip_gb1.yaml --data.path test.csv --output-dir predictions/

The model is meant for inference: it is built in eval mode, and switching an
adapter freezes it (``inference_mode``).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from peftlab.backbone import Backbone, check_backbone_reads_data
from peftlab.checkpoint import (CONFIG_FILE, WEIGHTS_FILE, AdapterFileError, build_method_from_spec, head_options,
                                import_class, load_adapter, read_adapter_config, read_adapter_weights)
from peftlab.module import BackboneMismatchError, PeftModule, check_identity, shape_mismatches

PathLike = str | os.PathLike
#: method name -> the peft layer family whose adapters can sit side by side in one backbone
SHARED_FAMILIES = {"lora": "lora", "dora": "lora", "ia3": "ia3"}
PEFT_DEFAULT_NAME = "default"  # the adapter name under which peftlab's methods inject and save
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
PEFT_RESERVED_PREFIXES = ("lora_", "ia3_", "base_layer")


class AdapterView(PeftModule):
    """One adapter of a :class:`MultiAdapterModel` on the shared backbone: a
    ``PeftModule`` (its own head, ``predict_step``, usable with a Lightning
    ``Trainer``) that makes its adapter the active one before each forward."""

    adapter_name: str = PEFT_DEFAULT_NAME

    def forward(self, batch: dict[str, Any]) -> Tensor:
        from peft.functional import set_adapter

        set_adapter(self.backbone, self.adapter_name, inference_mode=True)
        return super().forward(batch)


def build_backbone(spec: Mapping[str, Any], source: Path, trusted: bool = False) -> Backbone:
    """A backbone from ``{"class_path", "init_args"}``: an adapter's recorded spec
    (data: only peftlab's or already imported Backbone classes, as
    :func:`peftlab.checkpoint.load_adapter` allows), or a YAML the user gave
    (``trusted``: any importable Backbone class, as the CLI's configs)."""
    if trusted:
        module_name, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), name, None)
        if not (isinstance(cls, type) and issubclass(cls, Backbone)):
            raise ValueError(f"{source}: {spec['class_path']!r} is not a Backbone class")
    else:
        cls = import_class(spec["class_path"], Backbone, source)
    return cls(**dict(spec.get("init_args") or {}))


def default_adapter_name(directory: PathLike) -> str:
    """The folder's name; for an ``adapter`` folder (``AdapterExport``'s), its parent's.
    Characters other than letters, digits, ``_`` and ``-`` become ``_``."""
    path = Path(directory).resolve()
    name = path.parent.name if path.name == "adapter" and path.parent.name else path.name
    name = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return name if NAME_PATTERN.fullmatch(name) else f"a_{name}"


def name_adapters(adapters: Sequence[PathLike] | Mapping[str, PathLike]) -> dict[str, Path]:
    """``{name: directory}`` from a mapping (names checked) or a list (names derived)."""
    if isinstance(adapters, Mapping):
        named = {str(k): Path(v) for k, v in adapters.items()}
    else:
        named = {}
        for directory in adapters:
            name = default_adapter_name(directory)
            if name in named:
                raise ValueError(f"two adapters would both be called {name!r} ({named[name]} and {directory}); "
                                 f"name them (a mapping, or NAME=DIR on the command line)")
            named[name] = Path(directory)
    if not named:
        raise ValueError("no adapters given")
    for name in named:
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"adapter name {name!r}: use letters, digits, '_' and '-', starting with a letter or '_'")
    return named


def _rename(key: str, name: str) -> str:
    """``backbone.x.lora_A.default.weight`` -> ``backbone.x.lora_A.<name>.weight`` (backbone keys only)."""
    if not key.startswith("backbone."):
        return key
    return ".".join(name if part == PEFT_DEFAULT_NAME else part for part in key.split("."))


class MultiAdapterModel(nn.Module):
    """Several adapters on one backbone (see the module docstring).

    Args:
        adapters: adapter directories (names derived from the folders) or ``{name: directory}``.
        backbone: the backbone to use (adapted in place); ``None`` builds it from
            the first adapter's recorded spec.
        force: load adapters whose recorded backbone identity differs from this
            backbone's (only when you know the weights are the same).

    Attributes:
        names: the adapter names, in the order given.
        adapters: ``{name: PeftModule}`` (an :class:`AdapterView` for adapters on
            the shared backbone); each gives its adapter's predictions alone.
        shared: ``{name: bool}``: on the shared backbone (peft multi-adapter) or on a copy of its own.
        backbone: the shared backbone.
    """

    def __init__(self, adapters: Sequence[PathLike] | Mapping[str, PathLike], backbone: Backbone | None = None,
                 force: bool = False) -> None:
        super().__init__()
        named = name_adapters(adapters)
        metas = {name: read_adapter_config(d) for name, d in named.items()}
        first = next(iter(named))
        if backbone is None:
            backbone = build_backbone(metas[first]["backbone"], named[first] / CONFIG_FILE)
            source = f"the backbone built from adapter {first!r}'s recorded spec"
        else:
            source = "the backbone given"
        identity = backbone.identity()
        for name, meta in metas.items():
            try:
                check_identity(meta["backbone_identity"], identity, f"adapter {name!r} ({named[name]})", force=force)
            except BackboneMismatchError as e:
                raise BackboneMismatchError(f"every adapter must have been trained on the same backbone, and {e} "
                                            f"(compared with {source})") from None

        methods = {name: build_method_from_spec(meta["method"]) for name, meta in metas.items()}
        families = {name: self._family(method) for name, method in methods.items()}
        # one backbone per shared family and per adapter that needs its own; copies are taken before any
        # adapter touches the backbone, and the backbone itself goes to the first that needs one
        owners = list(dict.fromkeys(f for f in families.values() if f is not None))
        owners += [name for name, f in families.items() if f is None]
        pristine = [backbone] + [copy.deepcopy(backbone) for _ in owners[1:]]
        backbones = dict(zip(owners, pristine))
        names_in_backbone = {part for n, _ in backbone.named_modules() for part in n.split(".")} | \
                            {part for n, _ in backbone.named_parameters() for part in n.split(".")}

        self.names = list(named)
        self.backbone = backbone
        self.shared = {name: families[name] is not None for name in named}
        modules: dict[str, PeftModule] = {}
        for name, directory in named.items():
            if families[name] is None:
                modules[name] = load_adapter(directory, backbone=backbones[name], force=force)
                continue
            if name in names_in_backbone or name.startswith(PEFT_RESERVED_PREFIXES):
                raise ValueError(f"adapter name {name!r} is also a module or parameter name of the backbone or "
                                 f"of peft's layers; give the adapter another name")
            modules[name] = self._load_shared(name, directory, metas[name], methods[name],
                                              backbones[families[name]], identity)
        self.adapters = nn.ModuleDict(modules)
        self.active_adapter = first
        self.eval()

    # ---- construction ----------------------------------------------------------------------------
    @staticmethod
    def _family(method) -> str | None:
        """The peft layer family an adapter shares a backbone with, or None (a backbone of its own)."""
        family = SHARED_FAMILIES.get(method.name)
        if family is None or getattr(method, "rewrites_frozen_weights", False) or not hasattr(method, "_inject"):
            return None
        return family

    @staticmethod
    def _load_shared(name: str, directory: Path, meta: dict[str, Any], method, backbone: Backbone,
                     identity: dict[str, Any]) -> AdapterView:
        from peft import inject_adapter_in_model

        def inject_named(target: Backbone, config) -> None:  # the config the method built, under this name
            with warnings.catch_warnings():  # "Already found a `peft_config` attribute": the point here
                warnings.filterwarnings("ignore", message=".*peft_config.*")
                inject_adapter_in_model(config, target, adapter_name=name)

        method._inject = inject_named  # PeftModule.__init__ applies the method: it injects as `name`
        try:
            view = AdapterView(backbone, method, **head_options(meta))
        finally:
            del method._inject
        view.adapter_name = name
        view.backbone_identity = identity  # what the adapter was trained on (not the multi-adapter backbone's)
        view.backbone_spec = meta["backbone"]

        tensors = {_rename(k, name): v for k, v in read_adapter_weights(directory).items()}
        state = view.state_dict()
        own = {f"backbone.{n}" for n, _ in backbone.named_parameters() if name in n.split(".")}
        head = {k for k in state if k.startswith("head.")}
        missing = sorted((own | head) - set(tensors))
        unexpected = sorted(set(tensors) - (own | head))
        wrong = shape_mismatches(state, tensors)
        if missing or unexpected or wrong:
            raise AdapterFileError(f"{directory / WEIGHTS_FILE}: does not match method {meta['method']['name']} "
                                   f"{meta['method']['init_args']}: missing {missing[:3]}, unexpected "
                                   f"{unexpected[:3]}, shapes {wrong[:3]}")
        view.load_state_dict(tensors, strict=False)
        return view

    # ---- use -----------------------------------------------------------------------------------------
    def module(self, adapter: str | None = None) -> PeftModule:
        """The adapter's model alone (``None``: the active adapter)."""
        name = self.active_adapter if adapter is None else adapter
        if name not in self.adapters:
            raise KeyError(f"no adapter {name!r}; adapters: {', '.join(self.names)}")
        return self.adapters[name]

    def set_adapter(self, adapter: str) -> None:
        """The adapter that ``forward`` / ``predict`` use when none is named."""
        self.module(adapter)
        self.active_adapter = adapter

    def forward(self, batch: dict[str, Any], adapter: str | None = None) -> Tensor:
        """The head's outputs (logits, or values for regression) with one adapter."""
        return self.module(adapter)(batch)

    @torch.no_grad()
    def predict(self, batch: dict[str, Any], adapter: str | None = None) -> dict[str, Any]:
        """``ids`` and ``scores`` (probabilities, class probabilities or values, as
        ``peftlab predict`` writes them) with one adapter."""
        return self.module(adapter).predict_step(batch, 0)


# ---- the command line: peftlab predict-adapters -------------------------------------------------------

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
