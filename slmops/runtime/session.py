"""onnxruntime sessions per device profile (execution providers are data)."""

from __future__ import annotations

from pathlib import Path

from slmops.errors import ModelLoadError

DEVICE_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
}


def create_session(path: Path, *, device: str = "cpu", threads: int | None = None):  # noqa: ANN201 - ort type
    """An InferenceSession for ``path`` on ``device``; raises ModelLoadError if the device or file is unusable."""
    import onnxruntime as ort

    try:
        providers = DEVICE_PROVIDERS[device]
    except KeyError:
        raise ModelLoadError(f"unknown device {device!r}; use one of {', '.join(DEVICE_PROVIDERS)}") from None
    if providers[0] not in ort.get_available_providers():
        raise ModelLoadError(
            f"device {device!r} needs {providers[0]}, which this onnxruntime build lacks "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use device='cpu'"
        )
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # ort raises its own Fail/InvalidGraph types
        raise ModelLoadError(f"onnxruntime cannot open {path}: {exc}") from None
