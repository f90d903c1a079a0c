"""What peftlab can be asked for: the registered methods, backbones and data
modules (``peftlab list``), and the check of class names in configs and on
the command line before the CLI parses them, with close-match suggestions.

The core never imports a domain at import time; the domains are found by
name (installed top-level packages ``peftlab_<field>``, each with the same
modules: ``backbones``, ``data``, ``synthetic``) and imported only when a
command needs their classes by short name (``--data MedMNISTDataModule``),
for help and for listings.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import pkgutil
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from peftlab.classpath import public_class_path
from peftlab.errors import ConfigError

#: the modules of a domain package that define its classes (the same in every domain)
DOMAIN_MODULES = ("backbones", "data", "synthetic")
#: config keys whose value is a class of one of peftlab's kinds -> (kind, base class path)
SLOTS = {"model.backbone": ("backbones", "peftlab.backbone.Backbone"),
         "model.method": ("methods", "peftlab.methods.Method"),
         "data": ("data", "peftlab.data.PeftDataModule")}


def domain_packages() -> list[str]:
    """Installed domain packages (``peftlab_protein``, ``peftlab_medical``, ...), sorted: the
    ``peftlab.domains`` entry points (which editable installs and wheels both register)."""
    return sorted({ep.value for ep in importlib.metadata.entry_points(group="peftlab.domains")})


def import_domains() -> list[str]:
    """Import every domain's class modules, so that their backbones and data
    modules are known by short name; returns the packages imported. A domain
    whose optional dependencies are missing is skipped (its classes are then
    unknown, which the error for an unknown name says). Names a module exports
    lazily (``__all__`` served by a module ``__getattr__``, e.g. the protein
    domain's transformers backbone) are imported here too."""
    imported = []
    for package in domain_packages():
        try:
            for module in DOMAIN_MODULES:
                if importlib.util.find_spec(f"{package}.{module}") is not None:
                    loaded = importlib.import_module(f"{package}.{module}")
                    for name in getattr(loaded, "__all__", ()):  # classes a module imports when first named
                        getattr(loaded, name)
            imported.append(package)
        except ImportError:
            continue
    return imported


SLOTS_BY_KIND = {kind: base for kind, base in SLOTS.values()}


def _base(kind: str) -> type:
    module, _, name = SLOTS_BY_KIND[kind].rpartition(".")
    return getattr(importlib.import_module(module), name)


def _subclasses(base: type) -> Iterator[type]:
    seen: set[type] = set()
    stack = list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        yield cls


def known_classes(kind: str) -> dict[str, type]:
    """``{"module.Class": class}`` of the concrete peftlab classes of a kind
    (``backbones``, ``methods``, ``data``), the import path a config would use
    (the shortest public one: ``peftlab_protein.ESM2Backbone``)."""
    base = _base(kind)
    found: dict[str, type] = {}
    for cls in _subclasses(base):
        top = cls.__module__.split(".")[0]
        if (top != "peftlab" and not top.startswith("peftlab_")) or cls.__name__.startswith("_"):
            continue
        if kind == "methods" and getattr(cls, "name", None) in (None, "method"):
            continue
        found[public_class_path(cls)] = cls
    return dict(sorted(found.items()))


def first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ").strip()


def listing(kinds: Sequence[str] = ("methods", "backbones", "data")) -> str:
    """The text of ``peftlab list``: one line per registered method, backbone and data module."""
    import_domains()
    lines: list[str] = []
    for kind in kinds:
        if kind == "methods":
            from peftlab.methods import METHODS

            lines.append("methods (model.method; configs/methods/*.yaml):")
            for name, cls in sorted(METHODS.items()):
                lines.append(f"  {name:<14} {public_class_path(cls):<34} {_clip(first_line(cls))}")
        else:
            title = {"backbones": "backbones (model.backbone; configs/<field>/ backbone files):",
                     "data": "data modules (data; configs/<field>/ data files):"}[kind]
            lines.append(title)
            for path, cls in known_classes(kind).items():
                lines.append(f"  {path:<52} {_clip(first_line(cls))}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _clip(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# ---- class names in configs and on the command line ----------------------------------------------

def class_references(argv: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(source, key, class name)`` for every class a command line names, in its
    ``--config`` files (every ``class_path``, and plain names in the slots of
    :data:`SLOTS`) and its own arguments (``--model.method NAME``,
    ``--KEY.class_path NAME``, ``--data NAME``)."""
    refs: list[tuple[str, str, str]] = []
    args = list(argv)
    for i, arg in enumerate(args):
        key, value = _option(args, i)
        if key is None:
            continue
        if key in ("config", "c"):
            refs += _config_references(value)
        elif key.endswith(".class_path"):
            refs.append(("the command line", key.removesuffix(".class_path"), value))
        elif key in SLOTS and value and not value.lstrip().startswith(("{", "[")) and _looks_like_class(value):
            refs.append(("the command line", key, value))
    return refs


def _option(args: list[str], i: int) -> tuple[str | None, str]:
    arg = args[i]
    if not arg.startswith("-") or arg in ("-", "--"):
        return None, ""
    name = arg.lstrip("-")
    if "=" in name:
        name, value = name.split("=", 1)
        return name, value
    if i + 1 < len(args) and not args[i + 1].startswith("--"):
        return name, args[i + 1]
    return None, ""


def _looks_like_class(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_][\w.]*", value)) and value.split(".")[-1][:1].isupper()


def _config_references(path: str) -> list[tuple[str, str, str]]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return []  # the CLI reports an unreadable config itself
    refs: list[tuple[str, str, str]] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("class_path"), str):
                refs.append((path, key, node["class_path"]))
            for k, v in node.items():
                if k != "class_path":
                    walk(v, f"{key}.{k}" if key and k != "init_args" else (key if k == "init_args" else str(k)))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, str) and key in SLOTS and _looks_like_class(node):
            refs.append((path, key, node))

    walk(data, "")
    return refs


def needs_domain_classes(argv: Sequence[str]) -> bool:
    """Whether a command line needs the domains' classes by short name: help,
    a class named without its module, or ``--KEY.help NAME``."""
    args = list(argv)
    if any(a in ("-h", "--help") or a.startswith("--print_config") for a in args):
        return True
    if any(a.split("=", 1)[0].endswith(".help") for a in args if a.startswith("--")):
        return True
    return any("." not in name for _, _, name in class_references(args))


def check_class_references(argv: Sequence[str]) -> None:
    """Raise a :class:`ConfigError` for the first class that a command line or
    its configs name and that does not exist, with the closest names that do
    (``peftlab.methods.LoRa`` -> ``peftlab.methods.LoRA``), before the CLI
    parses anything (its own error is a long usage text without suggestions)."""
    refs = class_references(argv)
    if any("." not in name for _, _, name in refs):
        import_domains()
    for source, key, name in refs:
        problem = _unknown_class(key, name)
        if problem:
            raise ConfigError(f"{source}: {key}: {problem}")


def _unknown_class(key: str, name: str) -> str | None:
    kind = SLOTS[key][0] if key in SLOTS else None
    if "." not in name:
        if kind is None:
            return None  # a short name in another slot (trainer.callbacks...): Lightning's CLI resolves it
        known = known_classes(kind) if kind != "methods" else _method_classes()
        if any(path.rsplit(".", 1)[-1] == name for path in known):
            return None
        return _unknown(name, kind, known)
    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        candidates = domain_packages() + ["peftlab"] + [f"peftlab.{m.name}" for m in pkgutil.iter_modules(
            importlib.import_module("peftlab").__path__)]
        close = difflib.get_close_matches(module_name, candidates, n=2, cutoff=0.75)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"cannot import the module of {name!r} ({type(e).__name__}: {e}){hint}"
    if isinstance(getattr(module, attr, None), type):
        return None
    known: dict[str, type] = {}
    if kind is not None:
        if module_name.split(".")[0].startswith("peftlab_") or kind == "data":
            import_domains()
        known = known_classes(kind) if kind != "methods" else _method_classes()
    own = {f"{module_name}.{n}": v for n, v in vars(module).items() if isinstance(v, type)}
    return _unknown(name, kind, {**own, **known})


def _method_classes() -> dict[str, type]:
    from peftlab.methods import METHODS

    return {public_class_path(cls): cls for cls in METHODS.values()}


def _unknown(name: str, kind: str | None, known: dict[str, type]) -> str:
    short = {path.rsplit(".", 1)[-1]: path for path in known}
    by_lower = {k.lower(): v for k, v in short.items()}
    close = ([by_lower[name.rsplit(".", 1)[-1].lower()]] if name.rsplit(".", 1)[-1].lower() in by_lower else [])
    close = close or difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    close = close or [short[s] for s in difflib.get_close_matches(name.rsplit(".", 1)[-1], list(short), n=3,
                                                                   cutoff=0.6)]
    hint = f"; did you mean {' or '.join(dict.fromkeys(close))}?" if close else ""
    listing_hint = f" ('peftlab list {kind}' shows every one)" if kind else ""
    return f"no class {name!r}{hint}{listing_hint}"
