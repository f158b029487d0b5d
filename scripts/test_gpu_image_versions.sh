#!/usr/bin/env bash
# Runs the test suite on the CPU with the library versions of the GPU machine's image (Python 3.12,
# jax 0.11.2, flax 0.12.10, optax 0.2.8, orbax-checkpoint 0.12.4, numpy 2.5.2, pillow 12.3), so a
# break between those and the versions CI installs shows up before a GPU session, not in it.
#
#   bash scripts/test_gpu_image_versions.sh [VENV_DIR] [-- PYTEST_ARGS...]
#
# VENV_DIR (default /tmp/fmn_jax_gpu_image_venv) is created on the first call and reused.
# PYTHON312 names the Python 3.12 interpreter (default: python3.12 on PATH, else pyenv's).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=/tmp/fmn_jax_gpu_image_venv
if [[ $# -gt 0 && "$1" != "--" ]]; then venv=$1; shift; fi
[[ "${1:-}" == "--" ]] && shift

py=${PYTHON312:-}
if [[ -z "$py" ]]; then
  if command -v python3.12 >/dev/null && python3.12 --version >/dev/null 2>&1; then
    py=python3.12
  elif command -v pyenv >/dev/null; then
    py=$(ls "$(pyenv root)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
  fi
fi
if [[ -z "$py" ]] || ! "$py" --version >/dev/null 2>&1; then
  echo "test_gpu_image_versions.sh: no Python 3.12 found; set PYTHON312=/path/to/python3.12" >&2
  exit 2
fi

constraints="$venv/gpu_image_constraints.txt"
if [[ ! -x "$venv/bin/python" ]]; then
  "$py" -m venv "$venv"
fi
cat > "$constraints" <<'EOF'
jax==0.11.2
jaxlib==0.11.2
flax==0.12.10
optax==0.2.8
orbax-checkpoint==0.12.4
numpy==2.5.2
pillow==12.3.*
EOF
"$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints" ".[test,tfds]"
# The suite imports the checkout, not the installed copy.
"$venv/bin/python" -m pip uninstall -q -y fmn_jax
rm -rf build
"$venv/bin/python" -c "import jax, flax, optax, orbax.checkpoint, numpy, PIL; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'orbax', orbax.checkpoint.__version__, \
'numpy', numpy.__version__, 'pillow', PIL.__version__)"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests}"
