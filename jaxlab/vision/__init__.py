"""Vision models. Importing this package registers `mlp`, `vgg` and `resnet` in `MODELS`."""

from jaxlab.vision.models import MLP, VGG, ResNet, vision_config

__all__ = ['MLP', 'VGG', 'ResNet', 'vision_config']
