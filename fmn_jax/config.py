"""The run configuration: the names it accepts, its validation and its JSON form.

`configs/default.py` defines every key; `validate_config` checks a config before anything runs
and names the first bad key and value. This module imports nothing else of the package: the
choices below are the one definition that the data readers, the input pipeline and the model
check against.
"""

import json
from typing import Any

import ml_collections

STAGES = ('grn', 'fmn', 'eval')
TRAIN_STAGES = ('grn', 'fmn')
# Dataset readers (fmn_jax.data.datasets); 'synthetic' is generated in the Market-1501 layout.
DATASET_NAMES = ('market1501', 'dukemtmc', 'cuhk03_labeled', 'cuhk03_detected', 'msmt17',
                 'folder')
DATASETS = DATASET_NAMES + ('synthetic',)
DTYPES = ('float32', 'bfloat16')
NORMALIZATIONS = ('caffe_bgr', 'imagenet_rgb')
SAMPLERS = ('epoch', 'pk')
OPTIMIZERS = ('sgd', 'adam')
LAN_INITS = ('imagenet', 'grn')
# The GRN maps the mixing network's mask may re-weight (paper Table 5).
MASK_LAYERS = ('pool1', 'res2', 'res3', 'res4')
# 'v1': stride on a block's first 1x1 convolution (MSRA/Caffe/Keras); 'v1.5': on the 3x3.
STRIDE_LAYOUTS = ('v1', 'v1.5')
# Keys whose JSON lists are tuples in the config.
_TUPLE_KEYS = ('dataset.cache_size', 'input.image_size', 'model.stage_sizes', 'grn.decay_epochs',
               'fmn.decay_epochs')


def parse_stages(stages: str) -> tuple:
  """'grn,fmn,eval' -> ('grn', 'fmn', 'eval'); unknown names raise ValueError."""
  names = tuple(s.strip() for s in str(stages).split(',') if s.strip())
  bad = [s for s in names if s not in STAGES]
  if bad or not names:
    raise ValueError(f'config.stages={stages!r}: expected a comma-separated subset of '
                     f'{",".join(STAGES)}, got unknown {bad or "(empty)"}')
  return tuple(s for s in STAGES if s in names)


def _check_choice(key: str, value: Any, choices) -> None:
  if value not in choices:
    raise ValueError(f'config.{key}={value!r} is not one of {", ".join(map(str, choices))}')


def _check_positive(key: str, value: Any, allow_zero: bool = False) -> None:
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
      value >= 0 if allow_zero else value > 0)
  if not ok:
    sign = 'non-negative' if allow_zero else 'positive'
    raise ValueError(f'config.{key}={value!r} must be a {sign} number')


def _check_pair(key: str, value: Any) -> None:
  if (not isinstance(value, (tuple, list)) or len(value) != 2
      or not all(isinstance(v, int) and v > 0 for v in value)):
    raise ValueError(f'config.{key}={value!r} must be a pair of positive ints (H, W)')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key and value of the first bad setting."""
  parse_stages(config.stages)
  _check_choice('dataset.name', config.dataset.name, DATASETS)
  # With a built TFDS dataset (dataset.tfds_dir) the root is not used.
  if (config.dataset.name not in ('synthetic',) and not config.dataset.root
      and not config.dataset.get('tfds_dir')):
    what = ('your dataset' if config.dataset.name == 'folder'
            else f'the {config.dataset.name}')
    raise ValueError(f'config.dataset.root is empty: give {what} folder with '
                     '--config.dataset.root=PATH (or a built TFDS dataset with '
                     '--config.dataset.tfds_dir=PATH)')
  _check_pair('dataset.cache_size', tuple(config.dataset.cache_size))
  _check_pair('input.image_size', tuple(config.input.image_size))
  _check_positive('input.pad', config.input.pad, allow_zero=True)
  _check_choice('input.normalization', config.input.normalization, NORMALIZATIONS)
  _check_choice('input.sampler', config.input.sampler, SAMPLERS)
  _check_choice('input.images_on_device', config.input.images_on_device, ('auto', 'yes', 'no'))
  _check_positive('input.num_instances', config.input.num_instances)
  if not 0.0 <= config.input.random_erasing <= 1.0:
    raise ValueError(f'config.input.random_erasing={config.input.random_erasing!r} must be a '
                     'probability in [0, 1]')
  _check_choice('model.mask_layer', config.model.mask_layer, MASK_LAYERS)
  _check_choice('model.dtype', config.model.dtype, DTYPES)
  _check_choice('model.stride_layout', config.model.stride_layout, STRIDE_LAYOUTS)
  _check_positive('model.width', config.model.width)
  if len(tuple(config.model.stage_sizes)) != 4 or not all(
      isinstance(s, int) and s > 0 for s in config.model.stage_sizes):
    raise ValueError(f'config.model.stage_sizes={config.model.stage_sizes!r} must be 4 positive '
                     'ints (blocks in res2..res5)')
  if not 0.0 <= config.model.alpha <= 1.0:
    raise ValueError(f'config.model.alpha={config.model.alpha!r} must lie in [0, 1]')
  for stage in TRAIN_STAGES:
    c = config[stage]
    for key in ('epochs', 'batch_size'):
      if not isinstance(c[key], int) or c[key] <= 0:
        raise ValueError(f'config.{stage}.{key}={c[key]!r} must be a positive int')
    _check_positive(f'{stage}.lr', c.lr)
    if c.lr_head is not None:
      _check_positive(f'{stage}.lr_head', c.lr_head)
    if c.get('lr_mn') is not None:
      _check_positive(f'{stage}.lr_mn', c.lr_mn)
    _check_positive(f'{stage}.momentum', c.momentum, allow_zero=True)
    _check_positive(f'{stage}.weight_decay', c.weight_decay, allow_zero=True)
    _check_positive(f'{stage}.decay_factor', c.decay_factor)
    _check_choice(f'{stage}.optimizer', c.optimizer, OPTIMIZERS)
    _check_positive(f'{stage}.warmup_epochs', c.warmup_epochs, allow_zero=True)
    if isinstance(c.decay_epochs, (int, float)) or any(
        not isinstance(e, (int, float)) or e < 0 for e in c.decay_epochs):
      raise ValueError(f'config.{stage}.decay_epochs={c.decay_epochs!r} must be a tuple of '
                       'epochs, e.g. (20,)')
  _check_choice('fmn.lan_init', config.fmn.lan_init, LAN_INITS)
  _check_positive('fmn.margin', config.fmn.margin, allow_zero=True)
  _check_positive('fmn.rank_weight', config.fmn.rank_weight, allow_zero=True)
  _check_positive('eval.batch_size', config.eval.batch_size)
  max_rank = config.eval.get('max_rank', 50)
  # The CMC is reported at ranks 1, 5, 10 and 20, so it must reach rank 20.
  if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 20:
    raise ValueError(f'config.eval.max_rank={max_rank!r} must be an integer >= 20')
  _check_positive('checkpoint.every_steps', config.checkpoint.every_steps)
  _check_positive('checkpoint.keep', config.checkpoint.keep)
  _check_positive('log_every_steps', config.log_every_steps)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """A JSON-serialisable copy of the config."""
  return json.loads(config.to_json_best_effort())


def config_from_dict(d: dict) -> ml_collections.ConfigDict:
  """Inverse of `config_to_dict` (pairs and stage sizes back to tuples)."""
  config = ml_collections.ConfigDict(d)
  for key in _TUPLE_KEYS:
    section, name = key.split('.')
    if section in config and name in config[section] and config[section][name] is not None:
      config[section][name] = tuple(config[section][name])
  return config


def get_key(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def set_key(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  *sections, name = key.split('.')
  node = config
  for section in sections:
    node = node[section]
  node[name] = value
