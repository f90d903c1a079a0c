"""torchaudio encoders: the same features as torchaudio's own forward, padding
honoured, the local-file path with a checkpoint in torchaudio's format, and
clear errors."""

from __future__ import annotations

import pytest
import torch

from peftlab_speech.backbones import TORCHAUDIO_MODELS, TorchaudioEncoder

TINY = dict(num_layers=2, embed_dim=64, num_heads=4, ff_dim=128, conv_channels=32)


def test_features_match_torchaudio_forward():
    bb = TorchaudioEncoder("hubert_base", **TINY).eval()
    w, lengths = torch.randn(2, 8000), torch.tensor([8000, 5000])
    with torch.no_grad():
        ours = bb({"waveforms": w, "lengths": lengths}, output_layers=True)
        expected, frames = bb.model(w, lengths)
        layers, _ = bb.model.extract_features(w, lengths)
    torch.testing.assert_close(ours.hidden, expected, rtol=0, atol=0)
    torch.testing.assert_close(ours.layers[-1], layers[-1], rtol=0, atol=0)
    assert ours.mask.sum(1).tolist() == frames.tolist() == [24, 15]  # 20 ms frames
    assert len(ours.layers) == 3 and ours.cls is None


@pytest.mark.parametrize("name", ["hubert_large", "wavlm_large"])
def test_padding_does_not_change_the_valid_frames(name):
    # layer-norm front ends (large models) see each utterance alone; group-norm ones (base) normalise
    # over the padded length too, as in fairseq, so they are checked only for the mask
    bb = TorchaudioEncoder(name, **TINY).eval()
    w, lengths = torch.randn(2, 8000), torch.tensor([8000, 5000])
    with torch.no_grad():
        padded = bb({"waveforms": w, "lengths": lengths}).hidden[1, :15]
        alone = bb({"waveforms": w[1:, :5000], "lengths": lengths[1:]}).hidden[0]
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-4)


def test_local_torchaudio_checkpoint_loads(tmp_path):
    source = TorchaudioEncoder("wav2vec2_base", seed=7, **TINY).eval()
    path = tmp_path / "wav2vec2_tiny.pth"
    torch.save(source.model.state_dict(), path)  # the format torchaudio's bundles hold
    loaded = TorchaudioEncoder("wav2vec2_base", checkpoint_path=str(path), **TINY).eval()
    w = {"waveforms": torch.randn(1, 4000), "lengths": torch.tensor([4000])}
    with torch.no_grad():
        torch.testing.assert_close(loaded(w).hidden, source(w).hidden, rtol=0, atol=0)
    assert loaded.config()["source"] == "pretrained"
    assert loaded.identity()["fingerprint"] == source.identity()["fingerprint"]
    wrong = TorchaudioEncoder("wav2vec2_base", num_layers=1, embed_dim=64, num_heads=4, ff_dim=128, conv_channels=32)
    torch.save(wrong.model.state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a wav2vec2_base state dict of this size"):
        TorchaudioEncoder("wav2vec2_base", checkpoint_path=str(tmp_path / "other.pth"), **TINY)


def test_unknown_names_and_size_misuse_are_clear(tmp_path):
    assert {"wav2vec2_base", "hubert_large", "wavlm_base", "wavlm_large"} <= set(TORCHAUDIO_MODELS)
    with pytest.raises(ValueError, match="unknown torchaudio model 'wav2vec3'"):
        TorchaudioEncoder("wav2vec3")
    with pytest.raises(ValueError, match="size overrides only apply"):
        TorchaudioEncoder("hubert_base", pretrained=True, num_layers=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TorchaudioEncoder("hubert_base", checkpoint_path=str(tmp_path / "none.pth"))
