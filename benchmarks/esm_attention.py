"""ESM-2 attention: fair-esm's own (``attention: original``) against torch's
fused ``scaled_dot_product_attention`` (``attention: fused``, the default), for
ESM-2 8M and 35M shapes (random init) across sequence lengths. Prints a
Markdown table: training-step and inference time, peak memory growth of a
training step, and the speed-up / memory ratios.

Each cell (model x length x attention) runs in a fresh subprocess (this script
re-invoked with the hidden ``--one`` flag, answering with one JSON line), so
one cell's memory cannot leak into the next. A cell builds a ``PeftModule``
with LoRA (r 8) on q/k/v/out of every block and frozen weights, on padded
batches (the first sequence at full length, the others 75-100% of it, so the
padding mask is exercised as in real batches), runs ``--warmup`` training
steps (forward, loss, backward, AdamW), then measures:

* training: mean wall time of ``--steps`` training steps;
* memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the timed
  training steps minus what was allocated before them; on the CPU, the
  process's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs``) during the timed steps minus its resident set
  before them, after ``malloc_trim``: what one step adds on top of the
  weights and optimiser state (activations, gradients, the attention
  matrices). Not ``tracemalloc``: it does not see torch's allocations;
* inference: mean wall time of ``--steps`` forward passes under ``no_grad``.

The whole list runs ``--rounds`` times in rotating order and the table shows
medians.

    python benchmarks/esm_attention.py                                   # 8M and 35M, 128-1024 tokens
    python benchmarks/esm_attention.py --models 8M --lengths 512 --rounds 1

This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from _shared import AMINO_ACIDS, cpu_model
from _shared import run_child as run_child_process
from gradient_checkpointing import _rss_mb, _settle_cpu_memory

MODELS = {"8M": "esm2_t6_8M_UR50D", "35M": "esm2_t12_35M_UR50D"}
MODES = ("original", "fused")
LENGTHS = (128, 256, 512, 1024)
RESULT_PREFIX = "ESM_ATTENTION_RESULT "
SEED, DATA_SEED = 0, 1234


def default_batch(model: str, length: int) -> int:
    """8 sequences up to 512 tokens; 4 at 1024 (the 35M shape: 4 from 512 on, to stay within minutes)."""
    if length >= 1024 or (model == "35M" and length >= 512):
        return 4
    return 8


# ---- child: one cell ---------------------------------------------------------------------------------

def padded_batches(alphabet, count: int, batch: int, length: int, seed: int) -> list[dict]:
    """``count`` batches of ``batch`` sequences, ``length`` tokens padded (BOS and EOS included): the first
    sequence at full length, the others 75-100% of it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    letters = torch.tensor([alphabet.get_idx(a) for a in AMINO_ACIDS])
    out = []
    for _ in range(count):
        tokens = torch.full((batch, length), alphabet.padding_idx)
        for i in range(batch):
            n = length if i == 0 else int(torch.randint(int(0.75 * length), length + 1, (1,), generator=g))
            tokens[i, 0], tokens[i, n - 1] = alphabet.cls_idx, alphabet.eos_idx
            tokens[i, 1:n - 1] = letters[torch.randint(len(letters), (n - 2,), generator=g)]
        out.append({"tokens": tokens, "labels": torch.randn(batch, generator=g)})
    return out


def _timed(fn, device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_one(model: str, length: int, mode: str, args) -> dict:
    import torch

    from peftlab import PeftModule, build_method
    from peftlab_protein import ESM2Backbone

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    backbone = ESM2Backbone(name=MODELS[model], seed=SEED, attention=mode)
    batch = args.batch or default_batch(model, length)
    batches = padded_batches(backbone.alphabet, args.warmup + args.steps, batch, length, DATA_SEED)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    module = PeftModule(backbone, build_method("lora", r=8, alpha=16, targets="attention"),
                        task_type="regression", num_outputs=1).to(device)
    module.train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def train(b):
        module._step(b)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for b in batches[:args.warmup]:
        train(b)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _settle_cpu_memory()
    train_s = [_timed(lambda b=b: train(b), device) for b in batches[args.warmup:]]
    if device.type == "cuda":
        peak, kind = (torch.cuda.max_memory_allocated() - base) / 2**20, "CUDA max allocated - allocated before"
    else:
        peak, kind = _rss_mb("VmHWM") - base, "peak RSS - RSS before (after malloc_trim)"
    module.eval()
    with torch.no_grad():
        infer_s = [_timed(lambda b=b: module.backbone(b), device) for b in batches[args.warmup:]]
    return {"model": model, "length": length, "mode": mode, "batch": batch,
            "train_ms": 1000 * statistics.mean(train_s), "infer_ms": 1000 * statistics.mean(infer_s),
            "peak_mb": peak, "memory_kind": kind, "device": str(device),
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__}


# ---- parent: a subprocess per cell, then the table -------------------------------------------------------

def run_child(cell: tuple[str, int, str], args) -> dict:
    model, length, mode = cell
    cmd = [sys.executable, os.path.abspath(__file__), "--one", f"{model}:{length}:{mode}",
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    for flag in ("batch", "threads"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    if args.cpu:
        cmd.append("--cpu")
    return run_child_process(cmd, RESULT_PREFIX, f"{model} x {length} tokens ({mode})")


def table(res: dict, models: list[str], lengths: list[int]) -> list[str]:
    lines = ["| model | tokens x batch | train ms/step original / fused | speed-up | inference ms original / "
             "fused | speed-up | step peak memory growth original / fused (MB) | fused / original memory |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for model in models:
        for length in lengths:
            o, f = res[(model, length, "original")], res[(model, length, "fused")]
            lines.append(
                f"| {model} | {length} x {o['batch']} | {o['train_ms']:,.0f} / {f['train_ms']:,.0f} | "
                f"{o['train_ms'] / f['train_ms']:.1f}x | {o['infer_ms']:,.0f} / {f['infer_ms']:,.0f} | "
                f"{o['infer_ms'] / f['infer_ms']:.1f}x | {o['peak_mb']:,.0f} / {f['peak_mb']:,.0f} | "
                f"{f['peak_mb'] / max(o['peak_mb'], 1e-9):.2f} |")
    return lines


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of 8M,35M")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)),
                        help="comma-separated tokens per sequence (BOS and EOS included)")
    parser.add_argument("--batch", type=int, default=None,
                        help="sequences per batch (default 8; 4 at 1024 tokens and for 35M from 512)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps (training, then inference)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first (AdamW's state)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the list in rotating order; report medians")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is available")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.one is not None:
        model, length, mode = args.one.split(":")
        print(RESULT_PREFIX + json.dumps(run_one(model, int(length), mode, args)), flush=True)
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    cells = [(m, n, a) for m in models for n in lengths for a in MODES]
    runs: dict[tuple, list[dict]] = {c: [] for c in cells}
    started = time.perf_counter()
    for r in range(max(1, args.rounds)):
        k = r % len(cells)
        for c in cells[k:] + cells[:k]:
            t0 = time.perf_counter()
            runs[c].append(run_child(c, args))
            print(f"  round {r + 1}: {c[0]} x {c[1]} {c[2]}: {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                  flush=True)
    res = {c: dict(rs[0], **{key: statistics.median(x[key] for x in rs) for key in ("train_ms", "infer_ms", "peak_mb")})
           for c, rs in runs.items()}
    first = next(iter(res.values()))
    where = first["device_name"] if first["device"] == "cuda" else \
        f"{cpu_model()}, {os.cpu_count()} cores ({first['threads']} torch threads)"
    print(f"Machine: {where}, torch {first['torch']}; {time.strftime('%Y-%m-%d')}; "
          f"whole run {time.perf_counter() - started:.0f} s")
    print(f"Models: ESM-2 8M shape (6 x 320, 20 heads) and 35M shape (12 x 480, 20 heads), random init; "
          f"frozen weights, LoRA r 8 on q/k/v/out in every block; AdamW; padded batches (first sequence full "
          f"length, the others 75-100%); {args.warmup} warm-up + {args.steps} timed steps per cell; median of "
          f"{max(1, args.rounds)} round(s); a fresh process per cell")
    print(f"Step peak memory growth: {first['memory_kind']}, i.e. what a training step adds on top of the "
          f"weights and the optimiser state\n")
    print("\n".join(table(res, models, lengths)))


if __name__ == "__main__":
    main()
