"""The operator releases two texts name: the install commands of
docs/DEPLOY.md ("Prerequisites") and the table of vendored CRD schemas in
tests/deploy/schemas/README.md. The cluster runs the first; the deploy tests
validate the manifests against the second, so they must be the same.

Releases are compared without a leading `v` (`v1.30.0` == `1.30.0`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.deploy.render import DEPLOY_ROOT, SCHEMAS

DEPLOY_DOC = DEPLOY_ROOT.parents[1] / "docs" / "DEPLOY.md"
SCHEMAS_README = SCHEMAS / "README.md"

# A GitHub repository in an install command: a raw file, a release download
# or a kustomize remote target (`github.com/owner/repo?ref=TAG`).
_GITHUB = re.compile(
    r"(?:https?://)?(?:raw\.githubusercontent\.com|github\.com)/"
    r"(?P<owner>[\w.-]+)/(?P<name>[\w-]+(?:\.[\w-]+)*?)(?:\.git)?"
    r"(?P<rest>[/?][^\s\"']*|(?=[\s\"']|$))"
)
_RELEASE = re.compile(r"(?<![\w.])v?(\d+\.\d+\.\d+)(?![\w.]*\d)")
_MINOR = re.compile(r"(?<![\w.])v?(\d+\.\d+)(?![.\d])")
# A row of the schemas table: | `file` | kind | github.com/o/r | `path` | release (commit) |
_ROW = re.compile(
    r"^\|\s*`(?P<file>[^`]+)`\s*\|[^|]*\|\s*(?P<repo>github\.com/[\w.-]+/[\w.-]+)\s*\|"
    r"[^|]*\|\s*(?P<release>v?\d+\.\d+\.\d+)\s*(?:\((?P<commit>[0-9a-f]{7,40})\))?\s*\|\s*$"
)
_FLOOR = re.compile(r"Kubernetes (\d+\.\d+) or newer")


class ReleaseTextError(ValueError):
    """A text names a release in a way that cannot be read, or two releases
    of one repository."""


def normal(release: str) -> str:
    return release.removeprefix("v")


def section(markdown: str, title: str) -> str:
    """The text of the `## title` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\s*$(?P<body>.*?)(?=^## |\Z)", markdown, re.M | re.S)
    if not match:
        raise ReleaseTextError(f"no '## {title}' section")
    return match.group("body")


def shell_commands(markdown: str) -> list[str]:
    """The commands of the ```sh blocks, continuation lines joined, comments
    left out."""
    commands = []
    for block in re.findall(r"^```sh\s*$(.*?)^```\s*$", markdown, re.M | re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def release_in(url_rest: str, where: str) -> str:
    """The one release a URL's path or ref names (`1.30.0`); a `release-1.30`
    branch must be that release's minor."""
    releases = {normal(m) for m in _RELEASE.findall(url_rest)}
    if len(releases) != 1:
        raise ReleaseTextError(
            f"{where}: expected one release (x.y.z) in the URL, found {sorted(releases) or 'none'}"
        )
    (release,) = releases
    minor = release.rsplit(".", 1)[0]
    for other in _MINOR.findall(url_rest):
        if normal(other) != minor:
            raise ReleaseTextError(
                f"{where}: the URL names {other} beside release {release} (a branch of another "
                "minor?)"
            )
    return release


def installed_releases(markdown: str, title: str = "Prerequisites") -> dict[str, str]:
    """`github.com/owner/name` -> release, for every GitHub repository the
    install commands of the section take a manifest or kustomization from."""
    found: dict[str, str] = {}
    for command in shell_commands(section(markdown, title)):
        if not command.startswith("kubectl"):
            continue
        for match in _GITHUB.finditer(command):
            repo = f"github.com/{match['owner']}/{match['name']}"
            release = release_in(match["rest"], f"{repo} in `{command}`")
            if found.setdefault(repo, release) != release:
                raise ReleaseTextError(
                    f"{repo}: the install commands name both {found[repo]} and {release}"
                )
    return found


def vendored_rows(markdown: str) -> list[dict[str, str]]:
    """The schemas table's rows: file, repo, release (no `v`), commit."""
    rows = []
    for line in markdown.splitlines():
        match = _ROW.match(line.strip())
        if match:
            row = match.groupdict()
            row["release"] = normal(row["release"])
            rows.append(row)
    return rows


def vendored_releases(markdown: str) -> dict[str, str]:
    """`github.com/owner/name` -> release, from the schemas table; one
    repository's rows must all name the same release."""
    found: dict[str, str] = {}
    for row in vendored_rows(markdown):
        repo, release = row["repo"], row["release"]
        if found.setdefault(repo, release) != release:
            raise ReleaseTextError(
                f"{repo}: the schemas table names both {found[repo]} and {release} "
                f"(`{row['file']}`); vendor every CRD of an operator from one release"
            )
    return found


def release_drift(installed: dict[str, str], vendored: dict[str, str]) -> list[str]:
    """One line per repository both texts name at different releases."""
    return [
        f"{repo}: docs/DEPLOY.md installs {installed[repo]}, the CRD schemas in "
        f"tests/deploy/schemas/ are vendored from {vendored[repo]}"
        for repo in sorted(installed.keys() & vendored.keys())
        if installed[repo] != vendored[repo]
    ]


def schema_api(file: Path) -> tuple[str, str]:
    doc = json.loads(file.read_text())
    return doc["apiVersion"], doc["kind"]


def manifest_apis(root: Path = DEPLOY_ROOT) -> set[tuple[str, str]]:
    """(apiVersion, kind) of every object written in the deploy tree."""
    found = set()
    for path in sorted([*root.rglob("*.yaml"), *root.rglob("*.yml")]):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        for doc in docs:
            if isinstance(doc, dict) and isinstance(doc.get("apiVersion"), str) and "kind" in doc:
                found.add((doc["apiVersion"], doc["kind"]))
    return found


def kubernetes_floor(markdown: str) -> str:
    """The oldest Kubernetes the Prerequisites ask for ("Kubernetes 1.30 or newer")."""
    match = _FLOOR.search(section(markdown, "Prerequisites"))
    if not match:
        raise ReleaseTextError("Prerequisites name no 'Kubernetes X.Y or newer'")
    return match.group(1)
