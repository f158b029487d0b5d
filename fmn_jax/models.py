"""ResNet-50 and the Feature Mask Network (FMN) in Flax linen.

Layout follows the Flax ImageNet example (NHWC, bias-free convolutions followed by BatchNorm with
running statistics), with two additions the FMN needs:

* `ResNet` exposes its named intermediate maps (`pool1`, `res2` ... `res5`) and the pooled
  feature through `ResNet.features`, and keeps the stem and the four stages as separately
  addressable submodules (`stem`, `res2`, `res3`, `res4`, `res5`; head `fc`).
* `FMN` combines a global representation network (GRN, a full `ResNet` with an identity
  classifier), a mixing network (MN, Eq. 1-3 of the paper) and a locally attentive network
  (LAN: the stages after the masked map, with their own parameters, plus a classifier).

Parameter tree of `ResNet` (`params`; `batch_stats` mirrors it with `mean`/`var`)::

  stem/conv1/kernel [7,7,3,w]          stem/bn1/{scale,bias}
  res{2..5}/block{i}/conv{1,2,3}/kernel       res{2..5}/block{i}/bn{1,2,3}/{scale,bias}
  res{2..5}/block0/proj_conv/kernel           res{2..5}/block0/proj_bn/{scale,bias}
  fc/{kernel,bias}                     (absent when num_classes is None)

`block{i}` counts from 0 (`res2/block0` is Keras `res2a`, torchvision `layer1.0`).

Stride layouts: 'v1' puts the stride 2 of res3/res4/res5 on the first 1x1 convolution (the
MSRA/Caffe/Keras ResNet-50 the paper fine-tuned); 'v1.5' puts it on the 3x3 (torchvision).
Both share one parameter tree. All convolutions use explicit symmetric padding (7x7: 3,
3x3: 1), as Caffe/Keras/torchvision do, so converted weights give the same outputs.
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmn_jax import config as config_lib
from fmn_jax.models_conv import cpu_conv
from fmn_jax.models_conv import max_pool

STAGE_NAMES = ('res2', 'res3', 'res4', 'res5')
MASK_LAYERS = config_lib.MASK_LAYERS
STRIDE_LAYOUTS = config_lib.STRIDE_LAYOUTS

# He initialisation as torchvision (kaiming_normal_, mode='fan_out', nonlinearity='relu').
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def head_init(stddev: float = 0.001) -> Callable[..., Any]:
  """Small normal init for new classifier heads (re-id practice)."""
  return nn.initializers.normal(stddev)


def _check_config(stage_sizes, stride_layout):
  if len(stage_sizes) != 4:
    raise ValueError(f'stage_sizes must have 4 entries (res2..res5), got {tuple(stage_sizes)}')
  if stride_layout not in STRIDE_LAYOUTS:
    raise ValueError(f'stride_layout must be one of {STRIDE_LAYOUTS}, got {stride_layout!r}')


ModuleDef = Any


def layer_defs(dtype: Any, bn_momentum: float, bn_epsilon: float) -> Tuple[ModuleDef, ModuleDef]:
  """(conv, norm): the convolution and BatchNorm every layer of a network is built from, made
  once by the network (`ResNet`, `LocallyAttentiveNetwork`) and passed down, as in the Flax
  ImageNet example. Blocks give `norm` its mode: `norm(use_running_average=not train)`."""
  conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                           kernel_init=conv_kernel_init, conv_general_dilated=cpu_conv)
  norm = functools.partial(nn.BatchNorm, momentum=bn_momentum, epsilon=bn_epsilon, dtype=dtype,
                           param_dtype=jnp.float32)
  return conv, norm


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """Mean over H and W, accumulated and returned in float32."""
  return jnp.mean(x, axis=(1, 2), dtype=jnp.float32)


class Stem(nn.Module):
  """conv1 7x7/2 (pad 3) -> BN -> ReLU -> max-pool 3x3/2 (pad 1): the `pool1` map."""
  width: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name='conv1')(x)
    x = nn.relu(self.norm(use_running_average=not train, name='bn1')(x))
    # Padding with -inf (max_pool's default) equals Keras' zero padding after a ReLU.
    return max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (4x channels) residual block, projection shortcut when shapes change."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  stride_layout: str = 'v1'

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = self.conv
    norm = functools.partial(self.norm, use_running_average=not train)
    s = (self.strides, self.strides)
    s1, s3 = (s, (1, 1)) if self.stride_layout == 'v1' else ((1, 1), s)
    y = conv(self.filters, (1, 1), s1, padding='VALID', name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = conv(self.filters, (3, 3), s3, padding=((1, 1), (1, 1)), name='conv2')(y)
    y = nn.relu(norm(name='bn2')(y))
    y = conv(self.filters * 4, (1, 1), padding='VALID', name='conv3')(y)
    y = norm(name='bn3')(y)
    residual = x
    if x.shape[-1] != self.filters * 4 or self.strides != 1:
      residual = conv(self.filters * 4, (1, 1), s, padding='VALID', name='proj_conv')(x)
      residual = norm(name='proj_bn')(residual)
    return nn.relu(residual + y)


class Stage(nn.Module):
  """`num_blocks` bottlenecks (`block0`, `block1`, ...); the first one strides."""
  num_blocks: int
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 2
  stride_layout: str = 'v1'

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in range(self.num_blocks):
      x = Bottleneck(self.filters, self.conv, self.norm, self.strides if i == 0 else 1,
                     self.stride_layout, name=f'block{i}')(x, train)
    return x


def _make_stage(index: int, stage_sizes, width, stride_layout, conv, norm) -> Stage:
  """Stage `index` (0 for res2 ... 3 for res5) of a ResNet of base width `width`."""
  return Stage(num_blocks=stage_sizes[index], filters=width * 2**index, conv=conv, norm=norm,
               strides=1 if index == 0 else 2, stride_layout=stride_layout)


class ResNet(nn.Module):
  """ResNet-50 family (bottleneck blocks), NHWC.

  Attributes:
    stage_sizes: blocks per stage res2..res5 ((3, 4, 6, 3) is ResNet-50).
    width: stem channels; stage widths w, 2w, 4w, 8w; block outputs 4x that. 64 is ResNet-50,
      small values (e.g. 8) give tiny networks for tests.
    stride_layout: 'v1' (stride on the 1x1 `conv1` of a block) or 'v1.5' (on the 3x3 `conv2`).
    num_classes: classifier size; None for no head (`__call__` then returns the pooled feature).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32, and the pooled
      feature and logits are float32.
    bn_momentum, bn_epsilon: BatchNorm running-average momentum (Flax convention) and epsilon.
    head_stddev: init stddev of the classifier kernel.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  stride_layout: str = 'v1'
  num_classes: Optional[int] = 1000
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  head_stddev: float = 0.001

  def setup(self):
    _check_config(self.stage_sizes, self.stride_layout)
    conv, norm = layer_defs(self.dtype, self.bn_momentum, self.bn_epsilon)
    self.stem = Stem(self.width, conv, norm)
    args = (self.stage_sizes, self.width, self.stride_layout, conv, norm)
    self.res2 = _make_stage(0, *args)
    self.res3 = _make_stage(1, *args)
    self.res4 = _make_stage(2, *args)
    self.res5 = _make_stage(3, *args)
    if self.num_classes is not None:
      self.fc = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                         kernel_init=head_init(self.head_stddev))

  def features(self, x, train: bool = False) -> dict:
    """Named maps {'pool1','res2','res3','res4','res5'} (compute dtype) and 'pooled' (float32)."""
    feats = {'pool1': self.stem(x, train)}
    y = feats['pool1']
    for name in STAGE_NAMES:
      y = getattr(self, name)(y, train)
      feats[name] = y
    feats['pooled'] = global_avg_pool(y)
    return feats

  def features_and_logits(self, x, train: bool = False):
    """(`features` dict, float32 logits or None when num_classes is None)."""
    feats = self.features(x, train)
    logits = None if self.num_classes is None else self.fc(feats['pooled'])
    return feats, logits

  def __call__(self, x, train: bool = False) -> jnp.ndarray:
    """Float32 logits [B, num_classes], or the pooled feature if num_classes is None."""
    feats, logits = self.features_and_logits(x, train)
    return feats['pooled'] if logits is None else logits


class MixingNetwork(nn.Module):
  """MN, Eq. 1-2: mask = exp(min(relu(W^T g + b), max_log_mask)) reshaped to [B, h, w].

  Always computed in float32. Reshape convention: unit k of the dense layer is mask position
  (k // w, k % w) (row-major); the paper's Eq. 2 uses column-major order, which is the same
  model up to a permutation of the learned columns of W.

  Init: kernel ~ N(0, kernel_stddev^2), bias = bias_init (small positive), so the first mask is
  exp(~bias_init) ~ 1 everywhere (LAN starts as the ImageNet network) while every unit is in the
  ReLU's linear part and receives gradients. `max_log_mask` clamps the pre-exp value so the mask
  is at most exp(max_log_mask) and stays finite for any finite g.

  normalize_input: use g / |g| in place of g (not in the paper). The pre-exp value W^T g scales
  with |g|, and one SGD step moves it by lr |g|^2 times its gradient. |g| of a ResNet-50 differs
  several-fold between images and by orders of magnitude between input sizes and training runs
  (mean 34 but up to 151 across one batch at 128x64; mean 746 at 64x32 after a one-epoch stage 1),
  so with the raw g no one learning rate keeps every image's mask soft. With g / |g| the step is
  lr times the gradient, as for an ordinary layer, and a mask depends on the direction of g only
  (the GRN's half of the descriptor is g / |g| as well).
  """
  kernel_stddev: float = 1e-5
  bias_init: float = 0.01
  max_log_mask: float = 10.0
  normalize_input: bool = False

  @nn.compact
  def __call__(self, g: jnp.ndarray, spatial_shape: Sequence[int]) -> jnp.ndarray:
    """g [B, m] -> mask [B, h, w] (float32), (h, w) = spatial_shape (static)."""
    height, width = spatial_shape
    g = g.astype(jnp.float32)
    if self.normalize_input:
      g = l2_normalize(g)
    m = nn.Dense(height * width, dtype=jnp.float32, param_dtype=jnp.float32,
                 kernel_init=nn.initializers.normal(self.kernel_stddev),
                 bias_init=nn.initializers.constant(self.bias_init), name='fc')(g)
    m = jnp.minimum(nn.relu(m), self.max_log_mask)
    return jnp.exp(m).reshape(g.shape[0], height, width)


def mask_statistics(mask: jnp.ndarray, max_log_mask: float = 10.0) -> dict:
  """Batch-mean diagnostics of MN masks [B, h, w] (float32 scalars), for the training log.

  mask_mean: the mean mask value. mask_dead: the fraction of positions whose pre-exp value is
  clipped by the ReLU (mask exactly 1: no gradient reaches those MN units for this image).
  mask_saturated: the fraction at the `max_log_mask` clamp (no gradient either). mask_log_std:
  the spatial standard deviation of log(mask) per image, averaged (0 = a uniform mask; a mask
  that is 1 on half the image and e^10 on the other half gives 5).
  """
  log_mask = jnp.log(mask.astype(jnp.float32))
  return {
      'mask_mean': jnp.mean(mask),
      'mask_dead': jnp.mean((log_mask <= 0).astype(jnp.float32)),
      'mask_saturated': jnp.mean((log_mask >= max_log_mask * (1 - 1e-6)).astype(jnp.float32)),
      'mask_log_std': jnp.mean(jnp.std(log_mask.reshape(log_mask.shape[0], -1), axis=1)),
  }


class LocallyAttentiveNetwork(nn.Module):
  """LAN: the ResNet stages after `mask_layer` (own parameters) + global pool + classifier."""
  num_classes: int
  mask_layer: str = 'pool1'
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  stride_layout: str = 'v1'
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  head_stddev: float = 0.001

  def setup(self):
    _check_config(self.stage_sizes, self.stride_layout)
    if self.mask_layer not in MASK_LAYERS:
      raise ValueError(f'mask_layer must be one of {MASK_LAYERS}, got {self.mask_layer!r}')
    conv, norm = layer_defs(self.dtype, self.bn_momentum, self.bn_epsilon)
    args = (self.stage_sizes, self.width, self.stride_layout, conv, norm)
    first = MASK_LAYERS.index(self.mask_layer)  # pool1 -> res2 (index 0), res2 -> res3, ...
    for index in range(first, len(STAGE_NAMES)):
      setattr(self, STAGE_NAMES[index], _make_stage(index, *args))
    self.fc = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                       kernel_init=head_init(self.head_stddev))

  @property
  def stage_names(self) -> tuple:
    return STAGE_NAMES[MASK_LAYERS.index(self.mask_layer):]

  def __call__(self, x, train: bool = False):
    """Masked map -> (pooled float32 feature l, float32 logits)."""
    for name in self.stage_names:
      x = getattr(self, name)(x, train)
    l = global_avg_pool(x)
    return l, self.fc(l)


def l2_normalize(v: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """v / max(||v||, eps) along the last axis (the unit vectors of Eq. 6 and of the MN input).

  `features.l2_normalize` is the host (NumPy) form for arrays already copied off the device.
  """
  return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), eps)


def descriptor(g: jnp.ndarray, l: jnp.ndarray, alpha: float = 0.5) -> jnp.ndarray:
  """Eq. 6: D = [alpha * g / ||g||, (1 - alpha) * l / ||l||] (float32)."""
  unit = lambda v: l2_normalize(v.astype(jnp.float32))
  return jnp.concatenate([alpha * unit(g), (1.0 - alpha) * unit(l)], axis=-1)


class FMN(nn.Module):
  """Feature Mask Network: GRN + MN + LAN (Sections 3.1-3.4 of the paper).

  Variables: params {'grn', 'mn', 'lan'}, batch_stats {'grn', 'lan'}. 'grn' is a full `ResNet`
  (stem, res2..res5, fc with `num_classes`); 'mn' is {'fc'} (h*w units; h, w are the spatial size
  of `mask_layer` for the input size used at init, e.g. 56x56 at pool1 for 224x224 input, 64x32
  for 256x128); 'lan' holds the stages after `mask_layer` (same names as in the ResNet) and 'fc'.

  Stage 1 (GRN alone): `model.apply(v, x, train=True, method=FMN.grn_forward,
  mutable=['batch_stats'])`; only the 'grn' subtrees are read (and need to exist).
  Stage 2: `model.apply(v, x, train=True, train_grn=False, mutable=['batch_stats'])`: GRN
  BatchNorm uses running averages and gradients stop at everything taken from the GRN (g, the
  masked map f and logits_g); LAN BatchNorm is in training mode.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  stride_layout: str = 'v1'
  dtype: Any = jnp.float32
  mask_layer: str = 'pool1'
  alpha: float = 0.5
  mn_kernel_stddev: float = 1e-5
  mn_bias_init: float = 0.01
  max_log_mask: float = 10.0
  mn_normalize_input: bool = False
  head_stddev: float = 0.001

  def setup(self):
    if self.mask_layer not in MASK_LAYERS:
      raise ValueError(f'mask_layer must be one of {MASK_LAYERS}, got {self.mask_layer!r}')
    self.grn = ResNet(stage_sizes=self.stage_sizes, width=self.width,
                      stride_layout=self.stride_layout, num_classes=self.num_classes,
                      dtype=self.dtype, head_stddev=self.head_stddev)
    self.lan = LocallyAttentiveNetwork(num_classes=self.num_classes, mask_layer=self.mask_layer,
                                       stage_sizes=self.stage_sizes, width=self.width,
                                       stride_layout=self.stride_layout, dtype=self.dtype,
                                       head_stddev=self.head_stddev)
    self.mn = MixingNetwork(self.mn_kernel_stddev, self.mn_bias_init, self.max_log_mask,
                            self.mn_normalize_input)

  def grn_forward(self, x, train: bool = False) -> dict:
    """Stage 1: {'g': pooled GRN feature, 'logits_g'}; touches only the 'grn' subtree."""
    feats, logits = self.grn.features_and_logits(x, train)
    return {'g': feats['pooled'], 'logits_g': logits}

  def __call__(self, x, train: bool = False, train_grn: Optional[bool] = None) -> dict:
    """Returns {'g','l','logits_g','logits_l','mask','descriptor'} (all float32)."""
    if train_grn is None:
      train_grn = train
    feats, logits_g = self.grn.features_and_logits(x, train_grn)
    g, f = feats['pooled'], feats[self.mask_layer]
    if train and not train_grn:
      g, f, logits_g = jax.lax.stop_gradient((g, f, logits_g))
    mask = self.mn(g, f.shape[1:3])
    l, logits_l = self.lan(f * mask[..., None].astype(f.dtype), train)
    return {'g': g, 'l': l, 'logits_g': logits_g, 'logits_l': logits_l, 'mask': mask,
            'descriptor': descriptor(g, l, self.alpha)}


def _dtype_from_name(name: Any) -> Any:
  if not isinstance(name, str):
    return name
  table = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
  if name not in table:
    raise ValueError(f'config.model.dtype must be one of {sorted(table)}, got {name!r}')
  return table[name]


def create_fmn(config_model, num_classes: int) -> FMN:
  """Builds an `FMN` from `config.model` (width, stage_sizes, stride_layout, mask_layer, alpha,
  dtype 'float32'|'bfloat16'; optional max_log_mask, mn_kernel_stddev, mn_bias_init,
  mn_normalize_input (False when absent: the raw g), head_stddev)."""
  get = config_model.get
  return FMN(num_classes=num_classes,
             stage_sizes=tuple(get('stage_sizes', (3, 4, 6, 3))),
             width=get('width', 64),
             stride_layout=get('stride_layout', 'v1'),
             dtype=_dtype_from_name(get('dtype', 'float32')),
             mask_layer=get('mask_layer', 'pool1'),
             alpha=get('alpha', 0.5),
             mn_kernel_stddev=get('mn_kernel_stddev', 1e-5),
             mn_bias_init=get('mn_bias_init', 0.01),
             max_log_mask=get('max_log_mask', 10.0),
             mn_normalize_input=bool(get('mn_normalize_input', False)),
             head_stddev=get('head_stddev', 0.001))
