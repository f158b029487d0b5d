"""Command-line plumbing shared by fmn_jax.extract, .search, .export and .visualize.

`define_workdir_flags` defines ``--workdir`` and ``--allow_unfinished`` the same way in every
tool, `restore_from_flags` restores the run they name, `expand_path` / `expand_paths` expand a
leading ``~`` in path flags (the shell leaves ``--flag=~/x`` alone), and `run_cli` turns bad
input into a one-line error instead of a traceback.
"""

import os
import sys

from fmn_jax import reporting


def expand_path(path: str) -> str:
  """``path`` with a leading ``~`` or ``~user`` expanded (the shell leaves ``--flag=~/x`` alone)."""
  return os.path.expanduser(path) if path else path


def expand_paths(value: str) -> str:
  """`expand_path` of every item of a comma-separated list of paths (one path when it exists)."""
  if not value or ',' not in value or os.path.exists(expand_path(value)):
    return expand_path(value)
  return ','.join(expand_path(item.strip()) for item in value.split(',') if item.strip())


def restore(workdir: str, allow_unfinished: bool = False):
  """``(model, variables, config)`` of a trained workdir (``workdir.restore_model``).

  `allow_unfinished`: also take a stage-2 checkpoint before the stage's last step (a stopped run).
  """
  workdir = os.path.expanduser(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'workdir not found: {workdir!r}')
  from fmn_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  return workdir_lib.restore_model(workdir, allow_unfinished=allow_unfinished)


def define_workdir_flags() -> None:
  """``--workdir`` and ``--allow_unfinished``, the same in every tool."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'Trained workdir (fmn_jax.main --workdir).', required=True)
  flags.DEFINE_bool('allow_unfinished', False, 'Use the latest stage-2 checkpoint even when '
                    'stage 2 was stopped before its last step (as fmn_jax.evaluate '
                    '--allow_unfinished).')


def restore_from_flags():
  """`restore` of ``--workdir`` (``~`` expanded) with ``--allow_unfinished``."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  return restore(f.workdir, allow_unfinished=f.allow_unfinished)


def run_cli(main_fn, define_flags_fn) -> None:
  """absl entry point; bad input (missing file, unreadable image, wrong value) exits with a
  one-line error naming it instead of a traceback."""
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags_fn()

  def wrapped(argv):
    reporting.quiet_library_logs()
    try:
      main_fn(argv)
    except (FileNotFoundError, ValueError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(1)

  app.run(wrapped)
