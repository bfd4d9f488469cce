#!/bin/bash
# Installs the Debian 12 packages ipactr builds, tests and benchmarks with.
# Idempotent: a second run installs nothing new.
set -euo pipefail
PACKAGES=(
  # build: C libraries behind the system-library targets
  pkg-config libarchive-dev libsystemd-dev libcap-dev libseccomp-dev
  # images and the registry tests
  debootstrap skopeo umoci docker-registry apache2-utils zstd
  # images/freeipa: writes the OCI layout
  python3
  # runtimes and engines the runtime tests and benchmarks drive or compare with
  containerd runc crun podman uidmap systemd-container
  # D-Bus tests
  dbus
  # benchmarks
  hyperfine
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
