"""Synthetic pedestrians: the appearance attributes of an identity and the drawing of a person.

An identity's attributes (`random_identity`) are its build, skin, hair, hat, top (colour,
pattern, sleeves, chest logo, jacket), bottom (trousers, shorts or skirt), shoes and bag
(backpack, shoulder bag or handbag). `draw_person` draws one such person in a view (front, back,
left or right side) and a walking phase, with small colour jitter, onto a PIL image; the drawing
steps run in a fixed order (back bag, legs, torso, arms, bags, head), so the same random
generator state gives the same pixels.
"""

import colorsys
import dataclasses
from typing import Callable

import numpy as np
from PIL import Image
from PIL import ImageDraw

_SKIN = ((255, 220, 190), (240, 200, 160), (225, 175, 135), (200, 150, 110), (160, 110, 75),
         (120, 80, 55), (90, 60, 40))
_HAIR = ((20, 15, 10), (45, 30, 20), (90, 60, 30), (150, 110, 60), (210, 180, 110),
         (130, 130, 130), (120, 40, 20))
_DARK = ((25, 25, 30), (40, 45, 60), (60, 60, 60), (35, 50, 90), (90, 80, 60), (110, 110, 115))


def rand_colour(rng: np.random.Generator, dark_bias: float = 0.0) -> np.ndarray:
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


def random_identity(rng: np.random.Generator) -> dict:
  """Appearance attributes of one identity."""
  a = {
      'height': rng.uniform(0.9, 1.04),
      'width': rng.uniform(0.85, 1.2),
      'skin': np.array(_SKIN[rng.integers(len(_SKIN))], float),
      'hair': np.array(_HAIR[rng.integers(len(_HAIR))], float),
      'hair_style': rng.choice(['short', 'long', 'bun']),
      'hat': rng.random() < 0.15,
      'hat_colour': rand_colour(rng),
      'top': rand_colour(rng),
      'top2': rand_colour(rng),
      'pattern': rng.choice(['solid', 'solid', 'hstripes', 'vstripes', 'check', 'split',
                             'logo']),
      'stripe': rng.uniform(0.035, 0.08),
      'sleeves': rng.choice(['long', 'short']),
      'jacket': rng.random() < 0.2,
      'bottom': rand_colour(rng, dark_bias=0.3),
      'bottom_type': rng.choice(['trousers', 'trousers', 'trousers', 'shorts', 'skirt']),
      'shoes': rand_colour(rng, dark_bias=0.4),
      'bag': rng.choice(['none', 'none', 'backpack', 'shoulder', 'handbag']),
      'bag_colour': rand_colour(rng, dark_bias=0.2),
      'bag_side': rng.choice([-1, 1]),
  }
  return a


def col(c) -> tuple:
  """A colour as a PIL fill: integers clipped to 0..255."""
  return tuple(int(v) for v in np.clip(np.asarray(c), 0, 255))


def _jitter(c: np.ndarray, rng: np.random.Generator, s: float = 10.0) -> tuple:
  return col(c + rng.normal(0, s, 3))


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




@dataclasses.dataclass(frozen=True)
class _Figure:
  """The geometry and colours of one drawn person, shared by the drawing steps."""
  d: ImageDraw.ImageDraw
  a: dict  # The identity's attributes.
  cx: float
  H: float  # Body height, pixels.
  y: Callable[[float], float]  # Fraction of the body height -> image row.
  view: str
  side: bool
  face: int  # +1 facing right, -1 facing left.
  wf: float  # Width factor of the view.
  shoulder: float
  hip: float
  swing: float
  skin: tuple
  hair: tuple
  bottom: tuple
  shoes: tuple
  bag: tuple


def _figure(img: Image.Image, a: dict, rng: np.random.Generator, cx: float, top: float,
            height: float, view: str, phase: float) -> _Figure:
  """The person's geometry and jittered colours (skin, hair, bottom, shoes, bag)."""
  H = height * a['height']
  top = top + (height - H)
  side = view in ('left', 'right')
  wf = a['width'] * (0.62 if side else 1.0)
  return _Figure(
      d=ImageDraw.Draw(img), a=a, cx=cx, H=H, y=lambda f: top + f * H, view=view, side=side,
      face=1 if view == 'right' else -1, wf=wf, shoulder=0.13 * H * wf, hip=0.105 * H * wf,
      swing=np.sin(phase), skin=_jitter(a['skin'], rng, 6), hair=_jitter(a['hair'], rng, 6),
      bottom=_jitter(a['bottom'], rng), shoes=_jitter(a['shoes'], rng),
      bag=_jitter(a['bag_colour'], rng))


def _draw_backpack_behind(f: _Figure) -> None:
  """A backpack behind the body: side views show part of it."""
  if f.a['bag'] == 'backpack' and f.view != 'back':
    H, cx, side = f.H, f.cx, f.side
    bx = cx - f.face * 0.12 * H if side else cx
    bw = 0.07 * H if side else 0.13 * H * f.wf
    if side:
      f.d.rounded_rectangle([bx - bw, f.y(0.17), bx + bw, f.y(0.42)],
                            radius=int(0.02 * H) + 1, fill=f.bag)


def _draw_legs(f: _Figure) -> None:
  """Legs (trousers, shorts or a skirt's bare legs), shoes, and the skirt or waistband."""
  d, a, H, cx, side, face, hip = f.d, f.a, f.H, f.cx, f.side, f.face, f.hip
  leg_top = f.y(0.48)
  foot = f.y(0.97)
  stride = 0.07 * H * f.swing
  lw = 0.055 * H * a['width']
  for sgn in (-1, 1):
    hx = cx + sgn * (hip * 0.5 if not side else 0.0)
    fx = hx + sgn * stride if side else hx + sgn * abs(stride) * 0.3
    leg = [(hx - lw, leg_top), (hx + lw, leg_top), (fx + lw * 0.8, foot), (fx - lw * 0.8, foot)]
    d.polygon(leg, fill=f.skin if a['bottom_type'] == 'skirt' else f.bottom)
    if a['bottom_type'] == 'shorts':
      knee = f.y(0.66)
      t = (knee - leg_top) / (foot - leg_top)
      kx = hx + (fx - hx) * t
      d.polygon([(kx - lw * 0.9, knee), (kx + lw * 0.9, knee), (fx + lw * 0.75, foot),
                 (fx - lw * 0.75, foot)], fill=f.skin)
    d.ellipse([fx - lw * 1.1 + (face * lw * 0.4 if side else 0), foot - 0.025 * H,
               fx + lw * 1.1 + (face * lw * 0.4 if side else 0), foot + 0.02 * H], fill=f.shoes)
  if a['bottom_type'] == 'skirt':
    d.polygon([(cx - hip, leg_top - 0.01 * H), (cx + hip, leg_top - 0.01 * H),
               (cx + hip * 1.5, f.y(0.68)), (cx - hip * 1.5, f.y(0.68))], fill=f.bottom)
  else:
    d.rectangle([cx - hip, leg_top - 0.02 * H, cx + hip, leg_top + 0.03 * H], fill=f.bottom)


def _draw_torso(img: Image.Image, f: _Figure, rng: np.random.Generator) -> float:
  """The torso: the patterned fabric pasted through a polygon mask. Returns its top row."""
  cx, shoulder, hip = f.cx, f.shoulder, f.hip
  t0, t1 = f.y(0.15), f.y(0.5)
  torso = [(cx - shoulder, t0), (cx + shoulder, t0), (cx + hip * 1.05, t1),
           (cx - hip * 1.05, t1)]
  box = tuple(int(v) for v in (cx - shoulder - 1, t0 - 1, cx + shoulder + 1, t1 + 1))
  fabric = _pattern_layer(img.size, f.a, rng, box, f.view)
  mask = Image.new('L', img.size, 0)
  ImageDraw.Draw(mask).polygon(torso, fill=255)
  img.paste(fabric, (0, 0), mask)
  return t0


def _draw_arms(f: _Figure, t0: float, top_col: tuple) -> None:
  """Arms (one in a side view) with sleeves and hands, and a handbag in one hand."""
  d, a, H, cx, side, face = f.d, f.a, f.H, f.cx, f.side, f.face
  aw = 0.04 * H * a['width']
  arm_len = 0.33 * H
  arms = (face,) if side else (-1, 1)
  for sgn in arms:
    sx = cx + sgn * (f.shoulder - aw * 0.6) if not side else cx
    ang = f.swing * 0.5 * (sgn if side else -sgn)
    ex = sx + arm_len * np.sin(ang) * (1 if side else 0.35) + (0 if side else sgn * 0.02 * H)
    ey = t0 + 0.02 * H + arm_len * np.cos(ang)
    d.line([(sx, t0 + 0.02 * H), (ex, ey)], fill=top_col, width=max(1, int(2 * aw)))
    if a['sleeves'] == 'short':
      mx, my = (sx * 0.55 + ex * 0.45), (t0 + 0.02 * H) * 0.55 + ey * 0.45
      d.line([(mx, my), (ex, ey)], fill=f.skin, width=max(1, int(1.7 * aw)))
    d.ellipse([ex - aw, ey - aw, ex + aw, ey + aw], fill=f.skin)
    if a['bag'] == 'handbag' and sgn == (a['bag_side'] if not side else face):
      d.rectangle([ex - 0.05 * H, ey, ex + 0.05 * H, ey + 0.09 * H], fill=f.bag)


def _draw_bags(f: _Figure, t0: float) -> None:
  """A backpack over the torso (back view) or its straps (front view); a shoulder bag."""
  d, a, H, cx, side, face = f.d, f.a, f.H, f.cx, f.side, f.face
  shoulder, hip, wf = f.shoulder, f.hip, f.wf
  if a['bag'] == 'backpack':
    if f.view == 'back':
      d.rounded_rectangle([cx - 0.1 * H * wf, f.y(0.17), cx + 0.1 * H * wf, f.y(0.43)],
                          radius=int(0.02 * H) + 1, fill=f.bag)
    elif f.view == 'front':
      for sgn in (-1, 1):
        d.line([(cx + sgn * shoulder * 0.6, t0), (cx + sgn * shoulder * 0.5, f.y(0.35))],
               fill=f.bag, width=max(1, int(0.018 * H)))
  if a['bag'] == 'shoulder':
    s = a['bag_side'] if not side else -face
    d.line([(cx - s * shoulder * 0.7, t0), (cx + s * hip * 1.2, f.y(0.47))], fill=f.bag,
           width=max(1, int(0.015 * H)))
    bx0, bx1 = sorted((cx + s * hip * 0.9, cx + s * hip * 0.9 + s * 0.11 * H))
    d.rectangle([bx0, f.y(0.42), bx1, f.y(0.53)], fill=f.bag)


def _draw_head(f: _Figure, t0: float, rng: np.random.Generator) -> None:
  """Neck, head, hair (short, long or a bun) and maybe a hat."""
  d, a, H, cx, side, face, view = f.d, f.a, f.H, f.cx, f.side, f.face, f.view
  hair = f.hair
  hr = 0.065 * H
  hcx = cx + (face * 0.01 * H if side else 0)
  hcy = f.y(0.08)
  d.rectangle([cx - hr * 0.4, hcy + hr * 0.6, cx + hr * 0.4, t0 + 1], fill=f.skin)
  if a['hair_style'] == 'long' and view != 'front':
    d.rectangle([hcx - hr * 1.05, hcy, hcx + hr * 1.05, f.y(0.2)], fill=hair)
  d.ellipse([hcx - hr * 0.9, hcy - hr, hcx + hr * 0.9, hcy + hr], fill=f.skin)
  if view == 'back':
    d.ellipse([hcx - hr * 0.95, hcy - hr * 1.05, hcx + hr * 0.95, hcy + hr * 0.9], fill=hair)
  else:
    d.chord([hcx - hr * 0.95, hcy - hr * 1.1, hcx + hr * 0.95, hcy + hr * 0.6], 180, 360,
            fill=hair)
    if a['hair_style'] == 'long' and view == 'front':
      for sgn in (-1, 1):
        d.rectangle([hcx + sgn * hr * 0.95 - hr * 0.3, hcy - hr * 0.3,
                     hcx + sgn * hr * 0.95 + hr * 0.3, f.y(0.19)], fill=hair)
  if a['hair_style'] == 'bun':
    bx = hcx - face * hr if side else hcx
    d.ellipse([bx - hr * 0.45, hcy - hr * 1.4, bx + hr * 0.45, hcy - hr * 0.6], fill=hair)
  if a['hat']:
    d.chord([hcx - hr, hcy - hr * 1.25, hcx + hr, hcy + hr * 0.4], 180, 360,
            fill=_jitter(a['hat_colour'], rng))


def draw_person(img: Image.Image, a: dict, rng: np.random.Generator, cx: float, top: float,
                height: float, view: str, phase: float) -> None:
  """Draws one pedestrian of attributes `a`, head top at `top`, feet at top + height."""
  f = _figure(img, a, rng, cx, top, height, view, phase)
  _draw_backpack_behind(f)
  _draw_legs(f)
  t0 = _draw_torso(img, f, rng)
  top_col = _jitter(a['top'], rng)
  _draw_arms(f, t0, top_col)
  _draw_bags(f, t0)
  _draw_head(f, t0, rng)
