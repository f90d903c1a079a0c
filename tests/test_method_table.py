"""The README's method table is generated from the code, and stays so."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab import METHODS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_method_table_is_what_the_code_generates():
    # builds every method config on ESM-2 35M, ViT-S and wav2vec2 base (random init): ~1 min on 2 cores
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "method_table.py"), "--check"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_registry_holds_the_whole_catalogue_each_with_a_config():
    assert len(METHODS) >= 20
    configured = {line.split("class_path: peftlab.methods.")[1].strip()
                  for p in (ROOT / "configs" / "methods").glob("*.yaml")
                  for line in p.read_text().splitlines() if "class_path: peftlab.methods." in line}
    assert {cls.__name__ for cls in METHODS.values()} <= configured
    for name, cls in METHODS.items():
        assert cls.family != "other" and cls.trains, f"{name}: give it a family and a 'trains' line"
        docs = " ".join(c.__doc__ or "" for c in cls.__mro__)  # options may be documented by the parent (LoRA)
        undocumented = [p for p in inspect.signature(cls.__init__).parameters if p != "self" and p not in docs]
        assert not undocumented, f"{name}: document its options {undocumented} in the class docstring"
