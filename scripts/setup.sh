#!/bin/bash
# The README's first command, on a fresh Debian 12 machine as root: installs
# the packages, builds ipactr (release), builds the Debian systemd test image
# (cached), then runs the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
[ "$(id -u)" = 0 ] || { echo "setup: run as root" >&2; exit 1; }

step() { echo "== $*"; }

step "packages (scripts/deps.sh)"
scripts/deps.sh
step "build (swift build -c release)"
swift build -c release
bin=$(swift build -c release --show-bin-path)
step "Debian 12 systemd test image (images/debian/build.sh)"
images/debian/build.sh

# The main job. Today: import the test image and list the images. When
# `ipactr boot` lands, this becomes: boot it and show it running.
main_job() {
    local ipactr=$bin/ipactr
    # For an unknown verb, argument-parser prints the root help (exit 0).
    local help
    help=$("$ipactr" import --help 2>/dev/null || true)
    if ! grep -q '^USAGE: ipactr import\b' <<<"$help"; then
        echo "setup: this build of ipactr has no 'import' verb yet; stopping before the main job" >&2
        exit 1
    fi
    step "ipactr import /var/cache/ipactr/images/debian/oci debian"
    "$ipactr" import /var/cache/ipactr/images/debian/oci debian
    step "ipactr images"
    "$ipactr" images
}
main_job
