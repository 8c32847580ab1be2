#!/usr/bin/env bash
# Makes kernels/prebuilt/sm_90.cubins: every kernel module compiled ahead of time for sm_90 by
# NVRTC 13.0 (src/backend/cuda/prebuilt.rs says why and how it is used). Run it after changing
# anything in kernels/ (the test prebuilt_kernels_are_current says when); it takes a few minutes
# on two cores.
#
#     NVRTC_DIR=/path/to/nvidia/cu13/lib bash scripts/prebuild_kernels.sh
#
# NVRTC_DIR holds libnvrtc.so.13 and libnvrtc-builtins.so.13.0 of NVRTC 13.0, e.g. from
#     pip download --no-deps nvidia-cuda-nvrtc==13.0.88 && python -m zipfile -e nvidia_cuda_nvrtc-13.0.88-*.whl DIR
# (DIR/nvidia/cu13/lib); nothing here downloads it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${NVRTC_DIR:?set NVRTC_DIR to the folder of NVRTC 13.0 (libnvrtc.so.13)}"
LD_LIBRARY_PATH="$NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test --release --lib -- --ignored --exact \
    backend::cuda::prebuilt::tests::write_prebuilt_kernels --nocapture
LD_LIBRARY_PATH="$NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test --release --lib -- prebuilt
