"""The medical domain's backbones, one module per library family:

    timm_models  timm image models: ViT / DeiT, Swin, ResNet (:class:`TimmBackbone`)

Every name of the former ``peftlab_medical.backbones`` module is importable
from here (``peftlab_medical.backbones.TimmBackbone`` is the class path that
configs and ``adapter_config.json`` files written before the split name).
"""

from peftlab_medical.backbones.timm_models import (RESNET_PRESETS, TRANSFORMER_PRESETS, TRANSFORMER_SITES,
                                                   TimmBackbone)

__all__ = ["RESNET_PRESETS", "TRANSFORMER_PRESETS", "TRANSFORMER_SITES", "TimmBackbone"]
