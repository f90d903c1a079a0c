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


def plain_lora_training(backbone, batches: list[dict], device, layers: str | None = None, epochs: int = 1,
                        on_start=None) -> tuple[list[float], int]:
    """The reference: LoRA (r=8, alpha=16, the ``attention`` preset, optionally on ``layers`` only)
    trained in a hand-written PyTorch + peft loop (mean pooling, a linear head, MSE, AdamW) over
    ``batches`` for ``epochs``. Returns each step's seconds and the number of trained parameters;
    ``on_start`` is called just before the first step."""
    import time

    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, inject_adapter_in_model
    from torch import nn

    from peftlab.backbone import resolve_targets

    targets = resolve_targets(backbone, "attention", layers)  # the same modules as peftlab's LoRA
    for p in backbone.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, target_modules=targets), backbone)
    head = nn.Linear(backbone.embed_dim, 1)
    backbone.to(device).train()
    head.to(device).train()
    params = [p for p in list(backbone.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if on_start is not None:
        on_start()
    times = []
    for _ in range(epochs):
        for batch in batches:
            sync()
            t0 = time.perf_counter()
            f = backbone(batch)
            mask = f.mask.unsqueeze(-1).to(f.hidden.dtype)
            pooled = (f.hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            loss = F.mse_loss(head(pooled).squeeze(-1), batch["labels"])
            loss.backward()
            opt.step()
            opt.zero_grad()
            sync()
            times.append(time.perf_counter() - t0)
    return times, sum(p.numel() for p in params)


def epoch_clock():
    """A Lightning callback recording each training epoch's wall seconds (``.seconds``)."""
    import time

    import lightning as L

    class EpochClock(L.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    return EpochClock()
