#!/usr/bin/env bash
# The GPU path, checked on one CUDA machine, every step under its own time limit (1,000 s in all):
#   1. the tests marked `gpu` (tests/test_gpu.py: models and data on the GPU, bf16 autocast,
#      cuDNN's LSTM, sampling on GPU against CPU);
#   2. a 1-worker training run on Ray Train with use_gpu=true (NCCL) and bf16=true, end to end;
#   3. scripts/bench_gpu.py: tokens/s of the MLE and Gumbel steps, fp32 and bf16, at SeqGAN
#      oracle size and at a large size, against the measured bf16 matmul ceiling;
#   4. time to quality: scripts/bench_quality.py on one seed, MLE and the `seqgan` and `nce_mix`
#      recipes from scratch trained on the GPU (fp32), NLL_oracle against training seconds and
#      the first time at or under SeqGAN's 8.736, the CPU figures' protocol (BENCHMARKS.md).
#      The SeqGAN oracle is read from $SEQGAN_ORACLE (default
#      ../shared/data/seqgan_oracle/target_params.npz); without it a random oracle stands in and
#      8.736 means nothing.
# Run from the repo root with a Python that has a CUDA torch and Ray:
#   bash scripts/gpu_check.sh                 # results in ./gpu_check_out, or in $OUT when set
#   GPU_CHECK_ONLY="quality_curve" bash scripts/gpu_check.sh   # only the steps named
# Every step has its own time limit; a failed step is reported and the next one still runs. The
# exit status is the number of failed steps. GPU_CHECK_CPU=1 rehearses the script on a machine
# without a GPU: the same steps with use_gpu=false, the benchmark's --smoke-test sizes and
# three times the time limits.
set -uo pipefail

OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PYTHON="${PYTHON:-python}"
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
CPU_REHEARSAL="${GPU_CHECK_CPU:-0}"
if [ "$CPU_REHEARSAL" = 1 ]; then GPU_SETTINGS="use_gpu=false"; BENCH_SIZE="--smoke-test"; SLOWER=3
else GPU_SETTINGS="use_gpu=true bf16=true"; BENCH_SIZE=""; SLOWER=1; fi
ONLY="${GPU_CHECK_ONLY:-}"
declare -a SUMMARY=()
FAILED=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name="$1" limit=$(($2 * SLOWER))  # a small CPU machine gets more time to rehearse
  shift 2
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  echo "== $name (limit ${limit}s): $*"
  local started=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  local took=$((SECONDS - started))
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("| $name | ok | ${took} s |")
  else
    [ "$rc" -eq 124 ] && rc="timeout"
    SUMMARY+=("| $name | FAILED ($rc) | ${took} s |")
    FAILED=$((FAILED + 1))
  fi
}

echo "== environment"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"
  "$PYTHON" -c 'import torch, ray; print("torch", torch.__version__, "cuda", torch.version.cuda,
"available", torch.cuda.is_available(), "cudnn", torch.backends.cudnn.version(), "| ray", ray.__version__)'
} 2>&1 | tee "$OUT/environment.log"
"$PYTHON" -c 'import raygan' 2>/dev/null || "$PYTHON" -m pip install -q -e . --no-deps
if [ "$CPU_REHEARSAL" != 1 ] && ! "$PYTHON" -c 'import torch; assert torch.cuda.is_available()'; then
  echo "gpu_check: no CUDA device visible to torch; nothing to check" >&2
  exit 1
fi

# 1. The tests marked gpu, collecting only the modules that have some (a bare node may lack the
# other tests' dependencies); pytest is installed if missing and the network allows.
"$PYTHON" -c 'import pytest' 2>/dev/null || "$PYTHON" -m pip install -q pytest 2>/dev/null
if "$PYTHON" -c 'import pytest' 2>/dev/null; then
  mapfile -t GPU_TEST_FILES < <(grep -l 'pytest.mark.gpu' tests/test_*.py)
  step gpu_tests 140 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider "${GPU_TEST_FILES[@]}"
else
  SUMMARY+=("| gpu_tests | FAILED (no pytest, and pip could not install it) | 0 s |")
  FAILED=$((FAILED + 1))
fi

# 2. One Ray Train worker on the GPU: NCCL process group, bf16 autocast, every phase, a checkpoint.
smoke_run() {
  rm -rf "$OUT/data" "$OUT/run"
  "$PYTHON" -m raygan.cli prepare --oracle random --num-samples 4096 --num-test 512 \
    --vocab-size 1000 --max-len 20 --out "$OUT/data" --no-progress &&
  "$PYTHON" -m raygan.cli train --data "$OUT/data" --out "$OUT/run" num_workers=1 $GPU_SETTINGS \
    estimator=gumbel mle_steps=60 d_pretrain_steps=10 adv_steps=30 eval_every=50 \
    eval_samples=512 checkpoint_every=50 &&
  "$PYTHON" - "$OUT/run" <<'EOF'
import json, math, sys
summary = json.load(open(f"{sys.argv[1]}/summary.json"))
metrics = summary["final_metrics"]
assert summary["final_step"] == 100, summary["final_step"]
assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)), metrics
print(f"NCCL run ok: {summary['final_step']} steps in {summary['wall_s']:.1f} s, "
      f"nll_oracle {metrics.get('nll_oracle', float('nan')):.3f}, nodes {summary['worker_nodes']}")
EOF
}
export OUT PYTHON GPU_SETTINGS
export -f smoke_run
step nccl_train 150 bash -c smoke_run

# 3. Throughput, printed as a table and kept as JSON.
step bench_gpu 170 "$PYTHON" scripts/bench_gpu.py $BENCH_SIZE --json "$OUT/bench_gpu.json"

# 4. Time to quality on the GPU (training only: the benchmark scores on the driver's CPU, here
# on 2,000 samples a point, as the runs' own evaluations that draw the time curves do).
ORACLE="${SEQGAN_ORACLE:-../shared/data/seqgan_oracle/target_params.npz}"
ORACLE_ARGS=()
if [ "$CPU_REHEARSAL" != 1 ] && [ -f "$ORACLE" ]; then
  ORACLE_ARGS=(--oracle-path "$ORACLE")
elif [ "$CPU_REHEARSAL" != 1 ]; then
  echo "gpu_check: no SeqGAN oracle at $ORACLE; a random oracle stands in"
fi
step quality_curve 540 "$PYTHON" scripts/bench_quality.py "${ORACLE_ARGS[@]}" $BENCH_SIZE \
  --seeds 0 --recipes seqgan,nce_mix --no-controls --eval-samples 2000 --out "$OUT/quality" \
  --json "$OUT/quality_gpu.json" --png "$OUT/quality_gpu.png" --markdown '' \
  --set num_workers=1 "${GPU_SETTINGS% bf16=true}"

echo
echo "| step | result | time |"
echo "|---|---|---:|"
printf '%s\n' "${SUMMARY[@]}"
if [ -f "$OUT/bench_gpu.json" ]; then
  echo
  "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["markdown"])' "$OUT/bench_gpu.json"
fi
if [ -f "$OUT/quality_gpu.json" ]; then
  echo
  "$PYTHON" - "$OUT/quality_gpu.json" <<'EOF'
import json, sys
summary = json.load(open(sys.argv[1]))["oracle"]["summary"]
print("| model | NLL_oracle at T=1 | training s from scratch | s to <= 8.736 |")
print("|---|---:|---:|---:|")
for name, s in summary.items():
    goal = s.get("seconds_to_goal")  # per seed; absent on a random oracle, where 8.736 is moot
    goal = "—" if goal is None else "never" if goal[0] is None else f"{goal[0]:.0f}"
    print(f"| {name} | {s['nll_oracle']['mean']:.3f} | {s['train_s_from_scratch']['mean']:.0f} | "
          f"{goal} |")
EOF
fi
echo "results in $OUT"
exit "$FAILED"
