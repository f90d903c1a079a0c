"""A static audit of Python files for unsafe unpickling, used on the project's own
code by ``tests/test_reliability.py`` and tested on planted files.

Names are resolved through the file's imports first, so an alias does not hide a
call: ``import torch as t; t.load(f)``, ``from torch import load as tl; tl(f)``
and ``from torch.serialization import load`` are all ``torch.load``-family calls.
An unpickling entry point that is referenced without being called right there
(``loader = torch.load``, ``functools.partial(pickle.loads)``, a subclass of
``pickle.Unpickler``, ``getattr(torch, "load")``) is reported as well: the call
it ends up in cannot be checked.

What is reported (see ``ENTRY_POINTS``):

* torch's unpickling loaders (``torch.load``, ``torch.serialization.load``,
  ``torch.hub.load_state_dict_from_url``, ``torch.utils.model_zoo.load_url``)
  without ``weights_only=True``;
* loaders that can run code whatever their arguments: ``torch.hub.load`` (runs a
  repository's ``hubconf.py``), ``torch.jit.load``, ``torch.package``'s
  importer, ``torch.distributed.checkpoint``'s loaders (they unpickle metadata),
  torch's private ``_load`` helpers, ``pickle`` / ``_pickle`` / ``dill`` /
  ``cloudpickle`` / ``joblib`` loaders and unpicklers, ``shelve.open``,
  ``pandas.read_pickle``;
* ``numpy.load`` without ``allow_pickle=False``, and numpy's
  ``lib.format.read_array`` / ``lib.npyio.load`` without it either;
* any ``weights_only=False`` or ``allow_pickle=True`` argument, anywhere;
* torchaudio bundles' ``get_model`` without ``dl_kwargs`` holding
  ``weights_only: True``; transformers' model ``from_pretrained`` (with a
  ``config``) without ``weights_only=True``; fair-esm's own file-reading loaders
  (its hub path unpickles with ``weights_only=False``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

# fully qualified name -> the keyword that must be given as the literal True/False for a call to be safe
# (None: never safe)
ENTRY_POINTS: dict[str, tuple[str, str] | None] = {
    "torch.load": ("weights_only", "True"),
    "torch.serialization.load": ("weights_only", "True"),
    "torch.hub.load_state_dict_from_url": ("weights_only", "True"),
    "torch.utils.model_zoo.load_url": ("weights_only", "True"),
    "torch.hub.load": None,
    "torch.jit.load": None,
    "torch.package.PackageImporter": None,
    "torch.package.package_importer.PackageImporter": None,
    "torch.distributed.checkpoint.load": None,
    "torch.distributed.checkpoint.load_state_dict": None,
    "torch.serialization._load": None,
    "torch.serialization._legacy_load": None,
    "torch._utils._rebuild_tensor": None,
    "numpy.load": ("allow_pickle", "False"),
    "numpy.lib.npyio.load": ("allow_pickle", "False"),
    "numpy.lib.format.read_array": ("allow_pickle", "False"),
    "pandas.read_pickle": None,
    "shelve.open": None,
    **{f"{module}.{name}": None for module in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle")
       for name in ("load", "loads", "Unpickler")},
    "joblib.load": None,
}
UNSAFE_ESM = ("load_model_and_alphabet", "load_model_and_alphabet_hub", "load_model_and_alphabet_local",
              "load_hub_workaround", "load_regression_hub", "_download_model_and_regression_data")


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the fully qualified name it is bound to by an import (anywhere in the file)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:  # import torch.serialization as ser -> ser = torch.serialization
                    names[a.asname] = a.name
                else:  # import torch.serialization binds "torch"
                    root = a.name.split(".")[0]
                    names[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None for anything but a chain of names."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def qualified_name(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = _dotted(node)
    if parts is None:
        return None
    root = aliases.get(parts[0], parts[0])
    return ".".join([root, *parts[1:]])


def _canonical(name: str) -> str:
    # numpy and torch re-export their loaders: numpy.lib.npyio.load is numpy.load's own module, etc.
    return {"numpy.lib._npyio_impl.load": "numpy.lib.npyio.load",
            "torch.hub.load_url": "torch.hub.load_state_dict_from_url"}.get(name, name)


def check_source(source: str, where: str) -> list[str]:
    """Every unsafe unpickling in one file's source, as ``"where:line: what"``."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    problems: list[str] = []
    called: set[int] = set()  # the func nodes of calls (a reference there is checked as a call)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called.add(id(node.func))
            problems += _check_call(node, aliases, f"{where}:{node.lineno}")
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in called \
                and isinstance(getattr(node, "ctx", None), ast.Load):
            name = qualified_name(node, aliases)
            if name is not None and _canonical(name) in ENTRY_POINTS:
                problems.append(f"{where}:{node.lineno}: {_canonical(name)} referenced, not called "
                                f"(the call it ends up in cannot be checked)")
    return problems


def _check_call(node: ast.Call, aliases: dict[str, str], where: str) -> list[str]:
    problems = []
    kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords if k.arg is not None}
    name = qualified_name(node.func, aliases)
    shown = ast.unparse(node.func)
    if name is not None:
        full = _canonical(name)
        if full in ENTRY_POINTS:
            rule = ENTRY_POINTS[full]
            if rule is None:
                problems.append(f"{where}: {shown} ({full}) can run code from the file it reads")
            elif kwargs.get(rule[0]) != rule[1]:
                problems.append(f"{where}: {shown} ({full}) without {rule[0]}={rule[1]}")
        if full == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            target = qualified_name(node.args[0], aliases)
            if target is not None and _canonical(f"{target}.{node.args[1].value}") in ENTRY_POINTS:
                problems.append(f"{where}: getattr reaches {target}.{node.args[1].value}")
        last = full.split(".")[-1]
        if last == "get_model" and "'weights_only': True" not in kwargs.get("dl_kwargs", ""):
            problems.append(f"{where}: {shown} without dl_kwargs weights_only=True")
        if last in UNSAFE_ESM:
            problems.append(f"{where}: {shown} (fair-esm reads the file itself)")
        if last == "from_pretrained" and "model" in full.lower() and "config" in kwargs \
                and kwargs.get("weights_only") != "True":
            problems.append(f"{where}: {shown} without weights_only=True")
    if kwargs.get("weights_only") == "False" or kwargs.get("allow_pickle") == "True":
        problems.append(f"{where}: {shown} with an unsafe loading flag")
    return problems


def check_files(paths: Iterable[Path], root: Path) -> list[str]:
    problems = []
    for path in paths:
        problems += check_source(path.read_text(), str(path.relative_to(root)))
    return problems
