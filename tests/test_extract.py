"""Tests of image loading (fmn_jax.images) and feature extraction (fmn_jax.extract)."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from fmn_jax import extract
from fmn_jax import images
from fmn_jax import tool_flags
from fmn_jax.data import cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _person(seed, size=(50, 30)):
  rng = np.random.default_rng(seed)
  img = np.full(size + (3,), 200, np.uint8)
  img[size[0] // 5:, size[1] // 4:3 * size[1] // 4] = rng.integers(0, 255, 3)
  return img


@pytest.fixture
def mixed_folder(tmp_path):
  """Images in every mode (and sizes), one broken file and a non-image file."""
  d = tmp_path / "mine"
  (d / "sub").mkdir(parents=True)
  rgb = _person(0)
  Image.fromarray(rgb).save(d / "rgb.png")
  Image.fromarray(_person(1, (128, 64))).save(d / "big.jpg", quality=95)
  Image.fromarray(rgb).convert("L").save(d / "grey.png")
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
  rgba[:5, :, 3] = 0  # transparent top rows
  Image.fromarray(rgba).save(d / "alpha.png")
  Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(d / "sub" / "palette.png")
  Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(d / "sixteen.png")
  Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.tif")
  (d / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  (d / "Thumbs.db").write_bytes(b"\0")
  return d


def test_load_image_modes(mixed_folder):
  d = mixed_folder
  rgb = np.asarray(Image.open(d / "rgb.png"))
  for name in ("rgb.png", "sub/palette.png", "cmyk.tif"):
    out = images.load_image(str(d / name))
    assert out.dtype == np.uint8 and out.shape == (50, 30, 3), name
    assert np.abs(out.astype(int) - rgb).max() <= 12, name  # palette/CMYK are lossy
  grey = images.load_image(str(d / "grey.png"))
  assert grey.shape == (50, 30, 3) and np.all(grey[..., 0] == grey[..., 2])
  sixteen = images.load_image(str(d / "sixteen.png"))
  np.testing.assert_array_equal(sixteen[..., 1], rgb[..., 0])  # top 8 of 16 bits
  alpha = images.load_image(str(d / "alpha.png"))
  assert np.all(alpha[:5] == 255) and np.array_equal(alpha[5:], rgb[5:])  # over white
  resized = images.load_image(str(d / "big.jpg"), size=(64, 32))
  assert resized.shape == (64, 32, 3)
  with pytest.raises(images.UnreadableImageError, match="broken.jpg"):
    images.load_image(str(d / "broken.jpg"))
  with pytest.raises(FileNotFoundError, match="nope.png"):
    images.load_image(str(d / "nope.png"))


def test_list_images_folder_list_file_and_names(mixed_folder, tmp_path):
  paths, names = images.list_images(str(mixed_folder))
  assert names == ["alpha.png", "big.jpg", "broken.jpg", "cmyk.tif", "grey.png", "rgb.png",
                   "sixteen.png", "sub/palette.png"]  # Thumbs.db ignored, relative names
  lst = tmp_path / "list.txt"
  lst.write_text("# mine\nmine/rgb.png\n\nmine/sub/palette.png\n")
  paths, names = images.list_images(str(lst))
  assert names == ["mine/rgb.png", "mine/sub/palette.png"] and all(map(os.path.exists, paths))
  _, names = images.list_images(f"{mixed_folder}/rgb.png,{mixed_folder}/grey.png")
  assert names == ["rgb.png", "grey.png"]
  with pytest.raises(FileNotFoundError, match="missing.png"):
    images.list_images(str(tmp_path / "missing.png"))
  batch, kept, skipped = images.load_images(paths=[str(mixed_folder / n) for n in
                                                   ("rgb.png", "broken.jpg", "grey.png")],
                                            size=(64, 32), skip_unreadable=True)
  assert batch.shape == (2, 64, 32, 3) and kept == [0, 2]
  assert len(skipped) == 1 and "broken.jpg" in skipped[0][0]


def test_as_uint8_batch_arrays():
  assert images.as_uint8_batch(np.random.rand(2, 20, 10)).shape == (2, 20, 10, 3)  # grey batch
  assert images.as_uint8_batch(np.random.rand(20, 10, 3)).shape == (1, 20, 10, 3)
  mixed = [np.zeros((20, 10, 4), np.uint8), Image.new("L", (30, 60))]
  assert images.as_uint8_batch(mixed, size=(64, 32)).shape == (2, 64, 32, 3)
  with pytest.raises(ValueError, match="different sizes"):
    images.as_uint8_batch([np.zeros((20, 10, 3)), np.zeros((21, 10, 3))])


def test_tools_decode_every_mode_as_the_evaluation_does(mixed_folder, tmp_path):
  """The dataset cache (training, evaluation) and the tools give a file the same pixels."""
  d = mixed_folder
  rotated = Image.fromarray(_person(2, (40, 24)))
  exif = Image.Exif()
  exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
  rotated.save(d / "exif.jpg", exif=exif, quality=95)
  names = ["rgb.png", "big.jpg", "grey.png", "alpha.png", "sub/palette.png", "sixteen.png",
           "cmyk.tif", "exif.jpg"]
  for size in ((64, 32), (224, 224), (50, 30)):
    for name in names:
      np.testing.assert_array_equal(cache.decode_image(str(d / name), size),
                                    images.load_image(str(d / name), size), err_msg=name)
  # 16-bit data keeps its top 8 bits (PIL's convert('RGB') would clip it to white).
  rgb = np.asarray(Image.open(d / "rgb.png"))
  np.testing.assert_array_equal(cache.decode_image(str(d / "sixteen.png"), (50, 30))[..., 0],
                                rgb[..., 0])
  assert images.load_image(str(d / "exif.jpg")).shape == (24, 40, 3)  # shown upright


def test_extract_features_matches_evaluation_path(tiny_model, mixed_folder):
  from fmn_jax import features
  model, variables, config = tiny_model
  with pytest.raises(images.UnreadableImageError, match="broken.jpg"):
    extract.extract_features(variables, str(mixed_folder), config, progress=False)
  feats = extract.extract(variables, str(mixed_folder), config, skip_unreadable=True,
                          progress=False, batch_size=4)  # 7 images: 2 batches, one padded
  assert feats.names == ["alpha.png", "big.jpg", "cmyk.tif", "grey.png", "rgb.png",
                         "sixteen.png", "sub/palette.png"]
  assert [os.path.basename(p) for p, _ in feats.skipped] == ["broken.jpg"]
  dim = feats.descriptors.shape[1]
  assert feats.descriptors.shape == (7, dim) and feats.g.shape[0] == feats.l.shape[0] == 7
  assert np.all(np.isfinite(feats.descriptors))
  # Same numbers as the evaluation path: its decode (the dataset cache's) and its features.
  assert feats.meta["decode_size"] == list(config.dataset.cache_size)
  decoded = np.stack([cache.decode_image(p, tuple(config.dataset.cache_size))
                      for p in feats.paths])
  ref = features.compute_descriptors(model, variables, decoded, config, progress=False)
  np.testing.assert_allclose(feats.descriptors, ref["descriptor"], atol=1e-5)
  # In-memory images (a list of differently sized arrays) give the same descriptors.
  arrays = [images.load_image(p) for p in feats.paths[:3]]  # sizes 50x30 and 128x64
  names, desc = extract.extract_features(variables, arrays, config, model=model, progress=False)
  assert names == ["image_00000", "image_00001", "image_00002"]
  np.testing.assert_allclose(desc, feats.descriptors[:3], atol=1e-5)


def test_extract_cli_writes_npz_and_skips(tiny_run, mixed_folder, tmp_path):
  out = tmp_path / "features.npz"
  cmd = [sys.executable, "-m", "fmn_jax.extract", f"--workdir={tiny_run['workdir']}",
         f"--images={mixed_folder}", f"--out={out}", "--parts", "--noprogress"]
  failed = subprocess.run(cmd, env=tiny_run["env"], cwd=REPO, capture_output=True, text=True)
  assert failed.returncode == 1 and "broken.jpg" in failed.stderr
  assert "Traceback" not in failed.stderr and not out.exists()
  done = subprocess.run(cmd + ["--skip_unreadable"], env=tiny_run["env"], cwd=REPO,
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "1 unreadable skipped" in done.stdout
  feats = extract.load_features(str(out))
  assert len(feats) == 7 and feats.g is not None and feats.l is not None
  assert feats.meta["descriptor_dim"] == feats.descriptors.shape[1]
  assert [os.path.basename(p) for p, _ in feats.skipped] == ["broken.jpg"]
  with np.load(out, allow_pickle=False) as raw:  # plain arrays, no pickle
    assert set(raw.files) >= {"names", "descriptors", "g", "l", "paths", "meta", "skipped"}


def test_cli_paths_expand_home(monkeypatch, tmp_path):
  monkeypatch.setenv("HOME", str(tmp_path))
  assert tool_flags.expand_path("~/a/q.npz") == str(tmp_path / "a" / "q.npz")
  assert tool_flags.expand_path("") == "" and tool_flags.expand_path("rel/x") == "rel/x"
  assert tool_flags.expand_paths("~/a.jpg, ~/b,c/d.png") == f"{tmp_path}/a.jpg,{tmp_path}/b,c/d.png"
  (tmp_path / "x,y").mkdir()  # An existing path with a comma is one path.
  assert tool_flags.expand_paths("~/x,y") == str(tmp_path / "x,y")


def test_load_features_names_files_that_are_not_features(tmp_path):
  text = tmp_path / "notes.npz"
  text.write_text("query,gallery\n1,2\n")
  with pytest.raises(ValueError, match=r"notes\.npz' is not a features \.npz written by "
                     r"fmn_jax\.extract: not an \.npz \(zip\) archive$"):
    extract.load_features(str(text))
  np.savez(tmp_path / "other.npz", x=np.zeros(3))
  with pytest.raises(ValueError, match=r"other\.npz' is not a features .*no 'names' array"):
    extract.load_features(str(tmp_path / "other.npz"))
  np.savez(tmp_path / "pickled.npz", names=np.asarray(["a", None], dtype=object),
           descriptors=np.zeros((2, 4), np.float32))
  with pytest.raises(ValueError, match=r"pickled\.npz' is not a features .*pickled \(object\) "
                     r"arrays, which are not loaded$"):
    extract.load_features(str(tmp_path / "pickled.npz"))


def _home_env(env, home):
  """``env`` in which '~' is ``home`` (user site-packages kept where they are)."""
  import site
  return dict(env, HOME=str(home), PYTHONUSERBASE=site.getuserbase())


def _unfinished_copy(workdir, dest):
  """A copy of a finished run (config, last stage-2 checkpoint) that the tools take for one
  stopped in stage 2: its checkpoint is filed one step before the stage's recorded last step."""
  src = os.path.join(workdir, "checkpoints", "fmn")
  last = max(int(d) for d in os.listdir(src) if d.isdigit())
  shutil.copytree(os.path.join(src, str(last)),
                  os.path.join(dest, "checkpoints", "fmn", str(last - 1)))
  for name in ("config.json", "run.json"):
    shutil.copy(os.path.join(workdir, name), dest)
  return last - 1, last


def test_extract_cli_unfinished_run_and_home_paths(tiny_run, tmp_path):
  """`~` in --workdir/--images/--out; an unfinished stage 2 is refused, or used with
  --allow_unfinished; no orbax warning about the checkpoint's item."""
  home = tmp_path / "home"
  step, total = _unfinished_copy(tiny_run["workdir"], str(home / "unf"))
  query = os.path.join(tiny_run["workdir"], "data", "query")
  (home / "imgs").mkdir()
  for name in sorted(os.listdir(query))[:3]:
    shutil.copy(os.path.join(query, name), home / "imgs" / name)
  cmd = [sys.executable, "-m", "fmn_jax.extract", "--workdir=~/unf", "--images=~/imgs",
         "--out=~/out/f.npz", "--noprogress"]
  env = _home_env(tiny_run["env"], home)
  refused = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True)
  assert refused.returncode == 1, refused.stderr[-3000:]
  errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
  assert re.search(rf"at step {step} of {total}: stage 2 was stopped .*--allow_unfinished",
                   errors[0]), errors[0]
  assert str(home / "unf") in errors[0]
  assert "could not be restored" not in refused.stderr
  done = subprocess.run(cmd + ["--allow_unfinished"], env=env, cwd=str(tmp_path),
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "could not be restored" not in done.stderr
  feats = extract.load_features(str(home / "out" / "f.npz"))
  assert len(feats) == 3 and feats.meta["workdir"] == str(home / "unf")
  assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("tool", ["extract", "search", "export", "visualize"])
def test_tools_take_allow_unfinished(tool):
  proc = subprocess.run([sys.executable, "-m", f"fmn_jax.{tool}", "--helpfull"], cwd=REPO,
                        capture_output=True, text=True)
  assert "--[no]allow_unfinished" in proc.stdout + proc.stderr
