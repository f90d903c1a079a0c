"""The distribution: a built wheel holds both source roots, imports on its own
(not through the editable install), and the core never imports a domain."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_built_wheel_contains_and_imports_core_and_domains(tmp_path):
    # setuptools reuses build/lib: a module deleted from the source would stay in the wheel
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("peftlab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "peftlab/model/module.py" in names and "peftlab_protein/backbones/fair_esm.py" in names
    assert not any(n.startswith(("shared/", "domains/", "tests/")) for n in names)
    entry_points = zipfile.ZipFile(wheel).read("peftlab-0.1.0.dist-info/entry_points.txt").decode()
    assert "peftlab = peftlab.cli:console_main" in entry_points
    assert "[peftlab.domains]" in entry_points and "protein = peftlab_protein" in entry_points
    # import from the wheel alone: run outside the repo with the wheel first on the path
    code = "import peftlab, peftlab_protein, peftlab.cli; print(peftlab.__file__); print(peftlab_protein.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True,
                         env={"PYTHONPATH": str(wheel), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert all(str(wheel) in f for f in out), out


def test_core_never_imports_a_domain():
    offenders = []
    for path in (ROOT / "shared" / "peftlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("peftlab_")]
    assert offenders == []
