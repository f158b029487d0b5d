"""Tests of fmn_jax.search: ranking, the JSON format, the CLI with a features-file gallery."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from fmn_jax import extract
from fmn_jax import search


def test_rank_and_json_format():
  q = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
  g = np.array([[3.0, 4.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]], np.float32)
  dist = search.distance_matrix(q, g)
  np.testing.assert_allclose(dist[0], [5.0, 1.0, np.sqrt(2.0), 1.0], rtol=1e-5)
  idx, d = search.rank(dist, top=3)
  np.testing.assert_array_equal(idx, [[1, 3, 2], [2, 1, 3]])  # ties keep gallery order
  out = search.results_json(["qa.png", "qb.png"], ["g0", "g1", "g2", "g3"], idx, d, top=3)
  assert out["format"] == "fmn_jax.search/1" and out["top"] == 3
  first = out["queries"][0]
  assert first["query"] == "qa.png"
  assert first["results"][0] == {"rank": 1, "name": "g1", "distance": pytest.approx(1.0)}
  assert [r["rank"] for r in first["results"]] == [1, 2, 3]
  json.dumps(out)  # plain JSON types only
  with pytest.raises(ValueError, match="same D"):
    search.distance_matrix(q, np.zeros((3, 5), np.float32))
  assert search.figure_name("sub dir/a b.jpg") == "sub_dir__a_b.jpg.png"
  # Names that map to one file name get their own figures.
  assert search.figure_names(["a b.jpg", "a_b.jpg", "x/y.jpg", "x__y.jpg", "A_B.jpg"]) == [
      "a_b.jpg.png", "a_b.jpg_2.png", "x__y.jpg.png", "x__y.jpg_2.png", "A_B.jpg_3.png"]


def test_search_api_folder_gallery_with_rerank(tiny_model, tiny_run, tmp_path):
  model, variables, config = tiny_model
  data = os.path.join(tiny_run["workdir"], "data")
  query = os.path.join(data, "query")
  qname = sorted(os.listdir(query))[0]
  result = search.search(model, variables, config, os.path.join(query, qname),
                         os.path.join(data, "bounding_box_test"), top=5, rerank=True,
                         out=str(tmp_path / "rr"), progress=False)
  assert result["distance"].startswith("k-reciprocal")
  (entry,) = result["queries"]
  dists = [r["distance"] for r in entry["results"]]
  assert entry["query"] == qname and len(dists) == 5 and dists == sorted(dists)
  png = tmp_path / "rr" / entry["figure"]
  with Image.open(png) as im:
    assert im.size[0] > 300 and im.size[1] > 100
  with open(tmp_path / "rr" / "search.json") as f:
    assert json.load(f)["queries"][0]["results"] == entry["results"]


def _home_env(env, home):
  """``env`` in which '~' is ``home`` (user site-packages and matplotlib's cache kept)."""
  import site
  import matplotlib
  return dict(env, HOME=str(home), PYTHONUSERBASE=site.getuserbase(),
              MPLCONFIGDIR=matplotlib.get_configdir())


def test_search_names_a_file_that_is_not_features(tiny_model, tmp_path):
  model, variables, config = tiny_model
  text = tmp_path / "gallery.npz"
  text.write_text("a.jpg\nb.jpg\n")
  with pytest.raises(ValueError, match=r"gallery\.npz' is not a features \.npz written by "
                     r"fmn_jax\.extract"):
    search.search(model, variables, config, str(text), str(text), progress=False)


def test_search_cli_with_features_gallery(tiny_model, tiny_run, tmp_path):
  """A features-file gallery is used as is: its image files may even be gone."""
  model, variables, config = tiny_model
  data = os.path.join(tiny_run["workdir"], "data")
  gallery_dir = tmp_path / "gallery"
  shutil.copytree(os.path.join(data, "bounding_box_test"), gallery_dir)
  feats = extract.extract(variables, str(gallery_dir), config, model=model, progress=False)
  npz = str(tmp_path / "gallery.npz")
  extract.save_features(npz, feats)
  shutil.rmtree(gallery_dir)  # From here on, re-extracting the gallery would fail.
  qdir = tmp_path / "queries"
  qdir.mkdir()
  names = sorted(os.listdir(os.path.join(data, "query")))[:2]
  for n in names:  # One JPEG as is, one as greyscale PNG of another size.
    shutil.copy(os.path.join(data, "query", n), qdir / n)
  Image.open(qdir / names[1]).convert("L").resize((50, 100)).save(qdir / "grey.png")
  os.remove(qdir / names[1])
  out = tmp_path / "out"
  os.symlink(tiny_run["workdir"], tmp_path / "run")
  proc = subprocess.run(  # Every path given from '~' (here tmp_path).
      [sys.executable, "-m", "fmn_jax.search", "--workdir=~/run", "--query=~/queries",
       "--gallery=~/gallery.npz", "--top=4", "--out=~/out", "--noprogress"],
      env=_home_env(tiny_run["env"], tmp_path), cwd=str(tmp_path), capture_output=True,
      text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "could not be restored" not in proc.stderr  # orbax's warning about the checkpoint
  with open(out / "search.json") as f:
    result = json.load(f)
  assert result["gallery_source"] == npz and result["num_gallery"] == len(feats)
  assert result["workdir"] == str(tmp_path / "run") and not (tmp_path / "~").exists()
  assert [q["query"] for q in result["queries"]] == [names[0], "grey.png"]
  for q in result["queries"]:
    assert [r["rank"] for r in q["results"]] == [1, 2, 3, 4]
    assert all(r["name"] in feats.names for r in q["results"])
    assert os.path.getsize(out / q["figure"]) > 5000
  # Same ranking as the API on the same inputs.
  api = search.search(model, variables, config, str(qdir), npz, top=4, progress=False)
  api_results, cli_results = api["queries"][0]["results"], result["queries"][0]["results"]
  assert [(r["rank"], r["name"]) for r in api_results] == [
      (r["rank"], r["name"]) for r in cli_results]
  assert [r["distance"] for r in api_results] == pytest.approx(
      [r["distance"] for r in cli_results])
  # A features file from another model or other evaluation settings is refused, by name.
  changed = jax.tree_util.tree_map(np.asarray, variables)
  changed["params"]["lan"]["fc"]["kernel"] = changed["params"]["lan"]["fc"]["kernel"] + 0.5
  with pytest.raises(ValueError, match=r"gallery features .*gallery\.npz.* not extracted with "
                     r"this model.*model '[0-9a-f]{16}' \(this model: '[0-9a-f]{16}'\)"):
    search.search(model, changed, config, str(qdir), npz, top=4, progress=False)
  flipless = config.copy_and_resolve_references()
  flipless.eval.flip = not config.eval.flip
  with pytest.raises(ValueError, match=r"flip (True|False) \(this model: (False|True)\)"):
    search.search(model, variables, flipless, str(qdir), npz, top=4, progress=False)
