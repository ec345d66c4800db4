# Shared by up and down; sourced, not run.
# shellcheck shell=bash

STATE=${FRUGAL_CLUSTER_DIR:-/tmp/frugal-cluster}
ETCD_PORT=${FRUGAL_ETCD_PORT:-23790}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
APISERVER_PORT=${FRUGAL_APISERVER_PORT:-16443}
KCM_PORT=${FRUGAL_KCM_PORT:-20257}
SCHEDULER_PORT=${FRUGAL_SCHEDULER_PORT:-20259}
KWOK_PORT=${FRUGAL_KWOK_PORT:-20247}

log() { printf '[cluster] %s\n' "$*" >&2; }

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
# logs when a started process has died or time runs out.
wait_for() {
  local what=$1 limit=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    local name pid
    while read -r name pid; do
      if ! kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) exited while waiting for $what"
        return 1
      fi
    done <"$STATE/pids"
    if ((SECONDS >= deadline)); then
      log "timed out after ${limit}s waiting for $what"
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
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=frugal-test-ca \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf '%s\n' \
      'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1' \
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
    server: https://127.0.0.1:$APISERVER_PORT
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
