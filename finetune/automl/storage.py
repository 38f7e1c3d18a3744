"""Studies live in Optuna's RDB storage on the stack's database URL (SQLite under LLMOPS_HOME
or PostgreSQL), so worker processes, here or on other machines sharing the database, work one
study together, and a study resumes after a restart.

Optuna's tables are unprefixed (`studies`, `trials`, `trial_params`, ..., `version_info`) and
its schema version sits in alembic's default `alembic_version` table. No stack table has
those names (each package prefixes its tables and keeps its own `<package>_alembic_version`),
so they sit side by side. One overlap exists: a database from a release before the
per-package version tables kept the registry's revision in `alembic_version`; the registry
moves it out (and drops the table) when it first opens such a database, so the stack's chains
are migrated before Optuna opens its storage."""

import zlib
from typing import Any

import optuna
from optuna.storages import RDBStorage
from sqlalchemy import make_url

from core.database import open_database
from core.errors import ErrorCode
from core.settings import StackSettings
from finetune.automl.search import RecipeSearch, parse_search
from finetune.errors import FinetuneError
from finetune.tables import CHAIN as FINETUNE_CHAIN
from registry.tables import CHAIN as REGISTRY_CHAIN

SEARCH_ATTR = "search"  # the validated search, in the study's user attributes
DIGEST_ATTR = "search_digest"
_storages: dict[str, RDBStorage] = {}


def _engine_kwargs(url: str) -> dict[str, Any]:
    if make_url(url).get_backend_name() == "sqlite":
        # Several workers write one file: wait for the lock instead of failing at once.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def study_storage(stack: StackSettings) -> RDBStorage:
    """This process's Optuna storage on the stack's database, after the stack's own tables."""
    url = stack.resolved_database_url
    if url not in _storages:
        for chain in (REGISTRY_CHAIN, FINETUNE_CHAIN):
            open_database(url, chain)
        _storages[url] = RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    return _storages[url]


def create_study(stack: StackSettings, search: RecipeSearch) -> optuna.Study:
    """The search's study, created or (same search) loaded; INVALID when a study of that name
    was made from another search."""
    storage = study_storage(stack)
    study = optuna.create_study(
        storage=storage,
        study_name=search.study,
        directions=search.directions,
        load_if_exists=True,
    )
    digest = study.user_attrs.get(DIGEST_ATTR)
    if digest is None:
        study.set_user_attr(SEARCH_ATTR, search.model_dump(mode="json"))
        study.set_user_attr(DIGEST_ATTR, search.digest())
        for values in search.enqueued():
            study.enqueue_trial(values)
    elif digest != search.digest():
        raise FinetuneError(
            ErrorCode.INVALID,
            f"study {search.study!r} exists and was made from another search (space, "
            "objectives or recipe differ); give the search another `study` name",
            param="study",
        )
    return study


def open_study(stack: StackSettings, name: str) -> optuna.Study:
    """An existing study, as stored (Optuna's default sampler); NOT_FOUND names the others."""
    storage = study_storage(stack)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise FinetuneError(
            ErrorCode.NOT_FOUND,
            f"no study {name!r}; studies: {', '.join(names) or 'none yet'}",
            param="study",
        ) from None


def load_study(
    stack: StackSettings, name: str, job_seed: int = 0
) -> tuple[optuna.Study, RecipeSearch]:
    """An existing study with its search (sampler seeded by `job_seed`, pruner as searched)."""
    storage = study_storage(stack)
    plain = open_study(stack, name)
    search = parse_search(plain.user_attrs[SEARCH_ATTR], f"study {name}")
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=search.sampler.build(job_seed),
        pruner=search.pruner.build() if search.pruner else optuna.pruners.NopPruner(),
    )
    return study, search


def job_seed(job_id: str) -> int:
    """A seed per trial job, so workers that start at once do not draw the same values."""
    return zlib.crc32(job_id.encode())
