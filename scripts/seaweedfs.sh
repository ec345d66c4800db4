#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (Apache-2.0; an object store with an S3 gateway), which the trainer's
# object-storage tests run as a real S3-compatible server, from its published Go module (through
# the Go module proxy only, through the wrapper module in scripts/seaweedfs, which applies the
# replace directive its go.mod carries) into the same cache as the test cluster's binaries:
#
#   ${FRUGAL_BIN_CACHE:-~/.cache/frugal/k8s-bins}/seaweedfs-<version>/weed
#
# A directory whose `.stamp` matches is reused, so a warm run costs nothing. Prints the binary's
# path on stdout (`FRUGAL_WEED=$(scripts/seaweedfs.sh)`); progress goes to stderr.
#
#   scripts/seaweedfs.sh            build it if missing
#   scripts/seaweedfs.sh --print    only print the path (fails if it is missing)
set -euo pipefail
{

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# A pseudo-version (its release tags are not semantic-import versions of its module path); the
# wrapper's go.mod requires the same one.
SEAWEEDFS_VERSION=v0.0.0-20261109003541-7506e5f91cd6
cache=${FRUGAL_BIN_CACHE:-$HOME/.cache/frugal/k8s-bins}
dir=$cache/seaweedfs-$SEAWEEDFS_VERSION
# What the binary is built from: a different go.sum (another version) means a rebuild.
stamp=$(printf '%s\n' "$SEAWEEDFS_VERSION" "$(sha256sum <"$here/seaweedfs/go.sum")" | sha256sum | cut -c1-16)

log() { printf 'seaweedfs: %s\n' "$*" >&2; }
fresh() { [[ -x $dir/weed && -f $dir/.stamp && $(cat "$dir/.stamp") == "$stamp" ]]; }

if [[ ${1:-} == --print ]]; then
  fresh || { log "missing $dir; run scripts/seaweedfs.sh"; exit 1; }
  printf '%s\n' "$dir/weed"
  exit 0
fi

mkdir -p "$cache"
# One build at a time: a second caller waits, then finds it fresh.
exec 9>"$cache/.seaweedfs.lock"
flock 9
if fresh; then
  printf '%s\n' "$dir/weed"
  exit 0
fi
command -v go >/dev/null || { log "go is not on PATH"; exit 1; }
# Go's build and module caches live in a scratch directory removed when this script ends: the
# binary is what is cached.
# (Their names never match the lock's, which must outlive them.)
clear_scratch() { chmod -R u+w "$cache"/.seaweedfs-build.* 2>/dev/null || true; rm -rf "$cache"/.seaweedfs-build.*; }
clear_scratch
start=$SECONDS
scratch=$(mktemp -d "$cache/.seaweedfs-build.go.XXXXXX")
trap clear_scratch EXIT
tmp=$(mktemp -d "$cache/.seaweedfs-build.out.XXXXXX")
log "building weed $SEAWEEDFS_VERSION (cold: several minutes) ..."
mkdir -p "$scratch/tmp"
(cd "$here/seaweedfs" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly GOCACHE=$scratch/build GOTMPDIR=$scratch/tmp \
  GOMODCACHE=$scratch/mod nice -n 10 go build -trimpath -ldflags "-s -w" -o "$tmp/weed" github.com/seaweedfs/seaweedfs/weed)
chmod 755 "$tmp"
printf '%s\n' "$stamp" >"$tmp/.stamp"
rm -rf "$dir"
mv "$tmp" "$dir"
log "built in $((SECONDS - start))s"
printf '%s\n' "$dir/weed"
exit
}
