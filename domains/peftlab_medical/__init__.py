"""peftlab's medical imaging domain: timm backbones, MONAI data, imaging metrics and recipes."""

from peftlab_medical.backbones import MonaiSwinUNETRBackbone, MonaiUNETRBackbone, TimmBackbone

__all__ = ["MonaiSwinUNETRBackbone", "MonaiUNETRBackbone", "TimmBackbone"]
