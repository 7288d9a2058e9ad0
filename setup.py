"""semissl: semi-supervised image learning in JAX/Flax."""
import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "chex>=0.1.90",
    "ml-collections>=1.0",
    "clu>=0.0.12",
    "absl-py",
    "numpy",
    # semissl.data (the only TensorFlow user) and clu's metric writers:
    "tensorflow-cpu>=2.18",  # never the GPU build: it breaks JAX's multi-GPU collectives
    "tensorflow-datasets>=4.9.8",
    "importlib_resources",  # tfds 4.9.10 imports it without declaring it
    "tensorboard",  # clu.metric_writers needs it, undeclared by clu
    "pillow",  # image files for experiments/predict.py (semissl.inference.image_files)
]

setuptools.setup(
    name="semissl",
    version="0.1.0",
    description="Semi-supervised image learning (SimCLRv2, SemPPL, SimMatch, Semi-ViT, FixMatch, ...) in JAX/Flax.",
    # `configs`: the shipped experiment configs, so `semissl-train --config=NAME` works
    # without a clone (a config file path works too).
    packages=setuptools.find_packages(include=["semissl", "semissl.*", "configs"]),
    entry_points={"console_scripts": ["semissl-train = semissl.cli:run"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # scikit-learn: the PCA of colabs/quickstart.ipynb, whose cells tests/test_colabs.py runs.
        "test": ["pytest>=8", "pytest-xdist", "matplotlib", "scikit-learn"],
        "plots": ["matplotlib"],  # the PNG plots of experiments/make_results.py
        "notebooks": ["matplotlib", "scikit-learn"],  # colabs/*.ipynb beyond semissl itself
        # Accelerator builds of jax; install one of these on TPU VMs / GPU boxes.
        "tpu": ["jax[tpu]"],
        "gpu": ["jax[cuda12]"],
    },
)
