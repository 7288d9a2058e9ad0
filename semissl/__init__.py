"""semissl: semi-supervised image learning in JAX/Flax."""
__version__ = "0.1.0"
