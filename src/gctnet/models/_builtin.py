"""Imports every module that registers built-in models (kept in one place)."""
from . import cifar_resnet, torchvision_zoo, official, detection, video  # noqa: F401
