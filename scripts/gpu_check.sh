#!/usr/bin/env bash
# The GPU check: everything CUDA-related that CI cannot run, in ONE call to the device machine.
#
# Here (the build machine, no GPU needed):
#     scripts/gpu_check.sh prepare [DEST]       # DEST defaults to /work/main/.device/cuda
#   builds the release wheel into DEST/wheels, adds the gguf-py wheel (pure Python; the device has
#   no network), and copies tests/, scripts/ and pyproject.toml into DEST.
#
# On the device (through the `run` tool, carrying .device/cuda):
#     cd .device/cuda && bash scripts/gpu_check.sh run [--quick]
#   installs the wheels into /tmp/site, prints the GPU, runs the cuda-marked pytest tests, the CPU
#   test suite (minus tests that need the real model unless it is there), measures weight-upload
#   bandwidth, writes a synthetic GGUF with the real model's shapes and types and compares
#   Model.load(device="cuda") with device="cpu" on it, does the same on the real model when it was
#   uploaded to /root/m/model.gguf (FERRITE_TEST_MODEL then points there), and prints a table.
#   Logs and the JSON report go to $OUT (or /tmp/gpu_check_out).
#   --quick: only the cuda-marked tests and the upload measurement.
#   Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail

mode=${1:-}
here="$(cd "$(dirname "$0")/.." && pwd)"

if [ "$mode" = prepare ]; then
    set -e
    dest=${2:-/work/main/.device/cuda}
    mkdir -p "$dest/wheels"
    rm -f "$dest"/wheels/ferrite-*.whl
    cd "$here"
    py=${PYTHON:-python3}
    [ -x .venv/bin/python ] && py=.venv/bin/python
    "$py" -m maturin build --release -o "$dest/wheels"
    if ! ls "$dest"/wheels/gguf-*.whl >/dev/null 2>&1; then
        "$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$dest/wheels" "gguf==0.19.0"
    fi
    rm -rf "$dest/tests" "$dest/scripts"
    cp -r tests scripts pyproject.toml "$dest/"
    find "$dest" -name __pycache__ -prune -exec rm -rf {} +
    du -sh "$dest"
    echo "now, through the device tool: cd .device/cuda && bash scripts/gpu_check.sh run   (carry .device/cuda)"
    exit 0
fi

if [ "$mode" != run ]; then
    sed -n '2,20p' "$0"
    exit 2
fi

quick=0
[ "${2:-}" = --quick ] && quick=1
cd "$here"
out=${OUT:-/tmp/gpu_check_out}
mkdir -p "$out"
report="$out/report.jsonl"
: > "$report"
export PYTHONUNBUFFERED=1
export FERRITE_GPU_REPORT="$report"
export FERRITE_CACHE=/tmp/ferrite-cache
py=python3
status=0
step() {  # step NAME COMMAND...: runs, logs to $out/NAME.log, records pass/fail
    local name=$1; shift
    local t0=$SECONDS
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "{\"kind\": \"step\", \"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" >> "$report"
    [ "$rc" -eq 0 ] || status=1
    return 0
}

# A private target, replaced each run: the machine may be shared with other checks.
site=/tmp/site-gpu-check
rm -rf "$site"
"$py" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$site" wheels/*.whl || { echo "wheel install failed"; exit 1; }
export PYTHONPATH="$site"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader || true
"$py" -c "import ferrite; print('ferrite', ferrite.__version__, 'cuda_available', ferrite.cuda_available(), ferrite.cuda_device_info() if ferrite.cuda_available() else '')"

if [ -f /root/m/model.gguf ]; then
    export FERRITE_TEST_MODEL=/root/m/model.gguf
    cuda_marks="cuda"
    cpu_marks="not cuda"
    real=1
else
    cuda_marks="cuda and not model"
    cpu_marks="not cuda and not model"
    real=0
fi

step pytest_cuda "$py" -m pytest -q -ra -p no:cacheprovider -m "$cuda_marks" tests --junitxml="$out/junit_cuda.xml"
[ "$quick" = 1 ] || step pytest_cpu "$py" -m pytest -q -ra -p no:cacheprovider -m "$cpu_marks" tests --junitxml="$out/junit_cpu.xml"
step upload "$py" -c "
import json, os, ferrite
for mb in (64, 491):
    s, p = ferrite._ferrite._cuda_upload_bandwidth(mb << 20)
    print(f'upload {mb} MiB: pinned staging {s:.2f} GB/s, pageable {p:.2f} GB/s')
    open(os.environ['FERRITE_GPU_REPORT'], 'a').write(json.dumps({'kind': 'upload', 'mib': mb, 'staged_gbps': s, 'pageable_gbps': p}) + '\n')
"
like=""
[ "$real" = 1 ] && like="--like /root/m/model.gguf"
if [ "$quick" = 0 ]; then
    step synth_model "$py" scripts/make_synthetic_model.py /tmp/synthetic.gguf $like
    step parity_synthetic "$py" scripts/gpu_model_parity.py /tmp/synthetic.gguf --label synthetic --report "$report"
fi
if [ "$real" = 1 ] && [ "$quick" = 0 ]; then
    step parity_real "$py" scripts/gpu_model_parity.py /root/m/model.gguf --label real --real --report "$report"
fi

"$py" scripts/gpu_check_table.py "$report" "$out"/junit_cuda.xml "$out"/junit_cpu.xml | tee "$out/table.txt"
[ "$real" = 1 ] || echo "real model: not present at /root/m/model.gguf (upload it first for the end-to-end run)"
exit $status
