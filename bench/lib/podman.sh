#!/bin/bash
# podman on a private store, for the boot benchmark:
#   podman.sh DIR RUNTIME ARGS…
# DIR holds containers.conf, storage.conf and registries.conf (bench/run.sh
# writes them) and podman's root, runroot and tmpdir; RUNTIME is the OCI
# runtime's path. No network config outside DIR, events to a file.
dir=$1 runtime=$2
shift 2
export CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$dir/storage.conf \
    CONTAINERS_REGISTRIES_CONF=$dir/registries.conf
exec podman --root "$dir/root" --runroot "$dir/runroot" --tmpdir "$dir/tmp" \
    --storage-driver overlay --cgroup-manager cgroupfs --events-backend file \
    --network-config-dir "$dir/net" --volumepath "$dir/volumes" --runtime "$runtime" "$@"
