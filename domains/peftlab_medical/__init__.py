"""peftlab's medical imaging domain: timm backbones, MONAI data, imaging metrics and recipes."""

from peftlab_medical.backbones import MonaiUNETRBackbone, TimmBackbone

__all__ = ["MonaiUNETRBackbone", "TimmBackbone"]
