"""Orbax checkpointing of a training stage: periodic saves, the last few kept, resume at latest.

One `orbax.checkpoint.CheckpointManager` per stage under DIR/checkpoints/{grn,fmn}. Orbax writes
each step into a temporary folder and renames it when complete, so a run killed mid-save leaves
the previous checkpoints intact and the next run resumes from the latest complete one.
"""

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), 'checkpoints', stage)


class StageCheckpoints:
  """Saves and restores one stage's train state (any pytree of arrays)."""

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(os.path.expanduser(directory))
    # Readers keep everything (max_to_keep=None) and touch nothing; orbax's own read_only mode
    # would log warnings on every open.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

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

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Any:
    """Restores checkpoint `step` (default: latest) into the structure/shardings given.

    Args:
      abstract_state: pytree of `jax.ShapeDtypeStruct` (with shardings) or arrays like the saved
        state; restored arrays get its shardings.
      step: checkpoint step; None for the latest.
    Returns:
      The restored pytree.
    """
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    abstract_state = jax.tree_util.tree_map(_abstract, abstract_state)
    return self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract_state))

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
