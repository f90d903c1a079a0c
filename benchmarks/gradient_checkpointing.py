"""Gradient (activation) checkpointing: peak memory and time of a training
step with and without the backbones' ``gradient_checkpointing`` option, for
full fine-tuning and LoRA, on a mid-size random-init backbone (ESM-2 35M
shape with long sequences by default; ViT-S/16 or wav2vec2 base with
``--domain``). Prints a Markdown table with the on / off ratios.

Each setting (method x checkpointing) runs in a fresh subprocess (this script
re-invoked with the hidden ``--one`` flag, answering with one JSON line), so
one setting's memory cannot leak into the next. A setting builds a
``PeftModule``, runs ``--warmup`` plain PyTorch training steps (forward, loss,
backward, AdamW; this also allocates the optimiser state), then measures the
``--steps`` timed steps:

* memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the timed steps
  minus what was allocated before them; on the CPU, the process's peak
  resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) during the
  timed steps minus its resident set before them, after ``malloc_trim`` has
  handed freed heap back to the system. Either way: what one step adds on top
  of the weights and the optimiser state (activations, gradients, temporaries);
* time: mean wall time per timed step (CUDA synchronised).

The whole list runs ``--rounds`` times in rotating order and the table shows
medians (a 2-core machine shared with other work is noisy).

    python benchmarks/gradient_checkpointing.py                     # ESM-2 35M shape, 4 x 512 tokens
    python benchmarks/gradient_checkpointing.py --domain medical    # ViT-S/16, 16 x 3 x 224 x 224
    python benchmarks/gradient_checkpointing.py --layers 2 --dim 64 --heads 4 --length 64 \\
        --steps 2 --warmup 1 --rounds 1                              # quick check

This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import sys
import time

from _shared import ESM_NAME, cpu_model, random_batches, reference_backbone
from _shared import run_child as run_child_process

METHODS = ("full", "lora")
RESULT_PREFIX = "GRADIENT_CHECKPOINTING_RESULT "
SEED, DATA_SEED = 0, 1234


# ---- child: one setting -----------------------------------------------------------------------------

def _backbone(args, checkpointing: bool):
    return reference_backbone(args.domain, SEED, args.layers, args.dim, args.heads,
                              gradient_checkpointing=checkpointing)


def _batches(backbone, args, n: int) -> list[dict]:
    # protein: --length counts BOS and EOS
    return random_batches(backbone, args.domain, n, args.batch, DATA_SEED, residues=args.length - 2,
                          samples=int(16000 * args.seconds))


def _rss_mb(field: str) -> float:
    from peftlab.callbacks import proc_status_mb
    return proc_status_mb(field) or 0.0


def _settle_cpu_memory() -> float:
    """Free what can be freed, reset the peak mark, return the resident set (MB)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
    except OSError:
        pass
    return _rss_mb("VmRSS")


def run_one(method: str, checkpointing: bool, args) -> dict:
    import torch

    from peftlab import PeftModule, build_method

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    backbone = _backbone(args, checkpointing)
    batches = _batches(backbone, args, args.warmup + args.steps)
    opts = {"r": 8, "alpha": 16, "targets": "attention"} if method == "lora" else {}
    module = PeftModule(backbone, build_method(method, **opts), task_type="regression", num_outputs=1).to(device)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]

    def step(batch) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = module._step(batch)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for batch in batches[:args.warmup]:
        step(batch)
    if device.type == "cuda":
        gc.collect()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _settle_cpu_memory()
    times = [step(batch) for batch in batches[args.warmup:]]
    if device.type == "cuda":
        peak, kind = (torch.cuda.max_memory_allocated() - base) / 2**20, "CUDA max allocated - allocated before"
    else:
        peak, kind = _rss_mb("VmHWM") - base, "peak RSS - RSS before (after malloc_trim)"
    return {"method": method, "checkpointing": checkpointing, "ms_step": 1000 * statistics.mean(times),
            "step_peak_mb": peak, "memory_kind": kind, "device": str(device),
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "trainable": sum(p.numel() for p in params), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


# ---- parent: a subprocess per setting, then the table ---------------------------------------------------

def run_child(method: str, checkpointing: bool, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", f"{method}:{int(checkpointing)}"]
    for flag in ("domain", "batch", "length", "seconds", "steps", "warmup", "layers", "dim", "heads", "threads"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    if args.cpu:
        cmd.append("--cpu")
    return run_child_process(cmd, RESULT_PREFIX, f"{method} (checkpointing {checkpointing})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", choices=("protein", "medical", "speech"), default="protein")
    parser.add_argument("--layers", type=int, default=None, help="ESM-2 layers (default 12, the 35M model)")
    parser.add_argument("--dim", type=int, default=None, help="ESM-2 width (default 480)")
    parser.add_argument("--heads", type=int, default=None, help="ESM-2 attention heads (default 20)")
    parser.add_argument("--batch", type=int, default=None, help="examples per batch (protein 4, medical 16, speech 4)")
    parser.add_argument("--length", type=int, default=512, help="protein: tokens per sequence, BOS and EOS included")
    parser.add_argument("--seconds", type=float, default=4.0, help="speech: seconds of audio per example")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (they allocate AdamW's state)")
    parser.add_argument("--rounds", type=int, default=2, help="repeat the list in rotating order; report medians")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of full,lora")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is available")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is steadier on a machine shared with other work)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = {"protein": 4, "medical": 16, "speech": 4}[args.domain]

    if args.one is not None:
        method, flag = args.one.split(":")
        print(RESULT_PREFIX + json.dumps(run_one(method, flag == "1", args)), flush=True)
        return

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    settings = [(m, c) for m in methods for c in (False, True)]
    runs: dict[tuple[str, bool], list[dict]] = {s: [] for s in settings}
    for r in range(max(1, args.rounds)):
        k = r % len(settings)
        for s in settings[k:] + settings[:k]:
            t0 = time.perf_counter()
            runs[s].append(run_child(*s, args))
            print(f"  round {r + 1}: {s[0]}, checkpointing {'on' if s[1] else 'off'}: "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    res = {s: dict(rs[0], ms_step=statistics.median(x["ms_step"] for x in rs),
                   step_peak_mb=statistics.median(x["step_peak_mb"] for x in rs)) for s, rs in runs.items()}

    first = next(iter(res.values()))
    from peftlab_protein.backbones import ESM2_SIZES
    layers, dim, heads = (a if a is not None else d for a, d in zip((args.layers, args.dim, args.heads),
                                                                     ESM2_SIZES[ESM_NAME]))
    shape = {"protein": f"{ESM_NAME}-shaped, random init ({layers} layers x {dim}, {heads} heads); batch "
                        f"{args.batch} x {args.length} tokens",
             "medical": f"vit_small_patch16_224, random init; batch {args.batch} x 3 x 224 x 224",
             "speech": f"torchaudio wav2vec2_base, random init; batch {args.batch} x {args.seconds:g} s"}[args.domain]
    where = first["device_name"] if first["device"] == "cuda" else \
        f"{cpu_model()}, {os.cpu_count()} cores ({first['threads']} torch threads)"
    print(f"Machine: {where}, torch {first['torch']}")
    print(f"Model: {shape}; AdamW; {args.warmup} warm-up + {args.steps} timed steps per run; median of "
          f"{max(1, args.rounds)} rounds in rotating order; a fresh process per run")
    print(f"Step peak memory: {first['memory_kind']}, i.e. what a training step adds on top of the weights "
          f"and the optimiser state")
    print()
    print("| method | trainable params | checkpointing | ms/step | time on/off | step peak memory MB | "
          "memory on/off |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for m in methods:
        off, on = res[(m, False)], res[(m, True)]
        for r in (off, on):
            ratios = ("", "") if r is off else (f"{on['ms_step'] / off['ms_step']:.2f}",
                                                f"{on['step_peak_mb'] / max(off['step_peak_mb'], 1e-9):.2f}")
            print(f"| {m} | {r['trainable']:,} | {'on' if r['checkpointing'] else 'off'} | {r['ms_step']:.0f} | "
                  f"{ratios[0]} | {r['step_peak_mb']:.0f} | {ratios[1]} |")


if __name__ == "__main__":
    main()
