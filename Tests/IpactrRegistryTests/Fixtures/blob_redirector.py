#!/usr/bin/python3
"""A front for docker-registry that behaves like registries whose blobs live
on a storage host (S3, a CDN), for the registry tests only.

Listens on two free 127.0.0.1 ports and prints "FRONT BLOBHOST" on stdout.
FRONT relays every request to --upstream (status, body and the headers a
client needs), except GET .../blobs/sha256:HEX, which it answers with a 307
to BLOBHOST/blobs/HEX?signature=test. BLOBHOST serves the blob from the
registry's storage directory and appends one line per request to
--log ("blob HEX authorization=present|absent").
"""
import argparse
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELAYED_HEADERS = ["Content-Type", "Docker-Content-Digest", "WWW-Authenticate", "Docker-Distribution-Api-Version"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--storage", required=True, help="the registry's filesystem rootdirectory")
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    lock = threading.Lock()

    class BlobHost(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            m = re.match(r"^/blobs/([0-9a-f]{64})\?signature=test$", self.path)
            with lock, open(args.log, "a") as f:
                state = "present" if self.headers.get("Authorization") else "absent"
                f.write(f"blob {m.group(1) if m else self.path} authorization={state}\n")
            if not m:
                self.send_response(404)
                self.end_headers()
                return
            hexd = m.group(1)
            path = os.path.join(args.storage, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")
            with open(path, "rb") as f:
                data = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    blobhost = ThreadingHTTPServer(("127.0.0.1", 0), BlobHost)

    class Front(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            m = re.match(r"^/v2/.+/blobs/sha256:([0-9a-f]{64})$", self.path)
            if m:
                self.send_response(307)
                self.send_header("Location", f"http://127.0.0.1:{blobhost.server_address[1]}/blobs/{m.group(1)}?signature=test")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            req = urllib.request.Request(args.upstream + self.path)
            for h in ["Accept", "Authorization"]:
                if self.headers.get(h):
                    req.add_header(h, self.headers.get(h))
            try:
                resp = urllib.request.urlopen(req)
                status, headers, body = resp.status, resp.headers, resp.read()
            except urllib.error.HTTPError as e:
                status, headers, body = e.code, e.headers, e.read()
            self.send_response(status)
            for h in RELAYED_HEADERS:
                if headers.get(h):
                    self.send_header(h, headers.get(h))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    front = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    threading.Thread(target=blobhost.serve_forever, daemon=True).start()
    print(front.server_address[1], blobhost.server_address[1], flush=True)
    front.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
