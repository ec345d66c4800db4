#!/usr/bin/env bash
# `make plugin-release`: kubectl-frugal's release archive for krew, its sha256, and the krew
# manifest (kubectl-frugal/krew/frugal.yaml) filled in with them, under dist/:
#
#   dist/kubectl-frugal_<version>_linux_amd64.tar.gz         the binary (and LICENSE, if the repo has one)
#   dist/kubectl-frugal_<version>_linux_amd64.tar.gz.sha256  as sha256sum prints it
#   dist/frugal.yaml                                         the manifest, for krew-index or `kubectl krew install --manifest`
#
# Builds the release binary, unless FRUGAL_PLUGIN_BINARY names one (the tests pass a debug
# build). FRUGAL_DIST moves dist/; FRUGAL_RELEASE_URL is where the archive will be downloaded
# from (default: the workspace's repository, releases/download/v<version>). The archive is the
# same bytes for the same binary: sorted names, no owners, no times.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
repository=$(sed -n '/^\[workspace.package\]/,/^\[/s/^repository = "\(.*\)"/\1/p' Cargo.toml)
[[ -n $version ]] || { echo "plugin-release: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }
name=kubectl-frugal_${version}_linux_amd64
dist=${FRUGAL_DIST:-$root/dist}
base_url=${FRUGAL_RELEASE_URL:-$repository/releases/download/v$version}

binary=${FRUGAL_PLUGIN_BINARY:-}
if [[ -z $binary ]]; then
  cargo build --release -p kubectl-frugal
  binary=${CARGO_TARGET_DIR:-$root/target}/release/kubectl-frugal
fi
[[ -x $binary ]] || { echo "plugin-release: $binary is not an executable" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$binary" "$stage/kubectl-frugal"
# without the release profile's line tables (a user's backtrace loses file and line, the archive
# 4 of its 5 parts); a stand-in script has none to strip
if command -v objcopy >/dev/null; then
  objcopy --strip-debug "$stage/kubectl-frugal" 2>/dev/null || true
fi
files=(kubectl-frugal)
if [[ -f LICENSE ]]; then
  install -m 0644 LICENSE "$stage/LICENSE"
  files+=(LICENSE)
fi

mkdir -p "$dist"
archive=$dist/$name.tar.gz
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -cf - "${files[@]}" | gzip -n -9 >"$archive"
(cd "$dist" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
sha=$(cut -d' ' -f1 "$archive.sha256")

# the manifest: placeholders filled; the LICENSE entry only when the archive has one
manifest=$(sed -e "s|{{VERSION}}|$version|g" -e "s|{{URI}}|$base_url/$name.tar.gz|g" -e "s|{{SHA256}}|$sha|g" kubectl-frugal/krew/frugal.yaml)
if [[ ! -f LICENSE ]]; then
  manifest=$(sed '/- from: LICENSE/,+1d' <<<"$manifest")
fi
# without the header comment, which speaks of the template
grep -v '^#' <<<"$manifest" >"$dist/frugal.yaml"
echo "plugin-release: $archive ($sha), $dist/frugal.yaml"
