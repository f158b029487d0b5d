"""fmn_jax: the Feature Mask Network for person re-identification in JAX/Flax."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.4.35",
    "flax>=0.10.0",
    "optax>=0.2.3",
    "orbax-checkpoint>=0.6.0",
    "numpy>=1.26",
    "ml-collections>=0.1.1",
    "clu>=0.0.12",
    "pillow>=10.0",
    "absl-py>=1.4",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    # jax.export serialisation (fmn_jax.export) needs it; jax does not install it.
    "flatbuffers>=24.3.25",
]

EXTRAS_REQUIRE = {
    # TFDS builders for the re-id datasets; building and reading both work without TensorFlow.
    "tfds": ["tensorflow-datasets>=4.9.10"],
    # Readers for other weight formats (Keras .h5, torchvision .pth/.safetensors).
    "weights": ["h5py>=3.8", "safetensors>=0.4"],
    # TensorBoard event files of the training runs (written without TensorFlow).
    "tensorboard": ["tensorboard>=2.15"],
    "test": [
        "pytest>=7.4",
        "scikit-image>=0.21",
        "h5py>=3.8",
        "safetensors>=0.4",
        "nbclient>=0.9",
        "nbformat>=5.9",
        "ipykernel>=6.0",
        "tensorboard>=2.15",
    ],
}

setup(
    name="fmn_jax",
    version="0.1.0",
    description="Feature Mask Network (FMN) for person re-identification in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fmn_jax", "fmn_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)
