"""ESM-2 through transformers (HFProteinEncoder): the same features as fair-esm for the same
weights, loading a local save_pretrained directory through the users' code path, the offline
error for a hub id, and the PEFT methods on it."""

from __future__ import annotations

import pytest
import torch

from peftlab import PeftModule, build_method
from peftlab.errors import WeightsUnavailableError
from peftlab.methods import METHODS
from peftlab_protein import ESM2Backbone
from peftlab_protein.backbones import HFProteinEncoder
from peftlab_protein.backbones.transformers_esm import esm2_config, transformers_state_dict_from_fair_esm
from peftlab_protein.data import ProteinDataModule

from tests.method_checks import (SMALL_OPTIONS, TARGET_SHAPE_METHODS, adapter_family_count,
                                 check_method_guarantees, target_shape_count)


def protein_batch(tmp_path):
    fasta = tmp_path / "p.fasta"
    fasta.write_text(">a TARGET=1.0\nMKTAYIAKQRQISFVKSHFSRQ\n>b TARGET=0.5\nGGSWCMHW\n>c TARGET=0.0\nPPLLWKKXBU\n")
    data = ProteinDataModule(str(fasta), task_type="regression", val_fraction=0, test_fraction=0)
    return data.collate(data.splits["train"])


@pytest.mark.parametrize("attention", ["fused", "original"])
def test_fair_esm_and_transformers_give_the_same_features_for_the_same_weights(tmp_path, attention):
    batch = protein_batch(tmp_path)  # three lengths: padding in two rows, and X/B/U residues
    fair = ESM2Backbone(num_layers=3, embed_dim=64, attention_heads=4, seed=1, attention=attention).eval()
    hf = HFProteinEncoder(num_layers=3, embed_dim=64, attention_heads=4, seed=2).eval()  # other random weights
    before = hf(batch).hidden
    missing, unexpected = hf.model.load_state_dict(transformers_state_dict_from_fair_esm(fair.model.state_dict()),
                                                   strict=False)
    assert missing == [] and unexpected == []
    with torch.no_grad():
        f_fair, f_hf = fair(batch), hf(batch)
    assert not torch.allclose(before, f_hf.hidden)  # the conversion did replace the weights
    assert torch.equal(f_fair.mask, f_hf.mask)
    torch.testing.assert_close(f_hf.hidden[f_hf.mask], f_fair.hidden[f_fair.mask], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(f_hf.cls, f_fair.cls, atol=2e-5, rtol=1e-4)


def test_a_local_save_pretrained_directory_loads_through_the_users_path(tmp_path):
    """A small random-init model written in transformers' own format (config.json + safetensors),
    then loaded with pretrained: true, as a user's downloaded checkpoint would be."""
    from transformers import EsmModel

    torch.manual_seed(0)
    written = EsmModel(esm2_config(num_layers=2, embed_dim=32, attention_heads=4), add_pooling_layer=False).eval()
    written.save_pretrained(tmp_path / "esm2-small")
    assert (tmp_path / "esm2-small" / "model.safetensors").is_file()
    loaded = HFProteinEncoder(str(tmp_path / "esm2-small"), pretrained=True).eval()
    batch = protein_batch(tmp_path)
    with torch.no_grad():
        expected = written(input_ids=batch["tokens"], attention_mask=batch["tokens"].ne(1).long()).last_hidden_state
        torch.testing.assert_close(loaded(batch).hidden, expected)
    assert loaded.config()["source"] == "pretrained" and loaded.num_blocks == 2
    assert loaded.identity() == HFProteinEncoder(str(tmp_path / "esm2-small"), pretrained=True).identity()


def test_a_hub_id_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("peftlab.hub.host_reachable", lambda *a, **k: False)
    with pytest.raises(WeightsUnavailableError, match=r"transformers ESM-2 'facebook/esm2_t6_8M_UR50D': not on this "
                                                      r"machine.*save_pretrained\(DIR\)"):
        HFProteinEncoder("facebook/esm2_t6_8M_UR50D", pretrained=True)


def test_size_overrides_are_refused_with_pretrained_weights():
    with pytest.raises(ValueError, match="only apply to random-init models"):
        HFProteinEncoder("facebook/esm2_t6_8M_UR50D", pretrained=True, num_layers=2)


D, F, L, V = 32, 128, 2, 33  # width, MLP, blocks, alphabet


def linear(i: int, o: int) -> int:
    return i * o + o


BOTTLENECK = linear(D, 8) + linear(8, D)
OUTSIDE = V * D + 2 * D  # the token embeddings and the final layer norm
BLOCK = 4 * linear(D, D) + 2 * D + linear(D, F) + linear(F, D) + 2 * D
ATTENTION_SHAPES = [(D, D)] * 4  # q, k, v, out: the default targets
EXPECTED = {  # trainable backbone parameters of each method on a 2 x 32 transformers ESM-2
    "full": OUTSIDE + L * BLOCK,
    "linear_probe": 0,
    "lora": L * 4 * 4 * (D + D),  # r=4 on q, k, v, out (the default preset: attention)
    "ia3": L * (D + D + F),  # k and v outputs, the MLP output layer's input
    "bitfit": L * (4 * D + D + F + D + D) + D,  # q/k/v/out, both norms, MLP in/out; the final norm
    "adapter": L * 2 * BOTTLENECK,  # houlsby: after attention.output.dense and the MLP
    "adaptformer": L * BOTTLENECK,  # parallel to the MLP
    "prompt": 3 * D * L,  # deep prompts, 3 per block
    "ssf": L * 2 * (4 * D + D + F + D + D),  # q, k, v, out, both norms, MLP in/out
    "ln_tuning": L * 2 * 2 * D + 2 * D,  # the blocks' two norms and the final one
    "partial": BLOCK,  # the top block
    "combined": L * target_shape_count("lora", {"r": 2}, ATTENTION_SHAPES) + L * (4 * D + D + F + D + D) + D,
    **{m: L * target_shape_count(m, SMALL_OPTIONS[m], ATTENTION_SHAPES) for m in TARGET_SHAPE_METHODS},
    **{m: adapter_family_count(m, SMALL_OPTIONS[m], D, L) for m in ("compacter", "loreft")},
}
OPTIONS = {**SMALL_OPTIONS, "lora": {"r": 4}, "adapter": {"bottleneck": 8}, "adaptformer": {"bottleneck": 8},
           "prompt": {"num_tokens": 3, "deep": True}}


def test_every_registered_method_is_in_the_matrix_or_refused():
    assert set(METHODS) == set(EXPECTED) | {"prefix"}  # prefix: test_prefix_tuning_refuses_with_its_reason


def tiny_hf_esm2() -> HFProteinEncoder:
    return HFProteinEncoder(num_layers=L, embed_dim=D, attention_heads=4, seed=0)


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_methods_on_the_transformers_esm2(method, tmp_path):
    batch = {"tokens": torch.tensor([[0, 5, 6, 7, 8, 2, 1], [0, 9, 10, 11, 12, 13, 2]]),
             "labels": torch.tensor([0.5, -1.0]), "ids": ["a", "b"]}
    check_method_guarantees(tiny_hf_esm2, batch, method, OPTIONS.get(method, {}), EXPECTED[method], D, tmp_path)


def test_prefix_tuning_refuses_with_its_reason():
    with pytest.raises(ValueError, match="prefix tuning is not implemented for transformers' EsmSelfAttention"):
        PeftModule(HFProteinEncoder(num_layers=1, embed_dim=32, attention_heads=4), build_method("prefix"))
