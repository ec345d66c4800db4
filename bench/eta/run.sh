#!/usr/bin/env bash
# How good the expected end is (docs/benchmarks.md, "The ETA, half-way"): real CPU runs with
# the JSON lines the trainer writes, each step's `percent` and `remaining_seconds` (the same
# estimate as status.progress); at half the run's actual wall time, the step line then latest
# says when the run will end, and this compares it with when the run's summary came.
#   1. steady: shakespeare-dense, 600 steps, no evaluation between;
#   2. evaluations: the same with an evaluation every 100 steps (the rate counts them);
#   3. quality target: synthetic data to a validation loss the run reaches part-way, so the end
#      comes from the fit of its evaluations, not the step count.
# Run from the repository root:
#   cargo build --release -p frugal-trainer
#   FRUGAL_TRAINER=target/release/frugal-trainer bash bench/eta/run.sh
# BENCH_OUT places the runs; BENCH_THREADS (2) sets the intra-op threads.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${FRUGAL_TRAINER:-frugal-trainer}
out=${BENCH_OUT:-$(mktemp -d)}
threads=${BENCH_THREADS:-2}
mkdir -p "$out"
cd "$root"
echo "eta: runs in $out" >&2

# run NAME MANIFEST [--set ...]: one run's JSON lines in $out/NAME.log
run() {
  local name=$1 manifest=$2
  shift 2
  rm -rf "${out:?}/$name"
  "$bin" train "$manifest" --checkpoint-dir "$out/$name" --threads "$threads" --json "$@" > "$out/$name.log"
}

run steady bench/jobs/shakespeare-dense.yaml --set training.duration.steps=600 --set training.logInterval=5 \
  --set training.evalInterval=100000 --set training.evalBatches=20 --set training.checkpointInterval=100000
run evaluations bench/jobs/shakespeare-dense.yaml --set training.duration.steps=600 --set training.logInterval=5 \
  --set training.evalInterval=100 --set training.evalBatches=40 --set training.checkpointInterval=100000
run target bench/eta/target.yaml

python3 - "$out" steady evaluations target <<'PY'
import json, sys
from datetime import datetime

def when(line):
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")[:26] + "+00:00").timestamp()

out, names = sys.argv[1], sys.argv[2:]
print(f"| run | steps | wall s | at half-way: step, % | expected end − actual end | of the run |")
print(f"|---|---|---|---|---|---|")
for name in names:
    lines = [json.loads(l) for l in open(f"{out}/{name}.log") if l.startswith("{")]
    start = next(when(l) for l in lines if l.get("event") == "start")
    end_line = next(l for l in lines if l.get("event") == "summary")
    end = when(end_line)
    steps = [l for l in lines if l.get("event") == "step"]
    half = start + (end - start) / 2
    at = [l for l in steps if when(l) <= half and "remaining_seconds" in l][-1]
    expected = when(at) + at["remaining_seconds"]
    error = expected - end
    print(f"| {name} | {end_line['steps']} | {end - start:.1f} | {at['step']}, {at['percent']}% | "
          f"{error:+.1f} s | {100 * error / (end - start):+.1f}% |")
PY
