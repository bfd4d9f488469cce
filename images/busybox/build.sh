#!/bin/bash
# Builds a tiny test image from Debian's busybox-static: one static binary and
# a symlink per applet, a minimal /etc, as an OCI image layout and an
# oci-archive under /var/cache/ipactr/images/busybox. For fast runtime tests
# (create/start/delete of /bin/true). Cached like images/debian/build.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/common.sh"
img_init busybox "$here/build.sh" "$@"

# The .deb comes from apt's configured mirror and is checked against the
# signed package lists; nothing is installed on the host.
mkdir "$IMG_WORK/deb"
fetch() { (cd "$IMG_WORK/deb" && apt-get download -q -o APT::Sandbox::User=root busybox-static) >"$IMG_WORK/apt.log" 2>&1; }
if ! fetch; then
    apt-get update -qq >>"$IMG_WORK/apt.log" 2>&1 || true
    fetch || { cat "$IMG_WORK/apt.log" >&2; img_die "apt-get download busybox-static failed"; }
fi
dpkg-deb -x "$IMG_WORK"/deb/busybox-static_*.deb "$IMG_WORK/pkg"
echo "busybox: $(basename "$IMG_WORK"/deb/busybox-static_*.deb)"

rootfs=$IMG_WORK/rootfs
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,dev,proc,sys,run,tmp,var/tmp}
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
chmod 0700 "$rootfs/root"
install -m 0755 "$IMG_WORK/pkg/bin/busybox" "$rootfs/bin/busybox"
# Each applet at the path busybox itself names (bin/sh, usr/bin/awk…).
"$rootfs/bin/busybox" --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] || [ -e "$rootfs/$applet" ] || ln -s /bin/busybox "$rootfs/$applet"
done
[ -L "$rootfs/bin/true" ] && [ -L "$rootfs/bin/sh" ] || img_die "busybox lacks the true or sh applet"
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"

config=$(jq -cn '{
    Env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    Cmd: ["/bin/sh"],
    WorkingDir: "/",
    Labels: {"org.opencontainers.image.title": "ipactr busybox test image"}}')
img_write_oci "$rootfs" "$config"
img_verify "$rootfs"
img_commit
