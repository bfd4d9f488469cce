#!/bin/bash
# Benchmarks ipactr against its peers on this machine, in one run, with
# hyperfine: prints each contender's median and its ratio to the first
# (baseline) contender, and keeps hyperfine's JSON under
# $BENCH_OUT/<UTC time>/ (default /var/tmp/ipactr-bench; "latest" links to it).
#
#   bench/run.sh [NAME…]      NAME: unpack runtime containerd boot freeipa (default: all)
#
# Environment: BENCH_RUNS (runs per contender; each benchmark has a default),
# IPACTR_BIN_DIR (default .build/release: build with `swift build -c release
# --static-swift-stdlib`, as scripts/setup.sh does),
# IPACTR_TEST_DEBIAN_OCI / IPACTR_TEST_BUSYBOX_OCI (default: the images/ cache).
# A contender whose binary or verb does not exist yet is skipped with a note;
# no number is ever made up for it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
BENCH_OUT=${BENCH_OUT:-/var/tmp/ipactr-bench}
IPACTR_BIN_DIR=${IPACTR_BIN_DIR:-$repo/.build/release}
DEBIAN_OCI=${IPACTR_TEST_DEBIAN_OCI:-/var/cache/ipactr/images/debian/oci}
BUSYBOX_OCI=${IPACTR_TEST_BUSYBOX_OCI:-/var/cache/ipactr/images/busybox/oci}
ALL=(unpack runtime containerd boot freeipa)

die() { echo "bench: $*" >&2; exit 1; }
note() { echo "  note: $*"; }

case ${1:-} in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
names=("$@")
((${#names[@]})) || names=("${ALL[@]}")
for n in "${names[@]}"; do
    case " ${ALL[*]} " in *" $n "*) ;; *) die "unknown benchmark '$n' (known: ${ALL[*]})" ;; esac
done
[ "$(id -u)" = 0 ] || die "must run as root (containers, mounts, user namespaces)"
for tool in hyperfine jq; do
    command -v "$tool" >/dev/null || die "missing '$tool' (run scripts/deps.sh)"
done

out=$BENCH_OUT/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
ln -sfn "$out" "$BENCH_OUT/latest"
work=$(mktemp -d "$BENCH_OUT/work.XXXXXX")
# Containers with a user namespace must be able to reach their rootfs in here.
chmod 0755 "$work"
podman_dir=""
cleanup() {
    set +e
    for d in "$work"/ipactrd-*; do [ -d "$d" ] && "$repo/scripts/private-ipactrd.sh" stop "$d"; done
    [ -n "$podman_dir" ] && { podman_teardown "$podman_dir"; rm -rf --one-file-system "$podman_dir"; }
    findmnt -rn -o TARGET | grep -F "$work/" | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every ipactr verb goes through ipactrd: a private one (own bus) per state
# root, for the rest of the run; exports DBUS_SYSTEM_BUS_ADDRESS for it.
start_ipactrd() {
    local root=$1 name=$2
    DBUS_SYSTEM_BUS_ADDRESS=$("$repo/scripts/private-ipactrd.sh" start "$IPACTR_BIN_DIR" "$root" "$work/ipactrd-$name") \
        || die "cannot start ipactrd for $root"
    export DBUS_SYSTEM_BUS_ADDRESS
}

# The digest-named blob of an OCI layout's largest layer.
largest_layer() {
    local layout=$1 manifest
    manifest=$(jq -r '.manifests[0].digest' "$layout/index.json")
    echo "$layout/blobs/sha256/$(jq -r '.layers | max_by(.size) | .digest' \
        "$layout/blobs/sha256/${manifest#sha256:}" | cut -d: -f2)"
}

# ipactr_has BINARY VERB: the binary exists and knows the verb (for an
# unknown verb, argument-parser prints the root command's help, exit 0).
ipactr_has() {
    [ -x "$IPACTR_BIN_DIR/$1" ] || return 1
    local help
    help=$("$IPACTR_BIN_DIR/$1" "$2" --help 2>/dev/null) || return 1
    grep -q "^USAGE: $1 $2\b" <<<"$help"
}

# run_hyperfine NAME RUNS WARMUP [-n LABEL -p PREPARE CMD]…: one hyperfine
# run over all contenders, then the summary table. Runs under ${WRAP[@]}.
WRAP=()
run_hyperfine() {
    local name=$1 runs=${BENCH_RUNS:-$2} warmup=$3
    shift 3
    local args=()
    while (($#)); do
        # One try first: a contender that fails here is left out with its
        # error, and the others are still measured.
        if "${WRAP[@]}" bash -c "$4 && $5" >"$work/try.log" 2>&1; then
            args+=(--command-name "$2" --prepare "$4" "$5")
        else
            note "$2 skipped: it fails here: $(grep -v '^$' "$work/try.log" | tail -n 1)"
        fi
        shift 5
    done
    ((${#args[@]})) || { note "$name: no contender works here"; return 0; }
    "${WRAP[@]}" hyperfine --style basic --runs "$runs" --warmup "$warmup" \
        --export-json "$out/$name.json" "${args[@]}" >"$out/$name.log" 2>&1 \
        || { tail -n 20 "$out/$name.log" >&2; die "$name: a contender failed (log: $out/$name.log)"; }
    summarize "$out/$name.json"
}

# Medians and ratios to the first contender, from hyperfine's JSON.
summarize() {
    jq -r '.results as $r | $r[0].median as $b | $r[] |
        [.command, .median, .stddev, .median / $b] | @tsv' "$1" |
    awk -F'\t' '{ printf "  %-42s median %9.4f s  (± %.4f)  %6.2f×\n", $1, $2, $3, $4 }'
}

bench_unpack() {
    echo "== unpack: one gzip layer of the debian image"
    [ -f "$DEBIAN_OCI/index.json" ] || die "no debian OCI layout at $DEBIAN_OCI (run images/debian/build.sh)"
    local layer w=$work/unpack
    layer=$(largest_layer "$DEBIAN_OCI")
    mkdir -p "$w"
    echo "  layer $(basename "$layer" | cut -c1-12): $(($(stat -c %s "$layer") / 1024)) KiB gzip," \
        "$(($(gzip -dc "$layer" | wc -c) / 1024)) KiB tar, $(gzip -dc "$layer" | tar -t | wc -l) entries"
    local c=(
        -n "tar -xzf" -p "rm -rf $w/tar && mkdir $w/tar" "tar -C $w/tar -xzf $layer"
        -n "umoci unpack" -p "rm -rf $w/umoci" "umoci unpack --image $DEBIAN_OCI:latest $w/umoci"
        -n "gzip -dc (decompression only)" -p "true" "gzip -dc $layer >/dev/null"
    )
    if ipactr_has ipactr import; then
        # Through ipactrd, as users run it (its worker unpacks); the store is emptied between runs.
        start_ipactrd "$w/store" unpack
        c+=(-n "ipactr import" -p "$IPACTR_BIN_DIR/ipactr rmi debian >/dev/null 2>&1; $IPACTR_BIN_DIR/ipactr image prune >/dev/null"
            "$IPACTR_BIN_DIR/ipactr import $DEBIAN_OCI debian")
    else
        note "ipactr import skipped: $IPACTR_BIN_DIR/ipactr is missing or has no 'import' verb"
    fi
    run_hyperfine unpack 5 1 "${c[@]}"
}

# A bundle running /bin/true from the busybox image, on a read-only shared
# rootfs, with the default config of `runc spec`; with USERNS=1 in a user
# namespace mapping 0 to a range no machine range uses (systemd's container
# range ends below 2^31).
make_bundle() {
    local dir=$1 userns=$2
    mkdir -p "$dir"
    (cd "$dir" && runc spec)
    jq --arg root "$work/runtime/src/rootfs" --argjson userns "$userns" '
        .process.terminal = false | .process.args = ["/bin/true"] |
        .root = {path: $root, readonly: true} |
        if $userns == 1 then
            .linux.namespaces += [{type: "user"}] |
            .linux.uidMappings = [{containerID: 0, hostID: 2147483648, size: 65536}] |
            .linux.gidMappings = [{containerID: 0, hostID: 2147483648, size: 65536}]
        else . end' "$dir/config.json" >"$dir/config.json.new"
    mv "$dir/config.json.new" "$dir/config.json"
}

# crun (1.8) refuses every container on a hybrid cgroup host whose cgroup2
# mount has any controller, even with --cgroup-manager=disabled: it checks
# /sys/fs/cgroup/unified/cgroup.controllers before it looks at the manager.
# So on such a host the whole runtime benchmark (every contender alike) runs
# in a private mount namespace where that file reads empty; nothing else in
# the host's cgroup setup changes, and runc and ipactr-runtime see the same.
crun_wrap() {
    local v2
    # The file system type is the field after the "-" separator.
    v2=$(awk '{ for (i = 7; i < NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' /proc/self/mountinfo)
    WRAP=()
    if [ "$v2" = /sys/fs/cgroup/unified ] && [ -n "$(cat "$v2/cgroup.controllers")" ]; then
        : >"$work/empty"
        WRAP=(unshare --mount --propagation private
              sh -c 'mount --bind "$0" /sys/fs/cgroup/unified/cgroup.controllers && exec "$@"' "$work/empty")
        note "hybrid cgroups with v2 controllers ($(cat "$v2/cgroup.controllers")): contenders run where $v2/cgroup.controllers reads empty, for crun"
    fi
}

bench_runtime() {
    [ -f "$BUSYBOX_OCI/index.json" ] || die "no busybox OCI layout at $BUSYBOX_OCI (run images/busybox/build.sh)"
    local w=$work/runtime
    mkdir -p "$w"
    umoci unpack --image "$BUSYBOX_OCI:latest" "$w/src" >/dev/null
    chmod 0755 "$w/src"  # umoci makes it 0700: a user namespace's root must pass
    crun_wrap
    local has_ipactr=0
    ipactr_has ipactr-runtime create && has_ipactr=1
    for userns in 0 1; do
        local name=runtime label=""
        ((userns)) && name=runtime-userns label=" +userns"
        echo "== $name: create + start + delete of /bin/true (busybox bundle$label)"
        make_bundle "$w/bundle$userns" $userns
        local b=$w/bundle$userns id=bench$userns
        local c=(
            -n "crun --cgroup-manager=disabled$label" -p true
            "crun --root $w/crun --cgroup-manager=disabled create --bundle $b $id && crun --root $w/crun start $id && crun --root $w/crun delete --force $id"
            -n "runc$label" -p true
            "runc --root $w/runc create --bundle $b $id && runc --root $w/runc start $id && runc --root $w/runc delete --force $id"
        )
        if ((has_ipactr)); then
            # Like with like: without cgroups against crun (which cannot
            # manage them here), with cgroupfs against runc.
            local d="$IPACTR_BIN_DIR/ipactr-runtime --root $w/ipactr-disabled --cgroup-manager=disabled"
            c+=(-n "ipactr-runtime --cgroup-manager=disabled$label" -p true "$d create --bundle $b $id && $d start $id && $d delete --force $id")
            local r="$IPACTR_BIN_DIR/ipactr-runtime --root $w/ipactr"
            c+=(-n "ipactr-runtime$label" -p true "$r create --bundle $b $id && $r start $id && $r delete --force $id")
        else
            note "ipactr-runtime skipped: $IPACTR_BIN_DIR/ipactr-runtime is missing or has no 'create' verb"
        fi
        run_hyperfine $name 30 3 "${c[@]}"
        # A contender that failed half-way may have left its container.
        crun --root "$w/crun" delete --force $id >/dev/null 2>&1 || true
        runc --root "$w/runc" delete --force $id >/dev/null 2>&1 || true
        if ((has_ipactr)); then
            "$IPACTR_BIN_DIR/ipactr-runtime" --root "$w/ipactr" delete --force $id >/dev/null 2>&1 || true
            "$IPACTR_BIN_DIR/ipactr-runtime" --root "$w/ipactr-disabled" delete --force $id >/dev/null 2>&1 || true
        fi
    done
    WRAP=()
}

# One private containerd (socket, root, state under $work; CRI off) for
# bench_containerd; stop_containerd also runs on exit while it is up.
ctrd_pid=
ctrd_ns=ipactr-bench
stop_containerd() {
    [ -n "$ctrd_pid" ] || return 0
    kill "$ctrd_pid" 2>/dev/null || true
    wait "$ctrd_pid" 2>/dev/null || true
    ctrd_pid=
    # The runtimes remove each container's cgroup; /<namespace> is containerd's.
    local d
    for d in /sys/fs/cgroup/*/"$ctrd_ns"; do
        if [ -d "$d" ]; then rmdir "$d" 2>/dev/null || true; fi
    done
    rm -rf "/run/containerd/runc/$ctrd_ns"
}

bench_containerd() {
    echo "== containerd: ctr run --rm of /bin/true from the busybox image (containerd's runc shim drives the runtime)"
    local archive=$BUSYBOX_OCI/../busybox.oci.tar w=$work/containerd
    [ -f "$archive" ] || die "no busybox oci-archive at $archive (run images/busybox/build.sh)"
    command -v containerd >/dev/null && command -v ctr >/dev/null || { note "containerd skipped: containerd or ctr is missing"; return 0; }
    mkdir -p "$w"
    cat >"$w/config.toml" <<EOF
version = 2
root = "$w/root"
state = "$w/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$w/containerd.sock"
[ttrpc]
  address = "$w/containerd.sock.ttrpc"
[debug]
  address = "$w/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$w/opt"
EOF
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin containerd --config "$w/config.toml" >"$out/containerd.log" 2>&1 &
    ctrd_pid=$!
    trap 'stop_containerd; cleanup' EXIT
    local ctr="ctr -a $w/containerd.sock -n $ctrd_ns" i
    for ((i = 0; i < 100; i++)); do $ctr version >/dev/null 2>&1 && break; sleep 0.1; done
    $ctr images import --base-name busybox "$archive" >/dev/null
    # Each run makes and removes its container: one id per contender is enough.
    local c=(-n "runc" -p true "$ctr run --rm --runc-binary $(command -v runc) busybox:latest b-runc /bin/true")
    if ipactr_has ipactr-runtime create; then
        c+=(-n "ipactr-runtime" -p true "$ctr run --rm --runc-binary $IPACTR_BIN_DIR/ipactr-runtime busybox:latest b-ipactr /bin/true")
    else
        note "ipactr-runtime skipped: $IPACTR_BIN_DIR/ipactr-runtime is missing or has no 'create' verb"
    fi
    note "crun is not a contender: 1.8 refuses this hybrid cgroup layout (containerd's spec asks for cgroup limits)"
    run_hyperfine containerd 20 2 "${c[@]}"
    stop_containerd
    trap cleanup EXIT
}

bench_boot() {
    echo "== boot: Debian 12 systemd image to READY=1, then poweroff (SIGRTMIN+4)"
    [ -f "$DEBIAN_OCI/index.json" ] || die "no debian OCI layout at $DEBIAN_OCI (run images/debian/build.sh)"
    local w=$work/boot
    mkdir -p "$w/pristine"
    tar -C "$w/pristine" -xzf "$(largest_layer "$DEBIAN_OCI")"
    # Each boot starts from a fresh copy (a boot writes the machine-id,
    # journal…); the copy is made by --prepare, outside the timing. No
    # machined or host systemd is assumed: --register=no --keep-unit.
    # On a hybrid cgroup host, nspawn is told to give the machine cgroup v2.
    local c=(
        -n "systemd-nspawn --private-users=pick" -p "rm -rf $w/root && cp -a $w/pristine $w/root"
        "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 $repo/bench/lib/bootcycle.py --cgroup --record $w/nspawn.jsonl --log $out/boot-nspawn.console -- systemd-nspawn -q -D $w/root --private-users=pick --notify-ready=yes --register=no --keep-unit --kill-signal=SIGRTMIN+4 -b"
    )
    # ipactr: a new machine each run (its upper dir is new and empty; the
    # shared layers were unpacked once by `import`, outside the timing).
    local has_ipactr=0
    if ipactr_has ipactr boot; then
        has_ipactr=1
        start_ipactrd "$w/ipactr-root" boot
        "$IPACTR_BIN_DIR/ipactr" import "$DEBIAN_OCI" debian >/dev/null
        c+=(-n "ipactr boot" -p "$IPACTR_BIN_DIR/ipactr rm --force bench >/dev/null 2>&1 || true"
            "$repo/bench/lib/ipactr-bootcycle.sh $IPACTR_BIN_DIR/ipactr $w/ipactr.jsonl")
    else
        note "ipactr boot is not a contender: $IPACTR_BIN_DIR/ipactr has no boot verb"
    fi
    # podman --systemd=always on the same image, with runc and with
    # ipactr-runtime: `podman run --sdnotify=container` in the foreground
    # (podman relays the container's READY=1 itself, through a socket it
    # binds at /run/notify), SIGRTMIN+4 to podman run (its signal proxy
    # passes it to systemd), until podman run exits.
    local podman_runtimes=()
    if command -v podman >/dev/null && command -v runc >/dev/null; then
        # podman refuses a runroot path longer than 50 characters: a short directory.
        podman_dir=$(mktemp -d /var/tmp/ipb.XXXXXX)
        podman_setup "$podman_dir"
        podman_runtimes+=("runc:$(command -v runc)")
        if ipactr_has ipactr-runtime create; then
            podman_runtimes+=("ipactr:$IPACTR_BIN_DIR/ipactr-runtime")
        else
            note "podman with ipactr-runtime is not a contender: $IPACTR_BIN_DIR/ipactr-runtime is missing"
        fi
        local pr
        for pr in "${podman_runtimes[@]}"; do
            local tag=${pr%%:*} bin=${pr#*:} pm
            pm="$repo/bench/lib/podman.sh $podman_dir $bin"
            c+=(-n "podman --systemd=always ($tag)" -p "$pm rm --force --time 0 bench >/dev/null 2>&1 || true"
                "$repo/bench/lib/bootcycle.py --stop-signal SIGRTMIN+4 --record $w/podman-$tag.jsonl --log $out/boot-podman-$tag.console -- $pm run --name bench --sdnotify=container --pull never --network none --cgroup-parent /ipactr-bench-podman --systemd=always localhost/debian /sbin/init")
        done
    else
        note "podman is not a contender: podman or runc is missing"
    fi
    run_hyperfine boot 10 1 "${c[@]}"
    if ((has_ipactr)); then
        "$IPACTR_BIN_DIR/ipactr" rm --force bench >/dev/null 2>&1 || true
    fi
    if [ -n "$podman_dir" ]; then
        podman_teardown "$podman_dir"
        rm -rf --one-file-system "$podman_dir"
        podman_dir=""
    fi
    # hyperfine timed the whole cycle; the helpers timed its two parts.
    # The last lines are hyperfine's timed runs (before them: the try, the warmup).
    local who
    for who in nspawn ipactr podman-runc podman-ipactr; do
        [ -f "$w/$who.jsonl" ] || continue
        jq -s --argjson n "${BENCH_RUNS:-10}" '.[-$n:] | {boot_median: (map(.boot) | sort | .[length / 2 | floor]),
                poweroff_median: (map(.poweroff) | sort | .[length / 2 | floor]), runs: .}' \
            "$w/$who.jsonl" >"$out/boot-$who-split.json"
        jq -r --arg who "$who" '"  \($who): boot to READY=1 median \(.boot_median * 1000 | round) ms, poweroff median \(.poweroff_median * 1000 | round) ms (\(.runs | length) runs)"' \
            "$out/boot-$who-split.json"
    done
}

# A private podman store under DIR (config files as bench/lib/podman.sh
# expects them) holding the debian image as localhost/debian; untimed.
podman_setup() {
    local dir=$1
    mkdir -p "$dir"
    chmod 0755 "$dir"
    # podman's default rlimits (nofile 1048576, nproc 4194304) are above
    # this machine's hard limits (nofile 20000; root lacks CAP_SYS_RESOURCE):
    # runc and ipactr-runtime alike fail to apply them. Values within them,
    # the same for both runtimes.
    cat >"$dir/containers.conf" <<EOF2
[containers]
default_ulimits = ["nofile=1024:20000", "nproc=16384:16384"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF2
    printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/root"\nrunroot = "%s/runroot"\n' "$dir" "$dir" >"$dir/storage.conf"
    echo 'unqualified-search-registries = []' >"$dir/registries.conf"
    local pm="$repo/bench/lib/podman.sh $dir runc" ref
    ref=$($pm load -q -i "${DEBIAN_OCI%/oci}/debian.oci.tar" | awk '/^Loaded image/ { print $NF }')
    $pm tag "$ref" localhost/debian:latest
}

# Removes the podman store, its mounts and the containers' cgroup parent.
podman_teardown() {
    local dir=$1 pm="$repo/bench/lib/podman.sh $1 runc" m
    $pm rm --all --force --time 0 >/dev/null 2>&1 || true
    $pm system reset --force >/dev/null 2>&1 || true
    { findmnt -rn -o TARGET | grep -F "$dir/" || true; } | sort -r | while read -r m; do umount -l "$m"; done
    for m in $(awk '{ for (i = 7; i < NF; i++) if ($i == "-") { if ($(i + 1) ~ /^cgroup2?$/) print $5; break } }' /proc/self/mountinfo); do
        [ -d "$m/ipactr-bench-podman" ] && find "$m/ipactr-bench-podman" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    return 0
}

bench_freeipa() {
    echo "== freeipa: the FreeIPA-shaped image, first boot (install) and second boot (same /data) to READY=1"
    local oci=${IPACTR_TEST_FREEIPA_OCI:-/var/cache/ipactr/images/freeipa/oci}
    local rootfs=${oci%/oci}/rootfs
    [ -f "$oci/index.json" ] && [ -d "$rootfs" ] || die "no FreeIPA image at $oci (run images/freeipa/build.sh)"
    local w=$work/freeipa runs=${BENCH_RUNS:-3} i who
    mkdir -p "$w/nspawn" "$w/ipactr"
    chmod 0755 "$w" "$w/nspawn" "$w/ipactr"
    local contenders=(nspawn)
    if ipactr_has ipactr boot; then
        start_ipactrd "$w/ipactr-root" freeipa
        "$IPACTR_BIN_DIR/ipactr" import "$oci" freeipa >/dev/null
        contenders+=(ipactr)
    else
        note "ipactr boot is not a contender: $IPACTR_BIN_DIR/ipactr has no boot verb"
    fi
    # Alternate the contenders run by run, so load changes hit both alike.
    for ((i = 0; i < runs; i++)); do
        for who in "${contenders[@]}"; do
            if [ "$who" = nspawn ]; then
                "$repo/bench/lib/freeipa-cycle.sh" nspawn "$rootfs" "$w/nspawn" "$out/freeipa-nspawn.jsonl"
            else
                "$repo/bench/lib/freeipa-cycle.sh" ipactr "$IPACTR_BIN_DIR/ipactr" "$w/ipactr" "$out/freeipa-ipactr.jsonl"
            fi
        done
    done
    for who in "${contenders[@]}"; do
        jq -rs --arg who "$who" 'def med(f): map(f) | sort | .[length / 2 | floor];
            "  \($who): first boot \(med(.first)) s, second boot \(med(.second)) s, poweroff \(med(.poweroff)) s (medians of \(length))"' \
            "$out/freeipa-$who.jsonl"
    done
    if ((${#contenders[@]} == 2)); then
        jq -rn --slurpfile a "$out/freeipa-nspawn.jsonl" --slurpfile b "$out/freeipa-ipactr.jsonl" '
            def med(k): map(.[k]) | sort | .[length / 2 | floor];
            def ratio(k): ($b | med(k)) / ($a | med(k)) * 100 | round / 100;
            "  ipactr / nspawn: first boot \(ratio("first"))×, second boot \(ratio("second"))×, poweroff \(ratio("poweroff"))×"'
    fi
}

echo "bench: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); results in $out"
for n in "${names[@]}"; do
    "bench_$n"
done
