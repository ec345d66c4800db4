# The real node beside the control plane: containerd (its own root and socket), runc, the CNI
# bridge, a kubelet, kube-proxy and CoreDNS, all on the host. Sourced by up and down after
# ../lib.sh; see e2e/cluster/README.md for the settings and why each is there.
# shellcheck shell=bash

NODE_NAME=${FRUGAL_NODE_NAME:-frugal-node-0}
NODE_LABEL=frugal.dev/node=real
# The pods' bridge and subnet. The bridge address is the node's InternalIP, the API server's
# address for pods (behind the kubernetes Service), and the cluster DNS server.
NODE_BRIDGE=frugal0
NODE_SUBNET=${FRUGAL_NODE_SUBNET:-10.89.0.0/24}
NODE_IP=${NODE_SUBNET%.*/*}.1
KUBELET_PORT=${FRUGAL_KUBELET_PORT:-20250}
KUBELET_HEALTH_PORT=$((KUBELET_PORT + 1))
PROXY_METRICS_PORT=$((KUBELET_PORT + 2))
PROXY_HEALTH_PORT=$((KUBELET_PORT + 3))
COREDNS_HEALTH_PORT=$((KUBELET_PORT + 4))
PAUSE_IMAGE=frugal.dev/pause:1
NODE_DIR=$STATE/node
CONTAINERD_SOCK=$NODE_DIR/containerd/containerd.sock
# Where the kubelet writes no matter what --root-dir says; down removes what up found absent.
KUBELET_HOST_PATHS=(/var/lib/kubelet/pki /var/lib/kubelet/device-plugins /var/lib/kubelet /var/log/pods /var/log/containers)

# The node needs root (network namespaces, mounts, iptables), containerd and runc, the CNI
# plugins and conntrack; without them, or with FRUGAL_REAL_NODE=0, the cluster has only kwok's
# fake nodes.
real_node_wanted() {
  [[ ${FRUGAL_REAL_NODE:-1} == 1 ]]
}

node_packages() {
  echo containerd runc containernetworking-plugins conntrack iptables gcc libc6-dev
}

ctr() { command ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# The node's client certificates: the kubelet as system:node:NAME (the Node authorizer and
# NodeRestriction admit exactly its own objects) and kube-proxy as system:kube-proxy (bound to
# system:node-proxier by the API server's default RBAC).
node_pki() {
  local d=$STATE/pki
  (
    cd "$d" || exit
    sign_client() {
      local name=$1 subject=$2
      openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$name.key" -out "$name.csr" 2>/dev/null
      printf '%s\n' 'extendedKeyUsage=clientAuth' 'keyUsage=digitalSignature,keyEncipherment' >"$name.ext"
      openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 \
        -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    }
    sign_client kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
    sign_client kube-proxy "/CN=system:kube-proxy"
  )
  local who
  for who in kubelet kube-proxy; do
    sed -e "s|$STATE/pki/admin.crt|$STATE/pki/$who.crt|" -e "s|$STATE/pki/admin.key|$STATE/pki/$who.key|" \
      -e "s|frugal-admin|$who|g" "$STATE/kubeconfig" >"$STATE/$who.kubeconfig"
  done
}

# The bridge exists before the API server starts, since the API server listens on its address.
node_bridge() {
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
    echo "$NODE_BRIDGE" >>"$STATE/host-created"
  fi
  ip addr replace "$NODE_IP/${NODE_SUBNET#*/}" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1
}

# Remembers which of the kubelet's fixed host paths were absent, so down removes only those.
node_record_host_paths() {
  local p
  for p in "${KUBELET_HOST_PATHS[@]}"; do
    [[ -e $p ]] || echo "$p" >>"$STATE/host-created"
  done
  # entries of the log directories that already existed are left alone by down
  for p in /var/log/pods /var/log/containers; do
    if [[ -d $p ]]; then find "$p" -mindepth 1 -maxdepth 1 >>"$STATE/host-kept"; fi
  done
  : >>"$STATE/host-kept"
  # iptables chains of another Kubernetes on this host are left alone by down
  node_chains >"$STATE/host-kept-chains"
}

# "iptables TABLE CHAIN" for every KUBE-* and CNI-* chain on the host.
node_chains() {
  local ipt table
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      "$ipt" -t "$table" -S 2>/dev/null | awk -v p="$ipt $table" '$1 == "-N" && $2 ~ /^(KUBE|CNI)-/ {print p, $2}'
    done
  done
}

start_containerd() {
  local d=$NODE_DIR/containerd
  mkdir -p "$d" "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam"
  cat >"$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Lowering a sandbox's oom_score_adj needs CAP_SYS_RESOURCE, which this VM's bounding set
  # lacks: without this every sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
TOML
  cat >"$NODE_DIR/cni/net.d/10-frugal.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "frugal",
  "plugins": [
    {
      "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
               "ranges": [[{"subnet": "$NODE_SUBNET", "gateway": "$NODE_IP"}]],
               "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall", "backend": "iptables"}
  ]
}
JSON
  spawn containerd containerd --config "$d/config.toml"
  wait_for "containerd" 60 ctr version
}

# The sandbox image, made here: pause.c built static, as a one-layer image archive in
# `docker save`'s layout (manifest.json, the config, the layer), which containerd imports.
node_pause_archive() {
  local out=$1 d
  d=$(mktemp -d "$NODE_DIR/pause.XXXXXX")
  mkdir -p "$d/rootfs" "$d/image/layer"
  gcc -Os -static -s -o "$d/rootfs/pause" "$CLUSTER_HERE/node/pause.c"
  tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$d/rootfs" -cf "$d/image/layer/layer.tar" pause
  local diff
  diff=$(sha256sum "$d/image/layer/layer.tar" | cut -d' ' -f1)
  printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Entrypoint":["/pause"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$diff" >"$d/image/config.json"
  local config
  config=$(sha256sum "$d/image/config.json" | cut -d' ' -f1)
  mv "$d/image/config.json" "$d/image/$config.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer/layer.tar"]}]' "$config" "$PAUSE_IMAGE" \
    >"$d/image/manifest.json"
  tar -C "$d/image" -cf "$out" .
  rm -rf "$d"
}

# Images reach the node without a registry: tarballs from `docker save` (FRUGAL_NODE_IMAGES,
# space-separated), imported into containerd's k8s.io namespace, where the kubelet finds them
# (imagePullPolicy IfNotPresent).
node_import_images() {
  local tar
  node_pause_archive "$NODE_DIR/pause.tar"
  for tar in "$NODE_DIR/pause.tar" ${FRUGAL_NODE_IMAGES:-}; do
    [[ -s $tar ]] || { failed "no image archive $tar"; return 1; }
    local out
    out=$(ctr images import "$tar" 2>&1) || {
      failed "ctr images import $tar: $(tail -n 5 <<<"$out" | tr '\n' ' ')"
      return 1
    }
    printf '%s\n' "$out" >&2
  done
  ctr images ls -q | grep -qx "$PAUSE_IMAGE" || {
    failed "containerd did not import $PAUSE_IMAGE"
    return 1
  }
}

start_kubelet() {
  local d=$NODE_DIR/kubelet
  mkdir -p "$d"
  cat >"$d/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# v1.35 refuses cgroup v1 hosts unless told otherwise; this VM has the v1 hierarchy.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTH_PORT
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: Webhook}
failSwapOn: false
maxPods: 32
# Images here come from archives, not a registry: never collect them, and evict nothing for a
# full test disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
shutdownGracePeriod: 0s
YAML
  spawn kubelet "$K8S_BIN/kubelet" --config="$d/config.yaml" --kubeconfig="$STATE/kubelet.kubeconfig" \
    --root-dir="$d/root" --cert-dir="$d/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --node-labels="$NODE_LABEL" --v=1
  # shellcheck disable=SC2317 # called by wait_for
  kubectl_node_ready() { [[ $(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]; }
  wait_for "node $NODE_NAME Ready" 120 kubectl_node_ready
}

start_kube_proxy() {
  spawn kube-proxy "$K8S_BIN/kube-proxy" --kubeconfig="$STATE/kube-proxy.kubeconfig" \
    --hostname-override="$NODE_NAME" --proxy-mode=iptables --cluster-cidr="$NODE_SUBNET" \
    --conntrack-max-per-core=0 --metrics-bind-address="127.0.0.1:$PROXY_METRICS_PORT" \
    --healthz-bind-address="127.0.0.1:$PROXY_HEALTH_PORT" --v=1
  wait_for "kube-proxy" 60 curl -sf "http://127.0.0.1:$PROXY_HEALTH_PORT/healthz"
}

# CoreDNS on the host, on the bridge address: the kubernetes plugin answers for Services and the
# per-pod names of headless Services (w0.workers.NS.svc.cluster.local); the rest is forwarded.
start_coredns() {
  mkdir -p "$NODE_DIR/coredns"
  cat >"$NODE_DIR/coredns/Corefile" <<COREFILE
.:53 {
  bind $NODE_IP
  errors
  health 127.0.0.1:$COREDNS_HEALTH_PORT
  kubernetes cluster.local in-addr.arpa ip6.arpa {
    kubeconfig $STATE/kubeconfig frugal
    pods insecure
    fallthrough in-addr.arpa ip6.arpa
    ttl 5
  }
  forward . /etc/resolv.conf
  cache 5
}
COREFILE
  spawn coredns "$COREDNS_BIN/coredns" -conf "$NODE_DIR/coredns/Corefile" -dns.port 53 -pidfile "$NODE_DIR/coredns/pid" -quiet
  wait_for "coredns" 60 curl -sf "http://127.0.0.1:$COREDNS_HEALTH_PORT/health"
}

start_node() {
  start_containerd
  node_import_images
  start_kubelet
  start_kube_proxy
  start_coredns
}

# --- down ---------------------------------------------------------------------------------

# Stops every container the node's containerd runs (its shims outlive it), by its tasks and then
# by the kubelet's cgroups.
node_kill_containers() {
  if [[ -S $CONTAINERD_SOCK ]]; then
    local id
    for id in $(ctr tasks ls -q 2>/dev/null); do ctr tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  fi
  local cg pid
  for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [[ -d $cg ]] || continue
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done
  done
  # the shims of our containerd, found by its socket in their command line
  for pid in $(pgrep -f "containerd-shim.*$NODE_DIR" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  sleep 0.5
  for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    if [[ -d $cg ]]; then find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
}

node_unmount() {
  local m
  # deepest first
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk '{print $2}' /proc/mounts | grep -E "^($NODE_DIR|/var/lib/kubelet)(/|$)" | sort -r)
}

node_cleanup_iptables() {
  local kept=$STATE/host-kept-chains ipt table chain rule
  [[ -f $kept ]] || : >"$kept"
  local ours
  ours=$(node_chains | grep -vxF -f "$kept" || true)
  [[ -n $ours ]] || return 0
  # jumps into our chains from anywhere, then the chains themselves
  while read -r ipt table chain; do
    "$ipt" -t "$table" -S 2>/dev/null | grep -E "^-A .* -j $chain( |$)" | sed 's/^-A/-D/' |
      while read -r rule; do
        # the rule as iptables -S prints it, quoted comments included
        eval "$ipt -t $table $rule" 2>/dev/null || true
      done
  done <<<"$ours"
  while read -r ipt table chain; do "$ipt" -t "$table" -F "$chain" 2>/dev/null || true; done <<<"$ours"
  while read -r ipt table chain; do "$ipt" -t "$table" -X "$chain" 2>/dev/null || true; done <<<"$ours"
}

# Everything the node leaves on the host, after its processes are stopped.
stop_node() {
  node_kill_containers
  node_unmount
  node_cleanup_iptables
  local p kept=()
  [[ -f $STATE/host-kept ]] && mapfile -t kept <"$STATE/host-kept"
  for p in /var/log/pods /var/log/containers; do
    [[ -d $p ]] || continue
    local entry
    for entry in "$p"/* ; do
      [[ -e $entry || -L $entry ]] || continue
      printf '%s\n' "${kept[@]}" | grep -qxF "$entry" || rm -rf "$entry"
    done
  done
  if [[ -f $STATE/host-created ]]; then
    while read -r p; do
      case $p in
        "$NODE_BRIDGE") ip link delete "$NODE_BRIDGE" 2>/dev/null || true ;;
        /*) if [[ -d $p ]]; then node_unmount; rm -rf "$p"; fi ;;
      esac
    done < <(tac "$STATE/host-created")
  fi
}
