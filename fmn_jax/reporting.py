"""Run reporting: JSON-lines log, TensorBoard events, progress bars, curves.png, results table.

`clu.metric_writers` imports TensorFlow at package import time, which the training path must not
do, so the writers here are small: a JSON-lines file (always) and TensorBoard event files written
with the `tensorboard` package's own event writer (only when `tensorboard` is installed; it does
not need TensorFlow).
"""

import json
import logging as pylogging
import os
import sys
import time
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

METHODS = ('GRN', 'LAN', 'FMN', 'FMN+rerank')
COLUMNS = ('rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mAP_trapezoid', 'mINP')


def _to_python(value: Any) -> Any:
  if isinstance(value, (np.generic,)):
    return value.item()
  if hasattr(value, 'shape') and getattr(value, 'shape', None) == ():
    return float(value)
  return value


class _QuietLibraries(pylogging.Filter):
  """Drops INFO records of orbax (lines per checkpoint file) and of jax's backend set-up."""

  def filter(self, record):
    path = record.pathname.replace(os.sep, '/')
    return (record.levelno >= pylogging.WARNING or
            not ('/orbax/' in path or '/jax/_src/' in path))


def quiet_library_logs() -> None:
  """Keeps only warnings of orbax (it logs every checkpoint open, save and close at INFO) and of
  jax's backend set-up on the absl log handler; the project's own INFO lines stay."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


class JsonlWriter:
  """Appends one JSON object per line to `path` (flushed at every write)."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._file = open(path, 'a', encoding='utf-8')

  def write(self, record: Mapping[str, Any]) -> None:
    record = {k: _to_python(v) for k, v in record.items()}
    self._file.write(json.dumps(record, sort_keys=True) + '\n')
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class TensorBoardWriter:
  """Scalar summaries as TensorBoard event files, written without TensorFlow."""

  def __init__(self, logdir: str):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self._writer = EventFileWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    values = [self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items()]
    event = self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                  summary=self._summary_pb2.Summary(value=values))
    self._writer.add_event(event)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def tensorboard_available() -> bool:
  try:
    # pylint: disable=g-import-not-at-top,unused-import
    from tensorboard.summary.writer import event_file_writer  # noqa: F401
    return True
  except ImportError:
    return False


class RunLog:
  """The run's log: DIR/log.jsonl always, DIR/tensorboard/ when tensorboard is installed.

  Only process 0 of a multi-host run writes.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, enabled: bool = True):
    self.enabled = enabled
    self.jsonl = JsonlWriter(os.path.join(workdir, 'log.jsonl')) if enabled else None
    self.tb = None
    if enabled and tensorboard and tensorboard_available():
      self.tb = TensorBoardWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, kind: str, stage: str, step: int, **values: Any) -> None:
    """Writes one record; numeric values of 'train', 'epoch' and 'eval' records also go to
    TensorBoard as `stage/kind/name`."""
    if not self.enabled:
      return
    record = {'kind': kind, 'stage': stage, 'step': int(step), 'time': time.time(), **values}
    self.jsonl.write(record)
    if self.tb is not None and kind in ('train', 'epoch', 'eval'):
      scalars = {f'{stage}/{kind}/{k}': v for k, v in values.items()
                 if isinstance(_to_python(v), (int, float)) and not isinstance(v, bool)}
      if scalars:
        self.tb.write_scalars(step, scalars)

  def close(self) -> None:
    if self.jsonl is not None:
      self.jsonl.close()
    if self.tb is not None:
      self.tb.close()


def read_jsonl(path: str) -> list:
  """Reads a JSON-lines file; a truncated last line (killed run) is ignored."""
  records = []
  if not os.path.exists(path):
    return records
  with open(path, encoding='utf-8') as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def progress(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = '',
             unit: str = 'img', enabled: bool = True, initial: int = 0):
  """A tqdm bar; callers `update(num_images)` so its rate reads in images/s."""
  # pylint: disable=g-import-not-at-top
  from tqdm.auto import tqdm
  return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=False,
              disable=not enabled, initial=initial, dynamic_ncols=True, leave=False,
              mininterval=1.0, file=sys.stderr, smoothing=0.1)


def epoch_records(records: Sequence[Mapping[str, Any]]) -> dict:
  """Per-stage lists of the last 'epoch' record for every epoch (resumed runs repeat epochs)."""
  out = {}
  for r in records:
    if r.get('kind') != 'epoch':
      continue
    out.setdefault(r['stage'], {})[int(r['epoch'])] = r
  return {stage: [by_epoch[e] for e in sorted(by_epoch)] for stage, by_epoch in out.items()}


def plot_curves(log_path: str, out_path: str) -> Optional[str]:
  """Writes loss and training accuracy per epoch for both stages to `out_path` (PNG)."""
  per_stage = epoch_records(read_jsonl(log_path))
  if not per_stage:
    return None
  # pylint: disable=g-import-not-at-top
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator
  titles = {'grn': 'stage 1: GRN', 'fmn': 'stage 2: MN + LAN'}
  stages = [s for s in ('grn', 'fmn') if s in per_stage]
  fig, axes = plt.subplots(2, len(stages), figsize=(5.5 * len(stages), 6.5), squeeze=False)
  for col, stage in enumerate(stages):
    recs = per_stage[stage]
    epochs = [r['epoch'] for r in recs]
    ax = axes[0, col]
    ax.plot(epochs, [r['loss'] for r in recs], 'o-', label='total loss')
    if stage == 'fmn' and all('cross_entropy' in r for r in recs):
      ax.plot(epochs, [r['cross_entropy'] for r in recs], 's--', label='cross-entropy (LAN)')
      ax.plot(epochs, [r['ranking_loss'] for r in recs], '^--', label='ranking loss')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f'{titles[stage]}: loss')
    ax.set_xlabel('epoch')
    ax.grid(alpha=0.3)
    ax.legend()
    ax = axes[1, col]
    ax.plot(epochs, [100 * r['accuracy'] for r in recs], 'o-',
            label='train accuracy' + (' (LAN)' if stage == 'fmn' else ' (GRN)'))
    if stage == 'fmn' and all('accuracy_grn' in r for r in recs):
      ax.plot(epochs, [100 * r['accuracy_grn'] for r in recs], 's--',
              label='train accuracy (frozen GRN)')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f'{titles[stage]}: accuracy')
    ax.set_xlabel('epoch')
    ax.set_ylabel('%')
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path


def format_results_table(results: Mapping[str, Any], methods: Sequence[str] = METHODS,
                         ap: str = 'both') -> str:
  """A plain-text table of the ranking summaries (percent).

  Args:
    results: results.json content (method name -> ranking summary).
    methods: rows, in order; missing ones are left out.
    ap: 'standard' (mAP column only), 'trapezoid' (mAP_trapezoid only) or 'both'.
  """
  if ap not in ('standard', 'trapezoid', 'both'):
    raise ValueError(f"ap must be 'standard', 'trapezoid' or 'both', got {ap!r}")
  columns = [c for c in COLUMNS if not ((ap == 'standard' and c == 'mAP_trapezoid')
                                        or (ap == 'trapezoid' and c == 'mAP'))]
  names = {'rank1': 'R-1', 'rank5': 'R-5', 'rank10': 'R-10', 'rank20': 'R-20', 'mAP': 'mAP',
           'mAP_trapezoid': 'mAP(trap)', 'mINP': 'mINP'}
  rows = [m for m in methods if m in results]
  width = max([len(m) for m in rows] + [6])
  lines = ['method'.ljust(width) + ''.join(names[c].rjust(10) for c in columns)]
  lines.append('-' * len(lines[0]))
  for m in rows:
    lines.append(m.ljust(width) + ''.join(f'{results[m][c]:10.2f}' for c in columns))
  return '\n'.join(lines)


def append_error(workdir: str, message: str, stage: str = 'setup', step: int = 0) -> None:
  """Appends {'kind': 'error', 'stage', 'step', 'time', 'message'} to DIR/log.jsonl when the
  workdir exists (a run refused before it created its workdir leaves nothing behind).

  Every stop of a run is recorded so; the caller decides which process writes.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    return
  record = {'kind': 'error', 'stage': stage, 'step': int(step), 'time': time.time(),
            'message': message}
  with open(os.path.join(workdir, 'log.jsonl'), 'a', encoding='utf-8') as f:
    f.write(json.dumps(record, sort_keys=True) + '\n')
