#!/usr/bin/env bash
# `make test`: everything CI checks, on a fresh machine as on a warm one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$FRUGAL_ROOT"
# No incremental compilation state (3 GB on a cold build) unless asked for: a test run builds
# each crate once.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

step() { printf '\n== %s\n' "$*"; }

# A run needs about 20 GB free (the debug and release builds, images, the test cluster); a full
# disk shows late, as a failed image export, so say early how much there is.
build_dir=${CARGO_TARGET_DIR:-target}
[[ -e $build_dir ]] || build_dir=.
step "free disk: $(df -h --output=avail "$build_dir" | tail -1 | tr -d ' ') under the build, $(df -h --output=avail "${TMPDIR:-/tmp}" | tail -1 | tr -d ' ') under ${TMPDIR:-/tmp}"
free_kb=$(df -k --output=avail "${TMPDIR:-/tmp}" | tail -1)
if ((free_kb < 20 * 1024 * 1024)); then
  echo "warning: under 20 GB free; the run may fail with 'no space left on device' (docker builder prune, cargo clean)" >&2
fi

step "libtorch: torch $(python -W ignore -c 'import torch; print(torch.__version__)') at $FRUGAL_TORCH_LIB"

step "shell scripts (shellcheck; .shellcheckrc finds what they source)"
if ! command -v shellcheck >/dev/null; then
  # shellcheck source=docker.sh
  source scripts/docker.sh
  frugal_apt_install shellcheck
fi
shellcheck -x scripts/*.sh e2e/cluster/{up,down,build,lib.sh} e2e/cluster/node/lib.sh e2e/kind/{run,up,down,node-image} \
  images/{build,base-image,stage-trainer} bench/*.sh bench/*/*.sh bench/*/*/*.sh .ci/run

step "the API, the operator and the kubectl plugin link no libtorch"
for crate in frugal-api frugal-operator kubectl-frugal; do
  if cargo tree -q -p "$crate" -e normal,build --prefix none | grep -Eq '^(tch|torch-sys) '; then
    echo "error: $crate depends on tch; only frugal-trainer may" >&2
    exit 1
  fi
done

step "formatting (rustfmt.toml) and lints (clippy, warnings are errors)"
# rustup's default profile has both; a minimal one gets them here
if command -v rustup >/dev/null && ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
  rustup component add clippy rustfmt
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "interop packages (transformers, tokenizers, safetensors, pyarrow) for the tests that meet them"
frugal_setup_interop

step "SeaweedFS, the S3-compatible server of the object-storage tests (built once, cached)"
FRUGAL_WEED=$(scripts/seaweedfs.sh)
# the trainer's S3 tests fail, rather than skip, without it
export FRUGAL_WEED FRUGAL_REQUIRE_S3=1

step "workspace tests (unit, CEL, contract, CRD drift, trainer on CPU)"
cargo test --workspace --exclude frugal-e2e

if [ -x scripts/e2e.sh ]; then
  step "end to end on a local control plane"
  bash scripts/e2e.sh
fi
