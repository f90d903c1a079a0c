"""Frozen-feature caching: epoch time of a linear probe with and without
``cache_frozen_features`` (target: 10x or better after the first epoch).

    python benchmarks/feature_cache.py                  # ESM-2 35M-shaped, 256 synthetic sequences
    python benchmarks/feature_cache.py --sequences 128 --epochs 3

Both runs train the same model on the same batches in one process, one after
the other; the table gives each epoch's wall time and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform

import lightning as L
import torch

from _shared import epoch_clock

from peftlab import PeftModule, build_method
from peftlab_protein import ESM2Backbone
from peftlab_protein.synthetic import SyntheticMotifDataModule


def run(cache: bool, args) -> list[float]:
    L.seed_everything(0, verbose=False)
    backbone = ESM2Backbone("esm2_t12_35M_UR50D", num_layers=args.layers)
    module = PeftModule(backbone, build_method("linear_probe"), task_type="binary", num_outputs=1,
                        cache_frozen_features=cache)
    data = SyntheticMotifDataModule(num_sequences=args.sequences, min_length=100, max_length_residues=128,
                                    batch_size=16, val_fraction=0.05, test_fraction=0.05)
    clock = epoch_clock()
    L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
              limit_val_batches=0, callbacks=[clock]).fit(module, datamodule=data)
    return clock.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=None, help="ESM-2 blocks (default 12, the 35M shape)")
    args = parser.parse_args()
    without, with_cache = run(False, args), run(True, args)
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"device cpu; ESM-2 35M-shaped (random init, {args.layers or 12} blocks) linear probe, "
          f"{args.sequences} sequences of 100-128 residues")
    print()
    print("| epoch | no cache s | cache s | speed-up |")
    print("|---:|---:|---:|---:|")
    for e, (a, b) in enumerate(zip(without, with_cache), start=1):
        print(f"| {e} | {a:.2f} | {b:.2f} | {a / b:.1f}x |")
    later = sum(without[1:]) / max(1e-9, sum(with_cache[1:]))
    print()
    print(f"epochs after the first: {later:.0f}x faster with the cache (target >= 10x); "
          f"the first epoch fills it")


if __name__ == "__main__":
    main()
