#!/bin/bash
# The FreeIPA-shaped image under systemd-nspawn, end to end (the benchmarks'
# peer for `ipactr boot freeipa`):
#   1. first boot on an empty /data (install) until check.sh passes, poweroff
#      (exit status 0 expected);
#   2. second boot on the same /data (no install) until check.sh passes,
#      poweroff; then the list of paths the two boots changed in the root file
#      system outside /data, /run and /tmp must be empty;
#   3. third boot on the same /data with --read-only, checks, poweroff;
#   4. an empty /data with a bad realm option: exit status 2 expected;
#   5. a hostname that is not fully qualified: exit status 2 expected;
#   6. an install killed halfway (during dscreate), then a boot of that /data:
#      it installs again from scratch and the checks pass.
# Boots 1 and 2 run on a private copy of the image's rootfs (the cache stays as
# built); 3-6 boot the cached rootfs itself, read-only.
#
# usage: nspawn-smoke.sh [--keep]   (--keep leaves the work directory)
# Prints "timing NAME SECONDS" and "memory NAME MIB" lines for the benchmarks and exits non-zero when
# any step fails. Needs root and systemd-nspawn; the host's PID 1 need not be
# systemd (the machine is not registered, and gets a cgroup made here).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${IPACTR_IMAGE_CACHE:-/var/cache/ipactr/images}/freeipa
FQDN=ipa.example.test
OPTS="-r EXAMPLE.TEST --domain example.test"
export PASSWORD=${PASSWORD:-Secret.123-ipactr}
keep=0
[ "${1:-}" = --keep ] && keep=1

die() { echo "nspawn-smoke: FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
[ "$(id -u)" = 0 ] || die "must run as root"
command -v systemd-nspawn >/dev/null || die "systemd-nspawn is missing (run scripts/deps.sh)"

"$HERE/build.sh"

# The cgroup2 mount and, on a hybrid host, systemd's named v1 hierarchy: each
# machine gets a cgroup of its own in both (two machines in one cgroup fail).
v2=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
v1=$(awk '$9 == "cgroup" && $NF ~ /(^|,)name=systemd(,|$)/ {print $5; exit}' /proc/self/mountinfo)
[ -n "$v2" ] || die "no cgroup2 mount in /proc/self/mountinfo"

work=$(mktemp -d /var/tmp/ipactr-nspawn-smoke.XXXXXX)
nspawn_pid='' leader='' cgroups=()
cleanup() {
    local status=$?
    set +e
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        [ -n "$leader" ] && kill -RTMIN+4 "$leader" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nspawn_pid" 2>/dev/null
        wait "$nspawn_pid" 2>/dev/null
    fi
    for cg in "${cgroups[@]}"; do
        # Children first; a cgroup with processes left is reported, not hidden.
        find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
        [ ! -d "$cg" ] || echo "nspawn-smoke: could not remove cgroup $cg" >&2
    done
    if [ $keep = 1 ]; then echo "nspawn-smoke: work directory kept: $work"
    else rm -rf --one-file-system "$work"; fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME ROOT DATA HOSTNAME OPTIONS [NSPAWN_ARGS...]: boots in the
# background; sets nspawn_pid, leader, t_start.
start() {
    local name=$1 root=$2 data=$3 host=$4 opts=$5 cg
    shift 5
    cg=ipactr-nspawn-smoke-$$-$name
    mkdir "$v2/$cg"; cgroups+=("$v2/$cg")
    if [ -n "$v1" ]; then mkdir "$v1/$cg"; cgroups+=("$v1/$cg"); fi
    t_start=$(now)
    (
        echo "$BASHPID" >"$v2/$cg/cgroup.procs"
        [ -z "$v1" ] || echo "$BASHPID" >"$v1/$cg/cgroup.procs"
        SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 exec systemd-nspawn --quiet --boot \
            --directory="$root" --private-users=pick --private-users-ownership=auto \
            --private-network --hostname="$host" --bind="$data:/data:idmap" \
            --register=no --keep-unit --console=read-only --link-journal=no \
            --setenv=PASSWORD="$PASSWORD" --setenv=IPA_SERVER_INSTALL_OPTS="$opts" "$@"
    ) >"$work/$name.log" 2>&1 </dev/null &
    nspawn_pid=$!
    leader=''
    # PID 1 of the machine: the descendant of nspawn whose pid inside is 1.
    for _ in $(seq 300); do
        for p in $(pgrep -P "$nspawn_pid"; for c in $(pgrep -P "$nspawn_pid"); do pgrep -P "$c"; done); do
            if awk '/^NSpid:/ {exit !($NF == 1)}' "/proc/$p/status" 2>/dev/null; then leader=$p; break 2; fi
        done
        kill -0 "$nspawn_pid" 2>/dev/null || break
        sleep 0.02
    done
    [ -n "$leader" ] || { tail -n 20 "$work/$name.log" >&2; die "$name: the machine's PID 1 did not appear"; }
    echo "nspawn-smoke: $name: PID 1 is $leader ($(since "$t_start") s after launch)"
}

# wait_exit NAME: sets status to nspawn's exit status.
wait_exit() {
    status=0
    wait "$nspawn_pid" || status=$?
    nspawn_pid='' leader=''
}

# boot_and_check NAME ROOT DATA [NSPAWN_ARGS...]
boot_and_check() {
    local name=$1 root=$2 data=$3
    shift 3
    start "$name" "$root" "$data" "$FQDN" "$OPTS" "$@"
    # The checks run while the machine is watched: a machine that powers
    # itself off (a failed install) ends the wait at once.
    CHECK_RETRIES=50 "$HERE/check.sh" "$leader" >"$work/$name.check" 2>&1 &
    local check_pid=$! check_status=0
    while kill -0 "$check_pid" 2>/dev/null; do
        if ! kill -0 "$nspawn_pid" 2>/dev/null; then
            kill "$check_pid" 2>/dev/null
            wait_exit
            cat "$work/$name.check"; tail -n 30 "$work/$name.log"
            die "$name: the machine exited (status $status) before the checks passed"
        fi
        sleep 0.05
    done
    wait "$check_pid" || check_status=$?
    [ $check_status = 0 ] || { cat "$work/$name.check"; tail -n 30 "$work/$name.log"; die "$name: checks failed"; }
    echo "timing ${name}_to_checks_passing $(since "$t_start")"
    sed 's/^/    /' "$work/$name.check"
    # Steady state: resident memory of everything in the machine.
    echo "memory ${name}_rss_mib $(nsenter -t "$leader" -m -p ps -e -o rss= | awk '{s += $1} END {printf "%.0f", s / 1024}') processes $(nsenter -t "$leader" -m -p ps -e --no-headers | wc -l)"
    local t_stop
    t_stop=$(now)
    kill -RTMIN+4 "$leader"
    wait_exit
    echo "timing ${name}_shutdown $(since "$t_stop")"
    [ "$status" = 0 ] || { tail -n 30 "$work/$name.log"; die "$name: poweroff exit status $status, want 0"; }
}

# 1 + 2: a private copy of the rootfs; a marker to find what the boots change.
cp -a "$CACHE/rootfs" "$work/rootfs"
mkdir -m 0700 "$work/data"
touch "$work/before"
sleep 1  # the marker must be older than anything the boots write
boot_and_check first_boot "$work/rootfs" "$work/data"
grep -q '# .* mode install$' "$work/first_boot.check" || die "first boot did not install"
boot_and_check second_boot "$work/rootfs" "$work/data"
grep -q '# .* mode start$' "$work/second_boot.check" || die "second boot did not skip the install"
# /etc/machine-id is the exception: systemd commits the id it got from the
# container manager to an empty, writable /etc/machine-id (on a read-only root
# it mounts it instead).
changed=$(cd "$work/rootfs" && find . -xdev -newer "$work/before" ! -path ./etc/machine-id \
    ! -path ./data ! -path './data/*' ! -path ./run ! -path './run/*' ! -path ./tmp ! -path './tmp/*' | LC_ALL=C sort)
[ -z "$changed" ] || die "the boots changed the root file system outside /data, /run, /tmp: $(echo "$changed" | head -n 10 | xargs)"
echo "nspawn-smoke: nothing outside /data, /run and /tmp changed in the root file system"

# 3: the cached image itself, read-only.
boot_and_check readonly_boot "$CACHE/rootfs" "$work/data" --read-only
grep -q '# .* mode start$' "$work/readonly_boot.check" || die "read-only boot did not skip the install"

# 4 + 5: a failed install powers the machine off with status 2.
mkdir -m 0700 "$work/data-bad-realm" "$work/data-bad-host"
start bad_realm "$CACHE/rootfs" "$work/data-bad-realm" "$FQDN" "-r bad_realm! --domain example.test" --read-only
wait_exit
[ "$status" = 2 ] || { tail -n 20 "$work/bad_realm.log"; die "bad realm: exit status $status, want 2"; }
echo "nspawn-smoke: bad realm option: exit status 2 after $(since "$t_start") s"
start bad_host "$CACHE/rootfs" "$work/data-bad-host" ipa "$OPTS" --read-only
wait_exit
[ "$status" = 2 ] || { tail -n 20 "$work/bad_host.log"; die "short hostname: exit status $status, want 2"; }
echo "nspawn-smoke: hostname without a domain: exit status 2 after $(since "$t_start") s"

# 6: an install cut short (PID 1 killed while dscreate runs, like a power
# cut) is redone from the start on the next boot of the same /data.
mkdir -m 0700 "$work/data-cut"
start cut_install "$CACHE/rootfs" "$work/data-cut" "$FQDN" "$OPTS" --read-only
for _ in $(seq 600); do
    compgen -G "$work/data-cut/var/lib/dirsrv/slapd-*" >/dev/null && break
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.05
done
compgen -G "$work/data-cut/var/lib/dirsrv/slapd-*" >/dev/null || die "cut_install: dscreate never started"
kill -KILL "$leader"
wait_exit
echo "nspawn-smoke: install cut short during dscreate (nspawn exit status $status)"
boot_and_check after_cut "$CACHE/rootfs" "$work/data-cut" --read-only
grep -q '# .* mode install$' "$work/after_cut.check" || die "the boot after the cut did not install"
echo "nspawn-smoke: PASS"
