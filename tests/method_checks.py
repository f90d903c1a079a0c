"""The shared body of every method x backbone matrix (the foundation's guarantees):
exact trainable count, frozen weights unchanged by training, a changed output,
adapter-only save/load identity, and merge equivalence where defined."""

from __future__ import annotations

import pytest
import torch

from peftlab import PeftModule, build_method
from peftlab.model.loading import load_adapter, merge_adapter
from peftlab.persistence.adapter import save_adapter
from peftlab.methods import count_parameters


def _train_steps(module: PeftModule, batch: dict, steps: int = 3) -> None:
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    module.train()
    for _ in range(steps):
        loss = module._step(batch)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()


def check_method_guarantees(make_backbone, batch, name, opts, expected_trainable, embed_dim, tmp_path,
                            task: dict | None = None):
    """Apply a method to a fresh backbone and prove the foundation's guarantees. ``task``: the
    PeftModule's ``task_type``, ``num_outputs`` and ``label_names`` (default: one regression output);
    its head must be one linear layer (``(embed_dim + 1) * num_outputs`` parameters)."""
    task = task or {"task_type": "regression", "num_outputs": 1}
    base = make_backbone().eval()
    with torch.no_grad():
        base_out = base(batch).hidden
    frozen_before = {n: p.detach().clone() for n, p in make_backbone().named_parameters()}

    module = PeftModule(make_backbone(), build_method(name, **opts), **task)
    if module.method.rewrites_frozen_weights:
        # PiSSA / OLoRA keep a residual as the frozen weight: it starts as the pretrained output,
        # and from then on it is the residual that must stay frozen
        with torch.no_grad():
            torch.testing.assert_close(module.backbone(batch).hidden, base_out, rtol=1e-4, atol=1e-4)
        frozen_before = {n.replace(".base_layer.", "."): p.detach().clone()
                         for n, p in module.backbone.named_parameters() if not p.requires_grad}

    # 1. exact trainable-parameter count (backbone part, then with the head)
    assert count_parameters(module.backbone, trainable_only=True) == expected_trainable
    assert count_parameters(module, trainable_only=True) == expected_trainable + (embed_dim + 1) * task["num_outputs"]

    _train_steps(module, batch)

    # 2. frozen weights are bit-identical after training; trained ones moved
    trained = {n for n, p in module.backbone.named_parameters() if p.requires_grad}
    current = dict(module.backbone.named_parameters())
    for n, before in frozen_before.items():
        # peft moves a wrapped layer's weight to "<layer>.base_layer.weight"
        cur_name = n if n in current else n.rsplit(".", 1)[0] + ".base_layer." + n.rsplit(".", 1)[1]
        if cur_name in trained:
            continue
        assert torch.equal(current[cur_name], before), f"frozen weight {n} changed"
    if name != "linear_probe":
        assert trained, "the method trains nothing in the backbone"

    # 3. the method really changes the backbone's output (catches bypassed fast paths)
    with torch.no_grad():
        out = module.backbone(batch).hidden
    assert out.shape == base_out.shape
    if name == "linear_probe":
        assert torch.equal(out, base_out)
    else:
        assert not torch.allclose(out, base_out, atol=1e-6), "training did not change the backbone output"

    # 4. adapter-only save, load into a fresh backbone (rebuilt from the recorded spec): same outputs
    save_adapter(module, tmp_path / "adapter")
    reloaded = load_adapter(tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch), module(batch), rtol=0, atol=0)

    # 5. merge where defined: equal outputs, no extra modules
    if module.method.mergeable:
        plain_names = {n for n, _ in make_backbone().named_modules()}
        with torch.no_grad():
            unmerged = module(batch)
            merge_adapter(module)
            merged = module(batch)
        torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)  # float32 at |y| ~ 100 resolves ~1e-5
        assert {n for n, _ in module.backbone.named_modules()} == plain_names
    else:
        with pytest.raises(ValueError, match="cannot be merged"):
            merge_adapter(module)
    return module




# ---- shared by every matrix: small options for the methods whose count depends only on target shapes ----

SMALL_OPTIONS = {
    "dora": {"r": 2}, "pissa": {"r": 4}, "olora": {"r": 4}, "lora_plus": {"r": 4, "lr_ratio": 16},
    "adalora": {"init_r": 4, "target_r": 2}, "loha": {"r": 2}, "lokr": {"r": 2, "decompose_factor": 4},
    "vera": {"r": 4}, "oft": {"block_size": 8}, "boft": {"block_size": 4},
    "fourierft": {"n_frequency": 16, "scaling": 10.0}, "partial": {"k": 1},
    "compacter": {"bottleneck": 8, "phm_dim": 4}, "loreft": {"rank": 2}, "prefix": {"num_tokens": 3},
    "combined": {"parts": [{"name": "lora", "r": 2}, {"name": "bitfit"}]},
}
TARGET_SHAPE_METHODS = ("dora", "pissa", "olora", "lora_plus", "adalora", "loha", "lokr", "vera", "oft", "boft",
                        "fourierft")


def target_shape_count(name: str, opts: dict, shapes: list[tuple[int, int]]) -> int:
    """Trainable parameters one block gets from a reparameterising method, given
    the (in, out) widths of the linear layers it targets in that block."""
    total = 0
    for i, o in shapes:
        if name in ("lora", "pissa", "olora", "lora_plus"):
            total += opts["r"] * (i + o)
        elif name == "dora":  # LoRA + one magnitude per output feature
            total += opts["r"] * (i + o) + o
        elif name == "adalora":  # P (r x in), Q (out x r), r singular values
            total += opts["init_r"] * (i + o) + opts["init_r"]
        elif name == "loha":  # two rank-r products
            total += 2 * opts["r"] * (i + o)
        elif name == "lokr":  # a full f x f factor (x) a rank-r (o/f x i/f) factor
            f, r = opts["decompose_factor"], opts["r"]
            assert r < max(o // f, i // f) / 2, "peft stores the second factor whole at this rank"
            total += f * f + r * (o // f + i // f)
        elif name == "vera":  # a scale per output and per rank (the projections are shared and frozen)
            total += o + opts["r"]
        elif name == "oft":  # the skew-symmetric part of each b x b block
            b = opts["block_size"]
            total += (i // b) * b * (b - 1) // 2
        elif name == "boft":  # one butterfly factor of b x b blocks, plus a scale per output
            total += i * opts["block_size"] + o
        elif name == "fourierft":
            total += opts["n_frequency"]
        else:
            raise AssertionError(name)
    return total


def adapter_family_count(name: str, opts: dict, dim: int, blocks: int) -> int:
    """Compacter (pfeiffer), LoReFT and prefix tuning: they depend only on the width and the block count."""
    if name == "compacter":  # rank-1 PHM factors + biases per adapter, plus the shared rules (down, up)
        b, n = opts["bottleneck"], opts["phm_dim"]
        return blocks * (2 * (dim + b) + b + dim) + 2 * n ** 3
    if name == "loreft":  # R (r x D), W (r x D) and b (r) per edited block
        return blocks * (2 * opts["rank"] * dim + opts["rank"])
    if name == "prefix":  # P keys and P values per attention layer
        return blocks * 2 * opts["num_tokens"] * dim
    raise AssertionError(name)


def check_empty_prefix_matches_library(make_backbone, batch) -> None:
    """Our prefix-attention forward, with no prefix tokens, equals the library's own
    attention (so a prefix is the only thing it adds); with tokens, it changes the output."""
    from peftlab.methods.prompts import KVPrefix

    base, prefixed = make_backbone().eval(), make_backbone().eval()
    build_method("prefix", num_tokens=3).apply(prefixed)
    with torch.no_grad():
        assert not torch.allclose(prefixed(batch).hidden, base(batch).hidden, atol=1e-4)
        extended = [m for m in prefixed.modules() if "prefix" in m._modules]
        assert len(extended) == prefixed.num_blocks
        for m in extended:
            m.prefix = KVPrefix(0, m.prefix.keys.shape[1])
        torch.testing.assert_close(prefixed(batch).hidden, base(batch).hidden, rtol=0, atol=2e-6)


def linear(i: int, o: int, bias: bool = True) -> int:
    """Parameters of an ``i -> o`` linear layer (with its bias unless ``bias`` is False)."""
    return i * o + (o if bias else 0)


def volume_batch() -> dict:
    """Two random 32^3 single-channel volumes with regression labels (a segmentation encoder under a
    regression head: what the method matrix runs on MONAI's networks)."""
    g = torch.Generator().manual_seed(0)
    return {"images": torch.randn(2, 1, 32, 32, 32, generator=g), "labels": torch.tensor([0.5, -1.0]),
            "ids": ["a", "b"]}
