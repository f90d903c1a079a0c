"""The shared body of every method x backbone matrix (the foundation's guarantees):
exact trainable count, frozen weights unchanged by training, a changed output,
adapter-only save/load identity, and merge equivalence where defined."""

from __future__ import annotations

import pytest
import torch

from peftlab import PeftModule, build_method
from peftlab.checkpoint import load_adapter, merge_adapter, save_adapter
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


def check_method_guarantees(make_backbone, batch, name, opts, expected_trainable, embed_dim, tmp_path):
    """Apply a method to a fresh backbone and prove the foundation's guarantees."""
    base = make_backbone().eval()
    with torch.no_grad():
        base_out = base(batch).hidden
    frozen_before = {n: p.detach().clone() for n, p in make_backbone().named_parameters()}

    module = PeftModule(make_backbone(), build_method(name, **opts), task_type="regression", num_outputs=1)

    # 1. exact trainable-parameter count (backbone part, then with the head)
    assert count_parameters(module.backbone, trainable_only=True) == expected_trainable
    assert count_parameters(module, trainable_only=True) == expected_trainable + embed_dim + 1

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


