#!/usr/bin/env bash
# Reproduce the paper's Market-1501 numbers (Tables 1, 2 and 5) with configs/market.py.
#
#   bash scripts/reproduce_market.sh MARKET_ROOT WEIGHTS [WORKROOT] [-- extra --config.x=y ...]
#
# MARKET_ROOT: the unpacked Market-1501-v15.09.15 folder (bounding_box_train, bounding_box_test,
#              query). WEIGHTS: ImageNet ResNet-50 in any format fmn_jax.pretrained reads (the npm
#              TF.js folder, a Keras .h5, a torchvision .pth/.safetensors, or a converted .npz).
# MASKS (env, default "pool1"): mask layers to run, e.g. MASKS="pool1 res2 res3 res4" for the
#              Table 5 ablation. pool1 writes results/market_fmn.json, every layer also writes
#              results/market_mask_<layer>.json. Stage 1 (GRN) is trained once and shared.
# PYTHON (env, default python3): the interpreter.
# RESULTS (env, default results/): where the JSON files go (e.g. results/cpu_check for checks on
#              a subset, so they are never mistaken for the full reproduction).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,14p' "$0"; exit 2
fi
ROOT=$1; WEIGHTS=$2; WORK=${3:-workdir_market}
shift $(( $# >= 3 ? 3 : 2 ))
[ "${1:-}" = "--" ] && shift
EXTRA=("$@")
MASKS=${MASKS:-pool1}
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")/.." && pwd)
RESULTS=${RESULTS:-$HERE/results}
mkdir -p "$RESULTS"

[ -d "$ROOT/bounding_box_train" ] || { echo "error: $ROOT/bounding_box_train not found" >&2; exit 2; }
[ -e "$WEIGHTS" ] || { echo "error: weights $WEIGHTS not found" >&2; exit 2; }

common=(--config="$HERE/configs/market.py" --config.dataset.root="$ROOT"
        --config.model.pretrained="$WEIGHTS" "${EXTRA[@]}")

# Stage 1 once; every mask layer reuses the same GRN checkpoint.
"$PY" -m fmn_jax.main "${common[@]}" --workdir="$WORK/grn" --config.stages=grn

for layer in $MASKS; do
  wd="$WORK/mask_$layer"
  mkdir -p "$wd"
  # A layer finished by an earlier call with the same arguments is not evaluated again: its
  # result files are written anew (RESULTS may be a fresh folder each call).
  args=$(printf '%s\n' "${common[@]}" "$layer")
  note=" (finished before)"
  if [ ! -f "$wd/reproduce.json" ] || [ "$(cat "$wd/reproduce.args" 2>/dev/null)" != "$args" ]; then
    note=""
    # Stage 2 + evaluation starting from the shared stage-1 checkpoint.
    rm -rf "$wd/checkpoints/grn"; mkdir -p "$wd/checkpoints"
    cp -r "$WORK/grn/checkpoints/grn" "$wd/checkpoints/grn"
    "$PY" -m fmn_jax.main "${common[@]}" --workdir="$wd" --config.model.mask_layer="$layer" \
      --config.stages=fmn,eval
    "$PY" - "$wd" "$layer" "$WORK/grn" <<'PY'
import json, os, sys
import jax
wd, layer, grn_wd = sys.argv[1:4]
res = json.load(open(os.path.join(wd, "results.json")))
grn = json.load(open(os.path.join(grn_wd, "results.json"))) if os.path.exists(
    os.path.join(grn_wd, "results.json")) else {}
res.setdefault("stage_seconds", {}).update(
    {k: v for k, v in grn.get("stage_seconds", {}).items() if k == "grn"})
res["device"] = jax.devices()[0].device_kind
res["jax_version"] = jax.__version__
res["seed"] = res.get("config", {}).get("seed")
res["mask_layer"] = layer
with open(os.path.join(wd, "reproduce.json"), "w") as f:
  json.dump(res, f, indent=2, sort_keys=True)
PY
    echo "$args" > "$wd/reproduce.args"
  fi
  for name in "market_mask_$layer.json" $([ "$layer" = pool1 ] && echo market_fmn.json); do
    cp "$wd/reproduce.json" "$RESULTS/$name"; echo "wrote $RESULTS/$name$note"
  done
done
