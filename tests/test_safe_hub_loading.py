"""Pretrained weights are never unpickled unsafely.

``torch.hub.load_state_dict_from_url`` (used by fair-esm's and torchaudio's
downloads) unpickles with ``weights_only=False`` by default: a tampered file in
the hub cache would run code. Each test puts a file in the place the real one
would be (torch.hub's cache, a local checkpoint, a save_pretrained directory),
in the real format but carrying a pickle whose ``__reduce__`` creates a marker
file, and checks that loading refuses it, naming the file, without creating
the marker; the untampered file in the same place loads exactly. Everything is
small random-init weights: no network.
"""

from __future__ import annotations

import argparse
import builtins
import re
from pathlib import Path

import pytest
import torch

from peftlab.errors import UnsafeWeightsError
from peftlab_protein import ESM2Backbone

from tests.protein.test_backbones import tokens_for, write_fair_esm_checkpoint



class Payload:
    """Unpickling this creates ``marker`` (the stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def tamper(path: Path, marker: Path, insert) -> None:
    """Rewrite ``path`` with the payload put inside its data (``insert(data, payload)``), and check
    that the payload is live: plain unpickling of the file does create the marker."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(path, weights_only=True)
    insert(data, Payload(marker))
    torch.save(data, path)
    torch.load(path, weights_only=False)  # what the unsafe path would do
    assert marker.exists(), "the payload is not live: the test would prove nothing"
    marker.unlink()


def refused(path: Path) -> str:
    """The error names the file and the class / function the payload would have called."""
    return rf"^{re.escape(str(path))}: refused: .* holds pickled objects, .*\((io|builtins)\.open\)"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    assert Path(torch.hub.get_dir()) == cache.parent
    return cache


# ---- fair-esm (ESM-2 by name: torch.hub's cache) -------------------------------------------------

def test_esm2_by_name_refuses_a_tampered_file_in_the_hub_cache(hub_cache, tmp_path):
    path = hub_cache / "esm2_t6_8M_UR50D.pt"
    write_fair_esm_checkpoint(path)
    marker = tmp_path / "marker"
    tamper(path, marker, lambda data, payload: data["cfg"].__setitem__("extra", payload))
    with pytest.raises(UnsafeWeightsError, match=refused(path)):
        ESM2Backbone(name="esm2_t6_8M_UR50D", pretrained=True)
    assert not marker.exists()


def test_esm2_by_name_loads_exactly_without_the_contact_regression_file(hub_cache):
    path = hub_cache / "esm2_t6_8M_UR50D.pt"
    original = write_fair_esm_checkpoint(path, seed=11).eval()
    path.with_name(path.stem + "-contact-regression.pt").unlink()  # not needed: the contact head is dropped
    # fair-esm's own attention, so that equality is exact and checks the weights alone (the fused default
    # agrees to 1e-5: tests/protein/test_esm_attention.py)
    bb = ESM2Backbone(name="esm2_t6_8M_UR50D", pretrained=True, attention="original").eval()
    tokens = tokens_for(bb, ["MKTAYIAKQRQ", "GSH"])
    with torch.no_grad():
        torch.testing.assert_close(bb({"tokens": tokens}).hidden,
                                   original(tokens, repr_layers=[2])["representations"][2], rtol=0, atol=0)


def test_esm2_local_file_and_its_regression_file_are_read_weights_only(tmp_path):
    path = tmp_path / "esm2_t6_8M_UR50D.pt"
    write_fair_esm_checkpoint(path)
    regression = path.with_name(path.stem + "-contact-regression.pt")
    marker = tmp_path / "marker"
    tamper(regression, marker, lambda data, payload: data.__setitem__("extra", payload))
    with pytest.raises(UnsafeWeightsError, match=refused(regression)):
        ESM2Backbone(checkpoint_path=str(path))
    assert not marker.exists()


# ---- torchaudio bundles (torch.hub's cache) ------------------------------------------------------

TINY_BUNDLE = dict(encoder_num_layers=2, encoder_embed_dim=64, encoder_num_heads=4, encoder_ff_interm_features=128,
                   extractor_conv_layer_config=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2)


@pytest.fixture
def tiny_hubert_bundle(monkeypatch):
    """torchaudio's HUBERT_BASE bundle, its architecture shrunk (the download and load path unchanged)."""
    import torchaudio
    bundle = torchaudio.pipelines.HUBERT_BASE
    monkeypatch.setattr(bundle, "_params", dict(bundle._params, **TINY_BUNDLE))
    return bundle


def write_torchaudio_weights(path: Path, params: dict, seed: int = 5) -> torch.nn.Module:
    """A torchaudio bundle file: the model's plain state dict (what download.pytorch.org serves)."""
    from torchaudio.models import wav2vec2_model
    torch.manual_seed(seed)
    model = wav2vec2_model(**params).eval()
    torch.save(model.state_dict(), path)
    return model


def test_torchaudio_bundle_loads_exactly_from_the_hub_cache(hub_cache, tiny_hubert_bundle):
    from peftlab_speech.backbones import TorchaudioEncoder
    original = write_torchaudio_weights(hub_cache / "hubert_fairseq_base_ls960.pth", tiny_hubert_bundle._params)
    bb = TorchaudioEncoder("hubert_base", pretrained=True).eval()
    assert bb.config()["source"] == "pretrained" and bb.num_blocks == 2
    w, lengths = torch.randn(2, 8000), torch.tensor([8000, 5000])
    with torch.no_grad():
        expected, _ = original(w, lengths)
        torch.testing.assert_close(bb({"waveforms": w, "lengths": lengths}).hidden, expected, rtol=0, atol=0)


def test_torchaudio_bundle_refuses_a_tampered_file_in_the_hub_cache(hub_cache, tiny_hubert_bundle, tmp_path):
    from peftlab_speech.backbones import TorchaudioEncoder
    path = hub_cache / "hubert_fairseq_base_ls960.pth"
    write_torchaudio_weights(path, tiny_hubert_bundle._params)
    marker = tmp_path / "marker"
    tamper(path, marker, lambda data, payload: data.__setitem__("extra", payload))
    with pytest.raises(UnsafeWeightsError, match=refused(path)):
        TorchaudioEncoder("hubert_base", pretrained=True)
    assert not marker.exists()


def test_torchaudio_local_checkpoint_is_read_weights_only(tmp_path):
    from peftlab_speech.backbones import TorchaudioEncoder
    tiny = dict(num_layers=1, embed_dim=32, num_heads=2, ff_dim=64, conv_channels=16)
    path = tmp_path / "hubert_tiny.pth"
    torch.save(TorchaudioEncoder("hubert_base", **tiny).model.state_dict(), path)
    marker = tmp_path / "marker"
    tamper(path, marker, lambda data, payload: data.__setitem__("extra", payload))
    with pytest.raises(UnsafeWeightsError, match=refused(path)):
        TorchaudioEncoder("hubert_base", checkpoint_path=str(path), **tiny)
    assert not marker.exists()


# ---- transformers (a pickled pytorch_model.bin) and timm (a .pth checkpoint) --------------------

def test_transformers_pickled_bin_is_read_weights_only(tmp_path):
    from peftlab_speech import HFSpeechEncoder
    source = HFSpeechEncoder(family="hubert", num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64,
                             conv_dim=16, seed=3).eval()
    directory = tmp_path / "tiny-hubert"
    source.model.save_pretrained(directory)
    (directory / "model.safetensors").unlink()  # a checkpoint published as a pickled .bin only
    path = directory / "pytorch_model.bin"
    torch.save(source.model.state_dict(), path)
    loaded = HFSpeechEncoder(str(directory), pretrained=True).eval()
    batch = {"waveforms": torch.randn(1, 4000), "lengths": torch.tensor([4000])}
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).hidden, source(batch).hidden, rtol=0, atol=0)
    marker = tmp_path / "marker"
    tamper(path, marker, lambda data, payload: data.__setitem__("extra", payload))
    with pytest.raises(UnsafeWeightsError, match=refused(path)):
        HFSpeechEncoder(str(directory), pretrained=True)
    assert not marker.exists()


def test_timm_pth_checkpoint_is_read_weights_only(tmp_path):
    import timm

    from peftlab_medical.backbones import TimmBackbone
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1).eval()
    path = tmp_path / "vit_tiny.pth"
    torch.save(source.state_dict(), path)
    loaded = TimmBackbone(name="vit_tiny_patch16_224", checkpoint_path=str(path), depth=1).eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded({"images": images}).hidden, source.forward_features(images))
    marker = tmp_path / "marker"
    tamper(path, marker, lambda data, payload: data.__setitem__("extra", payload))
    with pytest.raises(UnsafeWeightsError, match=refused(path)):
        TimmBackbone(name="vit_tiny_patch16_224", checkpoint_path=str(path), depth=1)
    assert not marker.exists()
