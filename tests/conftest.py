"""Shared fixtures: tiny backbones of both token layouts, batches for them,
and the real-data folder (``PEFTLAB_DATA``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from peftlab.toy import ToyTransformer
from peftlab_protein import ESM2Backbone

# name -> (factory, kwargs that differ between "the same" and "another" backbone)
TINY_ESM = dict(num_layers=2, embed_dim=32, attention_heads=4)
TINY_TOY = dict(dim=32, depth=2, heads=4, mlp_ratio=2)


def make_backbone(kind: str, seed: int = 0):
    if kind == "esm2":
        return ESM2Backbone(**TINY_ESM, seed=seed)
    if kind == "toy":
        return ToyTransformer(**TINY_TOY, seed=seed)
    raise ValueError(kind)


def make_batch(kind: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    if kind == "esm2":
        alphabet = ESM2Backbone(**TINY_ESM).alphabet
        seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLE", "MVLSPADKTNVKAAW"]
        _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(seqs)])
    else:
        tokens = torch.randint(1, 33, (3, 14), generator=g)
        tokens[1, 9:] = 0  # padding
    return {"tokens": tokens, "labels": torch.tensor([0.5, -1.0, 2.0]), "ids": ["a", "b", "c"]}


BACKBONE_KINDS = ["esm2", "toy"]


@pytest.fixture
def data_root() -> Path:
    root = os.environ.get("PEFTLAB_DATA")
    if not root:
        pytest.skip("PEFTLAB_DATA is not set: the real data sets live in ../shared/data (make test sets it)")
    path = Path(root)
    if not path.is_dir():
        pytest.fail(f"PEFTLAB_DATA={root} is not a directory")
    return path


# ---- hypothesis: one fixed profile, so that property tests draw the same examples on every run
# and machine (derandomize), keep no example database, and leave hangs to the tests' own time
# guard (a wall-clock deadline would make results depend on the load of a shared CI machine).
# HYPOTHESIS_PROFILE=explore draws fresh random examples on every run, also with no database (a
# failure prints the example and a @reproduce_failure blob), and tests.hostile.examples() scales
# each property test's count by PEFTLAB_FUZZ_SCALE (default 10 when exploring): `make fuzz` runs
# the property tests (marker `hostile`) that way; `make test` ends with one fresh pass at 1x.
# A bug it finds gets a fix and a named example in tests/test_loader_regressions.py.
def pytest_configure(config):
    config.addinivalue_line("markers", "hostile: a hostile-input property test (make fuzz explores with them)")


try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # hypothesis is in the dev extra; the property tests import it themselves
    pass
else:
    _hypothesis_settings.register_profile("peftlab", derandomize=True, database=None, deadline=None,
                                          print_blob=True)
    _hypothesis_settings.register_profile("explore", derandomize=False, database=None, deadline=None,
                                          print_blob=True)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "peftlab"))
