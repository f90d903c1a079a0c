"""Methods whose training loop differs from plain gradient descent (AdaLoRA's
rank schedule, LoRA+'s learning rates) run through the real Lightning loop;
and the invariants of the methods written here (Compacter's shared rules,
LoReFT's orthonormal subspace, combinations)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from peftlab import PeftModule, build_method
from peftlab.methods import Combined

from tests.conftest import make_backbone, make_batch


def toy_batches(n: int = 8) -> DataLoader:
    def batch(i: int) -> dict:
        b = make_batch("toy", seed=i)
        return dict(b, labels=b["tokens"][:, :3].float().mean(1) / 10)
    return DataLoader([batch(i) for i in range(n)], batch_size=None)


def fit(module: PeftModule, steps: int) -> L.Trainer:
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=toy_batches())
    return trainer


def test_adalora_shrinks_the_rank_budget_to_its_target_during_training():
    torch.manual_seed(0)
    method = build_method("adalora", init_r=4, target_r=2, initial_fraction=0.1, final_fraction=0.3)
    module = PeftModule(make_backbone("toy"), method, task_type="regression", num_outputs=1, lr=1e-2)
    layers = 2 * 2  # qkv and proj in 2 blocks
    assert sum(method.ranks(module.backbone).values()) == 0  # E starts at zero: the adapted model is the base
    fit(module, steps=20)
    config = method.config
    assert (config.total_step, config.tinit, config.tfinal) == (20, 2, 6)
    ranks = method.ranks(module.backbone)
    assert len(ranks) == layers
    # the final allocation keeps exactly target_r ranks per layer on average, spread by importance
    assert sum(ranks.values()) == 2 * layers
    assert all(0 <= r <= 4 for r in ranks.values())
    assert len(config.rank_pattern) == layers


def test_adalora_adds_its_orthogonality_penalty_to_the_training_loss():
    module = PeftModule(make_backbone("toy"), build_method("adalora", init_r=4, target_r=2, orth_reg_weight=0.5),
                        task_type="regression", num_outputs=1)
    batch = make_batch("toy")
    penalty = module.method.regularization(module.backbone)
    assert penalty is not None and penalty.item() > 0  # random P, Q are not orthonormal
    module.log = lambda *a, **k: None
    module.eval()  # no dropout: both forward passes see the same network
    torch.testing.assert_close(module.training_step(batch, 0), module._step(batch)[0] + penalty)


def test_adalora_schedule_needs_a_budget_phase():
    with pytest.raises(ValueError, match="must be below 1"):
        build_method("adalora", initial_fraction=0.6, final_fraction=0.4)
    with pytest.raises(ValueError, match="must be below 1"):
        build_method("adalora", initial_fraction=-0.1)
    with pytest.raises(ValueError, match="must not exceed init_r"):
        build_method("adalora", init_r=4, target_r=8)


def test_lora_plus_gives_b_its_own_higher_learning_rate():
    module = PeftModule(make_backbone("toy"), build_method("lora_plus", r=2, lr_ratio=16), task_type="regression",
                        num_outputs=1, lr=1e-3, head_lr=5e-3)
    optimizer = module.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    # the base rates (the warm-up schedule scales every group by the same factor)
    assert {n: g["initial_lr"] for n, g in groups.items()} == {"head": 5e-3, "backbone": 1e-3, "backbone_lora_B": 16e-3}
    names = {id(p): n for n, p in module.backbone.named_parameters()}
    assert all(".lora_B." in names[id(p)] for p in groups["backbone_lora_B"]["params"])
    assert all(".lora_A." in names[id(p)] for p in groups["backbone"]["params"])
    assert len(groups["backbone_lora_B"]["params"]) == len(groups["backbone"]["params"]) == 4


def test_compacter_rules_are_shared_by_every_adapter_and_learn_from_all_of_them():
    module = PeftModule(make_backbone("toy"), build_method("compacter", bottleneck=8, phm_dim=4, placement="houlsby"),
                        task_type="regression", num_outputs=1)
    rules = module.backbone.compacter_phm_rules
    adapters = [m for m in module.backbone.modules() if type(m).__name__ == "PHMLinear"]
    assert len(adapters) == 2 * 2 * 2  # (down, up) x (attention, MLP) x 2 blocks
    assert all(a._rules[0] is rules for a in adapters)
    # the weight is the sum of Kronecker products, as written in the paper
    a = adapters[0]
    expected = sum(torch.kron(rules.down[i], a.s[i] @ a.t[i]) for i in range(4))
    torch.testing.assert_close(a.weight(), expected)
    # up projections start at zero: the adapted model starts as the base model
    base = make_backbone("toy").eval()
    batch = make_batch("toy")
    with torch.no_grad():
        torch.testing.assert_close(module.backbone.eval()(batch).hidden, base(batch).hidden)
    with pytest.raises(ValueError, match="divisible by phm_dim=5"):
        build_method("compacter", phm_dim=5).apply(make_backbone("toy"))


def test_loreft_edits_only_inside_an_orthonormal_subspace():
    backbone = make_backbone("toy")
    build_method("loreft", rank=3).apply(backbone)
    intervention = backbone.token_hooks["loreft"].interventions[0]
    with torch.no_grad():
        intervention.rotation.add_(torch.randn_like(intervention.rotation))  # any free matrix
        rot = intervention.orthonormal_rotation()
        torch.testing.assert_close(rot @ rot.T, torch.eye(3), atol=1e-5, rtol=0)
        h = torch.randn(5, 32)
        delta = intervention(h) - h
        # the edit lies in the row space of R: projecting it on R's complement leaves nothing
        torch.testing.assert_close(delta - delta @ rot.T @ rot, torch.zeros_like(delta), atol=1e-5, rtol=0)
        # W = R and b = 0 make the intervention the identity
        intervention.source.weight.copy_(rot)
        intervention.source.bias.zero_()
        torch.testing.assert_close(intervention(h), h, atol=1e-5, rtol=0)


def test_combined_trains_the_union_and_explains_bad_parts():
    module = PeftModule(make_backbone("toy"), build_method("combined", parts=[{"name": "lora", "r": 2},
                                                                                {"name": "prompt", "num_tokens": 2}]),
                        task_type="regression", num_outputs=1)
    trained = {n for n, p in module.backbone.named_parameters() if p.requires_grad}
    assert any(".lora_A." in n for n in trained) and "token_hooks.prompt.tokens" in trained
    assert not module.method.mergeable  # prompts stay in the model
    assert Combined(parts=[{"name": "lora"}, {"name": "bitfit"}]).mergeable
    with pytest.raises(ValueError, match="part 1 .* has no 'name'"):
        Combined(parts=[{"name": "lora"}, {"r": 2}])
    with pytest.raises(ValueError, match="at least two parts"):
        Combined(parts=[{"name": "lora"}])


def test_boft_refuses_butterflies_it_cannot_compute_here():
    if torch.cuda.is_available():
        pytest.skip("with CUDA, peft's butterfly kernel may be available")
    with pytest.raises(ValueError, match="silently trains butterfly_factor=1"):
        build_method("boft", block_size=4, butterfly_factor=2).apply(make_backbone("toy"))


def test_pissa_reloads_exactly_from_a_fresh_backbone(tmp_path):
    # the frozen residual is recomputed (deterministic SVD), not stored: the reloaded model must match
    from peftlab.checkpoint import load_adapter, save_adapter

    module = PeftModule(make_backbone("esm2"), build_method("pissa", r=4), task_type="regression", num_outputs=1)
    with torch.no_grad():
        for n, p in module.backbone.named_parameters():
            if p.requires_grad:
                p.add_(0.01)
    save_adapter(module, tmp_path)
    stored = set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(tmp_path / "adapter.safetensors"))
    assert not any("base_layer" in k for k in stored)  # only A, B and the head: the residual is rebuilt
    batch = make_batch("esm2")
    with torch.no_grad():
        torch.testing.assert_close(load_adapter(tmp_path).eval()(batch), module.eval()(batch), rtol=0, atol=0)


def test_adalora_resumes_exactly_mid_schedule(tmp_path):
    """Its importance scores and rank pattern live outside the parameters: they are
    checkpointed, so a run resumed in the budget phase or after the final allocation
    ends where the uninterrupted run ends."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(root, ckpt_path=None):
        L.seed_everything(0)
        method = build_method("adalora", init_r=4, target_r=2, initial_fraction=0.1, final_fraction=0.2)
        module = PeftModule(make_backbone("toy"), method, task_type="regression", num_outputs=1, lr=1e-2,
                            head_dropout=0.0)
        trainer = L.Trainer(max_steps=16, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, default_root_dir=root,
                            callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1,
                                                       filename="{step}")])
        trainer.fit(module, train_dataloaders=toy_batches(1), ckpt_path=ckpt_path)  # one batch per epoch
        return module

    straight = run(tmp_path / "straight")
    assert sum(straight.method.ranks(straight.backbone).values()) == 2 * 4
    for step in (6, 14):  # in the budget phase; after the final allocation (at step 13)
        resumed = run(tmp_path / f"from{step}", tmp_path / "straight" / "ckpt" / f"step={step}.ckpt")
        for (name, a), b in zip(straight.trainable_state_dict().items(), resumed.trainable_state_dict().values()):
            assert torch.equal(a, b), f"resumed from step {step}: {name} differs"
