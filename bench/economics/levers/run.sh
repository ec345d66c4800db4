#!/usr/bin/env bash
# The economics levers' speed on this machine: each job in this directory (4 layers, 128 wide,
# tinyshakespeare, context 1024 or 2048 at 8,192 tokens a step) trains 30 steps, twice, in
# turns; prints the mean tokens/s of steps 10 to 30 of each round. Run from the repository root:
#   FRUGAL_TRAINER=target/release/frugal-trainer bash bench/economics/levers/run.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${FRUGAL_TRAINER:-frugal-trainer}
out=${BENCH_OUT:-$(mktemp -d)}
for round in 1 2; do
  for job in dense-fp32 dense-bf16 sw-bf16 dense-bf16-muon moe-bf16 moe-sw-bf16 dense-bf16-2k sw-bf16-2k; do
    rm -rf "${out:?}/$job"
    "$bin" train "$here/$job.yaml" --checkpoint-dir "$out/$job" --threads "${BENCH_THREADS:-2}" --json --max-steps 30 > "$out/$job.log"
    python3 - "$round" "$job" "$out/$job.log" <<'PY'
import json, sys
steps = [e for e in map(json.loads, filter(lambda l: l.startswith("{"), open(sys.argv[3]))) if e["event"] == "step" and e["step"] >= 10]
print(f"round {sys.argv[1]}  {sys.argv[2]:16} {sum(e['tokens_per_second'] for e in steps) / len(steps):8.0f} tokens/s")
PY
  done
done
