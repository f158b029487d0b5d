#!/usr/bin/env bash
# Pack Market-1501 and the ImageNet ResNet-50 into .devdata/ (in .gitignore) so that they fit the
# lent GPU machine's 64 MiB-per-call transfer: send them in two consecutive calls while it is warm.
#
#   bash scripts/pack_for_gpu.sh MARKET_ROOT [WEIGHTS]
#   bash scripts/pack_for_gpu.sh --wheels DEST     (only the wheels, into DEST/wheels and
#                                                   DEST/wheels_pinned)
#
# Writes .devdata/market_trainquery.tgz (~29 MB), .devdata/market_gallery.tgz (~34 MB),
# .devdata/resnet50_imagenet_f16.npz (~48 MB: float16 kernels, float32 BatchNorm statistics, no
# fc1000) and .devdata/wheels/ (ml_collections and clu for Python 3.12, which the GPU image lacks,
# and in wheels/deps/ what they and the training path import that the image may lack: wrapt, which
# clu.metrics imports, tqdm and flatbuffers; gpu_calls.sh installs those only where missing).
#
# .devdata/wheels_pinned/ holds the flax, optax and orbax-checkpoint this project's tests ran with,
# used there only if the image's own fail the smoke run.
#
# The calls on the GPU machine, their order and what each carries: scripts/gpu_calls.sh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
download() {  # DEST PACKAGE==VERSION...: wheels for the GPU image's Python 3.12 on x86-64 Linux
  local dest=$1; shift
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d "$dest" "$@"
}
wheels() {
  rm -rf "$1/wheels" "$1/wheels_pinned"
  download "$1/wheels" ml_collections==1.1.0 clu==0.0.12
  # Each wheel's name is its module's name: gpu_calls.sh tests `import NAME` before installing.
  download "$1/wheels/deps" wrapt==2.5.2 tqdm==4.70.1 flatbuffers==25.12.19
  download "$1/wheels_pinned" flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8
}
if [ "${1:-}" = --wheels ]; then
  wheels "${2:?usage: pack_for_gpu.sh --wheels DEST}"
  exit 0
fi
ROOT=${1:?usage: pack_for_gpu.sh MARKET_ROOT [WEIGHTS]}
WEIGHTS=${2:-$(python -m fmn_jax.pretrained fetch)}
mkdir -p "$HERE/.devdata"
parent=$(cd "$ROOT/.." && pwd); name=$(basename "$ROOT")
tar czf "$HERE/.devdata/market_trainquery.tgz" -C "$parent" --exclude=Thumbs.db \
  "$name/bounding_box_train" "$name/query"
tar czf "$HERE/.devdata/market_gallery.tgz" -C "$parent" --exclude=Thumbs.db "$name/bounding_box_test"
wheels "$HERE/.devdata"
python -m fmn_jax.pretrained convert --input="$WEIGHTS" \
  --output="$HERE/.devdata/resnet50_imagenet_f16.npz" --float16 --drop_head
ls -l "$HERE/.devdata"
