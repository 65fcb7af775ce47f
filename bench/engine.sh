#!/usr/bin/env bash
# Engine benchmark: `berth run --rm --network none busybox true` against
# `podman run --rm --network none` (runtime runc) on the same imported busybox image,
# alternating, in one run; 50 containers with 2-way concurrency; and the resident memory
# of berth's per-container monitor against conmon's, each holding one sleeping container.
# Needs root, busybox-static, podman, runc, python3. Private roots, removed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cargo build --release --workspace --manifest-path "$top/Cargo.toml" >&2
work=$(mktemp -d /tmp/berth-bench-engine.XXXXXX)
chmod 755 "$work"
cleanup() {
  # Best effort and complete: a failing step (grep finding no mount) must not skip the rest.
  set +e +o pipefail
  "$top/target/release/berth" --root "$work/berth" --runroot "$work/berth-run" ps -aq 2>/dev/null |
    while read -r id; do "$top/target/release/berth" --root "$work/berth" --runroot "$work/berth-run" rm -f "$id" >/dev/null 2>&1 || true; done
  podman --root "$work/podman" --runroot "$work/podman-run" --storage-driver vfs rm -af >/dev/null 2>&1 || true
  grep -o " $work[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
python3 "$here/engine.py" --berth "$top/target/release/berth" --work "$work" --runs "${RUNS:-20}"
