"""Image classification: MNIST, Fashion-MNIST or folders of your own images, one label per image."""

from .task import THOUGHTFUL_POOL, ImageTask

__all__ = ["THOUGHTFUL_POOL", "ImageTask"]
