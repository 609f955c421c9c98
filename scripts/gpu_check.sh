#!/usr/bin/env bash
# One command for someone with a CUDA GPU, no network needed, under 6 minutes: what the
# Triton group kernels do on a real GPU, where CI only interprets and compiles them.
#
#     bash scripts/gpu_check.sh              # from the repository root; results in ./gpu_check
#
# Stages (each under a timeout, each run whatever the last one did; a summary at the end):
#   info    the GPU, torch, Triton, a C compiler (Triton <= 3.6 builds its launchers with one)
#   pytest  pytest -m cuda: every GPU test (tests/test_cuda.py and the others marked cuda),
#           all of them, failures listed at the end (not -x: one failure must not hide the rest)
#   probe   scripts/gpu_probe.py: per kernel and set (T5-small-like, GPT-2-small-like, 4096²,
#           128256×4096; fp32, bf16) its GPU time and GB/s, programs per launch and longest
#           chains, host time per step; registers and spills of every loaded kernel; an unused
#           row beside huge gradients (a flushed subnormal would skip the tensor)
#   bench   python -m adafactor.bench --device cuda: T5-small-like, GPT-2-small-like and
#           4096², fp32 and bf16, ours (fused, CUDA graph), torch.optim.Adafactor(foreach) and
#           fused AdamW; one repeat of 5 timed steps per case
#
# Environment: OUT (results, default ./gpu_check), PYTHON (default python), GPU_CHECK_BUDGET
# (seconds for all of it, default 350). The package runs from src/ (PYTHONPATH): nothing is
# installed. pytest and hypothesis must be importable for the pytest stage (pip install
# --no-index --find-links WHEELS pytest hypothesis, where there is no network).
set -u
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-350}
OUT=${OUT:-$PWD/gpu_check}
PY=${PYTHON:-python}
mkdir -p "$OUT"
unset TRITON_INTERPRET
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$OUT/triton-cache}
SUMMARY=()

# stage NAME SECONDS CMD...: CMD under a timeout of SECONDS (less if the budget is short), its
# output in $OUT/NAME.log and on screen.
stage() {
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 10 ]; then SUMMARY+=("$name: SKIPPED (budget spent)"); return; fi
  echo "== $name (at most ${limit} s): $*"
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  local took=$(($(date +%s) - t0))
  case $rc in
    0) SUMMARY+=("$name: OK (${took} s)") ;;
    124|137) SUMMARY+=("$name: TIMED OUT after ${took} s") ;;
    *) SUMMARY+=("$name: FAILED, status $rc (${took} s)") ;;
  esac
}

info() {
  nvidia-smi --query-gpu=name,compute_cap,memory.total,clocks.max.sm,clocks.max.mem \
    --format=csv 2>&1 || echo "nvidia-smi: not found"
  "$PY" - <<'EOF'
import shutil, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs")
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton: cannot import:", e)
print("C compiler:", shutil.which("cc") or shutil.which("gcc") or shutil.which("clang") or "none")
try:
    import pytest, hypothesis
    print("pytest", pytest.__version__, "hypothesis", hypothesis.__version__)
except Exception as e:
    print("pytest/hypothesis: cannot import:", e)
EOF
}

stage info 30 info
stage pytest 150 "$PY" -m pytest -m cuda -q -rfEs -p no:cacheprovider
stage probe 90 "$PY" scripts/gpu_probe.py --out "$OUT/probe"
stage bench 150 "$PY" -m adafactor.bench --device cuda --sets t5-small gpt2-small 4096x4096 \
  --dtypes fp32 bf16 --candidates ours-fused ours-graph torch-foreach adamw-fused \
  --repeats 1 --steps 5 --warmup 3 --timeout 60 --out "$OUT/bench"

{
  echo "gpu_check: $(date -u), $(($(date +%s) - START)) s"
  for line in "${SUMMARY[@]}"; do echo "  $line"; done
  echo "pytest:"; grep -E "passed|failed|error" "$OUT/pytest.log" | tail -3 | sed 's/^/  /'
  echo "probe: $OUT/probe/probe.txt"; echo "bench: $OUT/bench/table.md"
  [ -f "$OUT/bench/table.md" ] && sed 's/^/  /' "$OUT/bench/table.md"
} | tee "$OUT/summary.txt"
