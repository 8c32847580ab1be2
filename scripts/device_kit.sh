#!/usr/bin/env bash
# Everything a device session carries, made here in one go on a fresh checkout (all under the
# ignored .device/; each part skipped when already there):
#   .device/wheels     the release wheel of this tree and gguf-py's (gpu_check.sh prepare)
#   .device/ab/new     that wheel again, as gpu_ab.sh's build `new` (A/B settings take it by `wheel_of`)
#   .device/tok.gguf   the real model's tokenizer alone (make_synthetic_model.py --tokenizer-only),
#                      for synthetic models and the engine tests
#   .device/chunks/cNN the real model in 48 MiB pieces (../shared/test-model.md: one call a piece)
#   .device/llamacpp   llama.cpp's source and build scripts (../shared/llamacpp.md)
#     bash scripts/device_kit.sh            (PYTHON: the interpreter with ferrite's build tools)
# The real model comes from ferrite's own fetch (~491 MB once, cached in ~/.cache/ferrite).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[ -x .venv-test/bin/python ] && [ -z "${PYTHON:-}" ] && py=.venv-test/bin/python
mkdir -p .device
if ! ls .device/wheels/ferrite*.whl >/dev/null 2>&1; then PYTHON=$py bash scripts/gpu_check.sh prepare; fi
mkdir -p .device/ab/new && rm -f .device/ab/new/ferrite*.whl && cp .device/wheels/ferrite*.whl .device/ab/new/
model=$(FERRITE_LOG=0 "$py" -c "import ferrite; print(ferrite.fetch_test_model())" | tail -n 1)
[ -f .device/tok.gguf ] || "$py" scripts/make_synthetic_model.py .device/tok.gguf --tokenizer-only --tokenizer-from "$model" | tail -n 1
if [ ! -d .device/chunks ]; then mkdir -p .device/chunks && split -b 48M -d -a 2 "$model" .device/chunks/c; fi
[ -d .device/llamacpp ] || { [ -f ../shared/llamacpp/pack.sh ] && bash ../shared/llamacpp/pack.sh .device/llamacpp >/dev/null; } || true
echo "model sha256 (the device's last chunk call checks it): $(sha256sum "$model" | cut -c1-16)..."
du -sh .device/* | sed 's/^/  /'
