"""ESM-2 backbones through fair-esm (import them from :mod:`peftlab_protein.backbones`).

Every published ESM-2 size is available by name. ``pretrained: true`` loads the
real weights in fair-esm's format: from a local ``.pt`` (``checkpoint_path``,
with ``<stem>-contact-regression.pt`` beside it, as fair-esm's local loader
wants) or by name from fair-esm's download URL through ``torch.hub`` (its
cache is used first, so a file already in ``$TORCH_HOME/hub/checkpoints``
loads offline). Every file is read in torch's weights-only mode (see
:mod:`peftlab.safe_load`); fair-esm then builds the model from it. Without
``pretrained`` the same architecture is built with random weights;
``num_layers`` / ``embed_dim`` / ``attention_heads`` shrink it for offline
work. Random-init backbones are for testing the pipeline, not for results.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any, Literal

import esm
import torch
from torch import Tensor, nn

from peftlab.backbone import Backbone
from peftlab.errors import CheckpointFileError
from peftlab.persistence.safe_load import hub_cache_file, load_hub_weights, load_weights_file
from peftlab_protein.backbones.esm_attention import (
    install_attention, is_fused, keep_mask, merge_heads, original_attention, rotary_heads)

# name -> (layers, embed_dim, attention heads), as published by fair-esm
ESM2_SIZES: dict[str, tuple[int, int, int]] = {
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}

ESM_ALPHABET = "ESM-1b"  # fair-esm's name for the alphabet that every ESM-2 uses


def esm_alphabet() -> esm.data.Alphabet:
    return esm.data.Alphabet.from_architecture(ESM_ALPHABET)


FAIR_ESM_MODEL_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"


def _fair_esm_data(data: Any, file: Path) -> dict[str, Any]:
    if not (isinstance(data, dict) and isinstance(data.get("model"), dict) and "cfg" in data):
        raise CheckpointFileError(f"{file}: not a fair-esm ESM-2 file (expected a dict with 'cfg' and 'model')")
    return data


def _load_fair_esm(name: str, checkpoint_path: str | None) -> esm.model.esm2.ESM2:
    """Load real ESM-2 weights in fair-esm's format, always in torch's weights-only mode.

    fair-esm's own loaders are not used to read the files: its hub loader goes
    through ``torch.hub.load_state_dict_from_url``, which unpickles with
    ``weights_only=False`` (a tampered file in the hub cache would run code).
    The files are read here, weights-only, and handed to fair-esm's
    ``load_model_and_alphabet_core``, which builds the model from them. Real
    ESM-2 files keep an ``argparse.Namespace`` in their ``cfg``: exactly that
    class is allowed. By name, the contact-regression file is not fetched
    (the contact head is dropped); a local file still needs it beside it, as
    fair-esm's local loader does, and it is read the same safe way.
    """
    allowed = [argparse.Namespace]
    if checkpoint_path is not None:
        path = Path(checkpoint_path)
        if not path.is_file():
            raise FileNotFoundError(f"ESM-2 checkpoint {path} does not exist")
        if not path.stem.startswith("esm2"):
            raise ValueError(f"{path}: fair-esm picks the architecture from the file name; keep the published "
                             f"name (e.g. esm2_t33_650M_UR50D.pt)")
        regression = path.with_name(path.stem + "-contact-regression.pt")
        if not regression.is_file():
            raise FileNotFoundError(f"{path}: fair-esm also needs {regression.name} beside it")
        model_name = path.stem
        model_data = _fair_esm_data(load_weights_file(path, "fair-esm model file", allowed), path)
        regression_data = load_weights_file(regression, "fair-esm contact-regression file", allowed)
        if not (isinstance(regression_data, dict) and isinstance(regression_data.get("model"), dict)):
            raise CheckpointFileError(f"{regression}: not a fair-esm contact-regression file")
    else:
        if name not in ESM2_SIZES:
            raise ValueError(f"unknown ESM-2 model {name!r}; published sizes: {', '.join(ESM2_SIZES)}")
        model_name, url = name, FAIR_ESM_MODEL_URL.format(name=name)
        fix = (f"copy {name}.pt to {hub_cache_file(url)} (torch.hub's cache), or pass the file as "
               f"--model.backbone.init_args.checkpoint_path FILE (with {name}-contact-regression.pt beside it)")
        model_data = _fair_esm_data(load_hub_weights(url, "ESM-2 weights", allowed, offline_fix=fix),
                                    hub_cache_file(url))
        regression_data = None
    with warnings.catch_warnings():  # without regression weights: the contact head, which is dropped anyway
        warnings.filterwarnings("ignore", message="Regression weights not found")
        model, _ = esm.pretrained.load_model_and_alphabet_core(model_name, model_data, regression_data)
    return model


class ESM2Backbone(Backbone):
    """ESM-2 (Lin et al. 2023) as a peftlab backbone.

    Args:
        name: a published ESM-2 name (``esm2_t6_8M_UR50D`` ... ``esm2_t48_15B_UR50D``).
        pretrained: load the real weights (hub by name, or ``checkpoint_path``).
        checkpoint_path: a local fair-esm ``.pt`` file (implies ``pretrained``).
        num_layers / embed_dim / attention_heads: override the size of a
            random-init model (offline tests and demos).
        token_dropout: ESM-2's token-dropout rescaling (on in the published models).
        seed: seed of the random initialisation.
        gradient_checkpointing: recompute each block's activations in the backward instead of
            keeping them (less memory, more time; see :mod:`peftlab.backbone`).
        attention: ``fused`` runs self-attention through torch's ``scaled_dot_product_attention``
            (same result as fair-esm's, 2-3x faster and far less memory at 512+ tokens; see
            :mod:`peftlab_protein.backbones.esm_attention`); ``original`` keeps fair-esm's own
            attention. Calls that ask for attention weights always use fair-esm's.

    Batch input: ``tokens`` ``[B, T]`` in the ESM alphabet, BOS first, EOS last,
    padding after. Content tokens are the residues (not BOS, EOS or padding).
    """

    input_keys = ("tokens",)

    seq_dim = 0  # fair-esm blocks take [T, B, D]
    num_prefix_tokens = 1  # BOS
    blocks_path = "model.layers"
    target_presets = {
        "attention": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
        "qv": ("self_attn.q_proj", "self_attn.v_proj"),
        "kv": ("self_attn.k_proj", "self_attn.v_proj"),
        "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "mlp": ("fc1", "fc2"),
        "attention+mlp": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                          "fc1", "fc2"),
        "all-linear": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                       "fc1", "fc2"),
        "ia3": ("self_attn.k_proj", "self_attn.v_proj", "fc2"),
        "mlp_out": ("fc2",),
    }
    adapter_sites = {"attention_out": "self_attn.out_proj", "mlp_in": "fc1", "mlp_out": "fc2"}
    resumes_at_blocks = True  # run_block keeps no state between blocks: a forward may start at any block
    after_block_paths = ("model.emb_layer_norm_after",)

    def __init__(self, name: str = "esm2_t6_8M_UR50D", pretrained: bool = False, checkpoint_path: str | None = None,
                 num_layers: int | None = None, embed_dim: int | None = None, attention_heads: int | None = None,
                 token_dropout: bool = True, seed: int = 0, gradient_checkpointing: bool = False,
                 attention: Literal["fused", "original"] = "fused") -> None:
        super().__init__()
        self.init_args = dict(name=name, pretrained=pretrained, checkpoint_path=checkpoint_path,
                              num_layers=num_layers, embed_dim=embed_dim, attention_heads=attention_heads,
                              token_dropout=token_dropout, seed=seed, gradient_checkpointing=gradient_checkpointing,
                              attention=attention)
        self.gradient_checkpointing = gradient_checkpointing
        if pretrained or checkpoint_path is not None:
            if any(v is not None for v in (num_layers, embed_dim, attention_heads)):
                raise ValueError("num_layers/embed_dim/attention_heads only apply to random-init models "
                                 "(pretrained weights fix the size)")
            model = _load_fair_esm(name, checkpoint_path)
            self.source = f"fair-esm {'file ' + str(checkpoint_path) if checkpoint_path else 'hub ' + name}"
        else:
            if name not in ESM2_SIZES:
                raise ValueError(f"unknown ESM-2 model {name!r}; published sizes: {', '.join(ESM2_SIZES)}")
            layers, dim, heads = ESM2_SIZES[name]
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = esm.model.esm2.ESM2(num_layers=num_layers or layers, embed_dim=embed_dim or dim,
                                            attention_heads=attention_heads or heads, alphabet=ESM_ALPHABET,
                                            token_dropout=token_dropout)
            self.source = f"random init (seed {seed})"
        # Features come from the encoder; the language-model and contact heads are not used.
        del model.lm_head, model.contact_head
        install_attention(model, attention)  # per instance: fair-esm's classes are untouched
        self.model = model
        self.embed_dim = model.embed_dim
        self.alphabet = model.alphabet
        self.input_padding = {"tokens": model.padding_idx}

    @property
    def name(self) -> str:
        if self.config()["source"] == "pretrained":
            return self.init_args["name"]
        return f"{self.init_args['name']}-shaped, random init ({self.model.num_layers}x{self.model.embed_dim})"

    def config(self) -> dict[str, Any]:
        return {"num_layers": self.model.num_layers, "embed_dim": self.model.embed_dim,
                "attention_heads": self.model.attention_heads, "token_dropout": self.model.token_dropout,
                "source": "pretrained" if self.init_args["pretrained"] or self.init_args["checkpoint_path"]
                else "random"}

    def embed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        # the same steps as esm.model.esm2.ESM2.forward up to the first layer
        m, tokens = self.model, batch["tokens"]
        padding = tokens.eq(m.padding_idx)
        x = m.embed_scale * m.embed_tokens(tokens)
        if m.token_dropout:
            is_mask = (tokens == m.mask_idx).unsqueeze(-1)
            x = x.masked_fill(is_mask, 0.0)
            mask_ratio_train = 0.15 * 0.8
            lengths = (~padding).sum(-1)
            observed = (tokens == m.mask_idx).sum(-1).to(x.dtype) / lengths
            x = x * (1 - mask_ratio_train) / (1 - observed)[:, None, None]
        x = x * (1 - padding.unsqueeze(-1).type_as(x))
        content = ~padding & tokens.ne(m.cls_idx) & tokens.ne(m.eos_idx)
        return x.transpose(0, 1), ~padding, content

    def run_block(self, block: nn.Module, x: Tensor, attn_mask: Tensor) -> Tensor:
        padding = ~attn_mask
        x, _ = block(x, self_attn_padding_mask=padding if padding.any() else None)
        return x

    def final_norm(self, x: Tensor) -> Tensor:
        return self.model.emb_layer_norm_after(x)


# ---- prefix tuning: fair-esm's attention with learned keys/values prepended ----------------------

def _esm_attention_with_prefix(self, prefix, query: Tensor, key=None, value=None, key_padding_mask=None,
                               need_weights: bool = True, attn_mask=None, need_head_weights: bool = False, **_):
    """fair-esm MultiheadAttention.forward's self-attention path (scaled q, rotary
    q/k, padding mask), attending over the prefix too: through SDPA when the
    module's attention is ``fused``, with fair-esm's arithmetic when ``original``.
    Returns no weights (the keys include the learned prefix)."""
    from peftlab.methods.prompts import attend_with_prefix

    q, k, v = rotary_heads(self, query, query, query)  # on the real tokens only: the prefix has no position
    dropout = self.dropout if self.training else 0.0
    if attn_mask is not None or is_fused(self):
        mask = keep_mask(key_padding_mask)
        if attn_mask is not None:  # additive [T, S]; fair-esm's ESM-2 never passes one
            mask = attn_mask.to(q.dtype) if mask is None else torch.where(mask, attn_mask.to(q.dtype), float("-inf"))
        y = attend_with_prefix(prefix, q, k, v, mask, dropout=dropout, scale=1.0)
    else:
        b, h, t, _ = q.shape
        pk, pv = prefix.heads(b, h, k.dtype)
        padding = None
        if key_padding_mask is not None:
            padding = torch.cat([key_padding_mask.new_zeros(b, pk.shape[2]).bool(), key_padding_mask.bool()], dim=1)
        y = original_attention(q, torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), padding, dropout,
                               self.training)
    return merge_heads(self, y), None


def _register_prefix_attention() -> None:
    from esm.multihead_attention import MultiheadAttention

    from peftlab.methods.prompts import register_prefix_attention

    register_prefix_attention(MultiheadAttention, _esm_attention_with_prefix)


_register_prefix_attention()
