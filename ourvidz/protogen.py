"""Generate the Python stubs (messages, .pyi, gRPC) from protos/ into ourvidz/v1.

The stubs are build outputs, never edited by hand and not committed: `make`
regenerates them whenever a .proto changes. `--check` compiles into a scratch
folder and fails on any protoc error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path) -> int:
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    return protoc.main(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compile only, into a scratch folder")
    opts = parser.parse_args()
    if opts.check:
        with tempfile.TemporaryDirectory() as tmp:
            rc = generate(Path(tmp))
    else:
        rc = generate(ROOT)
    if rc != 0:
        sys.exit(f"protoc failed with exit code {rc}")


if __name__ == "__main__":
    main()
