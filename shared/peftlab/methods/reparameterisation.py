"""The other reparameterisations of a weight's update, through HF peft: LoHa
and LoKr (LyCORIS), VeRA, OFT and BOFT (orthogonal rotations), FourierFT."""

from __future__ import annotations

import warnings

import torch
from peft import BOFTConfig, FourierFTConfig, LoHaConfig, LoKrConfig, OFTConfig, VeraConfig
from peft.tuners.vera import VeraModel

from peftlab.backbone import Backbone
from peftlab.methods.base import freeze, register_method
from peftlab.methods.peft_support import PeftMethod

@register_method("loha")
class LoHa(PeftMethod):
    """LoHa (Hyeon-Woo et al. 2022, FedPara): the update is the Hadamard product
    of two rank-``r`` products, reaching rank ``r^2`` with LoRA's parameters.

    Args:
        r, alpha: rank and scaling numerator.
        targets, layers: as ``lora``.
    """

    size_option = "r"

    trains = "two low-rank pairs, Hadamard product"

    def __init__(self, r: int = 8, alpha: float = 8, targets: str | list[str] | None = None,
                 layers: list[int] | str | None = None) -> None:
        self.r, self.alpha, self.targets, self.layers = r, alpha, targets, layers

    def apply(self, backbone: Backbone) -> None:
        self._inject(backbone, LoHaConfig(r=self.r, alpha=self.alpha,
                                          target_modules=self._targets(backbone, self.targets, self.layers)))

@register_method("lokr")
class LoKr(PeftMethod):
    """LoKr (Yeh et al. 2024, LyCORIS): the update is a Kronecker product of a
    small full matrix and a rank-``r`` one.

    Args:
        r, alpha: rank and scaling numerator.
        decompose_factor: size of the Kronecker factorisation (-1: as square as possible).
        targets, layers: as ``lora``.
    """

    size_option = "r"

    trains = "small full factor (x) low-rank factor"

    def __init__(self, r: int = 8, alpha: float = 8, decompose_factor: int = -1,
                 targets: str | list[str] | None = None, layers: list[int] | str | None = None) -> None:
        self.r, self.alpha, self.decompose_factor, self.targets, self.layers = r, alpha, decompose_factor, targets, layers

    def apply(self, backbone: Backbone) -> None:
        self._inject(backbone, LoKrConfig(r=self.r, alpha=self.alpha, decompose_factor=self.decompose_factor,
                                          target_modules=self._targets(backbone, self.targets, self.layers)))

@register_method("vera")
class VeRA(PeftMethod):
    """VeRA (Kopiczko et al. 2024): one pair of frozen random projections shared
    by every layer; each layer learns only two scaling vectors (``r + d_out``).
    The projections come from ``projection_prng_key``, so they are rebuilt, not stored.

    Args:
        r: rank of the shared projections (the paper uses 256 and more).
        d_initial: initial value of the rank-side scaling vector.
        projection_prng_key: seed of the shared projections.
        targets, layers: as ``lora`` (linear layers only).
    """

    size_option = "r"

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
class OFT(PeftMethod):
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
class BOFT(PeftMethod):
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
class FourierFT(PeftMethod):
    """FourierFT (Gao et al. 2024): each update is the inverse 2D DFT of
    ``n_frequency`` learned spectral coefficients at fixed random frequencies
    (seeded, so rebuilt rather than stored).

    Args:
        n_frequency: learned coefficients per layer.
        scaling: multiplier of the update (the paper uses 150 for ViTs).
        random_loc_seed: seed of the frequency positions.
        targets, layers: as ``lora`` (linear layers only).
    """

    size_option = "n_frequency"

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
