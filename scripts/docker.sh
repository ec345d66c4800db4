# Sourced: a Docker engine to build images with. Debian's docker.io is installed when no engine
# is there; a daemon this script starts is stopped again, by its PID, by frugal_docker_down.
# shellcheck shell=bash

# Debian's CLI has BuildKit built in; a newer `docker` earlier on PATH may lack buildx, and
# BuildKit then fails with "buildx component is missing".
FRUGAL_DOCKER_CLI=${FRUGAL_DOCKER_CLI:-/usr/bin/docker}
FRUGAL_DOCKER_STATE=${FRUGAL_DOCKER_STATE:-${TMPDIR:-/tmp}/frugal-dockerd}
export DOCKER_BUILDKIT=1

fdocker() { "$FRUGAL_DOCKER_CLI" "$@"; }

frugal_apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  echo "frugal: installing ${missing[*]} from Debian" >&2
  if [[ $(id -u) != 0 ]]; then
    echo "frugal: need root to install ${missing[*]} (or install them yourself)" >&2
    return 1
  fi
  # An index older than a day may name packages the mirror no longer has.
  if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1) ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Whether this machine's capability bounding set has CAP_SYS_RESOURCE (bit 24). Some VMs lack it;
# Docker still puts it into every --privileged container (kind's nodes are), and runc then fails
# to start them ("operation not permitted" setting capabilities).
frugal_has_cap_sys_resource() {
  local bnd
  bnd=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)
  (((0x$bnd >> 24) & 1))
}

# frugal_runc_wrapper PATH: writes a runc that drops CAP_SYS_RESOURCE from what it is asked to
# grant (a container's config.json for create and run, the process file for exec), then runs
# Debian's runc. dockerd uses it as its default runtime where the bounding set lacks the
# capability; everything else passes through unchanged.
frugal_runc_wrapper() {
  local out=$1 runc
  frugal_apt_install runc jq
  runc=$(command -v runc)
  cat >"$out.tmp" <<WRAPPER
#!/bin/sh
# Written by frugal_runc_wrapper (scripts/docker.sh); see there.
drop() {
  [ -f "\$1" ] || return 0
  jq "\$2 |= (if . then with_entries(.value |= if type == \"array\" then map(select(. != \"CAP_SYS_RESOURCE\")) else . end) else . end)" \
    "\$1" >"\$1.frugal" && mv "\$1.frugal" "\$1"
}
prev=
for arg in "\$@"; do
  case \$prev in
    --bundle | -b) drop "\$arg/config.json" .process.capabilities ;;
    --process | -p) drop "\$arg" .capabilities ;;
  esac
  case \$arg in
    --bundle=*) drop "\${arg#--bundle=}/config.json" .process.capabilities ;;
    --process=*) drop "\${arg#--process=}" .capabilities ;;
  esac
  prev=\$arg
done
exec $runc "\$@"
WRAPPER
  chmod 755 "$out.tmp"
  mv "$out.tmp" "$out"
}

# Starts dockerd unless an engine already answers (a user's own, or one from an earlier call).
frugal_docker_up() {
  if [[ -x $FRUGAL_DOCKER_CLI ]] && fdocker info >/dev/null 2>&1; then
    return 0
  fi
  if [[ ! -x $FRUGAL_DOCKER_CLI || ! -x /usr/sbin/dockerd ]]; then
    frugal_apt_install docker.io
  fi
  mkdir -p "$FRUGAL_DOCKER_STATE"
  local runtime=()
  if ! frugal_has_cap_sys_resource; then
    frugal_runc_wrapper "$FRUGAL_DOCKER_STATE/runc"
    runtime=(--add-runtime "frugal-runc=$FRUGAL_DOCKER_STATE/runc" --default-runtime frugal-runc)
  fi
  echo "frugal: starting dockerd (log $FRUGAL_DOCKER_STATE/dockerd.log)" >&2
  # No systemd here: the daemon runs as a child of this shell's session, stopped by PID.
  setsid /usr/sbin/dockerd --pidfile "$FRUGAL_DOCKER_STATE/dockerd.pid" "${runtime[@]}" \
    >"$FRUGAL_DOCKER_STATE/dockerd.log" 2>&1 </dev/null &
  echo $! >"$FRUGAL_DOCKER_STATE/started-by-frugal"
  for _ in $(seq 120); do
    fdocker info >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$FRUGAL_DOCKER_STATE/started-by-frugal")" 2>/dev/null || break
    sleep 0.5
  done
  echo "frugal: dockerd did not start; its log:" >&2
  tail -n 30 "$FRUGAL_DOCKER_STATE/dockerd.log" >&2
  return 1
}

# Stops the daemon frugal_docker_up started, and only that one.
frugal_docker_down() {
  local marker=$FRUGAL_DOCKER_STATE/started-by-frugal pid
  [[ -f $marker ]] || return 0
  pid=$(cat "$marker")
  if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "dockerd --pidfile $FRUGAL_DOCKER_STATE/"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$marker"
}
