"""What the torchaudio and the transformers encoders share.

Both libraries name the layers of a wav2vec2 / HuBERT / WavLM block alike
(``attention.q_proj``, ``feed_forward.intermediate_dense`` ...), so the
module names that ``targets`` presets and adapter sites point at are written
once here; so are the per-utterance waveform normalisation over the valid
samples of a padded batch and the reason prefix tuning cannot reach WavLM's
attention (in either library).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: block-relative names of the attention projections and of the feed-forward layers
ATTENTION_MODULES = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.out_proj")
MLP_MODULES = ("feed_forward.intermediate_dense", "feed_forward.output_dense")

#: adapter sites of wav2vec2 / HuBERT blocks (both libraries)
WAV2VEC2_SITES = {"attention_out": "attention.out_proj", "mlp_in": "feed_forward.intermediate_dense",
                  "mlp_out": "feed_forward.output_dense"}
#: WavLM blocks: only the feed-forward layers are called as modules (see each library's notes)
WAVLM_SITES = {"mlp_in": "feed_forward.intermediate_dense", "mlp_out": "feed_forward.output_dense"}
WAVLM_MLP_PRESETS = {"mlp": MLP_MODULES, "all-linear": MLP_MODULES, "ia3": MLP_MODULES,
                     "mlp_out": ("feed_forward.output_dense",)}
#: the attention presets a WavLM encoder lacks (its notes say why)
WAVLM_MISSING_PRESETS = ("attention", "qv", "kv", "qkv", "attention+mlp")

#: why prefix tuning refuses WavLM's attention (torchaudio's and transformers')
WAVLM_PREFIX_REFUSAL = ("WavLM's attention runs in torch's fused multi-head kernel with a gated relative position "
                        "bias over exactly the input positions; there is no place for prefix keys (use lora on the "
                        "MLP or adapters)")


def valid_samples(waveforms: Tensor, lengths: Tensor) -> Tensor:
    """``[B, N]`` mask (in ``waveforms``' dtype): 1 on the first ``lengths[b]`` samples of each row, else 0."""
    positions = torch.arange(waveforms.shape[1], device=waveforms.device)[None, :]
    return (positions < lengths.to(waveforms.device)[:, None]).to(waveforms.dtype)


def standardize_valid(waveforms: Tensor, lengths: Tensor, eps: float) -> Tensor:
    """Zero mean and unit (population) variance per utterance over its valid samples; padding set to 0."""
    valid = valid_samples(waveforms, lengths)
    n = valid.sum(1, keepdim=True).clamp_min(1)
    mean = (waveforms * valid).sum(1, keepdim=True) / n
    var = (((waveforms - mean) * valid) ** 2).sum(1, keepdim=True) / n
    return (waveforms - mean) / torch.sqrt(var + eps) * valid
