"""Serialising the inference function (uint8 image batch -> descriptor) with `jax.export`.

    python -m fmn_jax.export --workdir=DIR --out=fmn.jaxexp

writes one file: the StableHLO of the whole inference path (resize check, normalisation, GRN, MN,
LAN, flip averaging as in evaluation, Eq. 6 descriptor) with the trained weights folded in as
constants, behind a small JSON header (input size, normalisation, descriptor size, jax version).
It is not a pickle. Reading it back needs only jax and numpy:

    from fmn_jax.export import load_exported      # imports jax + numpy only, not the model code
    fn = load_exported('fmn.jaxexp')
    out = fn(images_uint8)                         # [N, H, W, 3] RGB uint8 at fn.header['input_size']
    out['descriptor'], out['g'], out['l']          # numpy float32

or without this package at all (the file layout is documented in `write_exported`):

    import json, struct, numpy as np, jax
    raw = open('fmn.jaxexp', 'rb').read()
    n = struct.unpack('<I', raw[8:12])[0]
    header = json.loads(raw[12:12 + n])
    exp = jax.export.deserialize(bytearray(raw[12 + n:]))
    desc = exp.call(images_uint8)['descriptor']

The batch dimension is symbolic (any batch size, one compilation per size), and the file holds
code for CPU and CUDA by default (`--platforms`), so an export made on a CPU runs on a GPU.
"""

import json
import logging
import os
import struct
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from fmn_jax import cpu

MAGIC = b'FMNJAXEX'
FORMAT_VERSION = 1
DEFAULT_PLATFORMS = ('cpu', 'cuda')
# The lowering platforms jax.export takes (it records any other name without complaint, and such
# a file then runs nowhere).
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def parse_platforms(platforms: Any) -> Tuple[str, ...]:
  """Checks lowering platforms (a comma-separated string or a sequence) against `PLATFORMS`.

  Returns them as a tuple, lower case; raises ValueError naming an unknown or repeated one.
  """
  items = platforms.split(',') if isinstance(platforms, str) else list(platforms)
  out = []
  for item in items:
    name = str(item).strip().lower()
    if not name:
      continue
    if name not in PLATFORMS:
      hint = ' (a GPU is cuda or rocm)' if name == 'gpu' else ''
      raise ValueError(f'--platforms: unknown platform {str(item).strip()!r}{hint}; jax.export '
                       f'lowers for {", ".join(PLATFORMS)}')
    if name in out:
      raise ValueError(f'--platforms: {name!r} is listed twice in {platforms!r}')
    out.append(name)
  if not out:
    raise ValueError(f'--platforms: no platform given ({platforms!r}); choose from '
                     f'{", ".join(PLATFORMS)}')
  return tuple(out)


def _require_flatbuffers() -> None:
  """jax serialises `Exported` objects with the `flatbuffers` package (not a jax dependency)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec('flatbuffers') is None:
    raise ImportError('reading or writing exported models needs the flatbuffers package, which '
                      "jax.export uses for serialisation: pip install 'flatbuffers>=24.3.25'")


def export_function(fn: Callable[[jnp.ndarray], Any], input_size: Tuple[int, int], *,
                    platforms: Sequence[str] = DEFAULT_PLATFORMS,
                    batch_size: Optional[int] = None) -> 'jax.export.Exported':
  """Exports ``fn(images uint8 [B, H, W, 3]) -> pytree`` with ``jax.export``.

  Args:
    fn: a jittable function of one uint8 image batch.
    input_size: (H, W) of the images it takes.
    platforms: lowering platforms stored in the file ('cpu', 'cuda', 'rocm', 'tpu').
    batch_size: None for a symbolic batch dimension (any batch size), else a fixed batch (the
      loader then pads and splits).
  """
  platforms = parse_platforms(platforms)
  h, w = int(input_size[0]), int(input_size[1])
  if batch_size is None:
    (b,) = jax.export.symbolic_shape('b')
  else:
    b = int(batch_size)
  spec = jax.ShapeDtypeStruct((b, h, w, 3), jnp.uint8)
  return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(spec)


def write_exported(path: str, exported: 'jax.export.Exported', header: Dict[str, Any]) -> str:
  """Writes ``MAGIC (8 bytes) | uint32 little-endian header length | JSON header | payload``.

  The payload is ``exported.serialize()`` (jax's flatbuffer format for `jax.export.Exported`).
  """
  header = dict(header)
  header.setdefault('format', 'fmn_jax.export')
  header.setdefault('format_version', FORMAT_VERSION)
  header.setdefault('jax_version', jax.__version__)
  header.setdefault('platforms', list(exported.platforms))
  header_bytes = json.dumps(header, indent=1, sort_keys=True).encode('utf-8')
  _require_flatbuffers()
  payload = exported.serialize()
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'wb') as f:
    f.write(MAGIC)
    f.write(struct.pack('<I', len(header_bytes)))
    f.write(header_bytes)
    f.write(payload)
  os.replace(tmp, path)
  return path


def read_exported(path: str) -> Tuple[Dict[str, Any], 'jax.export.Exported']:
  """Reads a file written by `write_exported`: ``(header, Exported)``."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'exported model not found: {path!r}')
  with open(path, 'rb') as f:
    raw = f.read()
  if raw[:8] != MAGIC:
    raise ValueError(f'{path!r} is not an fmn_jax exported model (magic {raw[:8]!r}, '
                     f'expected {MAGIC!r})')
  if len(raw) < 12:
    raise ValueError(f'{path!r}: truncated header')
  (n,) = struct.unpack('<I', raw[8:12])
  try:
    header = json.loads(raw[12:12 + n].decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path!r}: damaged JSON header ({e})') from None
  if header.get('format_version', 0) > FORMAT_VERSION:
    raise ValueError(f'{path!r}: format_version {header["format_version"]} is newer than this '
                     f'reader ({FORMAT_VERSION})')
  _require_flatbuffers()
  try:
    exported = jax.export.deserialize(bytearray(raw[12 + n:]))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{path!r}: cannot deserialize the exported function '
                     f'({type(e).__name__}: {e}); written with jax {header.get("jax_version")}, '
                     f'reading with jax {jax.__version__}') from None
  return header, exported


class ExportedModel:
  """A loaded export: call it on uint8 RGB images [N, H, W, 3] -> dict of numpy arrays.

  Attributes:
    header: the JSON header (input_size, normalization, descriptor_dim, outputs, ...).
    exported: the `jax.export.Exported` object.
  """

  def __init__(self, header: Dict[str, Any], exported: 'jax.export.Exported', path: str = ''):
    self.header = header
    self.exported = exported
    self.path = path
    self.input_size = tuple(header['input_size'])
    self.batch_size = header.get('batch_size')  # None: symbolic batch
    self._call = jax.jit(exported.call)

  def __call__(self, images: np.ndarray, batch_size: int = 256) -> Dict[str, np.ndarray]:
    """Runs the exported function on ``images`` (uint8 [N, H, W, 3] at ``input_size``)."""
    images = np.asarray(images)
    h, w = self.input_size
    if images.ndim != 4 or images.shape[1:] != (h, w, 3):
      raise ValueError(f'{self.path or "exported model"}: expected uint8 images [N, {h}, {w}, 3] '
                       f'(resize with fmn_jax.images.resize or PIL), got shape {images.shape}')
    if images.dtype != np.uint8:
      raise ValueError(f'{self.path or "exported model"}: expected uint8 images, got '
                       f'{images.dtype}')
    n = images.shape[0]
    if n == 0:
      raise ValueError(f'{self.path or "exported model"}: no images (batch of size 0)')
    step = int(self.batch_size or batch_size)
    outs = []
    for start in range(0, n, step):
      chunk = images[start:start + step]
      k = chunk.shape[0]
      if self.batch_size and k < step:  # Fixed-batch export: pad the last chunk.
        chunk = np.concatenate([chunk, np.zeros((step - k,) + chunk.shape[1:], np.uint8)])
      out = jax.tree_util.tree_map(lambda a, k=k: np.asarray(a)[:k], self._call(chunk))
      outs.append(out)
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *outs)

  def descriptors(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Just the Eq. 6 descriptors [N, descriptor_dim]."""
    return self(images, batch_size)['descriptor']


def load_exported(path: str) -> ExportedModel:
  """Loads a file written by ``python -m fmn_jax.export`` (needs only jax and numpy)."""
  header, exported = read_exported(path)
  return ExportedModel(header, exported, path)


# ----------------------------------------------------------------------------------------------
# Exporting a trained run (needs the model code; the loader above does not).


def inference_function(model, variables, config) -> Callable[[jnp.ndarray], Dict[str, Any]]:
  """``images uint8 [B, H, W, 3] -> {'descriptor', 'g', 'l'}`` with ``variables`` as constants.

  The body is the evaluation forward of ``features.make_feature_fn`` (``preprocess_eval`` resize
  and normalisation, FMN forward, flip averaging per ``config.eval.flip``, Eq. 6 descriptor), so
  the exported descriptors are those of evaluation and ``fmn_jax.extract``.
  """
  # pylint: disable=g-import-not-at-top
  from fmn_jax import features
  from fmn_jax import parallel
  jitted = features.make_feature_fn(model, config, parallel.create_mesh())
  forward = getattr(jitted, '__wrapped__', None)
  if forward is None:
    raise RuntimeError('features.make_feature_fn did not return a jax.jit-wrapped function')
  variables = jax.tree_util.tree_map(jnp.asarray, variables)

  def fn(images):
    g, l, desc = forward(variables, images)
    return {'descriptor': desc, 'g': g, 'l': l}

  return fn


def export_model(model, variables, config, *, input_size: Optional[Tuple[int, int]] = None,
                 platforms: Sequence[str] = DEFAULT_PLATFORMS,
                 batch_size: Optional[int] = None) -> Tuple['jax.export.Exported', Dict[str, Any]]:
  """Exports a trained FMN's inference function; returns ``(Exported, header)``.

  Args:
    model, variables, config: from ``workdir.restore_model(workdir)``.
    input_size: (H, W) of the uint8 images the function takes (default
      ``config.input.image_size``; another size is resized inside, bilinearly, as in evaluation).
    platforms: lowering platforms.
    batch_size: None for a symbolic batch dimension; if exporting with a symbolic batch fails,
      a fixed batch of ``config.eval.batch_size`` is used (the loader pads).
  """
  size = tuple(int(s) for s in (input_size or config.input.image_size))
  fn = inference_function(model, variables, config)
  try:
    exported = export_function(fn, size, platforms=platforms, batch_size=batch_size)
  except Exception as e:  # pylint: disable=broad-except
    if batch_size is not None:
      raise
    batch_size = int(config.eval.batch_size)
    logging.warning('symbolic batch export failed (%s: %s); exporting a fixed batch of %d',
                    type(e).__name__, e, batch_size)
    exported = export_function(fn, size, platforms=platforms, batch_size=batch_size)
  out = exported.out_avals
  names = sorted(['descriptor', 'g', 'l'])  # Dict outputs are flattened in sorted key order.
  dims = {k: int(a.shape[-1]) for k, a in zip(names, out)}
  header = {
      'input_size': list(size),
      'input': 'uint8 RGB images [N, H, W, 3]',
      'model_image_size': [int(s) for s in config.input.image_size],
      'normalization': str(config.input.normalization),
      'flip': bool(config.eval.flip),
      'alpha': float(config.model.alpha),
      'outputs': names,
      'descriptor_dim': dims['descriptor'],
      'g_dim': dims['g'],
      'l_dim': dims['l'],
      'batch_size': batch_size,
      'model': {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in config.model.to_dict().items()},
  }
  return exported, header


def main(argv):
  cpu.configure()
  from absl import flags  # pylint: disable=g-import-not-at-top
  from fmn_jax import tool_flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  out = tool_flags.expand_path(f.out)
  size = None
  if f.input_size:
    try:
      size = tuple(int(s) for s in f.input_size.split(','))
      assert len(size) == 2 and min(size) > 0
    except (ValueError, AssertionError):
      raise ValueError(f'--input_size must be H,W (positive integers), got {f.input_size!r}'
                       ) from None
  platforms = parse_platforms(f.platforms)  # Checked before the (slow) restore.
  model, variables, config = tool_flags.restore_from_flags()
  exported, header = export_model(model, variables, config, input_size=size,
                                  platforms=platforms, batch_size=f.batch_size or None)
  header['workdir'] = os.path.abspath(tool_flags.expand_path(f.workdir))
  write_exported(out, exported, header)
  print(f'wrote {out} ({os.path.getsize(out) / 2**20:.1f} MiB): uint8 '
        f'[N, {header["input_size"][0]}, {header["input_size"][1]}, 3] -> descriptor '
        f'[N, {header["descriptor_dim"]}], platforms {",".join(platforms)}, '
        f'batch {"any" if header["batch_size"] is None else header["batch_size"]}')


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from fmn_jax import tool_flags  # pylint: disable=g-import-not-at-top
  tool_flags.define_workdir_flags()
  flags.DEFINE_string('out', 'fmn.jaxexp', 'Output file.')
  flags.DEFINE_string('input_size', '', 'H,W of the input images (default: the model input '
                      'size config.input.image_size).')
  flags.DEFINE_string('platforms', ','.join(DEFAULT_PLATFORMS),
                      f'Comma-separated lowering platforms ({", ".join(PLATFORMS)}).')
  flags.DEFINE_integer('batch_size', 0, 'Fixed batch size (0: any batch size).')


if __name__ == '__main__':
  from fmn_jax import tool_flags  # pylint: disable=g-import-not-at-top
  tool_flags.run_cli(main, _define_flags)
