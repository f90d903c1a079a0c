"""Self-supervised speech encoders: wav2vec2, HuBERT and WavLM.

``TorchaudioEncoder`` builds them with torchaudio's model builders.
``pretrained: true`` loads the weights of torchaudio's pipeline bundle
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

``HFSpeechEncoder`` builds the same families with transformers (``Wav2Vec2Model``,
``HubertModel``, ``WavLMModel``): a hub id or a local ``save_pretrained``
directory, or random init from the family's config; its features equal the
model's own ``last_hidden_state``. Its weights load from safetensors when the
checkpoint has them, else from a pickled ``.bin`` in weights-only mode.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from peftlab.backbone import Backbone
from peftlab.errors import CheckpointFileError
from peftlab.hub import hf_cache_dir, hf_offline_when_unreachable, weights_unavailable
from peftlab.safe_load import hub_cache_file, load_weights_file, refusing_unsafe_pickles

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

_ATTENTION = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.out_proj")
_MLP = ("feed_forward.intermediate_dense", "feed_forward.output_dense")
WAV2VEC2_PRESETS = {
    "attention": _ATTENTION, "qv": ("attention.q_proj", "attention.v_proj"),
    "kv": ("attention.k_proj", "attention.v_proj"), "mlp": _MLP, "attention+mlp": _ATTENTION + _MLP,
    "all-linear": _ATTENTION + _MLP, "ia3": ("attention.k_proj", "attention.v_proj", "feed_forward.output_dense"),
    "mlp_out": ("feed_forward.output_dense",),
}
WAV2VEC2_SITES = {"attention_out": "attention.out_proj", "mlp_in": "feed_forward.intermediate_dense",
                  "mlp_out": "feed_forward.output_dense"}
# torchaudio's WavLM runs attention through nn.MultiheadAttention's fused kernel (one in_proj, and
# out_proj read as a raw weight): neither peft layers nor hooks reach q, k, v or the output there.
WAVLM_PRESETS = {"mlp": _MLP, "all-linear": _MLP, "ia3": _MLP, "mlp_out": ("feed_forward.output_dense",)}
WAVLM_NOTES = {name: "torchaudio's WavLM computes attention in nn.MultiheadAttention's fused kernel, which "
               "injected layers cannot reach; use targets: mlp (transformers' WavLM, HFSpeechEncoder, "
               "reads its projection weights directly too)"
               for name in ("attention", "qv", "kv", "qkv", "attention+mlp")}
WAVLM_SITES = {"mlp_in": "feed_forward.intermediate_dense", "mlp_out": "feed_forward.output_dense"}


@contextlib.contextmanager
def _hub_download(name_or_path: str, is_local: bool) -> Iterator[None]:
    """Around a transformers ``from_pretrained`` of a hub name: offline (the Hub cannot be reached) it
    reads the Hugging Face cache only, and a missing model is a WeightsUnavailableError."""
    if is_local:
        yield
        return
    with hf_offline_when_unreachable() as offline:
        try:
            yield
        except OSError as e:
            if not offline:
                raise
            raise weights_unavailable(
                f"transformers model {name_or_path!r}", "the Hugging Face Hub cannot be reached, and the model is "
                f"not in its cache ({hf_cache_dir()})",
                f"save it on a connected machine (Model.from_pretrained(name).save_pretrained(DIR), with its "
                f"preprocessor_config.json) and pass the folder as --model.backbone.init_args.name DIR") from None


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

    def embed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        waveforms, lengths = batch["waveforms"], batch.get("lengths")
        if self.normalize_waveform:  # per utterance, over its valid samples (as fairseq does)
            waveforms = _normalize(waveforms, lengths)
        encoder = self.model.encoder
        x, frame_lengths = self.model.feature_extractor(waveforms, lengths)
        x = encoder.feature_projection(x)
        frames = torch.arange(x.shape[1], device=x.device)[None, :]
        valid = frames < frame_lengths[:, None] if frame_lengths is not None else \
            torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        x = x.masked_fill(~valid[..., None], 0.0)
        x = encoder.transformer._preprocess(x)
        self._position_bias = None
        return x, valid, valid

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
    if lengths is None:
        return F.layer_norm(waveforms, waveforms.shape[-1:])
    valid = (torch.arange(waveforms.shape[1], device=waveforms.device)[None, :] < lengths[:, None]).to(waveforms.dtype)
    n = valid.sum(1, keepdim=True).clamp_min(1)
    mean = (waveforms * valid).sum(1, keepdim=True) / n
    var = (((waveforms - mean) * valid) ** 2).sum(1, keepdim=True) / n
    return (waveforms - mean) / torch.sqrt(var + 1e-5) * valid


# ---- the same families through transformers ------------------------------------------------------

HF_FAMILIES = ("wav2vec2", "hubert", "wavlm")
# what a feature encoder runs with, whatever the checkpoint's training config said: no SpecAugment masking
# (then transformers does not even create ``masked_spec_embed``, a vector only masked frames would read) and
# no LayerDrop (the block loop here runs every block)
_HF_ENCODER_SETTINGS = dict(mask_time_prob=0.0, mask_feature_prob=0.0, apply_spec_augment=False, layerdrop=0.0)

HF_PRESETS = {
    "attention": _ATTENTION, "qv": ("attention.q_proj", "attention.v_proj"),
    "kv": ("attention.k_proj", "attention.v_proj"),
    "qkv": ("attention.q_proj", "attention.k_proj", "attention.v_proj"), "mlp": _MLP,
    "attention+mlp": _ATTENTION + _MLP, "all-linear": _ATTENTION + _MLP,
    "ia3": ("attention.k_proj", "attention.v_proj", "feed_forward.output_dense"),
    "mlp_out": ("feed_forward.output_dense",),
}
HF_SITES = WAV2VEC2_SITES
# transformers' WavLMAttention keeps q_proj, k_proj, v_proj and out_proj as nn.Linear modules but never calls
# them: it hands their .weight and .bias to F.multi_head_attention_forward (use_separate_proj_weight=True).
# A peft layer put in their place is bypassed (its base weight is read, the update never applied) and a
# forward hook there never runs; only the MLP (and the small gru_rel_pos_linear gate) are called as modules.
HF_WAVLM_PRESETS = {"mlp": _MLP, "all-linear": _MLP, "ia3": _MLP, "mlp_out": ("feed_forward.output_dense",)}
HF_WAVLM_NOTES = {name: "transformers' WavLM attention reads the q/k/v/out projection weights directly "
                  "(F.multi_head_attention_forward) instead of calling those layers, so injected layers there "
                  "would be silently bypassed; use targets: mlp"
                  for name in ("attention", "qv", "kv", "qkv", "attention+mlp")}
HF_WAVLM_SITES = WAVLM_SITES


def _hf_classes(family: str) -> tuple[type, type]:
    import transformers
    return {"wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
            "hubert": (transformers.HubertConfig, transformers.HubertModel),
            "wavlm": (transformers.WavLMConfig, transformers.WavLMModel)}[family]


def _family_from_name(name: str) -> str | None:
    low = name.lower()
    if "conformer" in low or "data2vec" in low:
        return None
    for family in ("wavlm", "hubert", "wav2vec2"):
        if family in low:
            return family
    return None


def _hf_weights_file(name_or_path: str, local: Path | None) -> str:
    """The pickled weights file transformers would read (for messages): a local directory's ``.bin`` /
    ``.pt`` / ``.pth``, else the hub id."""
    if local is not None:
        pickled = sorted(p for ext in ("*.bin", "*.pt", "*.pth") for p in local.glob(ext))
        return str(pickled[0]) if len(pickled) == 1 else str(local)
    return f"{name_or_path} (its pytorch_model.bin)"


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (absolute, ``./``, ``~``, deeper) is a path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


class HFSpeechEncoder(Backbone):
    """wav2vec2 / HuBERT / WavLM through transformers (``Wav2Vec2Model``, ``HubertModel``, ``WavLMModel``).

    Args:
        name_or_path: a hub model id (``facebook/hubert-base-ls960``, ``microsoft/wavlm-base-plus``...) or a
            local directory written by ``save_pretrained`` (works offline). With random init, a local
            directory gives the architecture (its ``config.json``) and a hub id only the family.
        pretrained: load the weights (``Model.from_pretrained(name_or_path)``); otherwise random init.
        family: ``wav2vec2``, ``hubert`` or ``wavlm``; ``None`` infers it from a local directory's
            ``config.json`` (``model_type``), else from the name.
        num_layers / hidden_size / num_heads / intermediate_size: shrink a random-init model (defaults: the
            family's base architecture, 12 x 768).
        conv_dim: channels of every layer of the convolutional feature extractor (default 512).
        stable_layer_norm: random init in the large models' style (pre-norm blocks, a final layer norm,
            layer-norm feature extractor: ``do_stable_layer_norm`` and ``feat_extract_norm="layer"``);
            default: the base style.
        freeze_feature_extractor: keep the convolutional front end frozen, whatever the method (on by default).
        normalize_waveform: zero-mean unit-variance per utterance over its valid samples (what the
            checkpoint's feature extractor does with ``do_normalize``); ``None`` reads ``do_normalize``
            from the checkpoint's ``preprocessor_config.json`` when pretrained, and is off for random init.
        dropout: dropout inside the encoder while training (hidden, attention, activation and projection
            dropout; the checkpoint's values are replaced). SpecAugment masking and LayerDrop are always off.
        seed: seed of the random initialisation.
        gradient_checkpointing: recompute each block's activations in the backward instead of keeping them
            (less memory, more time): peftlab's block loop (see :mod:`peftlab.backbone`), not transformers'
            ``gradient_checkpointing_enable``.

    Batch input: ``waveforms`` ``[B, N]`` (16 kHz) and ``lengths`` ``[B]`` (valid samples). Features: one
    token per 20 ms frame; the sample mask becomes a frame mask as transformers computes it (the conv
    output length of each utterance), padded frames are zeroed before the positional convolution and
    masked in attention, as ``model(input_values, attention_mask=...)`` does.
    """

    input_keys = ("waveforms",)

    seq_dim = 1
    num_prefix_tokens = 0
    blocks_path = "model.encoder.layers"

    def __init__(self, name_or_path: str = "facebook/hubert-base-ls960", pretrained: bool = False,
                 family: str | None = None, num_layers: int | None = None, hidden_size: int | None = None,
                 num_heads: int | None = None, intermediate_size: int | None = None, conv_dim: int | None = None,
                 stable_layer_norm: bool | None = None, freeze_feature_extractor: bool = True,
                 normalize_waveform: bool | None = None, dropout: float = 0.0, seed: int = 0,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.init_args = dict(name_or_path=name_or_path, pretrained=pretrained, family=family,
                              num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                              intermediate_size=intermediate_size, conv_dim=conv_dim,
                              stable_layer_norm=stable_layer_norm, freeze_feature_extractor=freeze_feature_extractor,
                              normalize_waveform=normalize_waveform, dropout=dropout, seed=seed,
                              gradient_checkpointing=gradient_checkpointing)
        self.gradient_checkpointing = gradient_checkpointing
        from transformers.masking_utils import create_bidirectional_mask

        local = Path(name_or_path).expanduser()
        is_local = local.exists()
        if is_local and not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local} is not a model directory written by save_pretrained "
                                    f"(no config.json in it)")
        if not is_local and _looks_like_path(name_or_path):
            raise FileNotFoundError(f"local model directory {local} does not exist")
        if family is not None and family not in HF_FAMILIES:
            raise ValueError(f"unknown speech encoder family {family!r}; known: {', '.join(HF_FAMILIES)}")
        local_type = json.loads((local / "config.json").read_text()).get("model_type") if is_local else None
        if family is None:
            family = self._infer_family(name_or_path, local_type, pretrained)
        if is_local and local_type != family:
            raise ValueError(f"{local} holds a {local_type!r} model, not {family!r}")
        config_cls, model_cls = _hf_classes(family)

        sizes = dict(num_hidden_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_heads,
                     intermediate_size=intermediate_size)
        overrides = {k: v for k, v in sizes.items() if v is not None}
        if stable_layer_norm is not None:
            overrides.update(do_stable_layer_norm=stable_layer_norm,
                             feat_extract_norm="layer" if stable_layer_norm else "group")
        if pretrained and (overrides or conv_dim is not None):
            given = [k for k in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "conv_dim",
                                 "stable_layer_norm") if self.init_args[k] is not None]
            raise ValueError(f"size overrides ({', '.join(given)}) only apply to random-init models; "
                             f"pretrained weights come with their own architecture")
        settings = dict(_HF_ENCODER_SETTINGS, hidden_dropout=dropout, attention_dropout=dropout,
                        activation_dropout=dropout, feat_proj_dropout=dropout)

        if pretrained:
            with _hub_download(name_or_path, is_local):
                config = config_cls.from_pretrained(name_or_path, **settings)
            if config.model_type != family:
                raise ValueError(f"{name_or_path} holds a {config.model_type!r} model, not {family!r}")
            self._check_supported(config, name_or_path)
            # transformers reads safetensors when the checkpoint has them, else a pickled .bin / .pt, which is
            # read in torch's weights-only mode (said explicitly: it is the default of transformers 5 only)
            with refusing_unsafe_pickles(_hf_weights_file(name_or_path, local if is_local else None),
                                         "transformers weights file"), _hub_download(name_or_path, is_local):
                model = model_cls.from_pretrained(name_or_path, config=config, weights_only=True)
        else:
            if is_local:  # the directory's architecture, then the overrides
                config = config_cls.from_pretrained(local, **settings)
                for k, v in overrides.items():
                    setattr(config, k, v)
            else:
                config = config_cls(**settings, **overrides)
            if conv_dim is not None:
                config.conv_dim = (conv_dim,) * len(config.conv_dim)
            self._check_supported(config, name_or_path)
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = model_cls(config)
        if normalize_waveform is None:
            normalize_waveform = pretrained and self._checkpoint_normalizes(name_or_path, local if is_local else None)
        self.model = model
        self.family = family
        self.normalize_waveform = bool(normalize_waveform)
        self.stable_layer_norm = bool(model.config.do_stable_layer_norm)
        self.embed_dim = model.config.hidden_size
        self.target_presets = HF_WAVLM_PRESETS if family == "wavlm" else HF_PRESETS
        if family == "wavlm":
            self.preset_notes, self.default_targets = HF_WAVLM_NOTES, "mlp"
            self.bypassed_modules = tuple(f"attention.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
        self.adapter_sites = HF_WAVLM_SITES if family == "wavlm" else HF_SITES
        self.freeze_feature_extractor = freeze_feature_extractor
        if freeze_feature_extractor:
            # transformers' feature encoder marks its input as requiring grad in training (for gradient
            # checkpointing) unless told it is frozen; that would run backward through the frozen CNN
            model.feature_extractor._requires_grad = False
        self._create_mask = create_bidirectional_mask
        self._reset_state()

    # ---- construction helpers -------------------------------------------------------------------
    @staticmethod
    def _infer_family(name_or_path: str, local_type: str | None, pretrained: bool) -> str:
        if Path(name_or_path).expanduser().exists():
            if local_type not in HF_FAMILIES:
                raise ValueError(f"{name_or_path}/config.json has model_type {local_type!r}; "
                                 f"HFSpeechEncoder supports {', '.join(HF_FAMILIES)}")
            return local_type
        family = _family_from_name(name_or_path)
        if family is None and pretrained:
            from transformers import AutoConfig
            with _hub_download(name_or_path, False):
                model_type = AutoConfig.from_pretrained(name_or_path).model_type
            family = model_type if model_type in HF_FAMILIES else None
        if family is None:
            raise ValueError(f"cannot tell the family of {name_or_path!r}; pass family= one of "
                             f"{', '.join(HF_FAMILIES)}")
        return family

    @staticmethod
    def _check_supported(config, name: str) -> None:
        if getattr(config, "add_adapter", False):
            raise ValueError(f"{name}: add_adapter=True (a strided conv adapter after the encoder, which changes the "
                             f"frame rate) is not supported by HFSpeechEncoder")

    @staticmethod
    def _checkpoint_normalizes(name_or_path: str, local: Path | None) -> bool:
        if local is not None:
            path = local / "preprocessor_config.json"
            return bool(json.loads(path.read_text()).get("do_normalize", False)) if path.is_file() else False
        try:
            from transformers import Wav2Vec2FeatureExtractor
            return bool(Wav2Vec2FeatureExtractor.from_pretrained(name_or_path).do_normalize)
        except OSError:
            return False

    def _reset_state(self) -> None:
        self._block_index = 0
        self._position_bias: Tensor | None = None
        self._mask_source: Tensor | None = None
        self._mask: Tensor | None = None

    # ---- identity -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        source = "pretrained" if self.init_args["pretrained"] else "random init"
        what = self.init_args["name_or_path"] if self.init_args["pretrained"] or \
            Path(self.init_args["name_or_path"]).expanduser().exists() else self.family
        return f"transformers {what} ({source}, {self.num_blocks}x{self.embed_dim})"

    def config(self) -> dict[str, Any]:
        return {"family": self.family, "num_layers": self.num_blocks, "embed_dim": self.embed_dim,
                "stable_layer_norm": self.stable_layer_norm, "normalize_waveform": self.normalize_waveform,
                "source": "pretrained" if self.init_args["pretrained"] else "random"}

    def always_frozen(self) -> list[nn.Parameter]:
        frozen = list(self.model.feature_extractor.parameters()) if self.freeze_feature_extractor else []
        masked = getattr(self.model, "masked_spec_embed", None)  # only read by SpecAugment, which is off
        return frozen + ([masked] if isinstance(masked, nn.Parameter) else [])

    # ---- the forward, as transformers' XModel.forward + XEncoder(StableLayerNorm).forward ---------------
    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Valid frames per utterance: the conv stack's output length (``_get_feat_extract_output_lengths``)."""
        for kernel, stride in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def embed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        self._reset_state()
        waveforms, lengths = batch["waveforms"], batch.get("lengths")
        if self.normalize_waveform:
            waveforms = _hf_normalize(waveforms, lengths)
        model, encoder = self.model, self.model.encoder
        features = model.feature_extractor(waveforms).transpose(1, 2)
        x = model.feature_projection(features)
        x = x[0] if isinstance(x, tuple) else x  # wav2vec2 / WavLM also return the normalised features
        frames = torch.arange(x.shape[1], device=x.device)[None, :]
        if lengths is not None:
            valid = frames < self.frame_lengths(lengths.to(x.device))[:, None]
            x = x.masked_fill(~valid[..., None], 0.0)  # "make sure padded tokens output 0"
        else:
            valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        x = x + encoder.pos_conv_embed(x)
        if not self.stable_layer_norm:
            x = encoder.layer_norm(x)
        x = encoder.dropout(x)
        return x, valid, valid

    def run_block(self, block: nn.Module, x: Tensor, attn_mask: Tensor) -> Tensor:
        index, self._block_index = self._block_index, self._block_index + 1
        if self.family == "wavlm":
            # WavLM's attention takes the [B, T] mask itself (as a key padding mask) and a relative position
            # bias that the first block computes from its rel_attn_embed and every later block reuses
            bias = self._position_bias
            if bias is not None and bias.shape[-1] != x.shape[1]:  # tokens were inserted after block 0
                bias = self._relative_position_bias(x)
            kwargs = {} if self.stable_layer_norm else {"index": index}
            x, self._position_bias = block(x, attention_mask=attn_mask, position_bias=bias, **kwargs)
            return x
        if self._mask_source is not attn_mask:  # build the layers' mask once per mask, as the encoder does
            self._mask_source = attn_mask
            self._mask = self._create_mask(config=self.model.config, inputs_embeds=x, attention_mask=attn_mask)
        return block(x, attention_mask=self._mask)

    def _relative_position_bias(self, x: Tensor) -> Tensor:
        attention = self.model.encoder.layers[0].attention
        bsz, t = x.shape[:2]
        bias = attention.compute_bias(t, t)
        return bias.unsqueeze(0).repeat(bsz, 1, 1, 1).view(bsz * attention.num_heads, t, t)

    def final_norm(self, x: Tensor) -> Tensor:
        self._reset_state()
        return self.model.encoder.layer_norm(x) if self.stable_layer_norm else x


def _hf_normalize(waveforms: Tensor, lengths: Tensor | None) -> Tensor:
    """``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``: per utterance over its valid samples
    (population variance, eps 1e-7), padding set to 0."""
    if lengths is None:
        mean = waveforms.mean(1, keepdim=True)
        var = waveforms.var(1, unbiased=False, keepdim=True)
        return (waveforms - mean) / torch.sqrt(var + 1e-7)
    valid = (torch.arange(waveforms.shape[1], device=waveforms.device)[None, :]
             < lengths.to(waveforms.device)[:, None]).to(waveforms.dtype)
    n = valid.sum(1, keepdim=True).clamp_min(1)
    mean = (waveforms * valid).sum(1, keepdim=True) / n
    var = (((waveforms - mean) * valid) ** 2).sum(1, keepdim=True) / n
    return (waveforms - mean) / torch.sqrt(var + 1e-7) * valid


# ---- prefix tuning: the libraries' attention with learned keys/values prepended ------------------

def _torchaudio_attention_with_prefix(self, prefix, x: Tensor, attention_mask: Tensor | None = None,
                                      position_bias=None, key_padding_mask=None):
    """torchaudio's wav2vec2/HuBERT SelfAttention.forward, attending over the prefix too."""
    from peftlab.methods.prefix import attend_with_prefix

    b, t, d = x.shape
    heads = lambda y: y.view(b, t, self.num_heads, self.head_dim).transpose(2, 1)  # noqa: E731
    out = attend_with_prefix(prefix, heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)),
                             attention_mask, dropout=self.dropout if self.training else 0.0)
    return self.out_proj(out.transpose(1, 2).reshape(b, t, d)), None


def _hf_attention_with_prefix(self, prefix, hidden_states: Tensor, key_value_states=None, attention_mask=None,
                              output_attentions: bool = False, **kwargs):
    """transformers' Wav2Vec2Attention / HubertAttention.forward (self-attention), attending over the prefix too."""
    from peftlab.methods.prefix import attend_with_prefix

    if key_value_states is not None:
        raise ValueError("prefix tuning: cross-attention is not supported")
    b, t, _ = hidden_states.shape
    heads = lambda y: y.view(b, t, -1, self.head_dim).transpose(1, 2)  # noqa: E731
    out = attend_with_prefix(prefix, heads(self.q_proj(hidden_states)), heads(self.k_proj(hidden_states)),
                             heads(self.v_proj(hidden_states)), attention_mask,
                             dropout=self.dropout if self.training else 0.0, scale=self.scaling)
    return self.out_proj(out.transpose(1, 2).reshape(b, t, -1)), None


def _register_prefix_attention() -> None:
    from torchaudio.models.wav2vec2.components import SelfAttention
    from torchaudio.models.wav2vec2.wavlm_attention import WavLMSelfAttention
    from transformers.models.hubert.modeling_hubert import HubertAttention
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2Attention
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    from peftlab.methods.prefix import register_prefix_attention

    register_prefix_attention(SelfAttention, _torchaudio_attention_with_prefix)
    register_prefix_attention(Wav2Vec2Attention, _hf_attention_with_prefix)
    register_prefix_attention(HubertAttention, _hf_attention_with_prefix)
    why = ("WavLM's attention runs in torch's fused multi-head kernel with a gated relative position bias "
           "over exactly the input positions; there is no place for prefix keys (use lora on the MLP or adapters)")
    register_prefix_attention(WavLMSelfAttention, refuse=why)
    register_prefix_attention(WavLMAttention, refuse=why)


_register_prefix_attention()
