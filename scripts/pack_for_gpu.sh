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
# On the GPU machine (device tool; 10 min per command, the machine stays warm 30 s after a call,
# so make each call right after the last one: /tmp survives only while it is warm):
#   call 1, carry [.devdata/market_trainquery.tgz, .devdata/market_gallery.tgz, .devdata/wheels]:
#     mkdir -p /tmp/data && for f in .devdata/market_*.tgz; do tar xzf $f -C /tmp/data; done &&
#     python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devdata/wheels/*.whl
#   call 2, carry [.devdata/resnet50_imagenet_f16.npz]: stage 1, then stage 2 with the pool1 mask
#     cp .devdata/resnet50_imagenet_f16.npz /tmp/data/ && export PYTHONPATH=/tmp/site &&
#     RESULTS=$OUT timeout 570 bash scripts/reproduce_market.sh /tmp/data/Market-1501-v15.09.15 \
#       /tmp/data/resnet50_imagenet_f16.npz /tmp/work 2>&1 | tee $OUT/repro.log
#   a call cut by `timeout` loses only the steps since the last checkpoint: the same command resumes.
#   call 3.., the Table 5 ablation (stage 1 is found complete and reused):
#     export PYTHONPATH=/tmp/site && MASKS="res2 res3 res4" RESULTS=$OUT timeout 570 bash \
#       scripts/reproduce_market.sh /tmp/data/Market-1501-v15.09.15 /tmp/data/resnet50_imagenet_f16.npz /tmp/work
#   next: export PYTHONPATH=/tmp/site && python3 -m fmn_jax.benchmark --what=all \
#       --out=$OUT/benchmark_h100.json
#   if device time is left, the mixing network's rate on the full data (README, "The mixing
#   network's learning rate"; the 1e-4 run is the pool1 run above):
#     export PYTHONPATH=/tmp/site && timeout 570 python3 scripts/mask_lr_study.py \
#       --grn_workdir=/tmp/work/grn --work=/tmp/study --lr_mn=1e-6,0.1,1e-3 \
#       --out=$OUT/market_mask_lr_study.json -- --config=configs/market.py \
#       --config.dataset.root=/tmp/data/Market-1501-v15.09.15 \
#       --config.model.pretrained=/tmp/data/resnet50_imagenet_f16.npz --config.progress=false
# Then copy the returned JSON files into results/ here and commit them. Order of importance, for a
# 30-minute device budget: call 2 (results/market_fmn.json), the benchmark, the ablation, the study.
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
python -m fmn_jax.pretrained convert --input="$WEIGHTS" \
  --output="$HERE/.devdata/resnet50_imagenet_f16.npz" --float16 --drop_head
ls -l "$HERE/.devdata"
