"""2 MB transparent huge pages under the weights onnxruntime prepacked, so decoding misses the TLB less.

A decode step streams every weight once: SmolLM2-135M wo-int8 reads 149 MB per token, 36k pages of 4 KB, each a
TLB entry to walk. onnxruntime's prepacked copies are anonymous memory from malloc, on 4 KB pages wherever
transparent huge pages are ``madvise`` only (the common default, and this project's machines). After a session
opens, :func:`collapse_new_mappings` asks the kernel (``MADV_COLLAPSE``, Linux 6.1+) to move the large, fully
resident anonymous mappings the open created onto 2 MB pages. (llama.cpp reads its memory-mapped GGUF through
4 KB mappings too: ``FilePmdMapped`` 0 kB while it decodes, same machine.)

Measured on the 2-core Xeon with AVX512-VNNI, THP ``madvise`` (2026-12-01), processes taking turns, each round in
new processes: ``slmops.load('chat-cpu')`` (SmolLM2-135M wo-int8, 64 tokens after a 128-token prompt) decodes at
1.241x llama.cpp (1.156-1.307, 8 rounds) against 1.157x (1.101-1.200) on 4 KB pages; all-MiniLM-L6-v2
dyn-int8-pc 2.968x torch against 2.886x (6 rounds). Peak RSS is unchanged (270.8 against 268.9 MB, one request).
The collapse takes about 0.6 ms per 2 MB (40 ms for wo-int8's 180 MB), but up to 11 ms per 2 MB where the kernel
hands out memory the hypervisor has not backed yet (0.4 s once on a fresh VM). ``SLMOPS_HUGE_PAGES=0`` turns it off.
The KV cache on 2 MB pages too (one block for all layers, marked before it is written) measured nothing at a
512-token prompt (1.006x, 0.957-1.084 over 10 rounds of fresh processes), so it stays on 4 KB pages.
"""

from __future__ import annotations

import ctypes
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

MADV_HUGEPAGE = 14  # Linux <sys/mman.h>
MADV_COLLAPSE = 25  # Linux 6.1+
HUGE_PAGE = 2 << 20
SMAPS = Path("/proc/self/smaps")
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")

Mapping = tuple[int, int, int]  # start, end, anonymous resident bytes


def anonymous_mappings(smaps: Path = SMAPS) -> list[Mapping]:
    """This process's private anonymous writable mappings (the heap included); empty where /proc is absent."""
    found: list[Mapping] = []
    current: list[int] | None = None
    try:
        text = smaps.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        head, _, rest = line.partition(" ")
        if not head.endswith(":"):  # "start-end perms offset dev inode [path]"
            fields = line.split(maxsplit=5)
            path = fields[5] if len(fields) == 6 else ""
            current = None
            if path in ("", "[heap]") and fields[1].startswith("rw") and fields[1].endswith("p"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                current = [start, end, 0]
                found.append(current)  # type: ignore[arg-type]  # filled in below, then read as a tuple
        elif current is not None and head == "Anonymous:":
            current[2] = int(rest.split()[0]) * 1024
    return [(s, e, a) for s, e, a in found]


def huge_pages_available(enabled: Path = THP_ENABLED) -> bool:
    """Whether transparent huge pages may be used at all (``[always]`` or ``[madvise]``, not ``[never]``)."""
    try:
        return "[never]" not in enabled.read_text()
    except OSError:
        return False


def collapse_new_mappings(before: list[Mapping], *, min_bytes: int = 4 << 20, resident: float = 0.9) -> int:
    """Move the anonymous mappings that are not in ``before`` (what an open just allocated) onto huge pages, where
    at least ``min_bytes`` and ``resident`` of them are in memory (so no untouched page is filled); returns the
    bytes collapsed. A no-op without transparent huge pages or ``MADV_COLLAPSE`` (non-Linux, Linux before 6.1)."""
    if not huge_pages_available():
        return 0
    t0 = time.perf_counter()
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    known = {(start, end) for start, end, _ in before}
    collapsed = 0
    for start, end, anonymous in anonymous_mappings():
        if (start, end) in known or anonymous < max(min_bytes, resident * (end - start)):
            continue
        first, last = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
        if last <= first:
            continue
        madvise(first, last - first, MADV_HUGEPAGE)  # keeps them huge if khugepaged or a fault touches them later
        if madvise(first, last - first, MADV_COLLAPSE) != 0:
            errno = ctypes.get_errno()
            if errno == 22:  # EINVAL: this kernel has no MADV_COLLAPSE
                logger.debug("MADV_COLLAPSE is not supported here; weights stay on 4 KB pages")
                return collapsed
            logger.debug("MADV_COLLAPSE of %#x-%#x failed (errno %d)", first, last, errno)
            continue
        collapsed += last - first
    logger.debug("collapsed %.1f MB onto huge pages in %.3f s", collapsed / 2**20, time.perf_counter() - t0)
    return collapsed
