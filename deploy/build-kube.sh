#!/usr/bin/env bash
# Finds or builds one Kubernetes v1.20.2 binary that zt's tests run, and prints its path.
#
#   deploy/build-kube.sh COMPONENT [--prepare-only]
#
# COMPONENT is one of kube-apiserver kubelet kube-scheduler kube-controller-manager kube-proxy
# e2e.test agnhost pause. No package registry ships these binaries, so when no copy is found this
# builds it from Debian bookworm's `kubernetes` source package. In order:
#   1. the cache                     ${XDG_CACHE_HOME:-~/.cache}/zt/COMPONENT-v1.20.2
#   2. $ZT_KUBE_XZ_DIR/COMPONENT-v1.20.2.xz   an xz-compressed prebuilt copy, unpacked into the cache
#   3. Debian source                 one shared source tree, `make WHAT=…` per component
#      (kube-apiserver ~9 min cold, e2e.test ~11 min; agnhost in GOPATH mode as kube's own build
#      does; pause is `gcc -static` of build/pause/linux/pause.c)
#
#   --prepare-only  fetch, unpack and patch the source tree, then stop before building (a dry run).
# Progress goes to stderr; stdout is only the binary's path. Needs root for apt-get.
set -euo pipefail

readonly SRC_PACKAGE=kubernetes
readonly SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
readonly KUBE_VERSION=v1.20.2
# The commit v1.20.2 was tagged from, reported by `--version` only in its long form.
readonly KUBE_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56

component="${1:-}"
prepare_only=false
case "${2:-}" in
    --prepare-only) prepare_only=true ;;
    "") ;;
    *) echo "usage: $0 COMPONENT [--prepare-only]" >&2; exit 2 ;;
esac
case "$component" in
    kube-apiserver|kubelet|kube-scheduler|kube-controller-manager|kube-proxy) what="cmd/$component" ;;
    e2e.test) what=test/e2e/e2e.test ;;
    agnhost|pause) what="" ;;
    *) echo "usage: $0 kube-apiserver|kubelet|kube-scheduler|kube-controller-manager|kube-proxy|e2e.test|agnhost|pause [--prepare-only]" >&2; exit 2 ;;
esac

cache_dir="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/zt"
binary="$cache_dir/$component-$KUBE_VERSION"

log() { echo "build-kube($component): $*" >&2; }

# Writes $1 (a finished file) to $binary atomically: a concurrent or interrupted run never sees half a file.
install_binary() {
    mkdir -p "$cache_dir"
    local partial="$binary.partial.$$"
    cp "$1" "$partial" && chmod 0755 "$partial" && mv "$partial" "$binary"
}

if ! $prepare_only; then
    if [ -x "$binary" ]; then
        echo "$binary"; exit 0
    fi
    xz_file="${ZT_KUBE_XZ_DIR:-/nonexistent}/$component-$KUBE_VERSION.xz"
    if [ -f "$xz_file" ]; then
        log "unpacking $xz_file"
        mkdir -p "$cache_dir"
        xz -dc "$xz_file" > "$binary.xz-out.$$"
        install_binary "$binary.xz-out.$$" && rm -f "$binary.xz-out.$$"
        echo "$binary"; exit 0
    fi
fi

log "building $component $KUBE_VERSION from Debian's $SRC_PACKAGE $SRC_VERSION"
work="${ZT_KUBE_BUILD_DIR:-$cache_dir/kube-build}"
mkdir -p "$work/apt/lists/partial"

# Build tools from the machine's own apt sources; the source package through a private list, so the
# machine's apt configuration is never touched.
export DEBIAN_FRONTEND=noninteractive
missing=()
for pkg in golang-go golang-github-modern-go-reflect2-dev rsync make dpkg-dev xz-utils gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# One source tree for every component; unpacked and patched once (the marker says it is complete).
src="$work/src"
if [ ! -f "$src/.zt-prepared" ]; then
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
    rm -rf "$src"
    apt-get "${apt_private[@]}" source --download-only "$SRC_PACKAGE=$SRC_VERSION" >&2
    dsc="$(ls "$work"/"${SRC_PACKAGE}"_*.dsc | head -n1)"
    dpkg-source --no-check -x "$dsc" "$src" >&2

    # The vendored reflect2 reads Go runtime internals that changed in Go 1.18 and crashes at
    # start-up; Debian's packaged copy is the fixed release.
    reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
    [ -d "$reflect2" ] || { log "$reflect2 missing (package golang-github-modern-go-reflect2-dev)"; exit 1; }
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    cp -r "$reflect2" "$src/vendor/github.com/modern-go/reflect2"
    log "replaced vendor/github.com/modern-go/reflect2 with Debian's copy"
    touch "$src/.zt-prepared"
fi
cd "$src"

# There is no git checkout to derive a version from; without this the binaries say v0.0.0.
cat > "$work/version.env" <<EOF
KUBE_GIT_COMMIT=$KUBE_COMMIT
KUBE_GIT_TREE_STATE=clean
KUBE_GIT_VERSION=$KUBE_VERSION
KUBE_GIT_MAJOR=1
KUBE_GIT_MINOR=20
EOF
export KUBE_GIT_VERSION_FILE="$work/version.env"

if $prepare_only; then
    log "prepared $src (go $(go version | cut -d' ' -f3)); stopping before the build"
    exit 0
fi

case "$component" in
    pause)
        built="$work/pause"
        gcc -Os -static -o "$built" build/pause/linux/pause.c >&2
        ;;
    agnhost)
        # kube's own image build runs agnhost in GOPATH mode; `go build -mod=vendor` fails on it.
        gopath="$work/gopath"
        mkdir -p "$gopath/src/k8s.io"
        ln -sfn "$src" "$gopath/src/k8s.io/kubernetes"
        built="$work/agnhost"
        (cd "$gopath/src/k8s.io/kubernetes/test/images/agnhost" &&
            env GOPATH="$gopath" GO111MODULE=off CGO_ENABLED=0 go build -o "$built" . ) >&2
        ;;
    *)
        log "make WHAT=$what"
        make WHAT="$what" >&2
        built="$src/_output/bin/$(basename "$what")"
        [ -x "$built" ] || built="$(find "$src/_output" -type f -name "$(basename "$what")" -perm -u+x | head -n1)"
        version="$("$built" --version 2>&1 | head -n1 || true)"
        case "$version" in
            *"$KUBE_VERSION"*) ;;
            *) log "built binary reports '$version', not $KUBE_VERSION"; exit 1 ;;
        esac
        ;;
esac
install_binary "$built"
log "installed $binary"
echo "$binary"
