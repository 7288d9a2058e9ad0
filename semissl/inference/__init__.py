"""semissl.inference: a trained workdir as a model (`load`), and image files for it.

  model = semissl.load("/tmp/fixmatch")          # or semissl.inference.load
  probabilities = model.predict(images)          # uint8 [N, H, W, C] -> [N, K]
  features = model.features(images)              # [N, D] encoder output

TensorFlow-free: only the workdir (config.json, model_info.json, checkpoints) is read.
"""
from semissl.inference.image_files import find_images, read_image, read_images
from semissl.inference.loading import Model, headline_weights, load, read_config

__all__ = ["Model", "find_images", "headline_weights", "load", "read_config", "read_image",
           "read_images"]
