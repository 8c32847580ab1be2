# wheel of fcd1682; the wide rule at 8 rows by environment (the default from 22fc72f)
FERRITE_CUDA_MATVEC_WIDE_ROWS=8 PENDING_PARTS=beside bash scripts/gpu_check.sh run pending
