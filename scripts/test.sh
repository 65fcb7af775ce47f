#!/usr/bin/env bash
# berth's test command (README and CI): formatting, lints, then every test, as root,
# against the real kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: run as root (the tests create namespaces, cgroups and mounts)" >&2
  exit 1
fi
# Incremental state is ~10 GB for this workspace and buys nothing on a one-off run;
# set CARGO_INCREMENTAL=1 to keep it while iterating.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# A full disk shows up as odd failures far from the cause (etcd, overlay mounts): say
# up front how much room there is.
avail_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
echo "scripts/test.sh: $((avail_kb / 1024 / 1024)) GiB free on $(df -P . | awk 'NR == 2 { print $6 }')"
if [ "${avail_kb:-0}" -lt $((4 * 1024 * 1024)) ]; then
  echo "scripts/test.sh: warning: under 4 GiB free; the build alone needs about 2" >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
