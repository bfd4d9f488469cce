#!/bin/bash
# One FreeIPA cycle for the `freeipa` benchmark, on a fresh /data:
#   freeipa-cycle.sh nspawn ROOTFS WORK RECORD
#   freeipa-cycle.sh ipactr IPACTR WORK RECORD     (ipactrd on $DBUS_SYSTEM_BUS_ADDRESS)
# first boot (install) to READY=1, poweroff, second boot on the same /data to
# READY=1, poweroff. READY=1 comes once the default target is reached, i.e.
# when every service answers (images/freeipa/README.md). Appends
# {"first": s, "second": s, "poweroff": s} (poweroff: the second one) to RECORD.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ms() { echo $(( $(date +%s%N) / 1000000 )); }
opts="-r EXAMPLE.TEST --domain example.test"
password=Secret.123-bench

case $1 in
nspawn)
    rootfs=$2 work=$3 record=$4
    rm -rf "$work/data" "$work/root"; mkdir -p "$work/data"
    cp -a "$rootfs" "$work/root"
    run() {  # the boot's and poweroff's seconds, from bootcycle.py's record
        rm -f "$work/cycle.jsonl"
        SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 "$here/bootcycle.py" --cgroup --timeout 300 --record "$work/cycle.jsonl" \
            --log "$work/nspawn.console" -- systemd-nspawn -q -D "$work/root" --private-users=pick \
            --private-users-ownership=auto --private-network --hostname=ipa.example.test \
            --bind="$work/data:/data:idmap" --register=no --keep-unit --link-journal=no \
            --setenv=PASSWORD=$password --setenv="IPA_SERVER_INSTALL_OPTS=$opts" \
            --notify-ready=yes --kill-signal=SIGRTMIN+4 -b
        jq -r '"\(.boot) \(.poweroff)"' "$work/cycle.jsonl"
    }
    read -r first _ < <(run)
    read -r second poweroff < <(run)
    ;;
ipactr)
    ipactr=$2 work=$3 record=$4
    rm -rf "$work/data"; mkdir -p "$work/data"
    "$ipactr" rm --force ipa-a ipa-b >/dev/null 2>&1 || true
    common=(--hostname ipa.example.test --volume "$work/data:/data" --timeout 300)
    t0=$(ms); "$ipactr" boot freeipa --name ipa-a "${common[@]}" \
        --env PASSWORD=$password --env "IPA_SERVER_INSTALL_OPTS=$opts" >/dev/null; t1=$(ms)
    "$ipactr" poweroff ipa-a >/dev/null
    t2=$(ms); "$ipactr" boot freeipa --name ipa-b "${common[@]}" >/dev/null; t3=$(ms)
    "$ipactr" poweroff ipa-b >/dev/null; t4=$(ms)
    "$ipactr" rm ipa-a ipa-b >/dev/null
    first=$(echo "scale=3; ($t1 - $t0) / 1000" | bc) second=$(echo "scale=3; ($t3 - $t2) / 1000" | bc)
    poweroff=$(echo "scale=3; ($t4 - $t3) / 1000" | bc)
    ;;
*) echo "freeipa-cycle: nspawn or ipactr" >&2; exit 2 ;;
esac
printf '{"first": %s, "second": %s, "poweroff": %s}\n' "$first" "$second" "$poweroff" >>"$record"
