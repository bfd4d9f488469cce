#!/bin/bash
# The whole test suite, as CI runs it: installs what the tests need, builds
# the test images (cached under /var/cache/ipactr/images) and checks them,
# builds, and runs every test (the privileged ones too: run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/deps.sh
# Tests find the images through these (OCI image layouts; an oci-archive of
# each lies next to it as ../NAME.oci.tar).
images/debian/build.sh
images/busybox/build.sh
images/freeipa/build.sh
export IPACTR_TEST_DEBIAN_OCI=/var/cache/ipactr/images/debian/oci
export IPACTR_TEST_BUSYBOX_OCI=/var/cache/ipactr/images/busybox/oci
export IPACTR_TEST_FREEIPA_OCI=/var/cache/ipactr/images/freeipa/oci
images/check.sh
swift build
# The static build: installed into a machine by the nested-machine test (a
# copy of three files, as scripts/install.sh does on a host).
swift build -c release --static-swift-stdlib
export IPACTR_TEST_STATIC_BIN=$(swift build -c release --static-swift-stdlib --show-bin-path)
swift test --no-parallel 2>&1 | tee /tmp/ipactr-test.log
