"""``peftlab sweep``: a grid of real CLI runs, one subprocess per cell, written
to results.csv / results.md / plots; resumable after a kill or a deleted row;
a failing cell is recorded and does not stop the sweep; every paper YAML
lists its cells; ``peftlab fit`` still works next to the ``sweep`` dispatch.

The runs use the toy sizes of tests/test_training.py (a 2 x 32 ESM-2, 40
sequences, 3 training steps), so each cell costs mostly its process start.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from peftlab import sweep as sw
from peftlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper"
TINY_TASK = {
    "name": "motif",
    "configs": ["configs/protein/backbones/esm2_tiny.yaml", "configs/protein/data/synthetic_motif.yaml"],
    "overrides": {"model.backbone.init_args.num_layers": 2, "model.backbone.init_args.embed_dim": 32,
                  "model.backbone.init_args.attention_heads": 4, "data.init_args.num_sequences": 40,
                  "data.init_args.batch_size": 8},
}
FAST = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 3, "trainer.limit_val_batches": 1,
        "trainer.accelerator": "cpu", "trainer.enable_model_summary": False}
LORA = {"name": "lora", "configs": ["configs/methods/lora.yaml"], "overrides": {"model.method.init_args.r": 2}}
PROBE = {"name": "linear_probe", "configs": ["configs/methods/linear_probe.yaml"]}


def write_sweep(path: Path, output: Path, methods: list[dict], seeds: list[int]) -> Path:
    spec = {"root": str(ROOT), "output": str(output), "seeds": seeds, "overrides": FAST,
            "tasks": [TINY_TASK], "methods": methods}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def rows_of(output: Path) -> list[dict[str, str]]:
    with open(output / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def result_mtimes(output: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (output / "cells").glob("*/result.json")}


def sweep_processes(output: Path) -> list[int]:
    import psutil
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:  # a cold cell names its folder on its command line; a warm (forked) one has its log open
            if (any(str(output) in part for part in proc.info["cmdline"] or [])
                    or any(str(output) in f.path for f in proc.open_files())):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory) -> dict:
    """A 2-method x 1-task x 2-seed sweep, killed (SIGKILL) as soon as its first
    cell is in results.csv, then run again to the end in this process."""
    tmp = tmp_path_factory.mktemp("sweep")
    output = tmp / "out"
    config = write_sweep(tmp / "grid.yaml", output, [LORA, PROBE], [0, 1])
    with open(tmp / "first.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "peftlab.cli", "sweep", "--config", str(config)],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (output / "results.csv").is_file() and rows_of(output):
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"the sweep ended before it could be killed:\n{(tmp / 'first.log').read_text()}"
        proc.kill()
        proc.wait()
    first_rows = rows_of(output)
    first_mtimes = result_mtimes(output)
    deadline = time.monotonic() + 10  # the running cell dies with its parent (PR_SET_PDEATHSIG)
    while sweep_processes(output) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = sweep_processes(output)
    report = sw.run_sweep(sw.load_sweep(config))
    return {"config": config, "output": output, "first_rows": first_rows, "first_mtimes": first_mtimes,
            "orphans": orphans, "report": report}


def test_sweep_writes_results_csv_tables_and_plots(killed_then_resumed):
    output = killed_then_resumed["output"]
    rows = rows_of(output)
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("linear_probe", "0"), ("linear_probe", "1"), ("lora", "0"), ("lora", "1")]
    for r in rows:
        assert r["status"] == "ok" and r["error"] == "" and r["task"] == "motif"
        assert r["primary_metric"] == "test/auroc" and 0.0 <= float(r["primary_value"]) <= 1.0
        assert float(r["test/auroc"]) == float(r["primary_value"]) and "test/accuracy" in r
        assert 0.0 < float(r["trainable_share"]) <= 1.0
        assert int(r["trainable_params"]) > 0 and int(r["adapter_bytes"]) > 0
        assert float(r["peak_memory_mb"]) > 0 and r["peak_memory_kind"] in ("cpu_peak_rss", "cuda_max_allocated")
        assert float(r["ms_per_step"]) > 0 and float(r["samples_per_s"]) > 0 and float(r["fit_seconds"]) > 0
        run_dir = output / r["run_dir"]
        assert (run_dir / "adapter" / "adapter.safetensors").stat().st_size == int(r["adapter_bytes"])
        assert run_dir.parent.parent.name == f"motif__{r['method']}__seed{r['seed']}"
    by_method = {r["method"]: r for r in rows}
    assert int(by_method["linear_probe"]["trainable_params"]) < int(by_method["lora"]["trainable_params"])
    md = (output / "results.md").read_text()
    assert "## motif" in md and "test/auroc" in md
    for method in ("lora", "linear_probe"):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {method} |"))
        assert " ± " in line and "(n=2)" in line
    for name in ("motif_pareto.png", "motif_cost.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert killed_then_resumed["report"].markdown == output / "results.md"


def test_a_killed_sweep_restarts_with_only_the_missing_cells(killed_then_resumed):
    first_rows, report = killed_then_resumed["first_rows"], killed_then_resumed["report"]
    assert len(first_rows) == 1 and first_rows[0]["status"] == "ok"  # results.csv intact after SIGKILL
    done = f"motif__{first_rows[0]['method']}__seed{first_rows[0]['seed']}"
    assert report.skipped == [done]
    assert sorted(report.launched) == sorted({"motif__lora__seed0", "motif__lora__seed1",
                                              "motif__linear_probe__seed0", "motif__linear_probe__seed1"} - {done})
    assert result_mtimes(killed_then_resumed["output"])[done] == killed_then_resumed["first_mtimes"][done]
    assert killed_then_resumed["orphans"] == [], "the killed sweep left its running cell behind"


def test_rerun_after_deleting_a_row_runs_only_that_cell(killed_then_resumed):
    output = killed_then_resumed["output"]
    before = result_mtimes(output)
    rows = rows_of(output)
    kept = [r for r in rows if not (r["method"] == "lora" and r["seed"] == "1")]
    sw.write_results(output / "results.csv", kept)
    report = sw.run_sweep(sw.load_sweep(killed_then_resumed["config"]))
    assert report.launched == ["motif__lora__seed1"] and len(report.skipped) == 3
    after = result_mtimes(output)
    assert after["motif__lora__seed1"] != before["motif__lora__seed1"]
    assert {k: v for k, v in after.items() if k != "motif__lora__seed1"} == \
           {k: v for k, v in before.items() if k != "motif__lora__seed1"}
    assert [r["status"] for r in rows_of(output)] == ["ok"] * 4


def test_a_failing_cell_is_recorded_with_its_error_and_the_others_run(tmp_path, capsys):
    bad_target = {"name": "lora-bad-target", "configs": ["configs/methods/lora.yaml"],
                  "overrides": {"model.method.init_args.targets": ["no_such.module"]}}
    config = write_sweep(tmp_path / "grid.yaml", tmp_path / "out", [bad_target, PROBE], [0])
    assert main(["sweep", "--config", str(config)]) == 1  # the sweep finishes, and says a cell failed
    rows = {r["method"]: r for r in rows_of(tmp_path / "out")}
    assert rows["linear_probe"]["status"] == "ok" and float(rows["linear_probe"]["adapter_bytes"]) > 0
    bad = rows["lora-bad-target"]
    assert bad["status"] == "failed" and bad["primary_value"] == ""
    assert bad["error"].startswith("ValueError:") and "no_such.module" in bad["error"] and "\n" not in bad["error"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| lora-bad-target | failed: ValueError:" in md and "| linear_probe | " in md
    out = capsys.readouterr().out
    assert "[2/2]" in out and "ETA" in out and "FAILED" in out


def test_a_cell_with_a_bad_override_records_the_cli_error(tmp_path):
    # what the child process does, run here: the CLI's argument error (a SystemExit) becomes the cell's error
    config = write_sweep(tmp_path / "grid.yaml", tmp_path / "out", [
        {"name": "bad", "configs": ["configs/methods/lora.yaml"],
         "overrides": {"model.method.init_args.r": "not-a-number"}}], [0])
    (cell,) = sw.load_sweep(config).cells()
    cell_dir = tmp_path / "cell"
    cell_dir.mkdir()
    (cell_dir / "cell.json").write_text(json.dumps({"label": cell.label, "args": list(cell.args)}))
    assert sw.run_cell(cell_dir) == 1
    result = json.loads((cell_dir / "result.json").read_text())
    # the parser's one-line error (no usage text), as the child's stderr ends with it
    assert result["status"] == "failed" and ": error: " in result["error"]
    assert "not-a-number" in result["error"] and "\n" not in result["error"] and "usage:" not in result["error"]


EXPECTED_CELLS = {
    "demo_cpu.yaml": 18,                                             # 3 tasks x 6 methods x 1 seed
    "demo_search_cpu.yaml": 24,                                      # 2 tasks x 4 methods x 3 seeds, each method tuned first
    "sledzieski2024.yaml": 18, "sledzieski2024_cpu.yaml": 18,        # 2 tasks x 1 x 3 methods x 3 seeds
    "schmirler2024.yaml": 18, "schmirler2024_cpu.yaml": 18,          # 2 tasks x 1 x 3 methods x 3 seeds
    "melo2024.yaml": 9, "melo2024_cpu.yaml": 9,                      # 1 x 1 x 3 methods x 3 seeds
    "dutt2023_medical.yaml": 36, "dutt2023_medical_cpu.yaml": 36,    # (2 backbones x 7 methods - 2) x 3 seeds
    "chen2022_speech.yaml": 24, "chen2022_speech_cpu.yaml": 24,      # 2 tasks x 4 methods x 3 seeds
    "chen2022_asr.yaml": 12, "chen2022_asr_cpu.yaml": 4,             # 1 task x 4 methods x 3 seeds / 1 seed
    "method_catalogue_cpu.yaml": 3 * 31,                             # 3 tasks x every method config but QLoRA
    "msd_segmentation_cpu.yaml": 4,                                  # 1 x 1 x 4 methods x 1 seed
}


def test_every_paper_config_has_an_expected_cell_count():
    assert sorted(p.name for p in PAPER.glob("*.yaml")) == sorted(EXPECTED_CELLS)


@pytest.mark.parametrize("name", sorted(EXPECTED_CELLS))
def test_dry_run_lists_the_cells_of_every_paper_config(name, tmp_path, capsys):
    assert main(["sweep", "--config", str(PAPER / name), "--dry-run", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    n = EXPECTED_CELLS[name]
    # the plan's header (after a search's study lines, for a config with a search block)
    assert f": {n} cells (" in next(ln for ln in out.splitlines() if not ln.startswith("search "))
    listed = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert len(listed) == n and listed[-1].startswith(f"[{n}/{n}]")
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    sweep = sw.load_sweep(PAPER / name)
    assert len({c.dirname for c in sweep.cells()}) == n
    if name.endswith("_cpu.yaml"):  # the offline variants need no data path and no GPU config
        assert all("/path/to" not in a and "gpu.yaml" not in a for c in sweep.cells() for a in c.args)
    # every task, backbone and method entry once through the real CLI's parser (no weights, no data needed)
    seen: set[tuple[str, str]] = set()
    for cell in sweep.cells():
        keys = {("task", cell.task), ("backbone", cell.backbone), ("method", cell.method)}
        if keys <= seen:
            continue
        seen |= keys
        with pytest.raises(SystemExit) as exit_:
            main(["fit", *cell.args, "--print_config"])
        assert exit_.value.code in (0, None), f"{cell.label}: {capsys.readouterr().err[-2000:]}"


def test_sweep_config_errors_name_the_problem(tmp_path):
    config = write_sweep(tmp_path / "grid.yaml", tmp_path / "out", [LORA, dict(LORA)], [0])
    with pytest.raises(sw.SweepConfigError, match="duplicate name 'lora'"):
        sw.load_sweep(config)
    config = write_sweep(tmp_path / "grid.yaml", tmp_path / "out", [{"name": "x", "configs": ["nope.yaml"]}], [0])
    with pytest.raises(sw.SweepConfigError, match="nope.yaml not found"):
        sw.load_sweep(config)
    spec = yaml.safe_load(config.read_text()) | {"methods": [LORA], "epochs": 3}
    config.write_text(yaml.safe_dump(spec))
    with pytest.raises(sw.SweepConfigError, match="unknown key"):
        sw.load_sweep(config)
    with pytest.raises(SystemExit):  # the command line reports it as a usage error
        main(["sweep", "--config", str(config), "--dry-run"])


def test_cell_arguments_compose_configs_overrides_and_seeds(tmp_path):
    config = write_sweep(tmp_path / "grid.yaml", tmp_path / "out", [LORA], [3])
    (cell,) = sw.load_sweep(config).cells()
    args = list(cell.args)
    configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    assert [Path(c).name for c in configs] == ["esm2_tiny.yaml", "synthetic_motif.yaml", "lora.yaml"]
    assert args.index("--trainer.max_epochs=1") < args.index("--model.method.init_args.r=2")  # global, then method
    assert args[-2:] == ["--seed_everything=3", "--data.init_args.seed=3"]
    assert cell.dirname == "motif__lora__seed3"
    assert sw.format_value(True) == "true" and sw.format_value(None) == "null"
    assert sw.format_value(["a.b"]) == '["a.b"]'


def test_pareto_front():
    points = [(0.001, 0.7), (0.01, 0.9), (0.02, 0.85), (1.0, 0.95), (0.5, 0.95)]
    assert sw.pareto_front(points) == [0, 1, 4]
    assert sw.pareto_front([(0.1, 2.0), (0.2, 1.0)], lower_better=True) == [0, 1]
    assert sw.lower_is_better("test/mse") and not sw.lower_is_better("test/auroc")


def test_peftlab_fit_still_runs_next_to_the_sweep_dispatch(tmp_path):
    assert main(["fit", "--config", str(ROOT / "configs/protein/backbones/esm2_tiny.yaml"),
                 "--config", str(ROOT / "configs/methods/lora.yaml"),
                 "--config", str(ROOT / "configs/protein/data/synthetic_motif.yaml"),
                 "--model.backbone.init_args.num_layers=2", "--model.backbone.init_args.embed_dim=32",
                 "--data.init_args.num_sequences=40", "--data.init_args.batch_size=8",
                 "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu",
                 f"--trainer.default_root_dir={tmp_path}"]) is None
    assert (next(tmp_path.rglob("adapter")) / "adapter.safetensors").is_file()



def _self_killer():
    import lightning as L

    class SelfKiller(L.Callback):
        """SIGKILLs its own process as training starts (what an out-of-memory kill does)."""

        def on_train_start(self, trainer, pl_module):
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

    SelfKiller.__module__, SelfKiller.__qualname__ = __name__, "SelfKiller"
    return SelfKiller


SelfKiller = _self_killer()


MODES = {"warm": [], "cold": ["--cold"], "two at once": ["--parallel-cells", "2"]}


@pytest.mark.parametrize("mode", MODES)
def test_cells_fork_from_a_warm_worker_and_a_killed_cell_ends_only_itself(tmp_path, mode):
    """Warm (default): the cells find peftlab imported; a cell SIGKILLed mid-run is recorded as such
    and the next cell still runs. ``--cold``: new interpreters, same outcome; two cells at once: same."""
    cold = mode == "cold"
    kill = tmp_path / "kill.yaml"
    kill.write_text("trainer:\n  callbacks:\n    - class_path: tests.test_sweep.SelfKiller\n")
    killed = {"name": "killed", "configs": ["configs/methods/lora.yaml", str(kill)]}
    config = write_sweep(tmp_path / "grid.yaml", tmp_path / "out", [killed, PROBE], [0])
    assert main(["sweep", "--config", str(config), *MODES[mode]]) == 1
    rows = {r["method"]: r for r in rows_of(tmp_path / "out")}
    assert rows["killed"]["status"] == "failed" and "killed by signal SIGKILL" in rows["killed"]["error"]
    assert rows["linear_probe"]["status"] == "ok"
    result = json.loads(next((tmp_path / "out" / "cells").glob("*linear_probe*/result.json")).read_text())
    assert result["preloaded"] is (not cold)


def _sleeper():
    import lightning as L

    class Sleeper(L.Callback):
        """Writes its pid beside the sweep's config (``PEFTLAB_TEST_PID_FILE``), then hangs as training starts."""

        def on_train_start(self, trainer, pl_module):
            import os
            import time

            with open(os.environ["PEFTLAB_TEST_PID_FILE"], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)

    Sleeper.__module__, Sleeper.__qualname__ = __name__, "Sleeper"
    return Sleeper


Sleeper = _sleeper()


@pytest.mark.parametrize("mode", MODES)
def test_a_cell_past_its_timeout_is_killed_and_recorded(tmp_path, monkeypatch, mode):
    """A hanging cell is killed at ``cell_timeout_s`` (not waited out), recorded as timed out, and gone."""
    pid_file = tmp_path / "cell.pid"
    monkeypatch.setenv("PEFTLAB_TEST_PID_FILE", str(pid_file))
    hang = tmp_path / "hang.yaml"
    hang.write_text("trainer:\n  callbacks:\n    - class_path: tests.test_sweep.Sleeper\n")
    config = write_sweep(tmp_path / "grid.yaml", tmp_path / "out",
                         [{"name": "hangs", "configs": ["configs/methods/lora.yaml", str(hang)]}], [0])
    spec = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**spec, "cell_timeout_s": 30}, sort_keys=False))
    assert main(["sweep", "--config", str(config), *MODES[mode]]) == 1
    (row,) = rows_of(tmp_path / "out")
    assert row["status"] == "failed" and row["error"] == "timed out after 30 s (cell_timeout_s)"
    pid = int(pid_file.read_text())  # the cell reached training, then hung until killed
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _rendezvous():
    import lightning as L

    class Rendezvous(L.Callback):
        """As training starts, writes its pid into ``PEFTLAB_TEST_RENDEZVOUS`` and waits (up to 60 s) until
        another cell has written its own: it passes only when two cells train at the same time."""

        def on_train_start(self, trainer, pl_module):
            import os
            import time
            from pathlib import Path

            folder = Path(os.environ["PEFTLAB_TEST_RENDEZVOUS"])
            (folder / str(os.getpid())).write_text("")
            deadline = time.monotonic() + 60
            while len(list(folder.iterdir())) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("no other cell trained at the same time")
                time.sleep(0.1)

    Rendezvous.__module__, Rendezvous.__qualname__ = __name__, "Rendezvous"
    return Rendezvous


Rendezvous = _rendezvous()


def test_parallel_cells_run_at_the_same_time_and_record_like_one_after_another(tmp_path, monkeypatch, capsys):
    """``parallel_cells: 2``: two cells train at once (each waits for the other in a callback, which fails
    one after another), the third runs when one ends; the rows, statuses and table are as sequential
    runs write them, and results.md says the cost columns were measured sharing the machine."""
    meet = tmp_path / "meet"
    meet.mkdir()
    monkeypatch.setenv("PEFTLAB_TEST_RENDEZVOUS", str(meet))
    both = tmp_path / "meet.yaml"
    both.write_text("trainer:\n  callbacks:\n    - class_path: tests.test_sweep.Rendezvous\n")
    methods = [{**LORA, "configs": [*LORA["configs"], str(both)]}, {**PROBE, "configs": [*PROBE["configs"], str(both)]},
               {"name": "bitfit", "configs": ["configs/methods/bitfit.yaml"]}]
    config = write_sweep(tmp_path / "grid.yaml", tmp_path / "out", methods, [0])
    spec = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**spec, "parallel_cells": 2}, sort_keys=False))
    assert main(["sweep", "--config", str(config)]) == 0
    assert len(list(meet.iterdir())) == 2
    rows = {r["method"]: r for r in rows_of(tmp_path / "out")}
    assert sorted(rows) == ["bitfit", "linear_probe", "lora"] and {r["status"] for r in rows.values()} == {"ok"}
    out = capsys.readouterr().out
    assert "2 of 2 at once" in out
    assert "the cells ran 2 at a time, sharing the cores" in (tmp_path / "out" / "results.md").read_text()
    config.write_text(yaml.safe_dump({**spec, "parallel_cells": 0}, sort_keys=False))
    with pytest.raises(SystemExit):
        main(["sweep", "--config", str(config)])
    assert "parallel_cells must be a whole number >= 1, got 0" in capsys.readouterr().err
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(SystemExit):
        main(["sweep", "--config", str(config), "--parallel-cells", "0"])
    assert "--parallel-cells: parallel_cells must be a whole number >= 1, got 0" in capsys.readouterr().err
