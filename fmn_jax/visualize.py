"""Figures after training: ranked lists and the paper's Fig. 4 style attention maps, as PNG.

    # Ranked lists of the evaluation (query + top-k, true matches framed green, false red):
    python -m fmn_jax.visualize ranked --workdir=DIR --order=worst --num=8 --out=ranked.png
    # MN mask and GRN/LAN activation heat maps over images (the query split when --images is unset):
    python -m fmn_jax.visualize attention --workdir=DIR --images=FOLDER --out=attn.png

The drawing functions take plain arrays (`ranked_list_figure`, `attention_figure`), so they also
serve results computed elsewhere; `ranked_lists` and `attention_maps` compute what they show from a
trained workdir. Rendering uses matplotlib's Agg backend (no display needed).
"""

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

ORDERS = ('worst', 'best', 'random')
_ORDER_TEXT = {
    'worst': 'with the worst AP (lowest first)',
    'best': 'with the best AP (highest first)',
    'random': 'chosen at random',
}
TRUE_COLOR = (0, 170, 0)
FALSE_COLOR = (220, 0, 0)
NEUTRAL_COLOR = (150, 150, 150)
QUERY_COLOR = (40, 90, 220)


def _plt():
  """pyplot on the Agg backend (set before the first pyplot import; no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  if 'matplotlib.pyplot' not in __import__('sys').modules:
    matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


# ----------------------------------------------------------------------------------------------
# Array helpers.


def add_frame(image: np.ndarray, color: Sequence[int], width: int = 3) -> np.ndarray:
  """Returns ``image`` (uint8 [H, W, 3]) with a solid ``color`` border ``width`` pixels wide."""
  image = np.asarray(image)
  h, w = image.shape[:2]
  out = np.empty((h + 2 * width, w + 2 * width, 3), np.uint8)
  out[...] = np.asarray(color, np.uint8)
  out[width:width + h, width:width + w] = image
  return out


def normalize_map(heat: np.ndarray) -> np.ndarray:
  """Min-max scales one map to [0, 1] (a constant map becomes zeros)."""
  heat = np.asarray(heat, np.float64)
  lo, hi = float(np.min(heat)), float(np.max(heat))
  if not np.isfinite(lo) or not np.isfinite(hi):
    raise ValueError('heat map has non-finite values')
  if hi - lo < 1e-12:
    return np.zeros_like(heat, np.float32)
  return ((heat - lo) / (hi - lo)).astype(np.float32)


def upsample(heat: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """Bilinearly resizes a [h, w] map to ``size=(H, W)`` (half-pixel centres, like jax.image)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  heat = np.asarray(heat, np.float32)
  if heat.ndim != 2:
    raise ValueError(f'expected a [h, w] map, got shape {heat.shape}')
  h, w = int(size[0]), int(size[1])
  return np.asarray(Image.fromarray(heat, mode='F').resize((w, h), Image.BILINEAR), np.float32)


def channel_mean(feature_maps: np.ndarray) -> np.ndarray:
  """Activation heat map of conv features: the mean over channels, [B, h, w, C] -> [B, h, w]."""
  feature_maps = np.asarray(feature_maps, np.float32)
  if feature_maps.ndim != 4:
    raise ValueError(f'expected feature maps [B, h, w, C], got shape {feature_maps.shape}')
  return feature_maps.mean(axis=-1)


def colorize(heat01: np.ndarray, cmap: str = 'jet') -> np.ndarray:
  """Maps a [H, W] array in [0, 1] to uint8 RGB with a matplotlib colormap."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  rgba = matplotlib.colormaps[cmap](np.clip(heat01, 0.0, 1.0))
  return (rgba[..., :3] * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = 'jet'
            ) -> np.ndarray:
  """Upsamples ``heat`` ([h, w], any range) onto ``image`` (uint8 [H, W, 3]) as a colour overlay.

  The map is min-max normalised per image (as heat maps in the paper's Fig. 4 are), upsampled
  bilinearly to the image size and blended: ``(1 - alpha) * image + alpha * colormap(heat)``.
  """
  image = np.asarray(image)
  up = normalize_map(upsample(heat, image.shape[:2]))
  blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(up, cmap).astype(np.float32)
  return np.clip(blend, 0, 255).round().astype(np.uint8)


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
# Figures from arrays.


def ranked_list_figure(query_images: Sequence[np.ndarray],
                       gallery_images: Sequence[Sequence[np.ndarray]],
                       matches: Optional[np.ndarray] = None,
                       *,
                       title: str = '',
                       query_labels: Optional[Sequence[str]] = None,
                       gallery_labels: Optional[Sequence[Sequence[str]]] = None,
                       frame_width: int = 3,
                       cell_inches: float = 0.95):
  """Draws one row per query: the query (blue frame) then its ranked gallery images.

  Args:
    query_images: Q uint8 [H, W, 3] images.
    gallery_images: Q sequences of the top-k uint8 images (k may differ per row).
    matches: optional [Q, k] booleans: True frames the image green (true match), False red.
      ``None`` (no ground truth, e.g. search on own images) frames them grey.
    title: the figure title (say how queries were ordered).
    query_labels / gallery_labels: text under each image (e.g. name and AP; rank and distance).
  Returns:
    A matplotlib Figure (save with ``save_figure``).
  """
  plt = _plt()
  nq = len(query_images)
  if nq == 0:
    raise ValueError('ranked_list_figure: no queries to draw')
  if len(gallery_images) != nq:
    raise ValueError(f'{nq} query images but {len(gallery_images)} gallery rows')
  k = max(len(r) for r in gallery_images)
  h, w = np.asarray(query_images[0]).shape[:2]
  aspect = h / max(w, 1)
  cell_w = cell_inches
  cell_h = cell_inches * aspect + 0.45
  fig_w = cell_w * (k + 1) + 0.3 + 0.15 * (k + 1)
  fig_h = cell_h * nq + 0.9
  fig, axes = plt.subplots(nq, k + 2, figsize=(fig_w, fig_h), squeeze=False,
                           layout='constrained',
                           gridspec_kw=dict(width_ratios=[1, 0.15] + [1] * k))
  fig.get_layout_engine().set(w_pad=0.02, h_pad=0.04, wspace=0.0, hspace=0.02)
  for i in range(nq):
    ax = axes[i, 0]
    ax.imshow(add_frame(query_images[i], QUERY_COLOR, frame_width), interpolation='bilinear')
    ax.set_xlabel(query_labels[i] if query_labels is not None else 'query', fontsize=7)
    axes[i, 1].axis('off')
    for j in range(k):
      ax = axes[i, j + 2]
      if j >= len(gallery_images[i]):
        ax.axis('off')
        continue
      if matches is None:
        color = NEUTRAL_COLOR
      else:
        color = TRUE_COLOR if bool(matches[i][j]) else FALSE_COLOR
      ax.imshow(add_frame(gallery_images[i][j], color, frame_width), interpolation='bilinear')
      if gallery_labels is not None:
        ax.set_xlabel(gallery_labels[i][j], fontsize=7)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
      spine.set_visible(False)
  axes[0, 0].set_title('query', fontsize=9)
  for j in range(k):
    axes[0, j + 2].set_title(f'#{j + 1}', fontsize=9)
  legend = ('frames: green = true match, red = false match' if matches is not None else
            'ranked by distance (no ground truth)')
  fig.suptitle(f'{title}\n{legend}' if title else legend, fontsize=10)
  return fig


def attention_figure(images: np.ndarray, maps: Dict[str, np.ndarray], *,
                     names: Optional[Sequence[str]] = None, title: str = '',
                     alpha: float = 0.5, cell_inches: float = 1.0, show_range: bool = True):
  """Paper Fig. 4 style: each column an image; rows the image and each map overlaid on it.

  Args:
    images: uint8 [N, H, W, 3].
    maps: row label -> [N, h, w] maps (any resolution and range; each is min-max normalised per
      image and bilinearly upsampled), e.g. {'MN mask': ..., 'GRN': ..., 'LAN': ...}.
    names: optional column labels (file names).
    show_range: print each map's value range (min-max) under its overlay, since the colours are
      normalised per image (a nearly constant map would otherwise look strongly peaked).
  Returns:
    A matplotlib Figure.
  """
  plt = _plt()
  images = np.asarray(images)
  n = images.shape[0]
  for label, m in maps.items():
    if np.asarray(m).shape[0] != n:
      raise ValueError(f'map {label!r} has {np.asarray(m).shape[0]} entries for {n} images')
  rows = ['image'] + list(maps)
  aspect = images.shape[1] / max(images.shape[2], 1)
  fig, axes = plt.subplots(len(rows), n, squeeze=False,
                           figsize=(cell_inches * n + 1.0,
                                    (cell_inches * aspect + (0.25 if show_range else 0.05))
                                    * len(rows) + 1.0),
                           layout='constrained')
  fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.0, hspace=0.0)
  for j in range(n):
    axes[0, j].imshow(images[j], interpolation='bilinear')
    if names is not None:
      axes[0, j].set_title(_wrap_name(str(names[j]), 12), fontsize=6)
    for r, (label, m) in enumerate(maps.items(), start=1):
      mj = np.asarray(m)[j]
      axes[r, j].imshow(overlay(images[j], mj, alpha=alpha), interpolation='bilinear')
      if show_range:
        axes[r, j].set_xlabel(f'{float(np.min(mj)):.3g}–{float(np.max(mj)):.3g}', fontsize=6,
                              labelpad=1)
  for r, label in enumerate(rows):
    axes[r, 0].set_ylabel(label, fontsize=8)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def save_figure(fig, path: str, dpi: int = 110) -> str:
  """Writes ``fig`` as PNG (parent folders created) and closes it; returns the path."""
  plt = _plt()
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  fig.savefig(path, dpi=dpi, bbox_inches='tight', facecolor='white')
  plt.close(fig)
  return path


# ----------------------------------------------------------------------------------------------
# From a trained workdir.

METHODS = ('GRN', 'LAN', 'FMN', 'FMN+rerank')


def _restore(workdir: str):
  from fmn_jax import extract  # pylint: disable=g-import-not-at-top
  return extract.restore(workdir)


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
  return _wrap_name(os.path.basename(path), width)


def _wrap_name(name: str, width: int = 12) -> str:
  """A name on at most two lines of ``width`` characters (its end kept when longer)."""
  if len(name) > 2 * width:
    name = '…' + name[-(2 * width - 1):]
  return name if len(name) <= width else name[:width] + '\n' + name[width:]


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
  from absl import flags  # pylint: disable=g-import-not-at-top
  from fmn_jax import extract  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ('ranked', 'attention'):
    raise ValueError('usage: python -m fmn_jax.visualize {ranked|attention} --workdir=DIR '
                     f'[--out=FILE.png] ...; got arguments {argv[1:]}')
  workdir = extract.expand_path(f.workdir)
  images = extract.expand_paths(f.images) or None
  restored = extract.restore_from_flags()
  if argv[1] == 'ranked':
    out = extract.expand_path(f.out) or os.path.join(workdir, f'ranked_{f.method}_{f.order}.png')
    path = ranked_lists(workdir, order=f.order, num=f.num, top=f.top, method=f.method,
                        seed=f.seed, out=out, restored=restored)
  else:
    out = extract.expand_path(f.out) or os.path.join(workdir, 'attention.png')
    path = attention(workdir, images, num=f.num, out=out, skip_unreadable=f.skip_unreadable,
                     restored=restored)
  print(f'wrote {path}')


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from fmn_jax import extract  # pylint: disable=g-import-not-at-top
  extract.define_workdir_flags()
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
  from fmn_jax import extract as _extract  # pylint: disable=g-import-not-at-top
  _extract.run_cli(main, _define_flags)
