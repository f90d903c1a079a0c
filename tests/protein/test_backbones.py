"""ESM-2 through fair-esm: same features as fair-esm's own forward, and the real
loading paths (local .pt, hub cache) exercised with small checkpoints written
in fair-esm's format."""

from __future__ import annotations

import argparse

import esm
import pytest
import torch

from peftlab.errors import UnsafeWeightsError
from peftlab_protein import ESM2_SIZES, ESM2Backbone


def tokens_for(backbone, seqs):
    return backbone.alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(seqs)])[2]


def test_features_match_fair_esm_forward():
    bb = ESM2Backbone(num_layers=2, embed_dim=32, attention_heads=4).eval()
    tokens = tokens_for(bb, ["MKTAYIAKQRQ", "GSH"])
    ref = esm.model.esm2.ESM2(2, 32, 4, "ESM-1b").eval()
    ref.load_state_dict(bb.model.state_dict(), strict=False)
    with torch.no_grad():
        expected = ref(tokens, repr_layers=[1, 2])["representations"]
        got = bb({"tokens": tokens}, output_layers=True)
    torch.testing.assert_close(got.hidden, expected[2])
    # per-layer states: embeddings, then each block's raw output (fair-esm applies the final norm to the last)
    torch.testing.assert_close(got.layers[1], expected[1])
    assert len(got.layers) == 3
    # content = residues only: BOS, EOS and padding excluded
    assert got.mask.sum(1).tolist() == [11, 3]
    assert not got.mask[:, 0].any()
    torch.testing.assert_close(got.cls, got.hidden[:, 0])


def test_unused_heads_are_dropped_and_sizes_are_published_ones():
    bb = ESM2Backbone(num_layers=1, embed_dim=16, attention_heads=2)
    assert not hasattr(bb.model, "lm_head") and not hasattr(bb.model, "contact_head")
    assert ESM2_SIZES["esm2_t33_650M_UR50D"] == (33, 1280, 20) and len(ESM2_SIZES) == 6
    with pytest.raises(ValueError, match="unknown ESM-2 model 'esm3'"):
        ESM2Backbone(name="esm3")


def write_fair_esm_checkpoint(path, layers=2, dim=32, heads=4, seed=3):
    """A checkpoint in fair-esm's published format (what dl.fbaipublicfiles.com serves)."""
    torch.manual_seed(seed)
    model = esm.model.esm2.ESM2(layers, dim, heads, "ESM-1b")
    state = model.state_dict()
    regression = {k: state.pop(k) for k in list(state) if k.startswith("contact_head.regression")}
    cfg = argparse.Namespace(encoder_layers=layers, encoder_embed_dim=dim, encoder_attention_heads=heads,
                             token_dropout=True)
    torch.save({"cfg": {"model": cfg}, "model": {f"encoder.{k}": v for k, v in state.items()}}, path)
    torch.save({"model": regression}, path.with_name(path.stem + "-contact-regression.pt"))
    return model


def test_local_checkpoint_loads_through_fair_esm(tmp_path):
    path = tmp_path / "esm2_t6_8M_UR50D.pt"
    original = write_fair_esm_checkpoint(path).eval()
    bb = ESM2Backbone(checkpoint_path=str(path)).eval()
    assert bb.config()["num_layers"] == 2 and bb.config()["source"] == "pretrained"
    tokens = tokens_for(bb, ["MKTAYIAKQ"])
    with torch.no_grad():
        torch.testing.assert_close(bb({"tokens": tokens}).hidden, original(tokens, repr_layers=[2])["representations"][2])


def test_hub_name_loads_from_the_torch_hub_cache(tmp_path, monkeypatch):
    # fair-esm's hub loader uses torch.hub's cache first: a file already there loads without a download
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    original = write_fair_esm_checkpoint(cache / "esm2_t6_8M_UR50D.pt", seed=5).eval()
    bb = ESM2Backbone(name="esm2_t6_8M_UR50D", pretrained=True).eval()
    tokens = tokens_for(bb, ["GSHMLE"])
    with torch.no_grad():
        torch.testing.assert_close(bb({"tokens": tokens}).hidden, original(tokens, repr_layers=[2])["representations"][2])


def test_local_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ESM2Backbone(checkpoint_path=str(tmp_path / "esm2_t6_8M_UR50D.pt"))
    lone = tmp_path / "esm2_t6_8M_UR50D.pt"
    write_fair_esm_checkpoint(lone)
    lone.with_name(lone.stem + "-contact-regression.pt").unlink()
    with pytest.raises(FileNotFoundError, match="contact-regression.pt beside it"):
        ESM2Backbone(checkpoint_path=str(lone))
    renamed = tmp_path / "my_model.pt"
    lone.rename(renamed)
    with pytest.raises(ValueError, match="keep the published name"):
        ESM2Backbone(checkpoint_path=str(renamed))
    with pytest.raises(ValueError, match="only apply to random-init"):
        ESM2Backbone(pretrained=True, num_layers=2)


def test_checkpoint_with_arbitrary_pickled_objects_is_refused(tmp_path):
    # safe loading: only argparse.Namespace is allowed beyond plain tensors
    path = tmp_path / "esm2_t6_8M_UR50D.pt"
    write_fair_esm_checkpoint(path)
    data = torch.load(path, weights_only=False)
    data["cfg"]["evil"] = torch.nn.Linear(2, 2)  # any non-allow-listed class
    torch.save(data, path)
    with pytest.raises(UnsafeWeightsError, match=rf"{path}: refused: .*\(torch\.nn\.modules\.linear\.Linear\)"):
        ESM2Backbone(checkpoint_path=str(path))
