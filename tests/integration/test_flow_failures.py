"""A build where one variant fails: the others are built, the flow's error names variant, stage and cause."""

from __future__ import annotations

import pytest

from slmops.errors import BuildError


def test_failed_variant_is_named_and_the_others_are_built(
    tiny_models, isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    from flows.build import build
    from slmops.project import Project
    from tests.conftest import apply_env, tiny_env
    from tests.support.hubserver import HubServer

    with HubServer() as hub:
        hub.state.publish_folder("tiny/tiny-bert", tiny_models["tiny-bert"][0])  # tiny-llama is not published
        apply_env(monkeypatch, {**tiny_env(isolated, tiny_models, hub.endpoint), "SLMOPS_HUB_RETRIES": "0"})
        project = Project.load()
        with prefect_test_harness(server_startup_timeout=120):
            with pytest.raises(BuildError) as err:
                build()
            with get_client(sync_client=True) as client:
                names = {run.name for run in client.read_task_runs()}
    message = str(err.value)
    assert message.startswith("1 of 2 variants failed: tiny-llama: fetch failed: ")
    assert "tiny/tiny-llama" in message and "not found" in message and "UnfinishedRun" not in message
    assert {"fetch[tiny-llama]", "fetch[tiny-bert]", "register[tiny-bert]", "recommend"} <= names
    assert "export[tiny-llama]" not in names
    assert (project.candidate_dir("tiny-bert", "fp32") / "slmops-manifest.json").is_file()
