#!/usr/bin/env bash
# Pack Market-1501 and the ImageNet ResNet-50 into .devdata/ (in .gitignore) so that they fit the
# lent GPU machine's 64 MiB-per-call transfer: send them in two consecutive calls while it is warm.
#
#   bash scripts/pack_for_gpu.sh MARKET_ROOT [WEIGHTS]
#
# Writes .devdata/market_trainquery.tgz (~29 MB), .devdata/market_gallery.tgz (~34 MB),
# .devdata/resnet50_imagenet_f16.npz (~48 MB: float16 kernels, float32 BatchNorm statistics, no
# fc1000) and .devdata/wheels/ (ml_collections and clu for Python 3.12, which the GPU image lacks;
# everything else the training path imports is there).
#
# .devdata/wheels_pinned/ holds the flax, optax and orbax-checkpoint this project's tests ran with,
# used there only if the image's own fail the smoke run.
#
# The calls on the GPU machine, their order and what each carries: scripts/gpu_calls.sh.
set -euo pipefail
ROOT=${1:?usage: pack_for_gpu.sh MARKET_ROOT [WEIGHTS]}
HERE=$(cd "$(dirname "$0")/.." && pwd)
WEIGHTS=${2:-$(python -m fmn_jax.pretrained fetch)}
mkdir -p "$HERE/.devdata"
parent=$(cd "$ROOT/.." && pwd); name=$(basename "$ROOT")
tar czf "$HERE/.devdata/market_trainquery.tgz" -C "$parent" --exclude=Thumbs.db \
  "$name/bounding_box_train" "$name/query"
tar czf "$HERE/.devdata/market_gallery.tgz" -C "$parent" --exclude=Thumbs.db "$name/bounding_box_test"
rm -rf "$HERE/.devdata/wheels"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$HERE/.devdata/wheels" ml_collections==1.1.0 clu==0.0.12
rm -rf "$HERE/.devdata/wheels_pinned"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$HERE/.devdata/wheels_pinned" flax==0.12.8 optax==0.2.8 \
  orbax-checkpoint==0.12.8
python -m fmn_jax.pretrained convert --input="$WEIGHTS" \
  --output="$HERE/.devdata/resnet50_imagenet_f16.npz" --float16 --drop_head
ls -l "$HERE/.devdata"
