"""peftlab's speech domain: wav2vec2 / HuBERT / WavLM encoders, audio data, speech metrics and recipes."""

from peftlab_speech.backbones import TORCHAUDIO_MODELS, HFSpeechEncoder, TorchaudioEncoder

__all__ = ["TORCHAUDIO_MODELS", "HFSpeechEncoder", "TorchaudioEncoder"]
