"""``search`` in a sweep YAML: an Optuna study per method (SQLite in the sweep folder, resumable) on the
validation metric, whose best learning rate (and size) every seed then runs with; results.md names them."""

from __future__ import annotations

import sqlite3

import pytest
import yaml

from peftlab import sweep as sw
from tests.test_sweep import FAST, LORA, PROBE, ROOT, TINY_TASK, rows_of

pytest.importorskip("optuna", reason="optuna is in the 'cluster' extra (part of 'all')")

# two epochs (the pruner sees a value per epoch), three training batches each; a trial is a fit, no test
SEARCH = {"trials": 3, "lr": [1.0e-4, 1.0], "size": [1, 8], "metric": "auroc", "seed": 0,
          "overrides": {"trainer.max_epochs": 2}}


def write(path, output, search, methods=None):
    spec = {"root": str(ROOT), "output": str(output), "seeds": [0, 1], "overrides": FAST, "tasks": [TINY_TASK],
            "methods": methods or [LORA, PROBE], "search": search}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def trial_counts(db):
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from trials").fetchone()[0]


def test_a_search_tunes_each_method_and_the_seeds_run_with_the_winner(tmp_path):
    config = write(tmp_path / "grid.yaml", tmp_path / "out", SEARCH)
    sweep = sw.load_sweep(config)
    assert sweep.search.size_options == {"lora": "r", "linear_probe": None}  # the probe has no size
    sw.run_sweep(sweep)
    found = sweep.search_outcomes
    lora, probe = found[("motif", "", "lora")], found[("motif", "", "linear_probe")]
    assert lora.trials == probe.trials == 3 and set(lora.best_params) == {"lr", "size"} and \
        set(probe.best_params) == {"lr"}
    assert lora.best_params["lr"] != probe.best_params["lr"]  # each method its own rate (a sampler seed per study)
    for row in rows_of(tmp_path / "out"):  # every seed ran with its method's winner, and was tested
        assert row["status"] == "ok" and row["seed"] in ("0", "1")
        cell_args = (tmp_path / "out" / "cells" / f"motif__{row['method']}__seed{row['seed']}" / "cell.json").read_text()
        best = (lora if row["method"] == "lora" else probe).best_params
        assert f"--model.lr={best['lr']}" in cell_args
        if row["method"] == "lora":
            assert f"--model.method.init_args.r={best['size']}" in cell_args
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Optuna study of up to 3 trials" in md and "val/auroc" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| lora | 3 ("))
    assert f"{lora.best_params['lr']:.3g}" in line and f"r={lora.best_params['size']}" in line
    line = next(ln for ln in md.splitlines() if ln.startswith("| linear_probe | 3 ("))
    assert f"{probe.best_params['lr']:.3g}" in line and line.endswith("| - |")
    # resumable: a bigger budget continues the stored studies; the cells run again only if the winner changed
    more = write(tmp_path / "grid.yaml", tmp_path / "out", {**SEARCH, "trials": 4}, methods=[PROBE])
    sweep = sw.load_sweep(more)
    sw.run_sweep(sweep, dry_run=True)  # a dry run reads the studies, runs no trial
    assert trial_counts(tmp_path / "out" / "search" / "motif__linear_probe.db") == 3
    sweep = sw.load_sweep(more)
    sw.run_sweep(sweep)
    assert trial_counts(tmp_path / "out" / "search" / "motif__linear_probe.db") == 4
    assert sweep.search_outcomes[("motif", "", "linear_probe")].trials == 4


def test_search_errors_name_the_key(tmp_path):
    bad = {**SEARCH, "size_options": {"lora": "rank"}}
    with pytest.raises(sw.SweepConfigError, match=r"search.size_options.lora: LoRA has no option 'rank'; its "
                                                  r"options: r, alpha"):
        sw.load_sweep(write(tmp_path / "a.yaml", tmp_path / "out", bad))
    with pytest.raises(sw.SweepConfigError, match=r"search: method\(s\) \['dora'\] are not among"):
        sw.load_sweep(write(tmp_path / "b.yaml", tmp_path / "out", {**SEARCH, "methods": ["dora"]}))
    with pytest.raises(sw.SweepConfigError, match="name no metric"):
        sw.load_sweep(write(tmp_path / "c.yaml", tmp_path / "out", {k: v for k, v in SEARCH.items() if k != "metric"}))
    with pytest.raises(sw.SweepConfigError, match=r"search.lr: expected \[low, high\]"):
        sw.load_sweep(write(tmp_path / "d.yaml", tmp_path / "out", {**SEARCH, "lr": [0.1, 0.001]}))
