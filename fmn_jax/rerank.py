"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), jitted and sparse, for Market-1501 scale and beyond.

It computes what the reference `re_ranking_ranklist.re_ranking(q_g_dist, q_q_dist, g_g_dist,
k1, k2, lambda_value)` computes, step for step, without its dense N x N work arrays
(N = num_query + num_gallery):

1. O = [[qq, qg], [qg^T, gg]] is squared in the input dtype and cast to float32 (T); each row
   of T is divided by its maximum over all N items (the reference divides by `max(axis=0)` and
   transposes, the same for the symmetric qq and gg that distance matrices are).
2. Only the max(k1+1, k2) nearest neighbours of every row are needed: they are found block by
   block with `lax.top_k` (ties to the lower index), so no N x N array is ever formed.
3. R(i) = members of top-(k1+1)(i) that have i in their own top-(k1+1). For every c in R(i),
   R_half(c) (the same with the top round(k1/2)+1) is added when
   |R_half(c) & R(i)| > 2/3 |R_half(c)|. V[i, e] = exp(-d[i, e]) / sum over the expanded set,
   d = the row-normalised T.
4. Query expansion: V[i] = mean of V over the first k2 neighbours of i (i itself included).
5. Jaccard for the query rows: S[i, j] = sum_k min(V[i, k], V[j, k]), jaccard = 1 - S / (2 - S).
6. final = (1 - lambda) jaccard + lambda d, query rows x gallery columns, float32.

The rows of V are fixed-width index/value arrays whose width is the exact largest row count
(nothing is ever truncated), so every step is a static-shape jitted function; the Jaccard
sum runs over the (query entry, column entry) pairs of an inverted index and accumulates, like
the reference, in float32 in ascending column order. Divisions are IEEE float32 divisions, as
NumPy's. Inputs are non-squared distances, like the reference's; `rerank_features` starts from
features instead (the reference MATLAB pipeline: L2-normalised features, squared Euclidean
distance).
"""

import functools
import time
from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fmn_jax import metrics

_F32 = jnp.float32
_I32 = jnp.int32
_INT32_MAX = 2**31 - 1


def _round_up(n: int, minimum: int = 8) -> int:
  """Rounds n up to a multiple of max(minimum, ~n/16) (few distinct jit shapes, <7% waste)."""
  n = max(int(n), 1)
  q = max(minimum, 1 << max(n.bit_length() - 4, 0))
  return -(-n // q) * q


def _div(x, y):
  """x / y (y broadcast to x) with IEEE division, as NumPy computes it.

  XLA rewrites a division by a broadcast or constant into a multiplication by the reciprocal,
  which is 1 ulp off for about a quarter of the values; the barrier keeps the true division.
  """
  return x / lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(y, x.dtype), x.shape))


def _block_elements() -> int:
  """Elements per [rows, N] work block.

  On the CPU, blocks under ~16 MiB are much faster: larger buffers are freshly mapped (and
  page-faulted) for every block instead of being reused.
  """
  return 2**22 if jax.default_backend() == 'cpu' else 2**25


def _block_starts(n: int, b: int):
  """Starts of blocks of size b covering [0, n); the last one is moved back to n - b."""
  return [min(s, n - b) for s in range(0, n, b)]


# ----------------------------------------------------------------------------------------------
# Access to T (squared O, not yet row-normalised) from the three input matrices.
#
# Row i of T is row i of O = [[qq, qg], [qg^T, gg]]: query rows are [qq[i], qg[i]], gallery
# rows [qg[:, j], gg[j]]. (The reference takes column i, which is the same for the symmetric
# qq and gg that distance matrices are; `_check_symmetric` rejects inputs that are not.)


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
  il = lax.top_k(-_div(left, rowmax[:, None]), min(k, left.shape[1]))[1]
  ir = lax.top_k(-_div(right, rowmax[:, None]), min(k, right.shape[1]))[1]
  idx = jnp.concatenate([il, ir + left.shape[1]], axis=1)
  vals = _div(jnp.concatenate([jnp.take_along_axis(left, il, axis=1),
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


def _check_symmetric(name: str, a, num_samples: int = 4096, seed: int = 0) -> None:
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


class _HostSource:
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


class _DeviceSource:
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


# ----------------------------------------------------------------------------------------------
# Sparse steps (rows in batches, to bound memory and compilation).


def _sort_with_payload(keys, payload, key_bound: int):
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


def _map_rows(fn, n: int, batch: int, *args, **static):
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


@functools.partial(jax.jit, static_argnames=('kh',))
def _half_sets(top, *, kh):
  """R_half of every row as a mask over top[:, :kh], and its size."""
  top_h = top[:, :kh]
  rows = jnp.arange(top.shape[0], dtype=_I32)
  half_mask = jnp.any(top_h[top_h] == rows[:, None, None], axis=-1)
  return half_mask, jnp.sum(half_mask, axis=-1).astype(_I32)


@jax.jit
def _expansion_rows(top, half_mask, half_count, rows):
  """Sorted unique members of the expanded k-reciprocal sets of `rows`, padded with N.

  Args:
    top: [N, k] nearest neighbours (k = k1 + 1), nearest first.
    half_mask, half_count: `_half_sets` (kh = round(k1 / 2) + 1 columns).
    rows: [B] row indices.
  Returns:
    ([B, k + k * kh] int32 members then N, [B] int32 counts).
  """
  n = top.shape[0]
  kh = half_mask.shape[1]

  def one_row(i):
    nb = top[i]
    recip = jnp.any(top[nb] == i, axis=-1)                               # nb in R(i)
    hc, hm = top[nb, :kh], half_mask[nb]                                 # R_half(nb), [k, kh]
    in_r = jnp.any((hc[:, :, None] == nb[None, None, :]) & recip[None, None, :], axis=-1)
    inter = jnp.sum(hm & in_r, axis=-1)
    # |R_half(c) & R(i)| > 2/3 |R_half(c)|, exact in integers.
    take = recip & (3 * inter > 2 * half_count[nb])
    cand = jnp.concatenate([jnp.where(recip, nb, n),
                            jnp.where(take[:, None] & hm, hc, n).reshape(-1)])
    s = jnp.sort(cand)
    dup = jnp.concatenate([jnp.zeros((1,), bool), s[1:] == s[:-1]])
    s = jnp.sort(jnp.where(dup, n, s))
    return s, jnp.sum(s < n).astype(_I32)

  return jax.vmap(one_row)(rows)


@jax.jit
def _kr_weights(t_vals, rowmax, valid):
  """V rows: exp(-T[i, e] / rowmax[i]) normalised over the valid entries."""
  d = _div(t_vals, rowmax[:, None])
  w = jnp.where(valid, jnp.exp(-d), 0.0)
  s = jnp.sum(w, axis=1, keepdims=True)
  return jnp.where(valid, _div(w, jnp.where(s > 0, s, 1.0)), 0.0)


@functools.partial(jax.jit, static_argnames=('kq',))
def _qe_rows(top, idx, val, rows, *, kq):
  """V_qe[i] = mean of V over top[i, :kq] for i in rows; sorted, width kq * W, padded with N."""
  n, w = idx.shape
  length = kq * w

  def one_row(i):
    nb = top[i, :kq]
    keys, vals = _sort_with_payload(idx[nb].reshape(-1), val[nb].reshape(-1), n)
    start = jnp.concatenate([jnp.ones((1,), bool), keys[1:] != keys[:-1]])
    seg = jnp.cumsum(start) - 1
    out_idx = jnp.full((length,), n, _I32).at[seg].set(keys)
    # Entries of one column are added in neighbour order (the sort is stable), as the
    # reference's float32 mean does.
    out_val = jnp.zeros((length,), _F32).at[seg].add(vals)
    return out_idx, _div(out_val, kq), jnp.sum(start & (keys < n)).astype(_I32)

  return jax.vmap(one_row)(rows)


@jax.jit
def _inverted_index(idx, val):
  """Entries of V grouped by column, rows ascending: (rows, values, col_start, col_count)."""
  n, w = idx.shape
  cols = idx.reshape(-1)
  order = jnp.argsort(cols, stable=True)
  col_count = jnp.zeros((n + 1,), _I32).at[cols].add(1)[:n]
  col_start = jnp.cumsum(col_count) - col_count
  return (order // w).astype(_I32), val.reshape(-1)[order], col_start, col_count


@jax.jit
def _pair_counts(q_idx, col_count):
  n = col_count.shape[0]
  return jnp.where(q_idx < n, col_count[jnp.minimum(q_idx, n - 1)], 0)


@functools.partial(jax.jit, static_argnames=('qb', 'num_pairs'))
def _jaccard_final_block(q_idx, q_val, counts, col_start, ent_rows, ent_vals, rowmax, t_qg,
                         start, w_jaccard, w_dist, *, qb, num_pairs):
  """Final distances [qb, ng] and Jaccard distances [qb, N] of query rows start .. start+qb.

  Args:
    q_idx, q_val: [nq, W] rows of V (after query expansion) of the queries.
    counts: [nq, W] entries in each query entry's column (its pairs).
    col_start, ent_rows, ent_vals: `_inverted_index`.
    rowmax: [nq] row maxima of T.
    t_qg: [qb, ng] T of the block's query-gallery distances.
    start: first query row of the block.
  """
  n = col_start.shape[0]
  nq = q_idx.shape[0]
  q_idx = lax.dynamic_slice_in_dim(q_idx, start, qb)
  q_val = lax.dynamic_slice_in_dim(q_val, start, qb)
  counts = lax.dynamic_slice_in_dim(counts, start, qb).reshape(-1)
  w = q_idx.shape[1]
  offsets = jnp.cumsum(counts) - counts
  e = jnp.repeat(jnp.arange(qb * w, dtype=_I32), counts, total_repeat_length=num_pairs)
  p = jnp.arange(num_pairs, dtype=_I32)
  ok = p < jnp.sum(counts)
  col = jnp.minimum(q_idx.reshape(-1)[e], n - 1)
  src = jnp.clip(col_start[col] + p - offsets[e], 0, ent_rows.shape[0] - 1)
  contrib = jnp.where(ok, jnp.minimum(q_val.reshape(-1)[e], ent_vals[src]), 0.0)
  # Pairs come in ascending column order for each (query, row): the float32 sums accumulate
  # in the reference's order.
  s = jnp.zeros((qb, n), _F32).at[e // w, ent_rows[src]].add(contrib)
  jaccard = 1.0 - s / (2.0 - s)
  d = _div(t_qg, lax.dynamic_slice_in_dim(rowmax, start, qb)[:, None])
  return jaccard[:, nq:] * w_jaccard + d * w_dist, jaccard


# ----------------------------------------------------------------------------------------------
# Driver.


def _check_params(k1, k2, lambda_value):
  for name, v in (('k1', k1), ('k2', k2)):
    if isinstance(v, bool) or int(v) != v or v < 1:
      raise ValueError(f'{name} must be a positive integer, got {v!r}')
  if not 0.0 <= float(lambda_value) <= 1.0:
    raise ValueError(f'lambda_value must lie in [0, 1], got {lambda_value!r}')


def _rerank(src, nq: int, ng: int, k1: int, k2: int, lambda_value: float,
            block_rows: Optional[int] = None, intermediates: bool = False,
            timings: Optional[dict] = None):
  """Runs the re-ranking on a _HostSource / _DeviceSource; see the module docstring.

  timings: if a dict, receives the seconds of each phase (the phases are synchronised anyway).
  """
  clock = [time.perf_counter()]

  def mark(name, *arrays):
    if timings is not None:
      jax.block_until_ready(arrays)
      now = time.perf_counter()
      timings[name] = now - clock[0]
      clock[0] = now

  n = nq + ng
  k = min(int(k1) + 1, n)
  kh = min(int(np.around(k1 / 2.)) + 1, n)
  kq = min(int(k2), n)
  # The table holds the first max(k1 + 1, k2) neighbours: the reciprocal sets read its first
  # k1 + 1 columns, the query expansion its first k2 (which may be more, e.g. k1=3, k2=6).
  kt = max(k, kq)
  if block_rows is None:
    block_rows = max(1, min(1024, _block_elements() // n))

  # Pass 1: nearest neighbours and row maxima, block by block.
  top = np.empty((n, kt), np.int32)
  rowmax = np.empty((n,), np.float32)
  finite = np.empty((n,), bool)
  pending = []

  def collect():
    s, b, (idx, m, f) = pending.pop(0)
    top[s:s + b] = np.asarray(idx)
    rowmax[s:s + b] = np.asarray(m)
    finite[s:s + b] = np.asarray(f)

  for offset, size, gallery in ((0, nq, False), (nq, ng, True)):
    b = min(block_rows, size)
    for s in _block_starts(size, b):
      # Dispatched asynchronously; at most two blocks in flight bound the memory.
      pending.append((offset + s, b, src.pass1(s, b, gallery, kt)))
      if len(pending) > 2:
        collect()
  while pending:
    collect()
  for bad, what in ((~finite, 'a non-finite distance'), (~(rowmax > 0), 'only zero distances')):
    if bad.any():
      r = int(np.argmax(bad))
      row = f'query {r}' if r < nq else f'gallery item {r - nq}'
      raise ValueError(f'k-reciprocal re-ranking: the distances of {row} contain {what}')
  mark('neighbours')

  # k-reciprocal expansion sets and their weights.
  top_d = jnp.asarray(top)
  top_k1 = top_d[:, :k]
  half_mask, half_count = _half_sets(top_k1, kh=kh)
  cand, count = _map_rows(_expansion_rows, n, 2048, top_k1, half_mask, half_count)
  w1 = min(_round_up(int(jnp.max(count))), cand.shape[1])
  idx1 = cand[:, :w1]
  rows = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None], (n, w1))
  idx1_h = np.asarray(idx1)
  t_vals = src.gather(rows, np.minimum(idx1_h, n - 1))
  rowmax_d = jnp.asarray(rowmax)
  val1 = _kr_weights(t_vals, rowmax_d, idx1 < n)
  mark('k-reciprocal sets', val1)

  # Local query expansion (skipped for k2 == 1, as in the reference).
  if k2 != 1:
    qe_idx, qe_val, qe_count = _map_rows(_qe_rows, n, 1024, top_d, idx1, val1, kq=kq)
    w2 = min(_round_up(int(jnp.max(qe_count))), qe_idx.shape[1])
    idx2, val2 = qe_idx[:, :w2], qe_val[:, :w2]
  else:
    idx2, val2 = idx1, val1
  mark('query expansion', idx2, val2)

  # Jaccard distance of the query rows through the inverted index, then the final mix.
  ent_rows, ent_vals, col_start, col_count = _inverted_index(idx2, val2)
  q_idx, q_val = idx2[:nq], val2[:nq]
  counts_d = _pair_counts(q_idx, col_count)
  counts = np.asarray(counts_d)
  qb = max(1, min(nq, _block_elements() // n))
  starts = _block_starts(nq, qb)
  num_pairs = _round_up(max(int(counts[s:s + qb].sum()) for s in starts), 1024)
  mark('inverted index')
  if timings is not None:
    timings['widths'] = (w1, int(idx2.shape[1]), num_pairs, qb)
  w_jaccard, w_dist = np.float32(1 - lambda_value), np.float32(lambda_value)
  final = np.empty((nq, ng), np.float32)
  jaccard_all = np.empty((nq, n), np.float32) if intermediates else None
  for s in starts:
    fin, jac = _jaccard_final_block(q_idx, q_val, counts_d, col_start, ent_rows, ent_vals,
                                    rowmax_d, src.qg_rows(s, qb), np.int32(s), w_jaccard, w_dist,
                                    qb=qb, num_pairs=num_pairs)
    final[s:s + qb] = np.asarray(fin)
    if intermediates:
      jaccard_all[s:s + qb] = np.asarray(jac)
  mark('jaccard + final')
  if not intermediates:
    return final
  return final, {
      'initial_rank_top': top, 'rowmax': rowmax,
      'V_kr': (idx1_h, np.asarray(val1)), 'V_qe': (np.asarray(idx2), np.asarray(val2)),
      'jaccard': jaccard_all, 'num_pairs': int(counts.sum()),
  }


def _make_source(q_g_dist, q_q_dist, g_g_dist, squared_inputs: bool):
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
  _check_symmetric('q_q_dist', qq)
  _check_symmetric('g_g_dist', gg)
  cls = _DeviceSource if on_device else _HostSource
  return cls(qg, qq, gg, squared_inputs), nq, ng


def k_reciprocal_rerank(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6,
                        lambda_value=0.3) -> np.ndarray:
  """k-reciprocal re-ranked distances, as the reference `re_ranking(q_g, q_q, g_g, ...)`.

  The inputs are NON-squared distances (the reference squares them, then row-normalises). To
  reproduce the reference MATLAB pipeline, pass Euclidean distances of L2-normalised features
  (or use `rerank_features`).

  Memory: the inputs are read block by block (numpy arrays are streamed to the device, jax
  arrays are sliced in place); besides the output, the work arrays are O(N * (k1 + 1) * k2)
  plus one block of rows. Market-1501 scale (N = 23,100) stays within a few GB on the CPU.

  Args:
    q_g_dist: [nq, ng] query-gallery distances (numpy or jax array).
    q_q_dist: [nq, nq] query-query distances.
    g_g_dist: [ng, ng] gallery-gallery distances. If it is a jax array, all three are read on
      its device.
    k1, k2, lambda_value: the reference's parameters (paper: 20, 6, 0.3).
  Returns:
    [nq, ng] float32 numpy array, values in [0, 1].
  """
  _check_params(k1, k2, lambda_value)
  src, nq, ng = _make_source(q_g_dist, q_q_dist, g_g_dist, squared_inputs=False)
  return _rerank(src, nq, ng, int(k1), int(k2), float(lambda_value))


@jax.jit
def _l2_normalize(x):
  x = x.astype(_F32)
  return _div(x, jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12))


def rerank_features(qf, gf, k1=20, k2=6, lambda_value=0.3) -> np.ndarray:
  """Re-ranked distances from query and gallery features (the reference MATLAB pipeline).

  Features are L2-normalised (x / max(|x|, 1e-12), float32); the squared Euclidean distances
  between them (self-distances exactly 0) are computed on the device in chunks and re-ranked
  there, the same as `k_reciprocal_rerank` on their non-squared distances.

  Args:
    qf: [nq, D] query features.
    gf: [ng, D] gallery features.
    k1, k2, lambda_value: the reference's parameters (paper: 20, 6, 0.3).
  Returns:
    [nq, ng] float32 numpy array.
  """
  _check_params(k1, k2, lambda_value)
  qf, gf = jnp.asarray(qf), jnp.asarray(gf)
  for name, a in (('qf', qf), ('gf', gf)):
    metrics._check_features(name, a)  # pylint: disable=protected-access
    # Checked here: one bad feature makes every row's distances non-finite, so the distance
    # check below could not tell which item it was.
    bad = ~np.asarray(jnp.all(jnp.isfinite(a), axis=1))
    if bad.any():
      raise ValueError(f'k-reciprocal re-ranking: {name} row {int(np.argmax(bad))} has a '
                       f'non-finite value ({int(bad.sum())} such rows)')
  if qf.shape[1] != gf.shape[1]:
    raise ValueError(f'qf {tuple(qf.shape)} and gf {tuple(gf.shape)} have different feature '
                     'dimensions')
  qn, gn = _l2_normalize(qf), _l2_normalize(gf)
  sq = functools.partial(metrics.pairwise_distances_device, squared=True)
  q_g = sq(qn, gn)
  q_q = sq(qn, qn, zero_diagonal=True)
  g_g = sq(gn, gn, zero_diagonal=True)
  src = _DeviceSource(q_g, q_q, g_g, squared_inputs=True)
  return _rerank(src, q_g.shape[0], q_g.shape[1], int(k1), int(k2), float(lambda_value))
