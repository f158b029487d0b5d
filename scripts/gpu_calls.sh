#!/usr/bin/env bash
# The GPU machine's part of the Market-1501 reproduction: one step per device call.
#
#   bash scripts/gpu_calls.sh STEP      (on the GPU machine, in the repository root, OUT set)
#
# Here first: bash scripts/pack_for_gpu.sh MARKET_ROOT (fills .devdata/). Then one device call per
# step, each right after the last: the machine keeps /tmp only while it is warm (30 s after a call),
# and a command gets 10 minutes (call with timeout_s=600). A step stops itself DEADLINE seconds
# after it started, leaves what it finished in $OUT, and ends with "STATUS: done" or
# "STATUS: again": then call the same step again (training resumes from its last checkpoint).
#   setup     carry .devdata/market_trainquery.tgz .devdata/market_gallery.tgz .devdata/wheels
#             (65.4 MB with the tree; the limit is 64 MiB = 67.1 MB). Unpacks Market-1501 into $DATA,
#             installs ml_collections and clu into $SITE (and wrapt, tqdm, flatbuffers where
#             the image lacks them), decodes the image cache, runs
#             configs/demo.py:ci as a smoke test (and the benchmark with SETUP_BENCH=1: it is
#             left to the bench step by default, so that training comes first).
#             Out: data_times.txt, smoke.log, env.json, setup.log
#   train     carry .devdata/resnet50_imagenet_f16.npz .devdata/wheels_pinned on the first train
#             call (later calls find them in $DATA and $SITE while the machine is warm). If setup's smoke
#             run failed with the image's flax/optax/orbax, installs the pinned ones (those the
#             test suite ran with) and runs it again. Then configs/market.py: stage 1, stage 2
#             with the pool1 mask, evaluation. Out: market_fmn.json, market_mask_pool1.json,
#             grn_log.jsonl, mask_pool1_log.jsonl, train.log
#   bench     the benchmark (BENCH_ARGS, default --what=all). Out: benchmark_<gpu>.json
#   ablation  the res2, res3 and res4 masks of the paper's Table 5, from the same stage 1.
#             Out: market_mask_<layer>.json, ablation.log
#   lr_study  stage 2 at fmn.lr_mn 1e-6 (a mask frozen at 1), 1.0 and 0.01 (LR_MN), from the same
#             stage 1 (the train step ran 0.1).
#             A run that stops by itself (NaN loss) is recorded as failed and not run again.
#             Out: market_lr_mn_study.json, lr_study.log
# Order by value for a 30-minute device budget: setup, train (until done), bench, ablation,
# lr_study. Estimated on an H100 (224x224 bf16, batch 64): setup 3-5 min, train 8-12 min (stage 1
# 6,060 steps, stage 2 9,090 steps, evaluation), bench 2-4 min, ablation 14-18 min (two calls),
# lr_study 17-20 min: the last two do not both fit one session.
# Training runs save a checkpoint every CKPT_STEPS steps (404 = 2 epochs), so a call cut at the
# deadline loses at most that much.
# Then copy the JSON files and mask_pool1_log.jsonl into results/ here, fill the tables of README.md and docs/ with
# `python scripts/results_tables.py --write`, and commit them.
# Env: DATA (/tmp/data), SITE (/tmp/site), WORK (/tmp/work), DEVDATA (.devdata), DEADLINE (575 s),
# EXTRA (config overrides for every training run, space separated, e.g. for a CPU dry run on a
# subset), CACHE_SIZE (224,224: the decoded size setup prepares), BENCH_ARGS (--what=all),
# SETUP_BENCH (0), CKPT_STEPS (404), PYTHON (python3).
set -uo pipefail
STEP=${1:-}
case "$STEP" in
  setup|train|bench|ablation|lr_study) ;;
  *) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 2 ;;
esac
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder whose files come back (the device tool sets it)}"
PY=${PYTHON:-python3}
DATA=${DATA:-/tmp/data}; SITE=${SITE:-/tmp/site}; WORK=${WORK:-/tmp/work}
DEVDATA=${DEVDATA:-.devdata}; DEADLINE=${DEADLINE:-575}
read -ra extra <<< "--config.checkpoint.every_steps=${CKPT_STEPS:-404} ${EXTRA:-}"
mkdir -p "$OUT" "$DATA" "$SITE"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
# Compiled steps are kept across calls: a resumed run does not compile again.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
export PYTHONUNBUFFERED=1
SMOKE_OK=$DATA/.smoke_ok

say() { echo "[gpu_calls $STEP $(date +%T), ${SECONDS}s] $*"; }
status() { say "STATUS: $1"; exit "${2:-0}"; }
# Runs a command in what is left of DEADLINE; 124 when it was cut.
within() {
  local left=$(( DEADLINE - SECONDS ))
  if [ "$left" -lt 30 ]; then say "no time left for: $*"; return 124; fi
  timeout "$left" "$@"
}
# Sets ROOT (the unpacked Market-1501) and, with `weights`, WEIGHTS; or stops naming what is missing.
need_data() {
  local found
  found=$(ls -d "$DATA"/*/bounding_box_train 2>/dev/null | head -1)
  [ -n "$found" ] || status "error: no Market-1501 under $DATA: run the setup step first (the machine must still be warm)" 2
  ROOT=$(dirname "$found")
  [ "${1:-}" = weights ] || return 0
  if [ -f "$DEVDATA/resnet50_imagenet_f16.npz" ]; then cp "$DEVDATA/resnet50_imagenet_f16.npz" "$DATA/"; fi
  WEIGHTS=$DATA/resnet50_imagenet_f16.npz
  [ -f "$WEIGHTS" ] || status "error: no weights in $DATA: carry $DEVDATA/resnet50_imagenet_f16.npz" 2
}
pip_target() {
  "$PY" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" "$@"
}
# The wheels in $1, then those in $1/deps whose module does not import yet: dependencies the
# image may lack (pack_for_gpu.sh picks them so that the wheel's name is the module's name).
# Returns 1 when $1 holds no wheel of its own.
install_wheels() {
  local whl mod rc=0
  if compgen -G "$1/*.whl" > /dev/null; then
    pip_target "$1"/*.whl || return 1
  else
    say "no wheels in $1"; rc=1
  fi
  for whl in "$1"/deps/*.whl; do
    [ -e "$whl" ] || continue
    mod=$(basename "$whl"); mod=${mod%%-*}
    "$PY" -c "import $mod" 2> /dev/null && continue
    say "$mod is not in the image: installing $(basename "$whl")"
    pip_target "$whl" || return 1
  done
  return $rc
}
# The whole job on configs/demo.py:ci; on success records the package versions in env.json.
smoke() {
  rm -rf /tmp/fmn_smoke "$SMOKE_OK"
  within "$PY" -m fmn_jax.main --config=configs/demo.py:ci --workdir=/tmp/fmn_smoke \
    --config.progress=false > "$OUT/smoke.log" 2>&1 && [ -f /tmp/fmn_smoke/results.json ] || {
    tail -25 "$OUT/smoke.log"; return 1; }
  "$PY" - "$1" > "$OUT/env.json" <<'PY' && touch "$SMOKE_OK" && cat "$OUT/env.json"
import importlib.metadata, json, platform, sys
import jax
out = {'python': platform.python_version(), 'pinned_wheels': sys.argv[1] == 'pinned',
       'device': jax.devices()[0].device_kind, 'device_count': jax.device_count()}
for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'clu',
             'ml-collections', 'tensorstore'):
  try:
    out[name] = importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    out[name] = 'missing'
print(json.dumps(out, indent=2))
PY
}
bench() {
  local tag args
  tag=$("$PY" -c "import jax; k = jax.devices()[0].device_kind.lower(); print(next((t for t in ('h100', 'h200', 'a100', 'b200') if t in k), jax.default_backend()))")
  read -ra args <<< "${BENCH_ARGS:---what=all}"
  within "$PY" -m fmn_jax.benchmark "${args[@]}" --out="$OUT/benchmark_$tag.json"
}
# reproduce_market.sh for the mask layers $1; its result files go to $OUT.
reproduce() {
  local rc=0 run
  need_data weights
  MASKS="$1" RESULTS=$OUT within bash scripts/reproduce_market.sh "$ROOT" "$WEIGHTS" "$WORK" -- \
    --config.progress=false "${extra[@]}" || rc=$?
  if [ "$STEP" = train ]; then
    for run in grn mask_pool1; do
      [ -f "$WORK/$run/log.jsonl" ] && cp "$WORK/$run/log.jsonl" "$OUT/${run}_log.jsonl"
    done
  fi
  return $rc
}
# "done", "again" (exit 3) or the error, from a step's exit code.
finish() {
  [ "$1" -eq 0 ] && status done
  [ "$1" -eq 124 ] && status "again: call 'bash scripts/gpu_calls.sh $STEP' once more" 3
  status "error: exit $1 ($STEP.log)" 1
}

run_step() {
  case "$STEP" in
    setup)
      [ -f "$DEVDATA/market_trainquery.tgz" ] && [ -f "$DEVDATA/market_gallery.tgz" ] || \
        status "error: carry $DEVDATA/market_trainquery.tgz and $DEVDATA/market_gallery.tgz (pack_for_gpu.sh)" 2
      for f in "$DEVDATA"/market_*.tgz; do tar xzf "$f" -C "$DATA" || status "error: cannot unpack $f" 2; done
      need_data
      say "Market-1501 at $ROOT: $(ls "$ROOT"/bounding_box_train | wc -l) train, $(ls "$ROOT"/query | wc -l) query, $(ls "$ROOT"/bounding_box_test | wc -l) gallery files"
      install_wheels "$DEVDATA/wheels" || say "ml_collections and clu must then be installed already"
      # The three splits into the cache the training runs read (<root>/.fmn_jax_cache).
      within "$PY" -m fmn_jax.data.inspect times --root="$ROOT" --size="${CACHE_SIZE:-224,224}" \
        --cache_dir="$ROOT/.fmn_jax_cache" > "$OUT/data_times.txt" 2>&1
      rc=$?; cat "$OUT/data_times.txt"; [ $rc -eq 0 ] || status "error: decoding the images failed" 1
      smoke image || status "the smoke run failed with the image's flax/optax/orbax (smoke.log): go on with the train step, which carries the pinned ones" 0
      [ "${SETUP_BENCH:-0}" = 1 ] || status done
      bench; rc=$?
      [ $rc -eq 124 ] && status "again: the benchmark was cut; go on with the train step and call the bench step later" 3
      finish $rc
      ;;
    train)
      need_data weights
      if [ ! -f "$SMOKE_OK" ]; then
        say "setup's smoke run did not pass: installing the pinned flax/optax/orbax"
        install_wheels "$DEVDATA/wheels_pinned" && smoke pinned || \
          status "error: the smoke run (configs/demo.py:ci) fails with the pinned packages too (smoke.log)" 1
      fi
      reproduce pool1; finish $?
      ;;
    bench) bench; finish $? ;;
    ablation) reproduce "res2 res3 res4"; finish $? ;;
    lr_study)
      need_data weights
      within "$PY" scripts/mask_lr_study.py --grn_workdir="$WORK/grn" --work="$WORK/study" \
        --lr_mn="${LR_MN:-1e-6,1.0,0.01}" --out="$OUT/market_lr_mn_study.json" -- \
        --config=configs/market.py --config.dataset.root="$ROOT" --config.model.pretrained="$WEIGHTS" \
        --config.progress=false "${extra[@]}"
      finish $?
      ;;
  esac
}

run_step 2>&1 | tee -a "$OUT/$STEP.log"
exit "${PIPESTATUS[0]}"
