"""Pack an installed numpy tree into a wheel with a complete dist-info.

Usage: make_wheel.py SITE_DIR SDIST_DIR OUT_WHL TAG

SITE_DIR   directory that contains the installed "numpy" package
SDIST_DIR  unpacked sdist (PKG-INFO, pyproject.toml, license files)
OUT_WHL    wheel path to write (its file name must match name/version/TAG)
TAG        e.g. cp314-cp314-pyemscripten_2026_0_wasm32

The archive is deterministic: sorted entries, fixed timestamps (from
SOURCE_DATE_EPOCH, default 2026-01-01), fixed permissions.
"""
import base64
import email.parser
import hashlib
import os
import sys
import time
import tomllib
import zipfile


def b64digest(data):
    d = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(d).rstrip(b"=").decode()


def main(site, sdist, out, tag):
    meta_text = open(os.path.join(sdist, "PKG-INFO"), encoding="utf-8").read()
    meta = email.parser.Parser().parsestr(meta_text, headersonly=True)
    name, version = meta["Name"], meta["Version"]
    expect = f"{name}-{version}-{tag}.whl"
    if os.path.basename(out) != expect:
        sys.exit(f"wheel name {os.path.basename(out)} != {expect}")
    distinfo = f"{name}-{version}.dist-info"

    files = {}  # archive name -> bytes
    pkg_root = os.path.join(site, name)
    for root, dirs, fnames in os.walk(pkg_root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for fn in sorted(fnames):
            if fn.endswith((".pyc", ".pyo")):
                continue
            full = os.path.join(root, fn)
            arc = os.path.relpath(full, site).replace(os.sep, "/")
            with open(full, "rb") as f:
                files[arc] = f.read()
    if not any(a.endswith(".so") for a in files):
        sys.exit("no extension modules found")

    files[f"{distinfo}/METADATA"] = meta_text.encode("utf-8")
    files[f"{distinfo}/WHEEL"] = (
        "Wheel-Version: 1.0\n"
        "Generator: tools/numpy_wasm/make_wheel.py\n"
        "Root-Is-Purelib: false\n"
        f"Tag: {tag}\n"
    ).encode()
    # License files named in the metadata (Metadata-Version 2.4: dist-info/licenses/)
    for lic in meta.get_all("License-File") or []:
        with open(os.path.join(sdist, lic), "rb") as f:
            files[f"{distinfo}/licenses/{lic}"] = f.read()
    # Entry points from pyproject.toml
    with open(os.path.join(sdist, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    groups = {}
    if project.get("scripts"):
        groups["console_scripts"] = project["scripts"]
    groups.update(project.get("entry-points", {}))

    def present(value):  # "pkg.mod:attr" -> is pkg/mod in the wheel?
        path = value.split(":")[0].strip().replace(".", "/")
        return any(a == path + ".py" or a.startswith(path + "/") for a in files)

    for g in list(groups):
        kept = {k: v for k, v in groups[g].items() if present(v)}
        for k in set(groups[g]) - set(kept):
            print(f"  entry point [{g}] {k} dropped: {groups[g][k]} not in wheel")
        groups[g] = kept
    groups = {g: items for g, items in groups.items() if items}
    if groups:
        ep = ""
        for g, items in groups.items():
            ep += f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) + "\n"
        files[f"{distinfo}/entry_points.txt"] = ep.encode()

    record_name = f"{distinfo}/RECORD"
    record = "".join(f"{a},{b64digest(d)},{len(d)}\n" for a, d in sorted(files.items()))
    record += f"{record_name},,\n"
    files[record_name] = record.encode()

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "1767225600"))
    dt = time.gmtime(max(epoch, 315532800))[:6]
    # package files first, dist-info last, RECORD at the very end
    order = sorted(a for a in files if not a.startswith(distinfo))
    order += sorted(a for a in files if a.startswith(distinfo) and a != record_name)
    order.append(record_name)
    tmp = out + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for arc in order:
            zi = zipfile.ZipInfo(arc, date_time=dt)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = (0o100644) << 16
            z.writestr(zi, files[arc])
    os.replace(tmp, out)
    print(f"  {len(files)} files, {os.path.getsize(out)} bytes -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
