#!/usr/bin/env bash
# Finds or builds the kube-apiserver v1.20.2 that zt's API-server tests run, and prints its path.
#   1. $KUBE_APISERVER          a binary path, used as is
#   2. $ZT_KUBE_APISERVER_XZ    an xz-compressed binary, unpacked into the cache (if not cached yet)
#   3. deploy/build-kube.sh kube-apiserver: the cache, $ZT_KUBE_XZ_DIR, or a build from Debian's
#      source package (about 9 minutes)
# Usage: deploy/build-kube-apiserver.sh [--prepare-only]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ "${1:-}" != --prepare-only ]; then
    if [ -n "${KUBE_APISERVER:-}" ]; then
        [ -x "$KUBE_APISERVER" ] || { echo "KUBE_APISERVER=$KUBE_APISERVER is not an executable" >&2; exit 1; }
        echo "$KUBE_APISERVER"; exit 0
    fi
    if [ -n "${ZT_KUBE_APISERVER_XZ:-}" ] && [ -f "$ZT_KUBE_APISERVER_XZ" ] && [ -z "${ZT_KUBE_XZ_DIR:-}" ]; then
        export ZT_KUBE_XZ_DIR="$(dirname "$ZT_KUBE_APISERVER_XZ")"
    fi
fi
exec "$here/build-kube.sh" kube-apiserver "$@"
