"""The job of Algorithm 1: stage 1 (GRN), stage 2 (MN + LAN) and the evaluation, in one workdir.

`train_and_evaluate` checks everything that can refuse a run before it writes anything (the
config, the dataset's file lists, the checkpoints already in the workdir, the ImageNet weights),
then trains each configured stage to its last step, resuming from its latest checkpoint, and
evaluates the GRN, LAN and FMN descriptors (also with re-ranking). What one stage is (state,
optimizer, losses, jitted step) lives in `fmn_jax.stages`; the run folder in `fmn_jax.workdir`.
"""

import os
import time
from typing import Callable, Optional

from absl import logging
import jax
import ml_collections
import numpy as np
import optax

from fmn_jax import checkpoints
from fmn_jax import config as config_lib
from fmn_jax import evaluate
from fmn_jax import initialization
from fmn_jax import models
from fmn_jax import parallel
from fmn_jax import reporting
from fmn_jax import stages
from fmn_jax import workdir as workdir_lib
from fmn_jax.data import datasets
from fmn_jax.data import loading

# The errors of a run that stopped by itself (a bad config value, input file or checkpoint, a
# non-finite loss): the same command would stop the same way.
STOP_ERRORS = (ValueError, FileNotFoundError, stages.NonFiniteLossError)


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
      raise stages.NonFiniteLossError(
          f'stage {self.stage}: {what} at step {step} (epoch '
          f'{step // self.steps_per_epoch + 1}); training stopped, {where}. Lower the learning '
          f'rate (config.{self.stage}.lr / lr_head) or check the data.', step)
    self.last_loss = float(values[-1][0])
    self.pending = []


class _Schedules:
  """The stage's learning rates by step, as logged: 'lr', and 'lr_head' / 'lr_mn' when set."""

  def __init__(self, stage_cfg: ml_collections.ConfigDict, steps_per_epoch: int):
    rates = {'lr': stage_cfg.lr, 'lr_head': stage_cfg.lr_head, 'lr_mn': stage_cfg.get('lr_mn')}
    self._schedules = {k: stages.lr_schedule(stage_cfg, steps_per_epoch, v)
                       for k, v in rates.items() if v is not None}

  def at(self, step: int) -> dict:
    return {k: float(s(step)) for k, s in self._schedules.items()}


def _resume(stage: str, config: ml_collections.ConfigDict, ckpt: checkpoints.StageCheckpoints,
            total: int, mesh, initial_state: Callable[[], stages.TrainState],
            abstract_state: stages.TrainState) -> tuple:
  """(state, wall seconds saved with the checkpoint resumed from (0.0 for a fresh start),
  whether it resumed)."""
  latest = ckpt.latest_step()
  if latest is not None and latest > total:
    raise ValueError(f'{ckpt.directory} holds step {latest} but config.{stage}.epochs='
                     f'{config[stage].epochs} gives only {total} steps; use a fresh --workdir')
  if latest is None:
    return parallel.replicate_tree(initial_state(), mesh), 0.0, False
  logging.info('Stage %s: resuming from step %d of %d (%s)', stage, latest, total, ckpt.directory)
  abstract = workdir_lib.with_sharding(abstract_state, parallel.replicated(mesh))
  return ckpt.restore(abstract, latest), ckpt.seconds(latest), True


class _Epoch:
  """One epoch's merged metrics, progress bar and images/s, logged when the epoch ends."""

  def __init__(self, stage: str, config: ml_collections.ConfigDict, steps_per_epoch: int,
               first_step: int):
    self.stage, self.config, self.spe = stage, config, steps_per_epoch
    stage_cfg = config[stage]
    self.batch_size, self.epochs = stage_cfg.batch_size, stage_cfg.epochs
    self.main = parallel.is_main_process()
    epoch = first_step // steps_per_epoch
    self.bar = reporting.progress(
        total=steps_per_epoch * self.batch_size,
        initial=(first_step % steps_per_epoch) * self.batch_size,
        desc=f'{stage} epoch {epoch + 1}/{self.epochs}', enabled=config.progress and self.main)
    self.metrics, self.t0, self.first_step = None, time.time(), first_step

  def add(self, metrics) -> None:
    self.metrics = metrics if self.metrics is None else self.metrics.merge(metrics)
    self.bar.update(self.batch_size)

  def end(self, done: int, log: reporting.RunLog, rates: dict) -> None:
    values = {k: float(v) for k, v in self.metrics.compute().items()}
    seconds = time.time() - self.t0
    images_per_second = (done - self.first_step) * self.batch_size / max(seconds, 1e-9)
    epoch = (done - 1) // self.spe + 1
    log.write('epoch', self.stage, done, epoch=epoch, seconds=seconds,
              images_per_second=images_per_second, **rates, **values)
    if self.main:
      logging.info('%s epoch %d/%d: %s, %.0f img/s', self.stage, epoch, self.epochs,
                   ', '.join(f'{k} {v:.4f}' for k, v in values.items()), images_per_second)
    self.close()

  def close(self) -> None:
    self.bar.close()


def run_stage(stage: str, *, config: ml_collections.ConfigDict, workdir: str, mesh,
              model: models.FMN, train: datasets.Split, train_images: loading.TrainImages,
              initial_state: Callable[[], stages.TrainState],
              abstract_state: stages.TrainState, log: reporting.RunLog) -> tuple:
  """Trains one stage to its last step, resuming from the latest checkpoint.

  Returns:
    (final TrainState, the stage's wall seconds: those of this call plus, when it resumed, those
    saved with the checkpoint it resumed from).
  """
  t0 = time.time()
  sampler = stages.make_sampler(stage, config, train)
  spe = sampler.steps_per_epoch
  total = config[stage].epochs * spe
  ckpt = checkpoints.StageCheckpoints(checkpoints.stage_dir(workdir, stage), config.checkpoint.keep)
  try:
    state, seconds_before, resumed = _resume(stage, config, ckpt, total, mesh, initial_state,
                                             abstract_state)
    start = int(jax.device_get(state.step))
    if start == total:
      logging.info('Stage %s: already complete (%d steps)', stage, total)
      return state, seconds_before
    log.write('stage_start', stage, start, total_steps=total, steps_per_epoch=spe,
              batch_size=config[stage].batch_size, resumed=resumed,
              num_devices=int(mesh.devices.size))
    state, elapsed = _train_steps(stage, config, mesh, model, state, start, total, sampler,
                                  train_images, ckpt, log, seconds_before - t0)
  except stages.NonFiniteLossError as e:
    log.write('error', stage, e.step, message=str(e))
    raise
  finally:
    ckpt.close()
  # The stage's time as saved with its last checkpoint (a later run that finds it complete
  # reports the same), summed over kill and resume.
  log.write('stage_end', stage, total, seconds=elapsed)
  return state, elapsed


def _train_steps(stage, config, mesh, model, state, start, total, sampler, train_images, ckpt,
                 log, clock_offset) -> tuple:
  """Steps `start`..`total` of the stage; returns (state, the stage's wall seconds at the end).

  `clock_offset` + time.time() is the stage's wall time: the seconds saved with the checkpoint it
  resumed from plus those of this run.
  """
  spe = sampler.steps_per_epoch
  step_fn = stages.make_train_step(stage, model, config, mesh, train_images.on_device)
  key = parallel.global_array(stages.stage_key(stage, config), parallel.replicated(mesh))
  rates = _Schedules(config[stage], spe)
  watch = _LossWatch(stage, spe)
  epoch, elapsed = None, clock_offset + time.time()
  try:
    for step in range(start, total):
      if epoch is None:
        epoch = _Epoch(stage, config, spe, step)
      state, metrics, loss_and_finite = step_fn(state, train_images.batch(sampler.indices(step)),
                                                key)
      watch.add(step, loss_and_finite)
      epoch.add(metrics)
      done = step + 1
      end_of_epoch = done % spe == 0 or done == total
      save = done % config.checkpoint.every_steps == 0 or done == total
      if done % config.log_every_steps == 0 or end_of_epoch or save:
        watch.check(ckpt)
        epoch.bar.set_postfix(loss=f'{watch.last_loss:.4f}', refresh=False)
      if done % config.log_every_steps == 0:
        log.write('train', stage, done, loss=watch.last_loss, **rates.at(step))
      if end_of_epoch:
        epoch.end(done, log, rates.at(step))
        epoch = None
      if save:
        elapsed = clock_offset + time.time()
        ckpt.save(done, state, seconds=elapsed, total_steps=total)
  finally:
    if epoch is not None:
      epoch.close()
  return state, elapsed


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured stages in `workdir` and returns the results (also DIR/results.json).

  Everything that can refuse the run is checked before anything is written: the config, the
  dataset's file lists, the checkpoints already in the workdir (`workdir.check_workdir`) and the
  ImageNet weights; only then are DIR/config.json and DIR/run.json written. The images are
  decoded next, the query and gallery too when 'eval' will run, so a bad image stops the run
  before training. A `STOP_ERRORS` error is also appended to DIR/log.jsonl when DIR exists.

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
    run = _accept_run(config, workdir)
    return _run(run, config, workdir, where)
  except STOP_ERRORS as e:
    if not isinstance(e, stages.NonFiniteLossError):   # run_stage logged it with its step
      if parallel.is_main_process():
        reporting.append_error(workdir, str(e), stage=where['stage'])
    raise


class _Run:
  """What `_accept_run` checked and built: the stages to run, mesh, dataset, model, and the fresh
  variables (None when every stage to train resumes from a checkpoint)."""

  def __init__(self, to_run, mesh, dataset, model, fresh):
    self.to_run, self.mesh, self.dataset, self.model, self.fresh = (
        to_run, mesh, dataset, model, fresh)


def _accept_run(config: ml_collections.ConfigDict, workdir: str) -> _Run:
  """Checks the config, weights, dataset and workdir, then writes DIR/config.json and run.json."""
  config_lib.validate_config(config)
  to_run = config_lib.parse_stages(config.stages)
  mesh = parallel.create_mesh()
  for stage in config_lib.TRAIN_STAGES:
    if stage in to_run:
      parallel.check_batch_size(config[stage].batch_size, f'config.{stage}.batch_size', mesh)
  # A stage that starts from scratch needs fresh variables: the ImageNet weights are read and
  # checked now, before any image is decoded.
  needs_fresh = any(s in to_run and workdir_lib.latest_step(workdir, s) is None
                    for s in config_lib.TRAIN_STAGES)
  weights = initialization.read_pretrained(config) if needs_fresh else None
  dataset = loading.load_reid_dataset(config, workdir)
  for note in dataset.notes:
    logging.warning('%s: %s', dataset.name, note)
  model = models.create_fmn(config.model, dataset.num_classes)
  workdir_lib.check_workdir(config, workdir, dataset, to_run)
  # Opening a checkpoint manager is a collective in orbax: no process may create a stage's
  # checkpoint folder (run_stage) while another one is still checking the workdir.
  parallel.sync('fmn_jax: workdir checked')
  # Built now, so that ImageNet weights that do not fit the model (depth, width) stop the run
  # before it writes anything; run_stage uses them only for a stage without a checkpoint.
  fresh = (initialization.init_variables(model, config, weights=weights) if needs_fresh
           else None)
  if parallel.is_main_process():
    os.makedirs(workdir, exist_ok=True)
    workdir_lib.write_json(os.path.join(workdir, 'config.json'), config_lib.config_to_dict(config))
    workdir_lib.write_json(os.path.join(workdir, 'run.json'), {
        'num_classes': dataset.num_classes, 'dataset': dataset.name, 'root': dataset.root,
        'num_train_images': len(dataset.train), 'notes': list(dataset.notes)})
  return _Run(to_run, mesh, dataset, model, fresh)


def _run(run: _Run, config: ml_collections.ConfigDict, workdir: str, where: dict) -> dict:
  """Trains and evaluates an accepted run; writes DIR/results.json and DIR/curves.png."""
  main = parallel.is_main_process()
  results_path = os.path.join(workdir, 'results.json')
  previous = workdir_lib.read_json(results_path)
  stage_seconds = dict(previous.get('stage_seconds', {}))
  log = reporting.RunLog(workdir, tensorboard=config.tensorboard, enabled=main)
  try:
    where['stage'] = 'data'
    final_state = _train_stages(run, config, workdir, where, stage_seconds, log)
    results = {k: v for k, v in previous.items() if k in reporting.METHODS}
    if 'eval' in run.to_run:
      where['stage'] = 'eval'
      results = _evaluate(run, config, workdir, final_state, previous, stage_seconds, log)
  finally:
    log.close()
  dataset = run.dataset
  results.update({
      'config': config_lib.config_to_dict(config),
      # In stage order (a resumed run starts from results.json, whose keys are sorted).
      'stage_seconds': {k: stage_seconds[k] for k in sorted(
          stage_seconds, key=lambda k: (config_lib.STAGES.index(k) if k in config_lib.STAGES
                                        else len(config_lib.STAGES), k))},
      'num_train_ids': dataset.num_classes,
      'num_query': len(dataset.query),
      'num_gallery': len(dataset.gallery),
      'jax_version': jax.__version__,
      'devices': workdir_lib.devices_summary(),
  })
  if main:
    workdir_lib.write_json(results_path, results)
    reporting.plot_curves(os.path.join(workdir, 'log.jsonl'), os.path.join(workdir, 'curves.png'))
  return results


def _train_stages(run: _Run, config, workdir: str, where: dict, stage_seconds: dict,
                  log: reporting.RunLog) -> Optional[stages.TrainState]:
  """Decodes the images and trains the configured stages; returns stage 2's final state (None
  when stage 2 is not run)."""
  to_run, mesh, dataset, model = run.to_run, run.mesh, run.dataset, run.model
  if not any(s in to_run for s in config_lib.TRAIN_STAGES):
    return None
  train_images = loading.load_train_images(config, dataset.train, mesh)
  if 'eval' in to_run:
    # Decoded into the cache now (memory-mapped, nothing kept in memory) and read back by the
    # evaluation, so a bad query or gallery image stops the run before training.
    for split in (dataset.query, dataset.gallery):
      loading.decode(config, split)
  grn_steps = stages.stage_total_steps('grn', config, dataset.train)

  def initial_state(stage: str, tx: optax.GradientTransformation) -> stages.TrainState:
    if stage == 'grn':
      return stages.grn_state(model, run.fresh, tx)
    grn = jax.device_get(workdir_lib.trained_grn(workdir, model, config, mesh, grn_steps))
    variables = {'params': {**run.fresh['params'], 'grn': grn['params']},
                 'batch_stats': {**run.fresh['batch_stats'], 'grn': grn['batch_stats']}}
    if config.fmn.lan_init == 'grn':
      variables = initialization.lan_from_grn(variables)
    return stages.fmn_state(model, variables, tx)

  final_state = None
  for stage in config_lib.TRAIN_STAGES:
    if stage not in to_run:
      continue
    where['stage'] = stage
    spe = stages.make_sampler(stage, config, dataset.train).steps_per_epoch
    tx = stages.make_optimizer(config[stage], spe)
    state, seconds = run_stage(
        stage, config=config, workdir=workdir, mesh=mesh, model=model, train=dataset.train,
        train_images=train_images, initial_state=lambda s=stage, t=tx: initial_state(s, t),
        abstract_state=workdir_lib.abstract_state(stage, model, config, spe), log=log)
    if seconds:
      stage_seconds[stage] = seconds
    if stage == 'fmn':
      final_state = state
  run.fresh = None
  return final_state


def _evaluate(run: _Run, config, workdir: str, final_state: Optional[stages.TrainState],
              previous: dict, stage_seconds: dict, log: reporting.RunLog) -> dict:
  """Evaluates the trained FMN; returns the results rows merged with `previous`."""
  t0 = time.time()
  variables = (stages.fmn_variables(final_state) if final_state is not None
               else workdir_lib.final_variables(workdir, run.model, config, run.mesh))
  evaluated = evaluate.evaluate_model(run.model, variables, config, run.dataset, mesh=run.mesh)
  stage_seconds['eval'] = time.time() - t0
  log.write('eval', 'eval', 0, seconds=stage_seconds['eval'],
            **{f'{m}/{k}': v for m in reporting.METHODS if m in evaluated
               for k, v in evaluated[m].items()})
  # `previous` whole: its fmn_step dates a row kept unrecomputed.
  results = evaluate.merge_rows(previous, evaluated)
  results['fmn_step'] = workdir_lib.fmn_progress(workdir)
  return results
