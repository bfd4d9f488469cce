#!/usr/bin/python3
"""One boot cycle of a container manager, timed in two parts.

    bootcycle.py [--record FILE] [--timeout S] [--stop-signal SIG] -- CMD...

Runs CMD with NOTIFY_SOCKET pointing at a socket of ours (what
`systemd-nspawn --notify-ready=yes` and systemd's Type=notify use), waits for
READY=1 (boot), then sends the stop signal to CMD and waits for it to exit
(poweroff). Appends {"boot": s, "poweroff": s} as one JSON line to FILE, so
hyperfine can time the whole cycle while the harness still reports both parts.
Exit status: CMD's, or 1 (with one line on stderr) when READY=1 never came.

With --cgroup, CMD starts in a fresh cgroup of its own on the cgroup2
hierarchy, removed (with anything left in it) when CMD is done: a manager
that keeps its unit (nspawn --keep-unit) builds the machine's cgroup tree
under its own cgroup, and two machines with different uid ranges cannot share
one (systemd fails with "Failed to create /init.scope control group").
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def cgroup2_mount() -> str:
    """Where cgroup2 is mounted (the file system type follows the "-")."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                return fields[4]
    raise SystemExit("bootcycle: no cgroup2 mount in /proc/self/mountinfo")


def remove_cgroup(path: str) -> None:
    """Kills what is left in the cgroup tree, then removes it bottom-up."""
    if not os.path.isdir(path):
        return
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
    except OSError:
        pass
    for _ in range(100):
        try:
            for root, dirs, _files in os.walk(path, topdown=False):
                os.rmdir(root)
            return
        except OSError:
            time.sleep(0.05)  # killed processes may still be exiting
    print(f"bootcycle: could not remove cgroup {path}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--stop-signal", default="SIGTERM")
    ap.add_argument("--log", default=os.devnull, help="CMD's output goes here")
    ap.add_argument("--cgroup", action="store_true", help="run CMD in a fresh cgroup")
    ap.add_argument("cmd", nargs="+")
    args = ap.parse_args()
    stop = signal.Signals[args.stop_signal] if not args.stop_signal.startswith("SIGRTMIN") \
        else signal.SIGRTMIN + int(args.stop_signal[8:] or 0)

    cgroup = None
    if args.cgroup:
        cgroup = os.path.join(cgroup2_mount(), f"ipactr-bench-boot.{os.getpid()}")
        os.mkdir(cgroup)
    try:
        return cycle(args, stop, cgroup)
    finally:
        if cgroup:
            remove_cgroup(cgroup)


def cycle(args, stop, cgroup) -> int:
    def enter_cgroup():
        # Runs in the forked child before exec: "0" moves the writer itself.
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")

    with tempfile.TemporaryDirectory(prefix="bootcycle.") as tmp:
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        env = dict(os.environ, NOTIFY_SOCKET=path)
        with open(args.log, "ab") as log:
            t0 = time.monotonic()
            child = subprocess.Popen(args.cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log,
                                     preexec_fn=enter_cgroup if cgroup else None)
        ready = None
        deadline = t0 + args.timeout
        while ready is None and child.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(min(left, 0.2))
            try:
                msg = sock.recv(4096)
            except socket.timeout:
                continue
            if b"READY=1" in msg.split(b"\n"):
                ready = time.monotonic()
        if ready is None:
            # Never leave the manager running: it owns the container.
            if child.poll() is None:
                child.kill()
                child.wait()
            print(f"bootcycle: no READY=1 from {args.cmd[0]} "
                  f"(exit status {child.returncode}; output in {args.log})", file=sys.stderr)
            return 1
        child.send_signal(stop)
        try:
            status = child.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            print(f"bootcycle: {args.cmd[0]} did not stop within {args.timeout} s", file=sys.stderr)
            return 1
        done = time.monotonic()
    if args.record:
        with open(args.record, "a") as f:
            f.write(json.dumps({"boot": ready - t0, "poweroff": done - ready}) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
