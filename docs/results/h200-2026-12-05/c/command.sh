#!/usr/bin/env bash
# Session 25, call 1: the un-gated f16 KV cache and fixed-point sampler on the new wheel; where
# syn7b's and syn05's one-sequence steps go; ncu on the one-row kernels.
set -u
PENDING_PARTS=kv,sampler bash scripts/gpu_check.sh run pending > $OUT/pending.txt 2>&1; echo "pending rc $?"
tail -25 $OUT/pending.txt
export PYTHONPATH=/tmp/site-gpu-check
mkdir -p /root/m
( time python3 scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from .device/tok.gguf ) > $OUT/synth7b.txt 2>&1
tail -2 $OUT/synth7b.txt
for f in syn7b:/root/m/syn7b.gguf syn05:/tmp/synthetic.gguf; do
  n=${f%%:*}; p=${f#*:}
  timeout 120 python3 benches/profile_cuda_decode.py $p --child timeline --batch 1 --steps 32 > $OUT/timeline_${n}_b1.txt 2>&1
  echo "== $n b1"; cat $OUT/timeline_${n}_b1.txt | tail -40
done
timeout 120 python3 benches/profile_cuda_decode.py /root/m/syn7b.gguf --child timeline --batch 8 --steps 32 > $OUT/timeline_syn7b_b8.txt 2>&1
echo "== syn7b b8"; tail -40 $OUT/timeline_syn7b_b8.txt
for l in Q4_K:18944x3584:1 Q6_K:3584x18944:1 Q5_0:9728x896:1; do
  timeout 120 ncu --clock-control none --kernel-name regex:matvec_mma --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy \
    python3 benches/bench_cuda_matvec.py --launches $l > $OUT/ncu_${l%%:*}.txt 2>&1
  echo "== ncu $l"; grep -v "^==PROF==" $OUT/ncu_${l%%:*}.txt | tail -90
done > $OUT/ncu_all.txt 2>&1
head -c 30000 $OUT/ncu_all.txt | tail -c 6000
cd $OUT && tar czf /tmp/all.tar.gz . && find . -type f -delete && mv /tmp/all.tar.gz $OUT/all.tar.gz
