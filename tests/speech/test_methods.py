"""The method x backbone matrix on speech encoders built by torchaudio:
wav2vec2 (separate q/k/v projections) and WavLM (attention in
nn.MultiheadAttention's fused kernel, relative position bias). Every
registered method keeps the foundation's guarantees or fails saying why."""

from __future__ import annotations

import pytest
import torch

from peftlab import METHODS, build_method
from peftlab_speech.backbones import TorchaudioEncoder

from tests.method_checks import (SMALL_OPTIONS, TARGET_SHAPE_METHODS, adapter_family_count,
                                  check_empty_prefix_matches_library, check_method_guarantees, target_shape_count)

D, F, H, L, C, K = 64, 128, 4, 2, 32, 128  # width, MLP, heads, blocks, conv channels, pos-conv kernel
TINY = dict(num_layers=L, embed_dim=D, num_heads=H, ff_dim=F, conv_channels=C)


def make(family: str, seed: int = 0) -> TorchaudioEncoder:
    return TorchaudioEncoder("wav2vec2_base" if family == "wav2vec2" else "wavlm_base", seed=seed, **TINY)


def batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"waveforms": torch.randn(3, 6000, generator=g), "lengths": torch.tensor([6000, 6000, 4000]),
            "labels": torch.tensor([0.5, -1.0, 2.0]), "ids": ["a", "b", "c"]}


def linear(i: int, o: int) -> int:
    return i * o + o


BOTTLENECK = linear(D, 8) + linear(8, D)
COMMON = {  # outside the blocks, the feature extractor excluded: projection, positional conv, encoder norm
    "full": 2 * C + linear(C, D) + (K + D * (D // 16) * K + D) + 2 * D,
    "bitfit": C + D + D + D,
}
EXPECTED = {
    "wav2vec2": {
        "full": COMMON["full"] + L * (4 * linear(D, D) + 2 * D + linear(D, F) + linear(F, D) + 2 * D),
        "linear_probe": 0,
        "bitfit": COMMON["bitfit"] + L * (4 * D + D + F + D + D),
        "lora": L * 4 * 4 * 2 * D,
        "ia3": L * (2 * D + F),
        "adapter": L * 2 * BOTTLENECK,
        "adaptformer": L * BOTTLENECK,
        "prompt": 3 * D * L,
        "ssf": L * 2 * (7 * D + F),
    },
    "wavlm": {
        "full": COMMON["full"] + 320 * H + L * (linear(D, 3 * D) + linear(D, D) + linear(D // H, 8) + H
                                                + 2 * D + linear(D, F) + linear(F, D) + 2 * D),
        "linear_probe": 0,
        "bitfit": COMMON["bitfit"] + L * (3 * D + D + 8 + D + F + D + D),
        "lora": L * 4 * ((D + F) + (F + D)),  # the MLP: attention is out of reach (see below)
        "ia3": L * 2 * F,
        "adapter": L * BOTTLENECK,  # pfeiffer: after the MLP
        "adaptformer": L * BOTTLENECK,
        "prompt": 3 * D * L,
        "ssf": L * 2 * (8 + D + F + D + D),  # gru gate, norms, MLP; not the fused attention output
    },
}

# the methods added with the full catalogue: counts from the shapes they adapt (tests/method_checks.py);
# shared with tests/speech/test_hf_encoders.py, whose encoders have the same sizes
NEW_TARGETS = {"wav2vec2": [(D, D)] * 4, "wavlm": [(D, F), (F, D)]}  # default targets: attention; WavLM's MLP


def add_catalogue_counts(expected: dict[str, dict[str, int]], outside_full: int, position_table: int) -> None:
    """Add the catalogue's methods to a speech matrix, given the parameters outside the blocks
    (full fine-tuning) and WavLM's relative-position table (only in its first block)."""
    for family, table in expected.items():
        targets = NEW_TARGETS[family]
        table.update({m: L * target_shape_count(m, SMALL_OPTIONS[m], targets) for m in TARGET_SHAPE_METHODS})
        table.update({m: adapter_family_count(m, SMALL_OPTIONS[m], D, L) for m in ("compacter", "loreft", "prefix")})
        table["ln_tuning"] = L * 2 * 2 * D + 2 * D + 2 * C  # the blocks' two norms, the encoder's, the projection's
        first_block_extra = position_table if family == "wavlm" else 0
        table["partial"] = (table["full"] - outside_full - first_block_extra) // L  # the top block
        table["combined"] = L * target_shape_count("lora", {"r": 2}, targets) + table["bitfit"]
    del expected["wavlm"]["prefix"]  # refused, see test_prefix_tuning_refuses_wavlm_saying_why


add_catalogue_counts(EXPECTED, COMMON["full"], 320 * H)

OPTIONS = {"wav2vec2": {"lora": {"r": 4}, "adapter": {"bottleneck": 8}, "adaptformer": {"bottleneck": 8},
                        "prompt": {"num_tokens": 3, "deep": True}, **SMALL_OPTIONS},
           "wavlm": {"lora": {"r": 4}, "adapter": {"bottleneck": 8, "placement": "pfeiffer"},
                     "adaptformer": {"bottleneck": 8}, "prompt": {"num_tokens": 3, "deep": True}, **SMALL_OPTIONS}}
CASES = [(f, m) for f in EXPECTED for m in sorted(EXPECTED[f])]


def test_every_registered_method_is_in_the_speech_matrix():
    assert set(METHODS) == set(EXPECTED["wav2vec2"]) == set(EXPECTED["wavlm"]) | {"prefix"}


@pytest.mark.parametrize("family,name", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_methods_on_torchaudio_encoders(family, name, tmp_path):
    check_method_guarantees(lambda: make(family), batch(), name, OPTIONS[family].get(name, {}),
                            EXPECTED[family][name], D, tmp_path)


def test_feature_extractor_stays_frozen_even_for_full_fine_tuning():
    from peftlab import PeftModule
    module = PeftModule(make("wav2vec2"), build_method("full"), task_type="multiclass", num_outputs=3)
    assert not any(p.requires_grad for p in module.backbone.model.feature_extractor.parameters())


def test_wavlm_attention_targets_and_houlsby_adapters_say_why_not():
    with pytest.raises(ValueError, match="fused kernel, which injected layers cannot reach"):
        build_method("lora", targets="attention").apply(make("wavlm"))
    with pytest.raises(ValueError, match="no 'attention_out' adapter site"):
        build_method("adapter", placement="houlsby").apply(make("wavlm"))


def test_prefix_attention_without_tokens_is_torchaudios_own_attention():
    check_empty_prefix_matches_library(lambda: make("wav2vec2"), batch())


def test_prefix_tuning_refuses_wavlm_saying_why():
    with pytest.raises(ValueError, match="fused multi-head kernel with a gated relative position bias"):
        build_method("prefix").apply(make("wavlm"))


# ---- the same guarantees with a CTC head (task_type transcription): methods that insert tokens (prompts,
# prefixes) must give the head one score row per audio frame, so the CTC alignment still holds
ASR_VOCAB = ["<blank>", "|", "A", "B", "C"]
ASR_TASK = {"task_type": "transcription", "num_outputs": len(ASR_VOCAB), "label_names": ASR_VOCAB}
ASR_CASES = [("wav2vec2", "lora"), ("wav2vec2", "adapter"), ("wav2vec2", "prompt"), ("wav2vec2", "prefix"),
             ("wavlm", "lora"), ("wavlm", "prompt")]


def asr_batch() -> dict:
    b = batch()  # 6000 / 6000 / 4000 samples: 18 / 18 / 12 frames of 20 ms
    b["labels"] = torch.tensor([[2, 3, 1, 4], [4, 4, -100, -100], [3, -100, -100, -100]])
    return b


@pytest.mark.parametrize("family,name", ASR_CASES, ids=[f"{f}-{m}" for f, m in ASR_CASES])
def test_methods_on_torchaudio_encoders_for_transcription(family, name, tmp_path):
    module = check_method_guarantees(lambda: make(family), asr_batch(), name, OPTIONS[family].get(name, {}),
                                     EXPECTED[family][name], D, tmp_path, task=ASR_TASK)
    with torch.no_grad():
        out, scores = module.predict_step(asr_batch(), 0), module(asr_batch())
    assert scores.shape == (3, 18, len(ASR_VOCAB) + 1)  # every frame scored, inserted tokens stripped
    assert scores[..., -1].sum(1).tolist() == [18, 18, 12]  # each utterance's own frame count
    assert out["references"] == ["AB C", "CC", "B"] and len(out["hypotheses"]) == 3
