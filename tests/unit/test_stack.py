"""`slmops stack` without PostgreSQL: what status and down make of state.json, and how down stops real process trees
(the live stack is tests/integration/test_stack.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from slmops.artifacts import write_json_atomic
from slmops.cli import app
from slmops.errors import StackError
from slmops.stack import StackConfig, down, status, up
from slmops.stack.process import Recorded, spawn, stop_processes
from tests.support.process import running


def _record(config: StackConfig, name: str, command: list[str]) -> Recorded:
    """Start ``command`` as the stack starts a service and record it in state.json under ``name``."""
    _, recorded = spawn(command, env=dict(os.environ), log=config.log(name), cwd=config.dir)
    services = {name: {"pid": recorded.pid, "create_time": recorded.create_time, "url": None, "log": "x"}}
    write_json_atomic(config.state_file, {"version": 1, "ports": {}, "services": services, "env": {}})
    return recorded


def _tree_when_ready(pid: int, size: int) -> set[int]:
    """The pid and its descendants, once there are ``size`` of them (bounded)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
        if len(found) >= size:
            return found
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never had {size} processes")


def test_status_of_a_stack_never_started(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["stack", "status", "--json", "--dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    states = {s["name"]: s["state"] for s in json.loads(result.stdout)["services"]}
    assert states == {"postgres": "stopped", "mlflow": "stopped", "prefect": "stopped"}


def test_down_stops_the_group_and_children_that_left_it(tmp_path: Path) -> None:
    config = StackConfig(dir=tmp_path, stop_timeout_s=10)
    # one child stays in the service's process group, one starts its own session (setsid) and would be orphaned
    recorded = _record(config, "prefect", ["sh", "-c", "sleep 300 & setsid sleep 300 & wait"])
    tree = _tree_when_ready(recorded.pid, 3)
    assert status(config).services[2].state == "unhealthy"  # alive, but no URL answers
    result = down(config)
    assert running(tree) == set()
    assert [s.state for s in result.services] == ["stopped"] * 3
    assert json.loads(config.state_file.read_text())["services"] == {}


def test_a_service_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    config = StackConfig(dir=tmp_path, stop_timeout_s=1)
    recorded = _record(config, "mlflow", ["sh", "-c", "trap '' TERM; sleep 300 & wait"])
    tree = _tree_when_ready(recorded.pid, 2)
    down(config)
    assert running(tree) == set()


def test_stop_processes_ends_each_and_kills_one_ignoring_sigterm() -> None:
    import subprocess

    polite = subprocess.Popen(["sleep", "300"])
    deaf = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"], stdout=subprocess.PIPE
    )
    assert deaf.stdout is not None and deaf.stdout.readline() == b"ready\n"  # its trap is set
    assert stop_processes([psutil.Process(polite.pid), psutil.Process(deaf.pid)], timeout_s=1.0) == []
    assert polite.wait(timeout=5) == -15 and deaf.wait(timeout=5) == -9  # the deaf one SIGKILLed


def test_an_exited_service_and_a_reused_pid_count_as_exited(tmp_path: Path) -> None:
    config = StackConfig(dir=tmp_path)
    me = psutil.Process()
    services = {
        "postgres": {"pid": me.pid, "create_time": me.create_time() - 5, "url": None, "log": "x"},  # pid reused
    }
    write_json_atomic(config.state_file, {"version": 1, "ports": {}, "services": services, "env": {}})
    assert Recorded(me.pid, me.create_time() - 5).alive() is False
    assert status(config).services[0].state == "exited"
    down(config)  # must not signal this test's own process
    assert me.is_running()


def test_a_corrupt_state_file_is_named(tmp_path: Path) -> None:
    config = StackConfig(dir=tmp_path)
    config.state_file.write_text("{not json")
    with pytest.raises(StackError, match=r"state\.json is not valid JSON"):
        status(config)


def test_up_without_postgresql_names_the_missing_programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(StackError, match="initdb and pg_ctl not found on PATH"):
        up(StackConfig(dir=tmp_path / "stack"))
    assert {s.state for s in status(StackConfig(dir=tmp_path / "stack")).services} == {"stopped"}


def test_ports_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mlflow_port"):
        StackConfig(dir=tmp_path, mlflow_port=70000)


def test_a_relative_folder_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert StackConfig(dir=Path("here")).dir == tmp_path / "here"  # the services run in other working directories


def test_free_ports_are_below_the_ephemeral_range() -> None:
    """An outgoing connection can never take a chosen port before its service binds it."""
    from slmops.stack.stack import _free_port

    first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(1024 <= _free_port() < first for _ in range(20))
