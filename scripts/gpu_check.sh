#!/usr/bin/env bash
# The GPU check: everything CUDA-related that CI cannot run, in ONE call to the device machine.
#
# Here (the build machine, no GPU needed):
#     bash scripts/gpu_check.sh prepare
#   builds the release wheel into .device/wheels (an ignored folder) and adds the gguf-py wheel
#   (pure Python; the device has no network). tests/, scripts/ and benches/ travel with the
#   working tree.
#
# On the device (through the `run` tool, carrying .device/wheels):
#     bash scripts/gpu_check.sh run [quick|synthetic|real|all|final]
#   installs the wheels into a private target, prints the GPU, and then
#     quick:     the cuda-marked pytest tests that need no real model (GPU dequantization of every
#                type, every type through the whole model vs CPU and the float64 reference,
#                decode/prefill/batch paths, errors), and the weight-upload bandwidth;
#     synthetic: quick, plus a GGUF of the real model's shapes and types with random blocks:
#                GPU-vs-CPU logits and greedy parity, and benches/bench_cuda.py on it (against
#                transformers with the same architecture, random weights; FERRITE_HF_SYNTH=none
#                skips it) and benches/profile_cuda_decode.py (per-kernel times of a decode step);
#     real:      with the real model at /root/m/model.gguf (uploaded in chunks, see
#                ../shared/test-model.md): the cuda+model pytest tests (real-model logits and
#                greedy parity, every real tensor dequantized on the GPU, the haiku test on
#                cuda), the parity script and bench_cuda.py against transformers loading the same
#                GGUF (FERRITE_HF=random skips transformers' ~75 s GGUF load);
#     all:       synthetic + real (the default);
#     final:     quick + real (when the synthetic numbers are already in hand);
#     e2e:       the real model (uploaded) end to end beside llama.cpp (built in the background by
#                .device/llamacpp/build.sh in an earlier call): its first load with the CUDA
#                libraries evicted and an empty kernel cache, engine/sampler/DLPack tests, the
#                cuda+model tests, llama.cpp's benches, bench_generate with llama.cpp's S_TG
#                beside, a kernel profile of a 64-sequence decode step, the 512-token prompt,
#                the decode step alone and the accuracy against float64 (scripts/gpu_accuracy.py, the
#                f16 KV cache's too);
#     engine:    no upload: the engine, sampler, DLPack, model and matvec GPU tests, then a synthetic
#                model of the real shapes with the real tokenizer (.device/tok.gguf): the decode
#                step at 1/8/64/128 sequences (bench_decode_step.py) and a 64-sequence profile;
#     matvec:    the matrix-vector kernels alone: tests/test_cuda_matvec.py (every type, 1..8
#                rows, both paths, against the CPU's float64 reference) and
#                benches/bench_cuda_matvec.py (old vs new kernels on the real and 7B shapes,
#                GB/s beside the copy bandwidth) and benches/bench_cuda_gemm.py (the quantized
#                GEMM for 16-128 rows); the benches also run in synthetic and all.
#     pending:   no upload, first thing on a fresh machine: what landed without a GPU run
#                (docs/BENCHMARKS.md says which; PENDING_PARTS picks parts; load must be in the
#                machine's first call to be a cold load). load: the first load
#                on the cold machine (the prebuilt kernels), then with the CUDA libraries evicted
#                from the page cache, reading them ahead off / cuBLAS only / all
#                (FERRITE_CUDA_READAHEAD), the same with NVRTC compiling, then cached; kv: the f16
#                KV cache's GPU tests and its decode speed beside float32; sampler: the sampler
#                tests and bench_cuda_sampler.py; guearly: the fused FFN's gate/up tiles before and after
#                its wait; ffn: the FFN block of one or two rows as one
#                launch, its tests and decode steps fused and not; inplace: the LM head reading a
#                decode step's rows in place (model and engine tests, a timeline), then one-sequence
#                decode steps with q/k/v or o split in two and attention variants; plans7b: a 7B's q/k/v on other
#                one-row plans (decode steps); prefetch (the default): weights asked of L2
#                ahead of their use (decode attention's window, the matrix-vector launches'
#                sliding window), the tests with both on, then decode steps with them off and on;
#                stream: the stream kernel's tests; sums: the matrix-vector tests with
#                the int8 path's sums the old way (Q4_K's mins, Q6_K's offsets; the tensor
#                cores' way is the default); stream_ab: the stream kernel's bandwidth, and
#                decode steps with it and those sums off, each alone and both; phases_ab: the stream kernel
#                on x of several phases and on two rows, two staging jobs a warp: decode steps with
#                none, then one at a time on; on29: the GPU tests with those three on (then the
#                stream kernel forced everywhere); s8rows: the int8 path for 3-8 rows (tests,
#                bandwidth, decode steps against the default); stream4: the stream kernel on 3-4
#                rows (tests, decode steps against two rows); wide: a 7B's weights on the
#                kernels to 6 or 8 rows (its test, decode steps at 5-8 sequences); swiglu:
#                SwiGLU inside the stacked gate/up GEMM of 5-16 rows (tests, decode steps on and
#                off); huge: an LM head on the kernels to 8 rows (its test, decode steps); sampler_probe: where
#                a draw's time goes, and the scan's top-p passes on float terms against float64
#                (its name also runs the sampler part: the tests and bench_cuda_sampler.py); mass: the
#                sampler's mass pass (tests, the sampler alone, its probe, the Generator at T 1
#                top-p 0.95 on and off); beside: syn05 and syn7b beside llama.cpp (its build
#                started earlier in the lease); tests: every GPU test without the real model; timeline: where a
#                one-sequence step goes (syn05, syn7b); ab: decode steps under AB_VARIANTS; barrier:
#                a phase boundary's cost, chained launches against a persistent kernel's grid barrier;
#                cluster_handover: two chained launches against one launch of clusters handing over
#                through distributed shared memory (the o projection folded into attention);
#                prefetch_lines: the L2 prefetch windows at a phase's or a layer's size, bulk and by lines;
#                attention_chain: where a one-sequence step's attention launch spends its time
#                (benches/bench_attention_chain.py, its probe build; ATTN_CHAIN_VARIANTS);
#                matvec_chain: the same for o and q/k/v (benches/bench_matvec_chain.py, the
#                planned kernels' probe build; MATVEC_CHAIN_PLANS, MATVEC_CHAIN_VARIANTS); w8: the
#                one-head decode kernel of at most 8 warps, its bit tests; splitk: every split-K
#                launch on the fused FFN's hand-over (SPLITK_FAST, the default since the fifty-first
#                session) against the old one (-DSPLITK_FAST=0): its tests and decode steps;
#                chunk_size: the sampler's rows in 30 chunks of 5,120 for launches of up to eight
#                rows (the default since the fifty-fourth session): the sampler tests,
#                bench_cuda_sampler.py at both sizes, decode steps at 8 sequences against 8,192;
#                norm_rsqrt: the folded RMSNorm's float64 scale from rsqrt (the default since the
#                fifty-fifth session): the matrix-vector and model GPU tests, decode steps with
#                -DMMA_NORM_RSQRT=1 and =0;
#                s8_phase: the planned kernels' int8 path staging x 2,048 columns a phase at 4 and 8
#                rows (-DMMA_S8_PHASE=2048, written in the fifty-sixth session without a GPU; off):
#                the matrix-vector and model GPU tests with it; stream8: the stream kernel on five
#                to eight rows of Q4_K (FERRITE_CUDA_MATVEC_STREAM_ROWS=8, the same session; off):
#                its tests, then decode steps of syn7b at 4, 5 and 8 sequences and syn05 at 8 with
#                neither, each and both, and every type's int8 path to 8 rows with the stream
#                kernel (a 7B's Q6_K LM head on it too), and gate/up's planned launch in four column
#                splits (4.5 waves), all compiled by NVRTC; timeline8: timelines
#                of syn7b's eight-sequence step with the stream kernel off and on; z_skip: the
#                sampler's chunk pass without its sums of exp under a top-k of at most 64 (on since
#                the fifty-seventh session, which had no GPU): the sampler and engine tests, the
#                sampler alone and syn05's decode steps against -DSAMPLE_Z_ALWAYS=1. One call each.
#   Logs, JSON reports and haiku artifacts go to one archive, $OUT/gpu_check.tar.gz (the device
#   tool brings back at most 8 files), beside report.jsonl and table.txt. A table closes the
#   output. Exit status 0 when every step passed.
set -uo pipefail

mode=${1:-}
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

if [ "$mode" = prepare ]; then
    set -e
    dest=.device/wheels
    mkdir -p "$dest"
    rm -f "$dest"/ferrite-*.whl "$dest"/ferrite_llm-*.whl
    py=${PYTHON:-python3}
    [ -x .venv/bin/python ] && py=.venv/bin/python
    "$py" -m maturin build --release -o "$dest"
    if ! ls "$dest"/gguf-*.whl >/dev/null 2>&1; then
        "$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$dest" "gguf==0.19.0"
    fi
    du -sh "$dest"
    echo "now, through the device tool: bash scripts/gpu_check.sh run all   (carry .device/wheels)"
    exit 0
fi

if [ "$mode" != run ]; then
    sed -n '2,28p' "$0"
    exit 2
fi

what=${2:-all}
dest=${OUT:-/tmp/gpu_check_out}
out=/tmp/gpu_check_work
rm -rf "$out"
mkdir -p "$out" "$dest"
report="$out/report.jsonl"
: > "$report"
export PYTHONUNBUFFERED=1
export FERRITE_GPU_REPORT="$report"
export FERRITE_CACHE=/tmp/ferrite-cache
py=python3
status=0
step() {  # step NAME COMMAND...: runs, logs to $out/NAME.log, records pass/fail and seconds
    local name=$1; shift
    local t0=$SECONDS
    echo "=== $name: $*"
    # STEP_TIMEOUT (seconds) bounds each step, so a whole run fits a lease and still reports.
    timeout "${STEP_TIMEOUT:-3000}" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    echo "{\"kind\": \"step\", \"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" >> "$report"
    [ "$rc" -eq 0 ] || status=1
    return 0
}

# A private target, replaced each run.
site=/tmp/site-gpu-check
rm -rf "$site"
"$py" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$site" .device/wheels/*.whl || { echo "wheel install failed"; exit 1; }
export PYTHONPATH="$site"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm --format=csv,noheader || true
if [ "$what" = pending ]; then
    # No CUDA call yet: the device info creates a context, which loads NVRTC and reads the CUDA
    # libraries ahead, and the pending run's first step measures a cold first load.
    "$py" -c "import ferrite; print('ferrite', ferrite.__version__)" || { echo "ferrite does not import"; exit 1; }
else
    "$py" -c "import ferrite; print('ferrite', ferrite.__version__, ferrite.cuda_device_info())" || { echo "ferrite does not import"; exit 1; }
fi

real=0
if [ -f /root/m/model.gguf ]; then
    export FERRITE_TEST_MODEL=/root/m/model.gguf
    real=1
fi

if [ "$what" = quick ] || [ "$what" = synthetic ] || [ "$what" = all ] || [ "$what" = final ]; then
    step pytest_cuda "$py" -m pytest -q -ra -p no:cacheprovider --ignore=tests/test_notebooks.py --ignore=tests/test_readme.py -m "cuda and not model" tests --junitxml="$out/junit_cuda.xml"
    step upload "$py" -c "
import json, os, ferrite
for mb in (64, 491):
    s, p = ferrite._ferrite._cuda_upload_bandwidth(mb << 20)
    print(f'upload {mb} MiB: pinned staging {s:.2f} GB/s, pageable {p:.2f} GB/s')
    open(os.environ['FERRITE_GPU_REPORT'], 'a').write(json.dumps({'kind': 'upload', 'mib': mb, 'staged_gbps': s, 'pageable_gbps': p}) + '\n')
"
fi
if [ "$what" = pending ]; then
    export FERRITE_TOKENIZER_GGUF="$here/${TOKENIZER_GGUF:-.device/tok.gguf}"
    # PENDING_PARTS (default prefetch) splits the run over calls of at most 10 minutes.
    parts=${PENDING_PARTS:-prefetch}
    [ -f /tmp/synthetic.gguf ] || STEP_TIMEOUT=90 step synth_model "$py" scripts/make_synthetic_model.py /tmp/synthetic.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF"
    if [[ $parts == *load* ]]; then
    # First: the cold machine's first load (nothing has read the CUDA libraries yet but the
    # `python -c` above, which does not load NVRTC or cuBLAS). The kernel caches of an earlier
    # run on this machine would make every load below a warm one.
    rm -rf /tmp/fl-*
    STEP_TIMEOUT=120 step first_load_fresh "$py" benches/bench_first_load.py /tmp/synthetic.gguf --cache /tmp/fl-fresh --label "fresh machine"
    for ra in 0 cublas 1; do
        FERRITE_CUDA_READAHEAD=$ra STEP_TIMEOUT=120 step "first_load_evicted_$ra" "$py" benches/bench_first_load.py /tmp/synthetic.gguf --cache "/tmp/fl-evicted-$ra" --evict
    done
    # The same when NVRTC must compile, as on a GPU or an NVRTC the prebuilt file does not cover.
    for ra in 0 1; do
        FERRITE_CUDA_PREBUILT=0 FERRITE_CUDA_READAHEAD=$ra STEP_TIMEOUT=120 step "first_load_compiled_evicted_$ra" "$py" benches/bench_first_load.py /tmp/synthetic.gguf --cache "/tmp/fl-compiled-$ra" --evict --label "NVRTC compiles"
    done
    STEP_TIMEOUT=120 step first_load_cached "$py" benches/bench_first_load.py /tmp/synthetic.gguf --cache /tmp/fl-fresh
    cat "$out"/first_load_*.log > "$dest/first_load.txt" 2>/dev/null
    "$py" -c "import ferrite; print(ferrite.cuda_device_info())"
    fi
    if [[ $parts == *kv* ]]; then
    STEP_TIMEOUT=${CUDA_PYTEST_S:-240} step pytest_kv_f16 "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_dequant.py -m cuda \
        -k "f16_kv or rope_store or errors_are_clear or attention_over or prompt_chunks or several_sequences or prebuilt or kernel_cache" --junitxml="$out/junit_kv_f16.xml"
    STEP_TIMEOUT=${BENCH_S:-150} step kv_dtype_speed "$py" benches/bench_kv_cache_dtype.py --model /tmp/synthetic.gguf --device cuda --context 2048 --tokens 64
    cp "$out/kv_dtype_speed.log" "$dest/kv_dtype_speed.txt" 2>/dev/null
    fi
    # Qwen2.5-7B's shapes with the real tokenizer, made once a machine.
    need_syn7b() {
        [ -f /root/m/syn7b.gguf ] || { mkdir -p /root/m; STEP_TIMEOUT=120 step synth_7b "$py" scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from "$FERRITE_TOKENIZER_GGUF"; }
    }
    # decode_ab "NAME|VAR=VALUE ..." ... -- MODEL:BATCHES ...: bench_decode_step.py's rows for each
    # model under each variant's environment, two interleaved rounds, each row prefixed with the
    # variant's and the model's names. Run as a step by ab_step.
    decode_ab() {
        local variants=() models v m
        while [ "$1" != -- ]; do variants+=("$1"); shift; done
        shift
        models=("$@")
        for round in 1 2; do
            for v in "${variants[@]}"; do
                for m in "${models[@]}"; do
                    # shellcheck disable=SC2086  # the variables, one word each
                    env ${v#*|} timeout 60 "$py" benches/bench_decode_step.py "${m%%:*}" --device cuda --batches "${m#*:}" 2>&1 \
                        | grep --line-buffered -E "^\| [0-9]|Error|error:" | sed "s|^|${v%%|*} $(basename "${m%%:*}") |"
                done
            done
        done
    }
    export -f decode_ab
    export py
    # ab_step NAME SECONDS ARGS...: decode_ab ARGS as step NAME within SECONDS, its table kept
    # beside the archive as NAME.txt.
    ab_step() {
        local name=$1 seconds=$2
        shift 2
        STEP_TIMEOUT=$seconds step "$name" bash -c 'decode_ab "$@"' _ "$@"
        cp "$out/$name.log" "$dest/$name.txt" 2>/dev/null
    }
    if [[ ,$parts, == *,prefetch,* ]]; then
    # Weights asked of L2 ahead of their use (src/backend/cuda/prefetch.rs, off by default until
    # this runs): decode attention's window (FERRITE_CUDA_PREFETCH_MB) and the matrix-vector
    # launches' sliding window (FERRITE_CUDA_PREFETCH_AHEAD_MB), with the weights' own loads marked
    # evict-first (-DMMA_EVICT_FIRST=1) or not. The GPU tests with both windows on, then decode steps
    # of syn05 (1 and 4 sequences: the matrix-vector path they serve) and syn7b (1), two
    # interleaved rounds. One kernel cache for all: its files are keyed by the defines.
    # PENDING_PARTS=prefetch_timeline: step timelines with them off and on.
    STEP_TIMEOUT=${CUDA_PYTEST_S:-180} FERRITE_CUDA_PREFETCH_MB=24 FERRITE_CUDA_PREFETCH_AHEAD_MB=16 FERRITE_CUDA_KERNEL_DEFINES=-DMMA_EVICT_FIRST=1 \
        step pytest_prefetch "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_engine.py -m "cuda and not model" --junitxml="$out/junit_prefetch.xml"
    need_syn7b
    # The variants: prefetches off / attention 24 MB / ahead 16 MB / ahead 16 MB evict-first / both
    # evict-first / attention 24 MB with 64-float value batches.
    ab_step prefetch_ab 330 \
        "off|FERRITE_CUDA_PREFETCH_MB=0" "att24|FERRITE_CUDA_PREFETCH_MB=24" "ahead16|FERRITE_CUDA_PREFETCH_AHEAD_MB=16" \
        "ahead16ef|FERRITE_CUDA_PREFETCH_AHEAD_MB=16 FERRITE_CUDA_KERNEL_DEFINES=-DMMA_EVICT_FIRST=1" \
        "att24ahead16ef|FERRITE_CUDA_PREFETCH_MB=24 FERRITE_CUDA_PREFETCH_AHEAD_MB=16 FERRITE_CUDA_KERNEL_DEFINES=-DMMA_EVICT_FIRST=1" \
        "att24v64|FERRITE_CUDA_PREFETCH_MB=24 FERRITE_CUDA_KERNEL_DEFINES=-DATTN_V_BATCH_FLOATS=64" \
        -- /tmp/synthetic.gguf:1,4 /root/m/syn7b.gguf:1
    fi
    if [[ $parts == *prefetch_timeline* ]]; then
    need_syn7b
    for v in "off|0|0|" "att24ahead16ef|24|16|-DMMA_EVICT_FIRST=1"; do
        IFS='|' read -r name att ahead defines <<< "$v"
        for m in /tmp/synthetic.gguf /root/m/syn7b.gguf; do
            n=$(basename "$m" .gguf)
            FERRITE_CUDA_PREFETCH_MB=$att FERRITE_CUDA_PREFETCH_AHEAD_MB=$ahead FERRITE_CUDA_KERNEL_DEFINES=$defines \
                STEP_TIMEOUT=60 step "timeline_${n}_$name" "$py" benches/profile_cuda_decode.py "$m" --child timeline --batch 1 --steps 32
            cp "$out/timeline_${n}_$name.log" "$dest/timeline_${n}_$name.txt" 2>/dev/null
        done
    done
    fi
    if [[ ,$parts, == *,stream,* ]]; then
    # matvec_mma.cu's stream kernel for one or two rows of x (src/backend/cuda/matvec.rs,
    # StreamMode; on for large launches by default): its per-op test (forced onto every shape),
    # then the whole matrix-vector file and the model and engine GPU tests with it on every one-
    # and two-row launch (always). PENDING_PARTS=stream_ab: its speed.
    STEP_TIMEOUT=${CUDA_PYTEST_S:-240} step pytest_stream_op "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_matvec.py -m cuda -k stream --junitxml="$out/junit_stream_op.xml"
    STEP_TIMEOUT=${CUDA_PYTEST_S:-300} FERRITE_CUDA_MATVEC_STREAM=always \
        step pytest_stream "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_matvec.py tests/test_cuda_model.py tests/test_cuda_engine.py -m "cuda and not model" --junitxml="$out/junit_stream.xml"
    fi
    if [[ ,$parts, == *,sums,* ]]; then
    # The int8 path's sums the old way (Q4_K's mins, Q6_K's offsets as integer instructions,
    # -DMMA_S8_SUMS_MMA=0, kept for A/B; on the tensor cores by default): the matrix-vector tests
    # (the stream kernel's among them) and the model's with it so.
    STEP_TIMEOUT=${CUDA_PYTEST_S:-240} FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_SUMS_MMA=0 \
        step pytest_sums "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_matvec.py tests/test_cuda_model.py -m "cuda and not model" --junitxml="$out/junit_sums.xml"
    fi
    if [[ ,$parts, == *,stream_ab,* ]]; then
    # The one-row kernels' share of the copy bandwidth off / large on the real and 7B shapes,
    # then decode steps of syn05 and syn7b at one and two sequences: neither the stream kernel
    # nor the int8 path's sums on the tensor cores (MMA_S8_SUMS_MMA=0), each alone, and both
    # (the default), two interleaved rounds.
    for sm in off large; do
        FERRITE_CUDA_MATVEC_STREAM=$sm STEP_TIMEOUT=150 step "matvec_stream_$sm" "$py" benches/bench_cuda_matvec.py --tiled-only --rows 1 --shapes real,7b
        cp "$out/matvec_stream_$sm.log" "$dest/matvec_stream_$sm.txt" 2>/dev/null
    done
    need_syn7b
    ab_step stream_ab 400 "neither|FERRITE_CUDA_MATVEC_STREAM=off FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_SUMS_MMA=0" \
        "large|FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_SUMS_MMA=0" "sums|FERRITE_CUDA_MATVEC_STREAM=off" "both|FERRITE_CUDA_MATVEC_STREAM=large" \
        -- /tmp/synthetic.gguf:1,2 /root/m/syn7b.gguf:1,2
    fi
    if [[ ,$parts, == *,phases_ab,* ]]; then
    # The twenty-ninth session's three changes to the one- and two-row kernels, each on its switch
    # (measured on an H100 that session: two rows on by default since, the other two off): the stream kernel on x of several phases (a 7B's
    # ffn_down; FERRITE_CUDA_MATVEC_STREAM=large), on two rows of x (FERRITE_CUDA_MATVEC_STREAM_ROWS=2)
    # and staging two jobs a warp at once (-DMMA_STAGE_JOBS=2). Decode steps of syn05 and syn7b at
    # one and two sequences: all three off (the twenty-eighth session's kernels), the first on,
    # the first two, all three; two interleaved rounds. PHASES_MATVEC=1 adds the
    # one-row kernels' share of the copy bandwidth on the 7B shapes, one-phase against large.
    if [ "${PHASES_MATVEC:-0}" = 1 ]; then
        for sm in one-phase large; do
            FERRITE_CUDA_MATVEC_STREAM=$sm STEP_TIMEOUT=150 step "matvec_stream_$sm" "$py" benches/bench_cuda_matvec.py --tiled-only --rows 1 --shapes 7b
            cp "$out/matvec_stream_$sm.log" "$dest/matvec_stream_$sm.txt" 2>/dev/null
        done
    fi
    need_syn7b
    # shellcheck disable=SC2086  # the models, one word each
    ab_step phases_ab ${AB_S:-400} \
        "s28|FERRITE_CUDA_MATVEC_STREAM=one-phase FERRITE_CUDA_MATVEC_STREAM_ROWS=1 FERRITE_CUDA_KERNEL_DEFINES=-DMMA_STAGE_JOBS=1" \
        "phases|FERRITE_CUDA_MATVEC_STREAM=large FERRITE_CUDA_MATVEC_STREAM_ROWS=1 FERRITE_CUDA_KERNEL_DEFINES=-DMMA_STAGE_JOBS=1" \
        "rows2|FERRITE_CUDA_MATVEC_STREAM=large FERRITE_CUDA_MATVEC_STREAM_ROWS=2 FERRITE_CUDA_KERNEL_DEFINES=-DMMA_STAGE_JOBS=1" \
        "all|FERRITE_CUDA_MATVEC_STREAM=large FERRITE_CUDA_MATVEC_STREAM_ROWS=2 FERRITE_CUDA_KERNEL_DEFINES=-DMMA_STAGE_JOBS=2" \
        -- ${AB_MODELS:-/tmp/synthetic.gguf:1,2 /root/m/syn7b.gguf:1,2}
    fi
    if [[ ,$parts, == *,s8rows,* ]]; then
    # The int8 path for 3-8 rows of x for every tiled type (-DMMA_S8_MAX_NT=8: x in two int8
    # parts; the thirtieth session measured it so, and the tile table keeps each type's rows
    # since): the matrix-vector tests with it (they model its rounding) and
    # the model tests with every multiply up to 8 rows on the kernels, the kernels' bandwidth
    # at 4 and 8 rows with bf16 everywhere (=2) and int8 everywhere, then decode steps of syn05 and
    # syn7b at 3-8 sequences: the default (the kernels up to 4 rows, cuBLAS's f16 from 5), the int8
    # path, the kernels up to 8 rows, both; two interleaved rounds.
    STEP_TIMEOUT=${CUDA_PYTEST_S:-300} FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_MAX_NT=8 FERRITE_CUDA_MATVEC_MAX_ROWS=8 \
        step pytest_s8rows "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_matvec.py tests/test_cuda_model.py -m "cuda and not model" --junitxml="$out/junit_s8rows.xml"
    for d in 2 8; do
        FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_MAX_NT=$d STEP_TIMEOUT=150 step "matvec_s8_$d" "$py" benches/bench_cuda_matvec.py --tiled-only --rows 3,4,8
        cp "$out/matvec_s8_$d.log" "$dest/matvec_s8_$d.txt" 2>/dev/null
    done
    need_syn7b
    # shellcheck disable=SC2086  # the models, one word each
    ab_step s8rows_ab ${AB_S:-400} \
        "default|FERRITE_CUDA_MATVEC_MAX_ROWS=4" \
        "s8|FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_MAX_NT=8" \
        "rows8|FERRITE_CUDA_MATVEC_MAX_ROWS=8" \
        "s8rows8|FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_MAX_NT=8 FERRITE_CUDA_MATVEC_MAX_ROWS=8" \
        -- ${AB_MODELS:-/tmp/synthetic.gguf:3,4,8 /root/m/syn7b.gguf:4,8}
    fi
    if [[ ,$parts, == *,stream4,* ]]; then
    # The stream kernel on three and four rows of x (matvec_mma_stream_4, two int8 parts, for the
    # types whose int8 path goes that far; FERRITE_CUDA_MATVEC_STREAM_ROWS=4; not yet run on a
    # GPU when written): its op tests (they force it onto every launch up to four rows), the
    # matrix-vector, model and engine tests with it on, then decode steps of syn05 and syn7b at 3
    # and 4 sequences (and 1 and 2, which must not move), two interleaved rounds. STREAM4_TESTS
    # names the test files (default: those three).
    # shellcheck disable=SC2086  # the files, one word each
    STEP_TIMEOUT=${CUDA_PYTEST_S:-300} FERRITE_CUDA_MATVEC_STREAM_ROWS=4 \
        step pytest_stream4 "$py" -m pytest -q -ra -p no:cacheprovider ${STREAM4_TESTS:-tests/test_cuda_matvec.py tests/test_cuda_model.py tests/test_cuda_engine.py} -m "cuda and not model" --junitxml="$out/junit_stream4.xml"
    need_syn7b
    # shellcheck disable=SC2086  # the models, one word each
    ab_step stream4_ab ${AB_S:-400} \
        "rows2|FERRITE_CUDA_MATVEC_STREAM_ROWS=2" "rows4|FERRITE_CUDA_MATVEC_STREAM_ROWS=4" \
        -- ${AB_MODELS:-/tmp/synthetic.gguf:1,2,3,4 /root/m/syn7b.gguf:1,2,3,4}
    fi
    if [[ ,$parts, == *,huge,* ]]; then
    # Huge weights (2^25 elements or more: a small model's LM head) on the matrix-vector kernels
    # beyond 4 rows (FERRITE_CUDA_MATVEC_HUGE_ROWS; matmul.rs; on at 8 since 2026-12-05): its model test,
    # then decode steps of syn05 at 5, 6 and 8 sequences with the rule off (4) and at 8, two
    # interleaved rounds.
    STEP_TIMEOUT=180 step pytest_huge "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_model.py -k huge_lm_head --junitxml="$out/junit_huge.xml"
    # shellcheck disable=SC2086  # the models, one word each
    ab_step huge_ab ${AB_S:-300} \
        "huge4|FERRITE_CUDA_MATVEC_HUGE_ROWS=4" "huge8|FERRITE_CUDA_MATVEC_HUGE_ROWS=8" \
        -- ${AB_MODELS:-/tmp/synthetic.gguf:5,6,8}
    fi
    if [[ ,$parts, == *,swiglu,* ]]; then
    # The stacked gate/up GEMM of 5-16 rows on gemm_f16_rows.cu writing SwiGLU's f16 output
    # (FERRITE_CUDA_SWIGLU_GEMM=0 turns it off): the kernel's
    # and the models' tests, then decode steps of syn05 at 6, 8 and 16 sequences (a 7B's gate and
    # up do not stack: unchanged) with it on and off, two interleaved rounds.
    STEP_TIMEOUT=${CUDA_PYTEST_S:-300} step pytest_swiglu "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_gemm_f16_rows.py tests/test_cuda_model.py -k "gemm or swiglu" -m "cuda and not model" --junitxml="$out/junit_swiglu.xml"
    # shellcheck disable=SC2086  # the models, one word each
    ab_step swiglu_ab ${AB_S:-300} \
        "fused|FERRITE_CUDA_SWIGLU_GEMM=1" "apart|FERRITE_CUDA_SWIGLU_GEMM=0" \
        -- ${AB_MODELS:-/tmp/synthetic.gguf:6,8,16}
    fi
    if [[ ,$parts, == *,wide,* ]]; then
    # A wide model's weights (hidden width 2048 or more: a 7B's) on the matrix-vector kernels
    # beyond 4 rows (FERRITE_CUDA_MATVEC_WIDE_ROWS; matmul.rs): its model test, then decode steps
    # of syn7b (syn05 is not wide) at 5, 6 and 8 sequences with the rule off (4), at 6 and at 8,
    # two interleaved rounds.
    STEP_TIMEOUT=120 step pytest_wide "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_model.py -k wide_weights --junitxml="$out/junit_wide.xml"
    need_syn7b
    # shellcheck disable=SC2086  # the models, one word each
    ab_step wide_ab ${AB_S:-400} \
        "wide4|FERRITE_CUDA_MATVEC_WIDE_ROWS=4" "wide6|FERRITE_CUDA_MATVEC_WIDE_ROWS=6" "wide8|FERRITE_CUDA_MATVEC_WIDE_ROWS=8" \
        -- ${AB_MODELS:-/root/m/syn7b.gguf:5,6,8}
    fi
    if [[ ,$parts, == *,beside,* ]]; then
    # syn05 and syn7b beside llama.cpp in the same lease (started earlier in it by
    # .device/llamacpp/build.sh; bench.sh waits for it): llama-bench tg128 and batched-bench S_TG
    # at 1, 2 and 8 sequences, then the Generator (T 0.8 with top-k, top-p and min-p) with
    # llama.cpp's S_TG beside.
    need_syn7b
    for m in /tmp/synthetic.gguf /root/m/syn7b.gguf; do
        n=$(basename "$m" .gguf)
        STEP_TIMEOUT=${LLAMA_S:-240} step "llamacpp_$n" bash .device/llamacpp/bench.sh "$m" "${BESIDE_BATCHES:-1,2,8}"
        cp "$out/llamacpp_$n.log" "$dest/llamacpp_$n.txt" 2>/dev/null
        STEP_TIMEOUT=${BENCH_S:-180} step "generate_$n" "$py" benches/bench_generate.py --model "$m" --device cuda --batches "${BESIDE_BATCHES:-1,2,8}" --modes t0.8+filters --llamacpp "$out/llamacpp_$n.log" --json "$out/generate_$n.json"
        cp "$out/generate_$n.log" "$dest/generate_$n.txt" 2>/dev/null
    done
    fi
    if [[ ,$parts, == *,on29,* ]]; then
    # The same three switched on: every GPU test that needs no real model, then the matrix-vector,
    # model and engine tests with the stream kernel forced onto every one- and two-row launch.
    STEP_TIMEOUT=${CUDA_PYTEST_S:-300} FERRITE_CUDA_MATVEC_STREAM_ROWS=2 FERRITE_CUDA_KERNEL_DEFINES=-DMMA_STAGE_JOBS=2 FERRITE_CUDA_MATVEC_STREAM=large \
        step pytest_on29 "$py" -m pytest -q -ra -p no:cacheprovider --ignore=tests/test_notebooks.py --ignore=tests/test_readme.py -m "cuda and not model" tests --junitxml="$out/junit_on29.xml"
    STEP_TIMEOUT=${CUDA_PYTEST_S:-300} FERRITE_CUDA_MATVEC_STREAM_ROWS=2 FERRITE_CUDA_KERNEL_DEFINES=-DMMA_STAGE_JOBS=2 FERRITE_CUDA_MATVEC_STREAM=always \
        step pytest_on29_always "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_matvec.py tests/test_cuda_model.py tests/test_cuda_engine.py -m "cuda and not model" --junitxml="$out/junit_on29_always.xml"
    fi
    if [[ ,$parts, == *,tests,* ]]; then
    # Every GPU test that needs no real model, as the wheel runs by default.
    STEP_TIMEOUT=${CUDA_PYTEST_S:-300} step pytest_cuda "$py" -m pytest -q -ra -p no:cacheprovider --ignore=tests/test_notebooks.py --ignore=tests/test_readme.py -m "cuda and not model" tests --junitxml="$out/junit_cuda.xml"
    fi
    if [[ ,$parts, == *,ffn,* ]]; then
    # The FFN block of one or two rows as one launch (src/backend/cuda/ffn.rs; FERRITE_CUDA_FFN=one
    # for one row only, off to keep gate/up and ffn_down apart): its tests, then syn05's decode
    # steps at 1 and 2 sequences fused, one and off, two interleaved rounds; FFN_EARLY=1 adds fused
    # with ffn_down's tiles loaded before the wait (-DFFN_EARLY_DOWN=1, every module compiled
    # again; the forty-fifth session's default). PENDING_PARTS=ffn.
    # The steps first (what a short lease must bring back), then the tests; FFN_ALL_TESTS=1 runs
    # every GPU test of the model and engine files with the kernel on instead of its own test alone.
    late=()
    [ "${FFN_EARLY:-0}" = 1 ] && late=("earlydown|FERRITE_CUDA_FFN=fused FERRITE_CUDA_KERNEL_DEFINES=-DFFN_EARLY_DOWN=1")
    ab_step ffn_ab ${AB_S:-300} "fused|FERRITE_CUDA_FFN=fused" "one|FERRITE_CUDA_FFN=one" "off|FERRITE_CUDA_FFN=off" "${late[@]}" \
        -- /tmp/synthetic.gguf:1,2
    if [ "${FFN_ALL_TESTS:-0}" = 1 ]; then
        FERRITE_CUDA_FFN=fused STEP_TIMEOUT=${CUDA_PYTEST_S:-300} step pytest_ffn "$py" -m pytest -q -ra -x -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_engine.py -m "cuda and not model" --junitxml="$out/junit_ffn.xml"
    else
        STEP_TIMEOUT=${CUDA_PYTEST_S:-240} step pytest_ffn "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_model.py -m cuda -k "fused_ffn" --junitxml="$out/junit_ffn.xml"
    fi
    fi
    if [[ ,$parts, == *,guearly,* ]]; then
    # How many of the fused FFN's gate/up tiles a warp loads before its wait (-DFFN_GU_EARLY=N of
    # Q5_0's 4; 2 by default since the forty-seventh session: its early loads slow the o projection
    # before it, which still runs); every module compiled again for each. syn05's decode steps at 1
    # and 2 sequences, two interleaved rounds; then the one-sequence timelines with the FFN fused
    # and not. PENDING_PARTS=guearly.
    ab_step guearly_ab ${AB_S:-300} "two|FERRITE_CUDA_KERNEL_DEFINES=" "four|FERRITE_CUDA_KERNEL_DEFINES=-DFFN_GU_EARLY=4" \
        "three|FERRITE_CUDA_KERNEL_DEFINES=-DFFN_GU_EARLY=3" "one|FERRITE_CUDA_KERNEL_DEFINES=-DFFN_GU_EARLY=1" \
        -- /tmp/synthetic.gguf:1,2
    for v in fused off; do
        FERRITE_CUDA_FFN=$v STEP_TIMEOUT=120 step "timeline_ffn_$v" "$py" benches/profile_cuda_decode.py /tmp/synthetic.gguf --child timeline --batch 1
        cp "$out/timeline_ffn_$v.log" "$dest/timeline_ffn_$v.txt" 2>/dev/null
    done
    fi
    if [[ ,$parts, == *,w8,* ]]; then
    # attention_heads_rope_1w8 (forty-eighth session): its bit tests, against rope_store followed
    # by the plain kernel and against the 16-warp kernel. (Its A/B of 8 warps of two chunks each
    # at 257-512 keys was measured slower than 16 warps and removed.) PENDING_PARTS=w8.
    STEP_TIMEOUT=240 step pytest_w8 "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_model.py -m cuda \
        -k "preloaded_keys or rope_gives" --junitxml="$out/junit_w8.xml"
    fi
    if [[ ,$parts, == *,splitk,* ]]; then
    # Every split-K launch on the fused FFN's hand-over (SPLITK_FAST: acquire / release fences,
    # SPLITK_BATCH sums in flight; the same bits; the default since the fifty-first session): the
    # matrix-vector split tests with the old hand-over (-DSPLITK_FAST=0), then decode steps of syn05
    # at 1, 4 and 8 sequences and syn7b at 1 and 4 both ways, two interleaved rounds.
    # PENDING_PARTS=splitk.
    FERRITE_CUDA_KERNEL_DEFINES=-DSPLITK_FAST=0 STEP_TIMEOUT=240 step pytest_splitk "$py" -m pytest -q -ra -p no:cacheprovider \
        tests/test_cuda_matvec.py -m cuda -k "split" --junitxml="$out/junit_splitk.xml"
    need_syn7b
    ab_step splitk_ab ${AB_S:-300} "fast|FERRITE_CUDA_KERNEL_DEFINES=" "old|FERRITE_CUDA_KERNEL_DEFINES=-DSPLITK_FAST=0" \
        -- /tmp/synthetic.gguf:1,4,8 /root/m/syn7b.gguf:1,4
    fi
    if [[ ,$parts, == *,plans7b,* ]]; then
    # A 7B's q/k/v (4608x3584, 288 tile rows of 14 tiles) at one row: its plan (2, 4, 1) makes 144
    # blocks of 8 warps, so 12 SMs hold two blocks and take twice the others' tiles. Plans of one
    # tile row a block in smaller blocks, all resident at once (4 or 5 warps: 3-4 blocks an SM),
    # against it; syn7b's one-sequence decode step, two interleaved rounds. PENDING_PARTS=plans7b.
    need_syn7b
    ab_step plans7b_ab ${AB_S:-240} "plain|FERRITE_AB=plain" "qkv141|FERRITE_CUDA_MATVEC_PLANS=4608x3584@1=1,4,1" \
        "qkv151|FERRITE_CUDA_MATVEC_PLANS=4608x3584@1=1,5,1" -- /root/m/syn7b.gguf:1
    fi
    if [[ ,$parts, == *,fold,* ]]; then
    # The RMSNorm moved around the f16 GEMMs of 5-16 rows (matmul.rs, NormSource; on by default
    # since the thirty-sixth session, FERRITE_CUDA_NORM_FOLD=0 turns it off): the kernel's op
    # tests, the model and row-op GPU tests with it off, then decode steps of syn05 at 1, 5, 8 and
    # 16 sequences on (to 16 and to 8 rows) and off, two interleaved rounds.
    STEP_TIMEOUT=${CUDA_PYTEST_S:-300} FERRITE_CUDA_NORM_FOLD=0 step pytest_fold "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_gemm_f16_rows.py tests/test_cuda_row_ops.py tests/test_cuda_model.py -m "cuda and not model" --junitxml="$out/junit_fold.xml"
    ab_step fold_ab ${AB_S:-200} "fold|FERRITE_CUDA_NORM_FOLD=1" "fold8|FERRITE_CUDA_NORM_FOLD=1 FERRITE_CUDA_NORM_FOLD_ROWS=8" "nofold|FERRITE_CUDA_NORM_FOLD=0" -- /tmp/synthetic.gguf:1,5,8,16
    fi
    if [[ ,$parts, == *,sampler_probe,* ]]; then
    # Where a draw's time goes (benches/probe_cuda_sampler.py: sampling.cu with -DSAMPLE_PROBE=1),
    # then the one-block scan's top-p passes with float terms (-DSAMPLE_MASS_EXPF=1) against the
    # default on the top-p configurations, which fall to that scan on flat rows (thirty-fifth
    # session: a quarter of the real model's draws at T 1, top-p 0.95).
    STEP_TIMEOUT=120 step sampler_probe "$py" benches/probe_cuda_sampler.py
    cp "$out/sampler_probe.log" "$dest/sampler_probe.txt" 2>/dev/null
    STEP_TIMEOUT=150 step sampler_expf bash -c '"$0" benches/bench_cuda_sampler.py --configs=top-p0.9,top-p0.3 && "$0" benches/bench_cuda_sampler.py -DSAMPLE_MASS_EXPF=1 --configs=top-p0.9,top-p0.3' "$py"
    cp "$out/sampler_expf.log" "$dest/sampler_expf.txt" 2>/dev/null
    fi
    if [[ ,$parts, == *,fold_real,* ]]; then
    # The same on the real model (uploaded to /root/m/model.gguf): its logits against float64 with
    # it on to 16 rows (the default), to 8 and off (scripts/gpu_accuracy.py; the bar is 0.05;
    # thirty-sixth session: 2.61e-2, 4.52e-2, 4.34e-2), then decode steps at 5, 8 and 16 sequences on
    # and off (two interleaved rounds) and the Generator at 8 sequences on and off (greedy and
    # sampled; llama.cpp's S_TG beside when FOLD_LLAMACPP names its batched-bench output).
    for v in 1 8 0; do
        FERRITE_CUDA_NORM_FOLD=$((v > 0)) FERRITE_CUDA_NORM_FOLD_ROWS=$((v == 8 ? 8 : 16)) STEP_TIMEOUT=200 step "accuracy_fold$v" "$py" scripts/gpu_accuracy.py /root/m/model.gguf
        cp "$out/accuracy_fold$v.log" "$dest/accuracy_fold$v.txt" 2>/dev/null
    done
    # (The fold to 16 rows and to 8 differ only in steps of 9-16 rows: fold_ab times both.)
    ab_step fold_real_ab ${AB_S:-150} "fold8|FERRITE_CUDA_NORM_FOLD=1 FERRITE_CUDA_NORM_FOLD_ROWS=8" "nofold|FERRITE_CUDA_NORM_FOLD=0" -- /root/m/model.gguf:5,8,16
    for v in 1 0; do
        FERRITE_CUDA_NORM_FOLD=$v STEP_TIMEOUT=120 step "generate_fold$v" "$py" benches/bench_generate.py --model /root/m/model.gguf --device cuda --batches 8 \
            --modes greedy,t0.8+filters ${FOLD_LLAMACPP:+--llamacpp "$FOLD_LLAMACPP"} --json "$out/generate_fold$v.json"
        cp "$out/generate_fold$v.log" "$dest/generate_fold$v.txt" 2>/dev/null
    done
    fi
    if [[ ,$parts, == *,inplace,* ]]; then
    # The LM head reading a decode step's rows of x in place (qwen2.rs, no gather_rows; landed in
    # the fifty-second session without a GPU run): the model and engine GPU tests, then a
    # one-sequence timeline over bench_generate's 126 steps (no gather_rows left). Then what the
    # one-sequence step might still give (each about 1 us a launch if at all): q/k/v and o split
    # in two on the fast split-K hand-over (the planner's one-row rule predates it), the decode
    # attention at 129-256 keys on 4 warps of 64 keys or in two splits; two interleaved rounds.
    STEP_TIMEOUT=${CUDA_PYTEST_S:-240} step pytest_inplace "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_engine.py -m "cuda and not model" --junitxml="$out/junit_inplace.xml"
    STEP_TIMEOUT=90 step timeline_inplace "$py" benches/profile_cuda_decode.py /tmp/synthetic.gguf --child timeline --batch 1 --steps 126
    cp "$out/timeline_inplace.log" "$dest/timeline_inplace.txt" 2>/dev/null
    ab_step inplace_ab ${AB_S:-300} "plain|FERRITE_AB=plain" "o_split2|FERRITE_CUDA_MATVEC_PLANS=896x896@1=1,4,2" \
        "qkv_split2|FERRITE_CUDA_MATVEC_PLANS=1152x896@1=1,4,2" "attn_wk64|FERRITE_CUDA_ATTN_WARP_KEYS=64" "attn_split2|FERRITE_CUDA_ATTN_SPLITS=2" \
        -- /tmp/synthetic.gguf:1,2
    fi
    if [[ ,$parts, == *,timeline,* ]]; then
    # Where a step goes now: syn05 and syn7b (TIMELINE_MODELS) at one sequence (TIMELINE_BATCHES).
    models=${TIMELINE_MODELS:-/tmp/synthetic.gguf /root/m/syn7b.gguf}
    [[ $models == *syn7b* ]] && need_syn7b
    for m in $models; do
        for b in ${TIMELINE_BATCHES:-1}; do
            n=$(basename "$m" .gguf)_b$b
            STEP_TIMEOUT=60 step "timeline_$n" "$py" benches/profile_cuda_decode.py "$m" --child timeline --batch "$b" --steps 32
            cp "$out/timeline_$n.log" "$dest/timeline_$n.txt" 2>/dev/null
        done
    done
    fi
    if [[ ,$parts, == *,ab,* ]]; then
    # Any A/B of decode steps: AB_VARIANTS "NAME|VAR=VALUE ...;NAME|..." and AB_MODELS "PATH:BATCHES ..."
    # (syn7b is made first when a model is it), as decode_ab runs them.
    [[ ${AB_MODELS:?AB_MODELS} == *syn7b* ]] && need_syn7b
    IFS=';' read -ra ab_variants <<< "${AB_VARIANTS:?AB_VARIANTS}"
    # shellcheck disable=SC2086  # the models, one word each
    ab_step ab ${AB_S:-400} "${ab_variants[@]}" -- ${AB_MODELS:?AB_MODELS}
    fi
    if [[ ,$parts, == *,mass,* ]]; then
    # The sampler's mass pass (sampling.cu's sample_mass and a second sample_rows launch, for rows
    # without top-k that the chunk records do not settle): the sampler and engine GPU tests (among
    # them the pass against one block scanning the row), the sampler alone on the configurations
    # that may take it (with and without it), and the Generator on syn05 at 1 and 8 sequences at
    # T 1 with top-p 0.95 (what an OpenAI client sends) and with the default filters, the pass on
    # and off (FERRITE_CUDA_SAMPLE_MASS).
    STEP_TIMEOUT=${ENGINE_PYTEST_S:-150} step pytest_mass "$py" -m pytest -q -ra -p no:cacheprovider tests/test_sampling.py tests/test_cuda_engine.py -m cuda --junitxml="$out/junit_mass.xml"
    STEP_TIMEOUT=200 step bench_mass "$py" benches/bench_cuda_sampler.py kernels/sampling.cu "--configs=T1 top-p0.95,T1 min-p0.02,T1 top-p0.95 lp5,top-p0.9,top-p0.3,top-k40 p.95 minp.05,greedy"
    cp "$out/bench_mass.log" "$dest/bench_mass.txt" 2>/dev/null
    # Where the pass's time goes (probe_cuda_sampler.py stamps its launches).
    STEP_TIMEOUT=150 step probe_mass "$py" benches/probe_cuda_sampler.py
    cp "$out/probe_mass.log" "$dest/probe_mass.txt" 2>/dev/null
    # MASS_AB_KERNEL=DIR/sampling.cu (headers beside it): the same bench on another version, to compare.
    if [ -n "${MASS_AB_KERNEL:-}" ]; then
        STEP_TIMEOUT=200 step bench_mass_ab "$py" benches/bench_cuda_sampler.py "$MASS_AB_KERNEL" "--configs=T1 top-p0.95,T1 min-p0.02,top-p0.9"
        cp "$out/bench_mass_ab.log" "$dest/bench_mass_ab.txt" 2>/dev/null
    fi
    for v in 1 0 1 0; do
        FERRITE_CUDA_SAMPLE_MASS=$v STEP_TIMEOUT=120 step "generate_mass$v" "$py" benches/bench_generate.py --model /tmp/synthetic.gguf --device cuda --batches 1,8 \
            --modes "t1 top-p0.95,t0.8+filters" --json "$out/generate_mass$v.json"
        cat "$out/generate_mass$v.log" >> "$dest/generate_mass.txt" 2>/dev/null
    done
    fi
    if [[ ,$parts, == *,prefetch_lines,* ]]; then
    # The weights' L2 prefetch windows again (prefetch.rs; off by default since the twenty-eighth
    # session, whose windows of 16-24 MB cost the 0.5B shapes 0.3-1.2 ms a step), at the sizes of one
    # phase or layer ahead, by bulk prefetches (the default build) and by one prefetch.global.L2 a
    # line (-DPREFETCH_LINES=1): the model and engine tests with lines on, then decode steps.
    STEP_TIMEOUT=${CUDA_PYTEST_S:-180} FERRITE_CUDA_PREFETCH_MB=10 FERRITE_CUDA_PREFETCH_AHEAD_MB=4 FERRITE_CUDA_KERNEL_DEFINES=-DPREFETCH_LINES=1 \
        step pytest_prefetch_lines "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_engine.py -m "cuda and not model" --junitxml="$out/junit_prefetch_lines.xml"
    ab_step prefetch_lines_ab ${AB_S:-300} \
        "off|FERRITE_CUDA_PREFETCH_MB=0" "ahead4|FERRITE_CUDA_PREFETCH_AHEAD_MB=4" \
        "ahead2l|FERRITE_CUDA_PREFETCH_AHEAD_MB=2 FERRITE_CUDA_KERNEL_DEFINES=-DPREFETCH_LINES=1" \
        "ahead4l|FERRITE_CUDA_PREFETCH_AHEAD_MB=4 FERRITE_CUDA_KERNEL_DEFINES=-DPREFETCH_LINES=1" \
        "ahead8l|FERRITE_CUDA_PREFETCH_AHEAD_MB=8 FERRITE_CUDA_KERNEL_DEFINES=-DPREFETCH_LINES=1" \
        "att10l|FERRITE_CUDA_PREFETCH_MB=10 FERRITE_CUDA_KERNEL_DEFINES=-DPREFETCH_LINES=1" \
        -- ${PREFETCH_MODELS:-/tmp/synthetic.gguf:1,4}
    fi
    if [[ ,$parts, == *,barrier,* ]]; then
    # What a phase boundary costs (benches/bench_grid_barrier.py, no ferrite code): a chain of
    # launches in a graph, with and without programmatic dependent launch, against one persistent
    # kernel whose phases meet at a grid barrier; the question behind a persistent decode layer.
    STEP_TIMEOUT=120 step grid_barrier "$py" benches/bench_grid_barrier.py
    cp "$out/grid_barrier.log" "$dest/grid_barrier.txt" 2>/dev/null
    fi
    if [[ ,$parts, == *,cluster_handover,* ]]; then
    # What folding the o projection into attention would save in hand-over alone
    # (benches/bench_cluster_handover.py, no ferrite code): two chained launches against one
    # launch of thread block clusters handing over through distributed shared memory.
    STEP_TIMEOUT=120 step cluster_handover "$py" benches/bench_cluster_handover.py
    cp "$out/cluster_handover.log" "$dest/cluster_handover.txt" 2>/dev/null
    fi
    if [[ ,$parts, == *,attention_chain,* ]]; then
    # A one-sequence step's attention launch after a q/k/v stand-in, timed in a chain and stamped
    # at its phases (benches/bench_attention_chain.py, kernels/attention.cu built by NVRTC here).
    STEP_TIMEOUT=120 step attention_chain "$py" benches/bench_attention_chain.py --variants "${ATTN_CHAIN_VARIANTS:-,-DATTN_PRELOAD=0}"
    cp "$out/attention_chain.log" "$dest/attention_chain.txt" 2>/dev/null
    fi
    if [[ ,$parts, == *,matvec_chain,* ]]; then
    # o's and q/k/v's one-row launches after a producer, timed in a chain and stamped at their
    # phases (benches/bench_matvec_chain.py, kernels/matvec_mma.cu built by NVRTC here), with the
    # decode step's plan and with the columns split in two (MATVEC_CHAIN_PLANS).
    STEP_TIMEOUT=150 step matvec_chain "$py" benches/bench_matvec_chain.py --plans "${MATVEC_CHAIN_PLANS:-;1,4,2}" --variants "${MATVEC_CHAIN_VARIANTS:-}"
    cp "$out/matvec_chain.log" "$dest/matvec_chain.txt" 2>/dev/null
    fi
    if [[ ,$parts, == *,chunk_size,* ]]; then
    # The sampler's rows cut into 30 chunks of 5,120 for launches of up to eight rows (sampling.rs,
    # small_batch_chunk_elems; the default since the fifty-fourth session, measured then at one to
    # four sequences): the sampler and engine tests (among them 5,120 forced against the row scan),
    # the sampler alone at both sizes, then decode steps of syn05 at 8 sequences against 8,192.
    STEP_TIMEOUT=${ENGINE_PYTEST_S:-240} step pytest_sampler_chunk "$py" -m pytest -q -ra -p no:cacheprovider tests/test_sampling.py tests/test_cuda_engine.py -m cuda --junitxml="$out/junit_sampler_chunk.xml"
    STEP_TIMEOUT=150 step bench_sampler_chunk "$py" benches/bench_cuda_sampler.py kernels/sampling.cu --chunk-elems=8192,5120 "--configs=top-k40 p.95 minp.05,T0.8,greedy,top-p0.9"
    cp "$out/bench_sampler_chunk.log" "$dest/bench_sampler_chunk.txt" 2>/dev/null
    ab_step sampler_chunk_ab ${AB_S:-200} "small|FERRITE_AB=plain" "8192|FERRITE_CUDA_SAMPLE_CHUNK=8192" -- /tmp/synthetic.gguf:1,8
    fi
    if [[ ,$parts, == *,norm_rsqrt,* ]]; then
    # The folded RMSNorm's float64 scale from rsqrt (-DMMA_NORM_RSQRT, on since the fifty-fifth
    # session, which ran the norm, decode, FFN and several-matrix tests with it, 51, before it
    # became the default): every matrix-vector and model GPU test on the default build, then decode
    # steps of syn05 and syn7b with the define 1 and 0, both compiled by NVRTC so that only the
    # define differs.
    STEP_TIMEOUT=${CUDA_PYTEST_S:-300} step pytest_norm_rsqrt "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_matvec.py tests/test_cuda_model.py -m "cuda and not model" --junitxml="$out/junit_norm_rsqrt.xml"
    need_syn7b
    ab_step norm_rsqrt_ab ${AB_S:-300} "rsqrt|FERRITE_CUDA_KERNEL_DEFINES=-DMMA_NORM_RSQRT=1" "chain|FERRITE_CUDA_KERNEL_DEFINES=-DMMA_NORM_RSQRT=0" \
        -- /tmp/synthetic.gguf:1,2 /root/m/syn7b.gguf:1
    fi
    if [[ ,$parts, == *,s8_phase,* ]]; then
    # Fewer phases for the int8 path at 4 and 8 rows (matvec_mma.cu's MMA_S8_PHASE): the tests
    # that cover 8 rows over several phases and splits (2,048 to 18,432 columns) and the model's
    # batches under the define (a 7B's 3,584 columns: 7 phases at 8 rows by default, 2 with it;
    # its decode steps are stream8's A/B).
    STEP_TIMEOUT=${CUDA_PYTEST_S:-300} FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_PHASE=2048 step pytest_s8_phase "$py" -m pytest -q -ra -p no:cacheprovider \
        tests/test_cuda_matvec.py tests/test_cuda_model.py -m "cuda and not model" --junitxml="$out/junit_s8_phase.xml"
    fi
    if [[ ,$parts, == *,stream8,* ]]; then
    # The stream kernel on five to eight rows (matvec_mma_stream_8, Q4_K only): its test forces it
    # onto every launch of up to eight rows; then a 7B's decode steps, where it takes gate/up
    # (2,368 tile rows of 14 tiles: 592 blocks, 2.24 waves, on the planned kernel), beside
    # MMA_S8_PHASE (above), each alone and both.
    STEP_TIMEOUT=${CUDA_PYTEST_S:-300} step pytest_stream8 "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_matvec.py -m cuda \
        -k "stream" --junitxml="$out/junit_stream8.xml"
    need_syn7b
    ab_step rows8_ab ${AB_S:-540} "base|FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_PHASE=0" "p2048|FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_PHASE=2048" \
        "stream8|FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_PHASE=0 FERRITE_CUDA_MATVEC_STREAM_ROWS=8" \
        "both|FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_PHASE=2048 FERRITE_CUDA_MATVEC_STREAM_ROWS=8" \
        "all8|FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_MAX_NT=8 FERRITE_CUDA_MATVEC_STREAM_ROWS=8" \
        "splits4|FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_PHASE=0 FERRITE_CUDA_MATVEC_PLANS=37888x3584@8=8,1,4" \
        -- /root/m/syn7b.gguf:4,5,8 /tmp/synthetic.gguf:8
    fi
    if [[ ,$parts, == *,timeline8,* ]]; then
    # Where the 7B's eight-sequence step goes, by launch, with the default build and the stream kernel.
    need_syn7b
    STEP_TIMEOUT=90 step timeline_syn7b_b8 "$py" benches/profile_cuda_decode.py /root/m/syn7b.gguf --child timeline --batch 8 --steps 32
    FERRITE_CUDA_MATVEC_STREAM_ROWS=8 STEP_TIMEOUT=90 step timeline_syn7b_b8_stream8 "$py" benches/profile_cuda_decode.py /root/m/syn7b.gguf --child timeline --batch 8 --steps 32
    cat "$out"/timeline_syn7b_b8*.log > "$dest/timeline_syn7b_b8.txt" 2>/dev/null
    fi
    if [[ ,$parts, == *,z_skip,* ]]; then
    # The chunk pass without its sums of exp where a top-k of at most 64 bounds top-p
    # (sampling.cu's top_p_needs_z; on since the fifty-seventh session, which had no GPU): the
    # sampler and engine GPU tests (the masked rows of test_gpu_and_cpu_draw_the_same_tokens take
    # the tau-0 path), the sampler alone with and without -DSAMPLE_Z_ALWAYS=1 at both chunk sizes,
    # then decode steps of syn05 at 1 and 8 sequences (the default filters: top-k 40, top-p 0.95),
    # both builds compiled by NVRTC, two interleaved rounds.
    STEP_TIMEOUT=${ENGINE_PYTEST_S:-150} step pytest_z_skip "$py" -m pytest -q -ra -p no:cacheprovider tests/test_sampling.py tests/test_cuda_engine.py -m cuda --junitxml="$out/junit_z_skip.xml"
    STEP_TIMEOUT=200 step bench_z_skip bash -c 'for d in -DSAMPLE_Z_ALWAYS=1 -DSAMPLE_Z_ALWAYS=0; do echo "== $d"; "$0" benches/bench_cuda_sampler.py kernels/sampling.cu "$d" --chunk-elems=5120,8192 "--configs=top-k40 p.95 minp.05,T0.8"; done' "$py"
    cp "$out/bench_z_skip.log" "$dest/bench_z_skip.txt" 2>/dev/null
    ab_step z_skip_ab ${AB_S:-200} "zskip|FERRITE_CUDA_KERNEL_DEFINES=-DSAMPLE_Z_ALWAYS=0" "zalways|FERRITE_CUDA_KERNEL_DEFINES=-DSAMPLE_Z_ALWAYS=1" \
        -- /tmp/synthetic.gguf:1,8
    fi
    if [[ $parts == *sampler* ]]; then
    STEP_TIMEOUT=${ENGINE_PYTEST_S:-150} step pytest_sampler "$py" -m pytest -q -ra -p no:cacheprovider tests/test_sampling.py tests/test_cuda_engine.py -m cuda --junitxml="$out/junit_sampler.xml"
    STEP_TIMEOUT=150 step bench_sampler "$py" benches/bench_cuda_sampler.py kernels/sampling.cu "--configs=top-p0.9,top-p0.3,top-k40 p.95 minp.05"
    cp "$out/bench_sampler.log" "$dest/bench_sampler.txt" 2>/dev/null
    fi
fi
if [ "$what" = engine ]; then
    # The engine, the device sampler, paged attention and DLPack, then the decode step, with no
    # upload: a synthetic model of the real shapes carrying the real tokenizer (TOKENIZER_GGUF,
    # default .device/tok.gguf from make_synthetic_model.py --tokenizer-only), so the Generator runs.
    export FERRITE_TOKENIZER_GGUF="$here/${TOKENIZER_GGUF:-.device/tok.gguf}"
    STEP_TIMEOUT=${ENGINE_PYTEST_S:-150} step pytest_engine "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_engine.py tests/test_cuda_dlpack.py tests/test_sampling.py -m cuda --junitxml="$out/junit_engine.xml"
    STEP_TIMEOUT=${CUDA_PYTEST_S:-150} step pytest_cuda "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_matvec.py -m "cuda and not model" --junitxml="$out/junit_cuda.xml"
    STEP_TIMEOUT=90 step synth_model "$py" scripts/make_synthetic_model.py /tmp/synthetic.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF"
    STEP_TIMEOUT=${BENCH_S:-150} step decode_step "$py" benches/bench_decode_step.py /tmp/synthetic.gguf --device cuda --batches "${BENCH_BATCHES:-1,8,64,128}"
    cp "$out/decode_step.log" "$dest/decode_step.txt" 2>/dev/null
    # The same without programmatic dependent launch (kernels start only when the previous ends).
    FERRITE_CUDA_PDL=0 STEP_TIMEOUT=${BENCH_S:-150} step decode_step_nopdl "$py" benches/bench_decode_step.py /tmp/synthetic.gguf --device cuda --batches "${BENCH_BATCHES_NOPDL:-1,8}"
    cp "$out/decode_step_nopdl.log" "$dest/decode_step_nopdl.txt" 2>/dev/null
    # Kernel times of one sequence's step, without dependent launch (with it, a kernel's time
    # includes its wait for the one before).
    FERRITE_CUDA_PDL=0 STEP_TIMEOUT=120 step profile_b1 "$py" benches/profile_cuda_decode.py /tmp/synthetic.gguf --batch 1 --steps 16
    cp "$out/profile_b1.log" "$dest/profile_b1.txt" 2>/dev/null
    STEP_TIMEOUT=120 step profile_b64 "$py" benches/profile_cuda_decode.py /tmp/synthetic.gguf --batch 64 --steps 16
    cp "$out/profile_b64.log" "$dest/profile_b64.txt" 2>/dev/null
fi
if [ "$what" = e2e ]; then
    # The real model end to end, beside llama.cpp in the same lease: the engine, sampler and
    # DLPack tests, the real-model tests (logits vs the float64 reference, greedy parity, the
    # haiku on cuda), then llama.cpp's benches (built by .device/llamacpp/build.sh in an earlier
    # call) and bench_generate with llama.cpp's S_TG beside, then a kernel profile at the largest batch.
    if [ "$real" != 1 ]; then echo "e2e: upload the real model to /root/m/model.gguf first"; exit 1; fi
    # E2E_PARTS=tests, =bench or =7b (a synthetic model of Qwen2.5-7B's shapes beside llama.cpp)
    # splits it over calls (each call is at most 10 minutes); the default is tests,bench.
    parts=${E2E_PARTS:-tests,bench}
    if [[ $parts == *tests* ]]; then
    # The real model's first load with an empty kernel cache and the CUDA libraries evicted.
    rm -rf /tmp/fl-real
    STEP_TIMEOUT=120 step first_load_real "$py" benches/bench_first_load.py /root/m/model.gguf --cache /tmp/fl-real --evict --label "real model"
    cp "$out/first_load_real.log" "$dest/first_load_real.txt" 2>/dev/null
    STEP_TIMEOUT=${ENGINE_PYTEST_S:-240} step pytest_engine "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_engine.py tests/test_cuda_dlpack.py tests/test_sampling.py -m cuda --junitxml="$out/junit_engine.xml"
    STEP_TIMEOUT=${MODEL_PYTEST_S:-240} step pytest_cuda_model "$py" -m pytest -q -ra -p no:cacheprovider --ignore=tests/test_notebooks.py -m "cuda and model" tests --ignore=tests/test_readme.py --deselect tests/test_cuda_engine.py --deselect tests/test_cuda_dlpack.py --junitxml="$out/junit_cuda_model.xml"
    fi
    if [[ $parts == *bench* ]]; then
    if [ -x .device/llamacpp/bench.sh ]; then
        STEP_TIMEOUT=${LLAMA_S:-420} step llamacpp bash .device/llamacpp/bench.sh /root/m/model.gguf "${BENCH_BATCHES:-1,8,64}"
        cp "$out/llamacpp.log" "$dest/llamacpp.txt" 2>/dev/null
    fi
    # BENCH_MODES: bench_generate.py's --modes (default: its own list).
    STEP_TIMEOUT=${BENCH_S:-240} step bench_generate "$py" benches/bench_generate.py --model /root/m/model.gguf --device cuda --batches "${BENCH_BATCHES:-1,8,64}" --new-tokens "${BENCH_TOKENS:-128}" ${BENCH_MODES:+--modes "$BENCH_MODES"} --llamacpp "$out/llamacpp.log" --json "$out/bench_generate.json"
    cp "$out/bench_generate.log" "$dest/bench_generate.txt" 2>/dev/null
    STEP_TIMEOUT=120 step profile_b64 "$py" benches/profile_cuda_decode.py /root/m/model.gguf --batch 64 --steps 16
    cp "$out/profile_b64.log" "$dest/profile_b64.txt" 2>/dev/null
    STEP_TIMEOUT=120 step bench_prefill "$py" benches/bench_cuda.py /root/m/model.gguf --hf none --prefill "${BENCH_PREFILL:-512,4096}" --json "$out/bench_cuda.json"
    cp "$out/bench_prefill.log" "$dest/bench_cuda.txt" 2>/dev/null
    STEP_TIMEOUT=120 step decode_step "$py" benches/bench_decode_step.py /root/m/model.gguf --device cuda --batches "${BENCH_BATCHES:-1,8,64}"
    cp "$out/decode_step.log" "$dest/decode_step.txt" 2>/dev/null
    STEP_TIMEOUT=150 step accuracy "$py" scripts/gpu_accuracy.py /root/m/model.gguf --kv-f16
    cp "$out/accuracy.log" "$dest/accuracy.txt" 2>/dev/null
    fi
    if [[ $parts == *7b* ]]; then
    # Qwen2.5-7B's shapes and Q4_K_M's types with random blocks and the real model's tokenizer,
    # beside llama.cpp on the same file.
    [ -f /root/m/syn7b.gguf ] || STEP_TIMEOUT=300 step synth_7b "$py" scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from /root/m/model.gguf
    if [ -x .device/llamacpp/bench.sh ]; then
        STEP_TIMEOUT=${LLAMA_S:-300} step llamacpp_7b bash .device/llamacpp/bench.sh /root/m/syn7b.gguf "${BENCH_BATCHES_7B:-1,8,64}"
        cp "$out/llamacpp_7b.log" "$dest/llamacpp_7b.txt" 2>/dev/null
    fi
    STEP_TIMEOUT=${BENCH_S:-300} step bench_generate_7b "$py" benches/bench_generate.py --model /root/m/syn7b.gguf --device cuda --batches "${BENCH_BATCHES_7B:-1,8,64}" --new-tokens "${BENCH_TOKENS:-128}" --modes "${BENCH_MODES_7B:-t0.8+filters}" --llamacpp "$out/llamacpp_7b.log" --json "$out/bench_generate_7b.json"
    cp "$out/bench_generate_7b.log" "$dest/bench_generate_7b.txt" 2>/dev/null
    STEP_TIMEOUT=180 step bench_prefill_7b "$py" benches/bench_cuda.py /root/m/syn7b.gguf --hf none --prefill "${BENCH_PREFILL:-512,4096}" --json "$out/bench_cuda_7b.json"
    cp "$out/bench_prefill_7b.log" "$dest/bench_cuda_7b.txt" 2>/dev/null
    fi
fi
if [ "$what" = matvec ]; then
    step pytest_matvec "$py" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_matvec.py --junitxml="$out/junit_matvec.xml"
fi
if [ "$what" = matvec ] || [ "$what" = synthetic ] || [ "$what" = all ]; then
    step bench_matvec "$py" benches/bench_cuda_matvec.py --json "$out/bench_matvec.json"
    cp "$out/bench_matvec.log" "$dest/bench_matvec.txt" 2>/dev/null
    step bench_gemm "$py" benches/bench_cuda_gemm.py
    cp "$out/bench_gemm.log" "$dest/bench_gemm.txt" 2>/dev/null
fi
if [ "$what" = synthetic ] || [ "$what" = all ]; then
    step synth_model "$py" scripts/make_synthetic_model.py /tmp/synthetic.gguf
    step parity_synthetic "$py" scripts/gpu_model_parity.py /tmp/synthetic.gguf --label synthetic --report "$report"
    step bench_synthetic "$py" benches/bench_cuda.py /tmp/synthetic.gguf --hf "${FERRITE_HF_SYNTH:-random}" --json "$out/bench_synthetic.json"
    step profile_synthetic "$py" benches/profile_cuda_decode.py /tmp/synthetic.gguf
fi
if [ "$what" = real ] || [ "$what" = all ] || [ "$what" = final ]; then
    if [ "$real" = 1 ]; then
        step pytest_cuda_model "$py" -m pytest -q -ra -s -p no:cacheprovider --ignore=tests/test_notebooks.py -m "cuda and model" tests --junitxml="$out/junit_cuda_model.xml"
        step parity_real "$py" scripts/gpu_model_parity.py /root/m/model.gguf --label real --real --report "$report"
        step bench_real "$py" benches/bench_cuda.py /root/m/model.gguf --hf "${FERRITE_HF:-gguf}" --json "$out/bench_real.json"
        # The haiku artifacts of the cuda run, for the closing note.
        find .test-results/haiku -name verification.json -path '*cuda*' -exec cp {} "$out/haiku_cuda_verification.json" \; 2>/dev/null
        find .test-results/haiku -name report.md -path '*cuda*' -exec cp {} "$out/haiku_cuda_report.md" \; 2>/dev/null
    else
        echo "real model: not present at /root/m/model.gguf (upload it first, see ../shared/test-model.md)"
        status=1
    fi
fi

"$py" scripts/gpu_check_table.py "$report" "$out"/junit_*.xml | tee "$out/table.txt"
cp "$out/table.txt" "$report" "$dest/"
tar czf "$dest/gpu_check.tar.gz" -C "$out" .
exit $status
