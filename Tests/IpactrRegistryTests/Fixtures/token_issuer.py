#!/usr/bin/python3
"""A minimal bearer-token issuer for docker-registry's `auth: token:` mode,
for the registry tests only.

Writes DIR/token.crt (the registry's rootcertbundle) and DIR/token.key, listens
on 127.0.0.1 (a free port), prints the port on stdout, and answers
GET /token?service=S&scope=repository:NAME:ACTIONS with a JWT signed RS256
whose x5c header carries the certificate. Requests must carry HTTP basic
credentials matching --user USER:PASSWORD; others get 401. Every request is
appended to DIR/requests.log (method, path, user) so tests can see what the
client sent.
"""
import argparse
import base64
import datetime
import json
import os
import secrets
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_key_and_cert(directory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ipactr-test-token-issuer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    with open(os.path.join(directory, "token.key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(os.path.join(directory, "token.crt"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--user", required=True, help="USER:PASSWORD accepted by the issuer")
    args = ap.parse_args()
    key, cert = make_key_and_cert(args.dir)
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    user, password = args.user.split(":", 1)
    log_path = os.path.join(args.dir, "requests.log")

    def sign(subject, access):
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [x5c]}
        claims = {"iss": args.issuer, "sub": subject, "aud": args.service, "exp": now + 600,
                  "nbf": now - 60, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(signature)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            got_user = ""
            auth = self.headers.get("Authorization", "")
            ok = False
            if auth.startswith("Basic "):
                try:
                    u, p = base64.b64decode(auth[6:]).decode().split(":", 1)
                    got_user = u
                    ok = (u == user and p == password)
                except Exception:
                    ok = False
            with open(log_path, "a") as f:
                f.write(f"GET {self.path} user={got_user or '-'} ok={ok}\n")
            if url.path != "/token":
                self.send_response(404)
                self.end_headers()
                return
            if not ok:
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}')
                return
            query = urllib.parse.parse_qs(url.query)
            if query.get("service", [""])[0] != args.service:
                self.send_response(400)
                self.end_headers()
                return
            access = []
            for scope in query.get("scope", []):
                for one in scope.split(" "):
                    parts = one.split(":")
                    if len(parts) >= 3 and parts[0] == "repository":
                        access.append({"type": "repository", "name": ":".join(parts[1:-1]),
                                       "actions": parts[-1].split(",")})
            token = sign(got_user, access)
            body = json.dumps({"token": token, "access_token": token, "expires_in": 600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
