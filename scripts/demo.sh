#!/usr/bin/env bash
# berth's main job on a fresh machine: build, make a busybox bundle, run a container that
# prints from inside its own namespaces, and clean up. Needs root and busybox-static.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p berth
berth=$PWD/target/release/berth
work=$(mktemp -d /tmp/berth-demo.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT

rootfs=$work/bundle/rootfs
mkdir -p "$rootfs"/{bin,proc,sys,dev,etc,tmp}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"
# Container root is host uid 100000: give it the image, like podman --userns=auto would.
chown -R 100000:100000 "$rootfs"

"$berth" oci spec --bundle "$work/bundle" --userns
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
spec = json.load(open(p))
spec["hostname"] = "berth-demo"
spec["process"]["args"] = ["sh", "-c", """
echo "hello from $(hostname), I am pid $$ and uid $(id -u)"
echo "uid_map (container host size):"; cat /proc/self/uid_map
echo "processes I can see:"; ps -o pid,user,args
echo "my cgroup memory limit: $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
grep -E 'CapEff|NoNewPrivs|Seccomp:' /proc/self/status
"""]
spec["linux"]["resources"]["memory"] = {"limit": 128 * 1024 * 1024}
spec["linux"]["resources"]["pids"] = {"limit": 64}
json.dump(spec, open(p, "w"), indent=2)
PY
echo "== berth oci run (user, pid, net, mount, uts, ipc, cgroup namespaces) =="
"$berth" oci --root "$work/state" run --bundle "$work/bundle" "demo-$$"
echo "== host root is uid $(id -u); container root was host uid 100000 =="
