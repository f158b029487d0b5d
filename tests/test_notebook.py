"""Executes notebooks/quickstart.ipynb (the 'ci' demo variant) on the CPU; any failing cell fails.

The notebook trains its own run of `configs/demo.py:ci`; it shares the persistent JAX compilation
cache of the `tiny_run` fixture (same configuration), so it does not compile everything again.
"""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def test_quickstart_notebook_runs(tiny_run, tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  for key, value in tiny_run["env"].items():
    monkeypatch.setenv(key, value)  # PYTHONPATH (package importable) and the JAX cache
  workdir = tmp_path / "nb_run"
  monkeypatch.setenv("FMN_NOTEBOOK_VARIANT", "ci")
  monkeypatch.setenv("FMN_NOTEBOOK_EPOCHS", "0")
  monkeypatch.setenv("FMN_NOTEBOOK_WORKDIR", str(workdir))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()  # raises CellExecutionError naming the failing cell
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  # curves, ranked worst + best, attention, search result
  assert len(images) == 5
  assert (workdir / "results.json").exists() and (workdir / "search" / "search.json").exists()
  tables = [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
  assert tables and "| FMN |" in tables[0]
