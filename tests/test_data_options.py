"""Every option of every DataModule reaches ``--help``, YAML and the command
line, also the ones a subclass passes on to its base with ``**kwargs``
(jsonargparse resolves them from the base's signature)."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest
from jsonargparse import ArgumentParser

from peftlab.catalog import import_domains, known_classes
from peftlab.data import PeftDataModule

import_domains()
DATA_MODULES = known_classes("data")


def declared_options(cls: type) -> set[str]:
    """The named ``__init__`` parameters of ``cls`` and of every base it passes ``**kwargs``
    on to, less those it sets itself in that call (``super().__init__(task_type=..., **kwargs)``)."""
    names: set[str] = set()
    fixed: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or not issubclass(klass, PeftDataModule):
            continue
        params = inspect.signature(klass.__init__).parameters
        names |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                  and n not in fixed}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break  # a class that names all its arguments does not pass any on
        fixed |= _set_in_super_call(klass)
    return names


def _set_in_super_call(klass: type) -> set[str]:
    """Keyword arguments ``klass.__init__`` gives its base explicitly."""
    if "__init__" not in vars(klass):
        return set()
    tree = ast.parse(textwrap.dedent(inspect.getsource(klass.__init__)))
    return {kw.arg for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "__init__"
            for kw in node.keywords if kw.arg is not None}


def test_every_domain_data_module_is_covered():
    assert len(DATA_MODULES) >= 11
    assert {"peftlab_protein.data.ProteinDataModule", "peftlab_medical.data.MedMNISTDataModule",
            "peftlab_speech.data.FSDDDataModule"} <= set(DATA_MODULES)


@pytest.mark.parametrize("path", sorted(DATA_MODULES))
def test_every_option_of_every_data_module_parses(path):
    cls = DATA_MODULES[path]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(PeftDataModule, "data")
    parsed = {a.dest.removeprefix("data.init_args.") for a in _subclass_actions(parser, path)}
    expected = declared_options(cls)
    assert {"batch_size", "num_workers", "seed", "predict_split"} <= expected
    assert expected - parsed == set(), f"{path}: options missing from the CLI: {sorted(expected - parsed)}"


def _subclass_actions(parser: ArgumentParser, path: str):
    """The arguments jsonargparse gives ``--data PATH`` (what ``--data.help PATH`` lists)."""
    sub = ArgumentParser(exit_on_error=False)
    sub.add_class_arguments(DATA_MODULES[path], "data.init_args")
    return [a for a in sub._actions if a.dest.startswith("data.init_args.")]
