"""Inference latency of a merged LoRA model against the plain base model
(target: within 2%), with the unmerged LoRA model for reference, on each
domain's reference backbone shape (random init: latency does not depend on
the weights' values).

    python benchmarks/merged_lora_latency.py            # all three domains
    python benchmarks/merged_lora_latency.py --domains protein --repeats 30

Timings alternate base / merged / unmerged in every round, so that a noisy
machine slows all three alike; the table reports medians and ratios from one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from peftlab import build_method
from peftlab.methods import merge_peft_layers


def reference_backbones(domains: list[str]) -> dict:
    """name -> (factory, batch) per domain; imported lazily so one domain's stack suffices."""
    out = {}
    if "protein" in domains:
        from peftlab_protein import ESM2Backbone
        tokens = torch.randint(4, 24, (8, 130))
        tokens[:, 0], tokens[:, -1] = 0, 2  # BOS, EOS
        out["protein: ESM-2 35M-shaped (12x480), 8 x 128 residues"] = (
            lambda: ESM2Backbone("esm2_t12_35M_UR50D"), {"tokens": tokens})
    if "medical" in domains:
        from peftlab_medical import TimmBackbone
        out["medical: ViT-S/16, 8 x 3 x 224 x 224"] = (
            lambda: TimmBackbone("vit_small_patch16_224"), {"images": torch.randn(8, 3, 224, 224)})
    if "speech" in domains:
        from peftlab_speech import TorchaudioEncoder
        out["speech: wav2vec2-base-shaped, 4 x 1 s"] = (
            lambda: TorchaudioEncoder("wav2vec2_base"),
            {"waveforms": torch.randn(4, 16000), "lengths": torch.full((4,), 16000)})
    return out


@torch.inference_mode()
def time_once(model: torch.nn.Module, batch: dict) -> float:
    start = time.perf_counter()
    model(batch)
    return time.perf_counter() - start


def measure(factory, batch: dict, repeats: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    base = factory().eval()
    lora = factory().eval()
    build_method("lora", r=8, targets=None).apply(lora)
    with torch.no_grad():  # a trained-looking update (B starts at zero)
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    merged = factory().eval()
    build_method("lora", r=8, targets=None).apply(merged)
    merged.load_state_dict(lora.state_dict())
    merge_peft_layers(merged)
    models = {"base": base, "merged": merged, "unmerged": lora}
    for _ in range(warmup):
        for m in models.values():
            time_once(m, batch)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            times[k].append(time_once(m, batch))
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", default="protein,medical,speech")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for label, (factory, batch) in reference_backbones(args.domains.split(",")).items():
        ms = measure(factory, batch, args.repeats, args.warmup)
        rows.append((label, ms))
    cpu = platform.processor() or platform.machine()
    print(f"Machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, device cpu; "
          f"median of {args.repeats} alternating rounds")
    print()
    print("| backbone | base ms | merged LoRA ms | merged / base | unmerged LoRA ms | unmerged / base |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, ms in rows:
        print(f"| {label} | {ms['base']:.1f} | {ms['merged']:.1f} | {ms['merged'] / ms['base']:.3f} | "
              f"{ms['unmerged']:.1f} | {ms['unmerged'] / ms['base']:.3f} |")
    print()
    print("target: merged / base <= 1.02 (a merged model has the base model's layers and shapes)")


if __name__ == "__main__":
    main()
