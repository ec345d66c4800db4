#!/usr/bin/env bash
# `make quickstart`: trains examples/quickstart-cpu.yaml (synthetic data, CPU) until its quality
# target or its steps, evaluating as it goes, then prints the run's report table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$FRUGAL_ROOT"
cargo build -q --release -p frugal-trainer
bin="${CARGO_TARGET_DIR:-target}/release/frugal-trainer"
run="${FRUGAL_QUICKSTART_DIR:-${CARGO_TARGET_DIR:-target}/quickstart}"
# A fresh run each time: an existing checkpoint would resume instead.
rm -rf "$run"
"$bin" train "${1:-examples/quickstart-cpu.yaml}" --checkpoint-dir "$run"
echo
"$bin" report "$run/report.json"
