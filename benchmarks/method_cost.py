"""Cost of PEFT methods against full fine-tuning on each domain's reference
backbone shape (ESM-2 35M, ViT-S/16, wav2vec2 base; random init): step time
and peak memory.

Trains each method through peftlab's real path (a ``lightning.Trainer``
fitting a ``PeftModule`` on a DataLoader of fixed random batches, steps timed
by ``peftlab.callbacks.StepTimer``) and, as a reference, LoRA in a plain
PyTorch + peft loop on the same backbone and batches. Prints a Markdown table.

Each configuration runs in its own subprocess (this script re-invoked with
the hidden ``--one METHOD`` flag, answering with one JSON line), so that the
peak memory of one run does not leak into the next.

    python benchmarks/method_cost.py                       # protein: ESM-2 35M shape, 8 x 128
    python benchmarks/method_cost.py --domain medical      # ViT-S/16, 8 x 3 x 224 x 224
    python benchmarks/method_cost.py --domain speech       # wav2vec2 base, 4 x 1 s
    python benchmarks/method_cost.py --layers 2 --dim 64 --heads 4 \\
        --batch 4 --length 32 --steps 3 --warmup 1          # quick check (protein)

This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from _shared import ESM_NAME, cpu_model, random_batches, reference_backbone
from _shared import run_child as run_child_process

PEFT_METHODS = ("full", "lora", "adapter", "linear_probe")
PLAIN = "lora_plain"  # LoRA in a hand-written PyTorch + peft loop
ALL_METHODS = ("full", "lora", PLAIN, "adapter", "linear_probe")
LABELS = {PLAIN: "lora (plain PyTorch + peft)"}
RESULT_PREFIX = "METHOD_COST_RESULT "
SEED = 0
DATA_SEED = 1234


# ---- child: one configuration ---------------------------------------------------------------

def _method(name: str):
    from peftlab.methods import build_method
    if name == "lora":
        return build_method("lora", r=8, alpha=16, targets="attention")  # q, k, v, out (timm: qkv, proj)
    if name == "adapter":
        return build_method("adapter", placement="houlsby", bottleneck=64)
    return build_method(name)


def _backbone(args):
    return reference_backbone(args.domain, SEED, args.layers, args.dim, args.heads)


def _batches(backbone, args) -> list[dict]:
    """``warmup + steps`` fixed random batches: ESM tokens (BOS, ``length`` residues,
    EOS), 224 px RGB images, or 1 s waveforms."""
    return random_batches(backbone, args.domain, args.warmup + args.steps, args.batch, DATA_SEED,
                          residues=args.length)


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so that the peak
    after training reflects training and not model construction."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class _MemoryProbe:
    def __init__(self, device) -> None:
        import torch
        self.cuda = device.type == "cuda"
        self.torch = torch

    def start(self) -> None:
        import gc
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        _reset_peak_rss()
        from peftlab.callbacks import proc_status_mb
        self.rss_before = proc_status_mb("VmRSS") or 0.0

    def peak(self) -> tuple[float, str]:
        from peftlab.callbacks import peak_rss_mb
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() / 2**20, "CUDA max allocated"
        return peak_rss_mb() - self.rss_before, "peak RSS growth"


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_peftlab(method: str, args) -> dict:
    import warnings

    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from peftlab.callbacks import StepTimer
    from peftlab.methods import count_parameters
    from peftlab.model.module import PeftModule

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*(GPU|TPU|HPU) available.*")

    class SyncedStepTimer(StepTimer):
        """StepTimer that waits for the GPU before reading the clock, and also
        notes when each batch starts (to see the loop's time between steps)."""

        def __init__(self, skip: int) -> None:
            super().__init__(skip=skip)
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            _sync(pl_module.device)
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
            self.starts.append(self._t0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            _sync(pl_module.device)
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    torch.manual_seed(SEED)
    backbone = _backbone(args)
    batches = _batches(backbone, args)
    module = PeftModule(backbone, _method(method), task_type="regression", num_outputs=1)
    trainable = count_parameters(module, trainable_only=True)
    loader = DataLoader(batches, batch_size=None, shuffle=False)
    timer = SyncedStepTimer(skip=args.warmup)
    trainer = L.Trainer(accelerator="auto", devices=1, max_steps=args.warmup + args.steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    device = torch.device("cuda" if trainer.accelerator.__class__.__name__ == "CUDAAccelerator" else "cpu")
    probe = _MemoryProbe(device)
    probe.start()
    trainer.fit(module, train_dataloaders=loader)
    peak, kind = probe.peak()
    timed = timer.times[args.warmup:]
    gaps = [b - a for a, b in zip(timer.starts[args.warmup:], timer.starts[args.warmup + 1:])]
    return {"trainable": trainable, "ms_step": 1000 * sum(timed) / len(timed), "steps": len(timed),
            "ms_iter": 1000 * sum(gaps) / len(gaps) if gaps else None,
            "peak_mb": peak, "memory_kind": kind, "device": str(device)}


def run_plain(args) -> dict:
    import torch

    from _shared import plain_lora_training

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(SEED)
    backbone = _backbone(args)
    batches = _batches(backbone, args)
    probe = _MemoryProbe(device)
    times, trainable = plain_lora_training(backbone, batches, device, on_start=probe.start)
    peak, kind = probe.peak()
    timed = times[args.warmup:]
    return {"trainable": trainable, "ms_step": 1000 * sum(timed) / len(timed), "steps": len(timed),
            "ms_iter": None, "peak_mb": peak, "memory_kind": kind, "device": str(device)}


def run_one(method: str, args) -> None:
    import torch
    result = run_plain(args) if method == PLAIN else run_peftlab(method, args)
    result.update(method=method, torch=torch.__version__, threads=torch.get_num_threads(),
                  device_name=torch.cuda.get_device_name() if result["device"] == "cuda" else "cpu")
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---- parent: one subprocess per configuration, then the table ---------------------------------------

def child_command(method: str, args) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", method, "--domain", args.domain, "--batch", str(args.batch),
           "--length", str(args.length), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    for flag in ("layers", "dim", "heads"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    return cmd


def run_child(method: str, args) -> dict:
    return run_child_process(child_command(method, args), RESULT_PREFIX, method)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", choices=("protein", "medical", "speech"), default="protein")
    parser.add_argument("--layers", type=int, default=None, help="ESM-2 layers (default 12, the 35M model)")
    parser.add_argument("--dim", type=int, default=None, help="embedding width (default 480)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default 20)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch")
    parser.add_argument("--length", type=int, default=128, help="residues per sequence (plus BOS and EOS)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps, not timed")
    parser.add_argument("--methods", default=",".join(ALL_METHODS),
                        help=f"comma-separated subset, run in this order (of {', '.join(ALL_METHODS)})")
    parser.add_argument("--rounds", type=int, default=3,
                        help="run the whole list this many times, rotating the order; report medians "
                             "(this 2-core machine is noisy)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")

    if args.one is not None:
        run_one(args.one, args)
        return

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")

    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(max(1, args.rounds)):
        for m in methods[r % len(methods):] + methods[:r % len(methods)]:
            t0 = time.perf_counter()
            runs[m].append(run_child(m, args))
            print(f"  round {r + 1}: ran {m} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    results = {}
    for m, rs in runs.items():
        results[m] = dict(rs[0], ms_step=statistics.median(x["ms_step"] for x in rs),
                          peak_mb=statistics.median(x["peak_mb"] for x in rs))
        if rs[0].get("ms_iter"):
            results[m]["ms_iter"] = statistics.median(x["ms_iter"] for x in rs)

    first = next(iter(results.values()))
    from peftlab_protein.backbones import ESM2_SIZES
    layers, dim, heads = (a if a is not None else d for a, d in zip((args.layers, args.dim, args.heads),
                                                                     ESM2_SIZES[ESM_NAME]))
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores ({first['threads']} torch threads), "
          f"torch {first['torch']}, device {first['device_name']}")
    shape = {"protein": f"{ESM_NAME}-shaped, random init: {layers} layers x {dim}, {heads} heads; "
                        f"batch {args.batch} x {args.length} residues",
             "medical": f"vit_small_patch16_224, random init; batch {args.batch} x 3 x 224 x 224",
             "speech": f"torchaudio wav2vec2_base, random init; batch {args.batch} x 1 s at 16 kHz"}[args.domain]
    print(f"Model: {shape}; {args.warmup} warm-up + {args.steps} timed steps; "
          f"median of {max(1, args.rounds)} rounds in rotating order")
    print()
    print(f"| method | trainable params | ms/step | vs full | peak memory MB ({first['memory_kind']}) |")
    print("|---|---:|---:|---:|---:|")
    full = results.get("full", {}).get("ms_step")
    for m, r in results.items():
        ratio = f"{r['ms_step'] / full:.2f}" if full else "n/a"
        print(f"| {LABELS.get(m, m)} | {r['trainable']:,} | {r['ms_step']:.1f} | {ratio} | {r['peak_mb']:.0f} |")
    print()
    parts = []
    if "lora" in results and PLAIN in results:
        parts.append(f"peftlab-LoRA / plain-LoRA step time = "
                     f"{results['lora']['ms_step'] / results[PLAIN]['ms_step']:.3f} (target <= 1.05)")
    if "lora" in results and full:
        parts.append(f"LoRA / full = {results['lora']['ms_step'] / full:.3f} (target <= 0.8)")
    if parts:
        print("; ".join(parts))
    if results.get("lora", {}).get("ms_iter"):
        print(f"(peftlab LoRA, start-to-start of timed steps, i.e. with the data fetch and Lightning loop work "
              f"outside StepTimer's window: {results['lora']['ms_iter']:.1f} ms/step)")


if __name__ == "__main__":
    main()
