#!/usr/bin/env bash
# Build the Debian root filesystem that every offline image starts from, as a tarball.
# Usage: rootfs.sh OUTPUT.tar
# The cache key of prepare.sh is the hash of this file: change anything here and the base
# is rebuilt on the next run.
set -euo pipefail

output=${1:?usage: rootfs.sh OUTPUT.tar}
suite=bookworm
# python3 runs the API and MLflow; wget answers the Prometheus healthcheck like the
# busybox wget of the official image does.
packages=python3,python3-venv,ca-certificates,wget,tzdata

# Use the mirror the host's apt already reaches, so air-gapped machines use their own.
mirror=$(grep -rhoE '(URIs:|^deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
    /etc/apt/sources.list.d/ 2>/dev/null | grep -oE 'https?://[^ ]+' | head -n1 || true)
mirror=${CALOPS_DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase --include="$packages" "$suite" "$work/root" "$mirror" >&2
# Keep the image small and reproducible: no apt lists or caches inside.
rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/"*.bin \
    "$work/root/var/cache/apt/archives/"*.deb
tar --numeric-owner -C "$work/root" -cf "$output.partial" .
mv "$output.partial" "$output"
