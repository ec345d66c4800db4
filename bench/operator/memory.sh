#!/usr/bin/env bash
# The operator's resident memory with many large TrainingJobs: applies N suspended jobs (default
# 200), each carrying a `kubectl.kubernetes.io/last-applied-configuration` copy of SIZE bytes
# (default 100000, as a client-side `kubectl apply` of a large manifest leaves), to the cluster in
# KUBECONFIG, waits until the operator has given every job a phase, and prints its VmRSS and
# VmHWM. Run it once per operator build, on the same cluster, to compare them:
#
#   FRUGAL_OPERATOR_BIN=target/debug/frugal-operator bench/operator/memory.sh [N] [SIZE]
#
# It makes and deletes its own namespace; the CRDs must be installed.
set -euo pipefail
N=${1:-200}
SIZE=${2:-100000}
BIN=${FRUGAL_OPERATOR_BIN:?the operator binary to measure}
NS=bench-memory-$$
kubectl create namespace "$NS" >/dev/null
log=$(mktemp)
"$BIN" run --namespace "$NS" --metrics-addr 127.0.0.1:0 --trainer-image frugal-trainer:bench >"$log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # the operator is gone: let the jobs go without it
  kubectl -n "$NS" get tj -o name | xargs -r kubectl -n "$NS" patch --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  rm -f "$log"
}
trap cleanup EXIT
# POSTed as they are: kubectl create and apply both rewrite that annotation themselves
pad=$(head -c "$SIZE" /dev/zero | tr '\0' 'x')
body=$(mktemp)
for i in $(seq "$N"); do
  cat >"$body" <<JSON
{"apiVersion": "frugal.dev/v1alpha1", "kind": "TrainingJob",
 "metadata": {"name": "j$i", "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "$pad"}},
 "spec": {"model": {"type": "Preset", "preset": "tiny"}, "data": {"source": {"type": "Synthetic"}},
          "resources": {"device": "CPU"}, "runPolicy": {"suspend": true}}}
JSON
  kubectl create --raw "/apis/frugal.dev/v1alpha1/namespaces/$NS/trainingjobs" -f "$body" >/dev/null
done
rm -f "$body"
start=$SECONDS
until [[ $(kubectl -n "$NS" get tj -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c .) -ge $N ]]; do
  (( SECONDS - start < 600 )) || { echo "not every job has a phase after 600 s" >&2; exit 1; }
  sleep 2
done
sleep 5
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
echo "$(basename "$BIN") jobs=$N annotation_bytes=$SIZE phased_in=$((SECONDS - start))s VmRSS=$((rss / 1024))MiB VmHWM=$((hwm / 1024))MiB"
