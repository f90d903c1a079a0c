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


def adalora_trace(method) -> list[dict]:
    """Record, after every optimiser step, what AdaLoRA's allocation left: the step index it was given,
    each layer's rank, the rank pattern, and the method state (importance scores) before and after."""
    trace, allocate = [], method.after_optimizer_step

    def scores() -> dict:  # read from peft's allocator itself, not through what the checkpoint saves
        return {k: {n: t.clone() for n, t in getattr(method.allocator, k).items()}
                for k in ("ipt", "exp_avg_ipt", "exp_avg_unc")}

    def recorded(backbone, step):
        before = scores()
        allocate(backbone, step)
        trace.append({"step": step, "ranks": method.ranks(backbone), "before": before,
                      "after": scores(), "pattern": dict(method.config.rank_pattern or {})})
    method.after_optimizer_step = recorded
    return trace


def expected_budget(step: int, total: int, tinit: int, tfinal: int, init_bgt: int, target_bgt: int) -> int:
    """AdaLoRA's schedule (Zhang et al. 2023, eq. 11, as peft's RankAllocator.budget_schedule), with steps
    counted from 0: the initial budget up to tinit, a cubic decrease, the target budget from total - tfinal."""
    if step <= tinit:
        return init_bgt
    if step >= total - tfinal:
        return target_bgt
    return int((init_bgt - target_bgt) * (1 - (step - tinit) / (total - tfinal - tinit)) ** 3 + target_bgt)


def top_triplets_per_layer(state: dict, keep: int) -> dict[str, list[bool]]:
    """Which (P row, E entry, Q column) triplets of each layer are among the ``keep`` most important ones
    overall, by the paper's importance (eq. 8-10): the score of a weight is its smoothed sensitivity times
    its uncertainty; a triplet's score is that of E_i plus the mean over P's row i and over Q's column i."""
    s = {n: state["exp_avg_ipt"][n] * state["exp_avg_unc"][n] for n in state["exp_avg_ipt"]}
    layers = sorted(n.removesuffix(".lora_E.default") for n in s if n.endswith(".lora_E.default"))
    triplet = {layer: s[f"{layer}.lora_E.default"].view(-1) + s[f"{layer}.lora_A.default"].mean(1)
               + s[f"{layer}.lora_B.default"].mean(0) for layer in layers}
    threshold = torch.cat(list(triplet.values())).sort(descending=True).values[keep - 1]
    return {layer: (t >= threshold).tolist() for layer, t in triplet.items()}


@pytest.mark.parametrize("final_fraction", [0.2, 0.05])
def test_adalora_follows_its_rank_schedule_in_every_layer(final_fraction):
    """Step by step, the ranks kept are the schedule's budget, and in each layer the triplets among that
    budget's most important ones (so layers end with different ranks: 3/2/2/1 here, target_r=2 on average);
    the final allocation runs at step total - tfinal (0-based; with final_fraction=0.05 over 20 steps that is
    the last step), and every layer keeps its rank after it."""
    torch.manual_seed(0)
    method = build_method("adalora", init_r=4, target_r=2, initial_fraction=0.1, final_fraction=final_fraction)
    module = PeftModule(make_backbone("toy"), method, task_type="regression", num_outputs=1, lr=1e-2)
    layers = ["layers.0.attn.qkv", "layers.0.attn.proj", "layers.1.attn.qkv", "layers.1.attn.proj"]
    assert sum(method.ranks(module.backbone).values()) == 0  # E starts at zero: the adapted model is the base
    trace = adalora_trace(method)
    fit(module, steps=20)
    config = method.config
    tfinal = {0.2: 4, 0.05: 1}[final_fraction]
    assert (config.total_step, config.tinit, config.tfinal) == (20, 2, tfinal)
    final = 20 - tfinal  # the step of the final allocation
    init_bgt, target_bgt = 4 * len(layers), 2 * len(layers)
    assert [t["step"] for t in trace] == list(range(20))  # each optimiser step once, counted from 0
    budgets = [expected_budget(k, 20, 2, tfinal, init_bgt, target_bgt) for k in range(20)]
    assert [sum(t["ranks"].values()) for t in trace] == budgets
    assert budgets[2:5] == [16, 14, 13]  # (a decrease that a schedule one step late would not show)

    for k in range(3, final):  # the budget phase: each step keeps, layer by layer, its budget's most important
        kept = top_triplets_per_layer(trace[k]["after"], budgets[k])  # triplets (scored with this step's update)
        assert trace[k]["ranks"] == {layer: sum(keep) for layer, keep in kept.items()}, f"step {k}"
    at_final = trace[final]
    # the final allocation used the scores as they stood (it adds no new ones), then dropped them
    expected = top_triplets_per_layer(at_final["before"], target_bgt)
    assert sorted(at_final["ranks"]) == sorted(layers)
    assert at_final["ranks"] == {layer: sum(keep) for layer, keep in expected.items()}
    assert {n.removesuffix(".lora_E.default"): p for n, p in at_final["pattern"].items()} == expected
    assert at_final["before"]["ipt"] and not at_final["after"]["ipt"]
    for t in trace[final:]:  # every layer keeps the final allocation's rank to the end
        assert t["ranks"] == at_final["ranks"] and t["pattern"] == at_final["pattern"]
    for t in trace[:final]:
        assert t["after"]["ipt"]  # scores accumulate until the final allocation


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
    from peftlab.model.loading import load_adapter
    from peftlab.persistence.adapter import save_adapter

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
    checkpointed, so a run resumed in the budget phase (which needs the scores) or after
    the final allocation (which needs the rank pattern) goes on exactly as the
    uninterrupted run: the same ranks, scores and pattern after every step, the same weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(root, ckpt_path=None):
        L.seed_everything(0)
        method = build_method("adalora", init_r=4, target_r=2, initial_fraction=0.1, final_fraction=0.2)
        module = PeftModule(make_backbone("toy"), method, task_type="regression", num_outputs=1, lr=1e-2,
                            head_dropout=0.0)
        trace = adalora_trace(method)
        trainer = L.Trainer(max_steps=16, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, default_root_dir=root,
                            callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1,
                                                       filename="{step}")])
        trainer.fit(module, train_dataloaders=toy_batches(1), ckpt_path=ckpt_path)  # one batch per epoch
        return module, trace

    straight, trace = run(tmp_path / "straight")
    assert (straight.method.config.tinit, straight.method.config.tfinal) == (1, 3)  # final allocation: step 13
    assert sum(straight.method.ranks(straight.backbone).values()) == 2 * 4
    ckpt = lambda step: tmp_path / "straight" / "ckpt" / f"step={step}.ckpt"  # noqa: E731  (after `step` steps)
    saved = {step: torch.load(ckpt(step), weights_only=True)["method_state"] for step in (6, 14)}
    assert saved[6]["exp_avg_ipt"] and saved[6]["rank_pattern"]  # the budget phase: scores and a pattern
    assert not saved[14]["exp_avg_ipt"] and sum(map(sum, saved[14]["rank_pattern"].values())) == 2 * 4  # after it

    def state(entry):
        return [entry["step"], entry["ranks"], entry["pattern"],
                {k: {n: t.tolist() for n, t in entry["after"][k].items()} for k in ("ipt", "exp_avg_ipt", "exp_avg_unc")}]

    for step in (6, 14):  # in the budget phase; after the final allocation (steps 0-13 done)
        resumed, resumed_trace = run(tmp_path / f"from{step}", ckpt(step))
        assert [t["step"] for t in resumed_trace] == list(range(step, 16))
        for a, b in zip(trace[step:], resumed_trace, strict=True):
            assert state(a) == state(b), f"resumed from step {step}: step {b['step']} differs"
        for (name, a), b in zip(straight.trainable_state_dict().items(), resumed.trainable_state_dict().values()):
            assert torch.equal(a, b), f"resumed from step {step}: {name} differs"
