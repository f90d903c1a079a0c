"""What peftlab does itself when a run spans several processes (DDP, FSDP,
DeepSpeed; see the README, "Scaling up" for the commands).

* Batches: :class:`peftlab.data.LengthGroupedBatchSampler` shards every
  global batch by rank (Lightning cannot put a DistributedSampler into a
  custom batch sampler), so N processes with batch ``b`` train on the batches
  one process with ``N * b`` would see.
* FSDP units: :func:`backbone_blocks_policy` wraps each backbone block.
* Names: FSDP and activation checkpointing wrap modules, and
  ``named_parameters`` then names ``blocks.0._fsdp_wrapped_module.attn...``
  while state dicts (and so checkpoints) say ``blocks.0.attn...``;
  :func:`unwrapped_name` gives the state-dict name, so that checkpoint
  filtering and adapter files use one naming whatever the strategy.
* Adapter export: under FSDP each process holds a shard of every tensor and
  under DeepSpeed ZeRO-3 a partition, so the trained tensors must be gathered
  (a collective that every process joins) before rank 0 writes them:
  :func:`gather_trainable_state`.
* Predictions: each process predicts its share; :func:`gather_to_rank_zero`
  brings them to rank 0, which writes the one CSV.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn

#: prefixes that module wrappers put into parameter names but not into state-dict keys
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def unwrapped_name(name: str) -> str:
    """A parameter's name as state dicts and checkpoints spell it: without the
    prefixes of FSDP's and activation checkpointing's module wrappers."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


_BLOCKS: weakref.WeakSet = weakref.WeakSet()


def backbone_blocks_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """An FSDP auto-wrap policy (also for ``activation_checkpointing_policy``):
    one FSDP unit per block of the peftlab backbone, whatever the backbone
    (ESM-2 layers, ViT blocks, wav2vec2 encoder layers). FSDP asks with
    ``recurse=True`` on the way down (a backbone met there names its blocks)
    and with ``recurse=False`` whether to wrap a module. In YAML:
    ``auto_wrap_policy: peftlab.distributed.backbone_blocks_policy``."""
    from peftlab.backbone import Backbone

    if recurse:
        if isinstance(module, Backbone):
            _BLOCKS.update(module.blocks)
        return True
    return module in _BLOCKS


def _is_fsdp(strategy: Any) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


def _is_zero3(strategy: Any) -> bool:
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return isinstance(strategy, DeepSpeedStrategy) and bool(strategy.zero_stage_3)


def gather_trainable_state(trainer: Any, module: Any) -> dict[str, Tensor] | None:
    """The trained tensors of ``module`` (a PeftModule: its
    ``trainable_state_dict`` names), full-size and on the CPU, on global rank
    0; ``None`` on the other ranks.

    A collective under FSDP (the full state dict is assembled on rank 0, one
    FSDP unit at a time, as Lightning's own ``state_dict_type="full"``
    checkpoints do) and DeepSpeed ZeRO-3 (only the trained parameters are
    gathered): every process must call it. Under DDP, DeepSpeed ZeRO-1/2 and
    a single device each process holds the whole model, and rank 0 reads it.
    """
    strategy = trainer.strategy
    rank_zero = trainer.is_global_zero
    names = set(module.trainable_state_dict())
    if _is_fsdp(strategy):
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

        with FullyShardedDataParallel.state_dict_type(strategy.model, StateDictType.FULL_STATE_DICT,
                                                      FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
            full = strategy.model.state_dict()
        state = {k: v for k, v in full.items() if k in names}
        if rank_zero and set(state) != names:
            missing = sorted(names - set(state))
            raise RuntimeError(f"FSDP's full state dict lacks {len(missing)} trained tensor(s), e.g. {missing[:3]}")
    elif _is_zero3(strategy):
        import deepspeed

        params = [p for p in module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = module.trainable_state_dict() if rank_zero else {}
            state = {k: v.detach().cpu().clone() for k, v in state.items()}
    else:
        state = module.trainable_state_dict() if rank_zero else {}
    if not rank_zero:
        return None
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def gather_to_rank_zero(trainer: Any, items: list[Any]) -> list[Any] | None:
    """Every process's ``items`` (picklable; tensors are moved to the CPU),
    concatenated in rank order on global rank 0; ``None`` elsewhere. A
    collective in a multi-process run; the identity on one process."""
    if trainer.world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return items
    items = _to_cpu(items)
    gathered: list[Any] = [None] * trainer.world_size if trainer.is_global_zero else None
    torch.distributed.gather_object(items, gathered, dst=0)
    if not trainer.is_global_zero:
        return None
    return [item for part in gathered for item in part]


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
