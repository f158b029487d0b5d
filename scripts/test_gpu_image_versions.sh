#!/usr/bin/env bash
# Checks on the CPU, before a GPU session, that the code runs with the GPU machine's image: Python
# 3.12, jax 0.11.2, flax 0.12.10, optax 0.2.8, orbax-checkpoint 0.12.4, numpy 2.5.2, pillow 12.3.
#
#   bash scripts/test_gpu_image_versions.sh [VENV_DIR] [-- PYTEST_ARGS...]
#       the test suite in a venv with those versions (and the test extras).
#   bash scripts/test_gpu_image_versions.sh --gpu_calls [VENV_DIR]
#       scripts/gpu_calls.sh setup, train, bench, ablation and lr_study on a synthetic Market-1501 with a
#       tiny network, in a venv with only what the image has (the versions above, scipy,
#       scikit-image, matplotlib, tensorboard: no ml_collections, clu, wrapt, tqdm, flatbuffers),
#       carrying the wheels pack_for_gpu.sh packs, as the device calls do.
#
# VENV_DIR (default /tmp/fmn_jax_gpu_image_venv; --gpu_calls adds "_bare") is made on the first
# call and reused. PYTHON312 names the Python 3.12 interpreter (default: python3.12 on PATH, else
# pyenv's). --gpu_calls also needs this checkout installed for `python` (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=tests
if [[ "${1:-}" == --gpu_calls ]]; then mode=gpu_calls; shift; fi
venv=/tmp/fmn_jax_gpu_image_venv
if [[ $# -gt 0 && "$1" != "--" ]]; then venv=$1; shift; fi
[[ "${1:-}" == "--" ]] && shift
[[ $mode == gpu_calls ]] && venv=${venv}_bare

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

[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
vpy=$venv/bin/python
constraints="$venv/gpu_image_constraints.txt"
cat > "$constraints" <<'EOF'
jax==0.11.2
jaxlib==0.11.2
flax==0.12.10
optax==0.2.8
orbax-checkpoint==0.12.4
numpy==2.5.2
pillow==12.3.*
EOF
pip_install() { "$vpy" -m pip install -q --disable-pip-version-check -c "$constraints" "$@"; }
versions() {
  "$vpy" -c "import jax, flax, optax, orbax.checkpoint, numpy, PIL; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'orbax', orbax.checkpoint.__version__, \
'numpy', numpy.__version__, 'pillow', PIL.__version__)"
}

if [[ $mode == tests ]]; then
  pip_install ".[test,tfds]"
  # The suite imports the checkout, not the installed copy.
  "$vpy" -m pip uninstall -q -y fmn_jax
  rm -rf build
  versions
  exec "$vpy" -m pytest -q -p no:cacheprovider "${@:-tests}"
fi

# --gpu_calls: the image's packages only.
pip_install jax jaxlib flax optax orbax-checkpoint numpy pillow scipy scikit-image matplotlib \
  tensorboard
versions
for module in ml_collections clu wrapt tqdm flatbuffers; do
  if "$vpy" -c "import $module" 2>/dev/null; then
    echo "test_gpu_image_versions.sh: $venv has $module, which the image lacks; use a new VENV_DIR" >&2
    exit 2
  fi
done
work=$(mktemp -d /tmp/fmn_jax_gpu_calls.XXXXXX)
python -m fmn_jax.data.synthetic --out="$work/market" --num_train_ids=12 --num_test_ids=12 \
  --num_cameras=3 --images_per_camera=2 --image_size=64,32
mkdir -p "$work/devdata"
tar czf "$work/devdata/market_trainquery.tgz" -C "$work" market/bounding_box_train market/query
tar czf "$work/devdata/market_gallery.tgz" -C "$work" market/bounding_box_test
bash scripts/pack_for_gpu.sh --wheels "$work/devdata"
echo unused > "$work/devdata/resnet50_imagenet_f16.npz"  # the runs below start from random weights
export DEVDATA=$work/devdata DATA=$work/data SITE=$work/site WORK=$work/work PYTHON=$vpy
export CACHE_SIZE=64,32 JAX_COMPILATION_CACHE_DIR=$work/jax_cache
export EXTRA='--config.model.pretrained= --config.model.width=8 --config.model.stage_sizes=1,1,1,1
  --config.input.image_size=64,32 --config.dataset.cache_size=64,32 --config.input.pad=4
  --config.model.dtype=float32 --config.grn.epochs=1 --config.fmn.epochs=1
  --config.grn.decay_epochs=(1,) --config.fmn.decay_epochs=(1,) --config.grn.batch_size=16
  --config.fmn.batch_size=16 --config.eval.batch_size=64'
EXTRA=$(echo $EXTRA)
export BENCH_ARGS='--what=eval --parts=distances,evaluation --num_query=20 --num_gallery=60 --dim=16 --repeats=1'
for step in setup train bench ablation lr_study; do
  OUT=$work/out_$step bash scripts/gpu_calls.sh "$step" > "$work/$step.txt" 2>&1 || true
  grep '\[gpu_calls' "$work/$step.txt"
  if ! grep -q 'STATUS: done' "$work/$step.txt"; then
    tail -30 "$work/$step.txt"
    echo "test_gpu_image_versions.sh: gpu_calls.sh $step did not finish ($work/$step.txt)" >&2
    exit 1
  fi
  ls "$work/out_$step"
done
echo "gpu_calls.sh: every step done with the image's packages (files under $work)"
