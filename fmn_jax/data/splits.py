"""The re-id dataset records (`Split`, `ReidDataset`) and the rules that build them.

Every layout reader lists (path, pid, camid) items per split and calls `build_dataset`, which
checks the images (`image_checks.filter_readable`), applies the junk rules, relabels the train
pids and makes the records. Junk rules: pid -1 is junk; in the gallery it is kept and flagged
(`junk=True`), in train and query it is dropped and `ReidDataset.notes` says how many were dropped.
The train labels are 0..C-1 over the sorted train pids.
"""

import collections
import dataclasses
from typing import Optional

import numpy as np

from fmn_jax.data import image_checks

# One listed image of a split: its path, person id and camera id.
Item = collections.namedtuple('Item', ['path', 'pid', 'camid'])


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a re-id dataset (arrays aligned with `paths`)."""
  paths: tuple  # tuple[str, ...]
  pids: np.ndarray  # int64 [N]
  camids: np.ndarray  # int64 [N]
  junk: np.ndarray  # bool [N]
  labels: Optional[np.ndarray] = None  # int32 [N] 0..C-1, train split only
  name: str = ''  # 'train', 'query' or 'gallery' (labels the decode progress bar)

  def __len__(self) -> int:
    return len(self.paths)

  @property
  def num_ids(self) -> int:
    """Number of distinct pids (junk included)."""
    return int(np.unique(self.pids).size)


@dataclasses.dataclass(frozen=True)
class ReidDataset:
  """A re-id dataset: three splits plus the train label mapping."""
  name: str
  root: str
  train: Split
  query: Split
  gallery: Split
  num_classes: int
  pid_to_label: dict
  notes: tuple = ()  # tuple[str, ...]

  def summary(self) -> str:
    """A short human-readable table of the splits."""
    lines = [f'{self.name} at {self.root}']
    for split_name in ('train', 'query', 'gallery'):
      split = getattr(self, split_name)
      lines.append(
          f'  {split_name:8s} {len(split):7d} images {split.num_ids:6d} ids '
          f'{np.unique(split.camids).size:3d} cameras {int(split.junk.sum()):6d} junk')
    lines.extend(f'  note: {n}' for n in self.notes)
    return '\n'.join(lines)


def make_split(items: list, split_name: str, where: str, notes: list,
               pid_to_label: Optional[dict] = None) -> Split:
  """Builds a Split, applying the junk rules of the module docstring."""
  if not items:
    raise ValueError(f'empty {split_name} split: no images in {where}')
  if split_name in ('train', 'query'):
    dropped = [it for it in items if it.pid == -1]
    if dropped:
      items = [it for it in items if it.pid != -1]
      notes.append(f'{split_name}: dropped {len(dropped)} junk image(s) with pid -1')
      if not items:
        raise ValueError(f'empty {split_name} split: only junk (pid -1) images in {where}')
  items = sorted(items, key=lambda it: it.path)
  pids = np.array([it.pid for it in items], dtype=np.int64)
  camids = np.array([it.camid for it in items], dtype=np.int64)
  junk = pids == -1
  labels = None
  if pid_to_label is not None:
    labels = np.array([pid_to_label[int(p)] for p in pids], dtype=np.int32)
  return Split(paths=tuple(it.path for it in items), pids=pids, camids=camids, junk=junk,
               labels=labels, name=split_name)


def build_dataset(name: str, root: str, train: list, query: list, gallery: list, where: dict,
                  skip_unreadable: bool, notes: list) -> ReidDataset:
  """Checks images, applies junk rules, relabels train pids and builds the dataset.

  `where[split]` names the folder or list file of each split in the errors.
  """
  splits = {}
  for split_name, items in (('train', train), ('query', query), ('gallery', gallery)):
    if not items:
      raise ValueError(f'empty {split_name} split: no images in {where[split_name]}')
    splits[split_name] = image_checks.filter_readable(items, skip_unreadable, split_name, notes)
  train_pids = sorted({it.pid for it in splits['train'] if it.pid != -1})
  pid_to_label = {int(p): i for i, p in enumerate(train_pids)}
  return ReidDataset(
      name=name, root=root,
      train=make_split(splits['train'], 'train', where['train'], notes, pid_to_label),
      query=make_split(splits['query'], 'query', where['query'], notes),
      gallery=make_split(splits['gallery'], 'gallery', where['gallery'], notes),
      num_classes=len(pid_to_label), pid_to_label=pid_to_label, notes=tuple(notes))
