#!/bin/bash
# Builds the Debian 12 (bookworm) systemd test image: debootstrap minbase +
# systemd, systemd-sysv, dbus, systemd-container (machinectl and machined,
# for the nested-machine test: ipactr inside a machine registers its own
# machines there) and libarchive13 (the one shared library the static ipactr
# build needs that systemd does not pull in already; the test installs ipactr
# there) from the mirror apt is configured with, trimmed
# and made container-ready, written as an OCI image layout (one gzip layer)
# and an oci-archive under /var/cache/ipactr/images/debian. Cached: a re-run
# is a no-op unless this script (or images/lib/common.sh) changed, or --force.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/common.sh"
img_init debian "$here/build.sh" "$@"
command -v debootstrap >/dev/null || img_die "missing debootstrap (run scripts/deps.sh)"

SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,systemd-container,libarchive13
# Units that make no sense in a throwaway container: package-list refreshes
# and upgrades, backups of the dpkg database, scrubbing and trimming the
# host's filesystems. Masked (linked to /dev/null) so nothing pulls them in.
MASK=(
    apt-daily.timer apt-daily.service apt-daily-upgrade.timer apt-daily-upgrade.service
    dpkg-db-backup.timer dpkg-db-backup.service
    e2scrub_all.timer e2scrub_all.service e2scrub_reap.service
    fstrim.timer fstrim.service
    # the first-boot wizard asks on the console (locale, timezone, root
    # password): a booting test machine would wait for an answer
    systemd-firstboot.service
)

# The mirror apt already uses (the only network this machine has): the first
# "deb" source whose suites include $SUITE, in deb822 or one-line format.
mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
            {
                types = uris = suites = ""; enabled = 1
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:/) types = $i
                    if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/) }
                    if ($i ~ /^Suites:/) suites = " " $i " "
                    if ($i ~ /^Enabled:[ \t]*no/) enabled = 0
                }
                if (enabled && types ~ /[ \t]deb([ \t]|$)/ && suites ~ ("[ \t]" suite "[ \t]")) { print u[1]; exit }
            }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI SUITE COMPONENT…
        awk -v suite="$SUITE" '{ sub(/#.*/, ""); gsub(/\[[^]]*\]/, "") }
            $1 == "deb" && $3 == suite { print $2; exit }' "$f"
    done
}
MIRROR=$(mirror | head -1)
[ -n "$MIRROR" ] || img_die "no '$SUITE' deb source in /etc/apt/sources.list*"
echo "debian: debootstrap --variant=minbase $SUITE from $MIRROR (+ $PACKAGES)"

rootfs=$IMG_WORK/rootfs
# Downloaded .debs are kept, so a --force rebuild does not fetch them again.
debs=$IMG_CACHE_ROOT/.debootstrap-debs
mkdir -p "$debs"
if ! debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$debs" \
    "$SUITE" "$rootfs" "$MIRROR" >"$IMG_WORK/debootstrap.log" 2>&1; then
    tail -n 20 "$IMG_WORK/debootstrap.log" >&2
    [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 20 "$rootfs/debootstrap/debootstrap.log" >&2
    img_die "debootstrap failed"
fi
cd "$rootfs"

# No docs, man pages or translations, now and for packages installed on top
# of this image later (the FreeIPA image is built from it); copyright files stay.
cat >etc/dpkg/dpkg.cfg.d/01-ipactr-nodoc <<'EOF'
# Container image: no documentation or translations (images/debian/build.sh).
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
EOF
find usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf usr/share/man/* usr/share/info/* usr/share/lintian
find usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

# Nothing of the build or of the host: apt lists and caches, logs, the
# host's hostname and resolver (debootstrap copies both), device nodes
# (the runtime provides /dev), leftovers in /run and /tmp.
rm -rf var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb \
    var/cache/debconf/*-old var/lib/dpkg/*-old etc/hostname
find var/log -type f -delete
find dev run tmp var/tmp -mindepth 1 -delete
: >etc/resolv.conf
chmod 0644 etc/resolv.conf
echo LANG=C.UTF-8 >etc/locale.conf
# Empty machine-id: systemd makes a fresh one at each boot of a machine.
: >etc/machine-id
mkdir -p var/lib/dbus
ln -sf /etc/machine-id var/lib/dbus/machine-id
# No root password: root logs in on the console without one (test image).
sed -i 's/^root:[^:]*:/root::/' etc/shadow

for unit in "${MASK[@]}"; do
    ln -sf /dev/null "etc/systemd/system/$unit"
done
cd /

config=$(jq -cn '{
    Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
    Cmd: ["/sbin/init"],
    WorkingDir: "/",
    StopSignal: "SIGRTMIN+3",
    Labels: {"org.opencontainers.image.title": "ipactr Debian 12 systemd test image",
             "org.opencontainers.image.base.name": "debian:bookworm (debootstrap minbase)"}}')
img_write_oci "$rootfs" "$config"
img_verify "$rootfs"
img_commit
