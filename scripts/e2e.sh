#!/usr/bin/env bash
# End-to-end tests against a local cluster (etcd, kube-apiserver, controller-manager,
# scheduler, kwok with fake GPU nodes, and a real node: kubelet, containerd, kube-proxy, CoreDNS)
# built from published Go modules and Debian packages and cached outside the repository. Builds
# the operator and CPU trainer images (images/build), brings the cluster up with them on the real
# node, runs `cargo test -p frugal-e2e` with FRUGAL_E2E=1 and always brings it down again; exits
# with the tests' status.
#
# Environment: FRUGAL_CLUSTER_DIR (cluster state, default /tmp/frugal-cluster),
# FRUGAL_BIN_CACHE (binaries, default ~/.cache/frugal/k8s-bins), FRUGAL_REAL_NODE=0 (fake nodes
# only: no images, no kubelet; the tests that need the real node say so and pass),
# FRUGAL_OPERATOR_LOG (a log file printed when a test fails), FRUGAL_E2E_KEEP_NAMESPACE=1 (a
# failed test keeps its namespace, and the cluster stays up for inspecting it; `e2e/cluster/down`
# ends it). Extra arguments go to `cargo test`.
#
# `scripts/e2e.sh --kind ...` (what `make e2e-kind` and e2e/kind/run run) does the same on a kind
# cluster instead (e2e/kind/up and down): the same images, tests and fake GPU nodes.
set -euo pipefail
# The body is one compound command, so bash has read all of it before running any: editing
# this file while it runs cannot change what a running copy does.
{

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cluster=$root/e2e/cluster
if [[ ${1:-} == --kind ]]; then
  shift
  cluster=$root/e2e/kind
  # kind's node is the real node
  export FRUGAL_REAL_NODE=1
fi

# Build everything first, so the cluster only lives while tests run: the cluster binaries (or
# find them in the cache), the operator and the kubectl plugin the tests start, and the test
# binaries.
eval "$("$root/e2e/cluster/build")"
# shellcheck source=env.sh
source "$root/scripts/env.sh"
target=${CARGO_TARGET_DIR:-$root/target}
# The operator tests start `frugal-operator run` themselves, one per test namespace; trainers
# run in containers on the real node, from the image.
cargo build -p frugal-operator -p kubectl-frugal
export FRUGAL_OPERATOR_BIN=${FRUGAL_OPERATOR_BIN:-$target/debug/frugal-operator}
# the GitOps tests evaluate Argo CD's health scripts and kstatus with it (e2e/tests/gitops.rs)
export FRUGAL_GITOPS_BIN=$GITOPS_BIN/frugal-gitops
# the GitOps tests run Flux's and Argo CD's own controllers too; Argo CD's keep their cache in
# Redis, Debian's
export FRUGAL_FLUX_BIN=$FLUX_BIN FRUGAL_ARGOCD_BIN=$ARGOCD_BIN
# shellcheck source=docker.sh
source "$root/scripts/docker.sh"
frugal_apt_install redis-server
cargo test -p frugal-e2e --no-run

scratch=$(mktemp -d "${TMPDIR:-/tmp}/frugal-e2e.XXXXXX")
# The images the chart names by default, built as `make images` builds them, reach the real
# node's containerd as an archive (no registry).
export FRUGAL_REAL_NODE=${FRUGAL_REAL_NODE:-1}
if [[ $FRUGAL_REAL_NODE == 1 ]]; then
  images_start=$SECONDS
  "$root/images/build" --export "$scratch/images.tar" operator trainer-cpu >/dev/null
  echo "e2e: images built and exported in $((SECONDS - images_start))s" >&2
  export FRUGAL_NODE_IMAGES=$scratch/images.tar
fi
# shellcheck disable=SC2317 # called from the EXIT trap below
stop() {
  rm -rf "$scratch"
  # status is set once the tests run
  if [[ ${status:-0} != 0 && ${FRUGAL_E2E_KEEP_NAMESPACE:-0} == 1 ]]; then
    echo "e2e: the cluster stays up for inspection (FRUGAL_E2E_KEEP_NAMESPACE=1): KUBECONFIG=$KUBECONFIG; ${cluster#"$root"/}/down ends it" >&2
    return
  fi
  "$cluster/down" || true
  # the real node's hostPath checkpoint volumes (e2e/src/node.rs)
  rm -rf "${TMPDIR:-/tmp}/frugal-e2e-volumes"
}
trap stop EXIT
cluster_up() { "$cluster/up" | sed -n 's/^KUBECONFIG=//p' | tail -n 1; }
# A failed start has cleaned up after itself and named its cause last; a second try tells a
# passing hiccup (a slow component, a refused image import) from a cluster that cannot start.
kubeconfig=$(cluster_up) || {
  echo "e2e: the cluster did not come up (its cause is above); trying once more" >&2
  kubeconfig=$(cluster_up)
}
[[ -n $kubeconfig ]] || { echo "e2e: cluster did not come up" >&2; exit 1; }
rm -f "$scratch/images.tar"
export KUBECONFIG=$kubeconfig FRUGAL_E2E=1
# kind's CoreDNS, for the pipeline test's own query (the local cluster's is at a fixed address)
if [[ -s $(dirname "$kubeconfig")/cluster-dns ]]; then FRUGAL_CLUSTER_DNS=$(cat "$(dirname "$kubeconfig")/cluster-dns"); export FRUGAL_CLUSTER_DNS; fi
# the host's address the real node's pods reach, where the object-store test serves its bucket
if [[ -s $(dirname "$kubeconfig")/host-address ]]; then FRUGAL_HOST_ADDRESS=$(cat "$(dirname "$kubeconfig")/host-address"); export FRUGAL_HOST_ADDRESS; fi
# the chart tests run helm and kubectl from the same pinned builds, the monitoring tests promtool,
# the plugin's test krew
export PATH=$HELM_BIN:$K8S_BIN:$PROMETHEUS_BIN:$KREW_BIN:$PATH

status=0
cargo test -p frugal-e2e "$@" || status=$?
exit "$status"
}
