#!/usr/bin/env bash
# Print the container engine command that make's image targets use: docker when its engine
# answers, else podman set up to run as root without systemd or overlayfs (DESIGN.md,
# "Containers without a Docker engine"). Usage: images/engine.sh BUILD_DIR
set -euo pipefail
build_dir=${1:?usage: images/engine.sh BUILD_DIR}

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  echo docker
  exit 0
fi
if command -v podman >/dev/null; then
  # Containers inherit no host ulimits: the defaults podman would set fail without systemd.
  mkdir -p "$build_dir"
  conf="$(cd "$build_dir" && pwd)/containers.conf"
  printf '[containers]\ndefault_ulimits = []\n' > "$conf.tmp" && mv "$conf.tmp" "$conf"
  echo "env CONTAINERS_CONF=$conf podman --runtime runc --cgroup-manager=cgroupfs --storage-driver=vfs"
  exit 0
fi
if command -v docker >/dev/null; then
  echo "error: docker is installed but no engine answers, and podman is not installed; start the Docker daemon (or set DOCKER_HOST), or install podman (apt-get install podman runc)" >&2
else
  echo "error: neither docker nor podman found; install Docker, or podman (apt-get install podman runc), to build images" >&2
fi
exit 1
