"""The suites the gateway offers as evals: the YAML files of the suites folder, by file name
(`demo-skills` is `demo-skills.yaml`), each loaded once per change of its file. An id names a
file found in that folder, never a path, so no request reaches another file."""

import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.errors import ErrorCode, StackError
from evals.errors import EvalsError
from evals.suites import NAME, Suite, load_suite

log = logging.getLogger(__name__)

EVAL_ID_PATTERN = NAME


@dataclass(frozen=True)
class CatalogSuite:
    id: str  # the file's name without .yaml
    suite: Suite
    modified_at: datetime  # when the file was last written


def eval_not_found(eval_id: str, why: str = "", param: str = "eval_id") -> EvalsError:
    return EvalsError(
        ErrorCode.NOT_FOUND,
        f"no eval {eval_id!r}{why}; evals are the suites (YAML files) in the gateway's suites "
        "folder (configs/evals by default), listed by GET /v1/evals",
        param=param,
        api_code="eval_not_found",
    )


class SuiteCatalog:
    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[tuple[int, int], CatalogSuite | StackError]] = {}

    def _files(self) -> dict[str, Path]:
        if not self.folder.is_dir():
            return {}
        return {
            path.stem: path
            for path in self.folder.glob("*.yaml")
            if re.fullmatch(EVAL_ID_PATTERN, path.stem) and path.is_file()
        }

    def _load(self, eval_id: str, path: Path) -> CatalogSuite | StackError:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._loaded.get(eval_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        loaded: CatalogSuite | StackError
        try:
            modified = datetime.fromtimestamp(stat.st_mtime, UTC)
            loaded = CatalogSuite(eval_id, load_suite(str(path), self.folder), modified)
        except StackError as err:  # not a suite (gates.yaml), or a broken one
            loaded = err
        with self._lock:
            self._loaded[eval_id] = (stamp, loaded)
        return loaded

    def suites(self) -> list[CatalogSuite]:
        """Every valid suite of the folder; files that are not suites are left out."""
        found = []
        for eval_id, path in sorted(self._files().items()):
            loaded = self._load(eval_id, path)
            if isinstance(loaded, CatalogSuite):
                found.append(loaded)
            else:
                log.debug("%s is not an evaluation suite: %s", path.name, loaded.message)
        return found

    def get(self, eval_id: str) -> CatalogSuite:
        path = self._files().get(eval_id)
        if path is None:
            raise eval_not_found(eval_id)
        loaded = self._load(eval_id, path)
        if isinstance(loaded, StackError):
            raise eval_not_found(eval_id, f" ({path.name} is not a valid suite: {loaded.message})")
        return loaded
