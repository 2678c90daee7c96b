#!/usr/bin/env bash
# GPU checks in one go: environment, the CUDA tests, the trainer throughput benchmark.
#
#   OUT=/tmp/gpu-out bash bench/gpu.sh      # from the repository root; OUT defaults to ./out
#
# Needs python with torch + torchvision (CUDA build) and, for the tests, pytest. Installs
# nothing and never imports the orchestrator (no Ray / MLflow / Optuna needed). Writes:
#   $OUT/env.txt                   nvidia-smi, python / torch / CUDA / cuDNN versions
#   $OUT/pytest.txt                tests/test_gpu.py
#   $OUT/trainer_throughput.md     the benchmark tables, for docs/benchmarks.md
#   $OUT/trainer_throughput_*.txt  each benchmark run's full output
#   $OUT/summary.txt               each step's status and seconds
# A failing step is recorded and the rest still run; the exit status is 1 if any step failed.
# About 3-4 minutes on one H100; the compile step is cut short so the whole stays under 6 minutes.
set -euo pipefail

OUT="${OUT:-./out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # absolute, before moving to the repository root
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python}"
BUDGET_S=340  # the compile step gets whatever is left of this, so the whole stays under 6 min
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
rm -f "$OUT/trainer_throughput.md" "$OUT/summary.txt"

failed=()
step() {  # step NAME LOGFILE COMMAND...: run, tee to LOGFILE, record status and time
    local name="$1" log="$2" start=$SECONDS status=0
    shift 2
    echo "== $name: $*"
    "$@" 2>&1 | tee "$log" || status=$?
    printf '%-34s %-6s %4ds\n' "$name" "$([ "$status" = 0 ] && echo ok || echo "rc=$status")" \
        $((SECONDS - start)) | tee -a "$OUT/summary.txt"
    [ "$status" = 0 ] || failed+=("$name")
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

if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "CUDA is not available to torch: nothing to check here (see $OUT/env.txt)" >&2
    exit 1
fi

if "$PYTHON" -c 'import pytest' 2>/dev/null; then
    # --noconftest: the GPU tests need no fixtures, and tests/conftest.py may import the orchestrator.
    step "pytest tests/test_gpu.py" "$OUT/pytest.txt" \
        timeout 60 "$PYTHON" -m pytest -q -p no:cacheprovider --noconftest tests/test_gpu.py
else
    echo "pytest is not importable: tests/test_gpu.py skipped" | tee "$OUT/pytest.txt"
fi

bench() {  # bench NAME SECONDS ARGS...: one benchmark run, killed after SECONDS
    local name="$1" limit="$2"
    shift 2
    step "throughput $name" "$OUT/trainer_throughput_$name.txt" \
        timeout "$limit" "$PYTHON" bench/trainer_throughput.py --out "$OUT/trainer_throughput.md" "$@"
}
# Time limits: the steps before the compile one cannot together pass BUDGET_S.
bench depth20 75 --depth 20 --precision fp32 bf16
bench depth56 100 --depth 56 --precision fp32 bf16
bench depth56-channels-last 75 --depth 56 --precision bf16 --channels-last
# Same as the run above plus torch.compile (compiled in the untimed warm-up epoch).
left=$((BUDGET_S - SECONDS))
if [ "$left" -ge 60 ]; then
    bench depth56-compile "$left" --depth 56 --precision bf16 --channels-last --compile
else
    echo "throughput depth56-compile: skipped, only ${left}s of the budget left" | tee -a "$OUT/summary.txt"
    failed+=("throughput depth56-compile (no time)")
fi

echo
cat "$OUT/summary.txt"
echo "total ${SECONDS}s; results in $OUT"
if [ "${#failed[@]}" -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
