#!/usr/bin/env bash
# Two frugal-trainer binaries side by side on the nanoGPT-shape CPU job
# (bench/jobs/shakespeare-dense.yaml), alternating A, B, A, B, ... so that a change in machine
# load falls on both: prints every run, the median tokens/s of each and the B/A ratio per rep.
# Used to show that a change to the trainer does not cost throughput (build the commit before
# it into another target directory, copy its binary, then run this against the new one).
#
#   bench/ab-trainer.sh BIN_A BIN_B [steps] [reps] [threads]    (default 600 steps, 3 reps, 2 threads)
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?binary A}; B=${2:?binary B}
STEPS=${3:-600}; REPS=${4:-3}; THREADS=${5:-2}
# shellcheck disable=SC1091
source scripts/env.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=$(mktemp -d)
# shellcheck source=ab.sh
source bench/ab.sh
run_side() {
  local bin=$A
  [ "$1" = B ] && bin=$B
  rm -rf "$OUT/checkpoints"
  "$bin" train bench/jobs/shakespeare-dense.yaml --max-steps "$STEPS" --json --threads "$THREADS" \
    --checkpoint-dir "$OUT/checkpoints" | grep '"event":"summary"'
}
ab_runs "$REPS" "$OUT/runs.txt" run_side
"$FRUGAL_VENV/bin/python" - "$OUT/runs.txt" "$A" "$B" <<'PY'
import json, statistics, sys
runs = {"A": [], "B": []}
for line in open(sys.argv[1]):
    side, text = line.split(" ", 1)
    runs[side].append(json.loads(text))
print(f"A = {sys.argv[2]}\nB = {sys.argv[3]}\n")
print("| rep | binary | steps | tokens/s | train loss | validation loss |")
print("|---|---|---|---|---|---|")
for i, (a, b) in enumerate(zip(runs["A"], runs["B"]), 1):
    for side, r in (("A", a), ("B", b)):
        print(f"| {i} | {side} | {r['steps']} | {r['tokens_per_second']:,.0f} | {r['train_loss']:.4f} | {r['val_loss']:.4f} |")
med = {s: statistics.median(r["tokens_per_second"] for r in runs[s]) for s in runs}
ratios = [b["tokens_per_second"] / a["tokens_per_second"] for a, b in zip(runs["A"], runs["B"])]
print(f"\nmedian tokens/s: A {med['A']:,.0f}, B {med['B']:,.0f}; B/A per rep {', '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f}")
PY
