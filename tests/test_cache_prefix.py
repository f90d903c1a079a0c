"""Frozen-prefix caching (cache_frozen_prefix): the same losses and adapter
weights as without the cache over several epochs, the frozen blocks run only
in the first epoch, a disk cache is reused across runs and keyed by what the
states depend on, and every case the cache cannot serve is refused with its
reason."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from peftlab import PeftModule, build_method
from peftlab.backbone import FRONT_END
from peftlab.errors import ConfigError
from peftlab.model.prefix_cache import cache_key, plan_prefix, prefix_refusal
from peftlab_protein import ESM2Backbone
from peftlab_protein.synthetic import SyntheticMotifDataModule

ESM4 = dict(num_layers=4, embed_dim=32, attention_heads=4)
TINY_TA = dict(num_layers=2, embed_dim=32, num_heads=2, ff_dim=64, conv_channels=16)


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().clone())


def fit(module: PeftModule, data, epochs: int = 3) -> list[torch.Tensor]:
    recorder = LossRecorder()
    L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
              callbacks=[recorder]).fit(module, datamodule=data)
    return recorder.losses


def esm_lora(cache=False, seed: int = 0, layers: str = "last:2", **options) -> PeftModule:
    L.seed_everything(0, verbose=False)
    return PeftModule(ESM2Backbone(**ESM4, seed=seed), build_method("lora", r=2, layers=layers),
                      task_type="binary", num_outputs=1, cache_frozen_prefix=cache, **options)


def motif_data():
    return SyntheticMotifDataModule(num_sequences=40, batch_size=8)  # shuffled: batches differ every epoch


def count_calls(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls


def assert_same_training(plain: PeftModule, plain_losses, cached: PeftModule, cached_losses) -> None:
    assert len(plain_losses) == len(cached_losses) > 0
    for a, b in zip(plain_losses, cached_losses):
        assert torch.equal(a, b)
    expected, got = plain.trainable_state_dict(), cached.trainable_state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_lora_on_the_last_blocks_trains_identically_and_runs_the_frozen_blocks_once():
    plain = esm_lora()
    plain_losses = fit(plain, motif_data())
    cached = esm_lora(cache=True)
    assert cached.prefix_cache.depth == 2
    first_block = count_calls(cached.backbone.blocks[0])
    data = motif_data()
    cached_losses = fit(cached, data)
    assert_same_training(plain, plain_losses, cached, cached_losses)
    batches_per_epoch = len(plain_losses) // 3
    val_batches = -(-data.split_sizes()["val"] // 8)
    assert len(first_block) == batches_per_epoch + val_batches  # the frozen blocks ran in epoch 1 only
    assert cached.prefix_cache.store.hits == 2 * (data.split_sizes()["train"] + data.split_sizes()["val"])


def test_partial_fine_tuning_is_cached_below_its_blocks():
    L.seed_everything(0, verbose=False)
    module = PeftModule(ESM2Backbone(**ESM4), build_method("partial", k=1), task_type="binary", num_outputs=1,
                        cache_frozen_prefix=True)
    assert module.prefix_cache.depth == 3


def test_disk_cache_in_float32_is_exact_and_reused_by_the_next_run(tmp_path):
    plain = esm_lora()
    plain_losses = fit(plain, motif_data(), epochs=2)
    first = esm_lora(cache=True, prefix_cache_dir=str(tmp_path), prefix_cache_dtype="float32")
    assert_same_training(plain, plain_losses, first, fit(first, motif_data(), epochs=2))
    second = esm_lora(cache=True, prefix_cache_dir=str(tmp_path), prefix_cache_dtype="float32")
    calls = count_calls(second.backbone.blocks[0])
    assert_same_training(plain, plain_losses, second, fit(second, motif_data(), epochs=2))
    assert calls == [] and second.prefix_cache.store.misses == 0  # every state came from the first run's files


def test_half_precision_disk_cache_only_rounds_the_cached_states(tmp_path):
    """float16 keeps 11 significant bits, so a disk cache in half precision cannot reproduce float32
    training bit for bit; what it must do is change nothing but that rounding: it trains exactly as
    the in-memory cache holding the same float16 states, and stays close to the uncached run."""
    memory = esm_lora(cache=True, prefix_cache_dtype="float16")
    memory_losses = fit(memory, motif_data())
    disk = esm_lora(cache=True, prefix_cache_dir=str(tmp_path))
    assert disk.prefix_cache.store.dtype == torch.float16  # the default on disk
    assert_same_training(memory, memory_losses, disk, fit(disk, motif_data()))
    plain_losses = fit(esm_lora(), motif_data())
    torch.testing.assert_close(torch.stack(memory_losses), torch.stack(plain_losses), rtol=1e-2, atol=1e-3)


def test_a_changed_example_is_recomputed_not_served_stale():
    module = esm_lora(cache=True).eval()
    tokens = torch.tensor([[0, 5, 6, 7, 2, 1], [0, 8, 9, 10, 11, 2]])
    batch = {"tokens": tokens, "ids": ["a", "b"]}
    with torch.no_grad():
        module(batch)
        changed = {"tokens": tokens.clone(), "ids": ["a", "b"]}
        changed["tokens"][0, 2] = 12
        expected = esm_lora().eval()
        expected.load_state_dict(module.state_dict(), strict=False)
        torch.testing.assert_close(module(changed), expected(changed), rtol=0, atol=0)
        regrouped = {"tokens": changed["tokens"][[1], :6], "ids": ["b"]}  # b, now unpadded: still a hit
        module(regrouped)
    assert module.prefix_cache.store.stale == 1 and module.prefix_cache.store.hits == 2


def test_cache_key_follows_backbone_weights_options_depth_and_dtype():
    base = esm_lora(cache=True).prefix_cache.key
    assert esm_lora(cache=True).prefix_cache.key == base
    assert esm_lora(cache=True, seed=1).prefix_cache.key != base  # other weights
    assert esm_lora(cache=True, layers="last:1").prefix_cache.key != base  # depth 3
    assert esm_lora(cache=True, prefix_cache_dtype="float16").prefix_cache.key != base
    module = esm_lora(cache=True)
    spec = dict(module.backbone_spec, init_args=dict(module.backbone_spec["init_args"], attention="original"))
    assert cache_key(module.backbone_identity, spec, 2, torch.float32) != base
    # gradient checkpointing changes no value: same key
    spec = dict(module.backbone_spec, init_args=dict(module.backbone_spec["init_args"], gradient_checkpointing=True))
    assert cache_key(module.backbone_identity, spec, 2, torch.float32) == base


@pytest.mark.parametrize("method, options, reason", [
    ("lora", dict(r=2), r"first trained parameter \(model\.layers\.0\.self_attn\..*lora_A.*\) is in block 0"),
    ("full", {}, r"first trained parameter \(model\.layers\.0\..*\) is in block 0"),
    ("prompt", dict(num_tokens=2), r"first trained parameter \(token_hooks\.prompt.*\) is in block 0"),
])
def test_refuses_where_nothing_below_the_trained_blocks_is_frozen(method, options, reason):
    with pytest.raises(ConfigError, match=r"model\.cache_frozen_prefix: method .* no frozen prefix.*" + reason):
        PeftModule(ESM2Backbone(**ESM4), build_method(method, **options), task_type="binary", num_outputs=1,
                   cache_frozen_prefix=True)
    module = PeftModule(ESM2Backbone(**ESM4), build_method(method, **options), task_type="binary", num_outputs=1,
                        cache_frozen_prefix="auto")
    assert module.prefix_cache is None


def test_refuses_a_trained_parameter_a_hook_or_dropout_below_the_block():
    backbone = ESM2Backbone(**ESM4)
    build_method("lora", r=2, layers="last:1").apply(backbone)
    assert prefix_refusal(backbone, 3) is None
    backbone.model.embed_tokens.weight.requires_grad_(True)
    assert prefix_refusal(backbone, 3) == "parameter model.embed_tokens.weight trains, below block 3"
    backbone.model.embed_tokens.weight.requires_grad_(False)
    backbone.model.layers[1].fc1.register_forward_hook(lambda m, i, o: None)
    assert prefix_refusal(backbone, 3).startswith("module model.layers.1.fc1 has a forward hook")
    assert prefix_refusal(backbone, 1) is None  # that block is above depth 1
    from peftlab_speech import TorchaudioEncoder
    speech = TorchaudioEncoder("wav2vec2_base", **TINY_TA, dropout=0.1)
    build_method("lora", r=2, layers="last:1").apply(speech)
    assert "dropout module model.encoder.feature_projection.dropout (p=0.1) is active below block 1" in \
        prefix_refusal(speech, 1)
    plan = plan_prefix(speech)
    assert plan.depth == FRONT_END  # the CNN has no dropout: its output is still cached


def test_refuses_layer_weighted_sum_and_pairs():
    with pytest.raises(ConfigError, match="layer_weighted_sum reads every block's output"):
        esm_lora(cache=True, layer_weighted_sum=True)
    with pytest.raises(ConfigError, match="not one example each"):
        esm_lora(cache=True, pairs=True)
    with pytest.raises(ConfigError, match="must be true, false or auto"):
        esm_lora(cache="yes")


def tone_data(augment: bool):
    from peftlab_speech.synthetic import SyntheticToneDataModule
    return SyntheticToneDataModule(num_clips=24, clip_seconds=0.25, batch_size=4, augment=augment)


def speech_lora(cache, family: str = "torchaudio", layers=None) -> PeftModule:
    from peftlab_speech import HFSpeechEncoder, TorchaudioEncoder
    L.seed_everything(0, verbose=False)
    backbone = TorchaudioEncoder("wav2vec2_base", **TINY_TA) if family == "torchaudio" else \
        HFSpeechEncoder(family=family, num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, conv_dim=16)
    return PeftModule(backbone, build_method("lora", r=2, layers=layers, targets="mlp"), task_type="multiclass",
                      num_outputs=4, cache_frozen_prefix=cache)


@pytest.mark.parametrize("family, layers, depth", [("torchaudio", None, 0), ("torchaudio", "last:1", 1),
                                                   ("wavlm", "last:1", 1)])
def test_speech_front_end_and_prefix_train_identically(family, layers, depth):
    plain = speech_lora(False, family, layers)
    plain_losses = fit(plain, tone_data(augment=False))
    cached = speech_lora(True, family, layers)
    assert cached.prefix_cache.depth == depth
    front_end = count_calls(cached.backbone.model.feature_extractor)
    assert_same_training(plain, plain_losses, cached, fit(cached, tone_data(augment=False)))
    assert 0 < len(front_end) <= len(plain_losses) // 3 + 2  # the CNN ran in the first epoch only


def test_full_fine_tuning_of_a_speech_encoder_caches_its_frozen_front_end():
    from peftlab_speech import TorchaudioEncoder
    module = PeftModule(TorchaudioEncoder("wav2vec2_base", **TINY_TA), build_method("full"), task_type="multiclass",
                        num_outputs=4, cache_frozen_prefix=True)
    assert module.prefix_cache.depth == FRONT_END
    calls = count_calls(module.backbone.model.feature_extractor)
    plain_losses = fit(module, tone_data(augment=False))
    assert 0 < len(calls) <= len(plain_losses) // 3 + 2  # the CNN ran in the first epoch only
    unfrozen = TorchaudioEncoder("wav2vec2_base", **TINY_TA, freeze_feature_extractor=False)
    with pytest.raises(ConfigError, match=r"parameter model\.feature_extractor\..* trains, inside the front end"):
        PeftModule(unfrozen, build_method("full"), task_type="multiclass", num_outputs=4, cache_frozen_prefix=True)


def test_an_augmenting_data_module_is_refused_or_skipped():
    with pytest.raises(ConfigError, match="augments training examples"):
        fit(speech_lora(True), tone_data(augment=True), epochs=1)
    module = speech_lora("auto")
    fit(module, tone_data(augment=True), epochs=1)
    assert module.prefix_cache is None
