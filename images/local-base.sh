#!/usr/bin/env bash
# Make a local stand-in for python:3.11-slim-bookworm where Docker Hub is unreachable:
# Debian bookworm (minbase) from debootstrap, its Python 3.11 with headers, and a venv at
# /usr/local so that `python` and `pip` resolve there as in the official image (Debian's
# own pip refuses system installs, PEP 668). Run as root.
#   images/local-base.sh ROOTFS_DIR IMAGE_NAME ENGINE...
set -euo pipefail
rootfs=${1:?usage: images/local-base.sh ROOTFS_DIR IMAGE_NAME ENGINE...}
name=${2:?image name}
shift 2
engine=("$@")
[ "${#engine[@]}" -gt 0 ] || { echo "error: no container engine command given" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "error: debootstrap not found; apt-get install debootstrap (as root)" >&2; exit 1; }

rm -rf "$rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates \
  bookworm "$rootfs" http://deb.debian.org/debian
chroot "$rootfs" python3 -m venv /usr/local
chroot "$rootfs" python --version
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | "${engine[@]}" import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python"]' - "$name"
rm -rf "$rootfs"
echo "imported $name"
