#!/usr/bin/env bash
# CPU benchmark: frugal-trainer against PyTorch eager on the same model, data, batch, optimizer,
# schedule and threads (nanoGPT's CPU recipe shape on tinyshakespeare, byte-level). The two run
# alternately, `reps` times each (frugal, PyTorch, frugal, PyTorch, ...), so that a change in
# machine load falls on both; prints every run, the medians and the median tokens/s ratio.
#
#   bench/cpu-bench.sh [steps] [threads] [reps]      (default 2000 steps, 2 threads, 1 rep)
#
# Absolute numbers depend on what else the machine is doing; compare the two side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-2000}
THREADS=${2:-2}
REPS=${3:-1}
# shellcheck disable=SC1091
source scripts/env.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
# FRUGAL_TRAINER_BIN: an already built binary (skips the build).
BIN=${FRUGAL_TRAINER_BIN:-$CARGO_TARGET_DIR/release/frugal-trainer}
[ -n "${FRUGAL_TRAINER_BIN:-}" ] || cargo build --release -p frugal-trainer >&2
OUT=$(mktemp -d)
# Both use libtorch's OpenMP pool; let idle threads sleep so that a busy machine does not turn
# spinning into the measurement (applies to both sides alike).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
echo "load before: $(uptime)" >&2
for rep in $(seq "$REPS"); do
  rm -rf "$OUT/checkpoints"
  "$BIN" train bench/jobs/shakespeare-dense.yaml --set "training.duration.steps=$STEPS" --json --threads "$THREADS" \
    --checkpoint-dir "$OUT/checkpoints" | grep '"event":"summary"' >> "$OUT/frugal.json"
  "$FRUGAL_VENV/bin/python" bench/torch_reference.py --data data/tinyshakespeare.txt \
    --steps "$STEPS" --threads "$THREADS" 2>/dev/null | grep '"summary"' >> "$OUT/torch.json"
  echo "rep $rep done: $(uptime)" >&2
done
"$FRUGAL_VENV/bin/python" - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
fs = [json.loads(l) for l in open(f"{out}/frugal.json")]
ts = [json.loads(l) for l in open(f"{out}/torch.json")]
print("| rep | implementation | parameters | steps | tokens/s | train loss | validation loss |")
print("|---|---|---|---|---|---|---|")
for i, (f, t) in enumerate(zip(fs, ts), 1):
    print(f"| {i} | frugal-trainer | {f['params_total']:,} | {f['steps']} | {f['tokens_per_second']:,.0f} | {f['train_loss']:.3f} | {f['val_loss']:.3f} |")
    print(f"| {i} | PyTorch eager {t['torch']} | {t['params_total']:,} | {t['steps']} | {t['tokens_per_second']:,.0f} | {t['train_loss']:.3f} | {t['val_loss']:.3f} |")
med = lambda xs, k: statistics.median(x[k] for x in xs)
ratios = [f["tokens_per_second"] / t["tokens_per_second"] for f, t in zip(fs, ts)]
print(f"\nmedian tokens/s: frugal {med(fs, 'tokens_per_second'):,.0f}, PyTorch {med(ts, 'tokens_per_second'):,.0f}")
print(f"median validation loss: frugal {med(fs, 'val_loss'):.3f}, PyTorch {med(ts, 'val_loss'):.3f}")
print(f"tokens/s ratio frugal / PyTorch per rep: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")
PY
