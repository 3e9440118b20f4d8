"""Downloads one source distribution from PyPI, checked against PyPI's sha256.

    python3 scripts/pypi_sdist.py NAME VERSION DEST_DIR   # prints the file's path

`pip download --no-binary :all:` fetches an sdist too, but it first prepares
the package's metadata, which builds its build dependencies from source as
well (scikit-build-core asked for cmake, and pip compiled CMake for half an
hour). This reads PyPI's simple index (PEP 691 JSON) and downloads the file
only. Standard library only; the index URL follows $PIP_INDEX_URL when set.
"""
import hashlib
import json
import os
import sys
import urllib.request


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    name, version, dest = sys.argv[1:]
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    project = name.lower().replace("_", "-").replace(".", "-")
    req = urllib.request.Request(
        f"{index}/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        files = json.load(r)["files"]
    want = f"{name.replace('-', '_')}-{version}.tar.gz"
    entry = next((f for f in files if f["filename"].lower() == want.lower()), None)
    if entry is None:
        print(f"PyPI has no {want} for {name}", file=sys.stderr)
        return 1
    sha = entry["hashes"]["sha256"]
    os.makedirs(dest, exist_ok=True)
    path = os.path.join(dest, entry["filename"])
    if os.path.exists(path) and hashlib.sha256(open(path, "rb").read()).hexdigest() == sha:
        print(path)
        return 0
    part = path + ".part"
    h = hashlib.sha256()
    with urllib.request.urlopen(entry["url"], timeout=600) as r, open(part, "wb") as out:
        while chunk := r.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
    if h.hexdigest() != sha:
        os.remove(part)
        print(f"{entry['filename']}: sha256 {h.hexdigest()} is not PyPI's {sha}", file=sys.stderr)
        return 1
    os.replace(part, path)
    print(path)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as e:  # urllib's HTTPError and URLError are OSErrors
        print(f"pypi_sdist: {' '.join(sys.argv[1:3])}: {e}", file=sys.stderr)
        sys.exit(1)
