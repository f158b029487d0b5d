"""fmn_jax.cpu (the CPU speed switch) and models_conv.cpu_conv: on and off give equal results."""

import functools
import os
import re
import subprocess
import sys

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fmn_jax import cpu
from fmn_jax import models
from fmn_jax import models_conv


def test_switch_reads_the_environment(monkeypatch):
  monkeypatch.delenv(cpu.ENV, raising=False)
  assert cpu.enabled() and cpu.configure()
  for off in ('0', 'false', 'OFF', 'no'):
    monkeypatch.setenv(cpu.ENV, off)
    assert not cpu.enabled() and not cpu.configure()
  assert os.environ[cpu.ENV] == '0'
  monkeypatch.setenv(cpu.ENV, 'maybe')
  with pytest.raises(ValueError, match="FMN_JAX_CPU_FAST='maybe'"):
    cpu.enabled()


class _FakeMallopt:
  def __init__(self, answer=1):
    self.calls, self.answer = [], answer

  def __call__(self, param, value):
    self.calls.append((param, value))
    return self.answer


def test_allocator_settings(monkeypatch):
  for name in cpu.MALLOC_SETTINGS:
    monkeypatch.delenv(name, raising=False)
  fake = _FakeMallopt()
  applied = cpu.configure_malloc(fake)
  assert applied == {name: value for name, (_, value) in cpu.MALLOC_SETTINGS.items()}
  assert fake.calls == list(cpu.MALLOC_SETTINGS.values())
  assert all(-2**31 <= v < 2**31 for _, v in fake.calls)        # mallopt takes a C int
  monkeypatch.setenv('MALLOC_ARENA_MAX', '4')                   # the user's setting wins
  fake = _FakeMallopt()
  assert 'MALLOC_ARENA_MAX' not in cpu.configure_malloc(fake)
  assert (-8, 1) not in fake.calls
  with pytest.raises(RuntimeError, match='MALLOC_MMAP_MAX_=0'):
    cpu.configure_malloc(_FakeMallopt(answer=0))


def test_configure_applies_the_allocator_settings_only_when_on_and_on_the_cpu(monkeypatch):
  calls = []
  monkeypatch.setattr(cpu, 'configure_malloc', lambda: calls.append(os.environ[cpu.ENV]))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  for flag in ('1', '0'):
    monkeypatch.setenv(cpu.ENV, flag)
    cpu.configure()
  monkeypatch.setenv(cpu.ENV, '1')
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')
  cpu.configure()
  assert calls == ['1']


def test_glibc_takes_the_allocator_settings():
  mallopt = cpu._mallopt()
  if mallopt is None:
    pytest.skip('not glibc: the allocator settings do not apply')
  # Setting glibc's defaults again changes nothing in this process but checks the call works.
  assert mallopt(-8, 0) == 1     # M_ARENA_MAX 0: glibc's default limit


_REUSE_SCRIPT = r"""
import ctypes, resource, sys
from fmn_jax import cpu
print(sorted(cpu.configure_malloc()))
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
n = int(sys.argv[1])
for _ in range(2):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(n)
  libc.memset(p, 1, n)
  libc.free(p)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_glibc_keeps_a_freed_block_larger_than_2_gib():
  """The heap's top above the largest int (a 256x128 training step frees that much) is kept:
  allocating it again touches no new pages."""
  if cpu._mallopt() is None:
    pytest.skip('not glibc: the allocator settings do not apply')
  env = {k: v for k, v in os.environ.items() if k not in cpu.MALLOC_SETTINGS}
  out = subprocess.run([sys.executable, '-c', _REUSE_SCRIPT, str(2**31 + 2**27)], env=env,
                       capture_output=True, text=True, check=True).stdout.split('\n')
  assert out[0] == str(sorted(cpu.MALLOC_SETTINGS))
  assert int(out[1]) < 1000      # 2.1 GiB afresh would be 557,000 page faults


def test_user_xla_flags_are_kept():
  fast = {'xla_a': 'true', 'xla_b': '2'}
  assert cpu.merged_xla_flags('', fast) == '--xla_a=true --xla_b=2'
  assert cpu.merged_xla_flags('--xla_a=false --other', fast) == '--xla_a=false --other --xla_b=2'


def test_known_xla_flags_are_read_from_the_libraries(tmp_path):
  (tmp_path / 'libxla_a.so').write_bytes(b'\0junk\0xla_cpu_new_flag\0more')
  (tmp_path / 'libxla_b.so.1').write_bytes(b'\0xla_cpu_other\0')
  (tmp_path / 'notes.txt').write_bytes(b'xla_cpu_in_text')        # not a library
  names = {'xla_cpu_new_flag', 'xla_cpu_other', 'xla_cpu_in_text', 'xla_cpu_gone'}
  assert cpu.known_xla_flags(names, str(tmp_path)) == {'xla_cpu_new_flag', 'xla_cpu_other'}
  assert cpu.fast_xla_flags(str(tmp_path)) == {}                    # a jaxlib without them


def test_configure_sets_the_xla_flags_the_jaxlib_knows(monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setattr(cpu, 'configure_malloc', lambda: {})
  monkeypatch.setattr(cpu, 'applied_xla_flags', {})
  monkeypatch.setenv(cpu.ENV, '1')
  (name, value), = cpu.FAST_XLA_FLAGS.items()
  monkeypatch.setattr(cpu, 'known_xla_flags', lambda names, library_dir=None: set())
  monkeypatch.setenv('XLA_FLAGS', '--xla_mine=1')
  cpu.configure()                                  # an older jaxlib: nothing XLA would refuse
  assert os.environ['XLA_FLAGS'] == '--xla_mine=1' and cpu.applied_xla_flags == {}
  monkeypatch.setattr(cpu, 'known_xla_flags', lambda names, library_dir=None: set(names))
  cpu.configure()
  assert os.environ['XLA_FLAGS'] == f'--xla_mine=1 --{name}={value}'
  assert cpu.applied_xla_flags == {name: value}
  monkeypatch.setattr(cpu, 'applied_xla_flags', {})
  monkeypatch.setenv('XLA_FLAGS', f'--{name}=LIBRARY_FUSION_TYPE_REDUCE')
  cpu.configure()                                  # the user's own value wins
  assert os.environ['XLA_FLAGS'] == f'--{name}=LIBRARY_FUSION_TYPE_REDUCE'
  assert cpu.applied_xla_flags == {}
  monkeypatch.setenv(cpu.ENV, '0')
  monkeypatch.setenv('XLA_FLAGS', '')
  cpu.configure()
  assert os.environ['XLA_FLAGS'] == ''


def _fast_xla_flags_or_skip():
  if jax.default_backend() != 'cpu':
    pytest.skip('XLA:CPU flags')
  fast = cpu.fast_xla_flags()
  if not fast:
    pytest.skip(f'jaxlib {jax.__version__} has none of {sorted(cpu.FAST_XLA_FLAGS)}')
  return fast


def test_fast_xla_flags_move_convolutions_off_ynnpack():
  fast = _fast_xla_flags_or_skip()
  default = {k: cpu.DEFAULT_XLA_FLAGS[k] for k in fast}
  dn = ('NHWC', 'HWIO', 'NHWC')

  def fn(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
    return y, jnp.dot(x.reshape(-1, 64), w)

  # Compiled, not run. YNNPACK takes no convolution as small as 8 channels even by default.
  args = (jnp.ones((2, 16, 16, 64)), jnp.ones((3, 3, 64, 64)), jnp.ones((64, 64)))

  def library_ops(options):
    """The operations inside the YNNPACK fusions of `fn` compiled with `options`."""
    hlo = jax.jit(fn, compiler_options=options).lower(*args).compile().as_text()
    called = set(re.findall(r'calls=%([\w.-]+)[^\n]*"__ynn_fusion"', hlo))
    ops = set()
    for block in hlo.split('\n\n'):
      name = re.match(r'%([\w.-]+) ', block.strip())
      if name and name.group(1) in called:
        ops |= {op for op in ('convolution', 'dot') if f' {op}(' in block}
    return ops

  assert library_ops(default) == {'convolution', 'dot'}   # the jaxlib's YNNPACK default
  assert library_ops(fast) == {'dot'}


def test_outputs_and_gradients_equal_with_and_without_the_xla_flags():
  fast = _fast_xla_flags_or_skip()
  default = {k: cpu.DEFAULT_XLA_FLAGS[k] for k in fast}
  model = _tiny_fmn()
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((4, 64, 32, 3), np.float32))
  y = jnp.asarray([0, 1, 2, 3])
  variables = model.init(jax.random.key(0), x[:1])

  def loss_fn(params):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                         train=True, mutable=['batch_stats'])
    return (optax.softmax_cross_entropy_with_integer_labels(out['logits_g'], y).mean()
            + optax.softmax_cross_entropy_with_integer_labels(out['logits_l'], y).mean())

  def run(options):
    grads = jax.jit(jax.value_and_grad(loss_fn), compiler_options=options)(variables['params'])
    feats = jax.jit(lambda: model.apply(variables, x), compiler_options=options)()
    return jax.tree.leaves(jax.tree.map(np.asarray, (grads, feats)))

  got, want = run(fast), run(default)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(b).max()))


def test_patch_matmul_shapes():
  same = ((1, 1), (1, 1))
  assert models_conv.use_patch_matmul((4, 2), (3, 3), (1, 1), same)      # ResNet-50 res5 at 128x64
  assert models_conv.use_patch_matmul((2, 4), (3, 3), (1, 1), same)
  assert models_conv.use_patch_matmul((3, 3), (3, 3), (1, 1), same)      # 9 positions
  assert not models_conv.use_patch_matmul((8, 4), (3, 3), (1, 1), same)  # res5 at 256x128
  assert not models_conv.use_patch_matmul((4, 2), (1, 1), (1, 1), ((0, 0), (0, 0)))


@pytest.mark.parametrize('shape,kernel,strides,padding', [
    ((3, 4, 2, 16), (3, 3, 16, 8), (1, 1), ((1, 1), (1, 1))),
    ((2, 5, 3, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1))),
    ((2, 6, 4, 3), (7, 7, 3, 5), (2, 2), ((3, 3), (3, 3))),
])
def test_cpu_conv_equals_the_convolution(monkeypatch, shape, kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape, np.float32))
  k = jnp.asarray(rng.standard_normal(kernel, np.float32))
  dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, ('NHWC', 'HWIO', 'NHWC'))
  want = jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=dn)
  monkeypatch.setenv(cpu.ENV, '1')
  assert models_conv.use_patch_matmul(shape[1:3], kernel[:2], strides, padding)
  jaxpr = str(jax.make_jaxpr(lambda x, k: models_conv.cpu_conv(x, k, strides, padding,
                                                          dimension_numbers=dn))(x, k))
  if jax.default_backend() == 'cpu':
    assert 'conv_general_dilated' not in jaxpr and 'dot_general' in jaxpr
  got = models_conv.cpu_conv(x, k, strides, padding, dimension_numbers=dn)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _tiny_fmn():
  return models.FMN(num_classes=5, stage_sizes=(1, 1, 1, 1), width=4, mask_layer='res2')


def _run(monkeypatch, flag, fn):
  monkeypatch.setenv(cpu.ENV, flag)
  return jax.tree.map(np.asarray, jax.jit(fn)())   # a fresh trace under this setting


def test_fmn_outputs_and_gradients_equal_on_and_off(monkeypatch):
  model = _tiny_fmn()
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((4, 64, 32, 3), np.float32))  # res5: 2x1 maps
  y = jnp.asarray([0, 1, 2, 3])
  variables = model.init(jax.random.key(0), x[:1])

  def features():
    return model.apply(variables, x)

  def loss_and_grads():
    def loss_fn(params):
      out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                           train=True, mutable=['batch_stats'])
      return (optax.softmax_cross_entropy_with_integer_labels(out['logits_g'], y).mean()
              + optax.softmax_cross_entropy_with_integer_labels(out['logits_l'], y).mean())
    return jax.value_and_grad(loss_fn)(variables['params'])

  monkeypatch.setenv(cpu.ENV, '1')
  jaxpr = str(jax.make_jaxpr(features)())
  if jax.default_backend() == 'cpu':
    assert 'dot_general' in jaxpr and 'concatenate' in jaxpr   # the patch form is in use
  for fn in (features, loss_and_grads):
    on, off = _run(monkeypatch, '1', fn), _run(monkeypatch, '0', fn)
    leaves_on, leaves_off = jax.tree.leaves(on), jax.tree.leaves(off)
    assert len(leaves_on) == len(leaves_off)
    for a, b in zip(leaves_on, leaves_off):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(b).max()))


def test_parameter_tree_is_the_same_on_and_off(monkeypatch):
  model = _tiny_fmn()
  x = jnp.zeros((1, 64, 32, 3))
  shapes = {}
  for flag in ('1', '0'):
    monkeypatch.setenv(cpu.ENV, flag)
    shapes[flag] = jax.tree.map(lambda a: a.shape, jax.eval_shape(
        lambda: model.init(jax.random.key(0), x)))
  assert shapes['1'] == shapes['0']


@pytest.mark.parametrize('strides,padding', [
    ((1, 1), ((0, 0), (0, 0))), ((2, 2), ((0, 0), (0, 0))), ((2, 2), 'SAME'), ((1, 1), 'VALID'),
])
def test_pointwise_convolution_is_a_dot(monkeypatch, strides, padding):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 5, 4, 6), np.float32))   # odd height: stride 2 rounds
  k = jnp.asarray(rng.standard_normal((1, 1, 6, 3), np.float32))
  dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, ('NHWC', 'HWIO', 'NHWC'))

  def loss(conv, x, k):
    y = conv(x, k, strides, padding, dimension_numbers=dn)
    return (y * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)).sum(), y

  want, want_grads = jax.value_and_grad(
      functools.partial(loss, jax.lax.conv_general_dilated), (0, 1), has_aux=True)(x, k)
  monkeypatch.setenv(cpu.ENV, '1')
  fast = functools.partial(loss, models_conv.cpu_conv)
  if jax.default_backend() == 'cpu':
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, k: fast(x, k)[0], (0, 1)))(x, k))
    assert 'conv_general_dilated' not in jaxpr and 'dot_general' in jaxpr
  got, got_grads = jax.value_and_grad(fast, (0, 1), has_aux=True)(x, k)
  assert got[1].shape == want[1].shape
  for a, b in zip((got[1],) + got_grads, (want[1],) + want_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_max_pool_equals_flax_with_ties(monkeypatch):
  """Values and gradients bit for bit, ties included: the gradient goes to each window's first
  maximum in row-major order, as XLA's select-and-scatter does."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 9, 6, 3)).astype(np.float32)
  x[0, :4, :4, :] = 1.5                                    # a plateau: every window ties
  x[1] = np.round(x[1])                                    # many ties of small integers
  x = jnp.asarray(np.maximum(x, 0))                        # after a ReLU, as in the stem
  dy = jnp.asarray(rng.standard_normal((2, 5, 3, 3)).astype(np.float32))
  args = ((3, 3), (2, 2), ((1, 1), (1, 1)))

  def grads(pool):
    y, vjp = jax.vjp(lambda x: pool(x, *args), x)
    return y, vjp(dy)[0]

  want = grads(lambda x, w, s, p: flax.linen.max_pool(x, w, strides=s, padding=p))
  monkeypatch.setenv(cpu.ENV, '1')
  got = jax.jit(lambda: grads(models_conv.max_pool))()
  if jax.default_backend() == 'cpu':
    assert 'select_and_scatter' not in str(jax.make_jaxpr(lambda: grads(models_conv.max_pool))())
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)
  assert got[0].shape == (2, 5, 3, 3)
