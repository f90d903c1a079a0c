"""Scaling up: data-parallel training on the CPU (DDP over gloo, 2 processes)
equals one process with the global batch; the length-grouped sampler shards
itself by rank (also when Lightning rebuilds it); the DDP / FSDP / DeepSpeed
trainer configs parse; FSDP's and activation checkpointing's wrapped names
do not break checkpoint filtering or adapter export; bf16 mixed precision on
the CPU; QLoRA's clear refusal without CUDA or bitsandbytes (and a CUDA test
that runs where there is one).

FSDP itself cannot run here: Lightning refuses ``strategy="fsdp"`` without a
GPU and torch's FSDP refuses a CPU-only machine ("FSDP needs a non-CPU
accelerator device"); its config, strategy object, wrap policy and name
handling are tested instead. DeepSpeed is not installed here; its tests skip
with that reason.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DistributedSampler, SequentialSampler

from peftlab import PeftModule, build_method
from peftlab.callbacks import AdapterExport
from peftlab.model.loading import load_adapter
from peftlab.cli import PeftLabCLI, main
from peftlab.data import LengthGroupedBatchSampler, PeftDataModule
from peftlab.distributed import backbone_blocks_policy, gather_trainable_state, unwrapped_name
from peftlab.quantize import QuantizationUnavailableError, quantizable_linears, quantize_backbone
from peftlab.toy import ToyTransformer
from peftlab_protein import ESM2Backbone
from peftlab_protein.synthetic import SyntheticMotifDataModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
HAS_CUDA = torch.cuda.is_available()
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def cfg(*names: str) -> list[str]:
    return [a for n in names for a in ("--config", str(CONFIGS / n))]


# ---- the sampler shards itself by rank -----------------------------------------------------------

def lengths(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 60, (n,), generator=g).tolist()


@pytest.mark.parametrize("n,batch,world", [(37, 4, 2), (40, 4, 2), (37, 3, 3), (5, 1, 2), (3, 4, 4)])
def test_ranks_share_every_global_batch_of_a_single_process(n, batch, world):
    lens = lengths(n)
    single = LengthGroupedBatchSampler(lens, batch * world, seed=3, window_batches=2)
    ranks = [LengthGroupedBatchSampler(lens, batch, seed=3, window_batches=2, num_replicas=world, rank=r)
             for r in range(world)]
    for epoch in range(3):
        expected = single.batches(epoch)
        shards = [s.batches(epoch) for s in ranks]
        # every rank takes every optimiser step (DDP needs it), and len() says how many
        assert all(len(s) == len(expected) == len(r) for s, r in zip(shards, ranks))
        for k, global_batch in enumerate(expected):
            joined = [i for s in shards for i in s[k]]
            if len(global_batch) >= world:  # in order, each example once
                assert joined == global_batch
                sizes = [len(s[k]) for s in shards]
                assert max(sizes) - min(sizes) <= 1
            else:  # fewer examples than processes: the ones left over repeat an example
                assert set(joined) == set(global_batch)


@pytest.mark.parametrize("n,batch,world", [(37, 4, 2), (9, 4, 2), (3, 2, 3)])
def test_evaluation_shards_count_every_example_once(n, batch, world):
    lens = lengths(n)
    ranks = [LengthGroupedBatchSampler(lens, batch, shuffle=False, pad_shards=False, num_replicas=world, rank=r)
             for r in range(world)]
    seen = sorted(i for s in ranks for b in s.batches(0) for i in b)
    assert seen == list(range(n))
    assert [len(s) for s in ranks] == [len(s.batches(0)) for s in ranks]
    assert all(len(s) >= 1 for s in ranks)


def _rebuilt(loader, sampler, mode):
    # what Lightning does when predicting, or with use_distributed_sampler under DDP
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader
    return _update_dataloader(loader, sampler, mode=getattr(RunningStage, mode))


@pytest.mark.parametrize("mode", ["TRAINING", "PREDICTING"])
def test_lightning_rebuilding_the_loader_keeps_the_order_and_the_shard(mode):
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from torch.utils.data import BatchSampler, DataLoader

    data = SyntheticMotifDataModule(num_sequences=30, batch_size=4, seed=0)

    class FakeTrainer:  # what the data module reads from a DDP trainer
        distributed_sampler_kwargs = {"num_replicas": 2, "rank": 1}

    data.trainer = FakeTrainer()
    data.setup("fit")
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = data.train_dataloader() if mode == "TRAINING" else data.predict_dataloader()
    before = loader.batch_sampler
    assert (before.num_replicas, before.rank, before.shuffle) == (2, 1, mode == "TRAINING")
    injected = (DistributedSampler(loader.dataset, num_replicas=2, rank=1) if mode == "TRAINING"
                else SequentialSampler(loader.dataset))
    after = _rebuilt(loader, injected, mode).batch_sampler
    after = getattr(after, "_batch_sampler", after)  # predict wraps it to record indices
    assert isinstance(after, LengthGroupedBatchSampler) and after is not before
    assert after.lengths == before.lengths and after.batches(0) == before.batches(0)


def test_a_split_smaller_than_the_process_count_is_refused():
    data = SyntheticMotifDataModule(num_sequences=10, batch_size=4, seed=0, val_fraction=0.1)

    class FakeTrainer:
        distributed_sampler_kwargs = {"num_replicas": 2, "rank": 0}

    data.trainer = FakeTrainer()
    with pytest.raises(ValueError, match="'val' split has 1 example.*2 data-parallel processes"):
        data.val_dataloader()


# ---- DDP on the CPU: 2 processes x batch 4 == 1 process x batch 8 ------------------------------------

DDP_COMMON = [*cfg("protein/backbones/esm2_tiny.yaml", "methods/lora.yaml", "protein/data/synthetic_motif.yaml"),
              "--model.backbone.init_args.num_layers=2", "--model.backbone.init_args.embed_dim=32",
              "--model.backbone.init_args.attention_heads=4",
              "--model.method.init_args.dropout=0", "--model.head_dropout=0",  # no random draws
              "--model.lr=0.01", "--model.head_lr=0.01",
              "--data.init_args.num_sequences=40",  # 32 train (4 global batches of 8), 4 val, 4 test
              "--trainer.max_epochs=2", "--trainer.accelerator=cpu", "--seed_everything=0",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _subprocess(cmd: list[str], cwd: Path, timeout: int = 300) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PL_GLOBAL_SEED", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd[:6])} ... failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _run_dir(root: Path) -> Path:
    return next(root.rglob("adapter")).parent


def _val_rows(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/loss")]
    return [{k: float(v) for k, v in r.items() if v != ""} for r in rows]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    main(["fit", *DDP_COMMON, "--data.init_args.batch_size=8", "--trainer.devices=1",
          f"--trainer.default_root_dir={root / 'single'}"])
    # Lightning's own launcher starts the second process; the documented config, moved to the CPU
    _subprocess([sys.executable, "-m", "peftlab.cli", "fit", *DDP_COMMON, *cfg("trainer/ddp.yaml"),
                 "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true",
                 "--data.init_args.batch_size=4", f"--trainer.default_root_dir={root / 'ddp'}"], cwd=root)
    return _run_dir(root / "single"), _run_dir(root / "ddp")


def test_ddp_on_two_processes_trains_as_one_process_with_the_global_batch(ddp_runs):
    single, ddp = ddp_runs
    one, two = (load_file(run / "adapter" / "adapter.safetensors") for run in (single, ddp))
    assert set(one) == set(two) and any("lora_B" in k for k in one)
    assert any(v.abs().max() > 0 for k, v in one.items() if "lora_B" in k)  # B starts at zero: it trained
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=1e-5, rtol=1e-4, msg=f"{name} differs under DDP")
    rows_one, rows_two = _val_rows(single), _val_rows(ddp)
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two] == [3.0, 7.0]  # 4 steps per epoch
    for a, b in zip(rows_one, rows_two):
        assert set(a) == set(b)
        for key in a:  # val/loss is the mean over both processes' examples (sync_dist), metrics sync themselves
            assert b[key] == pytest.approx(a[key], abs=1e-5), f"{key}: 1 process {a[key]}, 2 processes {b[key]}"
    ckpt = torch.load(next(ddp.rglob("*.ckpt")), weights_only=True)
    assert set(ckpt["state_dict"]) == set(two)  # the checkpoint holds only the trained tensors


def test_ddp_predict_through_torchrun_writes_each_example_once(ddp_runs, tmp_path):
    # torchrun (as on a multi-node job, here one node with 2 processes); Lightning's default
    # use_distributed_sampler=True, so Lightning rebuilds the batch sampler, which keeps its shard
    _, ddp = ddp_runs
    ckpt = next(ddp.rglob("*.ckpt"))
    args = [*DDP_COMMON, "--data.init_args.batch_size=4", f"--ckpt_path={ckpt}",
            f"--trainer.default_root_dir={tmp_path}"]
    main(["predict", *args, "--trainer.devices=1", f"--predictions.output={tmp_path / 'one.csv'}"])
    _subprocess([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                 "-m", "peftlab.cli", "predict", *args, "--trainer.devices=2", "--trainer.strategy=ddp",
                 f"--predictions.output={tmp_path / 'two.csv'}"], cwd=tmp_path)
    one, two = (list(csv.DictReader(open(tmp_path / f"{n}.csv"))) for n in ("one", "two"))
    expected = sorted(r.id for r in SyntheticMotifDataModule(num_sequences=40).splits["test"])
    assert sorted(r["id"] for r in two) == sorted(r["id"] for r in one) == expected
    by_id = {r["id"]: float(r["probability"]) for r in one}
    for r in two:
        assert float(r["probability"]) == pytest.approx(by_id[r["id"]], abs=1e-5)


# ---- FSDP and DeepSpeed configs ----------------------------------------------------------------------

class ParseOnly(PeftLabCLI):
    """The CLI up to the trainer: parses the configs and builds the strategy object."""

    def instantiate_trainer(self, **kwargs):
        self.trainer_config = self._get(self.config_init, "trainer", default={})
        return None


class ParseOnlyNoInstances(PeftLabCLI):
    def instantiate_classes(self) -> None:
        pass


def parse_trainer_config(name: str, instantiate: bool = True):
    args = [*cfg("protein/backbones/esm2_tiny.yaml", "methods/lora.yaml", "protein/data/synthetic_motif.yaml", f"trainer/{name}")]
    if instantiate:
        return ParseOnly(PeftModule, PeftDataModule, subclass_mode_data=True, run=False, args=args).trainer_config
    return ParseOnlyNoInstances(PeftModule, PeftDataModule, subclass_mode_data=True, run=False, args=args).config.trainer


def test_ddp_config_parses_and_builds_its_strategy():
    from lightning.pytorch.strategies import DDPStrategy
    trainer = parse_trainer_config("ddp.yaml")
    assert isinstance(trainer["strategy"], DDPStrategy) and trainer["use_distributed_sampler"] is False


def test_fsdp_config_parses_and_builds_its_strategy():
    from lightning.pytorch.strategies import FSDPStrategy
    trainer = parse_trainer_config("fsdp.yaml")
    strategy = trainer["strategy"]
    assert type(strategy) is FSDPStrategy and trainer["accelerator"] == "gpu"
    assert strategy.kwargs["auto_wrap_policy"] is backbone_blocks_policy
    assert strategy.kwargs["use_orig_params"] is True  # needed with frozen and trained tensors in one unit
    assert strategy._state_dict_type == "full"


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without a GPU")
def test_fsdp_is_refused_on_the_cpu_by_lightning():
    # why FSDP is not run here: Lightning (and torch's FSDP itself) need a GPU
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        L.Trainer(accelerator="cpu", devices=2, strategy="fsdp", logger=False)


def test_deepspeed_config_parses():
    trainer = parse_trainer_config("deepspeed.yaml", instantiate=False)
    assert trainer.strategy.class_path == "lightning.pytorch.strategies.DeepSpeedStrategy"
    assert trainer.strategy.init_args.stage == 2 and trainer.strategy.init_args.exclude_frozen_parameters is True
    assert trainer.use_distributed_sampler is False


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed (pip install deepspeed; it needs CUDA "
                                              "to build its ops), so its strategy cannot be built here")
def test_deepspeed_config_builds_its_strategy():
    from lightning.pytorch.strategies import DeepSpeedStrategy
    strategy = parse_trainer_config("deepspeed.yaml")["strategy"]
    assert isinstance(strategy, DeepSpeedStrategy) and strategy.exclude_frozen_parameters


# ---- wrapped modules: names, checkpoints and adapters ------------------------------------------------------

def tiny_module(seed: int = 0) -> PeftModule:
    backbone = ESM2Backbone(num_layers=2, embed_dim=32, attention_heads=4, seed=0)
    torch.manual_seed(seed)
    return PeftModule(backbone, build_method("lora", r=2), task_type="binary", num_outputs=1, lr=1e-2,
                      head_dropout=0.0)


def test_unwrapped_name_drops_the_wrappers_prefixes():
    assert unwrapped_name("backbone.model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module"
                          ".self_attn.q_proj.lora_A.default.weight") == \
        "backbone.model.layers.0.self_attn.q_proj.lora_A.default.weight"


def test_fsdp_wrap_policy_makes_one_unit_per_block_and_names_stay_those_of_the_state_dict():
    from torch.distributed.fsdp.wrap import _recursive_wrap

    class FakeFSDP(nn.Module):  # names its child as FSDP does; torch's FSDP itself needs a GPU
        def __init__(self, module, **kwargs):
            super().__init__()
            self._fsdp_wrapped_module = module

        def forward(self, *args, **kwargs):
            return self._fsdp_wrapped_module(*args, **kwargs)

    plain, wrapped = tiny_module(), tiny_module()
    _recursive_wrap(wrapped, backbone_blocks_policy, FakeFSDP, ignored_modules=set(), ignored_params=set())
    units = [n for n, m in wrapped.named_modules() if isinstance(m, FakeFSDP)]
    assert units == ["backbone.model.layers.0", "backbone.model.layers.1"]
    assert any("_fsdp_wrapped_module" in n for n, _ in wrapped.named_parameters())
    assert set(wrapped.trainable_state_dict()) == set(plain.trainable_state_dict())


def test_activation_checkpointing_policy_keeps_checkpoints_and_adapters_whole(tmp_path):
    # what FSDPStrategy(activation_checkpointing_policy=backbone_blocks_policy) applies, here on the CPU
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointWrapper,
                                                                             apply_activation_checkpointing)
    L.seed_everything(0)
    module = tiny_module()
    apply_activation_checkpointing(module, auto_wrap_policy=backbone_blocks_policy)
    assert sum(isinstance(m, CheckpointWrapper) for m in module.modules()) == 2
    assert any("_checkpoint_wrapped_module" in n for n, _ in module.named_parameters())
    assert set(module.trainable_state_dict()) <= set(module.state_dict())
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[AdapterExport()])
    trainer.fit(module, datamodule=SyntheticMotifDataModule(num_sequences=24, batch_size=8, seed=0))
    ckpt = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=True)
    assert set(ckpt["state_dict"]) == set(module.trainable_state_dict())
    loaded = load_adapter(tmp_path / "adapter", backbone=ESM2Backbone(num_layers=2, embed_dim=32,
                                                                       attention_heads=4, seed=0))
    batch = {"tokens": torch.tensor([[0, 5, 6, 7, 8, 2], [0, 9, 10, 11, 2, 1]])}
    module.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), module(batch))


def test_gather_trainable_state_on_one_process_is_the_trained_state_on_the_cpu(tmp_path):
    module = tiny_module()
    trainer = L.Trainer(max_steps=1, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=SyntheticMotifDataModule(num_sequences=24, batch_size=8, seed=0))
    state = gather_trainable_state(trainer, module)
    assert set(state) == set(module.trainable_state_dict())
    assert all(v.device.type == "cpu" for v in state.values())


# ---- bf16 mixed precision on the CPU ---------------------------------------------------------------------

def _fit_and_predict(precision: str, root: Path):
    L.seed_everything(0)
    module = tiny_module()
    initial = {k: v.clone() for k, v in module.trainable_state_dict().items()}
    seen: set[torch.dtype] = set()
    layer = module.backbone.model.layers[0].self_attn.q_proj
    handle = layer.register_forward_hook(lambda m, i, out: seen.add(out.dtype) if m.training else None)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", precision=precision, default_root_dir=root, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[AdapterExport(str(root / "adapter"))])
    data = SyntheticMotifDataModule(num_sequences=48, batch_size=8, seed=0)
    trainer.fit(module, datamodule=data)
    handle.remove()
    loss = float(trainer.callback_metrics["train/loss"])
    predictions = trainer.predict(module, datamodule=data)
    scores = {i: float(s) for p in predictions for i, s in zip(p["ids"], p["scores"].flatten())}
    return initial, loss, seen, load_file(root / "adapter" / "adapter.safetensors"), scores


def test_bf16_mixed_on_the_cpu_trains_float32_weights_close_to_a_float32_run(tmp_path):
    initial, loss, seen, adapter, scores = _fit_and_predict("bf16-mixed", tmp_path / "bf16")
    assert seen == {torch.bfloat16}  # autocast really ran the adapted layers in bf16
    assert math.isfinite(loss)
    assert all(v.dtype == torch.float32 for v in adapter.values())  # master weights stay float32
    _, loss32, seen32, adapter32, scores32 = _fit_and_predict("32-true", tmp_path / "fp32")
    assert seen32 == {torch.float32}

    def norm(tensors) -> float:
        return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))

    # Tolerances relative to what training changed. The float32 run's update (trained - initial adapter,
    # all tensors together) has norm 0.82 here; the bf16 run's adapter differs from the float32 one by
    # 0.046 of that (bf16 keeps 8 significant bits, and 12 steps of AdamW amplify the rounding a little):
    # measured 0.005-0.18 with the LoRA/head initialisation seeded 0-3 (the largest single tensor: 0.72).
    # So: the run trained (update norm > 0.2), and bf16 lands within a quarter of the update of float32.
    update = norm(adapter32[k] - initial[k] for k in adapter32)
    assert update > 0.2  # it trained
    assert norm(adapter[k] - initial[k] for k in adapter) > 0.2
    assert norm(adapter[k] - adapter32[k] for k in adapter) < 0.25 * update
    assert scores.keys() == scores32.keys()
    # probabilities: measured 0.0008 here, at most 0.011 over those seeds
    assert max(abs(scores[k] - scores32[k]) for k in scores) < 0.02


# ---- QLoRA ---------------------------------------------------------------------------------------------------

def test_qlora_quantises_the_linear_layers_of_the_blocks_only():
    esm = ESM2Backbone(num_layers=2, embed_dim=32, attention_heads=4)
    names = quantizable_linears(esm)
    assert len(names) == 2 * 6 and all(n.startswith("model.layers.") for n in names)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert quantizable_linears(ToyTransformer(depth=1)) == ["layers.0.attn.qkv", "layers.0.attn.proj",
                                                           "layers.0.mlp.fc1", "layers.0.mlp.fc2"]


@pytest.mark.skipif(HAS_CUDA and HAS_BNB, reason="this machine can quantise; the refusal is for machines that cannot")
def test_qlora_without_cuda_or_bitsandbytes_stops_with_a_clear_error():
    backbone = ToyTransformer(depth=1)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(QuantizationUnavailableError, match="needs bitsandbytes and a CUDA GPU") as err:
        quantize_backbone(backbone, "nf4")
    message = str(err.value)
    if not HAS_BNB:
        assert "pip install bitsandbytes" in message
    if not HAS_CUDA:
        assert "no CUDA GPU" in message
    assert "train plain LoRA" in message
    after = backbone.state_dict()  # the backbone is untouched
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_qlora_names_each_missing_piece(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(QuantizationUnavailableError, match="bitsandbytes is not installed") as err:
        quantize_backbone(ToyTransformer(depth=1))
    assert "no CUDA GPU" not in str(err.value)
    with pytest.raises(ValueError, match="quantize must be one of nf4, fp4"):
        quantize_backbone(ToyTransformer(depth=1), "int3")


def qlora_method(**kw):
    from peftlab.methods import LoRA

    return LoRA(quantize="nf4", **kw)


def test_qlora_option_stops_clearly_without_cuda_or_bitsandbytes():
    if HAS_CUDA and HAS_BNB:
        pytest.skip("this machine can quantise")
    with pytest.raises(QuantizationUnavailableError, match="needs bitsandbytes and a CUDA GPU"):
        PeftModule(ToyTransformer(depth=1), qlora_method(r=2), task_type="regression", num_outputs=1)
    with pytest.raises(ValueError, match="cannot start from a nf4 backbone"):
        build_method("lora", init="pissa", quantize="nf4")


@pytest.mark.skipif(not (HAS_CUDA and HAS_BNB), reason="QLoRA needs a CUDA GPU and bitsandbytes "
                                                        f"(cuda: {HAS_CUDA}, bitsandbytes: {HAS_BNB})")
def test_qlora_trains_on_cuda_and_its_adapter_loads_onto_the_full_precision_backbone(tmp_path):
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    L.seed_everything(0)
    backbone = ESM2Backbone(num_layers=2, embed_dim=64, attention_heads=4, seed=0)
    module = PeftModule(backbone, qlora_method(r=4), task_type="binary", num_outputs=1, lr=1e-2, head_dropout=0.0)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in module.modules()) == 12
    assert sum(isinstance(m, LoraLinear4bit) for m in module.modules()) == 8  # q, k, v, out of 2 blocks
    initial = {k: v.detach().cpu().clone() for k, v in module.trainable_state_dict().items()}
    trainer = L.Trainer(max_epochs=2, accelerator="gpu", devices=1, precision="bf16-mixed", default_root_dir=tmp_path,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[AdapterExport(str(tmp_path / "adapter"))])
    data = SyntheticMotifDataModule(num_sequences=48, batch_size=8, seed=0)
    trainer.fit(module, datamodule=data)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    adapter = load_file(tmp_path / "adapter" / "adapter.safetensors")
    assert set(adapter) == set(initial) and all(v.dtype == torch.float32 for v in adapter.values())
    assert max((adapter[k] - initial[k]).abs().max() for k in adapter) > 1e-3
    ckpt = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=True)
    assert set(ckpt["state_dict"]) == set(initial)  # no packed 4-bit weights or quantisation state in it
    full = load_adapter(tmp_path / "adapter", backbone=ESM2Backbone(num_layers=2, embed_dim=64, attention_heads=4,
                                                                    seed=0)).cuda().eval()
    module.cuda().eval()
    batch = {"tokens": torch.tensor([[0, 5, 6, 7, 8, 2], [0, 9, 10, 11, 2, 1]], device="cuda")}
    with torch.no_grad():
        assert (module(batch).sigmoid() - full(batch).sigmoid()).abs().max() < 0.1  # 4-bit rounding only


def test_qlora_benchmark_says_clearly_that_it_needs_cuda():
    if HAS_CUDA and HAS_BNB:
        pytest.skip("this machine can run the benchmark; the message is for machines that cannot")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "qlora_memory.py")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "needs a CUDA GPU and bitsandbytes" in proc.stderr


def test_a_qlora_adapter_loads_onto_the_full_precision_backbone_when_asked(tmp_path):
    """A QLoRA adapter holds plain LoRA tensors: as recorded it needs the 4-bit backbone
    again; with quantize overridden it loads on the full-precision one, here on the CPU."""
    import json

    from peftlab.persistence.adapter import save_adapter

    module = PeftModule(ToyTransformer(depth=1), build_method("lora", r=2), task_type="regression", num_outputs=1)
    save_adapter(module, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["method"]["init_args"]["quantize"] = "nf4"  # as QLoRA training records it
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    if not (HAS_CUDA and HAS_BNB):
        with pytest.raises(QuantizationUnavailableError, match="needs bitsandbytes and a CUDA GPU"):
            load_adapter(tmp_path)
    plain = load_adapter(tmp_path, method_options={"quantize": None}).eval()
    assert plain.method.quantize is None
    batch = {"tokens": torch.tensor([[3, 4, 5, 0], [6, 7, 8, 9]])}
    with torch.no_grad():
        torch.testing.assert_close(plain(batch), module.eval()(batch), rtol=0, atol=0)
