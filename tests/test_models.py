"""Tests for fmn_jax.models: ResNet-50 family and the Feature Mask Network."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fmn_jax import models

TINY = dict(width=8, stage_sizes=(1, 1, 1, 1))
TORCHVISION_RESNET50_PARAMS = 25_557_032


def key(seed):
  """RBG keys: same init distributions, far cheaper to compile op by op on CPU than threefry."""
  return jax.random.key(seed, impl='rbg')


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _shapes(tree):
  return jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)


@pytest.fixture(scope='module')
def rng_images():
  rng = np.random.default_rng(0)
  return lambda shape: jnp.asarray(rng.normal(size=shape).astype(np.float32))


@pytest.fixture(scope='module')
def tiny_fmn(rng_images):
  """A width-8 FMN at 64x32 input (mask at pool1: 16x8) and its variables."""
  model = models.FMN(num_classes=5, **TINY)
  x = rng_images((2, 64, 32, 3))
  variables = model.init(key(0), x)
  return model, variables, x


@pytest.mark.parametrize('layout', ['v1', 'v1.5'])
def test_resnet50_parameter_count_matches_torchvision(layout):
  model = models.ResNet(num_classes=1000, width=64, stride_layout=layout)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  assert _count(variables['params']) == TORCHVISION_RESNET50_PARAMS
  assert set(variables['params']) == {'stem', 'res2', 'res3', 'res4', 'res5', 'fc'}
  assert set(variables['batch_stats']) == {'stem', 'res2', 'res3', 'res4', 'res5'}
  assert [len(variables['params'][s]) for s in models.STAGE_NAMES] == [3, 4, 6, 3]
  assert set(variables['params']['res3']['block0']) == {
      'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3', 'proj_conv', 'proj_bn'}
  assert variables['params']['stem']['conv1']['kernel'].shape == (7, 7, 3, 64)
  # Without a head: 25,557,032 - 2048 * 1000 - 1000.
  headless = models.ResNet(num_classes=None)
  v = jax.eval_shape(headless.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  assert _count(v['params']) == TORCHVISION_RESNET50_PARAMS - 2_049_000


@pytest.mark.parametrize('size,expected', [
    ((224, 224), {'pool1': (56, 56, 64), 'res2': (56, 56, 256), 'res3': (28, 28, 512),
                  'res4': (14, 14, 1024), 'res5': (7, 7, 2048), 'pooled': (2048,)}),
    ((256, 128), {'pool1': (64, 32, 64), 'res2': (64, 32, 256), 'res3': (32, 16, 512),
                  'res4': (16, 8, 1024), 'res5': (8, 4, 2048), 'pooled': (2048,)}),
])
@pytest.mark.parametrize('layout', ['v1', 'v1.5'])
def test_resnet50_feature_shapes(size, expected, layout):
  model = models.ResNet(num_classes=1000, stride_layout=layout)
  x = jnp.zeros((2,) + size + (3,))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, method=models.ResNet.features),
                         variables, x)
  assert {k: v.shape[1:] for k, v in feats.items()} == expected
  logits = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32


def test_tiny_resnet_forward_layouts_and_bn(rng_images):
  x = rng_images((2, 64, 32, 3))
  v1 = models.ResNet(num_classes=7, stride_layout='v1', **TINY)
  v15 = models.ResNet(num_classes=7, stride_layout='v1.5', **TINY)
  variables = v1.init(key(1), x)
  # Both layouts share one parameter tree.
  assert _shapes(variables) == _shapes(jax.eval_shape(v15.init, jax.random.PRNGKey(1), x))
  assert _count(variables['params']) < 1e6
  feats1 = v1.apply(variables, x, method=models.ResNet.features)
  feats15 = v15.apply(variables, x, method=models.ResNet.features)
  np.testing.assert_array_equal(feats1['res2'], feats15['res2'])  # No stride in res2.
  assert feats1['res3'].shape == feats15['res3'].shape == (2, 8, 4, 64)
  assert not np.allclose(feats1['res3'], feats15['res3'])
  assert feats1['pooled'].shape == (2, 8 * 8 * 4)
  logits = v1.apply(variables, x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, feats1['pooled'] @ variables['params']['fc']['kernel']
                             + variables['params']['fc']['bias'], rtol=1e-4, atol=1e-6)
  # Training mode updates the running statistics; inference mode leaves them alone.
  _, state = v1.apply(variables, x, train=True, mutable=['batch_stats'])
  before = variables['batch_stats']['res2']['block0']['bn1']['mean']
  after = state['batch_stats']['res2']['block0']['bn1']['mean']
  assert not np.allclose(before, after)
  # No head: __call__ returns the pooled feature.
  headless = models.ResNet(num_classes=None, **TINY)
  pooled = headless.apply({'params': {k: v for k, v in variables['params'].items() if k != 'fc'},
                           'batch_stats': variables['batch_stats']}, x)
  np.testing.assert_allclose(pooled, feats1['pooled'], rtol=1e-6)


def test_bfloat16_compute_float32_params(rng_images):
  x = rng_images((2, 64, 32, 3))
  model = models.ResNet(num_classes=7, dtype=jnp.bfloat16, **TINY)
  variables = model.init(key(2), x)
  assert {l.dtype for l in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, method=models.ResNet.features),
                         variables, x)
  assert feats['pool1'].dtype == jnp.bfloat16 and feats['res5'].dtype == jnp.bfloat16
  assert feats['pooled'].dtype == jnp.float32
  assert jax.eval_shape(model.apply, variables, x).dtype == jnp.float32
  # The stem really computes in bfloat16, close to float32.
  stem = lambda m, x: m.stem(x)
  pool1 = model.apply(variables, x, method=stem)
  ref = models.ResNet(num_classes=7, **TINY).apply(variables, x, method=stem)
  assert pool1.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(pool1, np.float32), ref, rtol=0.02,
                             atol=0.02 * float(jnp.abs(ref).max()))


def test_bad_config_raises():
  x = jnp.zeros((1, 64, 32, 3))
  with pytest.raises(ValueError, match='stride_layout'):
    jax.eval_shape(models.ResNet(stride_layout='v2', **TINY).init, jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match='stage_sizes'):
    jax.eval_shape(models.ResNet(stage_sizes=(3, 4, 6), width=8).init, jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match='mask_layer'):
    jax.eval_shape(models.FMN(num_classes=3, mask_layer='res5', **TINY).init,
                   jax.random.PRNGKey(0), x)


def test_fmn_outputs_and_tree(tiny_fmn):
  model, variables, x = tiny_fmn
  params = variables['params']
  assert set(params) == {'grn', 'mn', 'lan'}
  assert set(variables['batch_stats']) == {'grn', 'lan'}
  assert set(params['grn']) == {'stem', 'res2', 'res3', 'res4', 'res5', 'fc'}
  assert set(params['lan']) == {'res2', 'res3', 'res4', 'res5', 'fc'}
  assert params['mn']['fc']['kernel'].shape == (256, 16 * 8)
  # Distinct trees: same shapes where they overlap, independently initialised values.
  assert _shapes(params['grn']['res3']) == _shapes(params['lan']['res3'])
  assert not np.allclose(params['grn']['res3']['block0']['conv2']['kernel'],
                         params['lan']['res3']['block0']['conv2']['kernel'])
  out = model.apply(variables, x)
  assert set(out) == {'g', 'l', 'logits_g', 'logits_l', 'mask', 'descriptor'}
  assert out['g'].shape == out['l'].shape == (2, 256)
  assert out['logits_g'].shape == out['logits_l'].shape == (2, 5)
  assert out['mask'].shape == (2, 16, 8)
  assert out['descriptor'].shape == (2, 512)
  for v in out.values():
    assert v.dtype == jnp.float32 and np.all(np.isfinite(v))
  assert np.all(out['mask'] > 0)
  # Eq. 6 by hand.
  g, l = np.asarray(out['g'], np.float64), np.asarray(out['l'], np.float64)
  want = np.concatenate([0.5 * g / np.linalg.norm(g, axis=1, keepdims=True),
                         0.5 * l / np.linalg.norm(l, axis=1, keepdims=True)], axis=1)
  np.testing.assert_allclose(out['descriptor'], want, rtol=1e-5, atol=1e-7)
  d = models.descriptor(out['g'], out['l'], alpha=0.8)
  np.testing.assert_allclose(np.linalg.norm(d, axis=1), np.sqrt(0.8**2 + 0.2**2), rtol=1e-5)
  # GRN alone (stage 1) agrees with the full forward and reads only the 'grn' subtree.
  grn_only = {c: {'grn': variables[c]['grn']} for c in variables}
  stage1 = model.apply(grn_only, x, method=models.FMN.grn_forward)
  np.testing.assert_array_equal(stage1['g'], out['g'])
  np.testing.assert_array_equal(stage1['logits_g'], out['logits_g'])


def test_fmn_initial_mask_is_near_one_and_trainable():
  mn = models.MixingNetwork()
  # g like an ImageNet ResNet-50 pooled feature: non-negative, 2048-d, norm about 35.
  g = jnp.asarray(np.abs(np.random.default_rng(3).normal(0.0, 0.8, size=(4, 2048))), jnp.float32)
  variables = mn.init(key(0), g, (56, 56))
  assert variables['params']['fc']['kernel'].shape == (2048, 56 * 56)
  mask = mn.apply(variables, g, (56, 56))
  assert mask.shape == (4, 56, 56) and mask.dtype == jnp.float32
  assert np.all(np.abs(mask - 1.0) < 0.05)
  assert np.all(mask > 1.0)  # Every unit in the ReLU's linear part: gradients reach all of W.
  grads = jax.grad(lambda p: jnp.sum(mn.apply({'params': p}, g, (56, 56))))(variables['params'])
  assert np.all(np.asarray(grads['fc']['bias']) > 0)


def test_mask_stays_finite_for_huge_g(tiny_fmn):
  model, variables, x = tiny_fmn
  g = model.apply(variables, x, method=models.FMN.grn_forward)['g']
  mn_vars = {'params': {'mn': variables['params']['mn']}}
  def mask_of(g):
    return model.apply(mn_vars, g, (16, 8), method=lambda m, g, s: m.mn(g, s))
  for scale in (1.0, 1e4, -1e4, 1e8, 1e30):
    mask = np.asarray(mask_of(g * scale))
    assert mask.shape == (2, 16, 8)
    assert np.all(np.isfinite(mask)) and np.all(mask >= 1.0), scale
    assert mask.max() <= np.exp(model.max_log_mask) * (1 + 1e-6)
  # Large g gives large masks, clamped at exp(max_log_mask).
  np.testing.assert_allclose(np.asarray(mask_of(g * 1e30)).max(), np.exp(model.max_log_mask),
                             rtol=1e-6)



def test_normalized_mn_input_makes_mask_and_its_step_independent_of_the_norm_of_g():
  g = jnp.asarray(np.abs(np.random.default_rng(4).normal(0.0, 0.8, size=(3, 2048))), jnp.float32)
  raw, normalized = models.MixingNetwork(), models.MixingNetwork(normalize_input=True)
  variables = raw.init(key(1), g, (8, 4))   # the same parameters serve both
  # A kernel 2000 times its initial size: raw log mask values of about 1 (|g| is about 35).
  trained = {'params': {'fc': dict(variables['params']['fc'],
                                   kernel=variables['params']['fc']['kernel'] * 2e3)}}
  for mn in (raw, normalized):
    assert mn.init(key(1), g, (8, 4))['params']['fc']['kernel'].shape == (2048, 32)
  # Normalized: g and 40 g give the same mask; raw: a larger g gives a larger log mask.
  np.testing.assert_allclose(normalized.apply(trained, g * 40.0, (8, 4)),
                             normalized.apply(trained, g, (8, 4)), rtol=1e-5)
  small, large = (np.log(np.asarray(raw.apply(trained, g * s, (8, 4)))) for s in (1.0, 4.0))
  assert 0.5 < small.max() < 5 and large.max() > 3 * small.max()

  # One SGD step on the kernel: the change of the log mask scales with |g|^2 for the raw input
  # and does not depend on |g| for the normalized one.
  def log_mask_change(mn, scale, lr=1e-6):
    def loss(p):   # a step that raises every log mask value, far from the clamp
      return -jnp.sum(jnp.log(mn.apply({'params': p}, g * scale, (8, 4))))
    grads = jax.grad(loss)(variables['params'])
    stepped = jax.tree_util.tree_map(lambda p, d: p - lr * d, variables['params'], grads)
    before = jnp.log(mn.apply(variables, g * scale, (8, 4)))
    return float(jnp.mean(jnp.abs(jnp.log(mn.apply({'params': stepped}, g * scale, (8, 4)))
                                  - before)))
  assert log_mask_change(raw, 10.0) == pytest.approx(100 * log_mask_change(raw, 1.0), rel=0.05)
  assert log_mask_change(normalized, 10.0) == pytest.approx(log_mask_change(normalized, 1.0),
                                                            rel=1e-3)


def test_mask_statistics_known_masks():
  # Image 0: half the positions at 1 (dead), half at e^10 (saturated). Image 1: uniform e^2.
  log_mask = np.zeros((2, 4, 2), np.float32)
  log_mask[0, :2] = 10.0
  log_mask[1] = 2.0
  stats = {k: float(v) for k, v in models.mask_statistics(jnp.exp(log_mask), 10.0).items()}
  assert set(stats) == {'mask_mean', 'mask_dead', 'mask_saturated', 'mask_log_std'}
  np.testing.assert_allclose(stats['mask_mean'], (0.5 + 0.5 * np.exp(10) + np.exp(2)) / 2,
                             rtol=1e-5)
  np.testing.assert_allclose(stats['mask_dead'], 0.25)
  np.testing.assert_allclose(stats['mask_saturated'], 0.25)
  np.testing.assert_allclose(stats['mask_log_std'], (5.0 + 0.0) / 2, atol=1e-5)
  # A fresh MN (mask about 1.01 everywhere): nothing dead, nothing saturated, no contrast.
  fresh = models.mask_statistics(jnp.full((3, 8, 4), np.exp(0.01), jnp.float32))
  assert float(fresh['mask_dead']) == 0 and float(fresh['mask_saturated']) == 0
  assert float(fresh['mask_log_std']) < 1e-6

def test_changing_the_mask_changes_l_not_g(tiny_fmn):
  model, variables, x = tiny_fmn
  out = model.apply(variables, x)
  params = dict(variables['params'])
  bias = params['mn']['fc']['bias']
  params['mn'] = {'fc': dict(params['mn']['fc'], bias=bias + jnp.linspace(0.0, 2.0, bias.size))}
  out2 = model.apply(dict(variables, params=params), x)
  np.testing.assert_array_equal(out['g'], out2['g'])
  np.testing.assert_array_equal(out['logits_g'], out2['logits_g'])
  assert not np.allclose(out['mask'], out2['mask'])
  assert not np.allclose(out['l'], out2['l'])


def test_stage2_gradients_and_batch_stats(tiny_fmn):
  model, variables, x = tiny_fmn
  labels = jnp.array([0, 3])

  def loss_fn(params):
    out, state = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                             train=True, train_grn=False, mutable=['batch_stats'])
    loss = sum(-jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out[k]), labels[:, None], 1))
               for k in ('logits_g', 'logits_l'))
    return loss + 1e-3 * jnp.sum(out['g']), state

  grads, state = jax.jit(jax.grad(loss_fn, has_aux=True))(variables['params'])
  assert all(np.all(np.asarray(l) == 0) for l in jax.tree_util.tree_leaves(grads['grn']))
  assert np.abs(np.asarray(grads['mn']['fc']['kernel'])).max() > 0
  assert np.abs(np.asarray(grads['lan']['res2']['block0']['conv1']['kernel'])).max() > 0
  assert np.abs(np.asarray(grads['lan']['fc']['kernel'])).max() > 0
  # GRN BatchNorm ran on running averages (unchanged); LAN BatchNorm in training mode.
  jax.tree_util.tree_map(np.testing.assert_array_equal, state['batch_stats']['grn'],
                         variables['batch_stats']['grn'])
  assert not np.allclose(state['batch_stats']['lan']['res2']['block0']['bn1']['mean'],
                         variables['batch_stats']['lan']['res2']['block0']['bn1']['mean'])


def test_stage1_touches_grn_only(tiny_fmn):
  model, variables, x = tiny_fmn
  grn_only = {c: {'grn': variables[c]['grn']} for c in variables}
  out, state = model.apply(grn_only, x, train=True, method=models.FMN.grn_forward,
                           mutable=['batch_stats'])
  assert set(out) == {'g', 'logits_g'} and set(state['batch_stats']) == {'grn'}
  assert not np.allclose(state['batch_stats']['grn']['stem']['bn1']['var'],
                         grn_only['batch_stats']['grn']['stem']['bn1']['var'])
  # init through grn_forward creates only the GRN.
  v = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x,
                                          method=models.FMN.grn_forward), x)
  assert set(v['params']) == {'grn'} and set(v['batch_stats']) == {'grn'}


@pytest.mark.parametrize('size,mask_layer,mask_shape', [
    ((224, 224), 'pool1', (56, 56)), ((224, 224), 'res2', (56, 56)),
    ((224, 224), 'res3', (28, 28)), ((224, 224), 'res4', (14, 14)),
    ((256, 128), 'pool1', (64, 32)), ((256, 128), 'res2', (64, 32)),
    ((256, 128), 'res3', (32, 16)), ((256, 128), 'res4', (16, 8)),
])
def test_fmn50_mask_shapes(size, mask_layer, mask_shape):
  # Full width (2048-d g); one block per stage keeps tracing fast, shapes are the same.
  model = models.FMN(num_classes=751, mask_layer=mask_layer, stage_sizes=(1, 1, 1, 1))
  x = jnp.zeros((2,) + size + (3,))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  expected_lan = models.STAGE_NAMES[models.MASK_LAYERS.index(mask_layer):]
  assert set(variables['params']['lan']) == set(expected_lan) | {'fc'}
  assert variables['params']['mn']['fc']['kernel'].shape == (2048, mask_shape[0] * mask_shape[1])
  out = jax.eval_shape(model.apply, variables, x)
  assert out['mask'].shape == (2,) + mask_shape
  assert out['g'].shape == out['l'].shape == (2, 2048)
  assert out['descriptor'].shape == (2, 4096)


@pytest.mark.parametrize('size,mask_layer', [((224, 224), 'pool1'), ((256, 128), 'res3')])
def test_tiny_fmn_mask_positive_at_paper_sizes(rng_images, size, mask_layer):
  model = models.FMN(num_classes=4, mask_layer=mask_layer, **TINY)
  x = rng_images((1,) + size + (3,))
  variables = model.init(key(4), x)
  out = model.apply(variables, x)
  feats = model.apply(variables, x, method=lambda m, x: m.grn.features(x))
  assert out['mask'].shape == (1,) + feats[mask_layer].shape[1:3]
  assert np.all(np.asarray(out['mask']) > 0) and np.all(np.isfinite(out['mask']))


def test_fmn_bfloat16(tiny_fmn):
  _, variables, x = tiny_fmn
  model = models.FMN(num_classes=5, dtype=jnp.bfloat16, **TINY)
  out, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, train_grn=False, mutable=['batch_stats']),
      variables, x)
  for k, v in out.items():
    assert v.dtype == jnp.float32, k
  assert {l.dtype for l in jax.tree_util.tree_leaves(state)} == {jnp.dtype(jnp.float32)}
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, method=lambda m, x: m.grn.features(x)),
                         variables, x)
  assert feats['pool1'].dtype == jnp.bfloat16 and feats['pooled'].dtype == jnp.float32


def test_create_fmn_from_config():
  config = ml_collections.ConfigDict(dict(
      width=8, stage_sizes=(3, 4, 6, 3), stride_layout='v1.5', mask_layer='res2', alpha=0.3,
      dtype='bfloat16', pretrained=''))
  model = models.create_fmn(config, num_classes=11)
  assert (model.width, model.stride_layout, model.mask_layer, model.alpha, model.dtype,
          model.num_classes) == (8, 'v1.5', 'res2', 0.3, jnp.bfloat16, 11)
  # A config without mn_normalize_input (a run's config.json that lacks the key) means the raw
  # g, the form such a run was trained with; a value in the config is passed through.
  assert not model.mn_normalize_input
  config.mn_normalize_input = True
  assert models.create_fmn(config, num_classes=11).mn_normalize_input
  config.dtype = 'float64'
  with pytest.raises(ValueError, match='float64'):
    models.create_fmn(config, num_classes=11)
