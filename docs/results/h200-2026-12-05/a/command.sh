#!/usr/bin/env bash
# wheel: main 8f6cf87 + the pending-mode changes of c469e7f (no CUDA call before the cold first load)
PENDING_PARTS=load,kv bash scripts/gpu_check.sh run pending
