"""Trim an upstream CustomResourceDefinition to the schema the deploy tests need.

    python tests/deploy/schemas/vendor.py CRD.yaml [CRD.yaml ...]

For each served version of each CRD file, writes `<group>_<kind>_<version>.json`
next to this script: the version's openAPIV3Schema with every `description`
dropped (they make up most of an upstream CRD and validate nothing). The
sources and their released tags are listed in README.md beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def strip_descriptions(node):
    """The schema without its `description` keys (a property named
    `description` under `properties` is kept)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
            else:
                out[key] = strip_descriptions(value)
        return out
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def vendor(crd_path: Path) -> list[Path]:
    crd = yaml.safe_load(crd_path.read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    written = []
    for version in crd["spec"]["versions"]:
        if not version.get("served", True):
            continue
        out = HERE / f"{group}_{kind}_{version['name']}.json"
        doc = {
            "apiVersion": f"{group}/{version['name']}",
            "kind": kind,
            "schema": strip_descriptions(version["schema"]["openAPIV3Schema"]),
        }
        out.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
        written.append(out)
    return written


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for path in vendor(Path(arg)):
            print(path.relative_to(HERE), path.stat().st_size)
