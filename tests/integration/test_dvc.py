"""DVC agrees with the Prefect flow: the repo's dvc.yaml over a tiny project, driven by the real `dvc`.

The flow builds the project (as `make run` does); then `dvc repro` has nothing to do, twice; rebuilding
stages with the same inputs changes no output; each config value and source folder a stage reads is a
dependency of it; `dvc metrics show` lists a compact row per candidate and `dvc plots show` the Pareto rows.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
UP_TO_DATE = "Data and pipelines are up to date."


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


def _changed_stages(project: Path) -> dict[str, list]:
    """`dvc status --json`: stage -> what changed (only stages whose own deps, params or outs changed)."""
    return json.loads(_dvc(project, "status", "--json").stdout)


@pytest.fixture(scope="module")
def built(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    """A DVC project (the repo's dvc.yaml, .dvcignore, plot template and slmops source) over the tiny models,
    built by the real Prefect flow from inside it, as `make run` builds the real one."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.build import build
    from slmops.project import Project
    from tests.conftest import apply_env, isolated_env
    from tests.support.hubserver import HubServer
    from tests.support.tiny import write_configs

    project = tmp_path_factory.mktemp("dvc-project")
    write_configs(project / "configs", variants={vid: facts for vid, (_, facts) in tiny_models.items()})
    config = yaml.safe_load((project / "configs" / "pipeline.yaml").read_text())
    # dvc.yaml tracks these params, so the file must name them (the real pipeline.yaml does)
    config["export_validation"] = {"default": {"atol": 1e-4}}
    for entry in config["selection"].values():
        entry["revision"] = None
    (project / "configs" / "pipeline.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "slmops", project / "slmops", ignore=shutil.ignore_patterns("__pycache__"))
    _dvc(project, "init", "--no-scm", "--quiet")
    shutil.copytree(REPO / ".dvc" / "plots", project / ".dvc" / "plots")
    mp = pytest.MonkeyPatch()
    try:
        with HubServer() as hub:
            for vid, (folder, _) in tiny_models.items():
                hub.state.publish_folder(f"tiny/{vid}", folder)
            env = {
                **isolated_env(project / "home"),
                "SLMOPS_ARTIFACTS_DIR": str(project / "artifacts"),
                "SLMOPS_CONFIG_DIR": str(project / "configs"),
                "HF_ENDPOINT": hub.endpoint,
                "SLMOPS_THREADS": "1",
            }
            apply_env(mp, env)
            mp.chdir(project)  # the flow records its stages in the DVC project it runs in
            with prefect_test_harness(server_startup_timeout=120):
                decisions = build().model_dump()["usecases"]
            yield project, Project.load(), decisions, env
    finally:
        mp.undo()


@pytest.fixture(autouse=True)
def _built_env(built, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests in this module use the built project's stores and configs instead of a fresh temp dir."""
    from tests.conftest import apply_env

    apply_env(monkeypatch, built[3])


def _snapshot(project: Path) -> dict[str, tuple[int, int]]:
    """Every artifact file's (size, mtime_ns): a stage that runs replaces its files."""
    return {
        str(p.relative_to(project)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in (project / "artifacts").rglob("*")
        if p.is_file()
    }


def test_dvc_repro_after_the_flow_has_nothing_to_do(built) -> None:
    project, _, _, _ = built
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    per_variant = ("fetch", "export", "quantize", "evaluate", "bench", "register")
    assert set(lock) == {f"{s}@{v}" for s in per_variant for v in ("tiny-llama", "tiny-bert")} | {"recommend"}
    before = _snapshot(project)
    assert _changed_stages(project) == {}
    for _ in range(2):
        repro = _dvc(project, "repro")
        assert "Running stage" not in repro.stdout and UP_TO_DATE in repro.stdout, repro.stdout
    assert _snapshot(project) == before


def test_rebuilding_with_the_same_inputs_changes_no_output(built, tiny_models, monkeypatch) -> None:
    """fetch (from another Hub server: another origin), export, quantize and evaluate run again and write
    byte-identical outputs, so DVC still sees every stage up to date and would rebuild nothing after them."""
    from slmops import pipeline
    from slmops.project import Project
    from slmops.settings import get_settings
    from tests.support.hubserver import HubServer

    project, _, _, _ = built
    before = _snapshot(project)
    with HubServer() as hub:
        for vid, (folder, _) in tiny_models.items():
            hub.state.publish_folder(f"tiny/{vid}", folder)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        get_settings.cache_clear()
        proj = Project.load()
        for vid in ("tiny-bert", "tiny-llama"):
            pipeline.fetch(proj, vid)
            pipeline.export(proj, vid)
            pipeline.quantize(proj, vid)
            pipeline.evaluate(proj, vid)
        endpoint = hub.endpoint
    after = _snapshot(project)
    rewritten = {p for p in after if after[p] != before.get(p)}
    for stage_out in ("fetch/tiny-bert/", "export/tiny-llama/", "candidates/tiny-llama/wo-int4/", "gates/tiny-bert"):
        assert any(p.startswith(f"artifacts/{stage_out}") for p in rewritten), stage_out  # they really ran again
    assert _changed_stages(project) == {}
    record = json.loads((project / "artifacts" / "fetch" / "tiny-bert.fetch-run.json").read_text())
    assert record["origin"].startswith(endpoint) and record["finished"]  # how the fetch went: kept, not hashed


def test_every_config_value_and_source_a_stage_reads_is_a_dependency(built) -> None:
    project, _, _, _ = built
    both = ("tiny-llama", "tiny-bert")
    config = project / "configs" / "pipeline.yaml"
    original = config.read_text()
    edits = {
        ("export_validation", "default", "atol"): 2e-4,
        ("reference_recipe",): "wo-int8",
        ("selection", "tiny-bert", "revision"): "main",
        ("device",): "cuda",
    }
    expected = {
        ("export_validation", "default", "atol"): {f"export@{v}" for v in both},
        ("reference_recipe",): {f"evaluate@{v}" for v in both},
        ("selection", "tiny-bert", "revision"): {"fetch@tiny-bert"},
        ("device",): {f"{s}@{v}" for s in ("quantize", "bench", "register") for v in both},
    }
    try:
        for keys, value in edits.items():
            data = yaml.safe_load(original)
            node = data
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = value
            config.write_text(yaml.safe_dump(data, sort_keys=False))
            assert set(_changed_stages(project)) == expected[keys], keys
    finally:
        config.write_text(original)
    source = project / "slmops" / "quantize" / "stage.py"
    text = source.read_text()
    try:
        source.write_text(text + "# an edit\n")
        assert set(_changed_stages(project)) == {f"quantize@{v}" for v in both}
    finally:
        source.write_text(text)
    cache = project / "slmops" / "fetch" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "stage.cpython-311.pyc").write_bytes(b"bytecode")  # what importing slmops writes: not a change
    assert _changed_stages(project) == {}


def test_metrics_show_a_compact_row_per_candidate(built) -> None:
    project, proj, _, _ = built
    shown = json.loads(_dvc(project, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    rows = {
        Path(path).relative_to("artifacts/metrics").with_suffix("").as_posix(): f["data"] for path, f in files.items()
    }
    expected = {f"{vid}/{r}" for vid, sel in proj.config.selection.items() for r in sel.recipes}
    assert set(rows) == expected
    gates = {vid: json.loads(proj.gate_file(vid).read_text())["candidates"] for vid in proj.config.selection}
    for name, row in rows.items():
        vid, recipe = name.split("/")
        speed, latency, quality = (
            ("decode_tok_s", "ttft_ms", "ppl_ratio")
            if vid == "tiny-llama"
            else ("items_per_s", "latency_p95_ms", "cosine_mean")
        )
        assert set(row) == {speed, latency, quality, "peak_rss_mb", "size_mb", "gate"}, row
        assert row[speed] > 0 and row[latency] > 0 and row["peak_rss_mb"] > 0 and row["size_mb"] > 0
        assert row["gate"] == ("passed" if gates[vid][recipe]["passed"] else "failed")
        assert row[quality] == gates[vid][recipe]["metrics"][quality]
    table = _dvc(project, "metrics", "show", "--md").stdout
    assert "tiny-llama/wo-int4.json" in table and "digest" not in table and "threshold" not in table


def test_plots_show_the_pareto_front_with_the_chosen_model_and_failed_gates(built) -> None:
    project, proj, decisions, _ = built
    rows = json.loads((project / "artifacts" / "plots" / "pareto.json").read_text())
    assert {r["task"] for r in rows} == {"causal-lm", "sentence-embedding"}
    for r in rows:
        assert r["status"] in ("chosen", "eligible", "excluded", "failed-gate") and r["reason"]
    chosen = {(r["task"], r["version"]) for r in rows if r["status"] == "chosen"}
    aliased = {d["chosen"] for d in decisions.values() if d["chosen"]}
    assert {f"models:/slmops-{task}/{version}" for task, version in chosen} == aliased
    # each registered version is judged by every causal-lm use case: chat-test takes them, tiny-memory
    # (max_memory_mb: 1) takes none, so each is chosen for or eligible for chat-test only
    registered = [r for r in rows if r["task"] == "causal-lm" and r["status"] != "failed-gate"]
    assert registered and all(
        r["reason"].endswith("chosen for chat-test") or "eligible for chat-test," in r["reason"] for r in registered
    )
    failed = {
        (vid, recipe)
        for vid in proj.config.selection
        for recipe, g in json.loads(proj.gate_file(vid).read_text())["candidates"].items()
        if not g["passed"]
    }
    plotted_failed = {tuple(r["candidate"].split(":")) for r in rows if r["status"] == "failed-gate"}
    assert plotted_failed == failed
    assert all(r["reason"].startswith("failed its quality gate") for r in rows if r["status"] == "failed-gate")
    assert any(r["front"] for r in rows if r["task"] == "causal-lm")
    shown = json.loads(_dvc(project, "plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown["errors"]
    data_plot = shown["data"]["artifacts/plots/pareto.json"][0]
    assert data_plot["type"] == "vega" and "facet" in data_plot["content"]
    images = [p for p in shown["data"] if p.endswith(".png")]
    assert sorted(Path(p).name for p in images) == ["pareto-causal-lm.png", "pareto-sentence-embedding.png"]
