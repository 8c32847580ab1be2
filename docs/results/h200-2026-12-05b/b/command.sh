# the same wheel, next call on the same machine
PENDING_PARTS=stream_ab bash scripts/gpu_check.sh run pending
