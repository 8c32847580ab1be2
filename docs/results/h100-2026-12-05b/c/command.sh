# call 13, the same H100 lease:
E2E_PARTS=tests bash scripts/gpu_check.sh run e2e
