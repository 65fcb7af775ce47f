#!/usr/bin/env bash
# Pull benchmark: `berth pull` against `podman pull` of one ~200 MB, 6-layer, gzip'd image
# from a docker-registry on 127.0.0.1 (started here, storage in the work dir), each into an
# empty store, alternating, in one run. Both end with every layer unpacked on disk.
# Needs root, docker-registry, skopeo, podman, python3. Loopback traffic only.
# RUNS=N sets the rounds (default 5); DRIVER=vfs runs podman on vfs instead of overlay;
# SKIP_BUILD=1 uses the berth already built in $CARGO_TARGET_DIR (or target/).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$top/target}
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p berth --bin berth --manifest-path "$top/Cargo.toml" >&2
work=$(mktemp -d /tmp/berth-bench-pull.XXXXXX)
chmod 755 "$work"
regpid=
cleanup() {
  # Best effort and complete: a failing step must not skip the rest.
  set +e +o pipefail
  if [ -n "$regpid" ]; then
    kill "$regpid" 2>/dev/null
    wait "$regpid" 2>/dev/null
  fi
  grep -o " $work[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A port that was free a moment ago; the registry answers with a header of ours, so that
# pull.py knows the server on the port is this one.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: berth-bench
  headers:
    X-Berth-Bench: ["1"]
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 </dev/null &
regpid=$!
python3 "$here/pull.py" --berth "$target/release/berth" --work "$work" --port "$port" \
  --runs "${RUNS:-5}" --driver "${DRIVER:-overlay}"
