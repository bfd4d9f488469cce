#!/bin/bash
# Installs the Debian 12 packages ipactr builds, tests and benchmarks with.
# Idempotent: a second run installs nothing new.
set -euo pipefail
PACKAGES=(
  # build: C libraries behind the system-library targets
  pkg-config attr libarchive-dev libsystemd-dev libcap-dev libseccomp-dev
  # the registry transport (CCurl: libcurl with OpenSSL)
  libcurl4-openssl-dev
  # images (images/*/build.sh, images/check.sh) and the registry tests
  debootstrap skopeo umoci docker-registry apache2-utils zstd jq curl
  # the registry tests' token issuer and blob redirector; images/freeipa's OCI writer
  python3 python3-cryptography
  # runtimes and engines the runtime tests and benchmarks drive or compare with
  containerd runc crun podman uidmap systemd-container
  # machine tests: network namespaces (ip), nsenter
  iproute2 util-linux
  # runtime tests: a static busybox is the test rootfs
  busybox-static
  # FreeIPA end-to-end test: the clients that talk to it from the host
  ldap-utils bind9-dnsutils krb5-user libsasl2-modules-gssapi-mit
  # D-Bus tests: the daemon, dbus-send (prints error names), gdbus (parses introspection XML)
  dbus dbus-bin libglib2.0-bin
  # benchmarks (bench/run.sh; bench/lib/bootcycle.py)
  hyperfine python3
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
