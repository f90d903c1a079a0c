"""Self-supervised speech encoders (wav2vec2, HuBERT, WavLM), one module per library family:

    torchaudio_encoders    torchaudio's model builders and pipeline bundles (:class:`TorchaudioEncoder`)
    transformers_encoders  transformers' Wav2Vec2Model / HubertModel / WavLMModel (:class:`HFSpeechEncoder`)
    common                 what both share: preset module names, adapter sites, waveform normalisation

Both take a padded batch of ``waveforms`` ``[B, N]`` (16 kHz) with ``lengths``
``[B]`` and give one token per 20 ms frame. Every name of the former
``peftlab_speech.backbones`` module is importable from here
(``peftlab_speech.backbones.TorchaudioEncoder`` is a class path that configs
and ``adapter_config.json`` files written before the split name).
"""

from peftlab_speech.backbones.common import WAV2VEC2_SITES, WAVLM_SITES
from peftlab_speech.backbones.torchaudio_encoders import (TORCHAUDIO_MODELS, WAV2VEC2_PRESETS, WAVLM_NOTES,
                                                          WAVLM_PRESETS, TorchaudioEncoder, build_torchaudio_model)
from peftlab_speech.backbones.transformers_encoders import (HF_FAMILIES, HF_PRESETS, HF_SITES, HF_WAVLM_NOTES,
                                                            HF_WAVLM_PRESETS, HF_WAVLM_SITES, HFSpeechEncoder)

__all__ = ["HF_FAMILIES", "HF_PRESETS", "HF_SITES", "HF_WAVLM_NOTES", "HF_WAVLM_PRESETS", "HF_WAVLM_SITES",
           "TORCHAUDIO_MODELS", "WAV2VEC2_PRESETS", "WAV2VEC2_SITES", "WAVLM_NOTES", "WAVLM_PRESETS", "WAVLM_SITES",
           "HFSpeechEncoder", "TorchaudioEncoder", "build_torchaudio_model"]
