#!/usr/bin/env bash
# End-to-end tests against a local control plane (etcd, kube-apiserver, controller-manager,
# scheduler, kwok with fake GPU nodes) built from published Go modules and cached outside the
# repository. Brings the cluster up, runs `cargo test -p frugal-e2e` with FRUGAL_E2E=1 and
# always brings it down again; exits with the tests' status.
#
# Environment: FRUGAL_CLUSTER_DIR (cluster state, default /tmp/frugal-cluster),
# FRUGAL_BIN_CACHE (binaries, default ~/.cache/frugal/k8s-bins), FRUGAL_OPERATOR_LOG (a log file
# printed when a test fails). Extra arguments go to `cargo test`.
set -euo pipefail
# The body is one compound command, so bash has read all of it before running any: editing
# this file while it runs cannot change what a running copy does.
{

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Build everything first, so the cluster only lives while tests run: the cluster binaries (or
# find them in the cache), the operator the operator tests start, and the test binaries.
"$root/e2e/cluster/build" >/dev/null
# shellcheck source=env.sh
source "$root/scripts/env.sh"
# The operator tests start `frugal-operator run` themselves, one per test namespace.
cargo build -p frugal-operator
export FRUGAL_OPERATOR_BIN=${FRUGAL_OPERATOR_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/frugal-operator}
cargo test -p frugal-e2e --no-run

trap '"$root/e2e/cluster/down" || true' EXIT
kubeconfig=$("$root/e2e/cluster/up" | sed -n 's/^KUBECONFIG=//p' | tail -n 1)
[[ -n $kubeconfig ]] || { echo "e2e: cluster did not come up" >&2; exit 1; }
export KUBECONFIG=$kubeconfig FRUGAL_E2E=1

status=0
cargo test -p frugal-e2e "$@" || status=$?
exit "$status"
}
