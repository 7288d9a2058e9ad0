"""semissl.models: flax.linen backbones (ResNet, WRN, ViT) and heads."""

from semissl.models.heads import Classifier
from semissl.models.heads import LinearClassifier
from semissl.models.heads import MLPHead
from semissl.models.heads import ProjectionHead
from semissl.models.registry import BACKBONES
from semissl.models.registry import get_backbone
from semissl.models.resnet import ResNet
from semissl.models.tiny_resnet import TinyResNet
from semissl.models.vit import ViT
from semissl.models.vit import vit_layer_id
from semissl.models.wide_resnet import WideResNet

__all__ = [
    "BACKBONES",
    "Classifier",
    "LinearClassifier",
    "MLPHead",
    "ProjectionHead",
    "ResNet",
    "TinyResNet",
    "ViT",
    "WideResNet",
    "get_backbone",
    "vit_layer_id",
]
