#!/bin/bash
# A private ipactrd for scripts that must not touch the host's (benchmarks,
# experiments): a dbus-daemon with a system-bus-like configuration and the
# shipped policy on a socket in DIR, and ipactrd serving ROOT on it.
#   private-ipactrd.sh start BIN_DIR ROOT DIR   prints the bus address (for DBUS_SYSTEM_BUS_ADDRESS)
#   private-ipactrd.sh stop DIR                 stops both
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
case ${1:-} in
start)
    bin=$2 root=$3 dir=$4
    mkdir -p "$dir"
    cat >"$dir/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=$dir/bus</listen>
  <include>$repo/scripts/private-bus-policy.conf</include>
  <include>$repo/units/org.ipactr1.conf</include>
</busconfig>
CONF
    rm -f "$dir/bus"
    setsid dbus-daemon --config-file="$dir/bus.conf" --nofork --nopidfile </dev/null >"$dir/dbus.log" 2>&1 &
    echo $! >"$dir/dbus.pid"
    for _ in $(seq 100); do [ -S "$dir/bus" ] && break; sleep 0.05; done
    address=unix:path=$dir/bus
    setsid "$bin/ipactrd" --root "$root" --bus "$address" --monitor "$bin/ipactr-worker" </dev/null >"$dir/ipactrd.log" 2>&1 &
    echo $! >"$dir/ipactrd.pid"
    for _ in $(seq 200); do
        busctl --address="$address" status org.ipactr1 >/dev/null 2>&1 && { echo "$address"; exit 0; }
        kill -0 "$(cat "$dir/ipactrd.pid")" 2>/dev/null || break
        sleep 0.05
    done
    echo "private-ipactrd: ipactrd did not start: $(cat "$dir/ipactrd.log")" >&2
    exit 1
    ;;
stop)
    dir=$2
    for p in ipactrd dbus; do
        [ -f "$dir/$p.pid" ] && kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
        rm -f "$dir/$p.pid"
    done
    ;;
*)
    echo "usage: $0 start BIN_DIR ROOT DIR | stop DIR" >&2
    exit 2
    ;;
esac
