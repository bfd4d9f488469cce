#!/bin/bash
# One ipactr boot cycle, timed in two parts like bootcycle.py does for nspawn:
#   ipactr-bootcycle.sh IPACTR RECORD     (ipactrd on $DBUS_SYSTEM_BUS_ADDRESS)
# boots machine "bench" from image "debian" (returns at READY=1), powers it
# off (SIGRTMIN+4, returns when PID 1 is gone), and appends
# {"boot": s, "poweroff": s} to RECORD.
set -euo pipefail
ipactr=$1 record=$2
t0=$(date +%s%N)
"$ipactr" boot debian --name bench >/dev/null
t1=$(date +%s%N)
"$ipactr" poweroff bench >/dev/null
t2=$(date +%s%N)
printf '{"boot": %s, "poweroff": %s}\n' "$(( (t1 - t0) / 1000 ))e-6" "$(( (t2 - t1) / 1000 ))e-6" >>"$record"
