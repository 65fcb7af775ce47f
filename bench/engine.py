"""berth vs podman: run --rm of `true`, 50 containers 2-way, monitor vs conmon RSS."""
import argparse
import os
import shutil
import statistics
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

BUSYBOX = "/bin/busybox"
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]


def make_image_tar(work):
    rootfs = os.path.join(work, "rootfs")
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    shutil.copy(BUSYBOX, os.path.join(rootfs, "bin/busybox"))
    for applet in ("sh", "true", "sleep"):
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    with open(os.path.join(rootfs, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    tar = os.path.join(work, "busybox.tar")
    with tarfile.open(tar, "w") as t:
        t.add(rootfs, arcname=".")
    return tar


def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def pss_kib(pid):
    """Proportional set size: shared pages (libc, the binary's text) divided among the
    processes mapping them, so what one more monitor really costs once several run."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return -1


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--berth", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    tar = make_image_tar(a.work)
    berth = [a.berth, "--root", os.path.join(a.work, "berth"), "--runroot", os.path.join(a.work, "berth-run")]
    podman = ["podman", "--root", os.path.join(a.work, "podman"), "--runroot", os.path.join(a.work, "podman-run"),
              "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
              "--runtime", shutil.which("runc")]
    subprocess.run(berth + ["import", tar, "localhost/busybox:bench"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(podman + ["import", tar, "localhost/busybox:bench"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = {
        "berth": berth + ["run", "--rm", "--network", "none", "localhost/busybox:bench", "true"],
        "podman+runc": podman + ["run", "--rm", "--network", "none"] + ULIMITS + ["localhost/busybox:bench", "true"],
    }
    for cmd in runs.values():  # warm-up
        timed(cmd)
    times = {k: [] for k in runs}
    for _ in range(a.runs):
        for k, cmd in runs.items():
            times[k].append(timed(cmd))
    batch = {}
    for k, cmd in runs.items():
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=2) as ex:
            list(ex.map(lambda _: timed(cmd), range(50)))
        batch[k] = time.perf_counter() - t0

    # Resident memory of the process that holds a running container's stdio.
    out = subprocess.run(berth + ["run", "-d", "--name", "rss", "--network", "none", "localhost/busybox:bench", "sleep", "60"],
                         check=True, capture_output=True, text=True).stdout.strip()
    rec = os.path.join(a.work, "berth", "containers", out, "container.json")
    import json
    mon_pid = json.load(open(rec))["monitor_pid"]
    time.sleep(0.3)
    berth_rss = rss_kib(mon_pid)
    berth_pss = pss_kib(mon_pid)
    subprocess.run(podman + ["run", "-d", "--name", "rss", "--network", "none"] + ULIMITS +
                   ["localhost/busybox:bench", "sleep", "60"], check=True, stdout=subprocess.DEVNULL)
    conmon = subprocess.run(podman + ["inspect", "--format", "{{.State.ConmonPid}}", "rss"],
                            check=True, capture_output=True, text=True).stdout.strip()
    time.sleep(0.3)
    conmon_rss = rss_kib(int(conmon))
    conmon_pss = pss_kib(int(conmon))
    subprocess.run(berth + ["rm", "-f", "rss"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(podman + ["rm", "-f", "-t", "0", "rss"], check=True, stdout=subprocess.DEVNULL)

    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"# engine benchmark: run --rm --network none of `true`, {a.runs} alternating runs each")
    print(f"{'engine':<12} {'median ms':>10} {'p90 ms':>8} {'speed-up':>9} {'50 x2 s':>8}")
    for k in runs:
        p90 = sorted(times[k])[int(0.9 * (len(times[k]) - 1))] * 1000
        print(f"{k:<12} {med[k]:>10.1f} {p90:>8.1f} {med['podman+runc'] / med[k]:>8.1f}x {batch[k]:>8.2f}")
    print(f"# per-container monitor resident memory: berth-monitor {berth_rss} KiB, conmon {conmon_rss} KiB")
    print(f"# proportional (Pss, shared libc/text divided): berth-monitor {berth_pss} KiB, conmon {conmon_pss} KiB")


if __name__ == "__main__":
    main()
