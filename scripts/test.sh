#!/usr/bin/env bash
# berth's test command (README and CI): formatting, lints, then every test, as root,
# against the real kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: run as root (the tests create namespaces, cgroups and mounts)" >&2
  exit 1
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
