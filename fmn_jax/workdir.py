"""The run folder (--workdir): what a run wrote, checked before a new run and restored after.

    DIR/config.json, DIR/run.json     the config and the dataset facts of the accepted run
    DIR/checkpoints/{grn,fmn}/        each stage's orbax checkpoints (`fmn_jax.checkpoints`)
    DIR/results.json, DIR/log.jsonl   results and the run's records

`check_workdir` refuses a config that does not fit the checkpoints already there;
`restore_model` gives the trained (model, variables, config) to the evaluation and the tools.
"""

import json
import os
from typing import Any, Optional

from absl import logging
import flax
import jax
import ml_collections

from fmn_jax import checkpoints
from fmn_jax import config as config_lib
from fmn_jax import data
from fmn_jax import initialization
from fmn_jax import models
from fmn_jax import parallel
from fmn_jax import stages


def write_json(path: str, obj: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def devices_summary() -> dict:
  devices = jax.devices()
  return {'count': len(devices), 'platform': devices[0].platform,
          'kind': devices[0].device_kind, 'processes': jax.process_count()}


def with_sharding(tree: Any, sharding) -> Any:
  """`tree` as `jax.ShapeDtypeStruct`s with `sharding` (what a checkpoint is restored into)."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def abstract_state(stage: str, model: models.FMN, config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> stages.TrainState:
  """The shapes and dtypes (no values) of `stage`'s train state under `config`."""
  tx = stages.make_optimizer(config[stage], steps_per_epoch)
  start = stages.grn_state if stage == 'grn' else stages.fmn_state
  return jax.eval_shape(lambda v: start(model, v, tx),
                        initialization.abstract_variables(model, config))


def final_variables(workdir: str, model: models.FMN, config: ml_collections.ConfigDict,
                    mesh=None, allow_unfinished: bool = False) -> dict:
  """The trained FMN variables from the last stage-2 checkpoint.

  Raises ValueError when that checkpoint is not stage 2's last step (the run was stopped before
  it finished), unless `allow_unfinished`, which logs a warning and uses it.
  """
  mesh = mesh if mesh is not None else parallel.create_mesh()
  abstract = with_sharding(abstract_state('fmn', model, config, steps_per_epoch=1),
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
  return stages.fmn_variables(state)


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


def fmn_progress(workdir: str) -> dict:
  """results.json's 'fmn_step': the latest stage-2 checkpoint's step and the stage's last step."""
  step, total = stage_progress(workdir, 'fmn')
  return {'step': step, 'total_steps': total}


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
    abstract = with_sharding(abstract_state('grn', model, config, 1), parallel.replicated(mesh))
    state = ckpt.restore(abstract, latest)
  finally:
    ckpt.close()
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _stage_signature(stage: str, config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """The arrays (names, shapes, dtypes) a checkpoint of `stage` holds under `config`."""
  model = models.create_fmn(config.model, num_classes)
  abstract = abstract_state(stage, model, config, 1)
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
    old = config_lib.config_from_dict(saved_config)
    old_classes = saved_classes if saved_classes is not None else num_classes
    base = _stage_signature(stage, old, old_classes)
  except Exception:  # pylint: disable=broad-except
    return None
  if base != saved:
    return None
  flat_old, flat_new = (flax.traverse_util.flatten_dict(d, sep='.')
                        for d in (saved_config, config_lib.config_to_dict(config)))
  missing = object()
  changes = []
  for key in sorted(set(flat_old) | set(flat_new)):
    if key.split('.')[0] not in ('model', stage):
      continue
    before, after = flat_old.get(key, missing), flat_new.get(key, missing)
    if before == after or after is missing:
      continue
    trial = config_lib.config_from_dict(saved_config)
    try:
      config_lib.set_key(trial, key, config_lib.get_key(config, key))
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


def latest_step(workdir: str, stage: str) -> Optional[int]:
  """The stage's latest checkpoint step in `workdir` (None: no checkpoint), nothing created."""
  directory = checkpoints.stage_dir(workdir, stage)
  if not os.path.isdir(directory):
    return None
  ckpt = checkpoints.StageCheckpoints(directory, read_only=True)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def _what_differs(stage: str, saved: dict, difference: str, saved_config: dict, saved_run: dict,
                  config: ml_collections.ConfigDict, num_classes: int, workdir: str) -> str:
  """Why a stage's checkpoint does not fit `config`: the config keys that differ from the run
  that wrote it when DIR/config.json tells, else the arrays that differ."""
  changes = (_keys_that_change(stage, saved, saved_config, saved_run.get('num_classes'), config,
                               num_classes) if saved_config else None)
  if changes:
    return 'the run that wrote them differs in ' + ', '.join(changes)
  if changes is not None:
    return difference
  if saved_config:
    return f'{os.path.join(workdir, "config.json")} does not describe them either: ' + difference
  return f'no config.json of the run that wrote them: {difference}'


def check_workdir(config: ml_collections.ConfigDict, workdir: str, dataset: data.ReidDataset,
                  run_stages: tuple) -> dict:
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
      target.update(read_json(os.path.join(workdir, name)))
    except (OSError, ValueError):
      pass
  latest = {}
  for stage in config_lib.TRAIN_STAGES:
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
        what = _what_differs(stage, saved, difference, saved_config, saved_run, config,
                             dataset.num_classes, workdir)
        raise ValueError(
            f'--workdir={workdir} holds checkpoints of another config in {directory} (step '
            f'{latest[stage]}): {what}. Use a fresh --workdir, or the config of that run')
    if stage in run_stages:
      total = stages.stage_total_steps(stage, config, dataset.train)
      if latest[stage] > total:
        raise ValueError(f'{directory} holds step {latest[stage]} but config.{stage}.epochs='
                         f'{config[stage].epochs} gives only {total} steps; use a fresh '
                         '--workdir, or the config of the run that wrote it')
  if 'fmn' in run_stages and latest['fmn'] is None and 'grn' not in run_stages:
    _require_finished_grn(checkpoints.stage_dir(workdir, 'grn'), latest['grn'],
                          stages.stage_total_steps('grn', config, dataset.train), config)
  return latest


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
  config = config_lib.config_from_dict(read_json(config_path))
  num_classes = int(read_json(run_path)['num_classes'])
  model = models.create_fmn(config.model, num_classes)
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
