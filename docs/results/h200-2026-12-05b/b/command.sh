# the same wheel, next call on the same machine; gpu_check.sh as at that commit (its `sums` part then ran with the sums on, its stream_ab variants were off / large / sums on)
PENDING_PARTS=stream_ab bash scripts/gpu_check.sh run pending
