#!/usr/bin/env bash
# The claim, measured on this machine (docs/benchmarks.md, "The claim, measured"): the baseline
# and the recipe (examples/economics/) trained to the same bits-per-byte target, one after the
# other on the same machine.
#   1. the sweep: each side's learning rate, the same count of tuning runs for each (seed 1);
#   2. the seeds: each side at its best learning rate, seeds 2 and 3 beside the sweep's seed 1;
#   3. the ablation, at the recipe's learning rate, seed 1: the recipe without bf16, without the
#      mixture of experts, and with Muon;
# then the tables, with frugal-trainer report. Run from the repository root:
#   cargo build --release -p frugal-trainer
#   FRUGAL_TRAINER=target/release/frugal-trainer bash bench/economics/run.sh
# ECON_LRS (default "0.002 0.004"), ECON_SEEDS ("2 3"), ECON_ABLATE (1) and BENCH_OUT narrow or
# place it; BENCH_THREADS (2) sets the intra-op threads.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${FRUGAL_TRAINER:-frugal-trainer}
out=${BENCH_OUT:-$(mktemp -d)}
read -ra lrs <<<"${ECON_LRS:-0.002 0.004}"
read -ra seeds <<<"${ECON_SEEDS:-2 3}"
threads=${BENCH_THREADS:-2}
mkdir -p "$out"
cd "$root"
echo "economics: runs in $out" >&2

# train NAME MANIFEST SEED LR [--set ...]: one run, its report in $out/NAME/seedSEED
train() {
  local name=$1 manifest=$2 seed=$3 lr=$4
  shift 4
  local dir=$out/$name/seed$seed
  if [ -f "$dir/report.json" ]; then
    echo "economics: $name seed $seed done already" >&2
    return
  fi
  # the run's name is its job name in the reports
  sed "/^metadata:/,/^spec:/ s/^  name: .*/  name: $name/" "$manifest" > "$out/$name.yaml"
  rm -rf "$dir"
  mkdir -p "$dir"
  local t0=$SECONDS
  "$bin" train "$out/$name.yaml" --checkpoint-dir "$dir" --threads "$threads" --json \
    --set "training.seed=$seed" --set "training.optimizer.learningRate=$lr" "$@" > "$dir/train.log"
  echo "economics: $name seed $seed: $((SECONDS - t0)) s" >&2
}

# best SIDE: the swept learning rate that reached the target in the fewest device-hours (the
# lowest final bits per byte if none reached it)
best() {
  python3 - "$out" "$1" "${lrs[@]}" <<'PY'
import json, sys
out, side, lrs = sys.argv[1], sys.argv[2], sys.argv[3:]
def key(lr):
    r = json.load(open(f"{out}/{side}-lr{lr}/seed1/report.json"))
    t = r.get("quality_target") or r.get("target") or {}
    reached = t.get("reached") and t.get("device_hours") is not None
    return (0, t["device_hours"]) if reached else (1, (r.get("quality") or {}).get("bitsPerByte", float("inf")))
print(min(lrs, key=key))
PY
}

for lr in "${lrs[@]}"; do
  train "baseline-lr$lr" examples/economics/baseline.yaml 1 "$lr"
  train "recipe-lr$lr" examples/economics/recipe.yaml 1 "$lr"
done
b=$(best baseline)
r=$(best recipe)
echo "economics: best learning rates: baseline $b, recipe $r" >&2
for seed in "${seeds[@]}"; do
  train "baseline-lr$b" examples/economics/baseline.yaml "$seed" "$b"
  train "recipe-lr$r" examples/economics/recipe.yaml "$seed" "$r"
done
if [ "${ECON_ABLATE:-1}" = 1 ]; then
  train recipe-fp32 examples/economics/recipe.yaml 1 "$r" --set training.precision=fp32
  train recipe-dense examples/economics/baseline.yaml 1 "$r" --set training.precision=bf16
  train recipe-muon examples/economics/recipe.yaml 1 "$r" --set training.optimizer.type=muon
fi

sweep=()
for lr in "${lrs[@]}"; do sweep+=("$out/baseline-lr$lr/seed1" "$out/recipe-lr$lr/seed1"); done
echo
echo "## the sweep (seed 1)"
"$bin" report --format markdown "${sweep[@]}"
echo
echo "## baseline and recipe over their seeds, at their best learning rates"
"$bin" report --format markdown --seeds --baseline "baseline-lr$b" "$out/baseline-lr$b" "$out/recipe-lr$r"
if [ "${ECON_ABLATE:-1}" = 1 ]; then
  echo
  echo "## the ablation (seed 1, the recipe's learning rate), against the recipe"
  "$bin" report --format markdown --seeds --baseline "recipe-lr$r" "$out/recipe-lr$r/seed1" "$out/recipe-fp32" "$out/recipe-dense" "$out/recipe-muon" "$out/baseline-lr$b/seed1"
fi
