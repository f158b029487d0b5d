"""fmn_jax: the Feature Mask Network (FMN) for person re-identification in JAX/Flax."""

__version__ = "0.1.0"
