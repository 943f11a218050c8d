"""The deployment's rules, each a plain function `check_x(objects) -> list[str]`
that returns one line per problem, naming the object and the field. The tests
call them on the real overlays and on deliberately broken copies, so a check
that cannot fail shows up as a failing test."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator

import yaml

from ourvidz import metrics, queue
from ourvidz.catalog import CATALOG
from tests.deploy.render import (
    CLUSTER_SCOPED,
    DB_LOGINS,
    GPU,
    LONG_RUNNING,
    MODEL_WORKERS,
    NAMESPACE,
    SIGNING_KEY,
    Objects,
    component_workloads,
    containers,
    named,
    pod_labels,
    pod_spec,
    ref,
    selected,
    selects,
    workloads,
)
from tests.deploy.validation import check_schemas, is_custom

Check = Callable[[Objects], list[str]]


def check_namespace(objects: Objects) -> list[str]:
    """Every namespaced object lives in the ourvidz namespace."""
    problems = []
    for obj in objects:
        if obj.get("kind") in CLUSTER_SCOPED:
            continue
        namespace = obj["metadata"].get("namespace")
        if namespace != NAMESPACE:
            problems.append(f"{ref(obj)}: metadata.namespace is {namespace!r}, not {NAMESPACE!r}")
    return problems


def check_go_memory_limits(objects: Objects) -> list[str]:
    """A container given GOMEMLIMIT (NATS, the collector) keeps it under its
    memory limit, or the Go runtime lets the heap grow into the OOM killer."""
    problems = []
    for obj, pod in workloads(objects):
        for c in pod.get("containers", []):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
            if "GOMEMLIMIT" not in env or not limit:
                continue
            soft = _quantity(env["GOMEMLIMIT"].replace("B", ""), _KUBE_UNITS)
            if soft >= _quantity(limit, _KUBE_UNITS):
                problems.append(
                    f"{ref(obj)} container {c['name']}: GOMEMLIMIT {env['GOMEMLIMIT']} "
                    f"is not under its memory limit {limit}"
                )
    return problems


def check_public_names(objects: Objects) -> list[str]:
    """The public URLs of ourvidz-config name the hosts the Ingresses serve:
    PUBLIC_BASE_URL the gateway's, S3_PUBLIC_ENDPOINT the downloads' (the
    signed URLs carry it; a presigned URL is only valid for its host)."""
    from urllib.parse import urlsplit

    config = (named(objects, "ConfigMap").get("ourvidz-config") or {}).get("data", {})
    ingresses = named(objects, "Ingress")
    problems = []
    for key, ingress in (("PUBLIC_BASE_URL", "gateway"), ("S3_PUBLIC_ENDPOINT", "s3")):
        if key not in config or ingress not in ingresses:
            continue
        value = config[key]
        host = urlsplit(value if "://" in value else f"https://{value}").hostname
        served = {r.get("host") for r in ingresses[ingress]["spec"].get("rules", [])}
        if host not in served:
            problems.append(
                f"ConfigMap/ourvidz-config: {key} names {host}, Ingress/{ingress} serves "
                f"{', '.join(sorted(h for h in served if h))}"
            )
    return problems


def check_pod_security(objects: Objects) -> list[str]:
    """The namespace enforces at least the baseline Pod Security Standard: a
    pod with host namespaces, host paths or privileges is refused."""
    found = [o for o in objects if o.get("kind") == "Namespace"]
    if not found:
        return ["Namespace: not in the render"]
    labels = found[0]["metadata"].get("labels") or {}
    level = labels.get("pod-security.kubernetes.io/enforce")
    if level not in ("baseline", "restricted"):
        return [f"{ref(found[0])}: pod-security.kubernetes.io/enforce is {level!r}"]
    return []


def operator_secrets(objects: Objects) -> set[str]:
    """Secrets an operator makes from a custom resource in the render."""
    names = set()
    for name in named(objects, "Cluster"):
        names |= {f"{name}-{s}" for s in ("app", "superuser", "ca", "server", "replication")}
    return names


def _secret_refs_in(node, where: str) -> Iterator[tuple[str, str]]:
    """(field path, Secret name) for each Secret a custom resource's spec names:
    a field whose name says secret (or a MinIO Tenant's `configuration` and
    `users`) holding a name, a {name} reference or a list of them."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}"
            lower = key.lower()
            if "secret" in lower or key in ("configuration", "users"):
                if isinstance(value, str) and lower.endswith(("secret", "secretname")):
                    yield path, value
                    continue
                if isinstance(value, dict) and isinstance(value.get("name"), str):
                    yield path + ".name", value["name"]
                    continue
                if (
                    isinstance(value, list)
                    and value
                    and all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in value)
                ):
                    for i, v in enumerate(value):
                        yield f"{path}[{i}].name", v["name"]
                    continue
            yield from _secret_refs_in(value, path)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _secret_refs_in(item, f"{where}[{i}]")


def _pod_refs(pod: dict) -> Iterator[tuple[str, str, str, str | None, bool]]:
    """(field, kind, name, key, optional) for each object a pod spec names."""
    for c in containers(pod):
        cname = c.get("name")
        for i, source in enumerate(c.get("envFrom", [])):
            for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if field in source:
                    r = source[field]
                    yield (
                        f"containers[{cname}].envFrom[{i}].{field}",
                        kind,
                        r["name"],
                        None,
                        bool(r.get("optional")),
                    )
        for env in c.get("env", []):
            source = env.get("valueFrom") or {}
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if field in source:
                    r = source[field]
                    yield (
                        f"containers[{cname}].env[{env['name']}].{field}",
                        kind,
                        r["name"],
                        r.get("key"),
                        bool(r.get("optional")),
                    )
    for volume in pod.get("volumes", []):
        vname = volume.get("name")
        if "secret" in volume:
            v = volume["secret"]
            yield (
                f"volumes[{vname}].secret",
                "Secret",
                v["secretName"],
                None,
                bool(v.get("optional")),
            )
        if "configMap" in volume:
            v = volume["configMap"]
            yield (
                f"volumes[{vname}].configMap",
                "ConfigMap",
                v["name"],
                None,
                bool(v.get("optional")),
            )
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            yield (
                f"volumes[{vname}].persistentVolumeClaim",
                "PersistentVolumeClaim",
                claim,
                None,
                False,
            )
        for j, source in enumerate((volume.get("projected") or {}).get("sources", [])):
            for field, kind in (("secret", "Secret"), ("configMap", "ConfigMap")):
                if field in source:
                    r = source[field]
                    yield (
                        f"volumes[{vname}].projected.sources[{j}].{field}",
                        kind,
                        r["name"],
                        None,
                        bool(r.get("optional")),
                    )
    for i, secret in enumerate(pod.get("imagePullSecrets", [])):
        yield (f"imagePullSecrets[{i}]", "Secret", secret["name"], None, False)
    account = pod.get("serviceAccountName")
    if account and account != "default":
        yield ("serviceAccountName", "ServiceAccount", account, None, False)


def _data_keys(obj: dict) -> set[str] | None:
    """The keys an object carries, or None when it carries none yet (a Secret
    filled in the cluster)."""
    keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
    keys |= set(obj.get("binaryData") or {})
    return keys or None


def _port_names(service: dict) -> tuple[set, set]:
    ports = service.get("spec", {}).get("ports", [])
    return {p.get("name") for p in ports}, {p.get("port") for p in ports}


def _container_ports(pod: dict) -> tuple[set, set]:
    ports = [p for c in containers(pod, init=False) for p in c.get("ports", [])]
    return {p.get("name") for p in ports}, {p.get("containerPort") for p in ports}


def _port_references(objects: Objects) -> list[str]:
    """Probe ports and Service target ports name ports the pods have."""
    problems = []
    for obj, pod in workloads(objects):
        names, _ = _container_ports(pod)
        for c in containers(pod):
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                spec = c.get(probe) or {}
                for action in ("httpGet", "tcpSocket", "grpc"):
                    port = (spec.get(action) or {}).get("port")
                    if isinstance(port, str) and port not in names:
                        problems.append(
                            f"{ref(obj)}: containers[{c['name']}].{probe}.{action}.port "
                            f"{port!r} is not a named container port"
                        )
    for service in named(objects, "Service").values():
        selector = service["spec"].get("selector")
        pods = [p for o, p in workloads(objects) if selector and selects(selector, pod_labels(o))]
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort")
            if not isinstance(target, str):
                continue
            for pod in pods:
                if target not in _container_ports(pod)[0]:
                    problems.append(
                        f"{ref(service)}: spec.ports[{port.get('name')}].targetPort {target!r} "
                        "is not a named port of the pods it selects"
                    )
                    break
    return problems


def check_references(objects: Objects) -> list[str]:
    """Every name an object uses resolves in the render: Secrets, ConfigMaps,
    claims and ServiceAccounts of pods; Ingress backends and their ports;
    Service, PDB, NetworkPolicy and monitor selectors; probe and target ports;
    autoscaler targets; the Secrets and clusters custom resources name."""
    problems = []
    have = {kind: named(objects, kind) for kind in ("Secret", "ConfigMap")}
    have["Secret"] = {**{n: {} for n in operator_secrets(objects)}, **have["Secret"]}
    for kind in ("PersistentVolumeClaim", "ServiceAccount", "Service"):
        have[kind] = named(objects, kind)
    # A StatefulSet's volumeClaimTemplates make its claims.
    for obj in objects:
        if obj.get("kind") == "StatefulSet":
            for template in obj["spec"].get("volumeClaimTemplates", []):
                have["PersistentVolumeClaim"][template["metadata"]["name"]] = {}

    for obj, pod in workloads(objects):
        for field, kind, name, key, optional in _pod_refs(pod):
            target = have[kind].get(name)
            if target is None:
                if not optional:
                    problems.append(f"{ref(obj)}: {field} names {kind}/{name}, not in the render")
                continue
            keys = _data_keys(target)
            if key is not None and keys is not None and key not in keys:
                problems.append(f"{ref(obj)}: {field} names key {key!r} that {kind}/{name} lacks")
        if obj.get("kind") == "StatefulSet":
            service = obj["spec"].get("serviceName")
            if service and service not in have["Service"]:
                problems.append(
                    f"{ref(obj)}: spec.serviceName names Service/{service}, not in the render"
                )

    for ingress in named(objects, "Ingress").values():
        spec = ingress["spec"]
        backends = (
            [("spec.defaultBackend", spec["defaultBackend"])] if "defaultBackend" in spec else []
        )
        for i, rule in enumerate(spec.get("rules", [])):
            for j, path in enumerate((rule.get("http") or {}).get("paths", [])):
                backends.append((f"spec.rules[{i}].http.paths[{j}].backend", path["backend"]))
        for field, backend in backends:
            service = backend.get("service")
            if not service:
                continue
            target = have["Service"].get(service["name"])
            if target is None:
                problems.append(
                    f"{ref(ingress)}: {field} names Service/{service['name']}, not in the render"
                )
                continue
            names, numbers = _port_names(target)
            port = service.get("port", {})
            if ("name" in port and port["name"] not in names) or (
                "number" in port and port["number"] not in numbers
            ):
                problems.append(
                    f"{ref(ingress)}: {field} port {port} is not a port of {ref(target)}"
                )
        for i, tls in enumerate(spec.get("tls", [])):
            made_by_cert_manager = any(
                a.startswith("cert-manager.io/") for a in ingress["metadata"].get("annotations", {})
            )
            name = tls.get("secretName")
            if name and name not in have["Secret"] and not made_by_cert_manager:
                problems.append(
                    f"{ref(ingress)}: spec.tls[{i}].secretName names Secret/{name}, not in the render"
                )

    for service in named(objects, "Service").values():
        selector = service["spec"].get("selector")
        if selector and not selected(selector, objects):
            problems.append(
                f"{ref(service)}: spec.selector {selector} matches no pod in the render"
            )
    for pdb in named(objects, "PodDisruptionBudget").values():
        if not selected(pdb["spec"].get("selector"), objects):
            problems.append(f"{ref(pdb)}: spec.selector matches no pod in the render")
    for policy in named(objects, "NetworkPolicy").values():
        spec = policy["spec"]
        if spec.get("podSelector") and not selected(spec["podSelector"], objects):
            problems.append(f"{ref(policy)}: spec.podSelector matches no pod in the render")
        for direction, peers in (("ingress", "from"), ("egress", "to")):
            for i, rule in enumerate(spec.get(direction) or []):
                for j, peer in enumerate(rule.get(peers) or []):
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        selector = peer["podSelector"]
                        if selector and not (
                            selected(selector, objects) or selected(selector, component_workloads())
                        ):
                            hint = ""
                            if any(set(p) == {"namespaceSelector"} for p in rule[peers]):
                                hint = (
                                    " (a peer of its own selects pods in this namespace; for"
                                    " pods of the other namespace, put namespaceSelector and"
                                    " podSelector in one peer)"
                                )
                            problems.append(
                                f"{ref(policy)}: spec.{direction}[{i}].{peers}[{j}].podSelector "
                                f"matches no pod in the render nor in any component{hint}"
                            )

    for target_of, field in (
        ("HorizontalPodAutoscaler", "spec.scaleTargetRef"),
        ("ScaledObject", "spec.scaleTargetRef"),
    ):
        for scaler in named(objects, target_of).values():
            target = scaler["spec"]["scaleTargetRef"]
            kind = target.get("kind", "Deployment")
            if target["name"] not in named(objects, kind):
                problems.append(
                    f"{ref(scaler)}: {field} names {kind}/{target['name']}, not in the render"
                )
    auths = named(objects, "TriggerAuthentication")
    for scaler in named(objects, "ScaledObject").values():
        for i, trigger in enumerate(scaler["spec"].get("triggers", [])):
            auth = trigger.get("authenticationRef")
            if auth and auth.get("kind", "TriggerAuthentication") == "TriggerAuthentication":
                if auth["name"] not in auths:
                    problems.append(
                        f"{ref(scaler)}: spec.triggers[{i}].authenticationRef names "
                        f"TriggerAuthentication/{auth['name']}, not in the render"
                    )

    problems += _port_references(objects)
    for monitor in named(objects, "PodMonitor").values():
        if not selected(monitor["spec"].get("selector"), objects):
            problems.append(f"{ref(monitor)}: spec.selector matches no pod in the render")
    for monitor in named(objects, "ServiceMonitor").values():
        services = named(objects, "Service").values()
        selector = monitor["spec"].get("selector")
        if not any(selects(selector, s["metadata"].get("labels") or {}) for s in services):
            problems.append(f"{ref(monitor)}: spec.selector matches no Service in the render")

    clusters = named(objects, "Cluster")
    for backup in named(objects, "ScheduledBackup").values():
        name = backup["spec"].get("cluster", {}).get("name")
        if name not in clusters:
            problems.append(
                f"{ref(backup)}: spec.cluster.name names Cluster/{name}, not in the render"
            )
    for obj in objects:
        if is_custom(obj):
            for field, name in _secret_refs_in(obj.get("spec", {}), "spec"):
                if name not in have["Secret"]:
                    problems.append(f"{ref(obj)}: {field} names Secret/{name}, not in the render")
    return problems


def check_resources(objects: Objects) -> list[str]:
    """Every container requests CPU and memory and has a memory limit."""
    problems = []
    for obj, pod in workloads(objects):
        for c in containers(pod):
            res = c.get("resources") or {}
            requests, limits = res.get("requests") or {}, res.get("limits") or {}
            for field, have in (
                ("requests.cpu", "cpu" in requests),
                ("requests.memory", "memory" in requests),
                ("limits.memory", "memory" in limits),
            ):
                if not have:
                    problems.append(
                        f"{ref(obj)}: containers[{c['name']}].resources.{field} is missing"
                    )
    return problems


def check_probes(objects: Objects) -> list[str]:
    """Every long-running container has readiness and liveness probes; the model
    workers also a startupProbe (loading a model takes minutes)."""
    problems = []
    for obj, pod in workloads(objects, LONG_RUNNING):
        wanted = ["readinessProbe", "livenessProbe"]
        if obj["metadata"]["name"] in MODEL_WORKERS:
            wanted.append("startupProbe")
        for c in containers(pod, init=False):
            for probe in wanted:
                if probe not in c:
                    problems.append(f"{ref(obj)}: containers[{c['name']}].{probe} is missing")
    return problems


def check_security(objects: Objects) -> list[str]:
    """Every container runs as non-root, without privilege escalation, on a
    read-only root filesystem, with every capability dropped."""
    problems = []
    for obj, pod in workloads(objects):
        pod_ctx = pod.get("securityContext") or {}
        for c in containers(pod):
            ctx = c.get("securityContext") or {}
            where = f"{ref(obj)}: containers[{c['name']}].securityContext"
            if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
                problems.append(f"{where}.runAsNonRoot is not true (nor the pod's)")
            if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
                problems.append(f"{where}.runAsUser is 0")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}.allowPrivilegeEscalation is not false")
            if ctx.get("privileged"):
                problems.append(f"{where}.privileged is true")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}.readOnlyRootFilesystem is not true")
            if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{where}.capabilities.drop lacks ALL")
    return problems


def _image_problem(image: str) -> str | None:
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return "has no tag"
    if last.rsplit(":", 1)[1] == "latest":
        return "is tagged latest"
    return None


def check_images(objects: Objects) -> list[str]:
    """Every image is pinned: a tag other than latest, or a digest; the
    project's images come through kustomize `images:` (no bare `ourvidz`)."""
    problems = []
    for obj, pod in workloads(objects):
        for c in containers(pod):
            image = c.get("image", "")
            why = _image_problem(image)
            if why:
                problems.append(f"{ref(obj)}: containers[{c['name']}].image {image!r} {why}")
    for obj in objects:
        if not is_custom(obj):
            continue
        spec = obj.get("spec") or {}
        for field in ("image", "imageName"):
            image = spec.get(field)
            if isinstance(image, str):
                why = _image_problem(image)
                if why:
                    problems.append(f"{ref(obj)}: spec.{field} {image!r} {why}")
    return problems


def _repository(image: str) -> str:
    """The image's last path part without tag or digest: `ourvidz-gpu`."""
    return image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]


def check_image_split(objects: Objects) -> list[str]:
    """The model workers run the `ourvidz-gpu` image (torch and the models);
    the other services and the migration Job the `ourvidz` image, which has
    neither."""
    problems = []
    for obj, pod in workloads(objects):
        name = obj["metadata"]["name"]
        if name in MODEL_WORKERS:
            wanted = "ourvidz-gpu"
        elif name in DB_LOGINS:
            wanted = "ourvidz"
        else:
            continue
        for c in containers(pod):
            image = c.get("image", "")
            if _repository(image) != wanted:
                problems.append(
                    f"{ref(obj)}: containers[{c['name']}].image {image!r} is not {wanted}"
                )
    return problems


def _replicas(obj: dict, objects: Objects) -> int:
    """The fewest replicas a workload runs (an autoscaler's minimum wins)."""
    least = obj["spec"].get("replicas", 1)
    name = obj["metadata"]["name"]
    for hpa in named(objects, "HorizontalPodAutoscaler").values():
        if hpa["spec"]["scaleTargetRef"]["name"] == name:
            least = hpa["spec"].get("minReplicas", 1)
    for scaler in named(objects, "ScaledObject").values():
        if scaler["spec"]["scaleTargetRef"]["name"] == name:
            least = scaler["spec"].get("minReplicaCount", 0)
    return least


def check_disruption_budgets(objects: Objects) -> list[str]:
    """Every Deployment and StatefulSet has a PodDisruptionBudget, and none
    that forbids every eviction (a node drain would hang on it)."""
    problems = []
    pdbs = list(named(objects, "PodDisruptionBudget").values())
    for obj, _ in workloads(objects, ("Deployment", "StatefulSet")):
        labels = pod_labels(obj)
        mine = [p for p in pdbs if selects(p["spec"].get("selector"), labels)]
        if not mine:
            problems.append(f"{ref(obj)}: no PodDisruptionBudget selects its pods")
        replicas = _replicas(obj, objects)
        for pdb in mine:
            spec = pdb["spec"]
            if (
                spec.get("maxUnavailable") in (0, "0%")
                or (
                    isinstance(spec.get("minAvailable"), int)
                    and replicas
                    and spec["minAvailable"] >= replicas
                )
                or spec.get("minAvailable") == "100%"
            ):
                problems.append(
                    f"{ref(pdb)}: spec allows no eviction of {ref(obj)} "
                    f"({replicas} replica(s)); a node drain would never finish"
                )
    return problems


def check_gpu_autoscaling(objects: Objects) -> list[str]:
    """Every model worker is scaled by a KEDA ScaledObject, and no workload
    by two autoscalers."""
    problems = []
    targets: dict[str, list[str]] = {}
    for kind in ("ScaledObject", "HorizontalPodAutoscaler"):
        for scaler in named(objects, kind).values():
            target = scaler["spec"]["scaleTargetRef"]["name"]
            targets.setdefault(target, []).append(ref(scaler))
    scaled = {s["spec"]["scaleTargetRef"]["name"] for s in named(objects, "ScaledObject").values()}
    for name in MODEL_WORKERS:
        if name not in scaled:
            problems.append(f"Deployment/{name}: no ScaledObject has it as spec.scaleTargetRef")
    for target, scalers in targets.items():
        # KEDA makes its own HPA (keda-hpa-<name>); one in the render besides
        # a ScaledObject would fight it.
        if len(scalers) > 1:
            problems.append(
                f"{target}: scaled by {', '.join(sorted(scalers))}; one autoscaler only"
            )
    return problems


# max(ourvidz_jobs_waiting{...}): every Jobs replica reports the same value.
_WAITING_QUERY = re.compile(
    rf"max\s*\(\s*{metrics.JOBS_WAITING._name}\s*\{{(?P<labels>[^}}]*)\}}\s*\)"
)
_MATCHER = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


def _family_trigger_problems(scaler: dict, family: str) -> list[str]:
    """Problems of the triggers of a model worker family's ScaledObject."""
    problems = []
    triggers = scaler["spec"].get("triggers", [])
    if not any(t.get("type") == "prometheus" for t in triggers):
        problems.append(
            f"{ref(scaler)}: spec.triggers has no prometheus trigger on "
            f'{metrics.JOBS_WAITING._name}{{family="{family}"}}'
        )
    for i, trigger in enumerate(triggers):
        meta, where = trigger.get("metadata") or {}, f"{ref(scaler)}: spec.triggers[{i}]"
        if trigger.get("type") == "nats-jetstream":
            problems.append(
                f"{where}: scales on consumer {meta.get('consumer')!r}'s lag, which is no longer "
                "the backlog (Jobs holds queued jobs back until a worker can take one)"
            )
        if trigger.get("type") != "prometheus":
            continue
        query = meta.get("query", "")
        found = _WAITING_QUERY.fullmatch(query.strip())
        labels = dict(_MATCHER.findall(found["labels"])) if found else {}
        if not found:
            problems.append(
                f"{where}.metadata.query {query!r} is not max({metrics.JOBS_WAITING._name}{{...}})"
            )
        elif labels.get("family") != family:
            problems.append(
                f"{where}.metadata.query reads family {labels.get('family')!r}, not {family!r}"
            )
        elif labels.get("namespace", NAMESPACE) != NAMESPACE:
            problems.append(
                f"{where}.metadata.query reads namespace {labels['namespace']!r}, not {NAMESPACE!r}"
            )
        if not str(meta.get("serverAddress", "")).startswith(("http://", "https://")):
            problems.append(f"{where}.metadata.serverAddress is not a Prometheus URL")
        try:
            positive = float(meta.get("threshold", "")) > 0
        except ValueError:
            positive = False
        if not positive:
            problems.append(f"{where}.metadata.threshold is not a number of jobs above 0")
    return problems


def check_queue_scaling(objects: Objects) -> list[str]:
    """Each model worker family scales on its own jobs waiting (Jobs' gauge
    ourvidz_jobs_waiting, max() of its replicas) read from one Prometheus; a
    JetStream trigger (the enhancer's) names a consumer that exists."""
    problems = []
    families = sorted({job_type.worker for job_type in CATALOG.values()})
    addresses: dict[str, list[str]] = {}
    for scaler in named(objects, "ScaledObject").values():
        target = scaler["spec"]["scaleTargetRef"]["name"]
        if target in families:
            problems += _family_trigger_problems(scaler, target)
        for i, trigger in enumerate(scaler["spec"].get("triggers", [])):
            meta = trigger.get("metadata") or {}
            if trigger.get("type") == "prometheus" and meta.get("serverAddress"):
                addresses.setdefault(meta["serverAddress"], []).append(ref(scaler))
            if trigger.get("type") == "nats-jetstream" and target not in families:
                wanted = (queue.TASKS_STREAM, queue.ENHANCE_CONSUMER)
                if (meta.get("stream"), meta.get("consumer")) != wanted:
                    problems.append(
                        f"{ref(scaler)}: spec.triggers[{i}] reads consumer "
                        f"{meta.get('stream')}/{meta.get('consumer')}, not {'/'.join(wanted)}"
                    )
    if len(addresses) > 1:
        problems.append(
            "ScaledObject: the prometheus triggers name several servers ("
            + "; ".join(f"{a}: {', '.join(sorted(s))}" for a, s in sorted(addresses.items()))
            + "); set the address in one place (components/queue-autoscaling)"
        )
    return problems


def check_gateway_autoscaling(objects: Objects) -> list[str]:
    """The gateway is scaled by a HorizontalPodAutoscaler."""
    for hpa in named(objects, "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        if target.get("kind") == "Deployment" and target["name"] == "gateway":
            return []
    return ["Deployment/gateway: no HorizontalPodAutoscaler has it as spec.scaleTargetRef"]


def secrets_used(pod: dict) -> set[str]:
    return {name for _, kind, name, _, _ in _pod_refs(pod) if kind == "Secret"}


def _is_db_secret(name: str, objects: Objects) -> bool:
    return name.startswith("ourvidz-db-") or name in operator_secrets(objects)


def check_database_logins(objects: Objects) -> list[str]:
    """Each workload holds only its own database login; the model workers
    without a database (sdxl, wan) hold none."""
    problems = []
    for obj, pod in workloads(objects):
        name = obj["metadata"]["name"]
        allowed = {DB_LOGINS[name]} if name in DB_LOGINS else set()
        extra = {s for s in secrets_used(pod) if _is_db_secret(s, objects)} - allowed
        for secret in sorted(extra):
            problems.append(f"{ref(obj)}: holds database Secret/{secret}, not its own login")
        for c in containers(pod):
            for env in c.get("env", []):
                if env["name"].endswith("DATABASE_URL") and name not in DB_LOGINS:
                    problems.append(
                        f"{ref(obj)}: containers[{c['name']}].env[{env['name']}] is a database URL"
                    )
    return problems


def check_signing_key(objects: Objects) -> list[str]:
    """Only the gateway holds the token signing key."""
    problems = []
    for obj, pod in workloads(objects):
        if SIGNING_KEY in secrets_used(pod) and obj["metadata"]["name"] != "gateway":
            problems.append(
                f"{ref(obj)}: holds Secret/{SIGNING_KEY}; only the gateway signs tokens"
            )
    if not any(
        SIGNING_KEY in secrets_used(p)
        for o, p in workloads(objects)
        if o["metadata"]["name"] == "gateway"
    ):
        problems.append(f"Deployment/gateway: does not mount Secret/{SIGNING_KEY}")
    return problems


def _gpu_requested(pod: dict) -> list[str]:
    found = []
    for c in containers(pod):
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            if GPU in (res.get(part) or {}):
                found.append(f"containers[{c['name']}].resources.{part}[{GPU}]")
    return found


def check_dev_cpu_only(objects: Objects) -> list[str]:
    """dev runs tiny models on CPU: no claim for model weights, no GPU."""
    problems = []
    for claim in named(objects, "PersistentVolumeClaim"):
        if "model" in claim:
            problems.append(f"PersistentVolumeClaim/{claim}: dev has no model volume")
    for obj, pod in workloads(objects):
        for field, kind, name, _, _ in _pod_refs(pod):
            if kind == "PersistentVolumeClaim" and "model" in name:
                problems.append(f"{ref(obj)}: {field} claims {name}; dev has no model volume")
        for field in _gpu_requested(pod):
            problems.append(f"{ref(obj)}: {field} is set; dev requests no GPU")
    return problems


def check_prod_gpus(objects: Objects) -> list[str]:
    """In prod each model worker's container has a nvidia.com/gpu limit."""
    problems = []
    deployments = named(objects, "Deployment")
    for name in MODEL_WORKERS:
        if name not in deployments:
            problems.append(f"Deployment/{name}: not in the render")
            continue
        pod = pod_spec(deployments[name])
        for c in containers(pod, init=False):
            limit = ((c.get("resources") or {}).get("limits") or {}).get(GPU)
            if not limit or int(limit) < 1:
                problems.append(
                    f"Deployment/{name}: containers[{c['name']}].resources.limits[{GPU}] is not set"
                )
    return problems


def _allows_dns(policy: dict) -> bool:
    spec = policy["spec"]
    if spec.get("podSelector") not in ({}, None):
        return False
    for rule in spec.get("egress") or []:
        ports = rule.get("ports") or []
        if not ports or any(p.get("port") in (53, "dns", "dns-udp") for p in ports):
            return True
    return False


def check_default_deny(objects: Objects) -> list[str]:
    """A NetworkPolicy selects every pod and allows nothing, in and out (the
    others open what each service needs), and one lets every pod reach DNS."""
    policies = named(objects, "NetworkPolicy").values()
    problems = []
    deny = [
        p
        for p in policies
        if p["spec"].get("podSelector") in ({}, None)
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes") or [])
    ]
    if not deny:
        problems.append(
            "NetworkPolicy: none with an empty podSelector, policyTypes [Ingress, Egress] and no rules"
        )
    elif not any(_allows_dns(p) for p in policies):
        problems.append(
            f"{ref(deny[0])}: denies all egress, and no NetworkPolicy with an empty podSelector "
            "lets pods reach DNS (port 53)"
        )
    return problems


def _bound_accounts(objects: Objects) -> set[str]:
    """ServiceAccounts some (Cluster)RoleBinding gives rights to."""
    bound = set()
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        for binding in named(objects, kind).values():
            for subject in binding.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount":
                    bound.add(subject["name"])
    return bound


def check_service_accounts(objects: Objects) -> list[str]:
    """Each workload runs as its own ServiceAccount, and gets an API token only
    when a RoleBinding gives that account rights."""
    problems = []
    accounts = named(objects, "ServiceAccount")
    bound = _bound_accounts(objects)
    users: dict[str, list[str]] = {}
    for obj, pod in workloads(objects):
        account = pod.get("serviceAccountName") or "default"
        users.setdefault(account, []).append(ref(obj))
        if account == "default":
            problems.append(
                f"{ref(obj)}: spec.serviceAccountName is the namespace's default account"
            )
        automount = pod.get("automountServiceAccountToken")
        if automount is None:
            automount = accounts.get(account, {}).get("automountServiceAccountToken", True)
        if automount and account not in bound:
            problems.append(
                f"{ref(obj)}: automountServiceAccountToken is not false, and no RoleBinding "
                f"gives ServiceAccount/{account} any right to use the API"
            )
    for account, owners in users.items():
        if account != "default" and len(owners) > 1:
            problems.append(f"ServiceAccount/{account}: shared by {', '.join(sorted(owners))}")
    return problems


def check_config_files(objects: Objects) -> list[str]:
    """Every file a ConfigMap carries as JSON or YAML (a dashboard, a collector
    or Prometheus configuration) parses."""
    problems = []
    for cm in named(objects, "ConfigMap").values():
        for key, text in (cm.get("data") or {}).items():
            try:
                if key.endswith(".json"):
                    json.loads(text)
                elif key.endswith((".yaml", ".yml")):
                    list(yaml.safe_load_all(text))
            except (ValueError, yaml.YAMLError) as e:
                first = str(e).splitlines()[0]
                problems.append(f"{ref(cm)}: data[{key}] does not parse: {first}")
    return problems


def check_ingress_tls(objects: Objects) -> list[str]:
    """Once an Ingress serves TLS, every public host does: the signed download
    URLs and the studio's pages name https for both (S3_PUBLIC_ENDPOINT,
    PUBLIC_BASE_URL), so a host left on plain HTTP answers them with the
    controller's stand-in certificate."""
    ingresses = named(objects, "Ingress").values()
    covered = {h for i in ingresses for t in i["spec"].get("tls") or [] for h in t.get("hosts", [])}
    if not covered:
        return []
    return [
        f"{ref(i)}: host {rule['host']} has no TLS while {', '.join(sorted(covered))} has"
        for i in ingresses
        for rule in i["spec"].get("rules", [])
        if rule.get("host") and rule["host"] not in covered
    ]


_NATS_UNITS = {"": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20}
_NATS_UNITS |= {"G": 1 << 30, "GB": 1 << 30, "T": 1 << 40, "TB": 1 << 40}
_KUBE_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
_KUBE_UNITS |= {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def _quantity(text: str, units: dict[str, int]) -> int:
    found = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    if not found or found.group(2) not in units:
        raise ValueError(f"not a size: {text!r}")
    return int(found.group(1)) * units[found.group(2)]


def check_nats_store(objects: Objects) -> list[str]:
    """JetStream's max_file_store (nats-config) fits in the NATS data volume,
    with a tenth to spare: past it JetStream refuses new messages cleanly,
    where a full disk fails its writes instead."""
    conf = (named(objects, "ConfigMap").get("nats-config") or {}).get("data", {})
    nats = named(objects, "StatefulSet").get("nats")
    if not conf or not nats:
        return []
    found = re.search(r"max_file_store\s*[:=]?\s*([0-9]+\s*[A-Za-z]*)", conf.get("nats.conf", ""))
    if not found:
        return ["ConfigMap/nats-config: no max_file_store (JetStream would take most of the disk)"]
    store = _quantity(found.group(1), _NATS_UNITS)
    problems = []
    for claim in nats["spec"].get("volumeClaimTemplates", []):
        if claim["metadata"]["name"] != "data":
            continue
        size = _quantity(claim["spec"]["resources"]["requests"]["storage"], _KUBE_UNITS)
        if store > size * 0.9:
            problems.append(
                f"ConfigMap/nats-config: max_file_store {found.group(1)} does not fit the "
                f"{claim['spec']['resources']['requests']['storage']} volume of {ref(nats)}"
            )
    return problems


# Every overlay: (name, check). Some only apply to one overlay.
CHECKS: dict[str, Check] = {
    "schemas": check_schemas,
    "namespace": check_namespace,
    "references": check_references,
    "resources": check_resources,
    "probes": check_probes,
    "security": check_security,
    "images": check_images,
    "image_split": check_image_split,
    "disruption_budgets": check_disruption_budgets,
    "database_logins": check_database_logins,
    "signing_key": check_signing_key,
    "default_deny": check_default_deny,
    "service_accounts": check_service_accounts,
    "config_files": check_config_files,
    "ingress_tls": check_ingress_tls,
    "nats_store": check_nats_store,
    "pod_security": check_pod_security,
    "public_names": check_public_names,
    "go_memory_limits": check_go_memory_limits,
}
OVERLAY_CHECKS: dict[str, dict[str, Check]] = {
    "dev": {"cpu_only": check_dev_cpu_only},
    "prod": {
        "gpu_autoscaling": check_gpu_autoscaling,
        "queue_scaling": check_queue_scaling,
        "gateway_autoscaling": check_gateway_autoscaling,
        "gpus": check_prod_gpus,
    },
}


def checks_for(overlay: str) -> dict[str, Check]:
    return {**CHECKS, **OVERLAY_CHECKS.get(overlay, {})}
