# Shared by the images/*/build.sh scripts (sourced, not run): the cache and
# its stamp, the lock, cleanup on failure, and writing + checking an OCI image
# layout from a root filesystem directory with tar, gzip, sha256sum and jq.
#
# Layout of one image's cache directory ($IPACTR_IMAGE_CACHE/NAME):
#   oci/          OCI image layout, one manifest tagged "latest"
#   NAME.oci.tar  the same layout as an oci-archive (what skopeo writes)
#   stamp         sha256 of the build script and this file; unchanged = no-op
#   .lock         flock: two builders of one image wait for each other

IMG_CACHE_ROOT=${IPACTR_IMAGE_CACHE:-/var/cache/ipactr/images}
IMG_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

img_die() { echo "$IMG_NAME: $*" >&2; exit 1; }

# img_init NAME SCRIPT "$@": parses --force/--help, takes the lock, and exits 0
# at once when the cached image is current. Sets IMG_OUT, IMG_WORK, IMG_STAMP.
img_init() {
    IMG_NAME=$1 IMG_SCRIPT=$2
    shift 2
    local force=0
    for arg in "$@"; do
        case $arg in
            --force) force=1 ;;
            -h|--help)
                echo "usage: $IMG_SCRIPT [--force]"
                echo "Builds the $IMG_NAME test image into $IMG_CACHE_ROOT/$IMG_NAME (cached; --force rebuilds)."
                exit 0 ;;
            *) img_die "unknown argument '$arg' (usage: $IMG_SCRIPT [--force])" ;;
        esac
    done
    [ "$(id -u)" = 0 ] || img_die "must run as root (the image holds root-owned and setuid files)"
    for tool in tar gzip sha256sum jq flock; do
        command -v "$tool" >/dev/null || img_die "missing tool '$tool' (run scripts/deps.sh)"
    done

    IMG_OUT=$IMG_CACHE_ROOT/$IMG_NAME
    mkdir -p "$IMG_OUT"
    # The cache holds setuid binaries owned by root: keep host users out.
    chmod 0700 "$IMG_CACHE_ROOT" "$IMG_OUT"
    exec 9>"$IMG_OUT/.lock"
    flock 9

    IMG_STAMP=$(cat "$IMG_SCRIPT" "$IMG_LIB_DIR/common.sh" | sha256sum | cut -d' ' -f1)
    if [ $force = 0 ] && [ -f "$IMG_OUT/stamp" ] && [ "$(cat "$IMG_OUT/stamp")" = "$IMG_STAMP" ] \
        && [ -f "$IMG_OUT/oci/index.json" ] && [ -f "$IMG_OUT/$IMG_NAME.oci.tar" ]; then
        echo "$IMG_NAME: up to date ($IMG_OUT/oci)"
        exit 0
    fi

    IMG_START=$(date +%s.%N)
    IMG_WORK=$(mktemp -d "$IMG_OUT/.work.XXXXXX")
    trap img_cleanup EXIT
    trap 'exit 130' INT TERM
}

# Leaves nothing behind on any exit: mounts a tool left inside the work tree
# (debootstrap mounts /proc and /sys in the target) are undone before removal.
img_cleanup() {
    local status=$?
    set +e  # a cleanup step that fails must not skip the next one
    if [ -n "${IMG_WORK:-}" ] && [ -d "$IMG_WORK" ]; then
        findmnt -rn -o TARGET | grep -F "$IMG_WORK/" | sort -r | while read -r m; do
            umount -l "$m"
        done
        rm -rf --one-file-system "$IMG_WORK"
    fi
    [ $status = 0 ] || echo "$IMG_NAME: build failed; the cache is unchanged" >&2
}

# img_blob FILE: moves FILE into blobs/sha256 of the layout being written and
# prints its digest (sha256:…) and size.
img_blob() {
    local file=$1 sum size
    sum=$(sha256sum "$file" | cut -d' ' -f1)
    size=$(stat -c %s "$file")
    mv "$file" "$IMG_WORK/oci/blobs/sha256/$sum"
    echo "sha256:$sum $size"
}

# img_write_oci ROOTFS CONFIG_JSON: writes $IMG_WORK/oci with one gzip layer
# holding ROOTFS and an image config whose "config" member is CONFIG_JSON.
img_write_oci() {
    local rootfs=$1 config=$2
    local layout=$IMG_WORK/oci created
    created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    mkdir -p "$layout/blobs/sha256"

    # Entries are named without a "./" prefix, sorted, with numeric owners and
    # every xattr (file capabilities live in security.capability). pax format
    # for long names and xattrs; its per-file headers get fixed names, without
    # atime/ctime, so equal trees give equal layers.
    (cd "$rootfs" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | LC_ALL=C sort) >"$IMG_WORK/top"
    tar -C "$rootfs" --create --file="$IMG_WORK/layer.tar" --format=posix \
        --pax-option='exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime' \
        --sort=name --numeric-owner --xattrs --xattrs-include='*' \
        --one-file-system --files-from="$IMG_WORK/top"
    local diff_id
    diff_id=sha256:$(sha256sum "$IMG_WORK/layer.tar" | cut -d' ' -f1)
    gzip -n -6 "$IMG_WORK/layer.tar"
    local layer layer_size
    read -r layer layer_size < <(img_blob "$IMG_WORK/layer.tar.gz")

    jq -cn --arg created "$created" --arg diff "$diff_id" --argjson cfg "$config" \
        --arg by "images/$IMG_NAME/build.sh (ipactr)" '{
        created: $created, architecture: "amd64", os: "linux", config: $cfg,
        rootfs: {type: "layers", diff_ids: [$diff]},
        history: [{created: $created, created_by: $by}]}' >"$IMG_WORK/config.json"
    local cfg cfg_size
    read -r cfg cfg_size < <(img_blob "$IMG_WORK/config.json")

    jq -cn --arg cfg "$cfg" --argjson cfgsize "$cfg_size" --arg layer "$layer" \
        --argjson layersize "$layer_size" --arg created "$created" '{
        schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cfg, size: $cfgsize},
        layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $layer, size: $layersize}],
        annotations: {"org.opencontainers.image.created": $created}}' >"$IMG_WORK/manifest.json"
    local man man_size
    read -r man man_size < <(img_blob "$IMG_WORK/manifest.json")

    jq -cn --arg man "$man" --argjson mansize "$man_size" '{
        schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
        manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json",
            digest: $man, size: $mansize,
            platform: {architecture: "amd64", os: "linux"},
            annotations: {"org.opencontainers.image.ref.name": "latest"}}]}' >"$layout/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
    tar -C "$layout" --create --file="$IMG_WORK/$IMG_NAME.oci.tar" oci-layout index.json blobs
    echo "$IMG_NAME: layer $layer ($((layer_size / 1024)) KiB gzip)"
}

# img_verify ROOTFS: the layout must read back with independent tools: skopeo
# (both the directory and the archive), and umoci, whose unpacked tree must
# hold exactly the paths of ROOTFS.
img_verify() {
    local rootfs=$1
    skopeo inspect "oci:$IMG_WORK/oci:latest" >"$IMG_WORK/inspect.json" \
        || img_die "skopeo cannot read the OCI layout"
    skopeo inspect "oci-archive:$IMG_WORK/$IMG_NAME.oci.tar:latest" >/dev/null \
        || img_die "skopeo cannot read the oci-archive"
    umoci unpack --image "$IMG_WORK/oci:latest" "$IMG_WORK/verify" >/dev/null \
        || img_die "umoci cannot unpack the OCI layout"
    (cd "$rootfs" && find . | LC_ALL=C sort) >"$IMG_WORK/want"
    (cd "$IMG_WORK/verify/rootfs" && find . | LC_ALL=C sort) >"$IMG_WORK/got"
    diff -q "$IMG_WORK/want" "$IMG_WORK/got" >/dev/null \
        || img_die "umoci's unpacked tree differs from the source tree: $(diff "$IMG_WORK/want" "$IMG_WORK/got" | head -3 | tr '\n' ' ')"
    rm -rf --one-file-system "$IMG_WORK/verify"
}

# img_commit: replaces the cached image by the new one (each part by rename,
# so no reader ever sees a half-written layout), then writes the stamp.
img_commit() {
    mkdir -p "$IMG_WORK/old"
    [ -e "$IMG_OUT/oci" ] && mv "$IMG_OUT/oci" "$IMG_WORK/old/oci"
    mv "$IMG_WORK/oci" "$IMG_OUT/oci"
    mv "$IMG_WORK/$IMG_NAME.oci.tar" "$IMG_OUT/$IMG_NAME.oci.tar"
    echo "$IMG_STAMP" >"$IMG_WORK/stamp"
    mv "$IMG_WORK/stamp" "$IMG_OUT/stamp"
    awk -v s="$IMG_START" -v e="$(date +%s.%N)" -v n="$IMG_NAME" -v o="$IMG_OUT" \
        'BEGIN { printf "%s: built %s/oci and %s.oci.tar in %.1f s\n", n, o, n, e - s }'
}
