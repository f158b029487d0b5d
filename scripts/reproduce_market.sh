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
ROOT=$1; WEIGHTS=$2; shift 2
WORK=workdir_market
# WORKROOT is optional: `ROOT WEIGHTS -- --config.x=y` keeps the default one.
if [ $# -gt 0 ] && [ "$1" != "--" ]; then WORK=$1; shift; fi
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

# Stage 1 once; every mask layer reuses the same GRN checkpoint. A later call with the same
# arguments does not start it again once it finished (its last checkpoint is the stage's last step).
grn_args=$(printf '%s\n' "${common[@]}")
if [ "$(cat "$WORK/grn/reproduce.args" 2>/dev/null)" = "$grn_args" ] && "$PY" -c '
import sys
from fmn_jax import workdir
latest, total = workdir.stage_progress(sys.argv[1], "grn")
sys.exit(0 if latest is not None and latest == total else 1)' "$WORK/grn" 2>/dev/null; then
  echo "stage 1 finished before in $WORK/grn"
else
  "$PY" -m fmn_jax.main "${common[@]}" --workdir="$WORK/grn" --config.stages=grn
  echo "$grn_args" > "$WORK/grn/reproduce.args"
fi

for layer in $MASKS; do
  wd="$WORK/mask_$layer"
  mkdir -p "$wd"
  # A layer finished by an earlier call with the same arguments is not evaluated again: its
  # result files are written anew (RESULTS may be a fresh folder each call).
  args=$(printf '%s\n' "${common[@]}" "$layer")
  if [ -f "$wd/failed.txt" ] && [ "$(cat "$wd/reproduce.args" 2>/dev/null)" = "$args" ]; then
    echo "mask $layer failed before, not run again (delete $wd/failed.txt to retry): $(cat "$wd/failed.txt")"
    failed=1; continue
  fi
  note=" (finished before)"
  if [ ! -f "$wd/reproduce.json" ] || [ "$(cat "$wd/reproduce.args" 2>/dev/null)" != "$args" ]; then
    note=""
    rm -f "$wd/failed.txt"
    # Stage 2 + evaluation starting from the shared stage-1 checkpoint.
    rm -rf "$wd/checkpoints/grn"; mkdir -p "$wd/checkpoints"
    cp -r "$WORK/grn/checkpoints/grn" "$wd/checkpoints/grn"
    rc=0
    "$PY" -m fmn_jax.main "${common[@]}" --workdir="$wd" --config.model.mask_layer="$layer" \
      --config.stages=fmn,eval || rc=$?
    if [ $rc -eq 4 ]; then
      # fmn_jax.main stopped by itself (EXIT_STOPPED: a NaN loss, a bad value): it would stop
      # the same way on resume, so the layer is recorded as failed and the next layers still run.
      echo "$args" > "$wd/reproduce.args"
      echo "exit 4: see the run's log.jsonl and the output above" > "$wd/failed.txt"
      echo "mask $layer failed (exit 4); going on with the next layer"; failed=1
      continue
    fi
    # Crashed, killed or cut (any other status): the same command resumes this layer.
    [ $rc -eq 0 ] || exit $rc
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
exit "${failed:-0}"
