"""The default local MLflow store follows its folder when a project is copied or moved.

MLflow writes absolute artifact locations into its SQLite store (experiments, runs, logged models, model
versions), so a copied project would read and write the original's ``mlruns/artifacts``. Before the store is
used, :func:`relocate` compares the slmops experiment's recorded location with where the store lies now and,
when they differ, re-roots every recorded path under the old ``mlruns`` folder onto the new one, in one
transaction of the copy's own database. Nothing under the old folder is read or written.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

logger = logging.getLogger(__name__)

# every column in which MLflow 3 records an artifact location
PATH_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)
ARTIFACTS = "/artifacts"  # the experiment's location is <mlruns>/artifacts (Settings.resolved_artifact_root)


def relocate(db: Path, artifact_root: str, *, experiment: str) -> int:
    """Re-root the paths recorded in the SQLite store ``db`` when its ``experiment`` was created at another
    ``<mlruns>/artifacts`` than ``artifact_root`` (a ``file://`` URI); return how many values changed.

    A store without that experiment, or whose experiment lives elsewhere (not ``.../artifacts``), is left alone.
    Raises sqlite3.Error if the store cannot be written.
    """
    if not db.is_file():
        return 0
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        old = _recorded(con, experiment)
        if old is None or old == artifact_root or not (old.endswith(ARTIFACTS) and artifact_root.endswith(ARTIFACTS)):
            return 0
        if not Path(_path(artifact_root)).is_dir() and Path(_path(old)).is_dir():
            # the database alone was copied: its artifacts are only in the old folder, so the paths stay
            logger.warning(
                "the MLflow store %s records artifacts under %s and has none beside it (%s): it was copied "
                "without them, so its paths are kept and new runs still write there; copy the whole %s folder",
                db,
                _path(old),
                _path(artifact_root),
                db.parent.name,
            )
            return 0
        con.execute("BEGIN IMMEDIATE")  # one writer; another process may have relocated it meanwhile
        old = _recorded(con, experiment)
        if old is None or old == artifact_root or not old.endswith(ARTIFACTS):
            con.execute("ROLLBACK")
            return 0
        old_root, new_root = old.removesuffix(ARTIFACTS), artifact_root.removesuffix(ARTIFACTS)
        pairs = [(old_root, new_root), (_path(old_root), _path(new_root))]  # URIs, and plain paths if any
        changed = 0
        for table, column in PATH_COLUMNS:
            if not _has_column(con, table, column):
                continue
            for before, after in pairs:
                cursor = con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 - names from PATH_COLUMNS
                    f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                    (after, len(before) + 1, before, len(before) + 1, before + "/"),
                )
                changed += cursor.rowcount
        con.execute("COMMIT")
    finally:
        con.close()
    logger.warning(
        "the MLflow store %s was copied or moved from %s: re-rooted %d recorded paths onto %s "
        "(nothing under the old folder was touched)",
        db,
        _path(old_root),
        changed,
        _path(new_root),
    )
    return changed


def _recorded(con: sqlite3.Connection, experiment: str) -> str | None:
    try:
        row = con.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)).fetchone()
    except sqlite3.OperationalError:  # a fresh store: MLflow has not created its tables yet
        return None
    return str(row[0]) if row and row[0] else None


def _has_column(con: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in con.execute(f"PRAGMA table_info({table})"))


def _path(uri: str) -> str:
    return unquote(urlparse(uri).path) if uri.startswith("file:") else uri
