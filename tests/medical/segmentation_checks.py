"""Checks shared by the segmentation backbone tests (UNETR, SwinUNETR, timm ViT / SAM)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from peftlab import PeftModule
from peftlab.model.loading import load_adapter
from peftlab.persistence.adapter import save_adapter


def check_adapter_round_trip_and_windows(module: PeftModule, tmp_path: Path, image_shape: tuple[int, ...]) -> None:
    """After nudging every trained weight, the saved adapter reloads to identical logits on ``image_shape``
    inputs, and a 70 x 50 image (not a multiple of the window) is segmented whole in sliding windows."""
    with torch.no_grad():
        for p in (*module.head.parameters(), *(p for p in module.backbone.parameters() if p.requires_grad)):
            p.add_(0.01 * torch.randn_like(p))
    save_adapter(module, tmp_path / "adapter")
    back = load_adapter(tmp_path / "adapter").eval()
    x = {"images": torch.randn(*image_shape)}
    with torch.no_grad():
        assert torch.equal(back(x), module.eval()(x))
        classes = module.num_outputs
        assert module.task.infer(module, {"images": torch.randn(1, 1, 70, 50)}).shape == (1, classes, 70, 50)


def fit_and_validate_dice(model: PeftModule, datamodule, tmp_path: Path, epochs: int) -> float:
    """``epochs`` of training (no sanity check, no checkpoints), then the validation Dice."""
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    return trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/dice"]
