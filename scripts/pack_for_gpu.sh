#!/usr/bin/env bash
# Pack Market-1501 and the ImageNet ResNet-50 into .devdata/ (ignored by git) so that they fit the
# lent GPU machine's 64 MiB-per-call transfer: send them in two consecutive calls while it is warm.
#
#   bash scripts/pack_for_gpu.sh MARKET_ROOT [WEIGHTS]
#
# Writes .devdata/market_trainquery.tgz (~29 MB), .devdata/market_gallery.tgz (~34 MB) and
# .devdata/resnet50_imagenet_f16.npz (~48 MB: float16 kernels, float32 BatchNorm statistics, no
# fc1000). On the GPU machine, unpack each outside the repository:
#   call 1 (carry .devdata/market_trainquery.tgz, .devdata/market_gallery.tgz):
#     mkdir -p /tmp/data && for f in .devdata/market_*.tgz; do tar xzf $f -C /tmp/data; done
#   call 2 (carry .devdata/resnet50_imagenet_f16.npz):
#     cp .devdata/resnet50_imagenet_f16.npz /tmp/data/
#   then: MASKS="pool1 res2 res3 res4" bash scripts/reproduce_market.sh \
#           /tmp/data/Market-1501-v15.09.15 /tmp/data/resnet50_imagenet_f16.npz /tmp/work
set -euo pipefail
ROOT=${1:?usage: pack_for_gpu.sh MARKET_ROOT [WEIGHTS]}
HERE=$(cd "$(dirname "$0")/.." && pwd)
WEIGHTS=${2:-$(python -m fmn_jax.pretrained fetch)}
mkdir -p "$HERE/.devdata"
grep -qx '/.devdata/' "$HERE/.git/info/exclude" 2>/dev/null || echo '/.devdata/' >> "$HERE/.git/info/exclude"
parent=$(cd "$ROOT/.." && pwd); name=$(basename "$ROOT")
tar czf "$HERE/.devdata/market_trainquery.tgz" -C "$parent" --exclude=Thumbs.db \
  "$name/bounding_box_train" "$name/query"
tar czf "$HERE/.devdata/market_gallery.tgz" -C "$parent" --exclude=Thumbs.db "$name/bounding_box_test"
python -m fmn_jax.pretrained convert --input="$WEIGHTS" \
  --output="$HERE/.devdata/resnet50_imagenet_f16.npz" --float16 --drop_head
ls -l "$HERE/.devdata"
