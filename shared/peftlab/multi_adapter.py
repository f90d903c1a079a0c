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

The command line, ``peftlab predict-adapters`` (:mod:`peftlab.predict_adapters`),
writes one predictions CSV per adapter (the columns of ``peftlab predict``)::

    peftlab predict-adapters --adapters gb1=runs/gb1/adapter stab=runs/stab/adapter \\
        --data-config configs/protein/data/flip_gb1.yaml --data.path test.csv --output-dir predictions/

The model is meant for inference: it is built in eval mode, and switching an
adapter freezes it (``inference_mode``).
"""

from __future__ import annotations

import copy
import importlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from peftlab.backbone import Backbone
from peftlab.errors import AdapterFileError, BackboneMismatchError
from peftlab.methods.peft_support import PeftMethod
from peftlab.model.loading import build_method_from_spec, load_adapter
from peftlab.model.module import PeftModule
from peftlab.persistence.adapter import (CONFIG_FILE, WEIGHTS_FILE, check_identity, head_options, import_class,
                                         read_adapter_config, read_adapter_weights, shape_mismatches)

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
        if family is None or getattr(method, "rewrites_frozen_weights", False) or not isinstance(method, PeftMethod):
            return None
        return family

    @staticmethod
    def _load_shared(name: str, directory: Path, meta: dict[str, Any], method, backbone: Backbone,
                     identity: dict[str, Any]) -> AdapterView:
        method.adapter_name = name  # PeftModule.__init__ applies the method: it injects as `name`
        view = AdapterView(backbone, method, **head_options(meta))
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
