"""A real NATS JetStream cluster on loopback: `size` nats-server processes
with `-js`, routed to each other, each with its own store folder, client,
cluster and monitoring port. Nodes are killed with SIGKILL and started again
on the same ports and store (a restarted node catches up from its peers)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from ourvidz_dev.embedded import free_port, nats_binary, wait_for_port

CLUSTER_NAME = "ourvidz-test"


class Node:
    def __init__(self, name: str, work: Path, used: set[int]) -> None:
        self.name = name
        self.store = work / name
        self.log_path = work / f"{name}.log"
        self.client_port, self.cluster_port, self.monitor_port = (
            _take(used),
            _take(used),
            _take(used),
        )
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, routes: str) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    nats_binary(), "-js", "-n", self.name, "-a", "127.0.0.1",
                    "-p", str(self.client_port), "-m", str(self.monitor_port),
                    "-sd", str(self.store),
                    "--cluster_name", CLUSTER_NAME,
                    "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                    "--routes", routes,
                ],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to the peers."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def jsz(self) -> dict | None:
        """The node's JetStream report (/jsz), or None while it does not answer."""
        url = f"http://127.0.0.1:{self.monitor_port}/jsz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response)
        except (OSError, ValueError):
            return None


def _take(used: set[int]) -> int:
    port = free_port(used)
    used.add(port)
    return port


class NatsCluster:
    def __init__(self, work: Path, size: int = 3) -> None:
        used: set[int] = set()
        self.nodes = [Node(f"n{i}", work, used) for i in range(size)]
        self.routes = ",".join(f"nats://127.0.0.1:{n.cluster_port}" for n in self.nodes)

    @property
    def url(self) -> str:
        """Every node, comma separated: NATS_URL for the services."""
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def start(self, within: float = 60.0) -> None:
        for node in self.nodes:
            node.start(self.routes)
        for node in self.nodes:
            wait_for_port(node.client_port, timeout=within)
        self.wait_meta_leader(within)

    def restart(self, node: Node, within: float = 60.0) -> None:
        node.start(self.routes)
        wait_for_port(node.client_port, timeout=within)

    def meta_leader(self) -> str | None:
        """The JetStream meta leader as every live node sees it, when they
        agree and the meta group has all its peers; None otherwise."""
        leaders = set()
        for node in self.nodes:
            if not node.alive:
                continue
            report = node.jsz()
            meta = (report or {}).get("meta_cluster") or {}
            if not meta.get("leader") or meta.get("cluster_size", 0) < len(self.nodes):
                return None
            leaders.add(meta["leader"])
        return leaders.pop() if len(leaders) == 1 else None

    def wait_meta_leader(self, within: float = 60.0) -> str:
        deadline = time.monotonic() + within
        while (leader := self.meta_leader()) is None:
            if time.monotonic() > deadline:
                tails = {n.name: self.tail(n) for n in self.nodes}
                raise AssertionError(f"no JetStream meta leader after {within} s: {tails}")
            time.sleep(0.1)
        return leader

    def tail(self, node: Node, lines: int = 15) -> str:
        try:
            return "\n".join(node.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
