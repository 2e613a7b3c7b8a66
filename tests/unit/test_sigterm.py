"""SIGTERM handling of long commands (slmops.cli.common), with real signals to real subprocesses."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import psutil

from slmops.cli.common import sigterm_watchdog

# A process as `python -m flows.build` is inside its flow: our handler first, then one over it that loses the
# signal (as Prefect's did once when its TerminationSignal was raised inside an object's __del__), or that acts.
SCRIPT = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    from slmops.cli.common import sigterm_watchdog, stop_children_on_sigterm

    stop_children_on_sigterm()
    if sys.argv[1] == "lose":
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    else:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(3))
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    child = subprocess.Popen(sleeper, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with sigterm_watchdog(grace_s=1.0):
        print(child.pid, flush=True)
        time.sleep(120)
    """
)


def _started(how: str) -> tuple[subprocess.Popen[str], psutil.Process]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, how], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), (line, proc.stderr.read() if proc.stderr else "")
    return proc, psutil.Process(int(line))


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_lost_sigterm_still_ends_the_process_and_its_children_after_the_grace() -> None:
    proc, child = _started("lose")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert f"stopped by SIGTERM (still running 1 s after it); ended its child processes {child.pid}" in err, err
    assert _gone(child)


def test_a_handler_that_acts_on_sigterm_still_decides_the_exit() -> None:
    proc, child = _started("exit")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err  # the inner handler's sys.exit, not the watchdog's 143
    assert "stopped by" not in err
    child.kill()


def test_the_watchdog_puts_back_the_handler_it_wrapped() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_watchdog(grace_s=1.0):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
