"""transformers speech encoders (HFSpeechEncoder): the same features as the
model's own forward for wav2vec2, HuBERT and WavLM in both layer-norm styles,
local save_pretrained directories, the method x backbone matrix with exact
trainable counts, and clear errors. Everything is random init or local: no
hub access."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, Wav2Vec2FeatureExtractor

from peftlab import METHODS, PeftModule, build_method
from peftlab_speech import HFSpeechEncoder

from tests.method_checks import _train_steps, check_empty_prefix_matches_library, check_method_guarantees
# the same encoder sizes as torchaudio's matrix: width, MLP, heads, blocks, conv channels, pos-conv kernel
from tests.speech.test_methods import ASR_TASK, C, D, F, H, K, L, OPTIONS, add_catalogue_counts, asr_batch

G, BUCKETS = 16, 320  # pos-conv groups, WavLM's relative-position buckets (config defaults)
TINY = dict(num_layers=L, hidden_size=D, num_heads=H, intermediate_size=F, conv_dim=C)
STYLES = [(f, s) for f in ("wav2vec2", "hubert", "wavlm") for s in (False, True)]


def make(family: str, seed: int = 0, **kw) -> HFSpeechEncoder:
    return HFSpeechEncoder(family=family, seed=seed, **TINY, **kw)


def padded(n: int = 8000, lengths=(8000, 5000), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w, lengths = torch.randn(len(lengths), n, generator=g), torch.tensor(lengths)
    sample_mask = (torch.arange(n)[None, :] < lengths[:, None]).long()  # what the HF processor returns
    return w, lengths, sample_mask


# ---- 1. equivalence with the model's own forward ------------------------------------------------

@pytest.mark.parametrize("family,stable", STYLES, ids=[f"{f}-{'large' if s else 'base'}" for f, s in STYLES])
def test_features_match_transformers_forward(family, stable):
    bb = make(family, stable_layer_norm=stable).eval()
    assert bb.model.config.do_stable_layer_norm is stable
    assert bb.model.config.feat_extract_norm == ("layer" if stable else "group")
    w, lengths, sample_mask = padded()
    with torch.no_grad():
        ours = bb({"waveforms": w, "lengths": lengths}, output_layers=True)
        hf = bb.model(w, attention_mask=sample_mask, output_hidden_states=True)
        hf_frames = bb.model._get_feature_vector_attention_mask(hf.last_hidden_state.shape[1], sample_mask)
        unpadded = bb({"waveforms": w}).hidden
        hf_unpadded = bb.model(w).last_hidden_state
    torch.testing.assert_close(ours.hidden, hf.last_hidden_state, rtol=0, atol=1e-6)
    torch.testing.assert_close(unpadded, hf_unpadded, rtol=0, atol=1e-6)
    # per-layer states: the embeddings, then every block's output, as transformers records them
    assert len(ours.layers) == L + 1 == len(hf.hidden_states)
    for a, b in zip(ours.layers, hf.hidden_states):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert ours.mask.sum(1).tolist() == hf_frames.sum(1).tolist() == [24, 15]  # 20 ms frames
    assert torch.equal(ours.mask, hf_frames) and ours.cls is None
    assert not ours.hidden[1, 15:].isnan().any()


def test_names_config_and_blocks():
    bb = make("wavlm", stable_layer_norm=True)
    assert bb.name == "transformers wavlm (random init, 2x64)"
    assert bb.config() == {"family": "wavlm", "num_layers": 2, "embed_dim": 64, "stable_layer_norm": True,
                           "normalize_waveform": False, "source": "random"}
    assert bb.block_names() == ["model.encoder.layers.0", "model.encoder.layers.1"]
    assert bb.embed_dim == D and bb.seq_dim == 1 and bb.num_prefix_tokens == 0
    # family from the default hub id, no hub access for random init
    assert HFSpeechEncoder(**TINY).family == "hubert"
    assert HFSpeechEncoder("microsoft/wavlm-base-plus", **TINY).family == "wavlm"
    # SpecAugment off: transformers does not even create the masking vector, and nothing is dropped
    cfg = bb.model.config
    assert not hasattr(bb.model, "masked_spec_embed")
    assert (cfg.mask_time_prob, cfg.apply_spec_augment, cfg.layerdrop, cfg.hidden_dropout) == (0.0, False, 0.0, 0.0)


def test_shallow_prompts_after_block_0_get_a_wavlm_position_bias_of_the_new_length():
    bb = make("wavlm")
    build_method("prompt", num_tokens=3, layers=[1]).apply(bb)
    w, lengths, _ = padded()
    out = bb({"waveforms": w, "lengths": lengths}, output_layers=True)
    assert out.hidden.shape == (2, 24, D) and all(x.shape == (2, 24, D) for x in out.layers)


# ---- 2. local directories written by save_pretrained --------------------------------------------

@pytest.mark.parametrize("family", ["wav2vec2", "wavlm"])
def test_local_save_pretrained_directory_loads_offline(family, tmp_path):
    source = make(family, seed=7, stable_layer_norm=True).eval()
    directory = tmp_path / "tiny-model"  # no family in the name: it comes from config.json
    source.model.save_pretrained(directory)
    loaded = HFSpeechEncoder(name_or_path=str(directory), pretrained=True).eval()
    assert loaded.family == family and loaded.config()["source"] == "pretrained"
    assert loaded.config()["num_layers"] == L and loaded.config()["stable_layer_norm"] is True
    assert loaded.name == f"transformers {directory} (pretrained, 2x64)"
    w, lengths, _ = padded()
    batch = {"waveforms": w, "lengths": lengths}
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).hidden, source(batch).hidden, rtol=0, atol=0)
    assert loaded.identity()["fingerprint"] == source.identity()["fingerprint"]
    assert loaded.normalize_waveform is False  # no preprocessor_config.json
    # random init from a local directory: its architecture, fresh weights
    fresh = HFSpeechEncoder(name_or_path=str(directory))
    assert fresh.config() == dict(loaded.config(), source="random")
    assert fresh.identity()["fingerprint"] != source.identity()["fingerprint"]


def test_checkpoint_preprocessor_normalisation_is_followed(tmp_path):
    source = make("hubert", seed=7).eval()
    source.model.save_pretrained(tmp_path)
    processor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["do_normalize"] is True
    loaded = HFSpeechEncoder(str(tmp_path), pretrained=True).eval()
    assert loaded.normalize_waveform is True and loaded.config()["normalize_waveform"] is True
    w, lengths, _ = padded()
    w = w * 3.0 + 0.5
    inputs = processor([w[0].numpy(), w[1, :5000].numpy()], sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = loaded({"waveforms": w, "lengths": lengths}).hidden  # padding is zeroed after normalising
        hf = loaded.model(inputs["input_values"], attention_mask=inputs["attention_mask"]).last_hidden_state
    torch.testing.assert_close(ours, hf, rtol=1e-4, atol=1e-4)  # numpy vs torch reductions


# ---- 3. the method matrix ----------------------------------------------------------------------

def batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"waveforms": torch.randn(3, 6000, generator=g), "lengths": torch.tensor([6000, 6000, 4000]),
            "labels": torch.tensor([0.5, -1.0, 2.0]), "ids": ["a", "b", "c"]}


def linear(i: int, o: int) -> int:
    return i * o + o


def norm(d: int) -> int:
    return 2 * d


BOTTLENECK = linear(D, 8) + linear(8, D)
# outside the blocks (the convolutional feature extractor is always frozen): the feature projection's layer
# norm and linear; the positional convolution under weight-norm parametrization (g: [1, 1, K] with dim=2,
# v: [D, D / G, K]) and its bias; the encoder layer norm (after the embeddings in base models, after the
# last block in large ones). HuBERT's feat_proj_layer_norm is on by default: the same shapes.
OUTSIDE = {"full": norm(C) + linear(C, D) + (K + D * (D // G) * K + D) + norm(D),
           "bitfit": C + D + D + D}
ATTENTION = 4 * linear(D, D)  # q, k, v, out
MLP = linear(D, F) + linear(F, D)
EXPECTED = {
    "wav2vec2": {
        "full": OUTSIDE["full"] + L * (ATTENTION + norm(D) + MLP + norm(D)),
        "linear_probe": 0,
        "bitfit": OUTSIDE["bitfit"] + L * (4 * D + D + F + D + D),
        "lora": L * 4 * 4 * (D + D),  # r=4 on q, k, v, out (the default preset: attention)
        "ia3": L * (D + D + F),  # k and v outputs, the MLP output layer's input
        "adapter": L * 2 * BOTTLENECK,  # houlsby: after attention.out_proj and the MLP
        "adaptformer": L * BOTTLENECK,
        "prompt": 3 * D * L,
        "ssf": L * 2 * (4 * D + D + F + D + D),  # q, k, v, out, layer_norm, MLP in/out, final_layer_norm
    },
    "wavlm": {
        # + the first block's relative-position embedding (buckets x heads) and, in every block, the gated
        # relative position bias: gru_rel_pos_const [1, H, 1, 1] and gru_rel_pos_linear (head_dim -> 8)
        "full": OUTSIDE["full"] + BUCKETS * H + L * (ATTENTION + H + linear(D // H, 8) + norm(D) + MLP + norm(D)),
        "linear_probe": 0,
        # q/k/v/out biases train: they are read raw, but as parameters, so gradients reach them
        "bitfit": OUTSIDE["bitfit"] + L * (4 * D + 8 + D + F + D + D),
        "lora": L * 4 * ((D + F) + (F + D)),  # the MLP (default preset): attention is out of reach
        "ia3": L * (F + F),  # intermediate_dense output, output_dense input
        "adapter": L * BOTTLENECK,  # pfeiffer: after the MLP
        "adaptformer": L * BOTTLENECK,
        "prompt": 3 * D * L,
        # gru_rel_pos_linear, layer_norm, MLP in/out, final_layer_norm; not q/k/v/out_proj, whose weights
        # the attention reads directly (declared bypassed: their hooks would never run)
        "ssf": L * 2 * (8 + D + F + D + D),
    },
}

add_catalogue_counts(EXPECTED, OUTSIDE["full"], BUCKETS * H)  # the same sizes as torchaudio's matrix
CASES = [(f, m) for f in EXPECTED for m in sorted(EXPECTED[f])]


def test_every_registered_method_is_in_the_hf_matrix():
    assert set(METHODS) == set(EXPECTED["wav2vec2"]) == set(EXPECTED["wavlm"]) | {"prefix"}


@pytest.mark.parametrize("family", ["wav2vec2", "hubert"])
def test_prefix_attention_without_tokens_is_transformers_own_attention(family):
    check_empty_prefix_matches_library(lambda: make_frozen(family), batch())


def test_prefix_tuning_refuses_wavlm_saying_why():
    with pytest.raises(ValueError, match="fused multi-head kernel with a gated relative position bias"):
        build_method("prefix").apply(make("wavlm"))


def test_full_count_formula_matches_the_module_structure():
    # the decomposition above, checked against the parameters transformers creates
    for family in EXPECTED:
        bb = make(family)
        outside = sum(p.numel() for n, p in bb.model.named_parameters()
                      if not n.startswith(("feature_extractor.", "encoder.layers.")))
        blocks = sum(p.numel() for p in bb.model.encoder.layers.parameters())
        assert (outside, blocks) == (OUTSIDE["full"], EXPECTED[family]["full"] - OUTSIDE["full"])
        assert bb.model.encoder.pos_conv_embed.conv.parametrizations.weight.original0.shape == (1, 1, K)


def make_frozen(family: str) -> HFSpeechEncoder:
    # The reference is the frozen backbone, as every method but full leaves it. It matters for WavLM on CPU:
    # its attention hands time-first (transposed) states to F.linear, and for such inputs torch's CPU matmul
    # takes another path (other last bits, ~5e-7 at the output) when the weight requires grad, so a frozen
    # WavLM and a trainable one differ even with equal weights (transformers' own forward does the same).
    bb = make(family)
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb


@pytest.mark.parametrize("family,name", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_methods_on_hf_encoders(family, name, tmp_path):
    check_method_guarantees(lambda: make_frozen(family), batch(), name, OPTIONS[family].get(name, {}),
                            EXPECTED[family][name], D, tmp_path)


HF_ASR_CASES = [("wav2vec2", "lora"), ("wav2vec2", "prompt"), ("wavlm", "adapter")]


@pytest.mark.parametrize("family,name", HF_ASR_CASES, ids=[f"{f}-{m}" for f, m in HF_ASR_CASES])
def test_methods_on_hf_encoders_for_transcription(family, name, tmp_path):
    # a CTC head: the guarantees hold and every utterance keeps its own frame count (18 / 18 / 12 frames)
    module = check_method_guarantees(lambda: make_frozen(family), asr_batch(), name, OPTIONS[family].get(name, {}),
                                     EXPECTED[family][name], D, tmp_path, task=ASR_TASK)
    with torch.no_grad():
        scores, out = module(asr_batch()), module.predict_step(asr_batch(), 0)
    assert scores.shape == (3, 18, len(ASR_TASK["label_names"]) + 1)
    assert scores[..., -1].sum(1).tolist() == [18, 18, 12] and out["references"] == ["AB C", "CC", "B"]


def test_frozen_and_trainable_wavlm_differ_only_in_the_last_bits():
    # the CPU quirk make_frozen works around, on transformers' own forward
    w, lengths, sample_mask = padded()
    trainable, frozen = make("wavlm").eval(), make_frozen("wavlm").eval()
    with torch.no_grad():
        a = trainable.model(w, attention_mask=sample_mask).last_hidden_state
        b = frozen.model(w, attention_mask=sample_mask).last_hidden_state
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def _params_without_gradient(family: str, name: str) -> list[str]:
    module = PeftModule(make(family), build_method(name, **OPTIONS[family].get(name, {})),
                        task_type="regression", num_outputs=1)
    module.train()
    module._step(batch())[0].backward()
    return [n for n, p in module.backbone.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("family,name", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_every_trainable_parameter_is_reached(family, name):
    # catches layers that are injected but bypassed (weights read directly instead of calling the layer)
    assert _params_without_gradient(family, name) == []


def test_feature_extractor_stays_frozen_even_for_full_fine_tuning():
    module = PeftModule(make("wav2vec2"), build_method("full"), task_type="multiclass", num_outputs=3)
    assert not any(p.requires_grad for p in module.backbone.model.feature_extractor.parameters())
    assert module.backbone.model.feature_extractor._requires_grad is False  # no backward through the CNN
    _train_steps(module, dict(batch(), labels=torch.tensor([0, 1, 2])), steps=1)


def test_wav2vec2_attention_presets_reach_the_projections():
    bb = make("hubert")
    build_method("lora", r=2, targets="qkv").apply(bb)
    names = {n.split(".lora_")[0] for n, p in bb.named_parameters() if p.requires_grad}
    assert names == {f"model.encoder.layers.{i}.attention.{p}_proj" for i in range(L) for p in "qkv"}


def test_wavlm_attention_targets_and_houlsby_adapters_say_why_not():
    with pytest.raises(ValueError, match="reads the q/k/v/out projection weights directly"):
        build_method("lora", targets="attention").apply(make("wavlm"))
    with pytest.raises(ValueError, match="reads the q/k/v/out projection weights directly"):
        build_method("ia3", targets="qkv").apply(make("wavlm"))
    with pytest.raises(ValueError, match="no 'attention_out' adapter site"):
        build_method("adapter", placement="houlsby").apply(make("wavlm"))


# ---- 4. errors ----------------------------------------------------------------------------------

def test_unknown_families_size_misuse_and_missing_directories_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown speech encoder family 'wav2vec3'; known: wav2vec2, hubert, wavlm"):
        HFSpeechEncoder(family="wav2vec3")
    with pytest.raises(ValueError, match="cannot tell the family of 'facebook/mms-300m'; pass family="):
        HFSpeechEncoder("facebook/mms-300m", **TINY)
    with pytest.raises(ValueError, match=r"size overrides \(num_layers\) only apply to random-init models"):
        HFSpeechEncoder("facebook/hubert-base-ls960", pretrained=True, num_layers=2)
    with pytest.raises(FileNotFoundError, match="local model directory .*none does not exist"):
        HFSpeechEncoder(str(tmp_path / "none"), pretrained=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HFSpeechEncoder(str(tmp_path / "empty"), pretrained=True)
    BertConfig(num_hidden_layers=1).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="has model_type 'bert'; HFSpeechEncoder supports wav2vec2, hubert, wavlm"):
        HFSpeechEncoder(str(tmp_path / "bert"))
    make("hubert").model.save_pretrained(tmp_path / "hubert")
    with pytest.raises(ValueError, match="holds a 'hubert' model, not 'wavlm'"):
        HFSpeechEncoder(str(tmp_path / "hubert"), pretrained=True, family="wavlm")
