"""onnxruntime sessions per device profile (execution providers are data), with a cache of optimized graphs.

Session options measured on SmolLM2-135M wo-int8 (genai graph, 250 MB, 2 threads, shared 2-core box):
* graph optimization ORT_ENABLE_ALL: open 0.8-1.6 s; BASIC/EXTENDED open ~0.1 s faster but decode
  dropped from ~109 to 82-92 tok/s, so ALL stays.
* ``session.disable_prepacking``: open ~0.3 s faster, but decode fell to 2 tok/s (MatMulNBits
  unpacked on every call): never.
* ``session.use_env_allocators``: no measurable change for one session per process: not set.
* opening the graph ORT already optimized (``optimized_model_filepath``, then ORT_DISABLE_ALL):
  1.16-1.37 s against 1.58-1.65 s for the original, same decode speed; the ORT format (.ort,
  with or without ``use_ort_model_bytes_directly``) was no faster than that. Writing it costs one
  extra optimization pass (~2 s) on the first open, so it is done once per graph file and kept
  under ``<cache>/optimized/``, keyed by the file's identity, the onnxruntime version and the CPU
  (ORT_ENABLE_ALL output may hold CPU-specific kernels; a cache copied to another machine misses).
  The cached file lists the nodes reading the largest weights first (:func:`_largest_weights_first`), which
  takes the lm_head's source out of the open's peak.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmops.artifacts import file_identity
from slmops.errors import ModelLoadError
from slmops.runtime.pages import (
    PendingCollapse,
    anonymous_mappings,
    collapse_in_background,
    read_regions,
    read_sparsely,
    release_clean_pages,
)

logger = logging.getLogger(__name__)

DEVICE_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
}


def create_session(
    path: Path,
    *,
    device: str = "cpu",
    threads: int | None = None,
    optimized_dir: Path | None = None,
    config: dict[str, str] | None = None,
    huge_pages: bool = True,
):
    """An InferenceSession for ``path`` on ``device``; raises ModelLoadError if the device or file is unusable.

    With ``optimized_dir``, the graph optimized by a previous open is reused (and written on the first),
    its weights in an external file that onnxruntime memory-maps. ``config``: extra session config entries.
    ``huge_pages``: on CPU, move the prepacked weights onto 2 MB pages in a thread, once the session's first run
    is done (:mod:`slmops.runtime.pages`); the session returned is then a :class:`CollapsingSession`.
    """
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

    def options(level):
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = level
        # Not set: session.prepack.enable_parallel. It opens the cached gguf-q4 graph faster (0.27-0.32 s against
        # 0.33-0.40 s, six alternating fresh opens, 2026-12-01, load < 1), but keeps every unpacked weight until all
        # are packed: peak RSS of one request 339 MB against 310 (benchmarks/memory.py), and memory is the tighter goal.
        for key, value in (config or {}).items():
            opts.add_session_config_entry(key, value)
        return opts

    path = Path(path)
    before = anonymous_mappings() if huge_pages and device == "cpu" else None

    def opened(session, files: list[Path]):
        regions = read_regions()  # once for both: the release touches file mappings, the collapse anonymous ones
        release_clean_pages(files, regions=regions)
        read_sparsely(files, regions=regions)
        if before is not None:  # in a thread, after the first run: that run needs none of it (slmops/runtime/pages.py)
            pending = collapse_in_background(before, regions=regions)
            if pending is not None:
                return CollapsingSession(session, pending)
        return session

    if optimized_dir is not None:
        entry = Path(optimized_dir) / _key(path, device)
        session = _open_optimized(path, options, providers, entry)
        if session is not None:
            return opened(session, _graph_files(entry / "model.onnx"))
    try:
        opts = options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        session = ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    except Exception as exc:  # ort raises its own Fail/InvalidGraph types
        raise ModelLoadError(f"onnxruntime cannot open {path}: {exc}") from None
    return opened(session, _graph_files(path))


class CollapsingSession:
    """An onnxruntime session that starts its open's huge-page collapse when its first run ends; every other
    attribute is the session's own. A collapse running beside a run stalls it (its page faults wait for the kernel):
    started as the open returned, it held SmolLM2's first token to 0.26-0.57 s against 0.03 s (pages.py)."""

    def __init__(self, session: Any, collapse: PendingCollapse) -> None:
        self._session = session
        self.collapse = collapse

    def run(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._session.run(*args, **kwargs)
        finally:
            self._first_run_done()

    def run_with_iobinding(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._session.run_with_iobinding(*args, **kwargs)
        finally:
            self._first_run_done()

    def _first_run_done(self) -> None:
        if not self.collapse.started:
            self.collapse.start()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _graph_files(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.glob(f"{path.name}*") if p.is_file())  # the graph and its external data


def _key(path: Path, device: str) -> str:
    import onnxruntime as ort

    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    parts = [
        # the layout of the cached graph: entries written inline, or in onnxruntime's node order, by older slmops miss
        "external-weights,largest-weights-first",
        str(path.resolve()),
        device,
        ort.__version__,
        platform.machine(),
        cpu,
        *(json.dumps([p.name, *file_identity(p)]) for p in _graph_files(path)),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _open_optimized(path: Path, options: Callable[[Any], Any], providers: tuple[str, ...], entry: Path):
    """A session on the cached optimized graph, written first on a miss; None when it cannot be cached or opened.

    ``options(level)`` makes the session options at an optimization level.
    """
    import onnxruntime as ort

    def open_entry():
        opts = options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        return ort.InferenceSession(str(entry / "model.onnx"), sess_options=opts, providers=list(providers))

    try:
        recorded = json.loads((entry / "stamp.json").read_text())
        if recorded == {p.name: file_identity(p) for p in _graph_files(entry / "model.onnx")}:
            return open_entry()
    except (OSError, ValueError):
        pass  # no entry yet, or a changed one
    except Exception as exc:
        logger.warning("cached optimized graph %s does not open (%s); optimizing %s again", entry, exc, path)
    if not _write_optimized(path, options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL), providers, entry):
        return None
    try:  # the saving session held the whole graph in memory; the saved one maps its weights
        return open_entry()
    except Exception as exc:
        logger.warning("the optimized graph %s just written does not open (%s); opening %s", entry, exc, path)
        return None


def _write_optimized(path: Path, options, providers: tuple[str, ...], entry: Path) -> bool:
    """Optimize ``path`` into ``entry``/model.onnx with every initializer over 1 KiB in model.onnx.data."""
    import onnxruntime as ort

    shutil.rmtree(entry, ignore_errors=True)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    except OSError as exc:
        logger.info("cannot cache the optimized graph of %s: %s", path, exc)
        return False
    try:
        options.optimized_model_filepath = str(tmp / "model.onnx")
        # ORT warns that an ENABLE_ALL graph may be hardware specific: the cache key holds the CPU flags
        options.log_severity_level = max(options.log_severity_level, 3)
        # External weights: onnxruntime maps the file and drops the pages of the weights it prepacked, where
        # weights inside the protobuf stay resident as a second copy (gguf-q4: session 283 -> 162 MB)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.onnx.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        # this session only writes the graph: prepacking would cost memory and time for nothing
        options.add_session_config_entry("session.disable_prepacking", "1")
        ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        try:
            _largest_weights_first(tmp / "model.onnx")
        except Exception as exc:  # protobuf's DecodeError and the like: the cache still works in ORT's order
            logger.warning("kept onnxruntime's node order in %s: %s", entry, exc)
        for written in _graph_files(tmp / "model.onnx"):
            # on disk before the entry appears; also, dirty pages cannot be dropped, and read_sparsely drops the
            # cached pages of the embedding table when the entry is opened right after this
            with written.open("rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, entry)
        (entry / "stamp.json").write_text(
            json.dumps({p.name: file_identity(p) for p in _graph_files(entry / "model.onnx")})
        )
        return True
    except Exception as exc:
        logger.info("could not save the optimized graph of %s: %s", path, exc)
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Nodes reading a constant weight of at least this many bytes are prepacked first (see _largest_weights_first).
FIRST_PREPACK_BYTES = 4 * 2**20


def _largest_weights_first(graph: Path) -> None:
    """Rewrite ``graph`` (an ONNX file with external weights) with the nodes that read its largest weights first.

    onnxruntime prepacks weights node by node in the order the file lists the nodes, and frees each source as
    soon as its last consumer has packed it; it runs nodes in dependency order whatever that list says (and
    writes an optimized graph in dependency order again, so this is done to the cached file). In the order its
    optimizer writes, the lm_head comes last, so its 28 MB source was resident on top of every other packed
    weight: SmolLM2 wo-int8's open peaked 28.3 MB above where it ended (194.5 against 167.8 MB added, fresh
    processes, 2026-12-01). Listed first, its source is freed before the rest is packed: the open peaks 0.5 MB
    above its end (166.2 MB added), with the same logits and open time.
    """
    model_type = _onnx_subset()
    model = model_type()
    model.ParseFromString(graph.read_bytes())
    sizes: dict[str, int] = {}
    for tensor in model.graph.initializer:
        length = next((int(e.value) for e in tensor.external_data if e.key == "length"), None)
        sizes[tensor.name] = length if length is not None else len(tensor.raw_data)
    nodes = list(model.graph.node)
    weight = [max((sizes.get(name, 0) for name in node.input), default=0) for node in nodes]
    first = sorted((i for i, w in enumerate(weight) if w >= FIRST_PREPACK_BYTES), key=lambda i: -weight[i])
    if first == list(range(len(first))):
        return  # already in that order (or no weight that large)
    chosen = set(first)
    order = first + [i for i in range(len(nodes)) if i not in chosen]
    copies = [type(nodes[0])() for _ in nodes]
    for copy, i in zip(copies, order, strict=True):
        copy.CopyFrom(nodes[i])
    del model.graph.node[:]
    model.graph.node.extend(copies)
    tmp = graph.with_name(graph.name + ".reordered")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, graph)


def _onnx_subset():
    """The ModelProto class of a schema holding only the ONNX fields _largest_weights_first reads (field numbers
    of onnx.proto); protobuf keeps every other field as an unknown one and writes it back unchanged. The runtime
    does not depend on the ``onnx`` package (11 MB more resident); protobuf is already there for MLflow."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="slmops_onnx_subset.proto", package="slmops_onnx_subset")
    F = descriptor_pb2.FieldDescriptorProto
    messages = {
        "StringStringEntryProto": [("key", 1, F.TYPE_STRING, ""), ("value", 2, F.TYPE_STRING, "")],
        "TensorProto": [
            ("name", 8, F.TYPE_STRING, ""),
            ("raw_data", 9, F.TYPE_BYTES, ""),
            ("external_data", 13, F.TYPE_MESSAGE, "StringStringEntryProto"),
        ],
        "NodeProto": [("input", 1, F.TYPE_STRING, "")],
        "GraphProto": [("node", 1, F.TYPE_MESSAGE, "NodeProto"), ("initializer", 5, F.TYPE_MESSAGE, "TensorProto")],
        "ModelProto": [("graph", 7, F.TYPE_MESSAGE, "GraphProto")],
    }
    repeated = {"external_data", "input", "node", "initializer"}
    for name, fields in messages.items():
        message = fdp.message_type.add(name=name)
        for field, number, kind, type_name in fields:
            label = F.LABEL_REPEATED if field in repeated else F.LABEL_OPTIONAL
            added = message.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                added.type_name = f".slmops_onnx_subset.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("slmops_onnx_subset.ModelProto"))
