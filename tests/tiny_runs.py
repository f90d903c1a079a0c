"""The command line of a tiny CLI run, shared by the tests that run `peftlab fit` in-process:
a tiny ESM-2 (2 x 32) with LoRA on 40 synthetic sequences in batches of 4, so 8 training
batches an epoch, and 4 sequences each for validation and test."""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STEPS_PER_EPOCH = 8


def tiny_protein_run(epochs: int, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS / "protein/backbones/esm2_tiny.yaml"), "--config", str(CONFIGS / "methods/lora.yaml"),
            "--config", str(CONFIGS / "protein/data/synthetic_motif.yaml"),
            "--model.backbone.init_args.num_layers=2", "--model.backbone.init_args.embed_dim=32",
            "--model.backbone.init_args.attention_heads=4", "--data.init_args.num_sequences=40",
            "--data.init_args.batch_size=4", "--trainer.accelerator=cpu", f"--trainer.max_epochs={epochs}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--seed_everything=0",
            *extra]
