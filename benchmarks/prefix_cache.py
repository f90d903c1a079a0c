"""Frozen-prefix caching (``cache_frozen_prefix``): what it saves over epochs.

    python benchmarks/prefix_cache.py                    # both parts (about two minutes on 2 cores)
    python benchmarks/prefix_cache.py --part protein     # (a) only
    python benchmarks/prefix_cache.py --part speech --methods lora,full,adapter

(a) Protein: 5 epochs of LoRA (r=8, the attention preset) on the last 8 blocks
of a 33-block ESM-2-shaped model (the 650M depth, width reduced for the CPU):
peftlab with the prefix cache against the plain PyTorch + peft loop of
``method_cost.py`` on the same batches (and peftlab without the cache). The
ideal ratio from the layer counts is printed beside the measured one.

(b) Speech: wav2vec2-base-shaped (torchaudio, random init), 1 s clips: epoch
times with and without the cache for each method (LoRA caches the states
entering block 0, front end included; full fine-tuning caches the frozen
convolutional front end's output), and the share of a step the front end took.

All runs train on fixed random batches in this one process, one after the
other. This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

from _shared import cpu_model, epoch_clock, plain_lora_training, random_batches, reference_backbone

SEED, DATA_SEED = 0, 1234
ESM_DEPTH_NAME = "esm2_t33_650M_UR50D"
TRAINED_BLOCKS = 8


def peftlab_epochs(backbone, method, batches: list[dict], epochs: int, cache: bool) -> tuple[list[float], object]:
    """Epoch wall times of a peftlab fit (regression head) on ``batches``, with or without the cache."""
    import lightning as L
    from torch.utils.data import DataLoader

    from peftlab.model.module import PeftModule

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    module = PeftModule(backbone, method, task_type="regression", num_outputs=1, cache_frozen_prefix=cache)
    clock = epoch_clock()
    L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
              callbacks=[clock]).fit(module, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    return clock.seconds, module


def protein(args) -> None:
    from peftlab.methods import build_method

    def backbone():
        torch.manual_seed(SEED)
        return reference_backbone("protein", SEED, layers=33, dim=args.dim, heads=args.heads, esm_name=ESM_DEPTH_NAME)

    layers = f"last:{TRAINED_BLOCKS}"
    batches = random_batches(backbone(), "protein", args.batches, args.batch, DATA_SEED, residues=args.length)
    steps, _ = plain_lora_training(backbone(), batches, torch.device("cpu"), layers=layers, epochs=args.epochs)
    plain = [sum(steps[e * len(batches):(e + 1) * len(batches)]) for e in range(args.epochs)]

    def lora():
        return build_method("lora", r=8, alpha=16, targets="attention", layers=layers)

    cached, module = peftlab_epochs(backbone(), lora(), batches, args.epochs, cache=True)
    uncached, _ = peftlab_epochs(backbone(), lora(), batches, args.epochs, cache=False)
    assert module.prefix_cache is not None and module.prefix_cache.depth == 33 - TRAINED_BLOCKS
    n, k = 33, TRAINED_BLOCKS
    ideal_fwd = args.epochs * n / (n + (args.epochs - 1) * k)
    ideal = args.epochs * (n + k) / ((n + k) + (args.epochs - 1) * 2 * k)
    print(f"(a) ESM-2 {ESM_DEPTH_NAME}-shaped, random init: 33 blocks x {args.dim} wide, {args.heads} heads; LoRA r=8 "
          f"(q, k, v, out) on the last {k} blocks; {args.batches} batches of {args.batch} x {args.length} residues "
          f"per epoch, {args.epochs} epochs")
    print()
    print("| epoch | plain PyTorch + peft s | peftlab, no cache s | peftlab + prefix cache s | plain / cache |")
    print("|---:|---:|---:|---:|---:|")
    for e in range(args.epochs):
        print(f"| {e + 1} | {plain[e]:.2f} | {uncached[e]:.2f} | {cached[e]:.2f} | {plain[e] / cached[e]:.2f}x |")
    print(f"| all | {sum(plain):.2f} | {sum(uncached):.2f} | {sum(cached):.2f} | "
          f"**{sum(plain) / sum(cached):.2f}x** |")
    print()
    print(f"{args.epochs} epochs: peftlab with the prefix cache {sum(plain) / sum(cached):.2f}x faster than the plain "
          f"loop (target >= 2x); ideal from the layer counts {ideal:.2f}x (a trained block's backward counted as one "
          f"forward; {ideal_fwd:.2f}x counting forwards only); peftlab without the cache / plain = "
          f"{sum(uncached) / sum(plain):.2f}")


def speech(args) -> None:
    from peftlab.backbone import FRONT_END
    from peftlab.methods import build_method

    def backbone():
        torch.manual_seed(SEED)
        return reference_backbone("speech", SEED)

    probe = backbone().eval()
    batches = random_batches(probe, "speech", args.speech_batches, 4, DATA_SEED, samples=16000)
    with torch.no_grad():
        probe.front_end(batches[0])  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            probe.front_end(b)
        front_end_s = (time.perf_counter() - t0) / len(batches)
    print(f"(b) torchaudio wav2vec2_base-shaped, random init (12 x 768, CNN 7 x 512); {args.speech_batches} batches "
          f"of 4 x 1 s at 16 kHz per epoch, {args.speech_epochs} epochs; the front end (CNN) alone: "
          f"{1000 * front_end_s:.0f} ms per batch (forward, no grad)")
    print()
    print("| method | cached | no cache s/epoch (after the 1st) | cache s/epoch (after the 1st) | speed-up | "
          "front end's share of a step |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.methods.split(","):
        method = (lambda: build_method(name, **({"r": 8, "alpha": 16} if name == "lora" else {})))
        plain, _ = peftlab_epochs(backbone(), method(), batches, args.speech_epochs, cache=False)
        cached, module = peftlab_epochs(backbone(), method(), batches, args.speech_epochs, cache=True)
        depth = module.prefix_cache.depth if module.prefix_cache else None
        what = "CNN output" if depth == FRONT_END else ("-" if depth is None else f"states entering block {depth}")
        later_plain = sum(plain[1:]) / len(plain[1:])
        later_cached = sum(cached[1:]) / len(cached[1:])
        share = front_end_s * args.speech_batches / later_plain
        print(f"| {name} | {what} | {later_plain:.2f} | {later_cached:.2f} | **{later_plain / later_cached:.2f}x** | "
              f"{100 * share:.0f}% |")
    print()
    print("target: epochs after the first >= 1.3x faster with the cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("protein", "speech", "both"), default="both")
    parser.add_argument("--dim", type=int, default=128, help="ESM-2 width (the 650M model: 1280)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="residues per sequence")
    parser.add_argument("--batches", type=int, default=6, help="protein batches per epoch")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--speech-batches", type=int, default=3)
    parser.add_argument("--speech-epochs", type=int, default=3)
    parser.add_argument("--methods", default="lora,full", help="speech methods (registered names)")
    args = parser.parse_args()
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, device cpu")
    print()
    if args.part in ("protein", "both"):
        protein(args)
        print()
    if args.part in ("speech", "both"):
        speech(args)


if __name__ == "__main__":
    main()
