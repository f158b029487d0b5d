"""Figures after training: ranked lists and the paper's Fig. 4 style attention maps, as PNG.

    # Ranked lists of the evaluation (query + top-k, true matches framed green, false red):
    python -m fmn_jax.visualize ranked --workdir=DIR --order=worst --num=8 --out=ranked.png
    # MN mask and GRN/LAN activation heat maps over images (the query split when --images is unset):
    python -m fmn_jax.visualize attention --workdir=DIR --images=FOLDER --out=attn.png

`ranked_lists` and `attention_maps` compute what they show from a trained workdir. The drawing
functions, which take plain arrays (`ranked_list_figure`, `attention_figure`, `save_figure`, the
colours and array helpers), live in `fmn_jax.figures` and are importable from here too.
"""

import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
from fmn_jax import cpu

from fmn_jax import reporting
from fmn_jax import tool_flags
# The drawing API of this module (see the docstring).
from fmn_jax.figures import (  # pylint: disable=unused-import
    FALSE_COLOR, NEUTRAL_COLOR, QUERY_COLOR, TRUE_COLOR, add_frame, attention_figure,
    channel_mean, colorize, normalize_map, overlay, ranked_list_figure, save_figure, upsample,
    wrap_name)

ORDERS = ('worst', 'best', 'random')
_ORDER_TEXT = {
    'worst': 'with the worst AP (lowest first)',
    'best': 'with the best AP (highest first)',
    'random': 'chosen at random',
}


def select_queries(ap_per_query: np.ndarray, order: str, num: int, seed: int = 0) -> np.ndarray:
  """Indices of ``num`` queries ordered by ``order``: 'worst' / 'best' AP first, or 'random'.

  Queries whose AP is NaN (no true match in the gallery: skipped by the evaluation) are left out.
  """
  if order not in ORDERS:
    raise ValueError(f'order must be one of {ORDERS}, got {order!r}')
  ap = np.asarray(ap_per_query, np.float64)
  valid = np.flatnonzero(np.isfinite(ap))
  if valid.size == 0:
    raise ValueError('no query has a valid AP (no true match in the gallery for any query)')
  num = min(int(num), valid.size)
  if order == 'random':
    return np.random.default_rng(seed).choice(valid, size=num, replace=False)
  # Stable sort; ties keep the query order, so the figure is reproducible.
  by_ap = valid[np.argsort(ap[valid], kind='stable')]
  return by_ap[:num] if order == 'worst' else by_ap[::-1][:num]


def ranked_list_title(method: str, order: str, num: int, top: int) -> str:
  """The figure title, which states the query ordering."""
  if order not in ORDERS:
    raise ValueError(f'order must be one of {ORDERS}, got {order!r}')
  return f'{method} ranked lists: {num} queries {_ORDER_TEXT[order]}, top-{top} each'


# ----------------------------------------------------------------------------------------------
# From a trained workdir.

METHODS = reporting.METHODS


def _restore(workdir: str):
  return tool_flags.restore(workdir)


def evaluation_ranking(workdir: str, method: str = 'FMN', *, restored=None,
                       progress: Optional[bool] = None) -> Dict[str, Any]:
  """Distances and per-query AP of a trained run on its own query/gallery splits.

  Features are those of evaluation (``features.compute_descriptors``, flip-averaging per config);
  'GRN' and 'LAN' rank the L2-normalised g and l, 'FMN' the Eq. 6 descriptor, 'FMN+rerank' its
  k-reciprocal re-ranked distance (``config.eval.k1/k2/lambda_value``), as ``fmn_jax.evaluate``.

  Returns:
    {'distmat' [Q, G], 'ap' [Q] (NaN: no true match), 'query', 'gallery' (data.Split),
     'query_images', 'gallery_images' (uint8 at config.dataset.cache_size), 'method', 'mAP'}.
  """
  # pylint: disable=g-import-not-at-top
  from fmn_jax import features
  from fmn_jax import metrics
  from fmn_jax.data import loading
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}')
  model, variables, config = restored if restored is not None else _restore(workdir)
  dataset = loading.load_reid_dataset(config, os.path.abspath(os.path.expanduser(workdir)))
  q_imgs = loading.decode(config, dataset.query)
  g_imgs = loading.decode(config, dataset.gallery)
  # One pass over query + gallery (one compilation).
  out = features.compute_descriptors(model, variables, np.concatenate([q_imgs, g_imgs]), config,
                                     progress=progress, desc='features')
  nq = q_imgs.shape[0]
  if method == 'FMN+rerank':
    from fmn_jax import rerank  # pylint: disable=g-import-not-at-top
    d = out['descriptor']
    distmat = rerank.rerank_features(d[:nq], d[nq:], k1=config.eval.k1, k2=config.eval.k2,
                                     lambda_value=config.eval.lambda_value)
  else:
    key = {'GRN': 'g', 'LAN': 'l', 'FMN': 'descriptor'}[method]
    feats = out[key] if key == 'descriptor' else features.l2_normalize(out[key])
    distmat = metrics.pairwise_distances(feats[:nq], feats[nq:])
  distmat = np.asarray(distmat)
  ev = metrics.evaluate_ranking(distmat, dataset.query.pids, dataset.gallery.pids,
                                dataset.query.camids, dataset.gallery.camids)
  return {'distmat': distmat, 'ap': np.asarray(ev['ap_per_query']), 'mAP': float(ev['mAP']),
          'query': dataset.query, 'gallery': dataset.gallery, 'query_images': q_imgs,
          'gallery_images': g_imgs, 'method': method}


def ranked_row(distmat_row: np.ndarray, q_pid: int, q_camid: int, g_pids: np.ndarray,
               g_camids: np.ndarray, top: int, g_junk: Optional[np.ndarray] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
  """Top gallery indices for one query under the evaluation protocol, and their match flags.

  Gallery items with the query's pid and camera, and junk items (pid -1), are left out as in
  the evaluation; ties keep gallery order.
  """
  g_pids = np.asarray(g_pids)
  g_camids = np.asarray(g_camids)
  junk = (g_pids == -1) if g_junk is None else (np.asarray(g_junk, bool) | (g_pids == -1))
  keep = ~(((g_pids == q_pid) & (g_camids == q_camid)) | junk)
  idx = np.flatnonzero(keep)
  order = idx[np.argsort(np.asarray(distmat_row)[idx], kind='stable')][:top]
  return order, g_pids[order] == q_pid


def ranked_lists(workdir: str, *, order: str = 'worst', num: int = 8, top: int = 10,
                 method: str = 'FMN', seed: int = 0, out: Optional[str] = None,
                 restored=None, ranking: Optional[Dict[str, Any]] = None):
  """Ranked-list figure of a trained run: ``num`` queries chosen by ``order``, top-``top`` each.

  Returns the Figure, or writes a PNG to ``out`` and returns its path.
  """
  r = ranking if ranking is not None else evaluation_ranking(workdir, method, restored=restored)
  chosen = select_queries(r['ap'], order, num, seed)
  q, g = r['query'], r['gallery']
  q_rows, g_rows, flags, q_labels, g_labels = [], [], [], [], []
  for i in chosen:
    idx, match = ranked_row(r['distmat'][i], q.pids[i], q.camids[i], g.pids, g.camids, top,
                            getattr(g, 'junk', None))
    q_rows.append(r['query_images'][i])
    g_rows.append([r['gallery_images'][j] for j in idx])
    flags.append(match)
    q_labels.append(f'{_base(q.paths[i])}\nAP {100 * r["ap"][i]:.1f}%')
    g_labels.append([f'{_base(g.paths[j])}\nd={r["distmat"][i, j]:.3f}' for j in idx])
  title = (ranked_list_title(r['method'], order, len(chosen), top)
           + f' (mAP {100 * r["mAP"]:.1f}%)')
  width = max(len(m) for m in flags)
  matches = np.zeros((len(flags), width), bool)
  for k, m in enumerate(flags):
    matches[k, :len(m)] = m
  fig = ranked_list_figure(q_rows, g_rows, matches, title=title, query_labels=q_labels,
                           gallery_labels=g_labels)
  return save_figure(fig, out) if out else fig


def _base(path: str, width: int = 12) -> str:
  return wrap_name(os.path.basename(path), width)


def attention_maps(model, variables, images_uint8: np.ndarray, config,
                   batch_size: int = 32) -> Dict[str, np.ndarray]:
  """The MN mask and the GRN / LAN activation heat maps of a batch of images.

  Heat maps are the channel mean of the last convolutional maps (res5 output) of the GRN and of
  the LAN, as in the paper's Fig. 4; the mask is MN's output at ``config.model.mask_layer``.

  Args:
    model, variables, config: from ``fmn_jax.workdir.restore_model``.
    images_uint8: uint8 [N, H, W, 3] RGB (resized to ``config.input.image_size`` as in
      evaluation).
  Returns:
    {'mask': [N, hm, wm], 'grn': [N, h5, w5], 'lan': [N, h5, w5]} float32 numpy arrays.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from fmn_jax import data
  from fmn_jax import models
  last = models.STAGE_NAMES[-1]
  image_size = tuple(int(s) for s in config.input.image_size)
  normalization = config.input.normalization

  def only_last_stage(mdl, method_name):
    return method_name == '__call__' and mdl.name == last

  @jax.jit
  def forward(v, imgs):
    x = data.preprocess_eval(imgs, image_size=image_size, normalization=normalization)
    out, state = model.apply(v, x, train=False, capture_intermediates=only_last_stage,
                             mutable=['intermediates'])
    inter = state['intermediates']
    grn = inter['grn'][last]['__call__'][0]
    lan = inter['lan'][last]['__call__'][0]
    return {'mask': out['mask'].astype(jnp.float32),
            'grn': jnp.mean(grn.astype(jnp.float32), axis=-1),
            'lan': jnp.mean(lan.astype(jnp.float32), axis=-1)}

  images_uint8 = np.asarray(images_uint8)
  n = images_uint8.shape[0]
  if n == 0:
    raise ValueError('attention_maps: no images')
  outs = []
  for start in range(0, n, batch_size):
    chunk = images_uint8[start:start + batch_size]
    k = chunk.shape[0]
    if n > batch_size and k < batch_size:  # Same shape as the other batches: one compilation.
      chunk = np.concatenate([chunk, np.zeros((batch_size - k,) + chunk.shape[1:], np.uint8)])
    res = jax.device_get(forward(variables, chunk))
    outs.append({key: np.asarray(val)[:k] for key, val in res.items()})
  return {key: np.concatenate([o[key] for o in outs]) for key in outs[0]}


def attention(workdir: str, images=None, *, num: int = 8, out: Optional[str] = None,
              skip_unreadable: bool = False, restored=None):
  """Fig. 4 style attention figure of a trained run over ``images`` (files or a uint8 batch).

  Without ``images``, ``num`` query images of the run's dataset are used (evenly spaced).
  Returns the Figure, or writes a PNG to ``out`` and returns its path.
  """
  from fmn_jax import images as images_lib  # pylint: disable=g-import-not-at-top
  from fmn_jax import features  # pylint: disable=g-import-not-at-top
  model, variables, config = restored if restored is not None else _restore(workdir)
  size = features.decode_size(config)
  if images is None:
    from fmn_jax.data import loading  # pylint: disable=g-import-not-at-top
    dataset = loading.load_reid_dataset(config, os.path.abspath(os.path.expanduser(workdir)))
    n = len(dataset.query.paths)
    pick = np.unique(np.linspace(0, n - 1, min(num, n)).round().astype(int))
    paths = [dataset.query.paths[i] for i in pick]
    names = [os.path.basename(p) for p in paths]
    batch, _, _ = images_lib.load_images(paths, size)
  elif isinstance(images, (str, os.PathLike, list, tuple)) and all(
      isinstance(p, (str, os.PathLike))
      for p in ([images] if isinstance(images, (str, os.PathLike)) else images)):
    paths, names = images_lib.list_images(images)
    paths, names = paths[:num], names[:num]
    batch, kept, _ = images_lib.load_images(paths, size, skip_unreadable=skip_unreadable)
    names = [names[i] for i in kept]
    if not kept:
      raise ValueError(f'no readable image in {images!r}')
  else:
    batch = images_lib.as_uint8_batch(images, size)
    names = None
  maps = attention_maps(model, variables, batch, config)
  layer = config.model.mask_layer
  hm, wm = maps['mask'].shape[1:]
  h5, w5 = maps['grn'].shape[1:]
  fig = attention_figure(
      batch,
      {f'MN mask\n({layer}, {hm}x{wm})': maps['mask'],
       f'GRN heat\n(res5, {h5}x{w5})': maps['grn'],
       f'LAN heat\n(res5, {h5}x{w5})': maps['lan']},
      names=names,
      title='FMN attention\nmixing-network mask, GRN / LAN heat maps')
  return save_figure(fig, out) if out else fig


# ----------------------------------------------------------------------------------------------
# Command line.


def main(argv):
  cpu.configure()
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ('ranked', 'attention'):
    raise ValueError('usage: python -m fmn_jax.visualize {ranked|attention} --workdir=DIR '
                     f'[--out=FILE.png] ...; got arguments {argv[1:]}')
  workdir = tool_flags.expand_path(f.workdir)
  images = tool_flags.expand_paths(f.images) or None
  restored = tool_flags.restore_from_flags()
  if argv[1] == 'ranked':
    out = tool_flags.expand_path(f.out) or os.path.join(workdir, f'ranked_{f.method}_{f.order}.png')
    path = ranked_lists(workdir, order=f.order, num=f.num, top=f.top, method=f.method,
                        seed=f.seed, out=out, restored=restored)
  else:
    out = tool_flags.expand_path(f.out) or os.path.join(workdir, 'attention.png')
    path = attention(workdir, images, num=f.num, out=out, skip_unreadable=f.skip_unreadable,
                     restored=restored)
  print(f'wrote {path}')


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  tool_flags.define_workdir_flags()
  flags.DEFINE_string('out', '', 'Output PNG (default DIR/ranked_<method>_<order>.png or '
                      'DIR/attention.png).')
  flags.DEFINE_enum('order', 'worst', ORDERS, 'ranked: which queries, by AP.')
  flags.DEFINE_integer('num', 8, 'Number of queries (ranked) or images (attention).')
  flags.DEFINE_integer('top', 10, 'ranked: gallery images per query.')
  flags.DEFINE_enum('method', 'FMN', METHODS, 'ranked: which features rank the gallery.')
  flags.DEFINE_integer('seed', 0, 'ranked: seed of --order=random.')
  flags.DEFINE_string('images', '', 'attention: folder, image, .txt list or comma-separated '
                      'list (default: query images of the run).')
  flags.DEFINE_bool('skip_unreadable', False, 'attention: skip unreadable image files.')


if __name__ == '__main__':
  tool_flags.run_cli(main, _define_flags)
