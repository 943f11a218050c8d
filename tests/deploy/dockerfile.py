"""The Dockerfile's rules: targets `service` and `gpu`, no torch or models
extra in the service image, no dev extra anywhere, a non-root USER."""

from __future__ import annotations

import re


def dockerfile_stages(text: str) -> list[dict]:
    """The stages of a Dockerfile: name, base and instructions (continuation
    lines joined, comments dropped)."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    stages: list[dict] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else str(len(stages))
            stages.append({"name": name, "base": parts[0], "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((word, rest.strip()))
    return stages


def stage_chain(stages: list[dict], target: str) -> list[dict]:
    """The target stage and every stage it builds on or copies from."""
    by_name = {s["name"]: s for s in stages}
    seen: list[dict] = []
    todo = [target]
    while todo:
        name = todo.pop()
        stage = by_name.get(name)
        if stage is None or stage in seen:
            continue
        seen.append(stage)
        todo.append(stage["base"])
        for word, rest in stage["instructions"]:
            if word == "COPY":
                match = re.search(r"--from=(\S+)", rest)
                if match:
                    todo.append(match.group(1))
    return seen


def _base_chain(stages: list[dict], target: str) -> list[dict]:
    by_name = {s["name"]: s for s in stages}
    chain = []
    while target in by_name and by_name[target] not in chain:
        chain.append(by_name[target])
        target = by_name[target]["base"]
    return chain


EXTRA = re.compile(r"\[([^\]]*)\]")


def _extras(text: str) -> set[str]:
    return {e.strip().strip("'\"") for m in EXTRA.finditer(text) for e in m.group(1).split(",")}


def check_dockerfile(text: str) -> list[str]:
    """Targets `service` and `gpu` exist; the service image installs neither
    torch nor the models extra; no stage installs the dev extra; both final
    images run as a non-root USER."""
    problems = []
    stages = dockerfile_stages(text)
    names = {s["name"] for s in stages}
    for target in ("service", "gpu"):
        if target not in names:
            problems.append(f"Dockerfile: no stage named {target!r} (FROM ... AS {target})")
    for stage in stages:
        for word, rest in stage["instructions"]:
            if word == "RUN" and "dev" in _extras(rest):
                problems.append(
                    f"Dockerfile: stage {stage['name']!r} installs the dev extra: RUN {rest}"
                )
    if "service" in names:
        for stage in stage_chain(stages, "service"):
            for word, rest in stage["instructions"]:
                if word != "RUN":
                    continue
                if re.search(r"\btorch\b", rest) or "models" in _extras(rest):
                    problems.append(
                        f"Dockerfile: the service image builds on stage {stage['name']!r}, "
                        f"which installs torch or the models extra: RUN {rest}"
                    )
    for target in ("service", "gpu"):
        if target not in names:
            continue
        user = None
        for stage in _base_chain(stages, target):
            users = [rest for word, rest in stage["instructions"] if word == "USER"]
            if users:
                user = users[-1]
                break
        if user is None:
            problems.append(f"Dockerfile: stage {target!r} sets no USER (runs as root)")
        elif user.split(":")[0] in ("root", "0"):
            problems.append(f"Dockerfile: stage {target!r} runs as USER {user}")
    return problems
