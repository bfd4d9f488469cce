#!/bin/bash
# The README's first command, on a fresh Debian 12 machine as root: installs
# the packages, builds ipactr (release), builds the Debian systemd test image
# (cached), installs it (scripts/install.sh: binaries, units, bus policy, and
# ipactrd started, which every verb goes through), then runs the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
[ "$(id -u)" = 0 ] || { echo "setup: run as root" >&2; exit 1; }

step() { echo "== $*"; }

step "packages (scripts/deps.sh)"
scripts/deps.sh
# The Swift runtime linked in: each ipactr process starts ~10 ms sooner (a
# boot starts two, a runtime create/start/delete three), and the binaries can
# be copied into an image as they are.
step "build (swift build -c release --static-swift-stdlib)"
swift build -c release --static-swift-stdlib
bin=$(swift build -c release --static-swift-stdlib --show-bin-path)
step "install: binaries in /usr/local/bin, units, bus policy; start ipactrd (scripts/install.sh)"
scripts/install.sh "$bin"
step "Debian 12 systemd test image (images/debian/build.sh)"
images/debian/build.sh

# The main job: import the test image, boot a machine from it (returns at
# READY=1 from its systemd) and show it running. Run again, it boots the
# existing machine if it was stopped. `ipactr poweroff debian` stops it.
main_job() {
    local ipactr=/usr/local/bin/ipactr
    step "ipactr import /var/cache/ipactr/images/debian/oci debian"
    "$ipactr" import /var/cache/ipactr/images/debian/oci debian
    if "$ipactr" status debian >/dev/null 2>&1; then
        if "$ipactr" list | awk '$1 == "debian" {print $3}' | grep -qx stopped; then
            step "ipactr start debian"
            "$ipactr" start debian
        fi
    else
        step "ipactr boot debian"
        "$ipactr" boot debian
    fi
    step "ipactr list"
    "$ipactr" list
    step "ipactr status debian"
    "$ipactr" status debian
    step "inside: systemctl is-system-running"
    "$ipactr" exec debian systemctl is-system-running
    echo "setup: machine 'debian' is running; stop it with: $ipactr poweroff debian"
}
main_job
