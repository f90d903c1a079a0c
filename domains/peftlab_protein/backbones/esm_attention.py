"""ESM-2 attention through torch's fused ``scaled_dot_product_attention``.

fair-esm's ``MultiheadAttention`` materialises the full ``T x T`` score matrix
per head (bmm, mask, float32 softmax, bmm); at 512+ tokens that matrix
dominates both time and memory. :func:`install_attention` gives each attention
module of one model a forward that computes the same thing through
``F.scaled_dot_product_attention``:

- queries, keys and values still come from calling ``self.q_proj(...)``,
  ``self.k_proj(...)``, ``self.v_proj(...)`` and ``self.out_proj(...)``, so
  LoRA / DoRA / IA3 / adapters that wrap those modules keep working;
- q is scaled by ``head_dim ** -0.5`` before the rotary embedding, as
  fair-esm does, and SDPA gets ``scale=1.0`` (no second scaling);
- the rotary embedding is fair-esm's own module, applied to ``(B*H, T, hd)``;
- the key padding mask (True = padding) becomes SDPA's boolean mask
  (True = attend). Padded query rows attend to the real keys, as in fair-esm,
  so their outputs match too;
- the block's feed-forward GELU is ``F.gelu`` (the same erf formula as
  fair-esm's Python ``gelu``, as one kernel forward and backward): fair-esm's
  four elementwise ops and the ``exp``/``pow`` of their backward cost as much
  as the attention itself on a 512-token training step on the CPU.

Whenever attention weights are asked for (``need_weights`` or
``need_head_weights``, e.g. ``return_contacts``), or for any input the fused
path does not cover (an additive ``attn_mask``, incremental state, bias_kv),
the call goes to fair-esm's own forward. fair-esm's ``TransformerLayer``
always asks its attention for weights and drops them unless
``need_head_weights``; the installed layer forward asks only when they are
used (and then runs fair-esm's own block, so returned weights are exact).

The patch is per instance (an instance attribute shadows the class's
``forward``), never on fair-esm's classes: two models with different settings
coexist. Prefix tuning's ESM-2 forward (in :mod:`.fair_esm`) reads the same
per-module setting through :func:`is_fused`.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from esm.modules import TransformerLayer
from esm.multihead_attention import MultiheadAttention
from torch import Tensor, nn

ATTENTION_MODES = ("fused", "original")
_FLAG = "_peftlab_fused_attention"


def is_fused(attention: nn.Module) -> bool:
    return bool(getattr(attention, _FLAG, False))


def install_attention(model: nn.Module, mode: str) -> None:
    """Set every ESM-2 block of ``model`` (a fair-esm ``ESM2``) to ``mode``:
    ``"fused"`` (SDPA) or ``"original"`` (fair-esm's own forward)."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, not {mode!r}")
    for layer in model.modules():
        if not isinstance(layer, TransformerLayer):
            continue
        attention = layer.self_attn
        setattr(attention, _FLAG, mode == "fused")
        if mode == "fused":
            layer.forward = types.MethodType(_layer_forward, layer)
            if "forward" not in attention.__dict__:  # prefix tuning's forward, if applied, stays
                attention.forward = types.MethodType(_fused_forward, attention)
        else:
            layer.__dict__.pop("forward", None)
            if getattr(attention.__dict__.get("forward"), "__func__", None) is _fused_forward:
                del attention.forward


def _layer_forward(self, x, self_attn_mask=None, self_attn_padding_mask=None, need_head_weights=False):
    """fair-esm ``TransformerLayer.forward``, asking for attention weights only when they are returned, with
    its GELU as one kernel. When weights are returned the whole block is fair-esm's own, to the bit."""
    if need_head_weights:
        return TransformerLayer.forward(self, x, self_attn_mask, self_attn_padding_mask, need_head_weights=True)
    residual = x
    x = self.self_attn_layer_norm(x)
    x, attn = self.self_attn(query=x, key=x, value=x, key_padding_mask=self_attn_padding_mask,
                             need_weights=need_head_weights, need_head_weights=need_head_weights,
                             attn_mask=self_attn_mask)
    x = residual + x
    residual = x
    x = self.final_layer_norm(x)
    x = self.fc2(F.gelu(self.fc1(x)))  # fair-esm's erf formula as one kernel (and one backward kernel)
    return residual + x, attn


def fused_covers(attention: nn.Module, key: Tensor | None, attn_mask: Tensor | None, **kwargs) -> bool:
    """Whether a call can take the fused path (otherwise: fair-esm's own forward)."""
    return (key is not None and attn_mask is None and attention.rot_emb is not None
            and attention.bias_k is None and not attention.add_zero_attn and not attention.onnx_trace
            and kwargs.get("incremental_state") is None and not kwargs.get("static_kv")
            and not kwargs.get("before_softmax") and not kwargs.get("need_weights")
            and not kwargs.get("need_head_weights"))


def rotary_heads(attention: nn.Module, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q (scaled), k, v as ``[B, H, T, hd]``, rotary applied as fair-esm does (on ``(B*H, T, hd)``)."""
    t, b, _ = query.shape
    h, hd = attention.num_heads, attention.head_dim
    heads = lambda x: x.contiguous().view(-1, b * h, hd).transpose(0, 1)  # noqa: E731
    q = heads(attention.q_proj(query) * attention.scaling)
    k, v = heads(attention.k_proj(key)), heads(attention.v_proj(value))
    q, k = attention.rot_emb(q, k)
    # rotary tables are float32: under autocast q, k come back float32 while v is bf16
    split = lambda x: x.to(v.dtype).reshape(b, h, -1, hd)  # noqa: E731
    return split(q), split(k), split(v)


def merge_heads(attention: nn.Module, y: Tensor) -> Tensor:
    """``[B, H, T, hd]`` -> out_proj of ``[T, B, D]``."""
    b, h, t, hd = y.shape
    return attention.out_proj(y.permute(2, 0, 1, 3).reshape(t, b, h * hd))


def keep_mask(key_padding_mask: Tensor | None) -> Tensor | None:
    """fair-esm's key padding mask (True = padding) as SDPA's boolean mask (True = attend), ``[B, 1, 1, S]``."""
    if key_padding_mask is None:
        return None
    return ~key_padding_mask.bool()[:, None, None, :]


def _fused_forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                   key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None, **kwargs):
    if not fused_covers(self, key, attn_mask, **kwargs):
        return MultiheadAttention.forward(self, query, key, value, key_padding_mask=key_padding_mask,
                                          attn_mask=attn_mask, **kwargs)
    q, k, v = rotary_heads(self, query, key, value)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep_mask(key_padding_mask),
                                       dropout_p=self.dropout if self.training else 0.0, scale=1.0)
    return merge_heads(self, y), None


def original_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, dropout: float,
                       training: bool) -> Tensor:
    """fair-esm's attention arithmetic on ``[B, H, T, hd]`` (q already scaled): bmm, -inf at padding keys,
    float32 softmax, bmm. Used by prefix tuning's ``original`` mode."""
    scores = torch.matmul(q, k.transpose(-1, -2))
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask.bool()[:, None, None, :], float("-inf"))
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).type_as(scores)
    return torch.matmul(F.dropout(probs, p=dropout, training=training), v)
