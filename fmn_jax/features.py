"""Feature extraction: the GRN feature g, the LAN feature l and the FMN descriptor (Eq. 6).

Batches of a fixed size go through one jitted forward pass, sharded over the device mesh like the
training step. With flip-averaging (config.eval.flip) g and l are averaged over the image and its
mirror image before the descriptor D = [alpha g/|g|, (1 - alpha) l/|l|] is formed.
"""

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fmn_jax import data
from fmn_jax import models
from fmn_jax import parallel
from fmn_jax import reporting


def decode_size(config: ml_collections.ConfigDict) -> tuple:
  """(H, W) the evaluation decodes image files to: config.dataset.cache_size (then resized to
  config.input.image_size on the device). The tools decode at this size too, so a file gives them
  the descriptor it gets in evaluation."""
  return tuple(int(s) for s in config.dataset.cache_size)


def make_feature_fn(model: models.FMN, config: ml_collections.ConfigDict, mesh,
                    flip: Optional[bool] = None):
  """jitted (variables, images_uint8 [B, H, W, 3]) -> (g, l, descriptor), float32.

  The jitted function is cached per (model, mesh, preprocessing), so query and gallery share
  one compilation.
  """
  flip = config.eval.flip if flip is None else flip
  return _feature_fn(model, mesh, bool(flip), tuple(config.input.image_size),
                     config.input.normalization, float(config.model.alpha))


@functools.lru_cache(maxsize=16)
def _feature_fn(model, mesh, flip, image_size, normalization, alpha):
  def forward(variables, images):
    x = data.preprocess_eval(images, image_size=image_size, normalization=normalization)
    out = model.apply(variables, x, train=False)
    g, l, desc = out['g'], out['l'], out['descriptor']
    if flip:
      mirrored = model.apply(variables, x[:, :, ::-1], train=False)
      g = 0.5 * (g + mirrored['g'])
      l = 0.5 * (l + mirrored['l'])
      desc = models.descriptor(g, l, alpha)
    return g.astype(jnp.float32), l.astype(jnp.float32), desc.astype(jnp.float32)

  return jax.jit(forward, in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)),
                 out_shardings=parallel.replicated(mesh))


def compute_descriptors(model: models.FMN, variables: Any, images_uint8: np.ndarray,
                        config: ml_collections.ConfigDict, batch_size: Optional[int] = None, *,
                        mesh=None, flip: Optional[bool] = None, progress: Optional[bool] = None,
                        desc: str = 'features') -> dict:
  """Features of every image.

  Args:
    model: the FMN.
    variables: its {'params', 'batch_stats'}.
    images_uint8: uint8 [N, H, W, 3] RGB (any storage size; resized to config.input.image_size).
    config: the run config (input.image_size, input.normalization, model.alpha, eval.flip).
    batch_size: images per forward pass (default config.eval.batch_size), rounded up to a
      multiple of the device count.
    mesh: device mesh (default: all devices).
    flip: override config.eval.flip.
    progress: show a progress bar (default config.progress).
    desc: progress bar label.
  Returns:
    {'g': [N, dg], 'l': [N, dl], 'descriptor': [N, dg + dl]} float32 numpy arrays.
  """
  if not hasattr(images_uint8, 'shape'):
    images_uint8 = np.asarray(images_uint8)
  if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
    raise ValueError(f'images must be uint8 [N, H, W, 3], got shape {images_uint8.shape}')
  mesh = parallel.create_mesh() if mesh is None else mesh
  n_dev = mesh.devices.size
  batch_size = int(batch_size or config.eval.batch_size)
  batch_size = -(-batch_size // n_dev) * n_dev
  fn = make_feature_fn(model, config, mesh, flip)
  variables = parallel.replicate_tree(variables, mesh)
  sharding = parallel.data_sharded(mesh)
  n = images_uint8.shape[0]
  outputs = {'g': [], 'l': [], 'descriptor': []}
  show = config.progress if progress is None else progress
  bar = reporting.progress(total=n, desc=desc, enabled=show and parallel.is_main_process())
  pending = None
  try:
    for idx, valid in data.eval_batches(n, batch_size):
      start = int(idx[0])
      host = np.asarray(images_uint8[start:start + valid])
      if valid < batch_size:
        host = np.concatenate([host, np.zeros((batch_size - valid,) + host.shape[1:], host.dtype)])
      result = fn(variables, parallel.global_array(host, sharding))
      # Fetch the previous batch while this one runs.
      if pending is not None:
        _collect(outputs, *pending)
      pending = (result, valid)
      bar.update(valid)
    if pending is not None:
      _collect(outputs, *pending)
  finally:
    bar.close()
  return {k: np.concatenate(v, axis=0) if v else np.zeros((0, 0), np.float32)
          for k, v in outputs.items()}


def _collect(outputs: dict, result, valid: int) -> None:
  g, l, desc = jax.device_get(result)
  outputs['g'].append(np.asarray(g[:valid]))
  outputs['l'].append(np.asarray(l[:valid]))
  outputs['descriptor'].append(np.asarray(desc[:valid]))


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)

