#!/usr/bin/env python3
"""Generates the hostile layer corpus next to this script, and cases.txt describing it.

Each tarball tries to make the unpacker write outside its destination. The regression
test (src/unpack/hostile_tests.rs) unpacks every one into <tmp>/dest next to a victim
directory <tmp>/victim (holding `file` and `dir/inner`), and checks that the expected
error names the entry, or for the `ok` cases that the entry landed inside dest, and in
every case that nothing outside dest changed.

Paths are relative to dest: "../victim" reaches the victim. Files that must never exist
are called berth-hostile-pwned.

Run: python3 make.py   (Python 3.8+, standard library only; output is deterministic)
"""

import io
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
PWNED = "berth-hostile-pwned"

# Two end blocks and no 10 KiB record padding: keeps every file small.
tarfile.RECORDSIZE = 2 * tarfile.BLOCKSIZE


def info(name, kind=tarfile.REGTYPE, link="", data=b"", mode=0o644, pax=None, dev=(0, 0)):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    ti.mode = mode
    ti.mtime = 1_600_000_000
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    ti.devmajor, ti.devminor = dev
    if pax:
        ti.pax_headers = dict(pax)
    return ti, data


def f(name, data=b"pwned\n", **kw):
    return info(name, data=data, **kw)


def d(name):
    return info(name, kind=tarfile.DIRTYPE, mode=0o755)


def sym(name, target):
    return info(name, kind=tarfile.SYMTYPE, link=target, mode=0o777)


def hard(name, target, **kw):
    return info(name, kind=tarfile.LNKTYPE, link=target, **kw)


def chr_(name, dev=(1, 3)):
    return info(name, kind=tarfile.CHRTYPE, mode=0o666, dev=dev)


# name -> (entries, expectation, entry-or-path, format)
CASES = {}


def case(name, entries, expect, what, fmt=tarfile.GNU_FORMAT):
    CASES[name] = (entries, expect, what, fmt)


V = "../victim"

case("dotdot", [f(f"{V}/{PWNED}")], "error", f"{V}/{PWNED}")
case("dotdot-nested", [d("a"), f(f"a/../../victim/{PWNED}")], "error", f"a/../../victim/{PWNED}")
case("absolute", [f(f"/abs/{PWNED}")], "ok", f"abs/{PWNED}")
case("absolute-dotdot", [f(f"/../victim/{PWNED}")], "error", f"/../victim/{PWNED}")
case("symlink-then-write", [sym("link", V), f(f"link/{PWNED}")], "error", f"link/{PWNED}")
case("symlink-absolute-then-write", [sym("etc", "/etc"), f(f"etc/{PWNED}")], "error", f"etc/{PWNED}")
case(
    "symlink-dir-escape",
    [d("d"), sym("d/up", "../../"), f(f"d/up/victim/{PWNED}")],
    "error",
    f"d/up/victim/{PWNED}",
)
case("symlink-implicit-parent", [sym("l", V), f(f"l/sub/{PWNED}")], "error", f"l/sub/{PWNED}")
case("hardlink-outside", [hard("h", f"{V}/file")], "error", "h")
case("hardlink-absolute", [hard("h", "/etc/passwd")], "error", "h")
case("hardlink-through-symlink", [sym("l", V), hard("h", "l/file")], "error", "h")
case(
    "hardlink-to-symlink-then-write",
    [sym("s", f"{V}/file"), hard("h", "s"), f("h")],
    "ok",
    "h",
)
case("whiteout-escape", [f("../.wh.victim", b"")], "error", "../.wh.victim")
case("whiteout-escape-nested", [d("a"), f("a/../../.wh.victim", b"")], "error", "a/../../.wh.victim")
case("whiteout-dotdot", [d("a"), f("a/.wh...", b"")], "error", "a/.wh...")
case("whiteout-dot", [f(".wh..", b"")], "error", ".wh..")
case("whiteout-through-symlink", [sym("l", V), f("l/.wh.file", b"")], "error", "l/.wh.file")
case("opaque-through-symlink", [sym("l", V), f("l/.wh..wh..opq", b"")], "error", "l/.wh..wh..opq")
case("file-over-symlink", [sym("f", f"{V}/file"), f("f")], "ok", "f")
case("dir-over-symlink", [sym("d", V), d("d"), f(f"d/{PWNED}")], "ok", f"d/{PWNED}")
case(
    "deep-symlink-chain",
    [sym(f"s{i}", f"s{i + 1}") for i in range(12)] + [sym("s12", V), f(f"s0/{PWNED}")],
    "error",
    f"s0/{PWNED}",
)
case("device-escape", [chr_(f"{V}/{PWNED}")], "error", f"{V}/{PWNED}")
case("device-through-symlink", [sym("l", V), chr_(f"l/{PWNED}")], "error", f"l/{PWNED}")
LONG = "a/" * 60 + "../" * 61 + f"victim/{PWNED}"
case("gnu-longname-escape", [f(LONG)], "error", LONG)
case(
    "pax-path-escape",
    [f("innocent", pax={"path": f"{V}/{PWNED}"})],
    "error",
    f"{V}/{PWNED}",
    tarfile.PAX_FORMAT,
)
case(
    "pax-linkpath-escape",
    [hard("h", "innocent", pax={"linkpath": f"{V}/file"})],
    "error",
    "h",
    tarfile.PAX_FORMAT,
)
case("root-replace", [f(".")], "error", ".")
case(
    "symlink-replaces-dir",
    [d("a"), d("a/b"), f("a/b/one"), sym("a", V), f(f"a/b/{PWNED}")],
    "error",
    f"a/b/{PWNED}",
)
case("parent-is-file", [f("f"), f(f"f/{PWNED}")], "error", f"f/{PWNED}")


def build(entries, fmt):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def main():
    for old in os.listdir(HERE):
        if old.endswith(".tar"):
            os.remove(os.path.join(HERE, old))
    lines = []
    for name, (entries, expect, what, fmt) in sorted(CASES.items()):
        data = build(entries, fmt)
        assert len(data) < 10 * 1024, name
        with open(os.path.join(HERE, name + ".tar"), "wb") as out:
            out.write(data)
        lines.append(f"{name}.tar\t{expect}\t{what}\n")
    with open(os.path.join(HERE, "cases.txt"), "w") as out:
        out.write("# generated by make.py: file<TAB>error|ok<TAB>entry named by the error | path inside dest\n")
        out.writelines(lines)


if __name__ == "__main__":
    main()
