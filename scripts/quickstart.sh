#!/usr/bin/env bash
# `make quickstart`: trains examples/quickstart-cpu.yaml (synthetic data, CPU) and prints its report.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$FRUGAL_ROOT"
cargo build -q --release -p frugal-trainer
exec target/release/frugal-trainer train "${1:-examples/quickstart-cpu.yaml}"
