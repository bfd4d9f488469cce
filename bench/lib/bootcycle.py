#!/usr/bin/python3
"""One boot cycle of a container manager, timed in two parts.

    bootcycle.py [--record FILE] [--timeout S] [--stop-signal SIG] -- CMD...

Runs CMD with NOTIFY_SOCKET pointing at a socket of ours (what
`systemd-nspawn --notify-ready=yes` and systemd's Type=notify use), waits for
READY=1 (boot), then sends the stop signal to CMD and waits for it to exit
(poweroff). Appends {"boot": s, "poweroff": s} as one JSON line to FILE, so
hyperfine can time the whole cycle while the harness still reports both parts.
Exit status: CMD's, or 1 (with one line on stderr) when READY=1 never came.
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--stop-signal", default="SIGTERM")
    ap.add_argument("--log", default=os.devnull, help="CMD's output goes here")
    ap.add_argument("cmd", nargs="+")
    args = ap.parse_args()
    stop = signal.Signals[args.stop_signal] if not args.stop_signal.startswith("SIGRTMIN") \
        else signal.SIGRTMIN + int(args.stop_signal[8:] or 0)

    with tempfile.TemporaryDirectory(prefix="bootcycle.") as tmp:
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        env = dict(os.environ, NOTIFY_SOCKET=path)
        with open(args.log, "ab") as log:
            t0 = time.monotonic()
            child = subprocess.Popen(args.cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log)
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
