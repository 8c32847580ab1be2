# wheel of fcd1682; real model uploaded (sha256 1d9614...ff32); llama.cpp 0c1e57098 built in this lease
E2E_PARTS=bench bash scripts/gpu_check.sh run e2e
