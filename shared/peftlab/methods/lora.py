"""LoRA and its variants, through HF peft: LoRA (with rsLoRA scaling, Gaussian
init and QLoRA's 4-bit backbone as options), DoRA, PiSSA, OLoRA, LoRA+ and
AdaLoRA (its rank-budget schedule runs inside the training loop)."""

from __future__ import annotations

from typing import Any

import torch
from peft import AdaLoraConfig, LoraConfig
from peft.tuners.adalora.layer import RankAllocator
from torch import Tensor

from peftlab.backbone import Backbone
from peftlab.methods.base import register_method
from peftlab.methods.peft_support import PeftMethod

@register_method("lora")
class LoRA(PeftMethod):
    """LoRA (Hu et al. 2021), with DoRA (Liu et al. 2024) and rsLoRA scaling as options.

    Args:
        r: rank of the update.
        alpha: scaling numerator (update scaled by ``alpha / r``, or
            ``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: dropout on the LoRA input.
        targets: a target preset of the backbone (``attention``,
            ``attention+mlp``, ``all-linear``, ``conv``...), block-relative
            module names (e.g. ``[self_attn.k_proj, self_attn.v_proj]``), or
            ``None`` for the backbone's default (attention; convolutions on a CNN).
        layers: blocks to adapt: ``None`` (all), indices (negative from the
            end) or ``"last:N"``.
        use_dora: weight-decomposed LoRA (DoRA).
        use_rslora: rank-stabilised scaling.
        init: peft's ``init_lora_weights``: ``true`` (Kaiming A, zero B),
            ``gaussian`` (Gaussian A scaled by 1/r), or the data-free SVD/QR
            inits ``pissa`` / ``olora`` (prefer the ``pissa`` / ``olora`` methods).
        quantize: ``nf4`` or ``fp4`` for QLoRA: the blocks' frozen linear
            layers become 4-bit bitsandbytes layers first (CUDA only; see
            :mod:`peftlab.quantize`). The adapter's tensors are plain LoRA's.
    """

    size_option = "r"

    trains = "low-rank A, B beside the target weights"

    def __init__(self, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None,
                 use_dora: bool = False, use_rslora: bool = False, init: bool | str = True,
                 quantize: str | None = None) -> None:
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.targets, self.layers = targets, layers
        self.use_dora, self.use_rslora, self.init, self.quantize = use_dora, use_rslora, init, quantize
        if quantize is not None and init not in (True, "gaussian"):
            raise ValueError(f"lora: init={init!r} decomposes full-precision weights; it cannot start from "
                             f"a {quantize} backbone")
        # PiSSA and OLoRA move the principal part of W into A and B and keep the residual as the frozen weight
        self.rewrites_frozen_weights = isinstance(init, str) and (init.startswith("pissa") or init == "olora")
        if self.rewrites_frozen_weights:
            self.linear_only = f"the {init} initialisation decomposes linear weights (peft has it for linear layers only)"

    def apply(self, backbone: Backbone) -> None:
        if self.quantize is not None:  # after PeftModule took the identity of the full-precision weights
            from peftlab.quantize import quantize_backbone

            quantize_backbone(backbone, self.quantize)
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=self._targets(backbone, self.targets, self.layers),
                            use_dora=self.use_dora, use_rslora=self.use_rslora,
                            init_lora_weights=self.init, bias="none")
        self._inject(backbone, config)

@register_method("dora")
class DoRA(LoRA):
    """DoRA (Liu et al. 2024): LoRA on the direction of each weight plus a
    learned magnitude per output feature. Same options as ``lora``."""

    trains = "low-rank A, B plus a magnitude per output"

    def __init__(self, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None,
                 use_rslora: bool = False) -> None:
        super().__init__(r, alpha, dropout, targets, layers, use_dora=True, use_rslora=use_rslora)

@register_method("pissa")
class PiSSA(LoRA):
    """PiSSA (Meng et al. 2024): A and B start as the weight's top-``r``
    singular vectors, the frozen weight becomes the residual ``W - BA``, so
    training updates the principal part. Deterministic (full SVD), so an
    adapter reloads onto a fresh backbone exactly. Same options as ``lora``."""

    trains = "A, B started from the top-r SVD (residual frozen)"

    def __init__(self, r: int = 8, alpha: float = 8, dropout: float = 0.0,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None) -> None:
        super().__init__(r, alpha, dropout, targets, layers, init="pissa")

@register_method("olora")
class OLoRA(LoRA):
    """OLoRA (Büyükakyüz 2024): A and B start from a QR decomposition of the
    weight (orthonormal B), the frozen weight keeps the residual. Same options as ``lora``."""

    trains = "A, B started from a QR decomposition (residual frozen)"

    def __init__(self, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None) -> None:
        super().__init__(r, alpha, dropout, targets, layers, init="olora")

@register_method("lora_plus")
class LoRAPlus(LoRA):
    """LoRA+ (Hayou et al. 2024): B learns ``lr_ratio`` times faster than A.

    Args:
        lr_ratio: learning rate of B over that of A (the paper suggests 2^4).
        (the others as ``lora``)
    """

    trains = "LoRA's A, B, with B at a higher learning rate"

    def __init__(self, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None,
                 lr_ratio: float = 16.0) -> None:
        super().__init__(r, alpha, dropout, targets, layers)
        self.lr_ratio = lr_ratio

    def param_groups(self, backbone: Backbone, lr: float) -> list[dict[str, Any]]:
        # peft.optimizers.create_loraplus_optimizer builds a whole optimiser over
        # the whole model; we only need its grouping, beside our head group.
        a = [p for n, p in backbone.named_parameters() if p.requires_grad and ".lora_B." not in n]
        b = [p for n, p in backbone.named_parameters() if p.requires_grad and ".lora_B." in n]
        return [{"params": a, "lr": lr, "name": "backbone"},
                {"params": b, "lr": lr * self.lr_ratio, "name": "backbone_lora_B"}]

@register_method("adalora")
class AdaLoRA(PeftMethod):
    """AdaLoRA (Zhang et al. 2023): SVD-shaped LoRA (``P diag(E) Q``) whose
    rank budget shrinks from ``init_r`` to ``target_r`` per layer on average,
    giving rank where the importance scores say it matters.

    The schedule runs inside training: after an initial ``initial_fraction``
    of the optimiser steps the budget decreases (cubically) until the last
    ``final_fraction``, where the allocation is fixed. peft's RankAllocator
    does the scoring and masking; PeftModule calls it after every optimiser
    step and adds the orthogonality penalty to the loss.

    Args:
        init_r / target_r: starting and final average rank.
        alpha, dropout, targets, layers: as ``lora``.
        initial_fraction / final_fraction: shares of the steps before and
            after the budget decreases.
        delta_t: steps between two budget allocations.
        beta1 / beta2: smoothing of the sensitivity and of its uncertainty.
        orth_reg_weight: weight of the orthogonality penalty on P and Q.
    """

    size_option = "target_r"

    trains = "SVD-shaped P, E, Q; ranks pruned to a budget"

    def __init__(self, init_r: int = 12, target_r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None,
                 initial_fraction: float = 0.1, final_fraction: float = 0.2, delta_t: int = 1,
                 beta1: float = 0.85, beta2: float = 0.85, orth_reg_weight: float = 0.5) -> None:
        if not (0 <= initial_fraction and 0 <= final_fraction and initial_fraction + final_fraction < 1):
            raise ValueError(f"adalora: initial_fraction + final_fraction must be below 1 (a budget phase must "
                             f"remain), got {initial_fraction} + {final_fraction}")
        if target_r > init_r:
            raise ValueError(f"adalora: target_r ({target_r}) must not exceed init_r ({init_r})")
        self.init_r, self.target_r, self.alpha, self.dropout = init_r, target_r, alpha, dropout
        self.targets, self.layers = targets, layers
        self.initial_fraction, self.final_fraction, self.delta_t = initial_fraction, final_fraction, delta_t
        self.beta1, self.beta2, self.orth_reg_weight = beta1, beta2, orth_reg_weight
        self.config: AdaLoraConfig | None = None
        self.allocator: RankAllocator | None = None

    def apply(self, backbone: Backbone) -> None:
        # total_step is only known once the trainer is (on_fit_start); a placeholder keeps peft's check happy
        self.config = AdaLoraConfig(init_r=self.init_r, target_r=self.target_r, lora_alpha=self.alpha,
                                    lora_dropout=self.dropout, deltaT=self.delta_t, beta1=self.beta1,
                                    beta2=self.beta2, orth_reg_weight=self.orth_reg_weight, total_step=10**9,
                                    target_modules=self._targets(backbone, self.targets, self.layers))
        self._inject(backbone, self.config)
        self.allocator = RankAllocator(backbone, self.config, "default")

    def on_fit_start(self, backbone: Backbone, total_steps: int) -> None:
        config = self.config
        config.total_step = total_steps
        config.tinit = int(total_steps * self.initial_fraction)
        config.tfinal = int(total_steps * self.final_fraction)  # fractions below 1 leave a budget phase

    def regularization(self, backbone: Backbone) -> Tensor | None:
        # As AdaLoraModel.forward (which only acts on HF model outputs): ||PP^T - I|| and ||Q^TQ - I||.
        terms = [torch.linalg.matrix_norm((p @ p.T if ".lora_A." in n else p.T @ p)
                                          - torch.eye(p.shape[0] if ".lora_A." in n else p.shape[1],
                                                      device=p.device, dtype=p.dtype))
                 for n, p in backbone.named_parameters() if p.requires_grad and (".lora_A." in n or ".lora_B." in n)]
        return self.orth_reg_weight * torch.stack(terms).mean() if terms else None

    def after_optimizer_step(self, backbone: Backbone, step: int) -> None:
        # As peft's AdaLoraModel.update_and_allocate (the tuner object is not kept by inject_adapter_in_model),
        # which counts optimiser steps from 0. ``step`` is the 0-based index of the step just taken: PeftModule
        # passes Lightning's global step, which Lightning increments only after optimizer_step returns.
        config, end = self.config, self.config.total_step - self.config.tfinal
        if step < end:
            _, pattern = self.allocator.update_and_allocate(backbone, step)
            if pattern:
                config.rank_pattern = pattern
        elif step == end and self.allocator.ipt:
            _, config.rank_pattern = self.allocator.update_and_allocate(backbone, step, force_mask=True)
            self.allocator.reset_ipt()
        elif config.rank_pattern:
            self.allocator.mask_using_rank_pattern(backbone, config.rank_pattern)

    def training_state(self) -> dict[str, Any]:
        if self.allocator is None:
            return {}
        a = self.allocator
        clone = lambda d: {k: v.detach().clone() for k, v in d.items()}  # noqa: E731
        return {"ipt": clone(a.ipt), "exp_avg_ipt": clone(a.exp_avg_ipt), "exp_avg_unc": clone(a.exp_avg_unc),
                "rank_pattern": dict(self.config.rank_pattern or {})}

    def load_training_state(self, state: dict[str, Any]) -> None:
        a = self.allocator
        a.ipt, a.exp_avg_ipt, a.exp_avg_unc = dict(state["ipt"]), dict(state["exp_avg_ipt"]), dict(state["exp_avg_unc"])
        self.config.rank_pattern = dict(state["rank_pattern"])

    def ranks(self, backbone: Backbone) -> dict[str, int]:
        """The rank each adapted layer has now (non-zero singular values)."""
        return {n.removesuffix(".lora_E.default"): int((p != 0).sum())
                for n, p in backbone.named_parameters() if n.endswith(".lora_E.default")}
