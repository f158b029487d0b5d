"""Algorithm 1's two training stages: their state, optimizer, losses and jitted step.

Stage 1 ('grn') fine-tunes the GRN with softmax cross-entropy (Eq. 4). Stage 2 ('fmn') keeps the
GRN fixed (no gradient, no optimizer state, BatchNorm in inference mode) and trains the mixing
network and the LAN with cross-entropy on the LAN logits plus the ranking loss of Eq. 5.

Data parallel: one `jax.jit` step over a device mesh (see `fmn_jax.parallel`); the global batch
indices are sharded over the mesh axis 'data' and augmentation runs on the devices. The batch
order is a pure function of (seed, step) and the augmentation key is fold_in(seed, step), so a
resumed run computes exactly the same steps as an uninterrupted one.
"""

import functools
from typing import Any, Callable

from clu import metrics as clu_metrics
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fmn_jax import data
from fmn_jax import losses
from fmn_jax import models
from fmn_jax import parallel

# Sampler seeds and augmentation keys differ per stage.
_STAGE_SEED_OFFSET = {'grn': 0, 'fmn': 1}


class NonFiniteLossError(FloatingPointError):
  """Raised when a training loss is NaN or infinite (`step`: the first bad step)."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


class TrainState(train_state.TrainState):
  """What a stage updates and checkpoints (`apply_fn` and `tx` are static, not saved).

  Attributes:
    step: number of updates done (int32 scalar).
    params: trainable parameters: the 'grn' subtree in stage 1; {'mn', 'lan'} in stage 2.
    opt_state: optax state of `params` only (the frozen GRN has none).
    batch_stats: BatchNorm statistics of the trainable part ('grn' / {'lan'}).
    frozen: stage 2: {'params': GRN params, 'batch_stats': GRN statistics}, never updated;
      stage 1: {}.
  """
  batch_stats: Any
  frozen: Any

  @classmethod
  def start(cls, model: models.FMN, params: Any, batch_stats: Any, frozen: Any,
            tx: optax.GradientTransformation) -> 'TrainState':
    """Step 0 with a fresh optimizer state for `params`."""
    return cls(step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=params, tx=tx,
               opt_state=tx.init(params), batch_stats=batch_stats, frozen=frozen)


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


def grn_state(model: models.FMN, variables: dict,
              tx: optax.GradientTransformation) -> TrainState:
  """Stage-1 state from full FMN variables: only the 'grn' subtree is trained."""
  return TrainState.start(model, variables['params']['grn'], variables['batch_stats']['grn'],
                          {}, tx)


def fmn_state(model: models.FMN, variables: dict,
              tx: optax.GradientTransformation) -> TrainState:
  """Stage-2 state: MN and LAN trained, the GRN in `frozen` (no optimizer state)."""
  params = {k: v for k, v in variables['params'].items() if k != 'grn'}
  batch_stats = {k: v for k, v in variables['batch_stats'].items() if k != 'grn'}
  frozen = {'params': variables['params']['grn'], 'batch_stats': variables['batch_stats']['grn']}
  return TrainState.start(model, params, batch_stats, frozen, tx)


def fmn_variables(state: TrainState) -> dict:
  """Full FMN variables from a stage-2 state."""
  return {'params': {**state.params, 'grn': state.frozen['params']},
          'batch_stats': {**state.batch_stats, 'grn': state.frozen['batch_stats']}}


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


def make_train_step(stage: str, model: models.FMN, config: ml_collections.ConfigDict, mesh,
                    on_device: bool = True) -> Callable:
  """The jitted step: (state, batch, key) -> (state, metrics, (loss, params_finite)).

  The optimizer is the state's own (`TrainState.tx`, see `grn_state` / `fmn_state`).

  `batch` is `data.loading.TrainImages.batch(idx)`: with on_device, (images [N, H, W, 3] uint8
  and labels [N] of the whole split, replicated; idx [B] sharded over 'data'), else (uint8 batch
  [B, H, W, 3], labels [B]), sharded over 'data'. `key` is the stage's base PRNG key, folded with the step
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
      metrics = GrnMetrics.single_from_model_output(
          loss=loss, accuracy=losses.accuracy(logits, y))
      new_state = state.apply_gradients(grads=grads, batch_stats=new_bs)
      return new_state, metrics, (loss, _all_finite(new_state.params))
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
      metrics = FmnMetrics.single_from_model_output(loss=loss, **aux)
      new_state = state.apply_gradients(grads=grads, batch_stats=new_bs)
      return new_state, metrics, (loss, _all_finite(new_state.params))

  batch_in = ((repl, repl, batch_sharding) if on_device else (batch_sharding, batch_sharding))
  return jax.jit(step, in_shardings=(repl, batch_in, repl),
                 out_shardings=(repl, repl, repl), donate_argnums=(0,))


def _all_finite(tree: Any) -> jnp.ndarray:
  """True when every entry of every leaf is finite (one cheap reduction per leaf)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def make_sampler(stage: str, config: ml_collections.ConfigDict, train: data.Split):
  """The batch order of `stage` (config.input.sampler), seeded per stage."""
  return data.make_sampler(config.input.sampler, np.asarray(train.labels),
                           config[stage].batch_size, config.seed * 1000 + _STAGE_SEED_OFFSET[stage],
                           num_instances=config.input.num_instances)


def stage_key(stage: str, config: ml_collections.ConfigDict) -> np.ndarray:
  """The stage's base PRNG key (a raw uint32[2]); the step folds in its number."""
  return np.asarray(jax.random.PRNGKey(config.seed * 1000 + _STAGE_SEED_OFFSET[stage]))


def stage_total_steps(stage: str, config: ml_collections.ConfigDict, train) -> int:
  """The last step of `stage` under `config` on the training split `train`."""
  return config[stage].epochs * make_sampler(stage, config, train).steps_per_epoch
