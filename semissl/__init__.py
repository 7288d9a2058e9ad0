"""semissl: semi-supervised image learning in JAX/Flax.

`semissl.load(workdir)` returns a trained run's model (`predict(images)`,
`features(images)`; semissl/inference). `import semissl` stays light: jax and the
rest load on first use of `load`.
"""
__version__ = "0.1.0"
__all__ = ["load"]


def __getattr__(name):
  if name == "load":
    from semissl.inference import load  # lazy: imports jax, flax, orbax
    return load
  raise AttributeError(f"module 'semissl' has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), "load"])
