"""The modules the slim image (`ourvidz`: gateway, jobs, workspace, migrate,
secrets) runs import without the `models` extra and without the packages
that are never in an image (the dev stack, the CLI, the embedded servers):
a rendered container of that image would otherwise stop at its first line."""

from __future__ import annotations

import subprocess
import sys

from tests.deploy.render import REPO, containers, render_overlay, workloads

# Not in the slim image: the models extra, and what no image holds.
ABSENT = (
    "torch diffusers transformers tokenizers safetensors accelerate av numpy "
    "ourvidz_dev ourvidz_cli pgserver moto playwright"
).split()

BLOCKER = """
import importlib, sys
absent = set(sys.argv[1].split(","))
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in absent:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the slim image)")
        return None
sys.meta_path.insert(0, Absent())
for module in sys.argv[2:]:
    importlib.import_module(module)
    importlib.import_module(module + ".main") if module.startswith("services.") else None
"""


def slim_modules() -> set[str]:
    found = set()
    for overlay in ("dev", "prod"):
        for _, pod in workloads(list(render_overlay(overlay))):
            for c in containers(pod):
                argv = [*c.get("command", []), *c.get("args", [])]
                repo = c["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
                if repo == "ourvidz" and argv[1:2] == ["-m"]:
                    found.add(argv[2])
    return found


def test_the_slim_images_modules_import_without_the_models_extra():
    modules = sorted(slim_modules())
    assert "services.gateway" in modules and "ourvidz.migrate" in modules, modules
    # `python -m services.X` runs its __main__, which starts the service:
    # import the package and its main module instead.
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, ",".join(ABSENT), *modules],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
