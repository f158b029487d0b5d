"""Convolutions of `models` on the CPU: XLA:CPU's convolution, or a matrix product of patches.

XLA:CPU rewrites a 3x3 convolution whose output is smaller than the kernel in a dimension (as
ResNet-50's res5 at 128x64 input: 4x2 maps) into a convolution with input and kernel swapped
(`window={size=4x2 ...rhs_reversal}`, dim_labels 01fb_o01i->f01b), which it runs at under
1 GFLOP/s: 1.5 s of a 1.7 s forward of a res5 block at batch 32. `cpu_conv` computes such
convolutions as one matrix product of the gathered kernel-sized patches (the library's fast
dot), with `cpu.enabled()` and the CPU backend; everything else goes to
`lax.conv_general_dilated`. Same parameters, results equal within float32 rounding.
"""

import functools

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
  """`lax.conv_general_dilated`, or on the CPU with `cpu.enabled()` the patch matrix product
  for the shapes of `use_patch_matmul` (equal within float32 rounding)."""
  conv = functools.partial(jax.lax.conv_general_dilated, lhs, rhs, window_strides, padding,
                           lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                           dimension_numbers=dimension_numbers,
                           feature_group_count=feature_group_count, precision=precision,
                           **kwargs)
  plain = (lhs.ndim == 4 and feature_group_count == 1 and not kwargs
           and all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
           and not isinstance(padding, str) and _nhwc_hwio(dimension_numbers, lhs.ndim))
  if not plain or not cpu.enabled() or jax.default_backend() != 'cpu':
    return conv()
  padding = tuple(tuple(p) for p in padding)
  if not use_patch_matmul(lhs.shape[1:3], rhs.shape[:2], tuple(window_strides), padding):
    return conv()
  return _patch_matmul(lhs, rhs, tuple(window_strides), padding, precision)
