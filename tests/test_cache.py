"""Frozen-feature caching for linear probes: same outputs as without the
cache, the backbone runs only in the first epoch, and misuse is refused."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from peftlab import PeftModule, build_method
from peftlab_protein.synthetic import SyntheticMotifDataModule

from tests.conftest import make_backbone, make_batch


@pytest.mark.parametrize("kind", ["esm2", "toy"])
@pytest.mark.parametrize("pooling", ["mean", "attention", "cls"])
def test_cached_features_give_the_same_outputs(kind, pooling):
    plain = PeftModule(make_backbone(kind), build_method("linear_probe"), task_type="multiclass", num_outputs=3,
                       pooling=pooling).eval()
    cached = PeftModule(make_backbone(kind), build_method("linear_probe"), task_type="multiclass", num_outputs=3,
                        pooling=pooling, cache_frozen_features=True).eval()
    cached.head.load_state_dict(plain.head.state_dict())
    batch = make_batch(kind)
    with torch.no_grad():
        first, second = cached(batch), cached(batch)  # computes, then reads the cache
        expected = plain(batch)
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(second, expected, rtol=0, atol=1e-6)
    assert cached.feature_cache.misses == 3 and cached.feature_cache.hits == 3
    # reordered and regrouped examples come back padded to the new batch's longest
    regrouped = {"tokens": batch["tokens"][[2, 0]], "ids": [batch["ids"][2], batch["ids"][0]]}
    with torch.no_grad():
        torch.testing.assert_close(cached(regrouped), expected[[2, 0]], rtol=0, atol=1e-6)


def test_backbone_runs_only_in_the_first_epoch(tmp_path):
    module = PeftModule(make_backbone("esm2"), build_method("linear_probe"), task_type="binary", num_outputs=1,
                        cache_frozen_features=True)
    calls = []
    module.backbone.register_forward_hook(lambda m, i, o: calls.append(len(i[0]["ids"])))
    data = SyntheticMotifDataModule(num_sequences=40, batch_size=8)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    sizes = data.split_sizes()
    assert sum(calls) == sizes["train"] + sizes["val"]  # every example once, in epoch 1 only
    assert len(module.feature_cache) == sizes["train"] + sizes["val"]


def test_cache_refuses_a_trained_backbone_and_token_tasks():
    with pytest.raises(ValueError, match="needs a frozen backbone.*'lora' trains backbone weights"):
        PeftModule(make_backbone("toy"), build_method("lora", r=2), task_type="binary", num_outputs=1,
                   cache_frozen_features=True)
    with pytest.raises(ValueError, match="not token_classification"):
        PeftModule(make_backbone("toy"), build_method("linear_probe"), task_type="token_classification",
                   num_outputs=2, cache_frozen_features=True)


def test_cache_refuses_an_augmenting_data_module(tmp_path):
    from peftlab_medical.synthetic import SyntheticLesionDataModule
    from peftlab_medical import TimmBackbone
    vit = TimmBackbone(name="vit_tiny_patch16_224", img_size=28, patch_size=4, depth=1, in_chans=1)
    module = PeftModule(vit, build_method("linear_probe"), task_type="binary", num_outputs=1,
                        cache_frozen_features=True)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="augments training examples"):
        trainer.fit(module, datamodule=SyntheticLesionDataModule(num_images=20, augment=True))
