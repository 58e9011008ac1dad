#!/usr/bin/env bash
# The GPU path, checked on one CUDA machine in under 8 minutes:
#   1. the tests marked `gpu` (tests/test_gpu.py: models and data on the GPU, bf16 autocast,
#      cuDNN's LSTM, sampling on GPU against CPU);
#   2. a 1-worker training run on Ray Train with use_gpu=true (NCCL) and bf16=true, end to end;
#   3. scripts/bench_gpu.py: tokens/s of the MLE and Gumbel steps, fp32 and bf16, at SeqGAN
#      oracle size and at a large size, against the measured bf16 matmul ceiling.
# Run from the repo root with a Python that has a CUDA torch and Ray:
#   bash scripts/gpu_check.sh                 # results in ./gpu_check_out, or in $OUT when set
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
declare -a SUMMARY=()
FAILED=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name="$1" limit=$(($2 * SLOWER))  # a small CPU machine gets more time to rehearse
  shift 2
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

echo
echo "| step | result | time |"
echo "|---|---|---:|"
printf '%s\n' "${SUMMARY[@]}"
if [ -f "$OUT/bench_gpu.json" ]; then
  echo
  "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["markdown"])' "$OUT/bench_gpu.json"
fi
echo "results in $OUT"
exit "$FAILED"
