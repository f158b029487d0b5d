"""Convolutions and pooling of `models` on the CPU: XLA:CPU's own ops, or faster equal forms.

With `cpu.enabled()` and the CPU backend (everything else goes to `lax.conv_general_dilated`
and `nn.max_pool` unchanged):
- A 3x3 convolution whose output is smaller than the kernel in a dimension (as ResNet-50's res5
  at 128x64 input: 4x2 maps) is rewritten by XLA:CPU into a convolution with input and kernel
  swapped (`window={size=4x2 ...rhs_reversal}`, dim_labels 01fb_o01i->f01b), which runs at under
  1 GFLOP/s: 1.5 s of a 1.7 s forward of a res5 block at batch 32. `cpu_conv` computes such
  convolutions as one matrix product of the gathered kernel-sized patches (the library's fast dot).
- A 1x1 convolution (half of ResNet-50's convolutions) is one matrix product over the strided
  positions, so its gradients are matrix products too: XLA:CPU's kernel gradient of a 1x1
  convolution runs about 4x slower than the same product.
- `max_pool` (the stem's 3x3/2 pool) is the maximum of the window's strided views, with the
  gradient of XLA's select-and-scatter computed from masks over the same views (12x faster).
Same parameters; convolutions equal within float32 rounding, max-pool values and gradients bit
for bit (ties included).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmn_jax import cpu


def _patch_matmul(x, kernel, strides, padding, precision):
  """NHWC x HWIO convolution as one matrix product of the gathered kernel-sized patches."""
  kh, kw, cin, cout = kernel.shape
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho = (xp.shape[1] - kh) // strides[0] + 1
  wo = (xp.shape[2] - kw) // strides[1] + 1
  patches = jnp.concatenate(
      [xp[:, i:i + strides[0] * (ho - 1) + 1:strides[0], j:j + strides[1] * (wo - 1) + 1:strides[1]]
       for i in range(kh) for j in range(kw)], axis=-1)
  y = jnp.dot(patches.reshape(-1, kh * kw * cin), kernel.reshape(kh * kw * cin, cout),
              precision=precision)
  return y.reshape(x.shape[0], ho, wo, cout)


def use_patch_matmul(input_hw, kernel_hw, strides, padding) -> bool:
  """Whether `cpu_conv` computes this convolution as a patch matrix product: a kernel larger
  than 1x1 whose output is smaller than the kernel in a dimension or has under 16 positions.
  XLA:CPU's convolution runs such shapes at under 1 GFLOP/s (a 3x3 on 4x2 maps: seconds)."""
  if tuple(kernel_hw) == (1, 1):
    return False
  out = [(n + lo + hi - k) // s + 1
         for n, k, s, (lo, hi) in zip(input_hw, kernel_hw, strides, padding)]
  return min(o - k for o, k in zip(out, kernel_hw)) < 0 or out[0] * out[1] < 16


def _nhwc_hwio(dimension_numbers, lhs_ndim) -> bool:
  want = jax.lax.conv_dimension_numbers((1,) * lhs_ndim, (1,) * lhs_ndim,
                                        ('NHWC', 'HWIO', 'NHWC'))
  return dimension_numbers == want or dimension_numbers == ('NHWC', 'HWIO', 'NHWC')


def cpu_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated`, or on the CPU with `cpu.enabled()` a matrix product: of the
  strided positions for an unpadded 1x1 kernel, of the gathered patches for the shapes of
  `use_patch_matmul` (equal within float32 rounding)."""
  conv = functools.partial(jax.lax.conv_general_dilated, lhs, rhs, window_strides, padding,
                           lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                           dimension_numbers=dimension_numbers,
                           feature_group_count=feature_group_count, precision=precision,
                           **kwargs)
  plain = (lhs.ndim == 4 and feature_group_count == 1 and not kwargs
           and all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
           and _nhwc_hwio(dimension_numbers, lhs.ndim))
  if not plain or not cpu.enabled() or jax.default_backend() != 'cpu':
    return conv()
  strides = tuple(window_strides)
  if tuple(rhs.shape[:2]) == (1, 1):
    # 'SAME' and 'VALID' pad a 1x1 kernel by nothing, at any stride.
    if isinstance(padding, str) or all(p == 0 for pair in padding for p in pair):
      return _pointwise_dot(lhs, rhs, strides, precision)
  if isinstance(padding, str):
    return conv()
  padding = tuple(tuple(p) for p in padding)
  if not use_patch_matmul(lhs.shape[1:3], rhs.shape[:2], strides, padding):
    return conv()
  return _patch_matmul(lhs, rhs, strides, padding, precision)


def _pointwise_dot(x, kernel, strides, precision):
  """An unpadded NHWC x HWIO 1x1 convolution as one matrix product over the strided positions;
  its gradients are matrix products too (XLA:CPU's kernel gradient of a 1x1 convolution runs
  about 4x slower than the same product: 28 ms against 6 ms for res2's 256->64 at batch 32)."""
  x = x[:, ::strides[0], ::strides[1]]
  cin, cout = kernel.shape[2:]
  y = jnp.dot(x.reshape(-1, cin), kernel.reshape(cin, cout), precision=precision)
  return y.reshape(x.shape[:3] + (cout,))


def _window_views(x, window, strides, padding):
  """The kh*kw strided views of `x` (padded with -inf) that a max-pool window covers, in
  row-major window order, each of the pooled map's shape."""
  (kh, kw), (sh, sw) = window, strides
  xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),), constant_values=-jnp.inf)
  ho = (xp.shape[1] - kh) // sh + 1
  wo = (xp.shape[2] - kw) // sw + 1
  return [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
          for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_views(x, window, strides, padding):
  return functools.reduce(jnp.maximum, _window_views(x, window, strides, padding))


def _max_pool_views_fwd(x, window, strides, padding):
  y = _max_pool_views(x, window, strides, padding)
  return y, (x, y)


def _max_pool_views_bwd(window, strides, padding, residuals, dy):
  """The gradient of XLA's max-pool (select-and-scatter): each window's gradient goes to its
  first maximum in row-major order, here as masks over the window views."""
  x, y = residuals
  views, transpose = jax.vjp(lambda x: _window_views(x, window, strides, padding), x)
  taken = jnp.zeros(y.shape, bool)
  parts = []
  for view in views:
    first = (view == y) & ~taken
    taken = taken | first
    parts.append(jnp.where(first, dy, jnp.zeros_like(dy)))
  return transpose(parts)


_max_pool_views.defvjp(_max_pool_views_fwd, _max_pool_views_bwd)


def max_pool(x, window, strides, padding):
  """`nn.max_pool` of an NHWC map (explicit padding, -inf), or on the CPU with `cpu.enabled()`
  the maximum of its strided window views with the same gradient: XLA:CPU's select-and-scatter
  backward of ResNet-50's pool1 takes 74 ms at 128x64 input and batch 32, the views 6 ms."""
  window, strides = tuple(window), tuple(strides)
  padding = tuple(tuple(p) for p in padding)
  if not cpu.enabled() or jax.default_backend() != 'cpu':
    return nn.max_pool(x, window, strides=strides, padding=padding)
  return _max_pool_views(x, window, strides, padding)
