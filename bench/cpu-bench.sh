#!/usr/bin/env bash
# CPU benchmark: frugal-trainer against PyTorch eager on the same model, data, batch, optimizer,
# schedule and threads (nanoGPT's CPU recipe shape on tinyshakespeare, byte-level), run one after
# the other on this machine. Prints both summaries and the tokens/s ratio.
#
#   bench/cpu-bench.sh [steps] [threads]      (default 2000 steps, 2 threads)
#
# Absolute numbers depend on what else the machine is doing; compare the two side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-2000}
THREADS=${2:-2}
# shellcheck disable=SC1091
source scripts/env.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
# FRUGAL_TRAINER_BIN: an already built binary (skips the build).
BIN=${FRUGAL_TRAINER_BIN:-$CARGO_TARGET_DIR/release/frugal-trainer}
[ -n "${FRUGAL_TRAINER_BIN:-}" ] || cargo build --release -p frugal-trainer >&2
OUT=$(mktemp -d)
sed "s/steps: 2000/steps: $STEPS/" bench/jobs/shakespeare-dense.yaml > "$OUT/job.yaml"
# Both use libtorch's OpenMP pool; let idle threads sleep so that a busy machine does not turn
# spinning into the measurement (applies to both sides alike).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
"$BIN" train "$OUT/job.yaml" --json --threads "$THREADS" \
  --checkpoint-dir "$OUT/checkpoints" | grep '"event":"summary"' > "$OUT/frugal.json"
"$FRUGAL_VENV/bin/python" bench/torch_reference.py --data ../shared/data/tinyshakespeare.txt \
  --steps "$STEPS" --threads "$THREADS" 2>/dev/null | grep '"summary"' > "$OUT/torch.json"
"$FRUGAL_VENV/bin/python" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
f = json.load(open(f"{out}/frugal.json"))
t = json.load(open(f"{out}/torch.json"))
print("| implementation | parameters | steps | tokens/s | train loss | validation loss |")
print("|---|---|---|---|---|---|")
print(f"| frugal-trainer | {f['params_total']:,} | {f['steps']} | {f['tokens_per_second']:,.0f} | {f['train_loss']:.3f} | {f['val_loss']:.3f} |")
print(f"| PyTorch eager {t['torch']} | {t['params_total']:,} | {t['steps']} | {t['tokens_per_second']:,.0f} | {t['train_loss']:.3f} | {t['val_loss']:.3f} |")
print(f"\ntokens/s ratio frugal / PyTorch: {f['tokens_per_second'] / t['tokens_per_second']:.2f}")
PY
