"""Progress of long downloads as periodic log lines, for output that is not a terminal."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from pathlib import Path

progress_logger = logging.getLogger("slmops.progress")


class DownloadProgress:
    """Progress of a fetch as a log line every ``every_s`` seconds, when stderr is not a terminal (CI, a log file,
    a Prefect worker): "fetch x: 120/538 MB (22%) 9.1 MB/s". On a terminal, huggingface_hub's own bars show instead;
    off one they are turned off for the download (they would print a line per refresh).

    Bytes are read from the file being downloaded (huggingface_hub's ``blobs/<etag>.incomplete``). Lines go to
    the ``slmops.progress`` logger (shown at INFO: the CLI enables it by default, as a progress bar would be).
    """

    def __init__(self, variant_id: str, total: int, *, every_s: float) -> None:
        self.variant_id, self.total, self.every_s = variant_id, total, every_s
        self.done = 0  # bytes of the files finished
        self.current: tuple[Path, int] | None = None  # the file being downloaded (where it grows) and its size
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bars_were_on = False

    def __enter__(self) -> DownloadProgress:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

        if sys.stderr.isatty():
            return self
        self._bars_were_on = not are_progress_bars_disabled()
        disable_progress_bars()
        # the thread logs inside the caller's context (a Prefect task run's, so the lines reach its log)
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name=f"slmops-fetch-progress-{self.variant_id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        from huggingface_hub.utils import enable_progress_bars

        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        if self._bars_were_on:
            enable_progress_bars()

    def downloading(self, partial: Path, size: int) -> None:
        """The next file is being downloaded into ``partial``; it will hold ``size`` bytes."""
        self.current = (partial, size)

    def finished(self) -> None:
        if self.current is not None:
            self.done += self.current[1]
        self.current = None

    def bytes_now(self) -> int:
        current = self.current
        if current is None:
            return self.done
        try:
            partial = current[0].stat().st_size
        except OSError:  # not started, or already moved into place
            partial = 0
        return self.done + min(partial, current[1])

    def _run(self) -> None:
        last_bytes, last_t = self.bytes_now(), time.monotonic()
        while not self._stop.wait(self.every_s):
            now_bytes, now_t = self.bytes_now(), time.monotonic()
            rate = (now_bytes - last_bytes) / max(now_t - last_t, 1e-9)
            digits = 1 if self.total < 100e6 else 0  # "0.4/2.1 MB" for small downloads, "120/538 MB" for large
            progress_logger.info(
                "fetch %s: %.*f/%.*f MB (%d%%) %.1f MB/s",
                self.variant_id,
                digits,
                now_bytes / 1e6,
                digits,
                self.total / 1e6,
                100 * now_bytes // max(self.total, 1),
                rate / 1e6,
            )
            last_bytes, last_t = now_bytes, now_t
