"""peftlab's speech domain: wav2vec2 / HuBERT / WavLM encoders, audio data, speech metrics and recipes."""

from peftlab_speech.backbones import TORCHAUDIO_MODELS, TorchaudioEncoder

__all__ = ["TORCHAUDIO_MODELS", "TorchaudioEncoder"]
