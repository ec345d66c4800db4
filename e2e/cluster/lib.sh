# Shared by up and down; sourced, not run.
# shellcheck shell=bash
# shellcheck disable=SC2034 # sets the ports and paths that up and down, which source it, read

STATE=${FRUGAL_CLUSTER_DIR:-/tmp/frugal-cluster}
CLUSTER_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ETCD_PORT=${FRUGAL_ETCD_PORT:-23790}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
APISERVER_PORT=${FRUGAL_APISERVER_PORT:-16443}
KCM_PORT=${FRUGAL_KCM_PORT:-20257}
SCHEDULER_PORT=${FRUGAL_SCHEDULER_PORT:-20259}
KWOK_PORT=${FRUGAL_KWOK_PORT:-20247}
KUEUE_WEBHOOK_PORT=${FRUGAL_KUEUE_WEBHOOK_PORT:-20443}
KUEUE_HEALTH_PORT=${FRUGAL_KUEUE_HEALTH_PORT:-20281}
# The address Kueue's webhooks listen on and the API server calls: loopback here; on kind, the
# host's address on kind's Docker network (e2e/kind/up), where the node's API server reaches it.
KUEUE_WEBHOOK_HOST=${FRUGAL_KUEUE_WEBHOOK_HOST:-127.0.0.1}
# Kueue v0.17's main.go reads its metrics serving certificate from this fixed path whenever its
# own certificate management is off, even with the metrics server turned off.
KUEUE_METRICS_CERTS=/etc/kueue/metrics/certs
# shellcheck source=node/lib.sh
source "$CLUSTER_HERE/node/lib.sh"
# The API server listens on loopback, or, with the real node, on the node's bridge address, which
# pods reach through the kubernetes Service (kube-proxy) and host processes reach as well.
if real_node_wanted; then APISERVER_HOST=$NODE_IP; else APISERVER_HOST=127.0.0.1; fi

log() { printf '[cluster] %s\n' "$*" >&2; }

# failed WHY...: logs why a step of up failed and keeps it in UP_DETAIL, which up names again
# last when it fails.
failed() {
  UP_DETAIL=$*
  log "$UP_DETAIL"
}

kubectl() { "$K8S_BIN/kubectl" --kubeconfig="$STATE/kubeconfig" "$@"; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True when PID $1 is alive and was started by us for this state directory (guards against a
# recycled PID after a crash or reboot).
ours() {
  local pid=$1
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$STATE"
}

# spawn NAME BINARY ARGS...: starts a component in its own session, logs to logs/NAME.log.
spawn() {
  local name=$1
  shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo "$name $!" >>"$STATE/pids"
  log "started $name (pid $!)"
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds; fails with the component
# logs when a started process has died or time runs out, and says which (failed).
wait_for() {
  local what=$1 limit=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    local name pid
    while read -r name pid; do
      if ! kill -0 "$pid" 2>/dev/null; then
        failed "$name (pid $pid) exited while waiting for $what"
        return 1
      fi
    done <"$STATE/pids"
    if ((SECONDS >= deadline)); then
      failed "timed out after ${limit}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
  log "$what ready"
}

tail_logs() {
  local f
  for f in "$STATE"/logs/*.log; do
    [[ -f $f ]] || continue
    printf '==> %s <==\n' "$f" >&2
    tail -n 20 "$f" >&2
  done
}

nodes_untainted() {
  [[ -z $(kubectl get nodes -o jsonpath='{range .items[*]}{.spec.taints}{end}') ]]
}

cluster_healthy() {
  [[ -s $STATE/pids && -f $STATE/kubeconfig && -f $STATE/ready ]] || return 1
  local name pid
  while read -r name pid; do
    ours "$pid" || return 1
  done <"$STATE/pids"
  local dirs
  dirs=$("$(dirname "${BASH_SOURCE[0]}")/build" --print 2>/dev/null) || return 1
  eval "$dirs"
  kubectl get --raw=/readyz >/dev/null 2>&1 || return 1
  kubectl wait --for=condition=Ready node --all --timeout=10s >/dev/null 2>&1
}

# A throwaway PKI: CA, API server serving cert, admin client cert (system:masters) and the
# ServiceAccount token signing key.
make_pki() {
  local d=$STATE/pki
  (
    cd "$d" || exit
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=frugal-test-ca \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf '%s\n' \
      "subjectAltName=IP:127.0.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1" \
      'extendedKeyUsage=serverAuth' 'keyUsage=digitalSignature,keyEncipherment' >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj '/O=system:masters/CN=frugal-admin' \
      -keyout admin.key -out admin.csr 2>/dev/null
    printf '%s\n' 'extendedKeyUsage=clientAuth' 'keyUsage=digitalSignature,keyEncipherment' \
      >admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 \
      -extfile admin.ext -out admin.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    mkdir -p kcm scheduler
  )
}

write_kubeconfig() {
  cat >"$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: frugal
  cluster:
    server: https://$APISERVER_HOST:$APISERVER_PORT
    certificate-authority: $STATE/pki/ca.crt
users:
- name: frugal-admin
  user:
    client-certificate: $STATE/pki/admin.crt
    client-key: $STATE/pki/admin.key
contexts:
- name: frugal
  context:
    cluster: frugal
    user: frugal-admin
current-context: frugal
EOF
}

# Kueue's controller manager, out of cluster: its CRDs, the kueue-system namespace, a webhook
# serving certificate for 127.0.0.1 from the test CA, its configuration, the process, and the
# webhook configurations pointing the API server at it.
start_kueue() {
  local d=$STATE/kueue
  mkdir -p "$d/certs"
  (
    cd "$d" || exit
    openssl req -newkey rsa:2048 -nodes -subj /CN=kueue-webhook \
      -keyout certs/tls.key -out webhook.csr 2>/dev/null
    printf '%s\n' "subjectAltName=IP:$KUEUE_WEBHOOK_HOST" 'extendedKeyUsage=serverAuth' \
      'keyUsage=digitalSignature,keyEncipherment' >webhook.ext
    openssl x509 -req -in webhook.csr -CA "$STATE/pki/ca.crt" -CAkey "$STATE/pki/ca.key" \
      -CAcreateserial -days 7 -extfile webhook.ext -out certs/tls.crt 2>/dev/null
  )
  if [[ ! -s $KUEUE_METRICS_CERTS/tls.crt || ! -s $KUEUE_METRICS_CERTS/tls.key ]]; then
    if ! mkdir -p "$KUEUE_METRICS_CERTS" 2>/dev/null ||
      ! cp "$d/certs/tls.crt" "$d/certs/tls.key" "$KUEUE_METRICS_CERTS/" 2>/dev/null; then
      log "Kueue needs a certificate in $KUEUE_METRICS_CERTS (a path fixed in its main.go):"
      log "run as root, or create tls.crt and tls.key there"
      return 1
    fi
  fi
  sed -e "s|@HEALTH_PORT@|$KUEUE_HEALTH_PORT|" -e "s|@WEBHOOK_PORT@|$KUEUE_WEBHOOK_PORT|" \
    -e "s|@WEBHOOK_HOST@|$KUEUE_WEBHOOK_HOST|" \
    -e "s|@CERT_DIR@|$d/certs|" "$CLUSTER_HERE/kueue/config.yaml" >"$d/config.yaml"

  kubectl apply --server-side -f "$KUEUE_DIR/crds" >/dev/null
  kubectl wait --for=condition=Established -f "$KUEUE_DIR/crds" --timeout=60s >/dev/null
  kubectl create namespace kueue-system >/dev/null

  spawn kueue "$KUEUE_DIR/kueue-manager" --config="$d/config.yaml" \
    --kubeconfig="$STATE/kubeconfig"
  wait_for "kueue" 120 curl -sf "http://127.0.0.1:$KUEUE_HEALTH_PORT/readyz"

  sed -e "s|@URL@|https://$KUEUE_WEBHOOK_HOST:$KUEUE_WEBHOOK_PORT|" \
    -e "s|@CA_BUNDLE@|$(base64 -w0 "$STATE/pki/ca.crt")|" \
    "$CLUSTER_HERE/kueue/webhooks.yaml" >"$d/webhooks.yaml"
  kubectl apply -f "$d/webhooks.yaml" >/dev/null
  # The API server reaches the webhook: a queue-labelled Job comes back suspended from a
  # server-side dry run.
  wait_for "kueue webhooks" 60 kueue_suspends_jobs
}

kueue_suspends_jobs() {
  [[ $(kubectl create --dry-run=server -o jsonpath='{.spec.suspend}' -f - <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: kueue-probe, namespace: default, labels: {kueue.x-k8s.io/queue-name: probe}}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: none}]
EOF
) == true ]]
}
