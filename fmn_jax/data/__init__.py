"""Data: re-id dataset readers, decoded-image cache, on-device input pipeline, synthetic data.

    from fmn_jax import data
    ds = data.load_dataset('market1501', '~/data/Market-1501-v15.09.15')
    train_images = data.decode_split(ds.train, (128, 64))     # uint8 [N, 128, 64, 3], memmapped
"""

from fmn_jax.data.cache import decode_split
from fmn_jax.data.datasets import DATASET_NAMES
from fmn_jax.data.datasets import load_dataset
from fmn_jax.data.datasets import ReidDataset
from fmn_jax.data.datasets import Split
from fmn_jax.data.datasets import UnreadableImageError
from fmn_jax.data.input_pipeline import augment
from fmn_jax.data.input_pipeline import EpochSampler
from fmn_jax.data.input_pipeline import eval_batches
from fmn_jax.data.input_pipeline import make_sampler
from fmn_jax.data.input_pipeline import normalize
from fmn_jax.data.input_pipeline import PKSampler
from fmn_jax.data.input_pipeline import preprocess_eval
from fmn_jax.data.loading import load_decoded

__all__ = [
    'DATASET_NAMES', 'EpochSampler', 'PKSampler', 'ReidDataset', 'Split', 'UnreadableImageError',
    'augment', 'decode_split', 'eval_batches', 'load_dataset', 'load_decoded', 'make_sampler',
    'normalize', 'preprocess_eval',
]
