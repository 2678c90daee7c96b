#!/usr/bin/env bash
# The GPU side in one go, in at most 8 minutes: environment, the CUDA tests, the benchmarks.
#
#   OUT=/tmp/gpu-out bash bench/gpu.sh             # on a CUDA machine; OUT defaults to ./out
#   bash bench/gpu.sh --cpu-check                  # here: every step as a smoke test on the CPU
#
# Needs python with torch + torchvision (CUDA build) and, for the tests, pytest. Installs
# nothing and never imports the orchestrator (no Ray / MLflow / Optuna needed). Writes:
#   $OUT/env.txt         nvidia-smi, python / torch / CUDA / cuDNN versions
#   $OUT/pytest.txt      tests/test_gpu.py
#   $OUT/benchmarks.md   every benchmark's table, for docs/benchmarks.md
#   $OUT/<step>.txt      each step's full output
#   $OUT/summary.txt     each step's status and seconds
# A failing step is recorded and the rest still run; the exit status is 1 if any step failed.
# Steps run most important first; each gets at most its own limit and what is left of BUDGET_S.
set -euo pipefail

CPU_CHECK=0
[ "${1:-}" = "--cpu-check" ] && CPU_CHECK=1
OUT="${OUT:-./out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # absolute, before moving to the repository root
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python}"
BUDGET_S=450  # 7.5 minutes of steps, leaving room for start-up within 8
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
rm -f "$OUT/benchmarks.md" "$OUT/summary.txt"

failed=()
step() {  # step NAME LIMIT COMMAND...: run under min(LIMIT, budget left), tee to $OUT/NAME.txt
    local name="$1" limit="$2" start=$SECONDS status=0 left=$((BUDGET_S - SECONDS))
    shift 2
    if [ "$left" -lt 20 ]; then
        printf '%-24s skipped (budget spent)\n' "$name" | tee -a "$OUT/summary.txt"
        failed+=("$name (no time)")
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "== $name (≤ ${limit}s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt" || status=$?
    printf '%-24s %-6s %4ds\n' "$name" "$([ "$status" = 0 ] && echo ok || echo "rc=$status")" \
        $((SECONDS - start)) | tee -a "$OUT/summary.txt"
    [ "$status" = 0 ] || failed+=("$name")
}
bench() {  # bench NAME LIMIT BENCH ARGS...: one `python bench` run, its table appended to benchmarks.md
    local name="$1" limit="$2"
    shift 2
    if [ "$CPU_CHECK" = 1 ]; then
        step "$name" "$limit" "$PYTHON" bench "$1" --smoke-test --out "$OUT/benchmarks.md"
    else
        step "$name" "$limit" "$PYTHON" bench "$@" --out "$OUT/benchmarks.md"
    fi
}

{
    date -u '+%F %T UTC'
    echo "host: $(hostname)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
    nvidia-smi || echo "nvidia-smi: not available"
    echo
    "$PYTHON" - <<'EOF'
import platform, torch, torchvision
print("python", platform.python_version(), "| torch", torch.__version__, "| torchvision", torchvision.__version__)
print("CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(), "| available:", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    print(f"cuda:{i}", torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
EOF
} 2>&1 | tee "$OUT/env.txt"

if [ "$CPU_CHECK" = 0 ] && ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "CUDA is not available to torch: nothing to check here (see $OUT/env.txt)" >&2
    exit 1
fi

# 1. The paper recipe's speed: ResNet-20, every lever (compile and CUDA graphs included).
bench trainer-resnet20 170 trainer --depth 20 --images 20000
# 2. Packed trials: K processes sharing the card (what Ray's fractional GPUs do).
bench packing 100 packing
# 3. Trial arrays: K members fused into one model vs one trial alone and vs K processes.
bench arrays 110 arrays --depth 20 56 --images 10000
# 4. The CUDA tests (bf16/channels_last, device-resident batches, resume, every lever).
if "$PYTHON" -c 'import pytest' 2>/dev/null; then
    # --noconftest: the GPU tests need no fixtures, and tests/conftest.py may import the orchestrator.
    step pytest 150 "$PYTHON" -m pytest -q -p no:cacheprovider --noconftest tests/test_gpu.py
else
    echo "pytest is not importable: tests/test_gpu.py skipped" | tee "$OUT/pytest.txt"
fi
# 5. The streaming image-folder loader feeding the card (decode workers; normalisation on the GPU).
bench loader 90 loader --images 2000 --workers 1 4 16
# 6. Deeper nets, levers without compilation.
bench trainer-resnet56-110 90 trainer --depth 56 110 --images 10000 --levers off fused-sgd channels_last bf16

echo
cat "$OUT/summary.txt"
echo "total ${SECONDS}s; results in $OUT"
if [ "${#failed[@]}" -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
