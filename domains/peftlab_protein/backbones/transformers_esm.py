"""ESM-2 through transformers (:class:`HFProteinEncoder`): what most users load
(``facebook/esm2_t33_650M_UR50D``...), by hub id or from a local
``save_pretrained`` directory.

transformers' ESM-2 uses the same 33-token alphabet, in the same order, as
fair-esm's (``<cls> <pad> <eos> <unk>``, the residues, ``<mask>``), so the
protein data modules' ``tokens`` feed both backbones unchanged, and the same
weights give the same features (``tests/protein/test_transformers_esm.py``
converts a fair-esm model's state dict to transformers' layout and compares).
ProtT5 and Ankh (``T5EncoderModel``, their own tokenisers) are not supported
yet: they are a different family with relative position biases and their own
residue alphabet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from peftlab.backbone import Backbone
from peftlab.hub import transformers_download
from peftlab.persistence.safe_load import refusing_unsafe_pickles
from peftlab_protein.backbones.fair_esm import esm_alphabet

HF_ESM_ATTENTION = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
HF_ESM_MLP = ("intermediate.dense", "output.dense")
# fair-esm's published sizes by their transformers hub ids (the same models)
HF_ESM_SIZES: dict[str, tuple[int, int, int]] = {
    "facebook/esm2_t6_8M_UR50D": (6, 320, 20), "facebook/esm2_t12_35M_UR50D": (12, 480, 20),
    "facebook/esm2_t30_150M_UR50D": (30, 640, 20), "facebook/esm2_t33_650M_UR50D": (33, 1280, 20),
    "facebook/esm2_t36_3B_UR50D": (36, 2560, 40), "facebook/esm2_t48_15B_UR50D": (48, 5120, 40),
}


def esm2_config(num_layers: int, embed_dim: int, attention_heads: int, token_dropout: bool = True):
    """transformers' ``EsmConfig`` of an ESM-2 of this size (as the published checkpoints set it)."""
    from transformers import EsmConfig

    alphabet = esm_alphabet()
    return EsmConfig(vocab_size=len(alphabet.all_toks), pad_token_id=alphabet.padding_idx,
                     mask_token_id=alphabet.mask_idx, hidden_size=embed_dim, num_hidden_layers=num_layers,
                     num_attention_heads=attention_heads, intermediate_size=4 * embed_dim, hidden_act="gelu",
                     position_embedding_type="rotary", max_position_embeddings=1026, layer_norm_eps=1e-5,
                     emb_layer_norm_before=False, token_dropout=token_dropout, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)


# fair-esm ESM2 state-dict names -> transformers EsmModel names (block-relative after "layers.{i}.")
_FAIR_TO_HF_BLOCK = {
    "self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.LayerNorm", "fc1": "intermediate.dense", "fc2": "output.dense",
    "final_layer_norm": "LayerNorm",
}


def transformers_state_dict_from_fair_esm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A fair-esm ESM-2 encoder's state dict (``esm.model.esm2.ESM2.state_dict()``, its ``model``
    entry in a ``.pt`` file with the ``encoder.`` prefixes stripped) in ``EsmModel``'s names: the
    mapping of transformers' own conversion script. The LM and contact heads are left out."""
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        if name.startswith(("lm_head.", "contact_head.")):
            continue
        if name == "embed_tokens.weight":
            out["embeddings.word_embeddings.weight"] = value
        elif name.startswith("emb_layer_norm_after."):
            out["encoder." + name] = value
        elif name.startswith("layers.") and name.endswith("rot_emb.inv_freq"):
            out["rotary_embeddings.inv_freq"] = value  # one per block in fair-esm, all equal
        elif name.startswith("layers."):
            _, index, rest = name.split(".", 2)
            module, _, leaf = rest.rpartition(".")
            if module not in _FAIR_TO_HF_BLOCK:
                raise KeyError(f"no transformers name for fair-esm parameter {name!r}")
            out[f"encoder.layer.{index}.{_FAIR_TO_HF_BLOCK[module]}.{leaf}"] = value
        else:
            raise KeyError(f"no transformers name for fair-esm parameter {name!r}")
    return out


class HFProteinEncoder(Backbone):
    """ESM-2 through transformers' ``EsmModel`` as a peftlab backbone.

    Args:
        name_or_path: a hub id (``facebook/esm2_t33_650M_UR50D``...) or a local directory written by
            ``save_pretrained`` (works offline).
        pretrained: load the weights (``EsmModel.from_pretrained``); otherwise random init, on a local
            directory's architecture, else the published size of a hub id.
        num_layers / embed_dim / attention_heads: shrink a random-init model (offline tests and demos;
            the same names as :class:`~peftlab_protein.ESM2Backbone`'s).
        seed: seed of the random initialisation.
        gradient_checkpointing: recompute each block's activations in the backward (see :mod:`peftlab.backbone`).

    Batch input: ``tokens`` ``[B, T]`` in the ESM alphabet (BOS first, EOS last, padding after), as
    :class:`~peftlab_protein.data.ProteinDataModule` gives them. Features equal ``EsmModel``'s
    ``last_hidden_state``; content tokens are the residues.
    """

    input_keys = ("tokens",)
    seq_dim = 1
    num_prefix_tokens = 1  # BOS
    blocks_path = "model.encoder.layer"
    target_presets = {
        "attention": HF_ESM_ATTENTION, "qv": ("attention.self.query", "attention.self.value"),
        "kv": ("attention.self.key", "attention.self.value"),
        "qkv": HF_ESM_ATTENTION[:3], "mlp": HF_ESM_MLP,
        "attention+mlp": HF_ESM_ATTENTION + HF_ESM_MLP, "all-linear": HF_ESM_ATTENTION + HF_ESM_MLP,
        "ia3": ("attention.self.key", "attention.self.value", "output.dense"), "mlp_out": ("output.dense",),
    }
    adapter_sites = {"attention_out": "attention.output.dense", "mlp_in": "intermediate.dense",
                     "mlp_out": "output.dense"}

    def __init__(self, name_or_path: str = "facebook/esm2_t6_8M_UR50D", pretrained: bool = False,
                 num_layers: int | None = None, embed_dim: int | None = None, attention_heads: int | None = None,
                 seed: int = 0, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.init_args = dict(name_or_path=name_or_path, pretrained=pretrained, num_layers=num_layers,
                              embed_dim=embed_dim, attention_heads=attention_heads, seed=seed,
                              gradient_checkpointing=gradient_checkpointing)
        self.gradient_checkpointing = gradient_checkpointing
        from transformers import EsmConfig, EsmModel
        from transformers.masking_utils import create_bidirectional_mask

        local = Path(name_or_path).expanduser()
        local = local if local.exists() else None
        if local is not None and not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local} is not a model directory written by save_pretrained (no config.json)")
        sizes = {"num_hidden_layers": num_layers, "hidden_size": embed_dim, "num_attention_heads": attention_heads}
        overrides = {k: v for k, v in sizes.items() if v is not None}
        if pretrained:
            if overrides:
                raise ValueError("num_layers/embed_dim/attention_heads only apply to random-init models "
                                 "(pretrained weights fix the size)")
            model = self._load_pretrained(name_or_path, local)
        else:
            if local is not None:
                config = EsmConfig.from_pretrained(local)
            elif name_or_path in HF_ESM_SIZES:
                config = esm2_config(*HF_ESM_SIZES[name_or_path])
            else:
                raise ValueError(f"unknown ESM-2 model {name_or_path!r}: a local save_pretrained directory or one "
                                 f"of {', '.join(HF_ESM_SIZES)}")
            for k, v in overrides.items():
                setattr(config, k, v)
            if "hidden_size" in overrides:
                config.intermediate_size = 4 * config.hidden_size
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = EsmModel(config, add_pooling_layer=False)
        if model.config.position_embedding_type != "rotary" or model.config.is_decoder:
            raise ValueError(f"{name_or_path}: HFProteinEncoder takes ESM-2 encoders (rotary positions), got "
                             f"position_embedding_type={model.config.position_embedding_type!r}")
        model.contact_head = None  # features only: the contact head is never used
        self.model = model
        self.embed_dim = model.config.hidden_size
        self._create_mask = create_bidirectional_mask
        alphabet = esm_alphabet()  # BOS and EOS are not content (the alphabet is built once, not per batch)
        self._cls_idx, self._eos_idx = alphabet.cls_idx, alphabet.eos_idx
        self._reset_state()

    @staticmethod
    def _load_pretrained(name_or_path: str, local: Path | None) -> nn.Module:
        """``EsmModel.from_pretrained``: safetensors when there are, else a ``.bin`` in weights-only mode;
        offline, a hub id not in the cache is a WeightsUnavailableError saying what to do."""
        from transformers import EsmModel

        fix = ("save it on a connected machine (EsmModel.from_pretrained(name).save_pretrained(DIR)) and pass the "
               "folder as --model.backbone.init_args.name_or_path DIR")
        weights = str(local) if local is not None else f"{name_or_path} (its pytorch_model.bin)"
        with refusing_unsafe_pickles(weights, "transformers weights file"), \
                transformers_download("transformers ESM-2", name_or_path, local is not None, fix):
            return EsmModel.from_pretrained(name_or_path, add_pooling_layer=False, weights_only=True)

    def _reset_state(self) -> None:
        self._mask_source: Tensor | None = None
        self._mask: Tensor | None = None
        self._rotary: tuple[Tensor, Tensor] | None = None

    # ---- identity -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        source = "pretrained" if self.init_args["pretrained"] else "random init"
        return f"transformers {self.init_args['name_or_path']} ({source}, {self.num_blocks}x{self.embed_dim})"

    def config(self) -> dict[str, Any]:
        c = self.model.config
        return {"num_layers": c.num_hidden_layers, "embed_dim": c.hidden_size, "attention_heads": c.num_attention_heads,
                "token_dropout": c.token_dropout, "source": "pretrained" if self.init_args["pretrained"] else "random"}

    # ---- the forward, as EsmModel.forward + EsmEncoder.forward ------------------------------------
    def embed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        self._reset_state()
        tokens, config = batch["tokens"], self.model.config
        attend = tokens.ne(config.pad_token_id)
        x = self.model.embeddings(input_ids=tokens, attention_mask=attend.long())
        content = attend & tokens.ne(self._cls_idx) & tokens.ne(self._eos_idx)
        return x, attend, content

    def run_block(self, block: nn.Module, x: Tensor, attn_mask: Tensor) -> Tensor:
        if self._mask_source is not attn_mask:  # build the layers' mask once per mask, as EsmModel does
            self._mask_source = attn_mask
            self._mask = self._create_mask(config=self.model.config, inputs_embeds=x, attention_mask=attn_mask)
        if self._rotary is None or self._rotary[0].shape[-2] != x.shape[1]:  # tokens inserted: new positions
            positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
            self._rotary = self.model.rotary_embeddings(x, positions)
        out = block(x, attention_mask=self._mask, position_embeddings=self._rotary)
        return out[0] if isinstance(out, tuple) else out

    def final_norm(self, x: Tensor) -> Tensor:
        self._reset_state()
        return self.model.encoder.emb_layer_norm_after(x)


def _register_prefix_attention() -> None:
    from transformers.models.esm.modeling_esm import EsmSelfAttention

    from peftlab.methods.prompts import register_prefix_attention

    register_prefix_attention(EsmSelfAttention, refuse=(
        "prefix tuning is not implemented for transformers' EsmSelfAttention; use ESM2Backbone (fair-esm), "
        "which loads the same ESM-2 weights and supports it"))


_register_prefix_attention()
