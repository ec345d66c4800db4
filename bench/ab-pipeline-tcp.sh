#!/usr/bin/env bash
# Two builds of the pipeline_tcp_steps example (2 replicas × 2 stages, four processes over
# loopback TCP) side by side, alternating A, B, A, B, ... so that a change in machine load falls
# on both: prints every run's median ms/step (the slowest rank's step, after the warm-up) and
# the CPU ms the four processes used per step, then the median of each side and of the per-rep
# B/A. Used to show what a change to the TCP transport costs a step (build the example in a
# checkout of the commit before it, with its own target directory, and copy both binaries).
#
#   bench/ab-pipeline-tcp.sh BIN_A BIN_B [steps] [reps]    (default 40 steps, 5 reps)
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?binary A}; B=${2:?binary B}
STEPS=${3:-40}; REPS=${4:-5}
# shellcheck disable=SC1091
source scripts/env.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=$(mktemp -d)
# shellcheck source=ab.sh
source bench/ab.sh
run_side() {
  local bin=$A
  [ "$1" = B ] && bin=$B
  "$bin" "$STEPS" | tail -n 1
}
ab_runs "$REPS" "$OUT/runs.txt" run_side
"$FRUGAL_VENV/bin/python" - "$OUT/runs.txt" "$A" "$B" <<'PY'
import json, statistics, sys
runs = {"A": [], "B": []}
for line in open(sys.argv[1]):
    side, text = line.split(" ", 1)
    runs[side].append(json.loads(text))
print(f"A = {sys.argv[2]}\nB = {sys.argv[3]}\n")
print("| rep | A ms/step | B ms/step | B/A | A CPU ms/step | B CPU ms/step | B/A |")
print("|---|---|---|---|---|---|---|")
for i, (a, b) in enumerate(zip(runs["A"], runs["B"]), 1):
    wa, wb, ca, cb = a["median_ms_per_step"], b["median_ms_per_step"], a["cpu_ms_per_step"], b["cpu_ms_per_step"]
    print(f"| {i} | {wa:.1f} | {wb:.1f} | {wb / wa:.3f} | {ca:.1f} | {cb:.1f} | {cb / ca:.3f} |")
for key, what in (("median_ms_per_step", "ms/step (wall)"), ("cpu_ms_per_step", "CPU ms/step (four processes)")):
    med = {s: statistics.median(r[key] for r in runs[s]) for s in runs}
    ratio = statistics.median(b[key] / a[key] for a, b in zip(runs["A"], runs["B"]))
    print(f"median {what}: A {med['A']:.1f}, B {med['B']:.1f}; median of B/A per rep {ratio:.3f}")
PY
