"""One build at a time: real `slmops` processes on a tiny project, fetching from a slowed loopback Hub.

A second build waits for the first (and says for whom) or refuses with a clear error; a build killed with
SIGKILL mid-download leaves a state the next build completes; nothing is corrupt and no lock file is left.
While stderr is not a terminal, the download shows periodic progress lines.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmops.artifacts import read_manifest

WEIGHTS = 2 * 2**20  # bytes of the slow file
RATE = 400_000  # bytes per second the slowed server sends
PROGRESS = re.compile(r"fetch tiny-llama: (\d+\.\d)/(\d+\.\d) MB \((\d+)%\) [\d.]+ MB/s")


@pytest.fixture()
def slow_hub(tiny_models, isolated, monkeypatch: pytest.MonkeyPatch):
    """A Hub whose tiny/tiny-llama has 2 MiB of weights, and the project's environment pointing at it."""
    from tests.conftest import apply_env, tiny_env
    from tests.support.hubserver import HubServer

    folder = tiny_models["tiny-llama"][0]
    files = {"config.json": (folder / "config.json").read_bytes(), "model.safetensors": os.urandom(WEIGHTS)}
    with HubServer() as hub:
        hub.state.publish("tiny/tiny-llama", files)
        apply_env(monkeypatch, {**tiny_env(isolated, tiny_models, hub.endpoint), "SLMOPS_PROGRESS_EVERY_S": "0.5"})
        monkeypatch.delenv("SLMOPS_BUILD_LOCK_OWNER", raising=False)
        monkeypatch.delenv("SLMOPS_BUILD_LOCK_WAIT_S", raising=False)
        yield hub


def _fetch(**env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "slmops.cli", "fetch", "tiny-llama"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _flat(text: str) -> str:
    """stderr with Rich's line wrapping undone."""
    return " ".join(text.split())


def _wait_for_lock(artifacts: Path, proc: subprocess.Popen[str]) -> None:
    """Until ``proc`` holds the build lock on ``artifacts`` (its pid is in /proc/locks)."""
    from slmops.artifacts import _holders

    for _ in range(600):
        if artifacts.is_dir() and proc.pid in _holders(artifacts.resolve()):
            return
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    raise AssertionError("the first build never took the lock")


def _until_downloading(proc: subprocess.Popen[str]) -> None:
    """Read ``proc``'s stderr until its first download progress line."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if PROGRESS.search(line):
            return
    raise AssertionError(f"no progress line; exit code {proc.wait()}")


def _assert_clean(artifacts: Path) -> None:
    """A finished fetch: the variant's folder verifies, and nothing else is left (no temp, no lock file)."""
    read_manifest(artifacts / "fetch" / "tiny-llama", verify=True)
    assert sorted(p.name for p in artifacts.iterdir()) == ["fetch"]
    # the folder and the record of how the fetch ran (outside the folder DVC hashes)
    assert sorted(p.name for p in (artifacts / "fetch").iterdir()) == ["tiny-llama", "tiny-llama.fetch-run.json"]


def test_two_fetches_started_together_one_waits_for_the_other(slow_hub, isolated) -> None:
    slow_hub.state.inject("slow", "*/model.safetensors", times=2, arg=RATE)
    first, second = _fetch(), _fetch()
    outs = {p.pid: p.communicate(timeout=300) for p in (first, second)}
    assert first.returncode == 0 and second.returncode == 0, outs
    waited = [
        pid
        for pid, (_, err) in outs.items()
        if re.search(r"waiting for build pid (\d+) \(\S*python\S* -m slmops.cli fetch tiny-llama, started", _flat(err))
    ]
    assert len(waited) == 1, outs  # the other one ran first, holding the lock
    other = next(pid for pid in outs if pid not in waited)
    assert f"waiting for build pid {other} " in _flat(outs[waited[0]][1])
    assert "the other build ended; starting" in _flat(outs[waited[0]][1])
    # the one that downloaded showed its progress as lines (stderr is a pipe here, not a terminal)
    lines = [m for m in PROGRESS.finditer(outs[other][1])]
    assert lines and float(lines[0][2]) == round(WEIGHTS / 1e6, 1) and "it/s" not in outs[other][1]  # no tqdm bar
    percents = [int(m[3]) for m in lines]
    assert percents == sorted(percents) and percents[0] < 100
    _assert_clean(isolated / "artifacts")


def test_a_second_build_told_not_to_wait_refuses_naming_the_first(slow_hub, isolated) -> None:
    slow_hub.state.inject("slow", "*/model.safetensors", times=1, arg=RATE)
    first = _fetch()
    _wait_for_lock(isolated / "artifacts", first)
    second = _fetch(SLMOPS_BUILD_LOCK_WAIT_S="0")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 1
    err = _flat(err)
    assert err.startswith("error: slmops fetch tiny-llama: another build holds "), err
    assert f"pid {first.pid} (" in err and "fetch tiny-llama, started " in err and "SLMOPS_BUILD_LOCK_WAIT_S" in err
    assert first.wait(timeout=300) == 0
    _assert_clean(isolated / "artifacts")


def test_a_fetch_killed_mid_download_leaves_a_state_the_next_completes(slow_hub, isolated) -> None:
    artifacts = isolated / "artifacts"
    assert _fetch().wait(timeout=300) == 0  # a finished fetch, which the killed one was replacing
    before = read_manifest(artifacts / "fetch" / "tiny-llama", verify=True)
    cache = next((isolated / "hf" / "hub").glob("models--tiny--tiny-llama"))
    for blob in (cache / "blobs").iterdir():  # download the weights again, slowly
        blob.unlink()
    slow_hub.state.inject("slow", "*/model.safetensors", times=1, arg=RATE)
    killed = _fetch()
    _until_downloading(killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    left = sorted(p.name for p in (artifacts / "fetch").iterdir())
    assert "tiny-llama" in left and any(n.startswith(f".tiny-llama.{killed.pid}.") for n in left), left
    assert read_manifest(artifacts / "fetch" / "tiny-llama", verify=True) == before  # the old folder is untouched
    again = _fetch()
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    _assert_clean(artifacts)


def test_a_stage_command_waits_for_a_running_flow_and_both_end_well(hub, tiny_models, isolated, monkeypatch) -> None:
    """`python -m flows.build` (a real process, ephemeral Prefect API) and `slmops fetch` of another build."""
    from tests.conftest import apply_env, tiny_env

    apply_env(monkeypatch, tiny_env(isolated, tiny_models, hub.endpoint))
    monkeypatch.delenv("SLMOPS_BUILD_LOCK_OWNER", raising=False)
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a busy test machine
    artifacts = isolated / "artifacts"
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows.build", "tiny-bert", "--recipes", "fp32"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for_lock(artifacts, flow)
    stage = subprocess.Popen(
        [sys.executable, "-m", "slmops.cli", "fetch", "tiny-bert"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    flow_out, _ = flow.communicate(timeout=900)
    _, stage_err = stage.communicate(timeout=300)
    assert flow.returncode == 0, flow_out
    assert stage.returncode == 0, stage_err
    stage_err = _flat(stage_err)
    assert (
        f"slmops fetch tiny-bert: waiting for build pid {flow.pid} (python -m flows.build tiny-bert --recipes fp32, started"
        in stage_err
    )
    assert "the other build ended; starting" in stage_err
    for folder in ("fetch/tiny-bert", "export/tiny-bert", "candidates/tiny-bert/fp32"):
        read_manifest(artifacts / folder, verify=True)
    assert sorted(p.name for p in (artifacts / "candidates" / "tiny-bert").iterdir()) == ["fp32"]
    assert [p for p in artifacts.rglob(".*")] == []  # no temp folder, temp file or lock file anywhere


def test_a_stage_stopped_by_sigterm_exits_143_and_the_next_completes(slow_hub, isolated) -> None:
    """SIGTERM to `slmops fetch` mid-download: its handler (which ends any child process first) exits 143 at once,
    saying so; the next fetch completes and leaves nothing else."""
    slow_hub.state.inject("slow", "*/model.safetensors", times=1, arg=RATE)
    stopped = _fetch()
    _until_downloading(stopped)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in _flat(err), err[-3000:]
    assert _fetch().wait(timeout=300) == 0
    _assert_clean(isolated / "artifacts")


def test_a_build_stopped_by_sigterm_ends_its_children_and_the_next_build_completes(
    slow_hub, isolated, monkeypatch
) -> None:
    """SIGTERM to `python -m flows.build` mid-download: it exits 143 and takes Prefect's temporary API server (its
    child, which once outlived it holding its stdout open) with it, through Prefect's handler and ours, or, should
    Prefect's lose the signal (it did once, inside a __del__), through the watchdog 10 s later; the next build
    completes."""
    import psutil

    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a busy test machine
    slow_hub.state.inject("slow", "*/model.safetensors", times=1, arg=RATE)
    artifacts = isolated / "artifacts"
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows.build", "tiny-llama", "--recipes", "fp32"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for_lock(artifacts, flow)  # fetching, slowly
    children = psutil.Process(flow.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(child.cmdline()) for child in children), [c.cmdline() for c in children]
    flow.send_signal(signal.SIGTERM)
    out, _ = flow.communicate(timeout=120)  # returns once nothing holds the pipe: no child outlived the build
    assert flow.returncode == 128 + signal.SIGTERM, out
    assert re.search(
        r"stopped by SIGTERM( \(still running 10 s after it\))?; ended its child processes ", _flat(out)
    ), out[-3000:]
    assert [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []
    assert _fetch().wait(timeout=300) == 0
    _assert_clean(artifacts)
