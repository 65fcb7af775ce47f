#!/usr/bin/env bash
# Runtime benchmark: `berth oci run` vs `runc run` vs `crun run` of `true` in one busybox
# bundle, alternating, in one run. Needs root, busybox-static, runc, crun, python3.
#
# crun 1.8 refuses this machine's hybrid cgroup layout ("cgroups in hybrid mode not
# supported") because /sys/fs/cgroup/unified lists no controllers. The whole benchmark
# therefore runs in a private mount namespace in which an empty file is bound over
# /sys/fs/cgroup/unified/cgroup.controllers: crun then sees plain cgroup v1. All three
# runtimes run in that same namespace, so the comparison stays fair; the host is untouched.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
runs=${RUNS:-30}
cargo build --release --manifest-path "$top/Cargo.toml" -p berth >&2
berth="$top/target/release/berth"
work=$(mktemp -d /tmp/berth-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
: > "$work/empty"
unshare -m --propagation private bash -c '
  set -e
  mount --bind "$1/empty" /sys/fs/cgroup/unified/cgroup.controllers
  python3 "$2/runtime.py" --berth "$3" --work "$1" --runs "$4"
' _ "$work" "$here" "$berth" "$runs"
