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
An open therefore leaves the collapse to a thread (:func:`collapse_in_background`), which starts it once the
session has finished its first run: on the AMD EPYC (AVX2) VM of 2026-12-07 it took 0.04-0.65 s for SmolLM2
wo-int8-gptq4's 148 MB (five opens: 0.650, 0.043, 0.046, 0.289, 0.045), which put the warm cold start at 0.78 s
when the open waited for it, while the first token needs none of it (4 KB pages decode about 10% slower than huge
ones there: 1.098x the step time, two processes each holding both, 12 turns of 64 steps). Started as the open
returned, it stalled that first run until it was done (the run's page faults wait for the kernel's collapse):
first token 0.26-0.57 s against 0.025-0.029 s with no collapse; at idle priority (``SCHED_IDLE``) 0.13-0.40 s;
started after the first token, 0.026-0.034 s, and it took 0.12-0.20 s beside the next 64 tokens (95-107 tok/s
for those, 114-136 after; three rounds of fresh processes, the four ways in turn, 22:05).
The KV cache on 2 MB pages too (one block for all layers, marked before it is written) measured nothing at a
512-token prompt (1.006x, 0.957-1.084 over 10 rounds of fresh processes), so it stays on 4 KB pages.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

MADV_RANDOM = 1  # Linux <sys/mman.h>
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25  # Linux 6.1+
HUGE_PAGE = 2 << 20
SMAPS = Path("/proc/self/smaps")
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


class Region(NamedTuple):
    """One mapping of ``/proc/self/smaps``: its range, permissions, path ("" when anonymous), resident and
    anonymous (copied-on-write or never file-backed) bytes, and the file offset it maps from."""

    start: int
    end: int
    perms: str
    path: str
    rss: int
    anonymous: int
    offset: int = 0


Mapping = tuple[int, int, int]  # start, end, anonymous resident bytes


def read_regions(smaps: Path = SMAPS) -> list[Region]:
    """This process's mappings; empty where /proc is absent or unreadable."""
    found: list[list] = []
    try:
        text = smaps.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        head, _, rest = line.partition(" ")
        if not head.endswith(":"):  # "start-end perms offset dev inode [path]"
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append([start, end, fields[1], fields[5] if len(fields) == 6 else "", 0, 0, int(fields[2], 16)])
        elif found and head in ("Rss:", "Anonymous:"):
            found[-1][4 if head == "Rss:" else 5] = int(rest.split()[0]) * 1024
    return [Region(*r) for r in found]


def anonymous_mappings(smaps: Path = SMAPS, *, regions: list[Region] | None = None) -> list[Mapping]:
    """This process's private anonymous writable mappings (the heap included); empty where /proc is absent."""
    return [
        (r.start, r.end, r.anonymous)
        for r in (read_regions(smaps) if regions is None else regions)
        if r.path in ("", "[heap]") and r.perms.startswith("rw") and r.perms.endswith("p")
    ]


def _madvise():
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


def release_clean_pages(files: list[Path], *, regions: list[Region] | None = None) -> int:
    """Unmap the resident pages of ``files``' memory mappings that were never written; returns the bytes released.

    onnxruntime maps external weights (private, writable) and reads each while prepacking it. The weights it
    packed are unmapped, but MatMulNBits keeps its scales and zero points as inputs (``is_packed = false``
    in onnxruntime's prepack) although its packed copy holds them: those pages stay in RSS, unread. SmolLM2
    gguf-q4 (2026-12-01): 18.7 MB of scales and zero points; after release, the decode of 64 tokens touched
    none of them again, and one request's RSS fell from 281 to 262 MB (peak 281 -> 271, the rest of the peak is
    the open itself). A page that is read again is mapped again from the page cache, so this is safe for any
    clean page; a mapping with copied-on-write (``Anonymous``) pages is left alone, as their content would be
    lost. Linux only; elsewhere a no-op. ``regions``: :func:`read_regions` already read.
    """
    wanted = {os.path.realpath(f) for f in files}
    if not wanted:
        return 0
    maps = [r for r in (read_regions() if regions is None else regions) if r.path in wanted]
    if not maps:
        return 0
    madvise = _madvise()
    released = 0
    for r in maps:
        if r.rss and not r.anonymous and madvise(r.start, r.end - r.start, MADV_DONTNEED) == 0:
            released += r.rss
    logger.debug("released %.1f MB of clean weight pages of %s", released / 2**20, ", ".join(sorted(wanted)))
    return released


# A weight still mapped after the open (onnxruntime did not pack it) and at least this large is a table read a row
# at a time: the token embedding (SmolLM2: 27 MB of 8-bit rows, 1.7 MB of scales). Smaller ones (norms, rotary
# caches, the scales MatMulNBits keeps) are read whole or not at all.
SPARSE_TABLE_BYTES = 1 << 20


def read_sparsely(
    files: list[Path], *, regions: list[Region] | None = None, min_bytes: int = SPARSE_TABLE_BYTES
) -> int:
    """Make each row of the large tables still mapped from ``files`` cost one resident page, not a large folio.

    A gathered embedding row (576 bytes for SmolLM2) faults in whatever the page cache holds around it: the large
    folios written when the cached graph was saved, or read ahead, are mapped whole, so a 128-token prompt left
    20.3 MB of SmolLM2's 27 MB table resident and 64 tokens more 22.1 MB (2026-12-01, Linux 6.18, ext4). Here the
    mappings get ``MADV_RANDOM`` (no read-ahead: a missing page is read alone) and their file ranges
    ``POSIX_FADV_DONTNEED`` (the kernel drops those cached pages that no process maps; it never drops a mapped
    one), after :func:`release_clean_pages` unmapped them. The same prompt then left 0.32 MB resident, at no
    measurable cost to its first token: one 4 KB read per page of rows not yet cached, and rows read since stay
    cached as single pages. Returns the bytes advised. Linux only; elsewhere a no-op.
    """
    wanted = {os.path.realpath(f) for f in files}
    tables = [
        r for r in (read_regions() if regions is None else regions) if r.path in wanted and r.end - r.start >= min_bytes
    ]
    if not tables or not hasattr(os, "posix_fadvise"):
        return 0
    madvise = _madvise()
    advised = 0
    for path in {r.path for r in tables}:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            for r in (r for r in tables if r.path == path):
                if madvise(r.start, r.end - r.start, MADV_RANDOM) == 0:
                    os.posix_fadvise(fd, r.offset, r.end - r.start, os.POSIX_FADV_DONTNEED)
                    advised += r.end - r.start
        finally:
            os.close(fd)
    logger.debug("%.1f MB of tables read sparsely from %s", advised / 2**20, ", ".join(sorted(wanted)))
    return advised


def huge_pages_available(enabled: Path = THP_ENABLED) -> bool:
    """Whether transparent huge pages may be used at all (``[always]`` or ``[madvise]``, not ``[never]``)."""
    try:
        return "[never]" not in enabled.read_text()
    except OSError:
        return False


class PendingCollapse:
    """A collapse an open left to do (``ranges``, from :func:`_collapsible`): a daemon thread that waits for
    :meth:`start`."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self._go = threading.Event()

        def run() -> None:
            self._go.wait()
            try:
                _collapse(ranges)
            except Exception:  # a failed collapse leaves the weights on 4 KB pages: slower, never wrong
                logger.debug("collapsing onto huge pages failed", exc_info=True)

        self.thread = threading.Thread(target=run, name="slmops-huge-pages", daemon=True)
        self.thread.start()

    def start(self) -> None:
        """Let the collapse run now (the session's first run is done, or the steady state is wanted now)."""
        self._go.set()

    @property
    def started(self) -> bool:
        return self._go.is_set()


_collapses: list[PendingCollapse] = []
_collapses_lock = threading.Lock()


def collapse_in_background(before: list[Mapping], *, regions: list[Region] | None = None) -> PendingCollapse | None:
    """:func:`collapse_new_mappings` in a daemon thread (``madvise`` releases the GIL), from the moment
    :meth:`PendingCollapse.start` is called: the session calls it after its first run (:mod:`slmops.runtime.session`),
    so that neither the open nor the first token waits for the kernel. None where there is nothing to do (no
    transparent huge pages, or no mapping the open made large and resident enough). :func:`wait_for_huge_pages`
    starts and waits for it."""
    if not huge_pages_available():
        return None
    ranges = _collapsible(before, regions=regions)
    if not ranges:
        return None  # no thread left waiting for a run that may never come
    pending = PendingCollapse(ranges)
    with _collapses_lock:
        _collapses[:] = [c for c in _collapses if c.thread.is_alive()]
        _collapses.append(pending)
    return pending


def wait_for_huge_pages(timeout: float | None = None) -> bool:
    """Start the collapses the opens of this process left, and wait at most ``timeout`` seconds in all for them;
    True when none is still running. For measurements of the steady state (resident memory, decode speed), for a
    server swapping a model in, and before weights are freed (a collapse must not run on freed memory)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _collapses_lock:
        pending = list(_collapses)
    for collapse in pending:
        collapse.start()
    for collapse in pending:
        collapse.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return not any(c.thread.is_alive() for c in pending)


def _collapsible(
    before: list[Mapping], *, regions: list[Region] | None, min_bytes: int = 4 << 20, resident: float = 0.9
) -> list[tuple[int, int]]:
    """The 2 MB-aligned ranges of the anonymous mappings not in ``before``, at least ``min_bytes`` and ``resident``."""
    known = {(start, end) for start, end, _ in before}
    ranges = []
    for start, end, anonymous in anonymous_mappings(regions=regions):
        if (start, end) in known or anonymous < max(min_bytes, resident * (end - start)):
            continue
        first, last = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
        if last > first:
            ranges.append((first, last))
    return ranges


def collapse_new_mappings(
    before: list[Mapping],
    *,
    min_bytes: int = 4 << 20,
    resident: float = 0.9,
    regions: list[Region] | None = None,
) -> int:
    """Move the anonymous mappings that are not in ``before`` (what an open just allocated) onto huge pages, where
    at least ``min_bytes`` and ``resident`` of them are in memory (so no untouched page is filled); returns the
    bytes collapsed. A no-op without transparent huge pages or ``MADV_COLLAPSE`` (non-Linux, Linux before 6.1).
    ``regions``: :func:`read_regions` already read after the open."""
    if not huge_pages_available():
        return 0
    return _collapse(_collapsible(before, regions=regions, min_bytes=min_bytes, resident=resident))


def _collapse(ranges: list[tuple[int, int]]) -> int:
    """``MADV_COLLAPSE`` each 2 MB-aligned range; the bytes collapsed."""
    t0 = time.perf_counter()
    madvise = _madvise()
    collapsed = 0
    for first, last in ranges:
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
