#!/usr/bin/env bash
# The CUDA backend's checks, in two halves.
#
#   tools/gpu_check.sh --build   on a machine with Rust (no GPU needed): builds the release binary
#                                and the test binaries, and copies the ones with CUDA tests,
#                                stripped (the tests gzipped; under 60 MiB in all), into
#                                target/gpu-check/ with a manifest.
#   tools/gpu_check.sh           on a GPU machine without Rust: from target/gpu-check/, runs
#                                `gptrain check --device cuda` when the binary has that command
#                                (again with the fast paths off if it fails), the CUDA tests
#                                (every test whose name has `cuda`), a short
#                                training run on the GPU beside the same run on the CPU, its
#                                checkpoint sampled on the CPU, 50 fp16 iterations of the
#                                rtx4070-40m shape on GPT-2 BPE tokens, two data-parallel ranks
#                                sharing the GPU against one process (through host memory, by
#                                NCCL, by NCCL with ZeRO-1; one rank killed mid-run), and benches (gpt2-124m
#                                in bf16: as it is, with CUDA-core attention, with GELU's backward
#                                unfused). Under 8
#                                minutes; a summary table last; full logs under $OUT when set
#                                (else target/gpu-check/logs).
#   tools/gpu_check.sh --converge  on the GPU machine: the shakespeare-char convergence run,
#                                cut at $CONVERGE_LIMIT seconds (default 450).
#
# The GPU machine needs the NVIDIA driver, cuBLASLt and NVRTC (a CUDA toolkit, or NVIDIA's pip
# wheels, e.g. the ones torch installs); see README.md, "GPU".
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PACK=target/gpu-check

if [[ "${1:-}" == "--build" ]]; then
    set -e
    cargo build --release
    # every test executable, from cargo's own report
    cargo test --release --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        lib = "lib" in m["target"]["kind"]  # the library unit tests, not the gptrain binary
        print(m["target"]["name"] + ("-lib" if lib else ""), m["executable"])' >"$PACK.all" || { mkdir -p "$PACK"; false; }
    rm -rf "$PACK" && mkdir -p "$PACK/bin"
    mv "$PACK.all" "$PACK/all-tests.txt"
    : >"$PACK/manifest.txt"
    while read -r name exe; do
        # tests/cuda_emu.rs runs on the CPU emulator only (CI runs it): minutes of device time for nothing
        [[ "$name" == cuda_emu ]] && continue
        # only the binaries that hold CUDA tests (the library's and backend_tests! users)
        if "$exe" --list 2>/dev/null | grep cuda >/dev/null; then  # (not grep -q: an early exit is a SIGPIPE failure under pipefail)
            cp "$exe" "$PACK/bin/$name" && strip --strip-all "$PACK/bin/$name" 2>/dev/null || true
            echo "$name" >>"$PACK/manifest.txt"
        fi
    done <"$PACK/all-tests.txt"
    cp target/release/gptrain "$PACK/bin/gptrain" && strip --strip-all "$PACK/bin/gptrain" 2>/dev/null || true
    # the test binaries travel gzipped (~57 MB -> ~20 in all), the gptrain binary as it is
    (cd "$PACK/bin" && xargs tar -czf ../tests.tar.gz <../manifest.txt && xargs rm -f <../manifest.txt)
    echo "$ROOT" >"$PACK/build-root.txt"
    echo "built into $PACK ($(du -sh "$PACK" | cut -f1)): $(tr '\n' ' ' <"$PACK/manifest.txt")gptrain"
    # what a device call carries is at most 64 MiB in all
    bytes=$(du -sb "$PACK" | cut -f1)
    ((bytes < 60 * 1024 * 1024)) || { echo "error: $PACK is $((bytes / 1048576)) MiB; a device call carries at most 64 MiB"; exit 1; }
    exit 0
fi

[[ -f "$PACK/manifest.txt" ]] || { echo "error: no $PACK/manifest.txt: run tools/gpu_check.sh --build first (on a machine with Rust)"; exit 1; }
if [[ -f "$PACK/tests.tar.gz" ]]; then
    tar -C "$PACK/bin" -xzf "$PACK/tests.tar.gz" || { echo "error: could not unpack $PACK/tests.tar.gz"; exit 1; }
fi

# --converge: issue 22's convergence run as a user types it (nanoGPT's shakespeare-char on the
# GPU: 6x384, block 256, batch 64, 5000 iterations, bf16 where the card has it), cut at
# CONVERGE_LIMIT seconds (default 450) so one device call holds it; the log's last lines show
# the val loss reached, the steady ms/iter and the ETA if it was cut.
if [[ "${1:-}" == "--converge" ]]; then
    LOGS=${OUT:-$PACK/logs}
    mkdir -p "$LOGS"
    t0=$SECONDS
    timeout -k 15 "${CONVERGE_LIMIT:-450}" "$PACK/bin/gptrain" train --preset shakespeare-char --set device=cuda \
        --set "out_dir=$LOGS/converge" >"$LOGS/converge.log" 2>&1
    rc=$?
    grep -E "^(device|dtype|memory)" "$LOGS/converge.log"
    grep -E "^step " "$LOGS/converge.log" | tail -4
    grep -E "^iter " "$LOGS/converge.log" | tail -1
    grep -E "^(done|final|error)" "$LOGS/converge.log"
    echo "converge: exit $rc after $((SECONDS - t0)) s (124 or 137: cut at CONVERGE_LIMIT); nanoGPT reaches val ~1.47, the issue asks <= 1.50; log: $LOGS/converge.log"
    exit $rc
fi
LOGS=${OUT:-$PACK/logs}
mkdir -p "$LOGS"
BIN=$PACK/bin
declare -a ROWS
row() { ROWS+=("$(printf '%-34s %-8s %7s  %s' "$1" "$2" "$3" "$4")"); }
# every step gets its own limit, cut to what is left of 7.5 minutes in all
DEADLINE=$((SECONDS + 450))
timed() { # name, log, timeout seconds, command...
    local name=$1 log=$2 limit=$3; shift 3
    local left=$((DEADLINE - SECONDS))
    ((left < limit)) && limit=$left
    if ((limit <= 5)); then
        row "$name" "not run" "-" "out of time"
        return
    fi
    local t0=$SECONDS
    timeout -k 15 "$limit" "$@" >"$LOGS/$log" 2>&1 # -k: a run that ignores the TERM (finishing an iteration) is killed
    local rc=$? dt=$((SECONDS - t0))
    local status=ok; [[ $rc -ne 0 ]] && status="FAIL($rc)"; [[ $rc -eq 124 ]] && status=TIMEOUT
    # tests that found no GPU pass by skipping: say so, never "ok"
    [[ $rc -eq 0 ]] && grep -q "skipped: no CUDA device" "$LOGS/$log" && status=SKIPPED
    LAST_STATUS=$status
    row "$name" "$status" "${dt}s" "$log"
}

# Tests find fixtures and the gptrain binary by the paths of the machine that built them.
BUILD_ROOT=$(cat "$PACK/build-root.txt")
if [[ "$BUILD_ROOT" != "$ROOT" && ! -e "$BUILD_ROOT" ]]; then
    mkdir -p "$(dirname "$BUILD_ROOT")" 2>/dev/null && ln -s "$ROOT" "$BUILD_ROOT" 2>/dev/null ||
        echo "note: could not link $BUILD_ROOT to $ROOT; tests that read fixtures may fail" | tee "$LOGS/note.txt"
fi
mkdir -p "$BUILD_ROOT/target/release" 2>/dev/null && [[ -e "$BUILD_ROOT/target/release/gptrain" ]] || cp "$BIN/gptrain" "$BUILD_ROOT/target/release/gptrain" 2>/dev/null

{ nvidia-smi 2>&1 || echo "nvidia-smi: not found"; } >"$LOGS/nvidia-smi.txt"

# 1. gptrain check first: the quickest verdict on every kernel. If it fails, again waiting for
# each op (a fault is named with its op), with the tensor-core attention off, then with GELU's
# epilogue off too, to name the culprit.
if "$BIN/gptrain" help check >/dev/null 2>&1; then
    timed "gptrain check --device cuda" check.log 60 "$BIN/gptrain" check --device cuda
    grep -E "FAIL|^kernels" "$LOGS/check.log" | head -12 | sed 's/^/    /'
    if [[ "$LAST_STATUS" != ok ]]; then
        # each op waited for: a faulting kernel is named with its op
        timed "check, GPTRAIN_CUDA_SYNC=1" check-sync.log 90 env GPTRAIN_CUDA_SYNC=1 "$BIN/gptrain" check --device cuda
        grep -E "FAIL|error" "$LOGS/check-sync.log" | head -6 | sed 's/^/    /'
        timed "check, attention tiled" check-tiled.log 60 env GPTRAIN_CUDA_ATTENTION=tiled "$BIN/gptrain" check --device cuda
        timed "check, tiled and no GELU epilogue" check-plain.log 60 env GPTRAIN_CUDA_ATTENTION=tiled GPTRAIN_CUDA_GELU_FUSION=0 \
            "$BIN/gptrain" check --device cuda
    fi
else
    row "gptrain check --device cuda" "missing" "-" "this build has no check command"
fi

# 2. the CUDA tests, one binary at a time, one test at a time (one GPU); not the NVRTC
# compile of every kernel for four architectures (minutes of CPU, run by CI; `check` above
# compiled every kernel for this card)
while read -r name; do
    timed "tests: $name (cuda)" "test-$name.log" 120 "$BIN/$name" cuda --test-threads=1 --skip every_kernel_compiles
    grep -h "skipped" "$LOGS/test-$name.log" | head -3 | sed 's/^/    /'
done <"$PACK/manifest.txt"

# 3. a short training run on the GPU, and the same run on the CPU (losses side by side)
WORK=$(mktemp -d)
"$BIN/gptrain" prepare --out "$WORK/data" >"$LOGS/prepare.log" 2>&1
SHORT=(--preset shakespeare-char-cpu --set "dataset=$WORK/data" --set max_iters=60 --set eval_interval=30 --set eval_iters=5
    --set log_interval=10 --set n_layer=2 --set n_embd=128 --set n_head=4 --set block_size=64 --set batch_size=16)
timed "train 60 iters, cuda fp32" train-cuda.log 90 "$BIN/gptrain" train "${SHORT[@]}" --set device=cuda --set dtype=float32 --set "out_dir=$WORK/gpu"
timed "train 60 iters, cpu fp32" train-cpu.log 90 "$BIN/gptrain" train "${SHORT[@]}" --set device=cpu --set dtype=float32 --set "out_dir=$WORK/cpu"
timed "train 60 iters, cuda bf16" train-cuda-bf16.log 90 "$BIN/gptrain" train "${SHORT[@]}" --set device=cuda --set dtype=bfloat16 --set "out_dir=$WORK/gpu-bf16"
timed "train 60 iters, cuda fp16" train-cuda-fp16.log 90 "$BIN/gptrain" train "${SHORT[@]}" --set device=cuda --set dtype=float16 --set "out_dir=$WORK/gpu-fp16"
# the GPU's checkpoint read on the CPU
timed "sample on cpu from the cuda checkpoint" sample-cpu.log 30 "$BIN/gptrain" sample --set "out_dir=$WORK/gpu" --set device=cpu \
    --set num_samples=1 --set max_new_tokens=40
# the founding case's shape in fp16 with loss scaling, on GPT-2 BPE tokens (4 micro-steps, not 32)
"$BIN/gptrain" prepare --tokenizer gpt2 --out "$WORK/bpe" >"$LOGS/prepare-bpe.log" 2>&1
timed "train 50 iters, rtx4070-40m fp16" train-rtx4070-fp16.log 120 "$BIN/gptrain" train --preset rtx4070-40m --set "dataset=$WORK/bpe" \
    --set device=cuda --set dtype=float16 --set max_iters=50 --set eval_interval=25 --set eval_iters=2 --set log_interval=5 \
    --set gradient_accumulation_steps=4 --set "out_dir=$WORK/rtx4070"
# two data-parallel ranks sharing the one GPU (sums staged through host memory) against one
# process: the same loss lines
PAIR=("${SHORT[@]}" --set max_iters=20 --set eval_interval=10 --set log_interval=1 --set gradient_accumulation_steps=2
    --set device=cuda:0 --set dtype=float32)
timed "train 20 iters, one process, cuda" train-dp-alone.log 60 "$BIN/gptrain" train "${PAIR[@]}" --set "out_dir=$WORK/dp-alone"
# rank 1 in the background (its log NAME-rank1.log), rank 0 in front (its log is the step's)
PAIR_RUN='bin=$1 logs=$2 out=$3 name=$4; shift 4; port=$((29500 + RANDOM % 2000))
RANK=1 WORLD_SIZE=2 LOCAL_RANK=1 LOCAL_WORLD_SIZE=2 MASTER_PORT=$port "$bin" train "$@" --set "out_dir=$out" >"$logs/$name-rank1.log" 2>&1 &
r1=$!
RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=2 MASTER_PORT=$port "$bin" train "$@" --set "out_dir=$out"
rc=$?
wait $r1 || rc=1
exit $rc'
LOSS_LINES='^(iter|step|final)'
# through host memory (NCCL refuses ranks sharing a GPU), then by NCCL where it allows that
# (2.30+ with NCCL_MULTI_RANK_GPU_ENABLE=1; older ones fall back to host memory, banner says),
# then the same with the optimiser state split over the ranks (ZeRO-1: ncclReduce/ncclBroadcast)
for v in "host::" "nccl:NCCL_MULTI_RANK_GPU_ENABLE=1:" "zero:NCCL_MULTI_RANK_GPU_ENABLE=1:zero_stage=1"; do
    rest=${v#*:}
    name=train-dp-${v%%:*} var=${rest%%:*} set=${rest#*:}
    extra=()
    [ -n "$set" ] && extra=(--set "$set")
    timed "train 20 iters, 2 ranks on cuda:0, ${v%%:*}" "$name-rank0.log" 90 env $var bash -c "$PAIR_RUN" _ "$BIN/gptrain" "$LOGS" \
        "$WORK/$name" "$name" "${PAIR[@]}" "${extra[@]}"
    grep -h "data parallel\|ZeRO" "$LOGS/$name-rank0.log" 2>/dev/null | sed 's/^/    /'
    if [[ ! -s "$LOGS/train-dp-alone.log" || ! -s "$LOGS/$name-rank0.log" ]]; then
        row "2 ranks (${v%%:*}) losses = one's" "not run" "-" "out of time"
    elif diff <(grep -E "$LOSS_LINES" "$LOGS/train-dp-alone.log" | sed 's/, time.*//') \
        <(grep -E "$LOSS_LINES" "$LOGS/$name-rank0.log" | sed 's/, time.*//') >"$LOGS/$name-diff.txt" &&
        grep -qE '^iter' "$LOGS/train-dp-alone.log"; then
        row "2 ranks (${v%%:*}) losses = one's" ok "-" "$name-diff.txt"
    else
        row "2 ranks (${v%%:*}) losses = one's" FAIL "-" "$name-diff.txt"
    fi
done
# a rank killed (SIGKILL) mid-run while the ranks sum by NCCL: NCCL itself reports nothing for
# a dead peer on the same machine, so rank 0 must see rank 1's connection close, in the TCP
# check-in or while its NCCL sum waits, and stop with one line naming it within seconds
KILL_RUN='bin=$1 logs=$2 out=$3; shift 3; port=$((29500 + RANDOM % 2000))
RANK=1 WORLD_SIZE=2 LOCAL_RANK=1 LOCAL_WORLD_SIZE=2 MASTER_PORT=$port "$bin" train "$@" --set "out_dir=$out" >"$logs/train-dp-killed-rank1.log" 2>&1 &
r1=$!
RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=2 MASTER_PORT=$port "$bin" train "$@" --set "out_dir=$out" &
r0=$!
for _ in $(seq 600); do grep -q "^iter 5:" "$logs/train-dp-killed-rank0.log" 2>/dev/null && break; sleep 0.1; done
kill -9 $r1; t0=$(date +%s%N)
wait $r0; rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
echo "rank 0: exit $rc, $ms ms after rank 1 was killed"
[ $rc -eq 1 ] && grep -q "rank 1" "$logs/train-dp-killed-rank0.log" && [ $ms -lt 20000 ]'
timed "2 ranks, nccl, rank 1 killed" train-dp-killed-rank0.log 60 env NCCL_MULTI_RANK_GPU_ENABLE=1 bash -c "$KILL_RUN" _ "$BIN/gptrain" \
    "$LOGS" "$WORK/dp-killed" "${PAIR[@]}" --set max_iters=100000 --set eval_interval=100000
grep -h "data parallel\|^error\|rank 0: exit" "$LOGS/train-dp-killed-rank0.log" 2>/dev/null | sed 's/^/    /'
for f in train-cuda.log train-cpu.log train-cuda-bf16.log train-cuda-fp16.log train-rtx4070-fp16.log; do
    echo "== $f (start banner, iteration lines)"
    grep -E "^(device|dtype|memory|kernels)" "$LOGS/$f"
    grep -E "^(iter|step|eval|final|skipped)|loss scale" "$LOGS/$f" | head -14
done >"$LOGS/losses.txt"
timed "bench 5 steps --profile, cuda" bench-cuda.log 45 "$BIN/gptrain" bench --set device=cuda --steps 5 --warmup 2 --profile
# gpt2-124m in bf16: the defaults (tensor-core attention, GELU's backward in cuBLASLt's
# epilogue), attention on the CUDA-core kernels, and GELU's backward as a kernel of its own
for v in "default:" "tiled:GPTRAIN_CUDA_ATTENTION=tiled" "gelu-kernel:GPTRAIN_CUDA_GELU_FUSION=0"; do
    name=${v%%:*} var=${v#*:}
    timed "bench gpt2-124m bf16, $name" "bench-gpt2-$name.log" 60 env $var "$BIN/gptrain" bench \
        --preset gpt2-124m --set device=cuda --set dtype=bfloat16 --steps 4 --warmup 2 --profile
    # the step time, tokens/s and MFU, the time to the first timed step, the kernels' compile, the top of the profile
    { grep -E "^(step|warm-up|kernels)|tokens/s" "$LOGS/bench-gpt2-$name.log"; grep -A4 "^profile:" "$LOGS/bench-gpt2-$name.log" | tail -4; } |
        sed "s/^/    [$name] /"
done
rm -rf "$WORK"

cat "$LOGS/losses.txt"
echo
echo "logs: $LOGS"
printf '%-34s %-8s %7s  %s\n' "check" "status" "time" "log"
printf '%s\n' "${ROWS[@]}"
