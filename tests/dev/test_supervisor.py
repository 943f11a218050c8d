"""The dev supervisor: restart policy, restarts of real child processes, and a
stop (called, or by Ctrl-C) that leaves no process behind."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ourvidz_dev.supervisor import (
    LinePrefixer,
    RestartPolicy,
    ServiceSpec,
    Supervisor,
    process_spawner,
)

from .procs import alive, read_pids, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_policy_doubles_from_one_second_up_to_thirty():
    policy = RestartPolicy()
    assert [policy.next_delay(uptime=0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_policy_resets_after_a_run_of_sixty_seconds():
    policy = RestartPolicy()
    for _ in range(4):
        policy.next_delay(uptime=2)
    assert policy.next_delay(uptime=59.9) == 16
    assert policy.next_delay(uptime=60) == 1
    assert policy.next_delay(uptime=3) == 2


def quick_policy() -> RestartPolicy:
    return RestartPolicy(initial=0.05, maximum=0.2, reset_after=60)


def test_a_child_that_exits_is_restarted_with_growing_backoff():
    sink = io.StringIO()
    code = "import sys; print('hello from the flaky one', flush=True); sys.exit(3)"
    spec = ServiceSpec(name="flaky", argv=[sys.executable, "-c", code])
    sup = Supervisor(
        [spec], spawner=process_spawner(LinePrefixer(sink, colour=False)), policy=quick_policy
    )
    sup.start()
    try:
        assert wait_until(lambda: len(sup.restarts) >= 5, timeout=60)
    finally:
        sup.stop()
    delays = [r.delay for r in sup.restarts[:5]]
    assert delays == [0.05, 0.1, 0.2, 0.2, 0.2]
    assert {r.exit_code for r in sup.restarts} == {3}
    assert len(set(sup.pids("flaky"))) >= 5
    assert "flaky     | hello from the flaky one" in sink.getvalue()


def test_a_healthy_child_is_not_restarted():
    spec = ServiceSpec(name="steady", argv=[sys.executable, "-c", "import time; time.sleep(60)"])
    sup = Supervisor(
        [spec], spawner=process_spawner(LinePrefixer(io.StringIO())), policy=quick_policy
    )
    sup.start()
    try:
        child = sup.child("steady")
        assert child is not None and child.poll() is None
        # Give the monitor several polls to (wrongly) act.
        wait_until(lambda: bool(sup.restarts), timeout=0.5)
        assert sup.restarts == []
        assert sup.pids("steady") == [child.pid]
    finally:
        sup.stop()
    assert not alive(child.pid)


def test_stop_ends_children_their_children_and_stubborn_ones(tmp_path: Path):
    pid_file = tmp_path / "grandchild.pid"
    parent = textwrap.dedent(
        f"""
        import subprocess, sys, time
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(g.pid))
        time.sleep(120)
        """
    )
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
    sink = io.StringIO()
    sup = Supervisor(
        [
            ServiceSpec(name="parent", argv=[sys.executable, "-c", parent]),
            ServiceSpec(name="stubborn", argv=[sys.executable, "-c", stubborn]),
        ],
        spawner=process_spawner(LinePrefixer(sink, colour=False)),
        stop_timeout=1.0,
    )
    sup.start()
    assert wait_until(lambda: read_pids(pid_file) and "ready" in sink.getvalue())
    pids = [*sup.pids("parent"), *sup.pids("stubborn"), *read_pids(pid_file)]
    assert all(alive(p) for p in pids)
    sup.stop()
    assert wait_until(lambda: not any(alive(p) for p in pids), timeout=10), [
        p for p in pids if alive(p)
    ]
    assert sup.restarts == []  # a stop is not a crash


def test_ctrl_c_stops_every_child(tmp_path: Path):
    """The `make up` path: SIGINT to the supervisor process ends it cleanly
    and takes every service with it."""
    pid_file = tmp_path / "children.pid"
    script = textwrap.dedent(
        f"""
        import sys
        from ourvidz_dev.supervisor import LinePrefixer, ServiceSpec, Supervisor, process_spawner, run_until_signalled
        specs = [ServiceSpec(name=n, argv=[sys.executable, "-c", "import time; time.sleep(120)"]) for n in ("a", "b")]
        sup = Supervisor(specs, spawner=process_spawner(LinePrefixer(sys.stdout)))
        def started():
            open({str(pid_file)!r}, "w").write(" ".join(str(sup.child(n).pid) for n in ("a", "b")))
        sys.exit(0 if run_until_signalled(sup, started) == 2 else 1)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert wait_until(lambda: len(read_pids(pid_file)) == 2 or proc.poll() is not None)
        children = read_pids(pid_file)
        assert len(children) == 2 and all(alive(p) for p in children)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output.decode()
    assert wait_until(lambda: not any(alive(p) for p in children), timeout=10)


def test_service_names_must_be_unique():
    spec = ServiceSpec(name="x", argv=["true"])
    with pytest.raises(ValueError):
        Supervisor([spec, spec], spawner=lambda s: None)


def test_interrupt_during_start_launches_nothing_more():
    spawned: list[str] = []

    class Done:
        pid = 0

        def poll(self):
            return None

        def wait(self, timeout=None):
            return 0

    def spawn(spec):
        spawned.append(spec.name)
        sup.interrupt()
        return Done()

    sup = Supervisor(
        [ServiceSpec(name="first", argv=["x"]), ServiceSpec(name="second", argv=["y"])],
        spawner=spawn,
    )
    sup.start()
    assert spawned == ["first"]
