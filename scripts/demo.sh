#!/usr/bin/env bash
# berth's main job on a fresh machine: build, import a busybox image, and run containers
# with `berth run` — each in its own user, pid, mount, network, uts, ipc and cgroup
# namespaces, container root mapped to an unprivileged host range — then clean up.
# Needs root and busybox-static. Uses a private --root/--runroot, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
bin=$PWD/target/release
work=$(mktemp -d /tmp/berth-demo.XXXXXX)
chmod 755 "$work"
berth() { "$bin/berth" --root "$work/lib" --runroot "$work/run" "$@"; }
cleanup() {
  for id in $(berth ps -aq 2>/dev/null); do berth rm -f "$id" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# An image from Debian's busybox-static: a rootfs tarball, imported.
rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,etc,tmp,root,proc,sys,dev}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$rootfs/etc/group"
tar -C "$rootfs" -cf "$work/busybox.tar" .
echo "== berth import busybox.tar busybox:demo"
berth import "$work/busybox.tar" busybox:demo
berth images

echo "== berth run --rm busybox:demo (a container that looks at itself)"
berth run --rm --hostname demo --memory 128m --pids-limit 64 busybox:demo sh -c '
echo "hello from $(hostname): pid $$, uid $(id -u)"
echo "uid_map (container host size): $(cat /proc/self/uid_map)"
echo "memory limit: $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
grep -E "CapEff|NoNewPrivs|Seccomp:" /proc/self/status'

echo "== a detached container: logs, exec, stop, rm"
berth run -d --name web busybox:demo sh -c 'echo serving; trap "echo bye; exit 0" TERM; while true; do sleep 1; done' >/dev/null
berth ps
berth exec web sh -c 'echo "exec sees: $(cat /proc/1/cmdline | tr "\0" " ")"'
berth stop -t 5 web >/dev/null
berth logs --timestamps web
berth ps -a
berth rm web >/dev/null

echo "== refused: a sensitive host path"
berth run --rm -v /etc:/host-etc busybox:demo true || echo "(exit $?, as expected)"
