"""The statistics of results.md: the 95% confidence interval over seeds and the paired
comparison of each method with the baseline (issue 17), on known numbers."""

from __future__ import annotations

import pytest
import yaml

from peftlab import sweep as sw
from peftlab.sweep.statistics import confidence_interval, paired_comparison

from tests.test_sweep import PROBE, ROOT, TINY_TASK

FULL = {"name": "full", "configs": ["configs/methods/full.yaml"]}


def test_the_interval_is_students_t_on_the_mean():
    low, high = confidence_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, df 2) = 4.3027: 2 -+ 4.3027 / sqrt(3)
    assert low == pytest.approx(2 - 2.48419, abs=1e-4) and high == pytest.approx(2 + 2.48419, abs=1e-4)
    assert confidence_interval([0.5]) is None


def test_the_paired_comparison_uses_only_seeds_both_finished():
    method = {0: 0.8, 1: 0.7, 2: 0.9, 7: 0.1}  # seed 7: the baseline has none
    baseline = {0: 0.6, 1: 0.6, 2: 0.7}
    result = paired_comparison(method, baseline)
    # differences 0.2, 0.1, 0.2: mean 1/6, sd 0.0577, t = 5.0 on 2 degrees of freedom: p = 0.0377
    assert result.n == 3 and result.difference == pytest.approx(1 / 6)
    assert result.p_value == pytest.approx(0.0377, abs=1e-4)
    assert paired_comparison({0: 0.9, 1: 0.8}, {0: 0.7, 1: 0.6}).p_value is None  # equal differences: no t
    assert paired_comparison({3: 0.9}, baseline) is None


def rows(method: str, values: dict[int, float]) -> list[dict[str, str]]:
    return [{"task": "motif", "backbone": "", "method": method, "seed": str(s), "status": "ok",
             "primary_metric": "test/auroc", "primary_value": str(v), "trainable_params": "10",
             "trainable_pct_of_backbone": "1.0", "checkpoint": "last"} for s, v in values.items()]


def sweep_with(tmp_path, methods, **extra):
    spec = {"root": str(ROOT), "output": str(tmp_path / "out"), "seeds": [0, 1, 2], "tasks": [TINY_TASK],
            "methods": methods, **extra}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return sw.load_sweep(tmp_path / "grid.yaml")


def test_results_md_shows_the_interval_and_each_method_against_full(tmp_path):
    sweep = sweep_with(tmp_path, [FULL, PROBE])
    assert sweep.baseline == "full"  # the default, when a method is named full
    table = sw.render_markdown(sweep, rows("full", {0: 0.6, 1: 0.6, 2: 0.7}) +
                               rows("linear_probe", {0: 0.8, 1: 0.7, 2: 0.9}))
    assert "| method | auroc | vs full (Δ, p) |" in table
    full = next(ln for ln in table.splitlines() if ln.startswith("| full |"))
    probe = next(ln for ln in table.splitlines() if ln.startswith("| linear_probe |"))
    assert "| baseline |" in full
    assert "0.8000 ± 0.1000, CI [0.5516, 1.0484] (n=3)" in probe and "| +0.1667 (p=0.0377, n=3) |" in probe


def test_the_baseline_is_named_or_absent(tmp_path):
    assert sweep_with(tmp_path, [PROBE]).baseline is None
    table = sw.render_markdown(sweep_with(tmp_path, [PROBE]), rows("linear_probe", {0: 0.8}))
    assert "vs " not in table.split("## motif")[1] and "0.8000 (n=1)" in table
    assert sweep_with(tmp_path, [FULL, PROBE], baseline="linear_probe").baseline == "linear_probe"
    with pytest.raises(sw.SweepConfigError, match="baseline 'lora' is not one of the methods"):
        sweep_with(tmp_path, [FULL, PROBE], baseline="lora")
