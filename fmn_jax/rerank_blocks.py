"""Blockwise access to the distances that k-reciprocal re-ranking reads (`fmn_jax.rerank`).

T is O = [[qq, qg], [qg^T, gg]] squared (in the inputs' dtype, then float32), never formed
whole: row i of T is row i of O, [qq[i], qg[i]] for a query and [qg[:, j], gg[j]] for gallery
item j. (The reference takes column i, which is the same for the symmetric qq and gg that
distance matrices are; `check_symmetric` rejects inputs that are not.) A source reads T from
numpy matrices streamed to the device block by block (`HostSource`) or from jax arrays in place
(`DeviceSource`):

* ``pass1(start, b, gallery, k)``: the top-k neighbours, row maxima and finiteness of b rows;
* ``gather(i, e)``: T[i, e] for index arrays;
* ``qg_rows(start, b)``: T of b query rows against the gallery.

The batching helpers keep the number of jit shapes small: `round_up` (widths), `block_starts`
(equal blocks), `map_rows` (equal row batches), `sort_with_payload` (a fast stable sort).
`PhaseTimer` times the steps.
"""

import functools
import time
from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

_F32 = jnp.float32
_I32 = jnp.int32
_INT32_MAX = 2**31 - 1


def div(x, y):
  """x / y (y broadcast to x) with IEEE division, as NumPy computes it.

  XLA rewrites a division by a broadcast or constant into a multiplication by the reciprocal,
  which is 1 ulp off for about a quarter of the values; the barrier keeps the true division.
  """
  return x / lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(y, x.dtype), x.shape))


def block_elements() -> int:
  """Elements per [rows, N] work block.

  On the CPU, blocks under ~16 MiB are much faster: larger buffers are freshly mapped (and
  page-faulted) for every block instead of being reused.
  """
  return 2**22 if jax.default_backend() == 'cpu' else 2**25


def block_starts(n: int, b: int):
  """Starts of blocks of size b covering [0, n); the last one is moved back to n - b."""
  return [min(s, n - b) for s in range(0, n, b)]


def round_up(n: int, minimum: int = 8) -> int:
  """Rounds n up to a multiple of max(minimum, ~n/16) (few distinct jit shapes, <7% waste)."""
  n = max(int(n), 1)
  q = max(minimum, 1 << max(n.bit_length() - 4, 0))
  return -(-n // q) * q


def sort_with_payload(keys, payload, key_bound: int):
  """Stable sort of int32 keys in [0, key_bound] along the last axis, carrying a payload.

  When key_bound * width fits in int32, the position is packed into the key (one plain integer
  sort, much faster than a two-operand sort on the CPU).
  """
  width = keys.shape[-1]
  if (key_bound + 1) * width <= _INT32_MAX:
    packed = jnp.sort(keys * width + jnp.arange(width, dtype=_I32), axis=-1)
    pos = packed % width
    return packed // width, jnp.take_along_axis(payload, pos, axis=-1)
  return lax.sort((keys, payload), dimension=keys.ndim - 1, num_keys=1, is_stable=True)


def map_rows(fn, n: int, batch: int, *args, **static):
  """Applies fn(*args, rows, **static) to batches of row indices; outputs stacked to n rows.

  The last batch is padded with row n - 1, so every call has the same static shape (a single,
  small compilation and bounded memory).
  """
  batch = min(batch, n)
  outs = [fn(*args, np.minimum(np.arange(s, s + batch), n - 1).astype(np.int32), **static)
          for s in range(0, n, batch)]
  if len(outs) == 1:
    return outs[0]
  return jax.tree.map(lambda *xs: jnp.concatenate(xs)[:n], *outs)


class PhaseTimer:
  """Seconds of each phase into ``timings`` when it is a dict (the device synchronised first)."""

  def __init__(self, timings: Optional[dict]):
    self.timings = timings
    self.last = time.perf_counter()

  def mark(self, name: str, *arrays) -> None:
    if self.timings is None:
      return
    jax.block_until_ready(arrays)
    now = time.perf_counter()
    self.timings[name] = now - self.last
    self.last = now


def _square(t, square: bool):
  t = t.astype(_F32)
  return t * t if square else t


def _pass1(left, right, square: bool, k: int):
  """Top-k neighbours and row maxima of T rows given as left [b, nq] and right [b, ng] parts.

  Each part is searched on its own and the two candidate lists merged, which avoids
  materialising the concatenated [b, N] block. Ties go to the lower column index, as in one
  `lax.top_k` over the whole row.
  """
  left, right = _square(left, square), _square(right, square)
  rowmax = jnp.maximum(jnp.max(left, axis=1), jnp.max(right, axis=1))
  finite = jnp.isfinite(rowmax)  # squares are >= 0; max propagates NaN
  il = lax.top_k(-div(left, rowmax[:, None]), min(k, left.shape[1]))[1]
  ir = lax.top_k(-div(right, rowmax[:, None]), min(k, right.shape[1]))[1]
  idx = jnp.concatenate([il, ir + left.shape[1]], axis=1)
  vals = div(jnp.concatenate([jnp.take_along_axis(left, il, axis=1),
                              jnp.take_along_axis(right, ir, axis=1)], axis=1), rowmax[:, None])
  _, pick = lax.top_k(-vals, k)
  return jnp.take_along_axis(idx, pick, axis=1).astype(_I32), rowmax, finite


@functools.partial(jax.jit, static_argnames=('left_t', 'square', 'k'))
def _pass1_host(left, right, *, left_t, square, k):
  return _pass1(left.T if left_t else left, right, square, k)


@functools.partial(jax.jit, static_argnames=('gallery', 'b', 'square', 'k'))
def _pass1_device(qq, qg, gg, start, *, gallery, b, square, k):
  if gallery:
    left = lax.dynamic_slice_in_dim(qg, start, b, axis=1).T
    right = lax.dynamic_slice_in_dim(gg, start, b, axis=0)
  else:
    left = lax.dynamic_slice_in_dim(qq, start, b, axis=0)
    right = lax.dynamic_slice_in_dim(qg, start, b, axis=0)
  return _pass1(left, right, square, k)


@functools.partial(jax.jit, static_argnames=('square',))
def _gather_device(qq, qg, gg, i, e, *, square):
  """T[i, e] = O[i, e] for index arrays i, e (all < N)."""
  nq = qq.shape[0]
  iq, eq = i < nq, e < nq
  ig, eg = jnp.maximum(i - nq, 0), jnp.maximum(e - nq, 0)
  ic, ec = jnp.minimum(i, nq - 1), jnp.minimum(e, nq - 1)
  t = jnp.where(iq, jnp.where(eq, qq[ic, ec], qg[ic, eg]),
                jnp.where(eq, qg[ec, ig], gg[ig, eg]))
  return _square(t, square)


def check_symmetric(name: str, a, num_samples: int = 4096, seed: int = 0) -> None:
  """Rejects a q_q / g_g matrix that is clearly not symmetric (checked on sampled pairs)."""
  n = a.shape[0]
  rng = np.random.default_rng(seed)
  i = rng.integers(0, n, num_samples)
  j = rng.integers(0, n, num_samples)
  x, y = np.asarray(a[i, j], np.float64), np.asarray(a[j, i], np.float64)
  scale = max(float(np.max(np.abs(x))), 1e-30)
  bad = np.abs(x - y) > 1e-4 * np.maximum(np.abs(x), np.abs(y)) + 1e-6 * scale
  if bad.any():
    r = int(np.argmax(bad))
    raise ValueError(f'{name} must be a symmetric distance matrix: {name}[{i[r]}, {j[r]}] = '
                     f'{x[r]} but {name}[{j[r]}, {i[r]}] = {y[r]}')


class HostSource:
  """T from numpy matrices, streamed to the device block by block (never copied whole)."""

  def __init__(self, q_g, q_q, g_g, squared_inputs: bool):
    self.qg, self.qq, self.gg = q_g, q_q, g_g
    # The reference concatenates (promoting to a common dtype), squares in that dtype, then
    # casts to float32. For float32 this is the same as squaring on the device; other dtypes
    # are squared here.
    self.dtype = np.result_type(q_g, q_q, g_g)
    self.host_square = not squared_inputs and self.dtype != np.float32
    self.device_square = not squared_inputs and not self.host_square

  def _prep(self, a):
    if self.host_square:
      a = np.square(a.astype(self.dtype, copy=False))
    return jnp.asarray(np.ascontiguousarray(a, dtype=np.float32))

  def pass1(self, start, b, gallery, k):
    if gallery:
      left, right = self.qg[:, start:start + b], self.gg[start:start + b]
    else:
      left, right = self.qq[start:start + b], self.qg[start:start + b]
    return _pass1_host(self._prep(left), self._prep(right), left_t=gallery,
                       square=self.device_square, k=k)

  def gather(self, i, e):
    i, e = np.asarray(i), np.asarray(e)
    nq = self.qq.shape[0]
    out = np.empty(i.shape, self.dtype)
    iq, eq = i < nq, e < nq
    for m, a, r, c in ((iq & eq, self.qq, i, e), (iq & ~eq, self.qg, i, e - nq),
                       (~iq & eq, self.qg, e, i - nq), (~iq & ~eq, self.gg, i - nq, e - nq)):
      out[m] = a[r[m], c[m]]
    return _square(self._prep(out), self.device_square)

  def qg_rows(self, start, b):
    return _square(self._prep(self.qg[start:start + b]), self.device_square)


class DeviceSource:
  """T from jax arrays already on the device (no host round trip)."""

  def __init__(self, q_g, q_q, g_g, squared_inputs: bool):
    self.qg, self.qq, self.gg = q_g, q_q, g_g
    self.square = not squared_inputs

  def pass1(self, start, b, gallery, k):
    return _pass1_device(self.qq, self.qg, self.gg, start, gallery=gallery, b=b,
                         square=self.square, k=k)

  def gather(self, i, e):
    return _gather_device(self.qq, self.qg, self.gg, jnp.asarray(i), jnp.asarray(e),
                          square=self.square)

  def qg_rows(self, start, b):
    return _square(lax.dynamic_slice_in_dim(self.qg, start, b, axis=0), self.square)


def make_source(q_g_dist, q_q_dist, g_g_dist, squared_inputs: bool):
  """Checks shapes and picks where T is read from (device arrays stay on the device)."""
  on_device = isinstance(g_g_dist, jax.Array)
  conv = jnp.asarray if on_device else np.asarray
  qg, qq, gg = conv(q_g_dist), conv(q_q_dist), conv(g_g_dist)
  for name, a in (('q_g_dist', qg), ('q_q_dist', qq), ('g_g_dist', gg)):
    if a.ndim != 2:
      raise ValueError(f'{name} must be 2-D, got shape {tuple(a.shape)}')
    if not jnp.issubdtype(a.dtype, jnp.floating):
      raise ValueError(f'{name} must hold floating-point distances, got dtype {a.dtype}')
  nq, ng = qg.shape
  if nq == 0 or ng == 0:
    raise ValueError(f'q_g_dist is empty (shape {tuple(qg.shape)})')
  if tuple(qq.shape) != (nq, nq):
    raise ValueError(f'q_q_dist must be [{nq}, {nq}] for q_g_dist {tuple(qg.shape)}, got '
                     f'{tuple(qq.shape)}')
  if tuple(gg.shape) != (ng, ng):
    raise ValueError(f'g_g_dist must be [{ng}, {ng}] for q_g_dist {tuple(qg.shape)}, got '
                     f'{tuple(gg.shape)}')
  check_symmetric('q_q_dist', qq)
  check_symmetric('g_g_dist', gg)
  cls = DeviceSource if on_device else HostSource
  return cls(qg, qq, gg, squared_inputs), nq, ng
