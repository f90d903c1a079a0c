"""Gradient (activation) checkpointing, the ``gradient_checkpointing`` option
of every backbone: the same outputs and the same gradients as without it (LoRA
and full fine-tuning, dropout off) on ESM-2, the toy transformer, a timm ViT,
torchaudio's HuBERT and WavLM (a position bias carried from block to block)
and transformers' WavLM, and for every registered method on ESM-2 and the toy
transformer; blocks really are recomputed in training and only there; the
option is rebuilt from the spec and leaves the identity alone."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from peftlab import METHODS, PeftModule, build_method
from peftlab.model.loading import load_adapter
from peftlab.persistence.adapter import save_adapter
from peftlab.toy import ToyTransformer
from peftlab_medical import TimmBackbone
from peftlab_protein import ESM2Backbone
from peftlab_speech import HFSpeechEncoder, TorchaudioEncoder

from tests.conftest import TINY_ESM, TINY_TOY, make_batch

TINY_VIT = dict(name="vit_tiny_patch16_224", img_size=32, depth=2, in_chans=1)
TINY_TA = dict(num_layers=2, embed_dim=64, num_heads=4, ff_dim=128, conv_channels=32)
TINY_HF = dict(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128, conv_dim=32)

BACKBONES = {
    "esm2": lambda gc: ESM2Backbone(**TINY_ESM, gradient_checkpointing=gc),
    "toy": lambda gc: ToyTransformer(**TINY_TOY, gradient_checkpointing=gc),
    "vit": lambda gc: TimmBackbone(**TINY_VIT, gradient_checkpointing=gc),
    "hubert": lambda gc: TorchaudioEncoder("hubert_base", **TINY_TA, gradient_checkpointing=gc),
    "wavlm": lambda gc: TorchaudioEncoder("wavlm_base", **TINY_TA, gradient_checkpointing=gc),
    "hf_wavlm": lambda gc: HFSpeechEncoder(family="wavlm", **TINY_HF, gradient_checkpointing=gc),
}


def batch_for(kind: str) -> dict:
    g = torch.Generator().manual_seed(0)
    labels = {"labels": torch.tensor([0.5, -1.0]), "ids": ["a", "b"]}
    if kind in ("esm2", "toy"):
        b = make_batch(kind)
        return {"tokens": b["tokens"][:2], **labels}
    if kind == "vit":
        return {"images": torch.randn(2, 1, 32, 32, generator=g), **labels}
    # padded: the second utterance is shorter, so attention masks are in play
    return {"waveforms": torch.randn(2, 8000, generator=g), "lengths": torch.tensor([8000, 5000]), **labels}


def make_module(kind: str, method: str, checkpointing: bool) -> PeftModule:
    torch.manual_seed(0)  # LoRA's A and the head draw from the global generator
    method_obj = build_method("lora", r=4) if method == "lora" else build_method(method)
    module = PeftModule(BACKBONES[kind](checkpointing), method_obj, task_type="regression", num_outputs=1,
                        head_dropout=0.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA's B starts at zero (A would get no gradient): make both matter
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module


def forward_backward(module: PeftModule, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.train()
    module.zero_grad(set_to_none=True)
    out = module(batch)
    (out.float() ** 2).mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    return out.detach(), grads


class BlockCalls:
    """Counts the calls of every block (a recomputed block runs twice per step). A pre-hook:
    the recomputation stops as soon as it has what the backward needs, before forward hooks."""

    def __init__(self, backbone) -> None:
        self.count = 0
        for block in backbone.blocks:
            block.register_forward_pre_hook(self._hook)

    def _hook(self, *args) -> None:
        self.count += 1


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("kind", list(BACKBONES))
def test_checkpointing_gives_the_same_outputs_and_gradients(kind, method):
    batch = batch_for(kind)
    plain = make_module(kind, method, checkpointing=False)
    ckpt = make_module(kind, method, checkpointing=True)
    assert ckpt.backbone.gradient_checkpointing and not plain.backbone.gradient_checkpointing
    for (n, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        assert torch.equal(a, b), f"{n}: the two modules do not start equal"

    calls = BlockCalls(ckpt.backbone)
    out_plain, grads_plain = forward_backward(plain, batch)
    out_ckpt, grads_ckpt = forward_backward(ckpt, batch)
    # checkpointing happened: every block ran again in the backward
    assert calls.count == 2 * ckpt.backbone.num_blocks

    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    assert grads_plain.keys() == grads_ckpt.keys() and grads_plain
    if method == "lora":
        assert any("lora_A" in n for n in grads_plain) and any("lora_B" in n for n in grads_plain)
    for name, g in grads_plain.items():
        assert g.abs().sum() > 0 or name.startswith("backbone.model.feature_extractor"), f"{name}: no gradient"
        torch.testing.assert_close(grads_ckpt[name], g, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_checkpointing_only_in_training_with_gradients():
    module = make_module("toy", "lora", checkpointing=True)
    batch = batch_for("toy")
    calls = BlockCalls(module.backbone)
    module.eval()
    out_eval = module(batch)
    out_eval.sum().backward()  # eval mode with gradients: plain block calls, no recomputation
    assert calls.count == module.backbone.num_blocks
    module.train()
    with torch.no_grad():
        module(batch)
    assert calls.count == 2 * module.backbone.num_blocks
    module(batch).sum().backward()
    assert calls.count == 4 * module.backbone.num_blocks  # training with gradients: forward + recomputation


def default_constructible(name: str) -> bool:
    params = inspect.signature(METHODS[name].__init__).parameters.values()
    return all(p.default is not inspect.Parameter.empty for p in params if p.name != "self"
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


REGISTRY_CASES = [(name, {}) for name in sorted(METHODS) if default_constructible(name)] + [("prompt", {"deep": True})]


@pytest.mark.parametrize("kind", ["toy", "esm2"])
@pytest.mark.parametrize("method,opts", REGISTRY_CASES, ids=[f"{n}{'-deep' if o else ''}" for n, o in REGISTRY_CASES])
def test_every_registered_method_gives_the_same_gradients_with_checkpointing(kind, method, opts):
    """Every method with default options: peft layers, hooks inside blocks (adapters, SSF,
    ReFT...), tokens inserted before blocks (prompts); trained parts moved off their
    identity initialisation first, so that every gradient is non-trivial."""
    batch = batch_for(kind)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = PeftModule(BACKBONES[kind](checkpointing), build_method(method, **opts), task_type="regression",
                            num_outputs=1, head_dropout=0.0)
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            for p in module.backbone.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        results.append(forward_backward(module, batch))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys()
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_checkpointing_is_in_the_spec_not_in_the_identity(tmp_path):
    for kind in ("esm2", "toy"):
        plain, ckpt = BACKBONES[kind](False), BACKBONES[kind](True)
        assert ckpt.spec()["init_args"]["gradient_checkpointing"] is True
        assert ckpt.identity() == plain.identity()
    # an adapter trained with checkpointing rebuilds its backbone with it, and loads onto one without it
    module = make_module("esm2", "lora", checkpointing=True)
    save_adapter(module, tmp_path / "a")
    rebuilt = load_adapter(tmp_path / "a")
    assert rebuilt.backbone.gradient_checkpointing
    other = load_adapter(tmp_path / "a", backbone=BACKBONES["esm2"](False)).eval()
    batch = batch_for("esm2")
    with torch.no_grad():
        torch.testing.assert_close(other(batch), rebuilt.eval()(batch), rtol=0, atol=0)


def test_swin_uses_timms_own_checkpointing():
    """Swin and ResNet run timm's forward, not the shared block loop: the option turns on timm's."""
    bb = TimmBackbone(name="swin_tiny_patch4_window7_224", img_size=64, gradient_checkpointing=True)
    assert all(stage.grad_checkpointing for stage in bb.model.layers)
    assert not any(stage.grad_checkpointing for stage in TimmBackbone(name="swin_tiny_patch4_window7_224",
                                                                          img_size=64).model.layers)
    assert copy.deepcopy(bb).gradient_checkpointing
