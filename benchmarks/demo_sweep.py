"""``make demo``'s sweep (configs/paper/demo_cpu.yaml, 18 cells) run three ways, one after another in one
run of this script (issue 16's "make demo at most half its time", old vs new on one machine):

* ``cold, 1 at a time``: every cell a new interpreter that imports everything again (``--cold``; how
  sweeps ran before issue 16);
* ``warm, 1 at a time``: every cell forked from one warm worker that has imported peftlab and the fields;
* ``warm, 2 at a time``: the same, two cells at once (``--parallel-cells 2``), splitting the cores.

Prints the wall time of each, its ratio to the cold run, and the largest difference of any cell's test
metric from the cold run's (the cells train with other thread counts when they share the cores, so
floating-point sums may differ in the last digits).

    python benchmarks/demo_sweep.py [--modes cold warm parallel] [--set trainer.max_epochs=1]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "paper" / "demo_cpu.yaml"
MODES = {"cold": ("cold, 1 at a time", ["--cold", "--parallel-cells", "1"]),
         "warm": ("warm, 1 at a time", ["--parallel-cells", "1"]),
         "parallel": ("warm, 2 at a time", ["--parallel-cells", "2"])}


def run(mode: str, output: Path, overrides: list[str]) -> tuple[float, dict[str, float]]:
    """Wall seconds of the sweep in ``mode`` and every cell's test metric."""
    command = [sys.executable, "-m", "peftlab.cli", "sweep", "--config", str(CONFIG), "--output", str(output),
               *MODES[mode][1], *(a for o in overrides for a in ("--set", o))]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PEFTLAB_SWEEP_COLD": ""},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the {mode} sweep failed ({done.returncode}):\n{done.stderr[-2000:]}")
    with open(output / "results.csv", newline="") as f:
        metrics = {f"{r['task']}/{r['method']}": float(r["primary_value"]) for r in csv.DictReader(f)}
    return wall, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="passed to every sweep (e.g. trainer.max_epochs=1 for a quick check)")
    ns = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ns.modes:
            results[mode] = run(mode, Path(tmp) / mode, ns.overrides)
            print(f"{MODES[mode][0]}: {results[mode][0]:.0f} s", flush=True)
    first = ns.modes[0]
    base_wall, base_metrics = results[first]
    print(f"\nmake demo's sweep ({CONFIG.relative_to(ROOT)}, {len(base_metrics)} cells"
          f"{', ' + ' '.join(ns.overrides) if ns.overrides else ''}); {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} cores; {time.strftime('%Y-%m-%d')}\n")
    print(f"| run | wall s | / {MODES[first][0]} | largest test-metric difference from it |")
    print("|---|---:|---:|---:|")
    for mode, (wall, metrics) in results.items():
        diff = max(abs(metrics[k] - base_metrics[k]) for k in base_metrics)
        print(f"| {MODES[mode][0]} | {wall:.0f} | {wall / base_wall:.2f} | {diff:.4f} |")


if __name__ == "__main__":
    main()
