"""Times `run` of `true` in a busybox bundle for berth, runc and crun, alternating.

Reports median wall time per container, ratios against runc and crun, the time for 50
containers sequentially and with 2-way concurrency, and peak RSS of the runtime process
(ru_maxrss of the process we start). Every container is deleted by its own `run`.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

BUSYBOX = "/bin/busybox"


def make_bundle(work):
    bundle = os.path.join(work, "bundle")
    rootfs = os.path.join(bundle, "rootfs")
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    shutil.copy(BUSYBOX, os.path.join(rootfs, "bin/busybox"))
    for applet in ("sh", "true"):
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    return bundle


def write_spec(berth, bundle):
    # One config for all three runtimes: berth's default spec (what `runc spec` writes,
    # plus a cgroup namespace), running `true`.
    subprocess.run([berth, "oci", "spec", "--bundle", bundle], check=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["process"]["args"] = ["true"]
    with open(path, "w") as f:
        json.dump(spec, f)


def runtimes(berth, work):
    out = {"berth": [berth, "oci", "--root", os.path.join(work, "state-berth")]}
    for name in ("runc", "crun"):
        exe = shutil.which(name)
        if exe:
            out[name] = [exe, "--root", os.path.join(work, "state-" + name)]
        else:
            print(f"warning: {name} not installed, skipped", file=sys.stderr)
    return out


counter = [0]


def one_run(cmd, bundle, name):
    counter[0] += 1
    cid = f"bench-{name}-{os.getpid()}-{counter[0]}"
    argv = cmd + ["run", "--bundle", bundle, cid]
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ)
    _, status, _ = os.wait4(pid, 0)
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} run failed (status {status}): {' '.join(argv)}")
    return dt


def peak_rss(cmd, bundle, name):
    """Peak RSS (KiB) of the runtime and the children it reaps, via `busybox time`: our own
    children inherit python's memory high-water mark through fork, busybox's are small."""
    counter[0] += 1
    cid = f"bench-{name}-{os.getpid()}-{counter[0]}"
    out = subprocess.run([BUSYBOX, "time", "-f", "%M"] + cmd + ["run", "--bundle", bundle, cid],
                         capture_output=True, text=True, check=True)
    return int(out.stderr.strip().splitlines()[-1])


def batch(cmd, bundle, name, n, workers):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        list(ex.map(lambda _: one_run(cmd, bundle, name), range(n)))
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--berth", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    bundle = make_bundle(a.work)
    write_spec(a.berth, bundle)
    rts = runtimes(a.berth, a.work)
    times = {k: [] for k in rts}
    rss = {k: 0 for k in rts}
    for name, cmd in rts.items():  # warm-up: page cache, cgroup parents
        one_run(cmd, bundle, name)
    for _ in range(a.runs):
        for name, cmd in rts.items():
            times[name].append(one_run(cmd, bundle, name))
    for name, cmd in rts.items():
        rss[name] = max(peak_rss(cmd, bundle, name) for _ in range(5))
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    seq = {k: batch(cmd, bundle, k, 50, 1) for k, cmd in rts.items()}
    par = {k: batch(cmd, bundle, k, 50, 2) for k, cmd in rts.items()}
    print(f"# runtime benchmark: run of `true` in a busybox bundle, {a.runs} alternating runs each")
    print(f"{'runtime':<8} {'median ms':>10} {'p90 ms':>8} {'vs runc':>8} {'vs crun':>8} {'50 seq s':>9} {'50 x2 s':>8} {'peak RSS KiB':>13}")
    for k in rts:
        p90 = sorted(times[k])[int(0.9 * (len(times[k]) - 1))] * 1000
        vr = f"{med[k] / med['runc']:.2f}x" if "runc" in med else "-"
        vc = f"{med[k] / med['crun']:.2f}x" if "crun" in med else "-"
        print(f"{k:<8} {med[k]:>10.2f} {p90:>8.2f} {vr:>8} {vc:>8} {seq[k]:>9.2f} {par[k]:>8.2f} {rss[k]:>13}")


if __name__ == "__main__":
    main()
