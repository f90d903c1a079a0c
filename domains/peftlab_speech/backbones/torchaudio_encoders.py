"""wav2vec2, HuBERT and WavLM through torchaudio (:class:`TorchaudioEncoder`).

The encoders are built with torchaudio's model builders. ``pretrained: true``
loads the weights of torchaudio's pipeline bundle
(``torchaudio.pipelines.HUBERT_BASE`` ...; downloaded through ``torch.hub``,
whose cache is used first); ``checkpoint_path`` loads a local state dict in
torchaudio's format (what ``bundle.get_model().state_dict()`` holds). Both
are read in torch's weights-only mode, never by plain unpickling.
Without either, the architecture is built with random weights; ``num_layers``,
``embed_dim``, ``num_heads`` and ``ff_dim`` shrink it for offline work.

The convolutional feature extractor is frozen by default (as in every
fine-tuning recipe of these models); padding is honoured through ``lengths``
(a padding mask in attention, padded frames zeroed and excluded from pooling);
the data module crops to a maximum duration.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from peftlab.backbone import Backbone
from peftlab.errors import CheckpointFileError
from peftlab.hub import weights_unavailable
from peftlab.persistence.safe_load import hub_cache_file, load_weights_file, refusing_unsafe_pickles
from peftlab_speech.backbones.common import (ATTENTION_MODULES, MLP_MODULES, WAV2VEC2_SITES, WAVLM_MISSING_PRESETS,
                                             WAVLM_MLP_PRESETS, WAVLM_PREFIX_REFUSAL, WAVLM_SITES,
                                             standardize_valid)

_BASE = dict(extractor_mode="group_norm", extractor_conv_bias=False, encoder_embed_dim=768, encoder_num_layers=12,
             encoder_num_heads=12, encoder_ff_interm_features=3072, encoder_layer_norm_first=False)
_LARGE = dict(extractor_mode="layer_norm", extractor_conv_bias=False, encoder_embed_dim=1024, encoder_num_layers=24,
              encoder_num_heads=16, encoder_ff_interm_features=4096, encoder_layer_norm_first=True)
# name -> (builder family, architecture, pipeline bundle, normalise the waveform first)
TORCHAUDIO_MODELS: dict[str, tuple[str, dict[str, Any], str, bool]] = {
    "wav2vec2_base": ("wav2vec2", _BASE, "WAV2VEC2_BASE", False),
    "wav2vec2_large": ("wav2vec2", dict(_LARGE, extractor_mode="group_norm", encoder_layer_norm_first=False),
                       "WAV2VEC2_LARGE", False),
    "wav2vec2_large_lv60k": ("wav2vec2", dict(_LARGE, extractor_conv_bias=True), "WAV2VEC2_LARGE_LV60K", True),
    "hubert_base": ("wav2vec2", _BASE, "HUBERT_BASE", False),
    "hubert_large": ("wav2vec2", _LARGE, "HUBERT_LARGE", True),
    "wavlm_base": ("wavlm", _BASE, "WAVLM_BASE", False),
    "wavlm_base_plus": ("wavlm", _BASE, "WAVLM_BASE_PLUS", False),
    "wavlm_large": ("wavlm", _LARGE, "WAVLM_LARGE", True),
}

WAV2VEC2_PRESETS = {
    "attention": ATTENTION_MODULES, "qv": ("attention.q_proj", "attention.v_proj"),
    "kv": ("attention.k_proj", "attention.v_proj"), "mlp": MLP_MODULES,
    "attention+mlp": ATTENTION_MODULES + MLP_MODULES, "all-linear": ATTENTION_MODULES + MLP_MODULES,
    "ia3": ("attention.k_proj", "attention.v_proj", "feed_forward.output_dense"),
    "mlp_out": ("feed_forward.output_dense",),
}
# torchaudio's WavLM runs attention through nn.MultiheadAttention's fused kernel (one in_proj, and
# out_proj read as a raw weight): neither peft layers nor hooks reach q, k, v or the output there.
WAVLM_PRESETS = WAVLM_MLP_PRESETS
WAVLM_NOTES = {name: "torchaudio's WavLM computes attention in nn.MultiheadAttention's fused kernel, which "
               "injected layers cannot reach; use targets: mlp (transformers' WavLM, HFSpeechEncoder, "
               "reads its projection weights directly too)"
               for name in WAVLM_MISSING_PRESETS}


def _load_torchaudio_bundle(bundle_name: str) -> nn.Module:
    """``torchaudio.pipelines.<bundle>.get_model()``, its weights read in torch's weights-only mode.

    A bundle downloads through ``torch.hub.load_state_dict_from_url``, whose default unpickles with
    ``weights_only=False`` (a tampered file in the hub cache would run code); ``dl_kwargs`` are passed on
    to it as they are, so the file is read weights-only (torchaudio's files are plain state dicts)."""
    bundle = getattr(torchaudio.pipelines, bundle_name)
    file = hub_cache_file(getattr(bundle, "_path", bundle_name))  # where torch.hub keeps it (for messages)
    try:
        with refusing_unsafe_pickles(file, f"torchaudio {bundle_name} weights file"):
            model = bundle.get_model(dl_kwargs={"weights_only": True, "map_location": "cpu"})
    except urllib.error.URLError as e:
        raise weights_unavailable(f"torchaudio {bundle_name} weights {file.name}", e,
                                  f"copy the file to {file} (torch.hub's cache), or pass a torchaudio state dict "
                                  f"as --model.backbone.init_args.checkpoint_path FILE") from None
    except RuntimeError as e:
        raise CheckpointFileError(f"{file}: not torchaudio's {bundle_name} weights, or truncated "
                                  f"({str(e).strip().splitlines()[0]})") from e
    return getattr(model, "model", model)  # torchaudio wraps some in a waveform-normalising shell


def build_torchaudio_model(name: str, overrides: dict[str, Any], dropout: float) -> nn.Module:
    family, arch, _, _ = TORCHAUDIO_MODELS[name]
    kwargs = dict(extractor_conv_layer_config=None, encoder_projection_dropout=dropout, encoder_pos_conv_kernel=128,
                  encoder_pos_conv_groups=16, encoder_attention_dropout=dropout, encoder_ff_interm_dropout=dropout,
                  encoder_dropout=dropout, encoder_layer_drop=0.0, aux_num_out=None, **arch)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if family == "wavlm":
        return torchaudio.models.wavlm_model(encoder_num_buckets=320, encoder_max_distance=800, **kwargs)
    return torchaudio.models.wav2vec2_model(**kwargs)


class TorchaudioEncoder(Backbone):
    """wav2vec2 / HuBERT / WavLM through torchaudio.

    Args:
        name: one of ``wav2vec2_base``, ``wav2vec2_large``, ``wav2vec2_large_lv60k``,
            ``hubert_base``, ``hubert_large``, ``wavlm_base``, ``wavlm_base_plus``, ``wavlm_large``.
        pretrained: load the torchaudio bundle's weights (downloaded once).
        checkpoint_path: a local torchaudio state dict (``.pth``) for this
            architecture (with the same size overrides it was saved with).
        num_layers / embed_dim / num_heads / ff_dim: shrink a random-init model.
        conv_channels: channels of the convolutional feature extractor (default 512).
        freeze_feature_extractor: keep the convolutional front end frozen,
            whatever the method (on by default).
        dropout: dropout inside the encoder while training.
        seed: seed of the random initialisation.
        gradient_checkpointing: recompute each block's activations in the backward instead of
            keeping them (less memory, more time; see :mod:`peftlab.backbone`).

    Batch input: ``waveforms`` ``[B, N]`` (16 kHz) and ``lengths`` ``[B]``
    (valid samples). Features: one token per 20 ms frame.
    """

    input_keys = ("waveforms",)

    seq_dim = 1
    num_prefix_tokens = 0
    blocks_path = "model.encoder.transformer.layers"
    resumes_at_blocks = True

    def __init__(self, name: str = "hubert_base", pretrained: bool = False, checkpoint_path: str | None = None,
                 num_layers: int | None = None, embed_dim: int | None = None, num_heads: int | None = None,
                 ff_dim: int | None = None, conv_channels: int | None = None, freeze_feature_extractor: bool = True,
                 dropout: float = 0.0, seed: int = 0, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.init_args = dict(name=name, pretrained=pretrained, checkpoint_path=checkpoint_path,
                              num_layers=num_layers, embed_dim=embed_dim, num_heads=num_heads, ff_dim=ff_dim,
                              conv_channels=conv_channels, freeze_feature_extractor=freeze_feature_extractor,
                              dropout=dropout, seed=seed, gradient_checkpointing=gradient_checkpointing)
        self.gradient_checkpointing = gradient_checkpointing
        if name not in TORCHAUDIO_MODELS:
            raise ValueError(f"unknown torchaudio model {name!r}; known: {', '.join(TORCHAUDIO_MODELS)}")
        family, _, bundle_name, self.normalize_waveform = TORCHAUDIO_MODELS[name]
        overrides = dict(encoder_num_layers=num_layers, encoder_embed_dim=embed_dim, encoder_num_heads=num_heads,
                         encoder_ff_interm_features=ff_dim)
        if conv_channels is not None:
            overrides["extractor_conv_layer_config"] = [(conv_channels, 10, 5)] + [(conv_channels, 3, 2)] * 4 + \
                [(conv_channels, 2, 2)] * 2
        if pretrained and checkpoint_path is None:
            if any(v is not None for v in overrides.values()):
                raise ValueError("size overrides only apply to random-init models or local checkpoints of that size")
            model = _load_torchaudio_bundle(bundle_name)
            model = getattr(model, "model", model)  # torchaudio wraps some in a waveform-normalising shell
        else:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = build_torchaudio_model(name, overrides, dropout)
            if checkpoint_path is not None:
                path = Path(checkpoint_path)
                if not path.is_file():
                    raise FileNotFoundError(f"torchaudio checkpoint {path} does not exist")
                state = load_weights_file(path, f"torchaudio {name} state dict")
                missing, unexpected = model.load_state_dict(state, strict=False)
                if missing or unexpected:
                    raise ValueError(f"{path}: not a {name} state dict of this size: missing {missing[:3]}, "
                                     f"unexpected {unexpected[:3]}")
        model.aux = None
        self.model = model
        self.family = family
        self.embed_dim = model.encoder.feature_projection.projection.out_features
        # pre-norm blocks (large models); torchaudio's Transformer keeps the opposite flag for its own norm
        self.layer_norm_first = model.encoder.transformer.layers[0].layer_norm_first
        self.target_presets = WAVLM_PRESETS if family == "wavlm" else WAV2VEC2_PRESETS
        if family == "wavlm":
            self.preset_notes, self.default_targets = WAVLM_NOTES, "mlp"
        self.adapter_sites = WAVLM_SITES if family == "wavlm" else WAV2VEC2_SITES
        self.freeze_feature_extractor = freeze_feature_extractor
        self._position_bias: Tensor | None = None
        # the frozen-prefix cache (peftlab.model.prefix_cache): the CNN's output, or the states entering a block
        self.front_end_path = "model.feature_extractor"
        self.after_block_paths = () if model.encoder.transformer.layer_norm_first else \
            ("model.encoder.transformer.layer_norm",)

    @property
    def name(self) -> str:
        source = "pretrained" if self.init_args["pretrained"] or self.init_args["checkpoint_path"] else "random init"
        return f"torchaudio {self.init_args['name']} ({source}, {self.num_blocks}x{self.embed_dim})"

    def config(self) -> dict[str, Any]:
        return {"family": self.family, "num_layers": self.num_blocks, "embed_dim": self.embed_dim,
                "layer_norm_first": self.layer_norm_first,
                "source": "pretrained" if self.init_args["pretrained"] or self.init_args["checkpoint_path"]
                else "random"}

    def always_frozen(self) -> list[nn.Parameter]:
        return list(self.model.feature_extractor.parameters()) if self.freeze_feature_extractor else []

    def front_end(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        waveforms, lengths = batch["waveforms"], batch.get("lengths")
        if self.normalize_waveform:  # per utterance, over its valid samples (as fairseq does)
            waveforms = _normalize(waveforms, lengths)
        features, frame_lengths = self.model.feature_extractor(waveforms, lengths)
        frames = torch.arange(features.shape[1], device=features.device)[None, :]
        valid = frames < frame_lengths[:, None] if frame_lengths is not None else \
            torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return features, valid, valid

    def embed_front_end(self, features: Tensor, valid: Tensor, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        encoder = self.model.encoder
        x = encoder.feature_projection(features)
        x = x.masked_fill(~valid[..., None], 0.0)
        x = encoder.transformer._preprocess(x)
        self._position_bias = None
        return x, valid, valid

    def embed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        features, valid, _ = self.front_end(batch)
        return self.embed_front_end(features, valid, batch)

    def resume_at_block(self, index: int) -> None:
        self._position_bias = None

    def prefix_refusal(self, depth: int) -> str | None:
        if self.family == "wavlm" and depth > 0:
            return ("torchaudio's WavLM computes its relative position bias in block 0 and hands it on; a forward "
                    "starting at a later block would lack it (only the front end's output can be cached)")
        return super().prefix_refusal(depth)

    def run_block(self, block: nn.Module, x: Tensor, attn_mask: Tensor) -> Tensor:
        if attn_mask.all():
            x, self._position_bias = block(x, None, position_bias=self._position_bias)
        elif self.family == "wavlm":  # WavLM's attention takes a key padding mask instead
            x, self._position_bias = block(x, None, position_bias=self._position_bias, key_padding_mask=~attn_mask)
        else:  # the additive mask torchaudio's encoder builds from lengths
            t = attn_mask.shape[1]
            mask = (-10000.0 * (~attn_mask)[:, None, None, :].to(x.dtype)).expand(len(x), 1, t, t)
            x, self._position_bias = block(x, mask, position_bias=self._position_bias)
        return x

    def final_norm(self, x: Tensor) -> Tensor:
        self._position_bias = None
        transformer = self.model.encoder.transformer  # as torchaudio's Transformer.forward ends
        return x if transformer.layer_norm_first else transformer.layer_norm(x)


def _normalize(waveforms: Tensor, lengths: Tensor | None) -> Tensor:
    """Per utterance over its valid samples, as fairseq normalises the large models' input (eps 1e-5)."""
    if lengths is None:
        return F.layer_norm(waveforms, waveforms.shape[-1:])
    return standardize_valid(waveforms, lengths, eps=1e-5)


# ---- prefix tuning: torchaudio's attention with learned keys/values prepended ---------------------

def _torchaudio_attention_with_prefix(self, prefix, x: Tensor, attention_mask: Tensor | None = None,
                                      position_bias=None, key_padding_mask=None):
    """torchaudio's wav2vec2/HuBERT SelfAttention.forward, attending over the prefix too."""
    from peftlab.methods.prompts import attend_with_prefix

    b, t, d = x.shape
    heads = lambda y: y.view(b, t, self.num_heads, self.head_dim).transpose(2, 1)  # noqa: E731
    out = attend_with_prefix(prefix, heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)),
                             attention_mask, dropout=self.dropout if self.training else 0.0)
    return self.out_proj(out.transpose(1, 2).reshape(b, t, d)), None


def _register_prefix_attention() -> None:
    from torchaudio.models.wav2vec2.components import SelfAttention
    from torchaudio.models.wav2vec2.wavlm_attention import WavLMSelfAttention

    from peftlab.methods.prompts import register_prefix_attention

    register_prefix_attention(SelfAttention, _torchaudio_attention_with_prefix)
    register_prefix_attention(WavLMSelfAttention, refuse=WAVLM_PREFIX_REFUSAL)


_register_prefix_attention()
