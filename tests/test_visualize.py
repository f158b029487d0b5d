"""Tests of fmn_jax.visualize: ranked lists and attention maps, from arrays and a trained run."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from fmn_jax import figures
from fmn_jax import reporting
from fmn_jax import visualize


def _count(img, color, tol=30):
  return int(np.sum(np.all(np.abs(img[..., :3].astype(int) - color) <= tol, axis=-1)))


def test_select_queries_orders():
  ap = np.array([0.5, np.nan, 0.1, 0.9, 0.3])
  np.testing.assert_array_equal(visualize.select_queries(ap, "worst", 3), [2, 4, 0])
  np.testing.assert_array_equal(visualize.select_queries(ap, "best", 10), [3, 0, 4, 2])
  rnd = visualize.select_queries(ap, "random", 4, seed=1)
  assert sorted(rnd) == [0, 2, 3, 4]  # NaN (no true match) never chosen
  np.testing.assert_array_equal(rnd, visualize.select_queries(ap, "random", 4, seed=1))
  with pytest.raises(ValueError, match="order"):
    visualize.select_queries(ap, "median", 2)
  assert "worst AP" in visualize.ranked_list_title("FMN", "worst", 3, 5)
  assert "best AP" in visualize.ranked_list_title("FMN", "best", 3, 5)
  assert "random" in visualize.ranked_list_title("FMN", "random", 3, 5)


def test_one_definition_of_methods_and_the_drawing_api():
  assert visualize.METHODS is reporting.METHODS
  for name in ("ranked_list_figure", "attention_figure", "save_figure", "add_frame", "overlay",
               "wrap_name", "TRUE_COLOR"):
    assert getattr(visualize, name) is getattr(figures, name)
  assert figures.wrap_name("a" * 30, 12) == "…" + "a" * 11 + "\n" + "a" * 12
  assert figures.wrap_name("short") == "short"


def test_overlay_and_frames():
  img = np.full((64, 32, 3), 128, np.uint8)
  framed = visualize.add_frame(img, visualize.TRUE_COLOR, 3)
  assert framed.shape == (70, 38, 3) and tuple(framed[0, 0]) == visualize.TRUE_COLOR
  heat = np.zeros((2, 1))
  heat[0, 0] = 5.0  # hot top half
  up = visualize.upsample(heat, (64, 32))
  assert up.shape == (64, 32) and up[0, 0] > up[-1, 0]
  over = visualize.overlay(img, heat, alpha=0.5)
  assert over.shape == img.shape and over.dtype == np.uint8
  assert over[2, 16, 0] > over[2, 16, 2] and over[-2, 16, 2] > over[-2, 16, 0]  # red top, blue
  np.testing.assert_array_equal(visualize.normalize_map(np.ones((3, 3))), 0.0)
  np.testing.assert_allclose(visualize.channel_mean(np.ones((2, 4, 2, 3)) * 2), 2.0)


def test_ranked_list_figure_from_arrays(tmp_path):
  rng = np.random.default_rng(0)
  q = [rng.integers(0, 255, (64, 32, 3), dtype=np.uint8) for _ in range(2)]
  g = [[rng.integers(0, 255, (64, 32, 3), dtype=np.uint8) for _ in range(4)] for _ in range(2)]
  matches = np.array([[True, False, False, False], [False, False, True, False]])
  path = visualize.save_figure(
      visualize.ranked_list_figure(q, g, matches,
                                   title=visualize.ranked_list_title("FMN", "worst", 2, 4)),
      str(tmp_path / "r.png"))
  img = np.asarray(Image.open(path).convert("RGB"))
  green, red = _count(img, visualize.TRUE_COLOR), _count(img, visualize.FALSE_COLOR)
  assert green > 0 and red > 2.5 * green  # 2 green frames, 6 red ones
  assert _count(img, visualize.QUERY_COLOR) > 0


def test_attention_maps_and_ranked_lists_of_run(tiny_model, tiny_run, tmp_path):
  model, variables, config = tiny_model
  workdir = tiny_run["workdir"]
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 255, (3,) + tuple(config.input.image_size) + (3,), dtype=np.uint8)
  maps = visualize.attention_maps(model, variables, imgs, config)
  h, w = config.input.image_size
  assert maps["mask"].shape == (3, h // 4, w // 4)  # pool1: stride 4
  assert maps["grn"].shape == maps["lan"].shape == (3, h // 32, w // 32)  # res5: stride 32
  assert np.all(maps["mask"] > 0) and all(np.all(np.isfinite(m)) for m in maps.values())
  # The mask is the model's own output.
  x_out = model.apply(variables, _preprocess(imgs, config), train=False)
  np.testing.assert_allclose(maps["mask"], np.asarray(x_out["mask"]), rtol=1e-5)

  ranking = visualize.evaluation_ranking(workdir, "FMN", restored=tiny_model, progress=False)
  with open(os.path.join(workdir, "results.json")) as f:
    fmn_map = json.load(f)["FMN"]["mAP"]
  assert 100 * ranking["mAP"] == pytest.approx(fmn_map, abs=1e-3)  # evaluation's own number
  path = visualize.ranked_lists(workdir, order="best", num=3, top=5, ranking=ranking,
                                out=str(tmp_path / "best.png"))
  img = np.asarray(Image.open(path).convert("RGB"))
  assert _count(img, visualize.TRUE_COLOR) > 0  # the best queries have true matches framed
  path = visualize.attention(workdir, num=4, restored=tiny_model, out=str(tmp_path / "a.png"))
  assert Image.open(path).size[0] > 200


def _preprocess(imgs, config):
  from fmn_jax import data
  return data.preprocess_eval(imgs, image_size=tuple(config.input.image_size),
                              normalization=config.input.normalization)


@pytest.mark.parametrize("command", ["ranked", "attention"])
def test_visualize_cli(tiny_run, tmp_path, command):
  """Paths given from '~' (here tmp_path)."""
  import site
  import matplotlib
  out = tmp_path / f"{command}.png"
  os.symlink(tiny_run["workdir"], tmp_path / "run")
  args = ["--order=worst", "--num=3", "--top=5"] if command == "ranked" else [
      "--images=~/run/data/query", "--num=3"]
  env = dict(tiny_run["env"], HOME=str(tmp_path), PYTHONUSERBASE=site.getuserbase(),
             MPLCONFIGDIR=matplotlib.get_configdir())
  proc = subprocess.run([sys.executable, "-m", "fmn_jax.visualize", command, "--workdir=~/run",
                         f"--out=~/{command}.png"] + args,
                        env=env, cwd=str(tmp_path), capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "could not be restored" not in proc.stderr  # orbax's warning about the checkpoint
  assert not (tmp_path / "~").exists()
  with Image.open(out) as im:
    assert im.size[0] > 200 and im.size[1] > 200
  if command == "ranked":
    img = np.asarray(Image.open(out).convert("RGB"))
    assert _count(img, visualize.FALSE_COLOR) > 0
