"""Methods that HF ``peft`` implements: thin wrappers that resolve targets
through the Backbone contract and inject with ``peft.inject_adapter_in_model``.

peft works on any ``nn.Module`` given explicit ``target_modules``; we pass full
module names so that a layer subset (e.g. the last 8 blocks) is exact. Every
method here merges: peft's layers fold their update into the base weight.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft import (AdaLoraConfig, BOFTConfig, FourierFTConfig, IA3Config, LNTuningConfig, LoHaConfig, LoKrConfig,
                  LoraConfig, OFTConfig, VeraConfig, inject_adapter_in_model)
from peft.tuners.adalora.layer import RankAllocator
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.tuners.vera import VeraModel
from torch import Tensor, nn

from peftlab.backbone import Backbone, resolve_targets, select_layers
from peftlab.methods.base import Method, freeze, register_method

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.RMSNorm)


def merge_peft_layers(backbone: nn.Module) -> int:
    """Fold every peft layer into its base layer and put the base layer back in
    its place, outermost first (peft nests a layer inside nn.MultiheadAttention's
    wrapper), until no peft module is left. Returns how many were merged."""
    replaced = 0
    while True:
        found = next(((n, m) for n, m in backbone.named_modules() if n and isinstance(m, BaseTunerLayer)), None)
        if found is None:
            return replaced
        name, module = found
        if not module.merged:
            module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        setattr(parent, child, module.get_base_layer())
        replaced += 1


class _PeftMethod(Method):
    mergeable = True
    family = "reparameterisation"
    #: why the method needs linear targets, when peft supports it (or we trust it) on linear layers only
    linear_only: str | None = None

    def _targets(self, backbone: Backbone, targets, layers) -> list[str]:
        names = resolve_targets(backbone, targets, layers)
        if self.linear_only:
            other = [f"{n} ({type(backbone.get_submodule(n)).__name__})" for n in names
                     if not isinstance(backbone.get_submodule(n), nn.Linear)]
            if other:
                raise ValueError(f"{self.name}: {self.linear_only}, but the targets on {backbone.name} include "
                                 f"{', '.join(other[:3])}{'...' if len(other) > 3 else ''}; give linear targets "
                                 f"(presets: {', '.join(sorted(backbone.target_presets))}) or use lora/loha/lokr")
        return names

    def _inject(self, backbone: Backbone, config) -> None:
        freeze(backbone)
        inject_adapter_in_model(config, backbone, adapter_name="default")
        # inject_adapter_in_model leaves only adapter weights trainable.

    def merge(self, backbone: Backbone) -> None:
        if merge_peft_layers(backbone) == 0:
            raise ValueError(f"{self.name}: no adapted layers to merge (was the method applied?)")


# ---- LoRA and its variants --------------------------------------------------------------

@register_method("lora")
class LoRA(_PeftMethod):
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
class AdaLoRA(_PeftMethod):
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


# ---- other low-rank and multiplicative reparameterisations ----------------------------------

@register_method("loha")
class LoHa(_PeftMethod):
    """LoHa (Hyeon-Woo et al. 2022, FedPara): the update is the Hadamard product
    of two rank-``r`` products, reaching rank ``r^2`` with LoRA's parameters.

    Args:
        r, alpha: rank and scaling numerator.
        targets, layers: as ``lora``.
    """

    trains = "two low-rank pairs, Hadamard product"

    def __init__(self, r: int = 8, alpha: float = 8, targets: str | list[str] | None = None,
                 layers: list[int] | str | None = None) -> None:
        self.r, self.alpha, self.targets, self.layers = r, alpha, targets, layers

    def apply(self, backbone: Backbone) -> None:
        self._inject(backbone, LoHaConfig(r=self.r, alpha=self.alpha,
                                          target_modules=self._targets(backbone, self.targets, self.layers)))


@register_method("lokr")
class LoKr(_PeftMethod):
    """LoKr (Yeh et al. 2024, LyCORIS): the update is a Kronecker product of a
    small full matrix and a rank-``r`` one.

    Args:
        r, alpha: rank and scaling numerator.
        decompose_factor: size of the Kronecker factorisation (-1: as square as possible).
        targets, layers: as ``lora``.
    """

    trains = "small full factor (x) low-rank factor"

    def __init__(self, r: int = 8, alpha: float = 8, decompose_factor: int = -1,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None) -> None:
        self.r, self.alpha, self.decompose_factor, self.targets, self.layers = r, alpha, decompose_factor, targets, layers

    def apply(self, backbone: Backbone) -> None:
        self._inject(backbone, LoKrConfig(r=self.r, alpha=self.alpha, decompose_factor=self.decompose_factor,
                                          target_modules=self._targets(backbone, self.targets, self.layers)))


@register_method("vera")
class VeRA(_PeftMethod):
    """VeRA (Kopiczko et al. 2024): one pair of frozen random projections shared
    by every layer; each layer learns only two scaling vectors (``r + d_out``).
    The projections come from ``projection_prng_key``, so they are rebuilt, not stored.

    Args:
        r: rank of the shared projections (the paper uses 256 and more).
        d_initial: initial value of the rank-side scaling vector.
        projection_prng_key: seed of the shared projections.
        targets, layers: as ``lora`` (linear layers only).
    """

    trains = "two scaling vectors per layer (shared frozen projections)"

    linear_only = "VeRA's shared projections exist for linear layers only"

    def __init__(self, r: int = 256, d_initial: float = 0.1, projection_prng_key: int = 0,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None) -> None:
        self.r, self.d_initial, self.projection_prng_key = r, d_initial, projection_prng_key
        self.targets, self.layers = targets, layers

    def apply(self, backbone: Backbone) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not save vera_A and vera_B.*")
            config = VeraConfig(r=self.r, d_initial=self.d_initial, save_projection=False,
                                projection_prng_key=self.projection_prng_key,
                                target_modules=self._targets(backbone, self.targets, self.layers))
        freeze(backbone)
        # inject_adapter_in_model refuses VeRA (its shared projections live on the tuner); the
        # tuner injects in place and every adapted layer keeps a reference to the projections.
        with warnings.catch_warnings():  # "projections not saved": they are rebuilt from the key (tested)
            warnings.filterwarnings("ignore", message=".*not save vera_A and vera_B.*")
            VeraModel(backbone, config, "default")


@register_method("oft")
class OFT(_PeftMethod):
    """OFT (Qiu et al. 2023): each weight is multiplied by a learned
    block-diagonal orthogonal matrix (Cayley parameterisation), which keeps the
    angles between neurons.

    Args:
        block_size: size of each orthogonal block (must divide the layers' input width).
        coft: constrained OFT (bounded distance from the identity).
        block_share: one block shared across the diagonal.
        targets, layers: as ``lora``.
    """

    trains = "block-diagonal orthogonal rotation of each weight"

    # peft 0.21's OFT accepts Conv2d but fails inside on 3x3 kernels ("maximum size for tensor at dimension 2")
    linear_only = "OFT is used here on linear layers only (peft's convolution path fails on 3x3 kernels)"

    def __init__(self, block_size: int = 32, coft: bool = False, block_share: bool = False,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None) -> None:
        self.block_size, self.coft, self.block_share = block_size, coft, block_share
        self.targets, self.layers = targets, layers

    def apply(self, backbone: Backbone) -> None:
        self._inject(backbone, OFTConfig(r=0, oft_block_size=self.block_size, coft=self.coft,
                                         block_share=self.block_share,
                                         target_modules=self._targets(backbone, self.targets, self.layers)))


@register_method("boft")
class BOFT(_PeftMethod):
    """BOFT (Liu et al. 2024): OFT whose orthogonal matrix is a product of
    butterfly factors: dense rotations from few parameters.

    Args:
        block_size: size of each block (must divide the layers' input width).
        butterfly_factor: number of butterfly factors (1 = one block-diagonal
            factor). Above 1 needs peft's CUDA extension; refused without it.
        targets, layers: as ``lora``.
    """

    trains = "butterfly orthogonal rotation + output scale"

    def __init__(self, block_size: int = 4, butterfly_factor: int = 1,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None) -> None:
        self.block_size, self.butterfly_factor, self.targets, self.layers = block_size, butterfly_factor, targets, layers

    def apply(self, backbone: Backbone) -> None:
        import peft.tuners.boft.layer as boft_layer

        if not torch.cuda.is_available() and boft_layer._FBD_CUDA is None:
            # Without CUDA, peft tries to JIT-compile its CUDA kernel for every BOFT layer it builds
            # (writing into ~/.cache/torch_extensions) before falling back; record "unavailable" once.
            boft_layer._FBD_CUDA = False
        if self.butterfly_factor > 1:
            if not boft_layer.get_fbd_cuda():
                # peft would only warn and train a single butterfly factor: a different method
                raise ValueError(f"boft: butterfly_factor={self.butterfly_factor} needs peft's fbd_cuda extension "
                                 "(CUDA and ninja); without it peft silently trains butterfly_factor=1. "
                                 "Use butterfly_factor: 1 here, or run on a CUDA machine with ninja installed")
        self._inject(backbone, BOFTConfig(boft_block_size=self.block_size,
                                          boft_n_butterfly_factor=self.butterfly_factor,
                                          target_modules=self._targets(backbone, self.targets, self.layers)))


@register_method("fourierft")
class FourierFT(_PeftMethod):
    """FourierFT (Gao et al. 2024): each update is the inverse 2D DFT of
    ``n_frequency`` learned spectral coefficients at fixed random frequencies
    (seeded, so rebuilt rather than stored).

    Args:
        n_frequency: learned coefficients per layer.
        scaling: multiplier of the update (the paper uses 150 for ViTs).
        random_loc_seed: seed of the frequency positions.
        targets, layers: as ``lora`` (linear layers only).
    """

    trains = "spectral coefficients at fixed random frequencies"

    linear_only = "peft's FourierFT supports linear layers only"

    def __init__(self, n_frequency: int = 1000, scaling: float = 150.0, random_loc_seed: int = 777,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None) -> None:
        self.n_frequency, self.scaling, self.random_loc_seed = n_frequency, scaling, random_loc_seed
        self.targets, self.layers = targets, layers

    def apply(self, backbone: Backbone) -> None:
        self._inject(backbone, FourierFTConfig(n_frequency=self.n_frequency, scaling=self.scaling,
                                               random_loc_seed=self.random_loc_seed,
                                               target_modules=self._targets(backbone, self.targets, self.layers)))


@register_method("ia3")
class IA3(_PeftMethod):
    """(IA)^3 (Liu et al. 2022): learned rescaling of keys, values and the MLP.

    Args:
        targets: modules whose outputs are rescaled (preset or names).
        feedforward_targets: modules whose *inputs* are rescaled (the MLP output
            layer in the paper); must also be reachable, they are added to the targets.
        layers: blocks to adapt.
    """

    trains = "scales of keys, values and MLP activations"

    family = "scaling"

    def __init__(self, targets: str | list[str] = "ia3", feedforward_targets: str | list[str] = "mlp_out",
                 layers: list[int] | str | None = None) -> None:
        self.targets, self.feedforward_targets, self.layers = targets, feedforward_targets, layers

    def apply(self, backbone: Backbone) -> None:
        targets = resolve_targets(backbone, self.targets, self.layers)
        feedforward = resolve_targets(backbone, self.feedforward_targets, self.layers)
        config = IA3Config(target_modules=sorted(set(targets) | set(feedforward)),
                           feedforward_modules=feedforward, init_ia3_weights=True)
        self._inject(backbone, config)


@register_method("ln_tuning")
class LNTuning(_PeftMethod):
    """LN tuning (Qi et al. 2022): only the normalisation layers train (their
    scale and shift; a trained batch norm also keeps its statistics). peft
    trains a copy of each layer and swaps it in on merge.

    Args:
        layers: ``None``: every normalisation layer of the backbone (inside and
            outside the blocks, except layers the backbone keeps frozen);
            otherwise those inside the chosen blocks.
    """

    trains = "normalisation layers' scale and shift"

    family = "selective"

    def __init__(self, layers: list[int] | str | None = None) -> None:
        self.layers = layers

    def norm_layers(self, backbone: Backbone) -> list[str]:
        frozen = {id(p) for p in backbone.always_frozen()}
        if self.layers is None:
            scopes = [("", backbone)]
        else:
            names = backbone.block_names()
            scopes = [(names[i] + ".", backbone.get_submodule(names[i]))
                      for i in select_layers(len(names), self.layers)]
        found = [prefix + n for prefix, scope in scopes for n, m in scope.named_modules()
                 if isinstance(m, NORM_TYPES) and any(p.numel() for p in m.parameters())
                 and not any(id(p) in frozen for p in m.parameters())]
        if not found:
            raise ValueError(f"ln_tuning: {backbone.name} has no trainable normalisation layer in the chosen blocks")
        return found

    def apply(self, backbone: Backbone) -> None:
        with warnings.catch_warnings():  # peft calls any layer type but its own list "unsupported"
            warnings.filterwarnings("ignore", message="Unsupported layer type")
            self._inject(backbone, LNTuningConfig(target_modules=self.norm_layers(backbone)))
