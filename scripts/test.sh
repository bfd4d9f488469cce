#!/bin/bash
# The whole test suite, as CI runs it: installs what the tests need, builds,
# and runs every test (the privileged ones too: run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/deps.sh
swift build
swift test --no-parallel 2>&1 | tee /tmp/ipactr-test.log
