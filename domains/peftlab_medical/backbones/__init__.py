"""The medical domain's backbones, one module per library family:

    timm_models     timm image models: ViT / DeiT, SAM, Swin, ResNet (:class:`TimmBackbone`)
    timm_decoders   their 2D segmentation heads: SETR-PUP (ViT / DeiT), a light decoder over SAM's neck
    monai_networks  MONAI segmentation networks: UNETR (:class:`MonaiUNETRBackbone`, its decoder the head)
    monai_swin      MONAI's SwinUNETR, 2D or 3D (:class:`MonaiSwinUNETRBackbone`, its decoder the head)

Every name of the former ``peftlab_medical.backbones`` module is importable
from here (``peftlab_medical.backbones.TimmBackbone`` is the class path that
configs and ``adapter_config.json`` files written before the split name).
"""

from peftlab_medical.backbones.timm_models import (RESNET_PRESETS, TRANSFORMER_PRESETS, TRANSFORMER_SITES,
                                                   TimmBackbone)
from peftlab_medical.backbones.monai_networks import MonaiUNETRBackbone, UNETRDecoder
from peftlab_medical.backbones.monai_swin import MonaiSwinUNETRBackbone, SwinUNETRDecoder

__all__ = ["MonaiSwinUNETRBackbone", "MonaiUNETRBackbone", "RESNET_PRESETS", "TRANSFORMER_PRESETS", "TRANSFORMER_SITES", "SwinUNETRDecoder",
           "TimmBackbone", "UNETRDecoder"]
