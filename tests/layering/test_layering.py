"""The dependency arrows of the tree point one way:

    ourvidz_cli (HTTP client)      ourvidz_dev (dev stack, benchmarks)
                                          │
                                   services.<name>
                                          │
                                   ourvidz (shared library)

The shared library imports no service and nothing above it; a service imports
no other service's package and nothing of the dev stack or the CLI; the CLI is
HTTP alone. The CPU services (gateway, jobs, workspace) and the operator tools
import without the model stack, so their image carries no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists())


def imports(folder: Path) -> list[tuple[str, int, str, bool]]:
    """(file, line, imported module, at module level) of every import under folder."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        if "v1" in path.relative_to(folder).parts[:1]:
            continue  # generated stubs
        tree = ast.parse(path.read_text(), str(path))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            rel = str(path.relative_to(ROOT))
            found += [(rel, node.lineno, name, id(node) in top) for name in names]
    return found


def offending(folder: Path, refused) -> list[str]:
    return [
        f"{file}:{line} imports {name}"
        for file, line, name, _ in imports(folder)
        if refused(name.split(".")[0], name)
    ]


def test_the_shared_library_imports_no_service_nor_anything_above_it():
    bad = offending(
        ROOT / "ourvidz", lambda top, _: top in {"services", "ourvidz_dev", "ourvidz_cli"}
    )
    assert not bad, bad


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service_nor_the_dev_stack(service):
    def refused(top: str, name: str) -> bool:
        if top in {"ourvidz_dev", "ourvidz_cli"}:
            return True
        return top == "services" and name.split(".")[1:2] != [service]

    bad = offending(ROOT / "services" / service, refused)
    assert not bad, bad


def test_the_cli_speaks_http_alone():
    stdlib = set(sys.stdlib_module_names)
    bad = [
        f"{file}:{line} imports {name}"
        for file, line, name, _ in imports(ROOT / "cli" / "ourvidz_cli")
        if name.split(".")[0] not in stdlib | {"httpx", "ourvidz_cli", "__future__"}
        # `ourvidz admin` hands over to the operator commands where the server
        # package is installed; the import is inside that command.
        and not (name == "ourvidz" and "main.py" in file)
    ]
    assert not bad, bad
    cli_imports_ourvidz = [i for i in imports(ROOT / "cli" / "ourvidz_cli") if i[2] == "ourvidz"]
    assert all(not top for *_, top in cli_imports_ourvidz), cli_imports_ourvidz


# The model stack and the tools that never belong in the slim image.
HEAVY = (
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "safetensors",
    "tokenizers",
    "av",
    "numpy",
)
ABOVE = ("ourvidz_dev", "ourvidz_cli", "pytest", "grpc_tools")

SLIM_IMPORT = """
import importlib, importlib.abc, pkgutil, sys
refused = set(sys.argv[1].split(","))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in refused:
            raise ImportError("the slim image has no " + name)
sys.meta_path.insert(0, Refuse())
for package in sys.argv[2].split(","):
    importlib.import_module(package)
    for info in pkgutil.walk_packages(sys.modules[package].__path__, package + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
for module in sys.argv[3].split(","):
    importlib.import_module(module)
print("imported")
"""


def test_the_cpu_services_import_without_the_model_stack():
    """What the `service` image target holds is enough for the gateway, jobs,
    workspace, the migrations and the operator and key tools."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            SLIM_IMPORT,
            ",".join(HEAVY + ABOVE),
            "services.gateway,services.jobs,services.workspace",
            "ourvidz.migrate,ourvidz.operator,ourvidz.keys,ourvidz.grpcserver,ourvidz.storage",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-3000:]


def test_the_refusal_is_real():
    """The import guard above does refuse the model stack (a worker needs it)."""
    done = subprocess.run(
        [sys.executable, "-c", SLIM_IMPORT, ",".join(HEAVY), "services.sdxl", "ourvidz.keys"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "the slim image has no" in done.stderr
