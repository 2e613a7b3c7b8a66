"""Screenshots of the MLflow UI on an slmops store: the runs table, the compare view, a model and a version page.

    python tools/screenshots.py --mlruns mlruns --out docs/screenshots
    python tools/screenshots.py --demo /tmp/slmops-demo --out docs/screenshots   # a tiny registry first

Starts ``mlflow server`` on a free loopback port against the store's SQLite database, waits for /health, drives
headless Chromium (Debian's ``chromium`` package) through the DevTools protocol (it waits until each page shows
the text it must show, then captures it), saves PNGs and stops both processes by their process group.
The runs table opens through slmops' own comparison link (``slmops.register.store.compare_url``), so the
screenshot shows what that link shows. ``--demo`` builds the tiny registry with the test helpers
(tests/support): two builds of the same candidates, so versions are reused and point at the second build.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1600, 900
ML = "workflowType=machine_learning"  # the 3.17 UI's global GenAI / Model training switch, for this page
CLOSE_ASSISTANT = "document.querySelector('button[aria-label=\"Close\"]')?.click();"
# the compare page opens on its plots: fold them so the side-by-side table of params and metrics shows
FOLD_PLOTS = "[...document.querySelectorAll('*')].find(e => e.textContent === 'Visualizations')?.click();"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def started(cmd: list[str], *, log: Path, ready: str, env: dict[str, str] | None = None) -> Iterator[None]:
    """``cmd`` in its own process group until the block ends; ``ready`` is a URL that must answer 200 first."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited with {proc.returncode}: see {log}")
            with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=2) as response:
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{ready} did not answer in 120 s: see {log}")
            time.sleep(0.3)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


class Browser:
    """One headless Chromium tab driven over the DevTools protocol."""

    def __init__(self, port: int) -> None:
        from websockets.sync.client import connect

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=2**26)
        self.next_id = 0
        self.links = ""
        self.call("Page.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def text(self) -> str:
        result = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
        return str(result["result"].get("value", ""))

    def shoot(
        self, url: str, out: Path, *, expect: list[str], then: str = "", height: int = HEIGHT, timeout_s: float = 60
    ) -> str:
        """Open ``url``, wait until the page shows every string of ``expect``, run the script ``then``, save a PNG;
        return the page text."""
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            if all(s in text for s in expect):
                break
            if time.monotonic() > deadline:
                missing = [s for s in expect if s not in text]
                raise SystemExit(f"{url} never showed {missing}; it shows:\n{text[:2000]}")
            time.sleep(0.5)
        # the MLflow Assistant side panel (open by default on a local server) only narrows the page: close it
        self.call("Runtime.evaluate", expression=CLOSE_ASSISTANT + then)
        time.sleep(1.5)  # let charts and column widths settle
        hrefs = "[...document.querySelectorAll('a')].map(a => a.textContent + ' -> ' + a.href).join('\\n')"
        self.links = str(self.call("Runtime.evaluate", expression=hrefs)["result"].get("value", ""))
        shot = self.call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))
        print(f"{out} ({out.stat().st_size // 1024} KB): {url}")
        return text


def build_demo(home: Path) -> Path:
    """A tiny registry under ``home`` (two builds of three causal-lm candidates, aliases set); returns mlruns."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import isolated_env

    os.environ.update(isolated_env(home))
    from slmops.names import registered_model_name
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings
    from tests.support.registry import register_candidates
    from tests.support.tiny import build_candidates, build_tiny_llama

    root = home / "build" / "tiny-llama"
    recipes = ("fp32", "wo-int8", "wo-int4")
    variant = build_candidates(root, "tiny-llama", build_tiny_llama, recipes=recipes)
    numbers = {
        "fp32": {"decode_tok_s": 61.0, "ttft_ms": 30.0, "peak_rss_mb": 240.0, "size_mb": 1.2},
        "wo-int8": {"decode_tok_s": 118.0, "ttft_ms": 21.0, "peak_rss_mb": 180.0, "size_mb": 0.5},
        "wo-int4": {"decode_tok_s": 142.0, "ttft_ms": 19.0, "peak_rss_mb": 160.0, "size_mb": 0.3},
    }
    for build in ("demo-build-1", "demo-build-2"):
        os.environ["SLMOPS_BUILD_ID"] = build
        get_settings.cache_clear()
        versions = register_candidates(variant, root, recipes=recipes, bench=numbers)
    client = connect(get_settings())
    client.set_registered_model_alias(registered_model_name("causal-lm"), "chat-cpu", versions["wo-int8"])
    return get_settings().mlruns_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--mlruns", type=Path, help="the store folder (holding mlflow.db) to show")
    where.add_argument("--demo", type=Path, help="build a tiny registry in this new folder and show it")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--model", default="slmops-causal-lm", help="registered model whose pages to capture")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()

    mlruns = build_demo(args.demo.resolve()) if args.demo else args.mlruns.resolve()
    db = mlruns / "mlflow.db"
    if not db.is_file():
        raise SystemExit(f"no MLflow store at {db}; pass --mlruns <folder holding mlflow.db> or --demo <folder>")
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from mlflow import MlflowClient

    from slmops.names import EXPERIMENT, TAG_BUILD_ID
    from slmops.register.store import compare_url

    with tempfile.TemporaryDirectory(prefix="slmops-shots-") as tmp:
        port, debug_port = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        server = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}"]
        server += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        browser = [args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        browser += [f"--remote-debugging-port={debug_port}", f"--user-data-dir={tmp}/profile"]
        browser += [f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
        with (
            started(server, log=Path(tmp) / "mlflow.log", ready=f"{base}/health", env=env),
            started(browser, log=Path(tmp) / "chromium.log", ready=f"http://127.0.0.1:{debug_port}/json/version"),
        ):
            client = MlflowClient(base)
            experiment = client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                raise SystemExit(f"{db} has no {EXPERIMENT!r} experiment; register candidates first")
            latest = client.search_runs([experiment.experiment_id], "tags.`slmops.recipe` != ''", max_results=1)
            if not latest:
                raise SystemExit(f"{db}: the {EXPERIMENT!r} experiment has no candidate runs; register some first")
            build = latest[0].data.tags.get(TAG_BUILD_ID, "")
            runs = client.search_runs([experiment.experiment_id], f"tags.`{TAG_BUILD_ID}` = '{build}'", max_results=4)
            tab = Browser(debug_port)
            tab.shoot(
                compare_url(experiment.experiment_id, base),
                args.out / "runs.png",
                expect=["bench.decode_tok_s", "quality.ppl_ratio", "slmops: compare candidates"],
            )
            ids = urllib.parse.quote(json.dumps([r.info.run_id for r in runs]))
            exps = urllib.parse.quote(json.dumps([experiment.experiment_id]))
            tab.shoot(
                f"{base}/#/compare-runs?runs={ids}&experiments={exps}&{ML}",
                args.out / "compare.png",
                expect=["bench.decode_tok_s", "granularity"],
                then=FOLD_PLOTS,
                height=1700,
            )
            tab.shoot(f"{base}/#/models/{args.model}?{ML}", args.out / "model.png", expect=["Version 1", "chat-cpu"])
            tab.shoot(
                f"{base}/#/models/{args.model}/versions/1?{ML}", args.out / "version.png", expect=["Numbers: run"]
            )
            print("links on the version page:\n" + "\n".join(x for x in tab.links.splitlines() if "/runs/" in x))


if __name__ == "__main__":
    main()
