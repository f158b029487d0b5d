"""Tests of fmn_jax.export: the file format, and a trained run's export run without model code."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmn_jax import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fn(images):
  x = images.astype(jnp.float32) / 255.0
  return {"descriptor": jnp.mean(x, axis=(1, 2)), "g": x[:, 0, 0]}


@pytest.mark.parametrize("batch_size", [None, 4])
def test_format_roundtrip_any_batch(tmp_path, batch_size):
  exp = export.export_function(_fn, (8, 4), batch_size=batch_size)
  path = export.write_exported(str(tmp_path / "f.jaxexp"), exp,
                               {"input_size": [8, 4], "batch_size": batch_size})
  loaded = export.load_exported(path)
  assert loaded.header["jax_version"] == jax.__version__
  assert loaded.header["platforms"] == ["cpu", "cuda"]
  x = np.random.default_rng(0).integers(0, 255, (7, 8, 4, 3), dtype=np.uint8)  # 7: not 4k
  out = loaded(x)
  np.testing.assert_allclose(out["descriptor"], np.asarray(_fn(x)["descriptor"]), atol=1e-6)
  assert out["g"].shape == (7, 3)
  with pytest.raises(ValueError, match=r"\[N, 8, 4, 3\]"):
    loaded(np.zeros((2, 8, 5, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    loaded(np.zeros((2, 8, 4, 3), np.float32))


def test_platforms_checked():
  assert export.parse_platforms("cpu, CUDA") == ("cpu", "cuda")
  assert export.parse_platforms(["tpu", "rocm"]) == ("tpu", "rocm")
  with pytest.raises(ValueError, match=r"^--platforms: unknown platform 'tpux'; jax\.export "
                     r"lowers for cpu, cuda, rocm, tpu$"):
    export.parse_platforms("cpu,tpux")
  with pytest.raises(ValueError, match=r"unknown platform 'gpu' \(a GPU is cuda or rocm\)"):
    export.parse_platforms("gpu")
  with pytest.raises(ValueError, match="'cpu' is listed twice"):
    export.parse_platforms("cpu,CPU")
  with pytest.raises(ValueError, match="no platform given"):
    export.parse_platforms(" , ")
  with pytest.raises(ValueError, match="unknown platform 'tpux'"):
    export.export_function(_fn, (8, 4), platforms=("cpu", "tpux"))


def test_export_cli_refuses_unknown_platform(tmp_path):
  """Checked before the run is restored: one line naming the value, nothing written."""
  out = tmp_path / "x.jaxexp"
  proc = subprocess.run([sys.executable, "-m", "fmn_jax.export", f"--workdir={tmp_path}",
                         "--platforms=cpu,tpux", f"--out={out}"], cwd=REPO,
                        capture_output=True, text=True)
  assert proc.returncode == 1 and not out.exists()
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --platforms: unknown platform 'tpux'; jax.export lowers for cpu, cuda, rocm, tpu")
  assert "Traceback" not in proc.stderr


def test_bad_files(tmp_path):
  bad = tmp_path / "bad.jaxexp"
  bad.write_bytes(b"PK\x03\x04 something else")
  with pytest.raises(ValueError, match="not an fmn_jax exported model"):
    export.load_exported(str(bad))
  with pytest.raises(FileNotFoundError, match="missing"):
    export.load_exported(str(tmp_path / "missing.jaxexp"))


def _home_env(env, home):
  """``env`` in which '~' is ``home`` (user site-packages kept where they are)."""
  import site
  return dict(env, HOME=str(home), PYTHONUSERBASE=site.getuserbase())


_LOADER = textwrap.dedent("""
    import sys
    import numpy as np
    from fmn_jax.export import load_exported
    model = load_exported(sys.argv[1])
    images = np.load(sys.argv[2])["images"]
    out = model(images)
    loaded = sorted(m for m in sys.modules if m.startswith(("fmn_jax", "flax", "optax", "orbax")))
    np.savez(sys.argv[3], descriptor=out["descriptor"], g=out["g"], l=out["l"],
             modules=np.asarray(loaded, dtype=str))
    """)


def test_export_cli_and_loader_without_model_code(tiny_model, tiny_run, tmp_path):
  from fmn_jax import extract
  model, variables, config = tiny_model
  path = str(tmp_path / "fmn.jaxexp")
  os.symlink(tiny_run["workdir"], tmp_path / "run")
  proc = subprocess.run([sys.executable, "-m", "fmn_jax.export", "--workdir=~/run",
                         "--out=~/fmn.jaxexp"],  # '~' is tmp_path
                        env=_home_env(tiny_run["env"], tmp_path), cwd=str(tmp_path),
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "could not be restored" not in proc.stderr  # orbax's warning about the checkpoint
  assert not (tmp_path / "~").exists()
  header, _ = export.read_exported(path)
  assert header["input_size"] == list(config.input.image_size)
  assert header["normalization"] == config.input.normalization and header["batch_size"] is None

  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (5,) + tuple(config.input.image_size) + (3,), dtype=np.uint8)
  np.savez(tmp_path / "in.npz", images=images)
  res = subprocess.run([sys.executable, "-c", _LOADER, path, str(tmp_path / "in.npz"),
                        str(tmp_path / "out.npz")], env=tiny_run["env"], cwd=str(tmp_path),
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  with np.load(tmp_path / "out.npz") as out:
    # No model code, no flax: beside the loader only fmn_jax.cpu (the standard library only).
    assert list(out["modules"]) == ["fmn_jax", "fmn_jax.cpu", "fmn_jax.export"]
    feats = extract.extract(variables, images, config, model=model, progress=False)
    np.testing.assert_allclose(out["descriptor"], feats.descriptors, atol=1e-5)
    np.testing.assert_allclose(out["g"], feats.g, atol=1e-5)
    np.testing.assert_allclose(out["l"], feats.l, atol=1e-5)
