#!/bin/bash
# Checks the cached test images the way a consumer depends on them: every
# blob matches its descriptor's digest and size, the layer's diff_id matches
# its uncompressed bytes, the config says what the build script promises, and
# the root filesystem was made container-ready. Run by scripts/test.sh after
# the builds; prints one line per check and "N passed, N failed".
#
#   images/check.sh [debian|busybox…]     (default: both)
set -uo pipefail
DEBIAN_OCI=${IPACTR_TEST_DEBIAN_OCI:-/var/cache/ipactr/images/debian/oci}
BUSYBOX_OCI=${IPACTR_TEST_BUSYBOX_OCI:-/var/cache/ipactr/images/busybox/oci}
passed=0 failed=0
work=$(mktemp -d /tmp/ipactr-image-check.XXXXXX)
trap 'rm -rf "$work"' EXIT

check() {  # check NAME COMMAND…: one test
    local name=$1
    shift
    if "$@" >"$work/out" 2>&1; then
        passed=$((passed + 1)); echo "ok      $name"
    else
        failed=$((failed + 1)); echo "FAILED  $name: $(head -c 300 "$work/out" | tr '\n' ' ')"
    fi
}

blob() { echo "$1/blobs/sha256/${2#sha256:}"; }

# descriptor_ok LAYOUT DIGEST SIZE
descriptor_ok() {
    local file
    file=$(blob "$1" "$2")
    [ -f "$file" ] || { echo "missing blob $2"; return 1; }
    [ "$(stat -c %s "$file")" = "$3" ] || { echo "size of $2 is $(stat -c %s "$file"), descriptor says $3"; return 1; }
    [ "sha256:$(sha256sum "$file" | cut -d' ' -f1)" = "$2" ] || { echo "content of $2 does not match its digest"; return 1; }
}

# blobs_ok LAYOUT: index → manifest → config and layers, and the diff_ids.
blobs_ok() {
    local layout=$1 man cfg
    jq -e '.schemaVersion == 2 and (.manifests | length) == 1 and
        .manifests[0].annotations["org.opencontainers.image.ref.name"] == "latest"' \
        "$layout/index.json" >/dev/null || { echo "index.json: not one manifest tagged latest"; return 1; }
    [ "$(jq -r .imageLayoutVersion "$layout/oci-layout")" = 1.0.0 ] || { echo "bad oci-layout"; return 1; }
    read -r man size < <(jq -r '.manifests[0] | "\(.digest) \(.size)"' "$layout/index.json")
    descriptor_ok "$layout" "$man" "$size" || return 1
    man=$(blob "$layout" "$man")
    read -r cfg size < <(jq -r '.config | "\(.digest) \(.size)"' "$man")
    descriptor_ok "$layout" "$cfg" "$size" || return 1
    cfg=$(blob "$layout" "$cfg")
    local i=0 digest media diff
    while read -r digest size media; do
        [ "$media" = application/vnd.oci.image.layer.v1.tar+gzip ] || { echo "layer $i: media type $media"; return 1; }
        descriptor_ok "$layout" "$digest" "$size" || return 1
        diff=sha256:$(gzip -dc "$(blob "$layout" "$digest")" | sha256sum | cut -d' ' -f1)
        [ "$diff" = "$(jq -r ".rootfs.diff_ids[$i]" "$cfg")" ] || { echo "layer $i: diff_id mismatch"; return 1; }
        i=$((i + 1))
    done < <(jq -r '.layers[] | "\(.digest) \(.size) \(.mediaType)"' "$man")
    [ $i = 1 ] || { echo "expected one layer, found $i"; return 1; }
}

config() {  # config LAYOUT: the image config's JSON
    local man
    man=$(blob "$1" "$(jq -r '.manifests[0].digest' "$1/index.json")")
    cat "$(blob "$1" "$(jq -r .config.digest "$man")")"
}

# unpack LAYOUT DIR: the single layer, with the same tar the images were made with.
unpack() {
    local man
    man=$(blob "$1" "$(jq -r '.manifests[0].digest' "$1/index.json")")
    mkdir -p "$2" && tar -C "$2" --numeric-owner -xzf "$(blob "$1" "$(jq -r '.layers[0].digest' "$man")")"
}

check_debian() {
    local l=$DEBIAN_OCI r=$work/debian
    [ -f "$l/index.json" ] || { check "debian: layout exists at $l" false; return; }
    check "debian: blobs match digests, sizes and diff_ids" blobs_ok "$l"
    check "debian: config Cmd, StopSignal, Env, platform" bash -c '[ "$(jq -c "[.os, .architecture, .config.Cmd, .config.StopSignal, (.config.Env | map(select(startswith(\"PATH=\"))) | length)]")" = "[\"linux\",\"amd64\",[\"/sbin/init\"],\"SIGRTMIN+3\",1]" ]' < <(config "$l")
    check "debian: layer unpacks" unpack "$l" "$r"
    check "debian: systemd is /sbin/init" test "$(readlink "$r/sbin/init")" = /lib/systemd/systemd -a -x "$r/lib/systemd/systemd"
    check "debian: dbus is installed" test -x "$r/usr/bin/dbus-daemon"
    check "debian: machinectl and machined are installed (systemd-container)" test -x "$r/usr/bin/machinectl" -a -x "$r/lib/systemd/systemd-machined"
    check "debian: empty /etc/machine-id and /etc/resolv.conf" bash -c "[ -f '$r/etc/machine-id' ] && [ ! -s '$r/etc/machine-id' ] && [ -f '$r/etc/resolv.conf' ] && [ ! -s '$r/etc/resolv.conf' ]"
    check "debian: no host hostname" test ! -e "$r/etc/hostname"
    check "debian: root has no password" grep -q '^root::' "$r/etc/shadow"
    local unit masked=1
    for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-firstboot.service; do
        [ "$(readlink "$r/etc/systemd/system/$unit")" = /dev/null ] || { masked=0; echo "$unit not masked" >&2; }
    done
    check "debian: timers and first-boot wizard masked" test $masked = 1
    check "debian: no man pages, info, translations" bash -c "[ -z \"\$(find '$r/usr/share/man' '$r/usr/share/info' -type f)\" ] && [ -z \"\$(find '$r/usr/share/locale' -type f ! -name locale.alias)\" ]"
    check "debian: docs reduced to copyright files" bash -c "[ -z \"\$(find '$r/usr/share/doc' ! -type d ! -name copyright)\" ] && [ -n \"\$(find '$r/usr/share/doc' -name copyright)\" ]"
    check "debian: no device nodes, empty /dev /run /tmp" bash -c "[ -z \"\$(find '$r' -xdev \\( -type b -o -type c \\))\" ] && [ -z \"\$(find '$r/dev' '$r/run' '$r/tmp' -mindepth 1)\" ]"
    check "debian: no apt lists or .debs" bash -c "[ -z \"\$(find '$r/var/lib/apt/lists' '$r/var/cache/apt' -type f -name '*_*')\" ]"
    check "debian: oci-archive next to the layout" tar -tf "$(dirname "$l")/debian.oci.tar" index.json
}

check_busybox() {
    local l=$BUSYBOX_OCI r=$work/busybox
    [ -f "$l/index.json" ] || { check "busybox: layout exists at $l" false; return; }
    check "busybox: blobs match digests, sizes and diff_ids" blobs_ok "$l"
    check "busybox: config Cmd /bin/sh, platform" bash -c '[ "$(jq -c "[.os, .architecture, .config.Cmd]")" = "[\"linux\",\"amd64\",[\"/bin/sh\"]]" ]' < <(config "$l")
    check "busybox: layer unpacks" unpack "$l" "$r"
    check "busybox: static busybox with true and sh applets" bash -c "! ldd '$r/bin/busybox' >/dev/null 2>&1 && [ \"\$(readlink '$r/bin/true')\" = /bin/busybox ] && [ \"\$(readlink '$r/bin/sh')\" = /bin/busybox ]"
    check "busybox: /bin/true runs in a chroot" chroot "$r" /bin/true
    check "busybox: oci-archive next to the layout" tar -tf "$(dirname "$l")/busybox.oci.tar" index.json
}

(($#)) || set -- debian busybox
for image in "$@"; do
    case $image in
        debian|busybox) "check_$image" ;;
        *) echo "images/check.sh: unknown image '$image'" >&2; exit 2 ;;
    esac
done
echo "images: $passed passed, $failed failed"
[ $failed = 0 ]
