"""Validate rendered objects: built-in kinds with kubernetes-validate --strict
for the oldest Kubernetes the manifests support, custom resources against the
CRD schemas vendored under schemas/ with unknown fields refused."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import referencing
from kubernetes_validate.utils import SchemaNotFoundError

from tests.deploy.render import KUBERNETES_VERSION, REPO, SCHEMAS, Objects, ref


def validate_builtin(obj: dict) -> list[str]:
    """kubernetes-validate --strict for KUBERNETES_VERSION."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(top)"
        return [f"{ref(obj)}: {path}: {e.message}"]
    except SchemaNotFoundError:
        return [f"{ref(obj)}: no schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    return []


def strict(schema):
    """The CRD schema with unknown fields refused, as the API server does with
    `kubectl apply --validate=strict`: every object that lists its properties
    and does not keep unknown fields gets additionalProperties false."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        else:
            out[key] = strict(value)
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# Where kubernetes-validate's schemas find the built-in definitions.
DEFINITIONS = "https://kubernetes.io/api/_definitions.json"


@cache
def _k8s_definitions() -> referencing.Resource:
    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    version = max(
        (p for p in folder.glob("v*-local-strict") if p.name[1:].startswith(KUBERNETES_VERSION)),
        key=lambda p: p.name,
    )
    contents = json.loads((version / "_definitions.json").read_text())
    return referencing.Resource.from_contents(contents)


@cache
def crd_schemas() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a strict validator, from the vendored schemas."""
    registry = referencing.Registry().with_resource(DEFINITIONS, _k8s_definitions())
    validators = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        doc = json.loads(path.read_text())
        schema = strict(doc["schema"])
        schema.setdefault("properties", {})
        # metadata is ObjectMeta, checked as strictly as a built-in kind's.
        schema["properties"]["metadata"] = {
            "$ref": f"{DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        }
        schema["properties"]["apiVersion"] = {"const": doc["apiVersion"]}
        schema["properties"]["kind"] = {"const": doc["kind"]}
        schema["additionalProperties"] = False
        schema.setdefault("required", [])
        for field in ("apiVersion", "kind", "metadata"):
            if field not in schema["required"]:
                schema["required"].append(field)
        validators[(doc["apiVersion"], doc["kind"])] = jsonschema.Draft202012Validator(
            schema, registry=registry
        )
    return validators


def is_custom(obj: dict) -> bool:
    group = obj.get("apiVersion", "").rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def validate_custom(obj: dict) -> list[str]:
    """A custom resource against its vendored CRD schema, unknown fields refused."""
    validator = crd_schemas().get((obj.get("apiVersion"), obj.get("kind")))
    if validator is None:
        return [
            f"{ref(obj)}: no vendored CRD schema for {obj.get('apiVersion')} {obj.get('kind')} "
            f"(add it under {SCHEMAS.relative_to(REPO)})"
        ]
    problems = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.path]):
        path = ".".join(str(p) for p in error.path) or "(top)"
        problems.append(f"{ref(obj)}: {path}: {error.message}")
    return problems


def check_schemas(objects: Objects) -> list[str]:
    """Every object validates: built-in kinds with kubernetes-validate --strict,
    custom resources against the vendored CRD schemas."""
    problems = []
    for obj in objects:
        problems += validate_custom(obj) if is_custom(obj) else validate_builtin(obj)
    return problems
