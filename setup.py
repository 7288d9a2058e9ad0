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

# semissl.convert (experiments/convert_weights.py): torch reads .pth checkpoints,
# safetensors reads and writes .safetensors. The converter maps state dicts by name, so
# torchvision / timm themselves are not needed (install them to use exported weights).
CONVERT_REQUIRES = ["torch", "safetensors"]
# The tests run the converter on .pth files. torch==2.13.0: pip installs its CPU build
# on the project's CI machines (~0.9 GB), where an unpinned torch resolves to a CUDA
# build of ~5.5 GB (elsewhere, install the CPU wheel from PyTorch's CPU index first).
# PyPI's torchvision / timm do not import beside a CPU torch, so the tests compare
# against outputs recorded from them (tests/models/make_convert_goldens.py).
TEST_CONVERT_REQUIRES = ["torch==2.13.0", "safetensors"]

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
        "test": ["pytest>=8", "pytest-xdist>=3.2", "matplotlib", "scikit-learn",
                 *TEST_CONVERT_REQUIRES],
        "convert": CONVERT_REQUIRES,  # torch / timm weights in and out (semissl.convert)
        "plots": ["matplotlib"],  # the PNG plots of experiments/make_results.py
        "notebooks": ["matplotlib", "scikit-learn"],  # colabs/*.ipynb beyond semissl itself
        # Accelerator builds of jax; install one of these on TPU VMs / GPU boxes.
        "tpu": ["jax[tpu]"],
        "gpu": ["jax[cuda12]"],
    },
)
