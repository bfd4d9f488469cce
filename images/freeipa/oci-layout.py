#!/usr/bin/env python3
"""Writes an OCI image layout holding ROOTFS as one gzip layer.

usage: oci-layout.py ROOTFS LAYOUT_DIR

tar makes the layer (numeric owners, xattrs such as file capabilities, names
sorted so equal trees give equal layers); this script hashes the uncompressed
stream (the config's diff_id) while gzipping it, then writes the config,
manifest, index.json and oci-layout. The image config is the run-time contract
described in README.md.
"""
import datetime
import gzip
import hashlib
import json
import os
import subprocess
import sys

CHUNK = 1 << 20


def image_config():
    ports = ["53/tcp", "53/udp", "80/tcp", "443/tcp", "389/tcp", "636/tcp",
             "88/tcp", "88/udp", "464/tcp", "464/udp", "123/udp"]
    return {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["/sbin/init"],
        "StopSignal": "SIGRTMIN+3",
        "Volumes": {"/data": {}},
        "ExposedPorts": {p: {} for p in ports},
        "Labels": {
            "org.opencontainers.image.title": "freeipa (ipactr test image)",
            "org.opencontainers.image.description":
                "FreeIPA-shaped Debian 12 image: 389 DS, MIT Kerberos, BIND, Apache, SSSD, certmonger",
            "org.opencontainers.image.base.name": "debian:bookworm",
            "org.ipactr.image.boot": "systemd",
            "org.ipactr.image.env": "PASSWORD IPA_SERVER_INSTALL_OPTS",
            "org.ipactr.image.needs-fqdn-hostname": "true",
        },
    }


def blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def main():
    rootfs, layout = sys.argv[1], sys.argv[2]
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    top = sorted(os.listdir(rootfs))
    tar = subprocess.Popen(
        ["tar", "-C", rootfs, "--create", "--file=-", "--format=posix",
         "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
         "--sort=name", "--numeric-owner", "--xattrs", "--xattrs-include=*",
         "--one-file-system", "--"] + top,
        stdout=subprocess.PIPE)
    diff = hashlib.sha256()
    tmp = os.path.join(layout, "layer.tmp")
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
            while True:
                chunk = tar.stdout.read(CHUNK)
                if not chunk:
                    break
                diff.update(chunk)
                gz.write(chunk)
    if tar.wait() != 0:
        sys.exit("oci-layout.py: tar failed")
    layer_sum = hashlib.sha256()
    with open(tmp, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            layer_sum.update(chunk)
    layer_digest = "sha256:" + layer_sum.hexdigest()
    layer_size = os.path.getsize(tmp)
    os.rename(tmp, os.path.join(blobs, layer_sum.hexdigest()))

    config = {
        "created": created, "architecture": "amd64", "os": "linux",
        "config": image_config(),
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff.hexdigest()]},
        "history": [{"created": created, "created_by": "images/freeipa/build.sh (ipactr)"}],
    }
    cfg_digest, cfg_size = blob(layout, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cfg_digest, "size": cfg_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
        "annotations": {"org.opencontainers.image.created": created},
    }
    man_digest, man_size = blob(layout, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": man_digest, "size": man_size,
                       "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    }
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(f"freeipa image: layer {layer_digest} ({layer_size >> 20} MiB gzip)")


if __name__ == "__main__":
    main()
