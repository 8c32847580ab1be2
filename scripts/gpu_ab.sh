#!/usr/bin/env bash
# Several builds of ferrite compared in ONE call to the device machine (the machine is handed back
# after a short idle time, and builds differ only in their kernels, so an A/B belongs in one lease).
#
# Here, for each build NAME (a branch or commit):
#     git worktree add /tmp/ab-NAME NAME && (cd /tmp/ab-NAME && maturin build --release -o $PWD/.device/ab/NAME)
# There (through the `run` tool, carrying .device/ab, .device/wheels and .device/tok.gguf):
#     bash scripts/gpu_ab.sh [NAME ...]          (default: every folder under .device/ab)
# For each build: the matrix-vector kernels on the 7B and real shapes (bench_cuda_matvec.py,
# AB_TYPES / AB_ROWS, first round only, AB_MATVEC=0 skips it) and, in two interleaved rounds, the decode step of
# synthetic models of the real 0.5B shapes and of Qwen2.5-7B's (bench_decode_step.py, AB_BATCHES
# / AB_BATCHES_7B, `none`: no 7B), each build with its own kernel cache and the settings in
# .device/ab/NAME/env if there is one (one wheel under two names compares two settings; a folder with
# only `env` and `wheel_of`, the name of another build, takes that build's wheel); with
# AB_GENERATE=1 also the Generator (sampling included) on the 0.5B shapes, with AB_TIMELINE (batch
# sizes) each build's per-kernel timeline of its decode step (all in ab_timelines.txt). About 2.5 minutes a build. Nothing
# else may run on the machine meanwhile (a llama.cpp build beside it slowed every host-bound figure
# by up to a quarter in one run). Outputs: $OUT/ab_<what>.txt, one file a kind (the device tool brings back at most eight
# files), each row led by its build and round (`| NAME | ROUND | ...`), and at the end a table of each build's ms a step
# (both rounds) beside the first build's.
set -uo pipefail
cd "$(dirname "$0")/.."
names=("$@")
[ ${#names[@]} -gt 0 ] || names=($(ls .device/ab))
export PYTHONUNBUFFERED=1 FERRITE_TOKENIZER_GGUF=$PWD/${TOKENIZER_GGUF:-.device/tok.gguf}
out=${OUT:-/tmp/gpu_ab_out}; mkdir -p "$out" /root/m
for n in "${names[@]}"; do
    rm -rf "/tmp/site-$n"
    # A build of settings only (.device/ab/NAME/env) may name another build whose wheel it takes in
    # .device/ab/NAME/wheel_of, so that many settings of one wheel fit the device tool's carry.
    wheel_dir=.device/ab/$n
    [ -f "$wheel_dir/wheel_of" ] && wheel_dir=.device/ab/$(tr -d '[:space:]' < "$wheel_dir/wheel_of")
    # gguf-py makes the synthetic models (gpu_check.sh downloads its wheel into .device/wheels here)
    python3 -m pip install --quiet --no-index --no-deps --target "/tmp/site-$n" "$wheel_dir"/ferrite*.whl \
        .device/wheels/gguf-*.whl || { echo "$n: install failed"; exit 1; }
done
first=/tmp/site-${names[0]}
[ -f /root/m/syn05.gguf ] || PYTHONPATH=$first python3 scripts/make_synthetic_model.py /root/m/syn05.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1
[ "${AB_BATCHES_7B:-1,8}" = none ] || [ -f /root/m/syn7b.gguf ] || PYTHONPATH=$first python3 scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1
for round in 1 2; do
    for n in "${names[@]}"; do
        echo "######## $n (round $round)"
        # .device/ab/NAME/env (optional): VAR=VALUE lines for this build's runs (one wheel, two
        # settings; a value may hold spaces, as several kernel defines do).
        settings=()
        [ -f .device/ab/"$n"/env ] && mapfile -t settings < .device/ab/"$n"/env
        run() { env "${settings[@]}" PYTHONPATH=/tmp/site-$n FERRITE_CACHE=/tmp/cache-$n timeout "${AB_STEP_S:-120}" python3 "$@"; }
        [ "$round" = 1 ] && [ "${AB_MATVEC:-1}" = 1 ] && run benches/bench_cuda_matvec.py --shapes 7b,real --types "${AB_TYPES:-Q4_K,Q6_K,Q5_0}" --rows "${AB_ROWS:-1,8}" 2>&1 \
            | grep -E "^(q/o|k/v|gate|down|lm_head)" | grep -v " - " | sed -u "s/^/$n | /" | tee -a "$out/ab_matvec.txt" | cut -c1-80
        run benches/bench_decode_step.py /root/m/syn05.gguf --device cuda --batches "${AB_BATCHES:-1,8,64}" 2>&1 | grep "^| [0-9]" | sed -u "s/^| /| $n | $round | /" | tee -a "$out/ab_step05.txt"
        [ "${AB_BATCHES_7B:-1,8}" = none ] || run benches/bench_decode_step.py /root/m/syn7b.gguf --device cuda --batches "${AB_BATCHES_7B:-1,8}" 2>&1 | grep "^| [0-9]" | sed -u "s/^| /| $n | $round | /" | tee -a "$out/ab_step7b.txt"
        # AB_TIMELINE="1 4": each build's per-kernel timeline of syn05's decode step at those
        # batches (profile_cuda_decode.py, torch's profiler), first round only.
        if [ "$round" = 1 ]; then
            for b in ${AB_TIMELINE:-}; do
                # All builds' timelines in one file: the device tool brings back at most 8 files.
                { echo "######## $n, $b sequence(s)"; run benches/profile_cuda_decode.py /root/m/syn05.gguf --child timeline --batch "$b" --steps 32 2>&1; } \
                    | tee -a "$out/ab_timelines.txt" | grep -E "us a step on|^\| (matvec|attention|sample)" | cut -c1-110
            done
        fi
        # AB_GENERATE=1: the Generator on syn05 too (sampler included; bench_generate.py, AB_GEN_MODES
        # at AB_GEN_BATCHES), its table rows.
        [ "${AB_GENERATE:-0}" = 1 ] && run benches/bench_generate.py --model /root/m/syn05.gguf --device cuda --batches "${AB_GEN_BATCHES:-1,8}" \
            --modes "${AB_GEN_MODES:-t0.8+filters}" 2>&1 | grep "^| [0-9]" | sed -u "s/^| /| $n | $round | /" | tee -a "$out/ab_generate.txt"
    done
done
# Each build's ms a step (bench_decode_step.py's fourth column), both rounds, beside the first build's.
for kind in step05 step7b; do
    [ -f "$out/ab_$kind.txt" ] || continue
    echo "######## $kind: ms a step, round 1 / round 2 (change of the mean against ${names[0]})"
    python3 - "$out/ab_$kind.txt" "${names[0]}" <<'PY'
import collections, sys
steps = collections.defaultdict(list)  # (build, sequences) -> ms a step, in round order
order = []
for line in open(sys.argv[1]):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 6:
        continue
    build, seqs, ms = cells[0], int(cells[2]), float(cells[5])
    if build not in order:
        order.append(build)
    steps[(build, seqs)].append(ms)
batches = sorted({b for _, b in steps})
print("| build | " + " | ".join(f"{b} seq" for b in batches) + " |")
print("| --- |" + " --- |" * len(batches))
for build in order:
    row = []
    for b in batches:
        ms = steps.get((build, b), [])
        base = steps.get((sys.argv[2], b), [])
        text = " / ".join(f"{m:.3f}" for m in ms) or "-"
        if ms and base and build != sys.argv[2]:
            text += f" ({100 * (sum(ms) / len(ms) / (sum(base) / len(base)) - 1):+.1f} %)"
        row.append(text)
    print(f"| {build} | " + " | ".join(row) + " |")
PY
done
