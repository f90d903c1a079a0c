"""Importing the core or one domain does not import the other domains' libraries
(issue 16, lean imports): each import runs in a fresh interpreter and its
``sys.modules`` is read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: the libraries only one field needs (transformers also comes with HF peft and with torchmetrics)
FIELD_LIBRARIES = {"protein": {"esm"}, "medical": {"timm", "monai"}, "speech": {"torchaudio", "transformers"}}
OTHERS = {field: set().union(*(libs for f, libs in FIELD_LIBRARIES.items() if f != field)) for field in FIELD_LIBRARIES}


def imported_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("code", ["import peftlab", "import peftlab.cli", "import peftlab.sweep",
                                  "import peftlab.catalog"])
def test_the_core_imports_no_field_library(code):
    heavy = {"torch", "lightning", "peft", "submitit", "optuna", "optuna_integration", "mlflow"}  # the sweep's too
    leaked = imported_after(code) & set().union(*FIELD_LIBRARIES.values(), heavy)
    assert leaked == set(), f"{code!r} imports {sorted(leaked)}"


@pytest.mark.parametrize("field", sorted(FIELD_LIBRARIES))
def test_a_domain_package_imports_no_other_fields_library(field):
    leaked = imported_after(f"import peftlab_{field}") & OTHERS[field]
    assert leaked == set(), f"import peftlab_{field} imports {sorted(leaked)}"


@pytest.mark.parametrize("field", ["protein", "medical"])
def test_a_run_of_one_field_imports_no_other_fields_own_library(field):
    """What a fit of one field imports (its classes, every method, the CLI): transformers comes
    with HF peft and torchmetrics whatever the field, the other fields' own libraries do not."""
    code = (f"import peftlab_{field}.backbones, peftlab_{field}.data, peftlab_{field}.synthetic\n"
            "from peftlab.methods import METHODS\nimport peftlab.lightning_cli, peftlab.experiment")
    leaked = imported_after(code) & (OTHERS[field] - {"transformers", "torchaudio"})
    assert leaked == set(), f"a {field} run imports {sorted(leaked)}"
