"""berth pull vs podman pull of one ~200 MB multi-layer image from a loopback registry.

Builds an OCI layout whose layers are made of files from this host (/usr/lib, /usr/share,
/usr/bin) plus pseudo-random data, gzip-compressed at gzip's default level as docker
pushes them; pushes it with skopeo to the registry that pull.sh started on 127.0.0.1;
then alternates `berth pull` and `podman pull`, each into an empty store, timing the wall
clock of the command (both end with every layer unpacked on disk).
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import tarfile
import time
import urllib.request

# (name, source directory, byte budget of file content); the data layer is generated.
LAYERS = [
    ("libs", "/usr/lib/x86_64-linux-gnu", 70 << 20),
    ("python", "/usr/lib/python3.11", 40 << 20),
    ("share", "/usr/share", 32 << 20),
    ("bin", "/usr/bin", 25 << 20),
    ("data", None, 20 << 20),
    ("app", None, 64 << 10),
]


def walk_sorted(top):
    """Paths under top (dirs before their contents), sorted, without following symlinks."""
    stack = [top]
    while stack:
        d = stack.pop()
        yield d
        try:
            names = sorted(os.listdir(d), reverse=True)
        except OSError:
            continue
        for n in names:
            p = os.path.join(d, n)
            if os.path.isdir(p) and not os.path.islink(p):
                stack.append(p)
            else:
                yield p


def root_owned(ti):
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def host_layer(tar, src, budget):
    """Files of `src` (sorted walk) until their content reaches `budget` bytes."""
    used = 0
    for p in walk_sorted(src):
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if os.path.isfile(p) and not os.path.islink(p):
            if used + st.st_size > budget:
                continue
            used += st.st_size
        elif not (os.path.isdir(p) or os.path.islink(p)):
            continue  # sockets, fifos, devices
        tar.add(p, arcname=p.lstrip("/"), recursive=False, filter=root_owned)
        if used >= budget:
            break


def data_layer(tar, budget, seed):
    """Pseudo-random blobs (incompressible) mixed with text logs (compressible)."""
    rng = random.Random(seed)
    words = ["berth", "layer", "registry", "container", "overlay", "digest", "manifest",
             "request", "ok", "error", "GET", "PUT", "200", "404", "sha256"]
    used, i = 0, 0
    while used < budget:
        if i % 2 == 0:
            data = rng.randbytes(rng.randint(64 << 10, 1 << 20))
            name = f"srv/data/blob-{i:04d}.bin"
        else:
            lines = []
            n = 0
            while n < (256 << 10):
                line = (f"{1700000000 + rng.randint(0, 10**6)} "
                        + " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
                        + f" id={rng.getrandbits(64):016x}\n")
                lines.append(line)
                n += len(line)
            data = "".join(lines).encode()
            name = f"srv/log/app-{i:04d}.log"
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.mode = 0o644
        ti.mtime = 1_700_000_000
        tar.addfile(ti, io.BytesIO(data))
        used += len(data)
        i += 1


def app_layer(tar):
    for i in range(40):
        data = (f"# config {i}\nlisten = 0.0.0.0:{8000 + i}\nworkers = {i % 8 + 1}\n" * 40).encode()
        ti = tarfile.TarInfo(f"etc/app/conf.d/{i:02d}.conf")
        ti.size = len(data)
        ti.mode = 0o644
        ti.mtime = 1_700_000_000
        tar.addfile(ti, io.BytesIO(data))


def write_blob(layout, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs/sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d


def build_layout(work, tag):
    layout = os.path.join(work, "layout")
    os.makedirs(os.path.join(layout, "blobs/sha256"))
    layers, diff_ids, summary = [], [], []
    for i, (name, src, budget) in enumerate(LAYERS):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            if src:
                host_layer(tar, src, budget)
            elif name == "data":
                data_layer(tar, budget, seed=i)
            else:
                app_layer(tar)
        raw = raw.getvalue()
        # docker (Go's compress/gzip) and skopeo push at gzip's default level.
        gz = gzip.compress(raw, compresslevel=6, mtime=0)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": write_blob(layout, gz), "size": len(gz)})
        with tarfile.open(fileobj=io.BytesIO(raw)) as t:
            entries = len(t.getmembers())
        summary.append((name, len(raw), len(gz), entries))
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"bench layer {n}"} for n, *_ in LAYERS],
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": write_blob(layout, config), "size": len(config)},
        "layers": layers,
    }).encode()
    md = write_blob(layout, manifest)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
            "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
    return layout, summary


def wait_registry(port, deadline=10.0):
    t0 = time.time()
    while time.time() - t0 < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as r:
                if r.headers.get("X-Berth-Bench") == "1":
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"registry on 127.0.0.1:{port} did not answer")


def umount_under(path):
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f]
    for m in sorted((m for m in mounts if m == path or m.startswith(path + "/")), reverse=True):
        subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)


def fresh(*dirs):
    for d in dirs:
        umount_under(d)
        shutil.rmtree(d, ignore_errors=True)


def timed(cmd, env=None):
    subprocess.run(["sync"], check=True)  # neither pays for the other's writeback
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode()[-2000:]}")
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--berth", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--driver", default="overlay")
    a = ap.parse_args()
    w = a.work
    tag = "v1"
    t0 = time.perf_counter()
    layout, summary = build_layout(w, tag)
    print(f"# built the image in {time.perf_counter() - t0:.1f} s:")
    for name, raw, gz, entries in summary:
        print(f"#   layer {name:<7} {raw / 1e6:7.1f} MB tar, {gz / 1e6:6.1f} MB gzip, {entries:6d} entries")
    raw_total = sum(s[1] for s in summary)
    gz_total = sum(s[2] for s in summary)
    print(f"#   total   {raw_total / 1e6:7.1f} MB tar, {gz_total / 1e6:6.1f} MB gzip, {len(summary)} layers")

    wait_registry(a.port)
    ref = f"127.0.0.1:{a.port}/bench/pull:{tag}"
    # No user's or system's registry credentials: an empty auth file of our own.
    auth = os.path.join(w, "auth.json")
    with open(auth, "w") as f:
        f.write("{}")
    env = dict(os.environ, REGISTRY_AUTH_FILE=auth)
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                    "--preserve-digests", f"oci:{layout}:{tag}", f"docker://{ref}"],
                   check=True, env=env)

    def berth(d):
        return [a.berth, "--root", os.path.join(d, "root"), "--runroot", os.path.join(d, "run"),
                "pull", "-q", ref]

    def podman(d):
        return ["podman", "--root", os.path.join(d, "root"), "--runroot", os.path.join(d, "run"),
                "--storage-driver", a.driver, "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", "pull", "-q", "--tls-verify=false", ref]

    pk = f"podman ({a.driver})"
    runs = {"berth": berth, pk: podman}
    # Every pull gets a store of its own, and the stores are removed only at the end: on
    # this machine's ext4 (no journal) creating inodes right after deleting thousands is
    # several times slower (the allocator skips recently deleted inodes), which would
    # charge each engine for the files the previous round removed.
    stores = []

    def store(k, i):
        d = os.path.join(w, f"{k.split()[0]}-{i}")
        stores.append(d)
        return d

    # Warm-up round: the registry's files into the page cache, binaries loaded.
    for k, cmd in runs.items():
        timed(cmd(store(k, "warm")), env)
    times = {k: [] for k in runs}
    for i in range(a.runs):
        for k, cmd in runs.items():
            times[k].append(timed(cmd(store(k, i)), env))
    fresh(*stores)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"# pull of {ref} into an empty store, layers unpacked; {a.runs} alternating rounds")
    print(f"{'engine':<18} {'median s':>9} {'min s':>7} {'max s':>7} {'speed-up':>9}")
    for k in runs:
        print(f"{k:<18} {med[k]:>9.2f} {min(times[k]):>7.2f} {max(times[k]):>7.2f} "
              f"{med[pk] / med[k]:>8.2f}x")
    print("# all rounds (s): " + "; ".join(f"{k}: " + " ".join(f"{t:.2f}" for t in v)
                                           for k, v in times.items()))


if __name__ == "__main__":
    main()
