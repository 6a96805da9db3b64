#!/usr/bin/env bash
# Kills a training run with SIGKILL at N random moments (many land inside checkpoint writes,
# which happen every 2 iterations here), resuming after each; then checks that every logged
# iteration's loss equals an uninterrupted run's and that the run reached max_iters.
#
#   cargo build --release && tools/kill_test.sh [N=30]
set -euo pipefail
N=${1:-30}
BIN=$(cd "$(dirname "$0")/.." && pwd)/target/release/gptrain
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
ARGS=(--set n_layer=2 --set n_head=2 --set n_embd=64 --set block_size=64 --set batch_size=8
      --set max_iters=300 --set eval_interval=2 --set eval_iters=2 --set always_save_checkpoint=true
      --set keep_checkpoints=2 --set max_new_tokens=10)

"$BIN" train "${ARGS[@]}" --set out_dir=ref > ref.log
grep '^iter ' ref.log | sed 's/, time.*//' | sort -u > ref.losses

: > killed.log
for i in $(seq 1 "$N"); do
  init=resume
  ls out/ckpt-* > /dev/null 2>&1 || init=scratch
  "$BIN" train "${ARGS[@]}" --set out_dir=out --set init_from=$init >> killed.log 2>&1 &
  pid=$!
  sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.3f", 0.05 + rand() * 1.2 }')"
  kill -9 "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
done
init=resume
ls out/ckpt-* > /dev/null 2>&1 || init=scratch
"$BIN" train "${ARGS[@]}" --set out_dir=out --set init_from=$init >> killed.log 2>&1

grep '^iter ' killed.log | sed 's/, time.*//' | sort -u > killed.losses
# every (iteration, loss) seen in the killed runs must be the reference's, and all of them seen
if ! comm -23 killed.losses ref.losses | grep -q .; then
  if cmp -s killed.losses ref.losses; then
    echo "PASS: $N kills; $(wc -l < ref.losses) iterations, every loss equal to the uninterrupted run's"
    exit 0
  fi
  echo "FAIL: some iterations were never logged"; diff ref.losses killed.losses | head; exit 1
fi
echo "FAIL: losses differ from the uninterrupted run:"; comm -23 killed.losses ref.losses | head
exit 1
