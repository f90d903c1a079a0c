"""wav2vec2, HuBERT and WavLM through transformers (:class:`HFSpeechEncoder`).

``Wav2Vec2Model``, ``HubertModel`` and ``WavLMModel``: a hub id or a local
``save_pretrained`` directory, or random init from the family's config; the
features equal the model's own ``last_hidden_state``. Weights load from
safetensors when the checkpoint has them, else from a pickled ``.bin`` in
weights-only mode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from peftlab.backbone import Backbone
from peftlab.hub import transformers_download
from peftlab.persistence.safe_load import refusing_unsafe_pickles
from peftlab_speech.backbones.common import (ATTENTION_MODULES, MLP_MODULES, WAV2VEC2_SITES, WAVLM_MISSING_PRESETS,
                                             WAVLM_MLP_PRESETS, WAVLM_PREFIX_REFUSAL, WAVLM_SITES,
                                             standardize_valid)

HF_FAMILIES = ("wav2vec2", "hubert", "wavlm")
# what a feature encoder runs with, whatever the checkpoint's training config said: no SpecAugment masking
# (then transformers does not even create ``masked_spec_embed``, a vector only masked frames would read) and
# no LayerDrop (the block loop here runs every block)
_HF_ENCODER_SETTINGS = dict(mask_time_prob=0.0, mask_feature_prob=0.0, apply_spec_augment=False, layerdrop=0.0)

HF_PRESETS = {
    "attention": ATTENTION_MODULES, "qv": ("attention.q_proj", "attention.v_proj"),
    "kv": ("attention.k_proj", "attention.v_proj"),
    "qkv": ("attention.q_proj", "attention.k_proj", "attention.v_proj"), "mlp": MLP_MODULES,
    "attention+mlp": ATTENTION_MODULES + MLP_MODULES, "all-linear": ATTENTION_MODULES + MLP_MODULES,
    "ia3": ("attention.k_proj", "attention.v_proj", "feed_forward.output_dense"),
    "mlp_out": ("feed_forward.output_dense",),
}
HF_SITES = WAV2VEC2_SITES
# transformers' WavLMAttention keeps q_proj, k_proj, v_proj and out_proj as nn.Linear modules but never calls
# them: it hands their .weight and .bias to F.multi_head_attention_forward (use_separate_proj_weight=True).
# A peft layer put in their place is bypassed (its base weight is read, the update never applied) and a
# forward hook there never runs; only the MLP (and the small gru_rel_pos_linear gate) are called as modules.
HF_WAVLM_PRESETS = WAVLM_MLP_PRESETS
HF_WAVLM_NOTES = {name: "transformers' WavLM attention reads the q/k/v/out projection weights directly "
                  "(F.multi_head_attention_forward) instead of calling those layers, so injected layers there "
                  "would be silently bypassed; use targets: mlp"
                  for name in WAVLM_MISSING_PRESETS}
HF_WAVLM_SITES = WAVLM_SITES


def _hub_download(name_or_path: str, is_local: bool):
    """Around a transformers ``from_pretrained`` of a hub name (see :func:`peftlab.hub.transformers_download`)."""
    return transformers_download(
        "transformers model", name_or_path, is_local,
        "save it on a connected machine (Model.from_pretrained(name).save_pretrained(DIR), with its "
        "preprocessor_config.json) and pass the folder as --model.backbone.init_args.name DIR")


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
    resumes_at_blocks = True

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

        local, family = self._locate(name_or_path, family, pretrained)
        overrides = self._size_overrides()
        settings = dict(_HF_ENCODER_SETTINGS, hidden_dropout=dropout, attention_dropout=dropout,
                        activation_dropout=dropout, feat_proj_dropout=dropout)
        if pretrained:
            model = self._load_pretrained(name_or_path, local, family, settings)
        else:
            model = self._build_random(name_or_path, local, family, settings, overrides, conv_dim, seed)
        if normalize_waveform is None:
            normalize_waveform = pretrained and self._checkpoint_normalizes(name_or_path, local)
        self._use_model(model, family, bool(normalize_waveform), freeze_feature_extractor)
        self._create_mask = create_bidirectional_mask
        self._reset_state()

    # ---- construction helpers -------------------------------------------------------------------
    @classmethod
    def _locate(cls, name_or_path: str, family: str | None, pretrained: bool) -> tuple[Path | None, str]:
        """The local model directory (``None`` for a hub id) and the family, both checked."""
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
            family = cls._infer_family(name_or_path, local_type, pretrained)
        if is_local and local_type != family:
            raise ValueError(f"{local} holds a {local_type!r} model, not {family!r}")
        return (local if is_local else None), family

    def _size_overrides(self) -> dict[str, Any]:
        """The config fields the size options set (random init only: pretrained weights bring their own)."""
        args = self.init_args
        sizes = dict(num_hidden_layers=args["num_layers"], hidden_size=args["hidden_size"],
                     num_attention_heads=args["num_heads"], intermediate_size=args["intermediate_size"])
        overrides = {k: v for k, v in sizes.items() if v is not None}
        if args["stable_layer_norm"] is not None:
            overrides.update(do_stable_layer_norm=args["stable_layer_norm"],
                             feat_extract_norm="layer" if args["stable_layer_norm"] else "group")
        if args["pretrained"] and (overrides or args["conv_dim"] is not None):
            given = [k for k in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "conv_dim",
                                 "stable_layer_norm") if args[k] is not None]
            raise ValueError(f"size overrides ({', '.join(given)}) only apply to random-init models; "
                             f"pretrained weights come with their own architecture")
        return overrides

    @classmethod
    def _load_pretrained(cls, name_or_path: str, local: Path | None, family: str,
                         settings: dict[str, Any]) -> nn.Module:
        """``Model.from_pretrained``: the checkpoint's config (with ``settings``) and weights."""
        config_cls, model_cls = _hf_classes(family)
        is_local = local is not None
        with _hub_download(name_or_path, is_local):
            config = config_cls.from_pretrained(name_or_path, **settings)
        if config.model_type != family:
            raise ValueError(f"{name_or_path} holds a {config.model_type!r} model, not {family!r}")
        cls._check_supported(config, name_or_path)
        # transformers reads safetensors when the checkpoint has them, else a pickled .bin / .pt, which is
        # read in torch's weights-only mode (said explicitly: it is the default of transformers 5 only)
        with refusing_unsafe_pickles(_hf_weights_file(name_or_path, local), "transformers weights file"), \
                _hub_download(name_or_path, is_local):
            return model_cls.from_pretrained(name_or_path, config=config, weights_only=True)

    @classmethod
    def _build_random(cls, name_or_path: str, local: Path | None, family: str, settings: dict[str, Any],
                      overrides: dict[str, Any], conv_dim: int | None, seed: int) -> nn.Module:
        """Random weights on a local directory's architecture (else the family's), then the size overrides."""
        config_cls, model_cls = _hf_classes(family)
        if local is not None:  # the directory's architecture, then the overrides
            config = config_cls.from_pretrained(local, **settings)
            for k, v in overrides.items():
                setattr(config, k, v)
        else:
            config = config_cls(**settings, **overrides)
        if conv_dim is not None:
            config.conv_dim = (conv_dim,) * len(config.conv_dim)
        cls._check_supported(config, name_or_path)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return model_cls(config)

    def _use_model(self, model: nn.Module, family: str, normalize_waveform: bool,
                   freeze_feature_extractor: bool) -> None:
        """Adopt the built model: its size, the family's presets and adapter sites, the frozen front end."""
        self.model = model
        self.family = family
        self.normalize_waveform = normalize_waveform
        self.stable_layer_norm = bool(model.config.do_stable_layer_norm)
        self.embed_dim = model.config.hidden_size
        self.target_presets = HF_WAVLM_PRESETS if family == "wavlm" else HF_PRESETS
        if family == "wavlm":
            self.preset_notes, self.default_targets = HF_WAVLM_NOTES, "mlp"
            self.bypassed_modules = tuple(f"attention.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
        self.adapter_sites = HF_WAVLM_SITES if family == "wavlm" else HF_SITES
        self.freeze_feature_extractor = freeze_feature_extractor
        # the frozen-prefix cache (peftlab.model.prefix_cache): the CNN's output, or the states entering a block
        self.front_end_path = "model.feature_extractor"
        self.after_block_paths = ("model.encoder.layer_norm",) if self.stable_layer_norm else ()
        if freeze_feature_extractor:
            # transformers' feature encoder marks its input as requiring grad in training (for gradient
            # checkpointing) unless told it is frozen; that would run backward through the frozen CNN
            model.feature_extractor._requires_grad = False

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

    def front_end(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        waveforms, lengths = batch["waveforms"], batch.get("lengths")
        if self.normalize_waveform:
            waveforms = _hf_normalize(waveforms, lengths)
        features = self.model.feature_extractor(waveforms).transpose(1, 2)
        if lengths is not None:
            frames = torch.arange(features.shape[1], device=features.device)[None, :]
            valid = frames < self.frame_lengths(lengths.to(features.device))[:, None]
        else:
            valid = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return features, valid, valid

    def embed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        features, valid, _ = self.front_end(batch)
        return self.embed_front_end(features, valid, batch)

    def embed_front_end(self, features: Tensor, valid: Tensor, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        self._reset_state()
        model, encoder = self.model, self.model.encoder
        x = model.feature_projection(features)
        x = x[0] if isinstance(x, tuple) else x  # wav2vec2 / WavLM also return the normalised features
        if batch.get("lengths") is not None:
            x = x.masked_fill(~valid[..., None], 0.0)  # "make sure padded tokens output 0"
        x = x + encoder.pos_conv_embed(x)
        if not self.stable_layer_norm:
            x = encoder.layer_norm(x)
        x = encoder.dropout(x)
        return x, valid, valid

    def resume_at_block(self, index: int) -> None:
        self._reset_state()
        self._block_index = index

    def run_block(self, block: nn.Module, x: Tensor, attn_mask: Tensor) -> Tensor:
        index, self._block_index = self._block_index, self._block_index + 1
        if self.family == "wavlm":
            # WavLM's attention takes the [B, T] mask itself (as a key padding mask) and a relative position
            # bias that the first block computes from its rel_attn_embed and every later block reuses
            bias = self._position_bias
            if (bias is not None and bias.shape[-1] != x.shape[1]) or (bias is None and index > 0):
                bias = self._relative_position_bias(x)  # tokens inserted after block 0; a forward resumed later
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
    return standardize_valid(waveforms, lengths, eps=1e-7)


# ---- prefix tuning: transformers' attention with learned keys/values prepended --------------------

def _hf_attention_with_prefix(self, prefix, hidden_states: Tensor, key_value_states=None, attention_mask=None,
                              output_attentions: bool = False, **kwargs):
    """transformers' Wav2Vec2Attention / HubertAttention.forward (self-attention), attending over the prefix too."""
    from peftlab.methods.prompts import attend_with_prefix

    if key_value_states is not None:
        raise ValueError("prefix tuning: cross-attention is not supported")
    b, t, _ = hidden_states.shape
    heads = lambda y: y.view(b, t, -1, self.head_dim).transpose(1, 2)  # noqa: E731
    out = attend_with_prefix(prefix, heads(self.q_proj(hidden_states)), heads(self.k_proj(hidden_states)),
                             heads(self.v_proj(hidden_states)), attention_mask,
                             dropout=self.dropout if self.training else 0.0, scale=self.scaling)
    return self.out_proj(out.transpose(1, 2).reshape(b, t, -1)), None


def _register_prefix_attention() -> None:
    from transformers.models.hubert.modeling_hubert import HubertAttention
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2Attention
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    from peftlab.methods.prompts import register_prefix_attention

    register_prefix_attention(Wav2Vec2Attention, _hf_attention_with_prefix)
    register_prefix_attention(HubertAttention, _hf_attention_with_prefix)
    register_prefix_attention(WavLMAttention, refuse=WAVLM_PREFIX_REFUSAL)


_register_prefix_attention()
