#!/usr/bin/env bash
# Finds or builds the kube-apiserver v1.20.2 that zt's API-server tests run, and prints its path.
#
# No package registry ships a kube-apiserver binary, so this builds one from Debian bookworm's
# `kubernetes` source package when no copy is found. In order:
#   1. $KUBE_APISERVER                  a binary path, used as is
#   2. the cache                        ${XDG_CACHE_HOME:-~/.cache}/zt/kube-apiserver-v1.20.2
#   3. $ZT_KUBE_APISERVER_XZ            an xz-compressed binary, unpacked into the cache
#   4. Debian source (about 9 minutes)  built into the cache
#
# Usage: deploy/build-kube-apiserver.sh [--prepare-only]
#   --prepare-only  fetch, unpack and patch the source tree, then stop before `make` (a dry run).
# Progress goes to stderr; stdout is only the binary's path. Needs root for apt-get.
set -euo pipefail

readonly SRC_PACKAGE=kubernetes
readonly SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
readonly KUBE_VERSION=v1.20.2
# The commit v1.20.2 was tagged from, reported by `kube-apiserver --version` only in its long form.
readonly KUBE_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56

cache_dir="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/zt"
binary="$cache_dir/kube-apiserver-$KUBE_VERSION"
prepare_only=false
case "${1:-}" in
    --prepare-only) prepare_only=true ;;
    "") ;;
    *) echo "usage: $0 [--prepare-only]" >&2; exit 2 ;;
esac

log() { echo "build-kube-apiserver: $*" >&2; }

# Writes $1 (a finished file) to $binary atomically: a concurrent or interrupted run never sees half a file.
install_binary() {
    mkdir -p "$cache_dir"
    local partial="$binary.partial.$$"
    cp "$1" "$partial" && chmod 0755 "$partial" && mv "$partial" "$binary"
}

if ! $prepare_only; then
    if [ -n "${KUBE_APISERVER:-}" ]; then
        [ -x "$KUBE_APISERVER" ] || { log "KUBE_APISERVER=$KUBE_APISERVER is not an executable"; exit 1; }
        echo "$KUBE_APISERVER"; exit 0
    fi
    if [ -x "$binary" ]; then
        echo "$binary"; exit 0
    fi
    if [ -n "${ZT_KUBE_APISERVER_XZ:-}" ] && [ -f "$ZT_KUBE_APISERVER_XZ" ]; then
        log "unpacking $ZT_KUBE_APISERVER_XZ"
        mkdir -p "$cache_dir"
        xz -dc "$ZT_KUBE_APISERVER_XZ" > "$binary.xz-out.$$"
        install_binary "$binary.xz-out.$$" && rm -f "$binary.xz-out.$$"
        echo "$binary"; exit 0
    fi
fi

log "building kube-apiserver $KUBE_VERSION from Debian's $SRC_PACKAGE $SRC_VERSION (about 9 minutes)"
work="${ZT_KUBE_BUILD_DIR:-$cache_dir/kube-apiserver-build}"
mkdir -p "$work/apt/lists/partial"

# Build tools from the machine's own apt sources; the source package through a private list, so the
# machine's apt configuration is never touched.
export DEBIAN_FRONTEND=noninteractive
missing=()
for pkg in golang-go golang-github-modern-go-reflect2-dev rsync make dpkg-dev xz-utils; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

cat > "$work/apt/sources.list" <<'EOF'
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm-updates main
deb-src http://deb.debian.org/debian-security bookworm-security main
EOF
apt_private=(
    -o "Dir::Etc::SourceList=$work/apt/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$work/apt/lists"
)
log "fetching the source package"
apt-get "${apt_private[@]}" update -q >&2
cd "$work"
rm -rf "$work/src"
apt-get "${apt_private[@]}" source --download-only "$SRC_PACKAGE=$SRC_VERSION" >&2
dsc="$(ls "$work"/"${SRC_PACKAGE}"_*.dsc | head -n1)"
dpkg-source --no-check -x "$dsc" "$work/src" >&2
cd "$work/src"

# The vendored reflect2 reads Go runtime internals that changed in Go 1.18 and crashes at start-up;
# Debian's packaged copy is the fixed release.
reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -d "$reflect2" ] || { log "$reflect2 missing (package golang-github-modern-go-reflect2-dev)"; exit 1; }
rm -rf vendor/github.com/modern-go/reflect2
cp -r "$reflect2" vendor/github.com/modern-go/reflect2
log "replaced vendor/github.com/modern-go/reflect2 with Debian's copy"

# There is no git checkout to derive a version from; without this the server says v0.0.0.
cat > "$work/version.env" <<EOF
KUBE_GIT_COMMIT=$KUBE_COMMIT
KUBE_GIT_TREE_STATE=clean
KUBE_GIT_VERSION=$KUBE_VERSION
KUBE_GIT_MAJOR=1
KUBE_GIT_MINOR=20
EOF
export KUBE_GIT_VERSION_FILE="$work/version.env"

if $prepare_only; then
    log "prepared $work/src (go $(go version | cut -d' ' -f3)); stopping before make"
    exit 0
fi

log "make WHAT=cmd/kube-apiserver"
make WHAT=cmd/kube-apiserver >&2
built="$work/src/_output/bin/kube-apiserver"
[ -x "$built" ] || built="$(find "$work/src/_output" -type f -name kube-apiserver -perm -u+x | head -n1)"
version="$("$built" --version)"
[ "$version" = "Kubernetes $KUBE_VERSION" ] || { log "built binary reports '$version', not $KUBE_VERSION"; exit 1; }
install_binary "$built"
log "installed $binary"
echo "$binary"
