"""Synthetic camera views: a camera's nuisance parameters and the rendering of one image.

Each camera (`random_camera`) has its own background (wall/floor colours and texture),
illumination, colour cast, gamma, blur, noise, person scale and position. `render` draws the
background, a person (`synthetic_person.draw_person`) in a random view and walking phase, and
sometimes an occluder (a pole, a car-like block, a passer-by, a sign), at `SUPERSAMPLE` times the
output size, then applies the camera's optics and downsamples.
"""

from typing import Optional

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter

from fmn_jax.data import synthetic_person as person

SUPERSAMPLE = 2  # Drawn at this multiple of the output size, then downsampled (antialiasing).


def random_camera(rng: np.random.Generator) -> dict:
  """Nuisance parameters of one camera."""
  return {
      'wall': person.rand_colour(rng) * rng.uniform(0.5, 1.0),
      'wall2': person.rand_colour(rng) * rng.uniform(0.4, 1.0),
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



def _draw_background(img: Image.Image, cam: dict, rng: np.random.Generator) -> None:
  w, h = img.size
  d = ImageDraw.Draw(img)
  hz = int(cam['horizon'] * h + rng.normal(0, 0.02) * h)
  d.rectangle([0, 0, w, hz], fill=person.col(cam['wall']))
  d.rectangle([0, hz, w, h], fill=person.col(cam['floor']))
  off = rng.integers(0, 40)
  tex = cam['texture']
  if tex == 'bricks':
    step = max(4, h // 14)
    for y in range(0, hz, step):
      d.line([0, y, w, y], fill=person.col(cam['wall'] * 0.75), width=1)
      shift = (off + (y // step) * step) % (2 * step)
      for x in range(-shift, w, 2 * step):
        d.line([x, y, x, y + step], fill=person.col(cam['wall'] * 0.75), width=1)
  elif tex == 'windows':
    ww = w // 3
    for x in range(-(off % ww), w, ww):
      d.rectangle([x + ww // 6, hz // 6, x + ww - ww // 6, hz // 2], fill=person.col(cam['wall2']))
  elif tex == 'vstripes':
    sw = max(3, w // 10)
    for x in range(-(off % (2 * sw)), w, 2 * sw):
      d.rectangle([x, 0, x + sw, hz], fill=person.col(cam['wall2']))
  elif tex == 'gradient':
    for y in range(0, hz, 4):
      t = y / max(1, hz)
      d.rectangle([0, y, w, y + 4], fill=person.col(cam['wall'] * (1 - t) + cam['wall2'] * t))
  # Floor tiles / lines.
  for y in range(hz + 8, h, max(6, h // 12)):
    d.line([0, y, w, y], fill=person.col(cam['floor'] * 0.85), width=1)
  # A few random clutter blobs (plants, bins, signs).
  for _ in range(rng.integers(0, 3)):
    cx, cy = rng.integers(0, w), rng.integers(0, h)
    r = rng.integers(h // 30 + 1, h // 10 + 2)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=person.col(person.rand_colour(rng) * 0.8))



def _draw_occluder(img: Image.Image, rng: np.random.Generator) -> None:
  w, h = img.size
  d = ImageDraw.Draw(img)
  kind = rng.integers(4)
  c = person.col(person.rand_colour(rng))
  if kind == 0:  # Pole.
    x = rng.integers(0, w)
    pw = rng.integers(w // 12, w // 5)
    d.rectangle([x, 0, x + pw, h], fill=c)
  elif kind == 1:  # Car / bench from below.
    y0 = int(h * rng.uniform(0.6, 0.85))
    d.rounded_rectangle([int(-0.2 * w), y0, int(w * rng.uniform(0.5, 1.2)), h + 10],
                        radius=w // 8, fill=c)
  elif kind == 2:  # Passer-by edge.
    other = person.random_identity(rng)
    cx = rng.choice([-0.15, 1.15]) * w
    person.draw_person(img, other, rng, cx, rng.uniform(0.0, 0.1) * h, 0.95 * h,
                 rng.choice(['left', 'right']), rng.uniform(0, 6.3))
  else:  # Sign / umbrella.
    x, y = rng.integers(0, w), rng.integers(0, h // 2)
    r = rng.integers(w // 6, w // 3)
    d.ellipse([x - r, y - r // 2, x + r, y + r // 2], fill=c)


def _camera_optics(img: Image.Image, cam: dict, rng: np.random.Generator,
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
    person.draw_person(img, identity, rng, cx, top, ph, view, rng.uniform(0, 2 * np.pi))
    if rng.random() < occlusion:
      _draw_occluder(img, rng)
  return _camera_optics(img, cam, rng, size)

