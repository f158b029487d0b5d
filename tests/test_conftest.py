"""The suite reads nothing beside the clone: the guard in conftest.py refuses ../shared."""

import os

import pytest

import conftest


def test_guard_refuses_a_file_in_shared():
  path = os.path.join(conftest.REPO, "..", "shared", "golden", "README.md")
  assert conftest.reads_shared(path)
  assert conftest.reads_shared(os.path.join(conftest.REPO, "..", "shared"))
  with pytest.raises(PermissionError, match="tests/data"):
    open(path, "rb")  # pylint: disable=consider-using-with


def test_guard_lets_the_clone_and_tmp_through(tmp_path):
  assert not conftest.reads_shared(os.path.join(conftest.DATA, "golden_public_seed0.npz"))
  assert not conftest.reads_shared(os.path.join(conftest.REPO, "shared_file"))
  (tmp_path / "f").write_text("x")
  assert (tmp_path / "f").read_text() == "x"


def test_every_golden_fixture_is_vendored():
  for name in ("golden_public_seed0.npz", "golden_public_seed0_extra.npz"):
    with conftest.golden(name) as g:
      assert g.files, name
