"""Orbax checkpointing of a training stage: periodic saves, the last few kept, resume at latest.

One `orbax.checkpoint.CheckpointManager` per stage under DIR/checkpoints/{grn,fmn}. Orbax writes
each step into a temporary folder and renames it when complete, so a run killed mid-save leaves
the previous checkpoints intact and the next run resumes from the latest complete one.

`restore` refuses a checkpoint whose arrays (names, shapes, dtypes) are not those of the state
it is asked for with a one-line `CheckpointMismatchError`; `signature` gives the saved arrays
without reading them, so a caller can compare before restoring (see `signature_difference`).
"""

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), 'checkpoints', stage)


class CheckpointMismatchError(ValueError):
  """A checkpoint's saved arrays are not those of the state it was to be restored into.

  `directory`, `step`: the checkpoint; `detail`: the first differences (or orbax's reason).
  """

  def __init__(self, message: str, directory: str = '', step: int = -1, detail: str = ''):
    super().__init__(message)
    self.directory, self.step, self.detail = directory, step, detail


def tree_signature(tree: Any) -> dict:
  """{'params.res2.block0.conv1.kernel': (shape, dtype name), ...} of a pytree of arrays,
  `jax.ShapeDtypeStruct`s or orbax array metadata; names as orbax writes them."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not hasattr(leaf, 'shape') or not hasattr(leaf, 'dtype'):
      continue
    name = '.'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)
    out[name] = (tuple(int(d) for d in leaf.shape), str(np.dtype(leaf.dtype)))
  return out


def signature_difference(saved: dict, wanted: dict) -> str:
  """'' when equal, else a short description of the first differences (saved vs wanted)."""
  def order(names):  # parameters first, optimizer state last
    first = ('params', 'batch_stats', 'frozen')
    return sorted(names, key=lambda k: (next(
        (i for i, p in enumerate(first) if k.startswith(p)), len(first)), k))
  only_saved = order(set(saved) - set(wanted))
  only_wanted = order(set(wanted) - set(saved))
  other = order(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
  parts = []
  if only_saved:
    parts.append(f'{len(only_saved)} saved arrays the model has no place for, e.g. '
                 f'{only_saved[0]}')
  if only_wanted:
    parts.append(f'{len(only_wanted)} arrays of the model missing, e.g. {only_wanted[0]}')
  if other:
    k = other[0]
    parts.append(f'{len(other)} arrays of another shape or dtype, e.g. {k}: saved '
                 f'{_describe(saved[k])}, model {_describe(wanted[k])}')
  return '; '.join(parts)


def _describe(entry: tuple) -> str:
  shape, dtype = entry
  return f'{dtype}{list(shape)}'


class StageCheckpoints:
  """Saves and restores one stage's train state (any pytree of arrays)."""

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(os.path.expanduser(directory))
    # Readers keep everything (max_to_keep=None) and touch nothing; orbax's own read_only mode
    # would log warnings on every open.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        cleanup_tmp_directories=not read_only)
    # The handler named up front lets readers see the saved tree (`signature`) without orbax
    # warning that it cannot tell how to read the item.
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, seconds: Optional[float] = None,
           total_steps: Optional[int] = None) -> None:
    """Saves `state` as checkpoint `step` (asynchronously; see `wait`).

    Kept in the step's metadata: `seconds`, the stage's wall time up to this step summed over the
    runs that trained it (see `seconds`), so a resumed stage reports its whole time; and
    `total_steps`, the stage's last step (see `total_steps`), so a reader can tell a finished
    stage from one that was stopped.
    """
    metadata = {}
    if seconds is not None:
      metadata['seconds'] = float(seconds)
    if total_steps is not None:
      metadata['total_steps'] = int(total_steps)
    self._manager.save(int(step), args=ocp.args.StandardSave(state), force=True,
                       custom_metadata=metadata or None)

  def _custom_metadata(self, step: int) -> dict:
    metadata = self._manager.metadata(int(step))
    return getattr(metadata, 'custom_metadata', None) or {}

  def seconds(self, step: int) -> float:
    """The wall seconds saved with checkpoint `step`; 0.0 when it has none."""
    return float(self._custom_metadata(step).get('seconds', 0.0))

  def total_steps(self, step: int) -> Optional[int]:
    """The stage's last step as saved with checkpoint `step`; None when it has none."""
    total = self._custom_metadata(step).get('total_steps')
    return None if total is None else int(total)

  def signature(self, step: int) -> Optional[dict]:
    """`tree_signature` of checkpoint `step` from its metadata (no array is read); None when
    the metadata cannot be read."""
    try:
      metadata = self._manager.item_metadata(int(step))
    except Exception:  # pylint: disable=broad-except
      return None
    tree = getattr(metadata, 'tree', metadata)
    return tree_signature(tree) if tree is not None else None

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Any:
    """Restores checkpoint `step` (default: latest) into the structure/shardings given.

    Args:
      abstract_state: pytree of `jax.ShapeDtypeStruct` (with shardings) or arrays like the saved
        state; restored arrays get its shardings.
      step: checkpoint step; None for the latest.
    Returns:
      The restored pytree.
    Raises:
      CheckpointMismatchError: the saved arrays are not those of `abstract_state` (another
        model or optimizer), or orbax could not restore them into it; one line, naming the
        folder and the first differences.
    """
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    abstract_state = jax.tree_util.tree_map(_abstract, abstract_state)
    saved = self.signature(step)
    difference = signature_difference(saved, tree_signature(abstract_state)) if saved else ''
    if difference:
      raise CheckpointMismatchError(
          f'checkpoint step {step} in {self.directory} was written with another config: its '
          f'arrays do not fit the model and optimizer of this one ({difference}); use a fresh '
          '--workdir, or the config of the run that wrote it', self.directory, step, difference)
    try:
      return self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract_state))
    except ValueError as e:  # orbax's report of a tree or shape mismatch runs to many lines
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      raise CheckpointMismatchError(
          f'checkpoint step {step} in {self.directory} cannot be restored into the model and '
          f'optimizer of this config ({first}); use a fresh --workdir, or the config of the run '
          'that wrote it', self.directory, step, first) from None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _abstract(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  return x
