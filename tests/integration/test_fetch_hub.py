"""The fetch stage against the loopback Hub server: pinning, allow-list, verification, faults, offline, gating."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from slmops.artifacts import MANIFEST_NAME, read_manifest
from slmops.catalog.schema import Variant
from slmops.errors import FetchError, IntegrityError
from slmops.fetch import FetchConfig, fetch
from slmops.fetch.stage import run_record_path
from slmops.settings import get_settings
from tests.support.hubserver import HubServer, git_blob_sha1

FAULTS = {"injected": 0, "recovered": 0, "corrupt_left": 0}
REPO = "tiny/tiny-llama"


@pytest.fixture()
def server(tiny_models, monkeypatch: pytest.MonkeyPatch):
    folder, _ = tiny_models["tiny-llama"]
    with HubServer() as hub:
        hub.folder = folder
        hub.first_sha = hub.state.publish_folder(REPO, folder)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("SLMOPS_HUB_TIMEOUT_S", "1")
        monkeypatch.setenv("SLMOPS_HUB_BACKOFF_S", "0.05")
        get_settings.cache_clear()
        yield hub
        FAULTS["injected"] += hub.state.faults_injected


def _variant(tiny_models, **overrides) -> Variant:
    _, facts = tiny_models["tiny-llama"]
    fields = {"id": "tiny-llama", "family": "tiny", "repo_id": REPO, "revision": "main", "license": "apache-2.0"}
    return Variant(**{**fields, **facts, **overrides})


def _fetch(variant: Variant, out: Path, **config) -> dict:
    return fetch(variant, out=out, config=FetchConfig(source="hub", **config)).to_dict()


def _corrupt_files(out: Path, truth: Path) -> int:
    """Files in ``out`` that differ from the originals (and so would poison later stages)."""
    return sum(
        p.read_bytes() != (truth / p.relative_to(out)).read_bytes()
        for p in out.rglob("*")
        if p.is_file() and p.name != "slmops-manifest.json"
    )


def test_branch_resolves_to_sha_and_pinned_sha_survives_a_moved_branch(server, tiny_models, isolated: Path) -> None:
    variant = _variant(tiny_models)
    manifest = _fetch(variant, isolated / "a")
    assert manifest["revision"] == server.first_sha and manifest["info"]["requested"] == "main"
    assert manifest["files"]["model.safetensors"]["sha256"]
    assert {"config.json", "tokenizer.json", "chat_template.jinja", "model.safetensors"} <= set(manifest["files"])
    # move main to a new commit with a changed config; the pinned sha still gives the old files
    files = {p.relative_to(server.folder).as_posix(): p.read_bytes() for p in server.folder.rglob("*") if p.is_file()}
    files["config.json"] = files["config.json"].replace(
        b'"max_position_embeddings": 256', b'"max_position_embeddings": 512'
    )
    new_sha = server.state.publish(REPO, files)
    assert _fetch(variant, isolated / "b")["revision"] == new_sha
    old = _fetch(variant.model_copy(update={"revision": server.first_sha}), isolated / "c")
    assert old["revision"] == server.first_sha
    assert (isolated / "c" / "config.json").read_bytes() == (server.folder / "config.json").read_bytes()
    assert (isolated / "b" / "config.json").read_bytes() != (server.folder / "config.json").read_bytes()
    # the catalog/config mismatch is reported, not hidden
    assert any("context_length" in m for m in read_manifest(isolated / "b").info["catalog_mismatches"])


def test_only_needed_files_and_no_pickle(server, tiny_models, isolated: Path) -> None:
    files = {p.relative_to(server.folder).as_posix(): p.read_bytes() for p in server.folder.rglob("*") if p.is_file()}
    server.state.publish(REPO, {**files, "pytorch_model.bin": b"pickle", "README.md": b"# card", "train.py": b"x"})
    manifest = _fetch(_variant(tiny_models), isolated / "a")
    assert not {"pytorch_model.bin", "README.md", "train.py"} & set(manifest["files"])
    only_pickle = {k: v for k, v in files.items() if not k.endswith(".safetensors")}
    server.state.publish(REPO, {**only_pickle, "pytorch_model.bin": b"pickle"})
    with pytest.raises(FetchError, match="only pickle weights.*allow_pickle"):
        _fetch(_variant(tiny_models), isolated / "b")
    allowed = _fetch(_variant(tiny_models, allow_pickle=True), isolated / "c")
    assert "pytorch_model.bin" in allowed["files"]
    assert not (isolated / "b").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("kind", "arg", "times", "file"),
    [
        ("drop", 1000, 1, "model.safetensors"),
        ("flip", 100, 1, "model.safetensors"),
        ("flip", 5, 1, "tokenizer.json"),
        ("status", 500, 1, "config.json"),
        ("status", 503, 2, "model.safetensors"),
        ("status", 429, 2, "*"),
        ("stall", 3, 1, "model.safetensors"),
        ("drop", 10, 3, "model.safetensors"),
    ],
)
def test_faults_are_recovered(
    server, tiny_models, isolated: Path, kind: str, arg: float, times: int, file: str
) -> None:
    server.state.inject(kind, f"/{REPO}/resolve/*/{file}", times=times, arg=arg)
    _fetch(_variant(tiny_models), isolated / "out")
    assert server.state.faults_injected == times
    if kind == "flip":  # huggingface_hub cannot notice this one; slmops' verification must
        assert json.loads(run_record_path(isolated / "out").read_text())["corrupt_refetched"] == times
    left = _corrupt_files(isolated / "out", server.folder)
    hit = {p.split("/resolve/", 1)[1].split("/", 1)[1] for f in server.state.faults for p in f.paths}
    FAULTS["recovered"] += sum(
        (isolated / "out" / name).read_bytes() == (server.folder / name).read_bytes() for name in hit
    )
    FAULTS["corrupt_left"] += left
    assert hit and left == 0
    read_manifest(isolated / "out", verify=True)


def test_partial_download_is_resumed_with_range(server, tiny_models, isolated: Path) -> None:
    """A connection cut after the first 10 MiB chunk reached disk resumes there (Range), not from zero."""
    import os

    from huggingface_hub import constants

    files = {p.relative_to(server.folder).as_posix(): p.read_bytes() for p in server.folder.rglob("*") if p.is_file()}
    big = os.urandom(constants.DOWNLOAD_CHUNK_SIZE + 2**20)
    server.state.publish(REPO, {**files, "model-00002-of-00002.safetensors": big})
    server.state.inject(
        "drop", f"/{REPO}/resolve/*/model-00002-of-00002.safetensors", arg=constants.DOWNLOAD_CHUNK_SIZE + 1000
    )
    _fetch(_variant(tiny_models), isolated / "out")
    ranges = [
        h.get("Range")
        for m, p, h in server.state.requests
        if m == "GET" and p.endswith("model-00002-of-00002.safetensors")
    ]
    assert ranges == [None, f"bytes={constants.DOWNLOAD_CHUNK_SIZE}-"]
    assert (isolated / "out" / "model-00002-of-00002.safetensors").read_bytes() == big


def test_second_corruption_fails_clearly_and_leaves_nothing(server, tiny_models, isolated: Path) -> None:
    server.state.inject("flip", f"/{REPO}/resolve/*/model.safetensors", times=2, arg=50)
    with pytest.raises(IntegrityError, match="model.safetensors is corrupt twice"):
        _fetch(_variant(tiny_models), isolated / "out")
    assert not (isolated / "out").exists()
    cache = get_settings().resolved_hf_cache()
    assert cache.is_relative_to(isolated)
    blobs = [p for p in cache.rglob("blobs/*") if p.is_file()]
    with_bad_hash = [
        p for p in blobs if len(p.name) == 64 and __import__("hashlib").sha256(p.read_bytes()).hexdigest() != p.name
    ]
    assert with_bad_hash == []  # the corrupt blob was deleted, not left in the cache


def test_persistent_5xx_gives_up_with_a_clear_error(server, tiny_models, isolated: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLMOPS_HUB_RETRIES", "1")
    get_settings.cache_clear()
    server.state.inject("status", f"/api/models/{REPO}/revision/*", times=100, arg=429)
    with pytest.raises(FetchError, match="failed after 2 attempts.*SLMOPS_HUB_RETRIES"):
        _fetch(_variant(tiny_models), isolated / "out")


def test_offline_uses_the_cache_or_names_what_is_missing(server, tiny_models, isolated: Path) -> None:
    online = _fetch(_variant(tiny_models), isolated / "a")
    offline = _fetch(_variant(tiny_models), isolated / "b", offline=True)
    assert offline["revision"] == online["revision"] and offline["files"] == online["files"]
    # the manifest says what was fetched, not how: byte-identical offline and online (DVC sees no change)
    assert (isolated / "a" / MANIFEST_NAME).read_bytes() == (isolated / "b" / MANIFEST_NAME).read_bytes()
    assert json.loads(run_record_path(isolated / "b").read_text())["offline"] is True
    missing = _variant(tiny_models, repo_id="tiny/never-fetched")
    with pytest.raises(FetchError, match="offline: tiny-llama.*tiny/never-fetched.*'main'"):
        _fetch(missing, isolated / "c", offline=True)
    with pytest.raises(FetchError, match="offline.*'deadbeef'"):
        _fetch(_variant(tiny_models, revision="deadbeef"), isolated / "d", offline=True)


def test_missing_and_gated_repos(server, tiny_models, isolated: Path, monkeypatch) -> None:
    with pytest.raises(FetchError, match="tiny/nope .*not found.*catalog"):
        _fetch(_variant(tiny_models, repo_id="tiny/nope"), isolated / "a")
    with pytest.raises(FetchError, match="no revision"):
        _fetch(_variant(tiny_models, revision="no-such-branch"), isolated / "a")
    server.state.repos[REPO].gated = True
    with pytest.raises(FetchError, match="gated.*HF_TOKEN"):
        _fetch(_variant(tiny_models), isolated / "a")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    get_settings.cache_clear()
    assert _fetch(_variant(tiny_models), isolated / "a")["revision"] == server.first_sha
    auth = [h.get("authorization") or h.get("Authorization") for _, _, h in server.state.requests]
    assert "Bearer hf_test_token" in auth


def test_remote_code_needs_an_allow_listed_sha(server, tiny_models, isolated: Path) -> None:
    variant = _variant(tiny_models, remote_code=True)
    with pytest.raises(FetchError, match="not allow-listed.*remote_code.yaml"):
        _fetch(variant, isolated / "a")
    with pytest.raises(FetchError, match="allow-listed at 000000000000"):
        _fetch(variant, isolated / "a", trusted_remote_code={REPO: "0" * 40})
    ok = _fetch(variant, isolated / "a", trusted_remote_code={REPO: server.first_sha})
    assert ok["revision"] == server.first_sha


def test_disk_space_is_checked_before_downloading(server, tiny_models, isolated: Path, monkeypatch) -> None:
    import shutil

    from slmops.fetch import hub

    real = shutil.disk_usage
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(FetchError, match="needs .* GiB but only 0.00 GiB is free"):
        _fetch(_variant(tiny_models), isolated / "a")
    assert not any(m == "GET" and "/resolve/" in p for m, p, _ in server.state.requests)


def _fetch_in_process(out: str, endpoint: str, env: dict) -> None:
    import os

    os.environ.update(env)
    from slmops.catalog.schema import Variant as V

    fetch(V.model_validate_json(env["VARIANT_JSON"]), out=Path(out), config=FetchConfig(source="hub"))


def test_two_processes_fetching_at_once_end_with_one_intact_copy(server, tiny_models, isolated: Path) -> None:
    import os

    variant = _variant(tiny_models)
    env = {k: v for k, v in os.environ.items() if k.startswith(("SLMOPS_", "HF_"))} | {
        "VARIANT_JSON": variant.model_dump_json(exclude={"size_class"})
    }
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_fetch_in_process, args=(str(isolated / "out"), server.endpoint, env)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    read_manifest(isolated / "out", verify=True)
    assert _corrupt_files(isolated / "out", server.folder) == 0
    assert [p.name for p in (isolated).iterdir() if p.name.startswith(".out.") and not p.name.endswith(".lock")] == []


def test_cli_fetch_offline_flag_and_errors(server, tiny_models, isolated: Path) -> None:
    from tests.conftest import tiny_env

    env = {**tiny_env(isolated, tiny_models, server.endpoint), "SLMOPS_HUB_TIMEOUT_S": "1"}
    server.state.publish_folder("tiny/tiny-bert", tiny_models["tiny-bert"][0])

    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "slmops.cli", "fetch", *a],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, **env},
        )

    missing = run("tiny-bert", "--offline")
    assert missing.returncode == 1 and "offline: tiny-bert" in missing.stderr
    env["HF_HUB_OFFLINE"] = "1"
    by_env = run("tiny-bert")
    assert by_env.returncode == 1 and "offline: tiny-bert" in by_env.stderr
    del env["HF_HUB_OFFLINE"]
    ok = run("tiny-bert", "--revision", "main")
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["revision"]) == 40
    assert run("tiny-bert", "--offline").returncode == 0
    typo = run("tiny-bertt")
    assert typo.returncode == 1 and "Did you mean: tiny-bert" in typo.stderr


def test_later_stage_refuses_an_unmanifested_folder(tiny_models, isolated: Path) -> None:
    from slmops.export import export

    folder, _ = tiny_models["tiny-llama"]
    with pytest.raises(IntegrityError, match="no slmops-manifest.json"):
        export(_variant(tiny_models), src=folder, out=isolated / "export")
    assert (
        git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    )  # git's empty blob: the server's hashes are git's


def fault_summary() -> str:
    return (
        f"hub fault tests: faults injected {FAULTS['injected']}, files recovered {FAULTS['recovered']}, "
        f"corrupt files left {FAULTS['corrupt_left']}"
    )


def test_server_down_past_huggingface_hubs_own_retries_is_retried(server, tiny_models, isolated: Path) -> None:
    """5xx on HEAD for longer than huggingface_hub's own retries (6 attempts, about 23 s): it raises
    LocalEntryNotFoundError, which slmops retries instead of reporting a missing file."""
    server.state.inject("status", f"/{REPO}/resolve/*/config.json", times=7, arg=503, method="HEAD")
    _fetch(_variant(tiny_models), isolated / "out")
    heads = [p for m, p, _ in server.state.requests if m == "HEAD" and p.endswith("/config.json")]
    assert len(heads) >= 7 and json.loads(run_record_path(isolated / "out").read_text())["retries"] >= 1
    assert (isolated / "out" / "config.json").read_bytes() == (server.folder / "config.json").read_bytes()


def test_pinned_sha_missing_on_a_mirror_suggests_another_revision(
    server, tiny_models, isolated: Path, monkeypatch
) -> None:
    monkeypatch.setenv("SLMOPS_HUB_RETRIES", "1")
    get_settings.cache_clear()
    server.state.inject("status", f"/api/models/{REPO}/revision/{server.first_sha}", times=100, arg=500)
    with pytest.raises(FetchError) as err:
        _fetch(_variant(tiny_models, revision=server.first_sha), isolated / "out")
    message = str(err.value)
    assert f"may not have commit {server.first_sha}" in message and "--revision" in message
    assert "resolving revision" in message and "HTTP 500" in message


def test_dns_failure_names_the_host_and_suggests_offline_when_cached(
    server, tiny_models, isolated: Path, monkeypatch
) -> None:
    variant = _variant(tiny_models)
    monkeypatch.setenv("SLMOPS_HUB_RETRIES", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://slmops-test-host.invalid")
    get_settings.cache_clear()
    with pytest.raises(FetchError) as never_fetched:
        _fetch(variant, isolated / "a")
    assert "'slmops-test-host.invalid' does not resolve (DNS)" in str(never_fetched.value)
    assert "--offline" not in str(never_fetched.value) and "SLMOPS_HUB_RETRIES" not in str(never_fetched.value)
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    get_settings.cache_clear()
    _fetch(variant, isolated / "b")
    monkeypatch.setenv("HF_ENDPOINT", "http://slmops-test-host.invalid")
    get_settings.cache_clear()
    with pytest.raises(FetchError, match=r"in the local cache: run `slmops fetch tiny-llama --offline`"):
        _fetch(variant, isolated / "c")


def test_a_file_missing_from_the_commit_is_named_as_such(server, tiny_models, isolated: Path) -> None:
    server.state.inject("status", f"/{REPO}/resolve/*/tokenizer.json", times=100, arg=404, method="HEAD")
    with pytest.raises(FetchError) as err:
        _fetch(_variant(tiny_models), isolated / "out")
    message = str(err.value)
    assert "downloading tokenizer.json failed: the file does not exist in that commit" in message
    assert "at that revision" not in message and "attempts" not in message  # not retried: a 404 is an answer
    assert not (isolated / "out").exists()


def test_fetch_leaves_no_lock_or_partial_files(server, tiny_models, isolated: Path) -> None:
    _fetch(_variant(tiny_models), isolated / "fetch" / "tiny-llama")
    # the folder and the record of how the fetch ran (kept outside the folder DVC hashes); no lock or temp file
    assert sorted(p.name for p in (isolated / "fetch").iterdir()) == ["tiny-llama", "tiny-llama.fetch-run.json"]
