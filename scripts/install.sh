#!/bin/bash
# Installs ipactr on this host as root: the binaries in /usr/local/bin, the
# units in /etc/systemd/system, the bus policy and activation file, then
# (re)starts ipactrd, which every `ipactr` verb talks to.
#   scripts/install.sh [BIN_DIR]   (default: the static release build)
# On a systemd host ipactrd runs as ipactrd.service. Without systemd as PID 1
# (a container, a CI runner) the system bus is started if it is not running,
# and ipactrd runs in the background, logging to /var/log/ipactrd.log.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
[ "$(id -u)" = 0 ] || { echo "install: run as root" >&2; exit 1; }
bin=${1:-$(swift build -c release --static-swift-stdlib --show-bin-path)}
for b in ipactr ipactrd ipactr-runtime ipactr-worker; do
    [ -x "$bin/$b" ] || { echo "install: $bin/$b is missing (build first)" >&2; exit 1; }
done
# Replace, never overwrite in place: a running monitor keeps executing the old file.
for b in ipactr ipactrd ipactr-runtime ipactr-worker; do
    install -m755 "$bin/$b" "/usr/local/bin/.$b.new" && mv -f "/usr/local/bin/.$b.new" "/usr/local/bin/$b"
done
install -Dm644 units/org.ipactr1.conf /usr/share/dbus-1/system.d/org.ipactr1.conf
install -Dm644 units/org.ipactr1.service /usr/share/dbus-1/system-services/org.ipactr1.service
install -Dm644 units/ipactrd.service /etc/systemd/system/ipactrd.service
install -Dm644 units/ipactr@.service /etc/systemd/system/ipactr@.service

bus_up() { dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.GetId >/dev/null 2>&1; }
if [ "$(cat /proc/1/comm)" = systemd ]; then
    systemctl daemon-reload
    systemctl reload dbus.service 2>/dev/null || true
    systemctl enable ipactrd.service >/dev/null
    systemctl restart ipactrd.service
else
    if bus_up; then
        # Read the new policy file.
        dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.ReloadConfig >/dev/null
    else
        mkdir -p /run/dbus
        rm -f /run/dbus/system_bus_socket /run/dbus/pid
        dbus-uuidgen --ensure
        dbus-daemon --system --fork
        for _ in $(seq 100); do bus_up && break; sleep 0.05; done
    fi
    pkill -x ipactrd 2>/dev/null && sleep 0.2 || true
    setsid /usr/local/bin/ipactrd </dev/null >>/var/log/ipactrd.log 2>&1 &
fi
for _ in $(seq 200); do
    busctl --system status org.ipactr1 >/dev/null 2>&1 && { echo "install: ipactrd is running"; exit 0; }
    sleep 0.05
done
echo "install: ipactrd did not start (see /var/log/ipactrd.log or journalctl -u ipactrd)" >&2
exit 1
