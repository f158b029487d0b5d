"""Synthetic pedestrians in the Market-1501 layout (the embedded demo dataset; no download).

Each identity has fixed appearance attributes: build, skin, hair, top (colour, pattern, sleeves,
chest logo), bottom (trousers, shorts or skirt), shoes, and maybe a bag (backpack, shoulder bag or
handbag), plus a hat. Each camera has its own background (wall/floor colours and texture),
illumination, colour cast, blur, noise, person scale and position. Each image adds a view (front,
back, left or right side), a walking phase, small colour and position jitter, and sometimes an
occluder (a pole, a car-like block, a passer-by, a sign). Identities are told apart by their
clothes, which the cameras' colour casts and lighting distort: learnable, not trivial.

Written as root/{bounding_box_train, bounding_box_test, query}/PPPP_cCsS_FFFFFF_BB.jpg, so the
real Market-1501 reader is exercised. Test identities have one query per camera they appear in
(except one camera, seen only in the gallery); the gallery also holds junk (pid -1: fragments of
test identities) and distractors (pid 0000: background clutter or unrelated people).

Deterministic: the same arguments give the same bytes. The arguments are recorded in
root/fmn_jax_synthetic.json (written first, marked complete last), so a folder is only ever
written by one set of them: the same dataset is reused, an interrupted one is finished, and a
folder holding anything else (another synthetic dataset, other files) is refused. Command line:
    python -m fmn_jax.data.synthetic --out=/tmp/synthetic_market [--seed=0]
"""

import argparse
import colorsys
import json
import os
import sys
import time
from typing import Optional

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter

SUPERSAMPLE = 2  # Drawn at this multiple of the output size, then downsampled (antialiasing).
JPEG_QUALITY = 90
# Records the generation arguments in the dataset folder (see the module docstring).
MARKER = 'fmn_jax_synthetic.json'
SPLIT_FOLDERS = ('bounding_box_train', 'query', 'bounding_box_test')

_SKIN = ((255, 220, 190), (240, 200, 160), (225, 175, 135), (200, 150, 110), (160, 110, 75),
         (120, 80, 55), (90, 60, 40))
_HAIR = ((20, 15, 10), (45, 30, 20), (90, 60, 30), (150, 110, 60), (210, 180, 110),
         (130, 130, 130), (120, 40, 20))
_DARK = ((25, 25, 30), (40, 45, 60), (60, 60, 60), (35, 50, 90), (90, 80, 60), (110, 110, 115))


def _rand_colour(rng: np.random.Generator, dark_bias: float = 0.0) -> np.ndarray:
  """A clothing colour: mostly saturated hues, sometimes greys/dark colours."""
  r = rng.random()
  if r < 0.18 + dark_bias:
    base = np.array(_DARK[rng.integers(len(_DARK))], float)
    return np.clip(base + rng.normal(0, 8, 3), 0, 255)
  if r < 0.28 + dark_bias:
    v = rng.uniform(150, 245)
    return np.clip(np.full(3, v) + rng.normal(0, 6, 3), 0, 255)
  h = rng.random()
  s = rng.uniform(0.35, 0.95)
  v = rng.uniform(0.35, 0.95)
  return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255


def _identity(rng: np.random.Generator) -> dict:
  """Appearance attributes of one identity."""
  a = {
      'height': rng.uniform(0.9, 1.04),
      'width': rng.uniform(0.85, 1.2),
      'skin': np.array(_SKIN[rng.integers(len(_SKIN))], float),
      'hair': np.array(_HAIR[rng.integers(len(_HAIR))], float),
      'hair_style': rng.choice(['short', 'long', 'bun']),
      'hat': rng.random() < 0.15,
      'hat_colour': _rand_colour(rng),
      'top': _rand_colour(rng),
      'top2': _rand_colour(rng),
      'pattern': rng.choice(['solid', 'solid', 'hstripes', 'vstripes', 'check', 'split',
                             'logo']),
      'stripe': rng.uniform(0.035, 0.08),
      'sleeves': rng.choice(['long', 'short']),
      'jacket': rng.random() < 0.2,
      'bottom': _rand_colour(rng, dark_bias=0.3),
      'bottom_type': rng.choice(['trousers', 'trousers', 'trousers', 'shorts', 'skirt']),
      'shoes': _rand_colour(rng, dark_bias=0.4),
      'bag': rng.choice(['none', 'none', 'backpack', 'shoulder', 'handbag']),
      'bag_colour': _rand_colour(rng, dark_bias=0.2),
      'bag_side': rng.choice([-1, 1]),
  }
  return a


def _camera(rng: np.random.Generator) -> dict:
  """Nuisance parameters of one camera."""
  return {
      'wall': _rand_colour(rng) * rng.uniform(0.5, 1.0),
      'wall2': _rand_colour(rng) * rng.uniform(0.4, 1.0),
      'floor': np.array([rng.uniform(70, 190)] * 3) + rng.normal(0, 15, 3),
      'horizon': rng.uniform(0.45, 0.8),
      'texture': rng.choice(['plain', 'bricks', 'windows', 'vstripes', 'gradient']),
      'gain': rng.uniform(0.6, 1.3),
      'cast': rng.uniform(0.78, 1.22, 3),
      'gamma': rng.uniform(0.8, 1.25),
      'blur': float(rng.choice([0.0, 0.0, 0.6, 1.2])),
      'noise': rng.uniform(1.0, 7.0),
      'scale': rng.uniform(0.74, 0.94),
      'shift': rng.uniform(-0.08, 0.08),
      'shadow': rng.uniform(0.0, 0.35),
  }


def _col(c) -> tuple:
  return tuple(int(v) for v in np.clip(np.asarray(c), 0, 255))


def _draw_background(img: Image.Image, cam: dict, rng: np.random.Generator) -> None:
  w, h = img.size
  d = ImageDraw.Draw(img)
  hz = int(cam['horizon'] * h + rng.normal(0, 0.02) * h)
  d.rectangle([0, 0, w, hz], fill=_col(cam['wall']))
  d.rectangle([0, hz, w, h], fill=_col(cam['floor']))
  off = rng.integers(0, 40)
  tex = cam['texture']
  if tex == 'bricks':
    step = max(4, h // 14)
    for y in range(0, hz, step):
      d.line([0, y, w, y], fill=_col(cam['wall'] * 0.75), width=1)
      shift = (off + (y // step) * step) % (2 * step)
      for x in range(-shift, w, 2 * step):
        d.line([x, y, x, y + step], fill=_col(cam['wall'] * 0.75), width=1)
  elif tex == 'windows':
    ww = w // 3
    for x in range(-(off % ww), w, ww):
      d.rectangle([x + ww // 6, hz // 6, x + ww - ww // 6, hz // 2], fill=_col(cam['wall2']))
  elif tex == 'vstripes':
    sw = max(3, w // 10)
    for x in range(-(off % (2 * sw)), w, 2 * sw):
      d.rectangle([x, 0, x + sw, hz], fill=_col(cam['wall2']))
  elif tex == 'gradient':
    for y in range(0, hz, 4):
      t = y / max(1, hz)
      d.rectangle([0, y, w, y + 4], fill=_col(cam['wall'] * (1 - t) + cam['wall2'] * t))
  # Floor tiles / lines.
  for y in range(hz + 8, h, max(6, h // 12)):
    d.line([0, y, w, y], fill=_col(cam['floor'] * 0.85), width=1)
  # A few random clutter blobs (plants, bins, signs).
  for _ in range(rng.integers(0, 3)):
    cx, cy = rng.integers(0, w), rng.integers(0, h)
    r = rng.integers(h // 30 + 1, h // 10 + 2)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_col(_rand_colour(rng) * 0.8))


def _jitter(c: np.ndarray, rng: np.random.Generator, s: float = 10.0) -> tuple:
  return _col(c + rng.normal(0, s, 3))


def _pattern_layer(size, a: dict, rng: np.random.Generator, box, view: str) -> Image.Image:
  """The top's fabric (colours + pattern) as an RGB image."""
  w, h = size
  x0, y0, x1, y1 = box
  layer = Image.new('RGB', size, _jitter(a['top'], rng))
  d = ImageDraw.Draw(layer)
  c2 = _jitter(a['top2'], rng)
  p = a['pattern']
  ph = max(2, int(a['stripe'] * h))
  if p == 'hstripes':
    for y in range(y0, y1, 2 * ph):
      d.rectangle([0, y, w, y + ph - 1], fill=c2)
  elif p == 'vstripes':
    pw = max(2, ph * 2 // 3)
    for x in range(x0, x1, 2 * pw):
      d.rectangle([x, 0, x + pw - 1, h], fill=c2)
  elif p == 'check':
    for i, y in enumerate(range(y0, y1, ph)):
      for j, x in enumerate(range(x0, x1, ph)):
        if (i + j) % 2:
          d.rectangle([x, y, x + ph - 1, y + ph - 1], fill=c2)
  elif p == 'split':
    d.rectangle([0, (y0 + y1) // 2, w, h], fill=c2)
  elif p == 'logo' and view == 'front':
    cx, cy = (x0 + x1) // 2, y0 + (y1 - y0) // 3
    r = max(2, (x1 - x0) // 5)
    d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=c2)
  if a['jacket'] and view == 'front':
    cx = (x0 + x1) // 2
    gap = max(1, (x1 - x0) // 8)
    d.rectangle([cx - gap, y0, cx + gap, y1], fill=c2)
  return layer


def _draw_person(img: Image.Image, a: dict, rng: np.random.Generator, cx: float, top: float,
                 height: float, view: str, phase: float) -> None:
  """Draws one pedestrian of attributes `a`, head top at `top`, feet at top + height."""
  d = ImageDraw.Draw(img)
  H = height * a['height']
  top = top + (height - H)
  side = view in ('left', 'right')
  face = 1 if view == 'right' else -1
  wf = a['width'] * (0.62 if side else 1.0)
  y = lambda f: top + f * H
  shoulder = 0.13 * H * wf
  hip = 0.105 * H * wf
  skin = _jitter(a['skin'], rng, 6)
  hair = _jitter(a['hair'], rng, 6)
  bottom = _jitter(a['bottom'], rng)
  shoes = _jitter(a['shoes'], rng)
  bag = _jitter(a['bag_colour'], rng)
  swing = np.sin(phase)
  # Backpack behind the body (front/side views show only part of it).
  if a['bag'] == 'backpack' and view != 'back':
    bx = cx - face * 0.12 * H if side else cx
    bw = 0.07 * H if side else 0.13 * H * wf
    if side:
      d.rounded_rectangle([bx - bw, y(0.17), bx + bw, y(0.42)], radius=int(0.02 * H) + 1,
                          fill=bag)
  # Legs.
  leg_top = y(0.48)
  foot = y(0.97)
  stride = 0.07 * H * swing
  lw = 0.055 * H * a['width']
  for sgn in (-1, 1):
    hx = cx + sgn * (hip * 0.5 if not side else 0.0)
    fx = hx + sgn * stride if side else hx + sgn * abs(stride) * 0.3
    leg = [(hx - lw, leg_top), (hx + lw, leg_top), (fx + lw * 0.8, foot), (fx - lw * 0.8, foot)]
    d.polygon(leg, fill=skin if a['bottom_type'] == 'skirt' else bottom)
    if a['bottom_type'] == 'shorts':
      knee = y(0.66)
      t = (knee - leg_top) / (foot - leg_top)
      kx = hx + (fx - hx) * t
      d.polygon([(kx - lw * 0.9, knee), (kx + lw * 0.9, knee), (fx + lw * 0.75, foot),
                 (fx - lw * 0.75, foot)], fill=skin)
    d.ellipse([fx - lw * 1.1 + (face * lw * 0.4 if side else 0), foot - 0.025 * H,
               fx + lw * 1.1 + (face * lw * 0.4 if side else 0), foot + 0.02 * H], fill=shoes)
  if a['bottom_type'] == 'skirt':
    d.polygon([(cx - hip, leg_top - 0.01 * H), (cx + hip, leg_top - 0.01 * H),
               (cx + hip * 1.5, y(0.68)), (cx - hip * 1.5, y(0.68))], fill=bottom)
  else:
    d.rectangle([cx - hip, leg_top - 0.02 * H, cx + hip, leg_top + 0.03 * H], fill=bottom)
  # Torso (patterned fabric pasted through a polygon mask).
  t0, t1 = y(0.15), y(0.5)
  torso = [(cx - shoulder, t0), (cx + shoulder, t0), (cx + hip * 1.05, t1),
           (cx - hip * 1.05, t1)]
  box = tuple(int(v) for v in (cx - shoulder - 1, t0 - 1, cx + shoulder + 1, t1 + 1))
  fabric = _pattern_layer(img.size, a, rng, box, view)
  mask = Image.new('L', img.size, 0)
  ImageDraw.Draw(mask).polygon(torso, fill=255)
  img.paste(fabric, (0, 0), mask)
  top_col = _jitter(a['top'], rng)
  # Arms.
  aw = 0.04 * H * a['width']
  arm_len = 0.33 * H
  arms = (face,) if side else (-1, 1)
  for sgn in arms:
    sx = cx + sgn * (shoulder - aw * 0.6) if not side else cx
    ang = swing * 0.5 * (sgn if side else -sgn)
    ex = sx + arm_len * np.sin(ang) * (1 if side else 0.35) + (0 if side else sgn * 0.02 * H)
    ey = t0 + 0.02 * H + arm_len * np.cos(ang)
    d.line([(sx, t0 + 0.02 * H), (ex, ey)], fill=top_col, width=max(1, int(2 * aw)))
    if a['sleeves'] == 'short':
      mx, my = (sx * 0.55 + ex * 0.45), (t0 + 0.02 * H) * 0.55 + ey * 0.45
      d.line([(mx, my), (ex, ey)], fill=skin, width=max(1, int(1.7 * aw)))
    d.ellipse([ex - aw, ey - aw, ex + aw, ey + aw], fill=skin)
    if a['bag'] == 'handbag' and sgn == (a['bag_side'] if not side else face):
      d.rectangle([ex - 0.05 * H, ey, ex + 0.05 * H, ey + 0.09 * H], fill=bag)
  # Back view: backpack over the torso; front view: its straps.
  if a['bag'] == 'backpack':
    if view == 'back':
      d.rounded_rectangle([cx - 0.1 * H * wf, y(0.17), cx + 0.1 * H * wf, y(0.43)],
                          radius=int(0.02 * H) + 1, fill=bag)
    elif view == 'front':
      for sgn in (-1, 1):
        d.line([(cx + sgn * shoulder * 0.6, t0), (cx + sgn * shoulder * 0.5, y(0.35))],
               fill=bag, width=max(1, int(0.018 * H)))
  if a['bag'] == 'shoulder':
    s = a['bag_side'] if not side else -face
    d.line([(cx - s * shoulder * 0.7, t0), (cx + s * hip * 1.2, y(0.47))], fill=bag,
           width=max(1, int(0.015 * H)))
    bx0, bx1 = sorted((cx + s * hip * 0.9, cx + s * hip * 0.9 + s * 0.11 * H))
    d.rectangle([bx0, y(0.42), bx1, y(0.53)], fill=bag)
  # Neck and head.
  hr = 0.065 * H
  hcx = cx + (face * 0.01 * H if side else 0)
  hcy = y(0.08)
  d.rectangle([cx - hr * 0.4, hcy + hr * 0.6, cx + hr * 0.4, t0 + 1], fill=skin)
  if a['hair_style'] == 'long' and view != 'front':
    d.rectangle([hcx - hr * 1.05, hcy, hcx + hr * 1.05, y(0.2)], fill=hair)
  d.ellipse([hcx - hr * 0.9, hcy - hr, hcx + hr * 0.9, hcy + hr], fill=skin)
  if view == 'back':
    d.ellipse([hcx - hr * 0.95, hcy - hr * 1.05, hcx + hr * 0.95, hcy + hr * 0.9], fill=hair)
  else:
    d.chord([hcx - hr * 0.95, hcy - hr * 1.1, hcx + hr * 0.95, hcy + hr * 0.6], 180, 360,
            fill=hair)
    if a['hair_style'] == 'long' and view == 'front':
      for sgn in (-1, 1):
        d.rectangle([hcx + sgn * hr * 0.95 - hr * 0.3, hcy - hr * 0.3,
                     hcx + sgn * hr * 0.95 + hr * 0.3, y(0.19)], fill=hair)
  if a['hair_style'] == 'bun':
    bx = hcx - face * hr if side else hcx
    d.ellipse([bx - hr * 0.45, hcy - hr * 1.4, bx + hr * 0.45, hcy - hr * 0.6], fill=hair)
  if a['hat']:
    d.chord([hcx - hr, hcy - hr * 1.25, hcx + hr, hcy + hr * 0.4], 180, 360,
            fill=_jitter(a['hat_colour'], rng))


def _draw_occluder(img: Image.Image, rng: np.random.Generator) -> None:
  w, h = img.size
  d = ImageDraw.Draw(img)
  kind = rng.integers(4)
  c = _col(_rand_colour(rng))
  if kind == 0:  # Pole.
    x = rng.integers(0, w)
    pw = rng.integers(w // 12, w // 5)
    d.rectangle([x, 0, x + pw, h], fill=c)
  elif kind == 1:  # Car / bench from below.
    y0 = int(h * rng.uniform(0.6, 0.85))
    d.rounded_rectangle([int(-0.2 * w), y0, int(w * rng.uniform(0.5, 1.2)), h + 10],
                        radius=w // 8, fill=c)
  elif kind == 2:  # Passer-by edge.
    other = _identity(rng)
    cx = rng.choice([-0.15, 1.15]) * w
    _draw_person(img, other, rng, cx, rng.uniform(0.0, 0.1) * h, 0.95 * h,
                 rng.choice(['left', 'right']), rng.uniform(0, 6.3))
  else:  # Sign / umbrella.
    x, y = rng.integers(0, w), rng.integers(0, h // 2)
    r = rng.integers(w // 6, w // 3)
    d.ellipse([x - r, y - r // 2, x + r, y + r // 2], fill=c)


def _finish(img: Image.Image, cam: dict, rng: np.random.Generator,
            out_size: tuple) -> Image.Image:
  """Camera optics: blur, downsampling, gain, colour cast, gamma, shadow, noise."""
  if cam['blur'] > 0:
    img = img.filter(ImageFilter.GaussianBlur(cam['blur'] * SUPERSAMPLE))
  img = img.resize((out_size[1], out_size[0]), Image.Resampling.BOX)
  x = np.asarray(img, np.float32) / 255.0
  gain = cam['gain'] * rng.uniform(0.9, 1.1)
  cast = cam['cast'] * rng.uniform(0.96, 1.04, 3)
  x = np.power(np.clip(x, 0, 1), cam['gamma']) * gain * cast
  if cam['shadow'] > 0:
    ramp = np.linspace(1.0, 1.0 - cam['shadow'], x.shape[1], dtype=np.float32)
    if rng.random() < 0.5:
      ramp = ramp[::-1]
    x = x * ramp[None, :, None]
  x = x * 255.0 + rng.normal(0, cam['noise'], x.shape)
  return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))


def render(identity: Optional[dict], cam: dict, rng: np.random.Generator, size: tuple,
           occlusion: float = 0.25, fragment: bool = False) -> Image.Image:
  """One image of `identity` (None: background only) seen by camera `cam`, size (H, W)."""
  h, w = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
  img = Image.new('RGB', (w, h))
  _draw_background(img, cam, rng)
  if identity is not None:
    scale = cam['scale'] * rng.uniform(0.94, 1.06)
    ph = scale * h
    cx = w * (0.5 + cam['shift'] + rng.normal(0, 0.04))
    top = (h - ph) * rng.uniform(0.3, 0.7)
    if fragment:  # A bad detection: zoomed in on part of the body.
      ph *= rng.uniform(1.6, 2.6)
      top = -rng.uniform(0.0, 0.6) * ph
      cx = w * rng.uniform(0.2, 0.8)
    view = rng.choice(['front', 'back', 'left', 'right'])
    _draw_person(img, identity, rng, cx, top, ph, view, rng.uniform(0, 2 * np.pi))
    if rng.random() < occlusion:
      _draw_occluder(img, rng)
  return _finish(img, cam, rng, size)


def _read_marker(root: str) -> Optional[dict]:
  """The arguments recorded in root/MARKER (None when there is no such file)."""
  path = os.path.join(root, MARKER)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      marker = json.load(f)
    if not isinstance(marker, dict) or not isinstance(marker.get('arguments'), dict):
      raise ValueError('no "arguments" object')
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise ValueError(f'{path} is not a synthetic-dataset record ({e}): give an empty or new '
                     'folder') from e
  return marker


def _write_marker(root: str, arguments: dict, complete: bool) -> None:
  path = os.path.join(root, MARKER)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump({'generator': 'fmn_jax.data.synthetic', 'arguments': arguments,
               'complete': complete}, f, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def _check_root(root: str, arguments: dict) -> bool:
  """True when `root` already holds the complete dataset of `arguments`; False when it may be
  written (absent, empty, or an unfinished generation with the same arguments). Raises
  ValueError naming the folder when it holds anything else."""
  if not os.path.exists(root):
    return False
  if not os.path.isdir(root):
    raise ValueError(f'synthetic dataset folder {root} is a file, not a folder')
  marker = _read_marker(root)
  if marker is None:
    entries = sorted(os.listdir(root))
    if not entries:
      return False
    shown = ', '.join(entries[:3]) + (', ...' if len(entries) > 3 else '')
    raise ValueError(f'synthetic dataset folder {root} is not empty and holds no {MARKER} '
                     f'(it holds {shown}): give an empty or new folder')
  recorded = marker['arguments']
  if recorded != arguments:
    diff = ', '.join(f'{k}={recorded.get(k)!r} (asked {arguments.get(k)!r})'
                     for k in sorted(set(recorded) | set(arguments))
                     if recorded.get(k) != arguments.get(k))
    raise ValueError(f'synthetic dataset folder {root} holds another synthetic dataset ({diff}):'
                     ' give an empty or new folder, or the same arguments')
  return bool(marker.get('complete'))


def _arguments(seed, num_train_ids, num_test_ids, num_cameras, images_per_camera,
               image_size) -> dict:
  """The checked generation arguments, as root/MARKER records them."""
  if not 2 <= num_cameras <= 9:
    raise ValueError(f'num_cameras must be in 2..9 (Market names hold one digit), got '
                     f'{num_cameras}')
  if num_train_ids < 1 or num_test_ids < 1 or images_per_camera < 1:
    raise ValueError('num_train_ids, num_test_ids and images_per_camera must be >= 1')
  size = (int(image_size[0]), int(image_size[1]))
  if size[0] < 16 or size[1] < 8:
    raise ValueError(f'image_size too small: {image_size}')
  return {'seed': int(seed), 'num_train_ids': int(num_train_ids),
          'num_test_ids': int(num_test_ids), 'num_cameras': int(num_cameras),
          'images_per_camera': int(images_per_camera), 'image_size': list(size)}


def check_folder(root: str, *, seed: int = 0, num_train_ids: int = 100, num_test_ids: int = 100,
                 num_cameras: int = 6, images_per_camera: int = 3, image_size=(128, 64)) -> bool:
  """Read-only: True when `root` holds this complete dataset, False when `generate` may write
  it; ValueError naming the folder when `generate` would refuse it. Every host of a multi-host
  run can call it, so that all of them refuse a folder alike."""
  return _check_root(root, _arguments(seed, num_train_ids, num_test_ids, num_cameras,
                                      images_per_camera, image_size))


def generate(root: str, *, seed: int = 0, num_train_ids: int = 100, num_test_ids: int = 100,
             num_cameras: int = 6, images_per_camera: int = 3, image_size=(128, 64)) -> str:
  """Writes a synthetic dataset in the Market-1501 layout; returns `root`.

  `root` must be absent, empty, or hold this very dataset (recorded in root/MARKER): a complete
  one is reused as it is, an unfinished one is written again (same names, same bytes); a folder
  holding another synthetic dataset or other files raises ValueError naming it.

  Args:
    root: output folder.
    seed: everything is a function of the seed (same seed, same bytes).
    num_train_ids: identities in bounding_box_train.
    num_test_ids: identities in query + bounding_box_test.
    num_cameras: cameras (1..9, as in Market names); each identity is seen by 2..num_cameras.
    images_per_camera: images of an identity per camera that sees it.
    image_size: (H, W) of the written JPEGs.
  """
  arguments = _arguments(seed, num_train_ids, num_test_ids, num_cameras, images_per_camera,
                         image_size)
  size = tuple(arguments['image_size'])
  if _check_root(root, arguments):
    return root
  dirs = {s: os.path.join(root, s) for s in SPLIT_FOLDERS}
  try:
    os.makedirs(root, exist_ok=True)
    _write_marker(root, arguments, complete=False)
    for d in dirs.values():
      os.makedirs(d, exist_ok=True)
  except OSError as e:
    raise ValueError(f'cannot write the synthetic dataset folder {root}: {e.strerror or e}') from e
  master = np.random.default_rng([seed, 0])
  total = num_train_ids + num_test_ids
  pids = master.permutation(np.arange(1, max(2 * total, 10) + 1))[:total]
  train_pids = np.sort(pids[:num_train_ids])
  test_pids = np.sort(pids[num_train_ids:])
  cams = [_camera(np.random.default_rng([seed, 3, c])) for c in range(num_cameras)]
  frame = [0]

  def save(folder, pid, cam_index, img, box=0):
    frame[0] += 1
    name = f'{pid:04d}' if pid >= 0 else '-1'
    path = os.path.join(dirs[folder], f'{name}_c{cam_index + 1}s1_{frame[0] * 25:06d}_'
                                      f'{box:02d}.jpg')
    img.save(path, quality=JPEG_QUALITY)

  def views_of(pid):
    rng = np.random.default_rng([seed, 1, int(pid)])
    ident = _identity(rng)
    n_cams = rng.integers(2, num_cameras + 1)
    cam_set = np.sort(rng.choice(num_cameras, n_cams, replace=False))
    return ident, cam_set, rng

  for pid in train_pids:
    ident, cam_set, _ = views_of(pid)
    for c in cam_set:
      for k in range(images_per_camera):
        rng = np.random.default_rng([seed, 2, int(pid), int(c), k])
        save('bounding_box_train', int(pid), c, render(ident, cams[c], rng, size))
  for pid in test_pids:
    ident, cam_set, id_rng = views_of(pid)
    gallery_only = cam_set[id_rng.integers(cam_set.size)]
    for c in cam_set:
      for k in range(images_per_camera):
        rng = np.random.default_rng([seed, 2, int(pid), int(c), k])
        folder = 'query' if (k == 0 and c != gallery_only) else 'bounding_box_test'
        save(folder, int(pid), c, render(ident, cams[c], rng, size))
  # Junk (-1): fragments of test identities; distractors (0000): clutter or unrelated people.
  extra = max(2, num_test_ids // 8)
  for j in range(extra):
    rng = np.random.default_rng([seed, 4, j])
    ident, _, _ = views_of(test_pids[rng.integers(test_pids.size)])
    c = int(rng.integers(num_cameras))
    save('bounding_box_test', -1, c, render(ident, cams[c], rng, size, fragment=True), box=1)
  for j in range(extra):
    rng = np.random.default_rng([seed, 5, j])
    c = int(rng.integers(num_cameras))
    other = _identity(rng) if rng.random() < 0.5 else None
    save('bounding_box_test', 0, c, render(other, cams[c], rng, size, occlusion=0.6), box=2)
  _write_marker(root, arguments, complete=True)
  return root


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='output folder')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_train_ids', type=int, default=100)
  parser.add_argument('--num_test_ids', type=int, default=100)
  parser.add_argument('--num_cameras', type=int, default=6)
  parser.add_argument('--images_per_camera', type=int, default=3)
  parser.add_argument('--image_size', default='128,64', help='H,W')
  args = parser.parse_args(argv)
  out = os.path.abspath(os.path.expanduser(args.out))
  t = time.time()
  try:
    try:
      size = tuple(int(v) for v in args.image_size.split(','))
      if len(size) != 2:
        raise ValueError
    except ValueError:
      raise ValueError(f'--image_size={args.image_size!r}: expected H,W') from None
    kwargs = dict(seed=args.seed, num_train_ids=args.num_train_ids,
                  num_test_ids=args.num_test_ids, num_cameras=args.num_cameras,
                  images_per_camera=args.images_per_camera, image_size=size)
    reused = check_folder(out, **kwargs)
    generate(out, **kwargs)
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  counts = ', '.join(f'{s} {len(os.listdir(os.path.join(out, s)))}' for s in SPLIT_FOLDERS)
  if reused:
    print(f'{out} already holds this dataset (reused as it is): {counts}')
  else:
    print(f'wrote {out} in {time.time() - t:.1f} s: {counts}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
