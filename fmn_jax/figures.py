"""Figures from plain arrays, as PNG: ranked lists and the paper's Fig. 4 style attention maps.

`ranked_list_figure` draws query rows with their ranked gallery images (true matches framed
green, false red, grey without ground truth); `attention_figure` overlays heat maps on images;
the array helpers (`add_frame`, `normalize_map`, `upsample`, `channel_mean`, `colorize`,
`overlay`) prepare what they show. Rendering uses matplotlib's Agg backend (no display needed).
`fmn_jax.visualize` computes the figures' inputs from a trained workdir.
"""

import os
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

TRUE_COLOR = (0, 170, 0)
FALSE_COLOR = (220, 0, 0)
NEUTRAL_COLOR = (150, 150, 150)
QUERY_COLOR = (40, 90, 220)


def _plt():
  """pyplot on the Agg backend (set before the first pyplot import; no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  if 'matplotlib.pyplot' not in sys.modules:
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
      axes[0, j].set_title(wrap_name(str(names[j]), 12), fontsize=6)
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


def wrap_name(name: str, width: int = 12) -> str:
  """A name on at most two lines of ``width`` characters (its end kept when longer)."""
  if len(name) > 2 * width:
    name = '…' + name[-(2 * width - 1):]
  return name if len(name) <= width else name[:width] + '\n' + name[width:]
