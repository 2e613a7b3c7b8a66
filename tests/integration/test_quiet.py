"""A build prints only slmops's own output: the stages on tiny models print none of the third-party notices."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slmops.cli import app

runner = CliRunner()

# What each library prints unless slmops silences it at the call (see slmops/quiet.py and its callers).
NOTICES = (
    "Converting and de-quantizing GGUF tensors",  # transformers' GGUF tqdm bar
    "default legacy behaviour",  # transformers' legacy-tokenizer notice
    "`torch_dtype` is deprecated",  # transformers, asked by optimum
    "library name was inferred",  # optimum, for a sentence-transformers folder
    "TracerWarning",  # torch.onnx tracing inside optimum
    "pre-processing before quantization",  # onnxruntime's quantize_dynamic
    "Creating initial MLflow database tables",
    "Successfully registered model",
    "Created version",
    "type hints to the `predict` method",  # MLflow, when slmops's pyfunc class is first imported
)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def shown(capfd: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder):
    """``shown(*texts)``: the NOTICES in ``texts``, in what reached stdout/stderr, in transformers' log records
    (its logger does not propagate, and its handler may hold a stream pytest swapped out) and in the warnings."""
    records = _Records()
    logging.getLogger("transformers").addHandler(records)

    def notices(*texts: str) -> list[str]:
        out, err = capfd.readouterr()
        warned = [f"{w.category.__name__}: {w.message}" for w in recwarn]
        everything = "\n".join([*texts, out, err, *records.messages, *warned])
        return [notice for notice in NOTICES if notice in everything]

    yield notices
    logging.getLogger("transformers").removeHandler(records)


def test_stage_commands_print_no_third_party_notices(
    hub, tiny_models, isolated: Path, monkeypatch: pytest.MonkeyPatch, shown
) -> None:
    import onnxruntime

    from tests.conftest import apply_env, tiny_env

    apply_env(monkeypatch, tiny_env(isolated, tiny_models, hub.endpoint))
    printed = []
    for command in ("fetch", "export", "quantize", "evaluate", "bench", "register"):
        result = runner.invoke(app, [command, "tiny-bert"])
        assert result.exit_code == 0, result.output
        printed.append(result.output)
    assert shown(*printed) == []
    assert '"version": "1"' in printed[-1]  # the stages did run: fp32 was registered as version 1
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        # the cuda profile is skipped for both candidates (fp32, dyn-int8-pc) and said once
        assert "\n".join(printed).count("benchmark profile cuda skipped") == 1, printed[-2]


def test_gguf_conversion_prints_no_bar_or_tokenizer_notice(tiny_models, tmp_path: Path, shown) -> None:
    from slmops.fetch.sources import gguf_to_hf
    from tests.support.tiny import build_tiny_gguf

    folder, _ = tiny_models["tiny-llama"]
    build_tiny_gguf(folder, tmp_path / "tiny.gguf")
    shown()  # drop what building the GGUF printed
    gguf_to_hf(tmp_path / "tiny.gguf", tmp_path / "hf")
    assert shown() == []
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_onnxruntime_gives_the_hint_without_the_filter(
    tiny_models, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The notice is real upstream, so its absence above says the scoped filter works (not that ORT changed)."""
    from onnxruntime.quantization import quantize_dynamic

    from slmops.export.stage import export
    from tests.support.tiny import as_fetched

    folder, facts = tiny_models["tiny-bert"]
    src = tmp_path / "fetch"
    shutil.copytree(folder, src)
    export(as_fetched(src, "tiny-bert", facts), src=src, out=tmp_path / "export")
    with caplog.at_level(logging.WARNING):
        quantize_dynamic(str(tmp_path / "export" / "model.onnx"), str(tmp_path / "q.onnx"))
    assert "pre-processing before quantization" in caplog.text
