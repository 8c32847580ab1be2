# calls 2-11 uploaded the real model in 48 MiB chunks (sha256 1d9614638d...c4ff32, as
# ../shared/test-model.md gives it); call 12, the same H100 lease, llama.cpp 0c1e57098 built there
# in call 1:
E2E_PARTS=bench LLAMA_S=200 bash scripts/gpu_check.sh run e2e
