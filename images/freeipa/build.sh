#!/bin/bash
# Builds the FreeIPA-shaped test image (see README.md next to this file):
#   $CACHE/oci      OCI image layout, one gzip layer, tagged "latest"
#   $CACHE/rootfs   the same tree unpacked by umoci (what systemd-nspawn boots)
# where CACHE is ${IPACTR_IMAGE_CACHE:-/var/cache/ipactr/images}/freeipa.
# Cached: nothing is done while the stamp (sha256 of every file under
# images/freeipa that goes into the image: all but README.md and the check
# scripts) is unchanged; --force rebuilds from debootstrap on.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${IPACTR_IMAGE_CACHE:-/var/cache/ipactr/images}/freeipa
# Bump when the base stage below changes in a way the package list does not show.
BASE_REVISION=1

die() { echo "freeipa image: $*" >&2; exit 1; }

force=0
for arg in "$@"; do
    case $arg in
        --force) force=1 ;;
        -h|--help) echo "usage: $0 [--force]"; exit 0 ;;
        *) die "unknown argument '$arg' (usage: $0 [--force])" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "must run as root (the image holds root-owned and setuid files)"
for tool in debootstrap chroot tar gzip sha256sum python3 umoci flock findmnt; do
    command -v "$tool" >/dev/null || die "missing tool '$tool' (run scripts/deps.sh)"
done

mkdir -p "$CACHE"
# The cache holds setuid binaries owned by root: keep host users out.
chmod 0700 "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

stamp=$(cd "$HERE" && find . -type f ! -name README.md ! -name check.sh ! -name nspawn-smoke.sh -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ $force = 0 ] && [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$stamp" ] \
    && [ -f "$CACHE/oci/index.json" ] && [ -d "$CACHE/rootfs/etc" ]; then
    echo "freeipa image: up to date ($CACHE/oci, $CACHE/rootfs)"
    exit 0
fi

start=$(date +%s.%N)
work=$(mktemp -d "$CACHE/.work.XXXXXX")
cleanup() {
    local status=$?
    set +e  # every cleanup step runs even when one fails
    findmnt -rn -o TARGET | grep -F "$work/" | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf --one-file-system "$work"
    [ $status = 0 ] || echo "freeipa image: build failed; the cache is unchanged" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The Debian mirror this host uses (deb822 .sources or one-line sources.list).
mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {s=1} /^$/ {if (s && u) {print u; exit} u=""; s=0}
             END {if (s && u) print u}' "$f"
    done | head -n1 | grep . && return
    awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null | grep . && return
    echo http://deb.debian.org/debian
}

# --- Stage 1: the base tree (debootstrap + packages), cached by its inputs -----
packages=$(sed -e 's/#.*//' "$HERE/packages" | xargs)
base_key=$(printf '%s\n' "$BASE_REVISION" "$packages" | sha256sum | cut -d' ' -f1)
if [ $force = 1 ] || [ "$(cat "$CACHE/base.key" 2>/dev/null)" != "$base_key" ] || [ ! -d "$CACHE/base/etc" ]; then
    base=$work/base
    mkdir -p "$CACHE/debs" "$CACHE/apt-archives"
    echo "freeipa image: debootstrap bookworm from $(mirror)"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
        --cache-dir="$CACHE/debs" bookworm "$base" "$(mirror)" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

    # Docs, man pages and locales are dropped now and for every later package.
    cat >"$base/etc/dpkg/dpkg.cfg.d/01-ipactr-nodoc" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
CFG
    find "$base/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
    rm -rf "$base"/usr/share/{man,info,groff,lintian,locale}/*

    # Fixed ids for the service users, created before their packages (whose
    # postinst then reuses them), so a /data volume stays valid across rebuilds.
    chroot "$base" groupadd --system --gid 389 dirsrv
    chroot "$base" useradd --system --uid 389 --gid dirsrv --home-dir /var/lib/dirsrv \
        --no-create-home --shell /usr/sbin/nologin --comment "389 Directory Server user" dirsrv
    chroot "$base" groupadd --system --gid 390 bind
    chroot "$base" useradd --system --uid 390 --gid bind --home-dir /var/cache/bind \
        --no-create-home --shell /usr/sbin/nologin bind
    chroot "$base" groupadd --system --gid 391 sssd
    chroot "$base" useradd --system --uid 391 --gid sssd --home-dir /var/lib/sss \
        --no-create-home --shell /usr/sbin/nologin --comment "SSSD system user" sssd

    # No service starts inside the build chroot.
    printf '#!/bin/sh\nexit 101\n' >"$base/usr/sbin/policy-rc.d"
    chmod 0755 "$base/usr/sbin/policy-rc.d"
    mount -t proc proc "$base/proc"
    # Downloaded packages are kept between builds.
    mount --bind "$CACHE/apt-archives" "$base/var/cache/apt/archives"
    echo "freeipa image: apt-get install $packages"
    # shellcheck disable=SC2086 # the package list is meant to split
    chroot "$base" env DEBIAN_FRONTEND=noninteractive LC_ALL=C sh -c \
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends $packages" \
        >"$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; die "apt-get install failed"; }
    umount "$base/var/cache/apt/archives" "$base/proc"
    rm -f "$base/usr/sbin/policy-rc.d"
    rm -rf "$base"/var/lib/apt/lists/* "$base"/var/cache/apt/*.bin "$base"/var/cache/debconf/*-old \
        "$base"/var/log/apt/* "$base"/var/log/dpkg.log "$base"/var/log/bootstrap.log "$base"/var/log/alternatives.log

    rm -rf --one-file-system "$CACHE/base"
    mv "$base" "$CACHE/base"
    echo "$base_key" >"$CACHE/base.key"
fi

# --- Stage 2: this directory's files and settings on a copy of the base --------
root=$work/rootfs
cp -a "$CACHE/base" "$root"
# Files from the repository are root's, whatever the checkout's owner.
cp -r --no-preserve=ownership "$HERE/rootfs/." "$root/"
cp "$HERE/setup.sh" "$root/tmp/ipactr-setup.sh"
chroot "$root" /bin/bash /tmp/ipactr-setup.sh
rm -f "$root/tmp/ipactr-setup.sh"
# An empty machine-id is filled by the runtime's container_uuid at boot; an
# empty resolv.conf (debootstrap copied the build host's) means "ask 127.0.0.1",
# the image's own named.
: >"$root/etc/machine-id"
rm -f "$root/etc/resolv.conf"
: >"$root/etc/resolv.conf"
rm -f "$root/etc/hostname"

# --- Stage 3: OCI image layout, checked by unpacking it with umoci -------------
python3 "$HERE/oci-layout.py" "$root" "$work/oci"
umoci unpack --image "$work/oci:latest" "$work/bundle" >/dev/null 2>"$work/umoci.log" \
    || { cat "$work/umoci.log" >&2; die "umoci cannot unpack the image"; }
(cd "$root" && find . | LC_ALL=C sort) >"$work/want"
(cd "$work/bundle/rootfs" && find . | LC_ALL=C sort) >"$work/got"
cmp -s "$work/want" "$work/got" \
    || die "umoci's tree differs from the built one: $(diff "$work/want" "$work/got" | head -n 3 | tr '\n' ' ')"

# Replace the cached image; the old one goes only once the new one is in place.
for part in oci rootfs; do
    [ -e "$CACHE/$part" ] && mv "$CACHE/$part" "$work/old-$part"
done
mv "$work/oci" "$CACHE/oci"
mv "$work/bundle/rootfs" "$CACHE/rootfs"
echo "$stamp" >"$CACHE/stamp"
end=$(date +%s.%N)
layer=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["manifests"][0]["digest"])' "$CACHE/oci/index.json")
duration=$(python3 -c "print(f'{$end - $start:.1f}')")
echo "freeipa image: built in $duration s: $CACHE/oci (manifest $layer), $CACHE/rootfs"
