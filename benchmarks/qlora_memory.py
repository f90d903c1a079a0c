"""GPU memory of QLoRA (4-bit NF4 frozen backbone) against LoRA on a bf16 and
a float32 frozen backbone: the weights' memory, the peak during training, and
the time per step, on ESM-2 650M's shape (random init; no download). Prints a
Markdown table.

Each configuration trains through peftlab's real path (a ``lightning.Trainer``
with ``precision="bf16-mixed"`` fitting a ``PeftModule`` with LoRA on q, k, v
and out of every block) in its own subprocess (this script re-invoked with the
hidden ``--one NAME`` flag, answering with one JSON line), so that one run's
CUDA allocations do not count in the next.

    python benchmarks/qlora_memory.py                                   # ESM-2 650M shape, 8 x 256
    python benchmarks/qlora_memory.py --name esm2_t36_3B_UR50D --layers 36 --dim 2560 --heads 40 --batch 4
    python benchmarks/qlora_memory.py --layers 2 --dim 64 --heads 4 --steps 3   # quick check

Needs a CUDA GPU and ``pip install bitsandbytes``; elsewhere it says so and
exits with status 2. This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _shared import random_batches, reference_backbone

CONFIGS = {
    "lora_fp32": "LoRA, float32 frozen backbone",
    "lora_bf16": "LoRA, bf16 frozen backbone",
    "qlora_nf4": "QLoRA, NF4 frozen backbone (double quant)",
}
RESULT_PREFIX = "QLORA_MEMORY_RESULT "


def unavailable() -> str | None:
    """What is missing for 4-bit quantisation here (as the ``quantize`` option reports it), or None."""
    from peftlab.quantize import QuantizationUnavailableError, require_bitsandbytes

    try:
        require_bitsandbytes()
    except QuantizationUnavailableError as e:
        return str(e)
    return None


def run_one(name: str, args) -> dict:
    import time
    import warnings

    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from peftlab.methods import build_method, count_parameters
    from peftlab.model.module import PeftModule

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.manual_seed(0)
    backbone = reference_backbone("protein", 0, args.layers, args.dim, args.heads, esm_name=args.name)
    method = build_method("lora", r=args.r, alpha=2 * args.r, targets="attention",
                          quantize="nf4" if name == "qlora_nf4" else None)
    module = PeftModule(backbone, method, task_type="regression", num_outputs=1)
    if name == "lora_bf16":
        for p in module.backbone.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    trainable = count_parameters(module, trainable_only=True)
    batches = random_batches(backbone, "protein", args.warmup + args.steps, args.batch, 1234, residues=args.length)

    class Probe(L.Callback):
        def on_fit_start(self, trainer, pl_module):  # the model is on the GPU, nothing trained yet
            torch.cuda.synchronize()
            self.weights_mb = torch.cuda.memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
            self.times = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

    probe = Probe()
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=args.warmup + args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[probe])
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    timed = probe.times[args.warmup:] or probe.times
    return {"trainable": trainable, "weights_mb": probe.weights_mb,
            "peak_mb": torch.cuda.max_memory_allocated() / 2**20, "ms_step": 1000 * sum(timed) / len(timed),
            "gpu": torch.cuda.get_device_name()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="esm2_t33_650M_UR50D", help="ESM-2 family name (architecture)")
    parser.add_argument("--layers", type=int, default=33)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--heads", type=int, default=20)
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256, help="residues per sequence")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--one", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    problem = unavailable()
    if problem:
        print(f"benchmarks/qlora_memory.py needs a CUDA GPU and bitsandbytes; nothing to measure on this "
              f"machine. {problem}", file=sys.stderr)
        return 2
    if args.one:
        print(RESULT_PREFIX + json.dumps(run_one(args.one, args)))
        return 0
    rows, gpu = {}, "?"
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for name in CONFIGS:
        proc = subprocess.run([sys.executable, __file__, *passthrough, "--one", name], capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)), None)
        if proc.returncode != 0 or line is None:
            print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        rows[name] = json.loads(line[len(RESULT_PREFIX):])
        gpu = rows[name]["gpu"]
    print(f"\nESM-2 shape {args.name} ({args.layers} x {args.dim}), LoRA r={args.r} on q, k, v, out; "
          f"batch {args.batch} x {args.length} residues; bf16-mixed; {gpu}\n")
    print("| configuration | trainable | weights on GPU (MB) | peak in training (MB) | peak vs bf16 LoRA | ms/step |")
    print("|---|---:|---:|---:|---:|---:|")
    base = rows.get("lora_bf16", {}).get("peak_mb")
    for name, row in rows.items():
        ratio = f"{row['peak_mb'] / base:.2f}x" if base else "n/a"
        print(f"| {CONFIGS[name]} | {row['trainable']:,} | {row['weights_mb']:.0f} | {row['peak_mb']:.0f} | "
              f"{ratio} | {row['ms_step']:.1f} |")
    return 0 if len(rows) == len(CONFIGS) else 1


if __name__ == "__main__":
    sys.exit(main())
