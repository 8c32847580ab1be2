#!/usr/bin/env bash
# Session 20, call 2: the weight ring with every plan (sweep), and ncu on the 7B gate/up Q4_K at one row: registers vs ring.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s20b/*.whl .device/wheels/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site FERRITE_CACHE=/tmp/cache
mkdir -p "$OUT"
t0=$SECONDS
N="ncu --clock-control none --kernel-name regex:matvec_mma --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section SchedulerStats --section WarpStateStats --section LaunchStats --metrics dram__bytes_read.sum,smsp__inst_executed.sum,gpu__time_duration.sum"
for cfg in "0 -" "0 8,1,1" "16384 4,1,1" "16384 8,1,1" "8192 4,1,2"; do
  set -- $cfg
  extra=""; [ "$2" != "-" ] && extra="--plan $2"
  echo "######## ring $1 plan $2"
  timeout 60 $N python3 benches/bench_cuda_matvec.py --launches Q4_K:18944x3584:1 --ring $1 $extra 2>&1 | grep -vE "^==PROF==|^==WARNING==" | grep -E "Q4_K|matvec_mma|bytes_read|time_duration|inst_executed|Throughput|Active Cycles|Elapsed|Achieved|Theoretical Occ|Block Limit|Issued Warp|Eligible|Active Warps|No Eligible|Warp Cycles Per Issued|Registers|Shared Memory|Waves"
done 2>&1 | tee $OUT/ncu_ring.txt
echo "ncu $((SECONDS-t0)) s"
timeout 300 python3 benches/bench_cuda_matvec.py --sweep-plans --rings 0,8192,16384 --shapes 7b --types Q4_K,Q6_K --rows 1 2>&1 | tee $OUT/sweep_rings.txt
echo "all $((SECONDS-t0)) s"
