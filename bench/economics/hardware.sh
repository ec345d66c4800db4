#!/usr/bin/env bash
# The hardware column of the economics table: the fewest GPUs whose memory holds each 1B-class
# shape (the dense 1.3B baseline and the sparse 1B recipe), on a 24 GB and an 80 GB GPU, with the
# recipe's settings (bf16, recomputation, 1F1B) and without them (fp32, GPipe), as the planner
# counts them. Needs no GPU: `bash bench/economics/hardware.sh`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../../scripts/env.sh"
cargo run -q -p frugal-api --example fewest_gpus -- "$here/dense-1.3b.yaml" "$here/moe-1b.yaml"
