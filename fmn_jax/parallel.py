"""Data parallelism over a one-axis device mesh: one code path from one CPU to many hosts.

Every device holds a replica of the train state; the global batch is split along the mesh axis
'data'. Steps are `jax.jit` functions over global arrays, so XLA (GSPMD) inserts the gradient
all-reduce, and BatchNorm's batch mean/variance are computed over the whole global batch, i.e.
reduced across devices, with no extra code.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed() -> None:
  """`jax.distributed.initialize()` for multi-host runs (cluster detected from the environment)."""
  if not jax.distributed.is_initialized():
    jax.distributed.initialize()


def create_mesh() -> Mesh:
  """A mesh over all devices of all processes with the single axis 'data'."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, key: str, mesh: Mesh) -> None:
  """Raises ValueError unless `batch_size` splits evenly over the mesh's devices."""
  n = mesh.devices.size
  if batch_size <= 0 or batch_size % n:
    raise ValueError(f'{key}={batch_size} must be a positive multiple of the number of devices '
                     f'({n}: {jax.devices()[0].platform} x{n}) for data-parallel training')


def global_array(host_array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global jax.Array from a host array that every process holds whole.

  Each process only transfers the slices its own devices hold, so this is also the multi-host
  path (every host computes the same global batch indices from (seed, step)).
  """
  host_array = np.asarray(host_array)
  return jax.make_array_from_callback(host_array.shape, sharding, lambda idx: host_array[idx])


def replicate_tree(tree: Any, mesh: Mesh) -> Any:
  """Places every array leaf of `tree` replicated on the mesh."""
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    return global_array(np.asarray(jax.device_get(x)), sharding)
  return jax.tree_util.tree_map(put, tree)


def is_main_process() -> bool:
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier of all processes of a multi-host run (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
