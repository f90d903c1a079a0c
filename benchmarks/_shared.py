"""What the benchmark scripts share: the reference backbones, fixed random
batches, the machine's name, and running one configuration in a child process.
The scripts run as ``python benchmarks/NAME.py``, which puts this folder on
``sys.path``."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from typing import Any

ESM_NAME = "esm2_t12_35M_UR50D"
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def reference_backbone(domain: str, seed: int, layers: int | None = None, dim: int | None = None,
                       heads: int | None = None, esm_name: str = ESM_NAME, **options: Any):
    """Random-init ViT-S/16 (medical), wav2vec2 base (speech) or ESM-2 (protein; 35M
    by default, with optional sizes); ``options`` go to the backbone (e.g.
    ``gradient_checkpointing``)."""
    if domain == "medical":
        from peftlab_medical import TimmBackbone
        return TimmBackbone("vit_small_patch16_224", seed=seed, **options)
    if domain == "speech":
        from peftlab_speech import TorchaudioEncoder
        return TorchaudioEncoder("wav2vec2_base", seed=seed, **options)
    from peftlab_protein import ESM2Backbone
    return ESM2Backbone(name=esm_name, pretrained=False, num_layers=layers, embed_dim=dim, attention_heads=heads,
                        seed=seed, **options)


def random_batches(backbone, domain: str, count: int, batch: int, seed: int, residues: int = 128,
                   samples: int = 16000) -> list[dict]:
    """``count`` fixed random batches of ``batch`` examples: ESM tokens (BOS,
    ``residues`` residues, EOS), 224 px RGB images, or waveforms of ``samples``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(count):
        if domain == "medical":
            inputs = {"images": torch.randn(batch, 3, 224, 224, generator=g)}
        elif domain == "speech":
            inputs = {"waveforms": torch.randn(batch, samples, generator=g), "lengths": torch.full((batch,), samples)}
        else:
            alphabet = backbone.alphabet
            letters = torch.tensor([alphabet.get_idx(a) for a in AMINO_ACIDS])
            body = letters[torch.randint(len(letters), (batch, residues), generator=g)]
            inputs = {"tokens": torch.cat([torch.full((batch, 1), alphabet.cls_idx), body,
                                           torch.full((batch, 1), alphabet.eos_idx)], dim=1)}
        out.append({**inputs, "labels": torch.randn(batch, generator=g), "ids": [f"x{k}_{i}" for i in range(batch)]})
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_child(cmd: list[str], result_prefix: str, what: str) -> dict:
    """Run one configuration in its own process (its own peak memory) and return the
    JSON it prints after ``result_prefix``; on failure, show its output and raise."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(result_prefix):
            return json.loads(line[len(result_prefix):])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    raise RuntimeError(f"the {what} run failed (exit code {proc.returncode})")
