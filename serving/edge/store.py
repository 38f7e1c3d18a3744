"""Edge devices on SQLAlchemy (SQLite or PostgreSQL): each one's API key, the reference it
follows and what it last reported. A removed device keeps its row (its history) until its id
is added again."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from core.database import as_utc, reading, utc_now
from core.errors import ErrorCode
from serving.errors import ServingError
from serving.tables import edge_devices


@dataclass(frozen=True)
class Device:
    id: str
    key_id: str
    model: str
    created_at: datetime
    version: str | None = None
    bundle_digest: str | None = None
    status: str | None = None
    detail: str | None = None
    last_seen_at: datetime | None = None
    removed_at: datetime | None = None


def _device(row: Any) -> Device:
    values = dict(row._mapping)
    for name in ("created_at", "last_seen_at", "removed_at"):
        values[name] = as_utc(values[name])
    return Device(**values)


def device_not_found(device_id: str) -> ServingError:
    return ServingError(
        ErrorCode.NOT_FOUND,
        f"no edge device {device_id!r}; `llm-serve edge devices` lists them",
        param="device_id",
        api_code="device_not_found",
    )


class DeviceStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def add(self, device_id: str, model: str, key_id: str) -> Device:
        """A new device; a removed device's id may be added again (its old row goes)."""
        device = Device(id=device_id, key_id=key_id, model=model, created_at=utc_now())
        with self.engine.begin() as conn:
            old = conn.execute(select(edge_devices).where(edge_devices.c.id == device_id)).first()
            if old is not None and old.removed_at is None:
                raise ServingError(
                    ErrorCode.ALREADY_EXISTS,
                    f"edge device {device_id!r} exists; remove it first or choose another id",
                    param="id",
                    api_code="device_exists",
                )
            if old is not None:
                conn.execute(edge_devices.delete().where(edge_devices.c.id == device_id))
            conn.execute(insert(edge_devices).values(**device.__dict__))
        return device

    def get(self, device_id: str) -> Device:
        with reading(self.engine) as conn:
            row = conn.execute(select(edge_devices).where(edge_devices.c.id == device_id)).first()
        if row is None:
            raise device_not_found(device_id)
        return _device(row)

    def of_key(self, key_id: str) -> Device | None:
        """The device (not removed) whose API key this is."""
        query = select(edge_devices).where(
            edge_devices.c.key_id == key_id, edge_devices.c.removed_at.is_(None)
        )
        with reading(self.engine) as conn:
            row = conn.execute(query).first()
        return _device(row) if row else None

    def list_devices(self, after: str | None, limit: int) -> list[Device]:
        """By id, removed ones left out; `limit + 1` at most, after the id `after`."""
        query = (
            select(edge_devices)
            .where(edge_devices.c.removed_at.is_(None))
            .order_by(edge_devices.c.id)
        )
        if after is not None:
            query = query.where(edge_devices.c.id > after)
        with reading(self.engine) as conn:
            return [_device(r) for r in conn.execute(query.limit(limit + 1))]

    def report(self, device_id: str, **values: Any) -> Device:
        """Record what the device reported (version, bundle_digest, status, detail), now."""
        with self.engine.begin() as conn:
            conn.execute(
                update(edge_devices)
                .where(edge_devices.c.id == device_id)
                .values(last_seen_at=utc_now(), **values)
            )
        return self.get(device_id)

    def remove(self, device_id: str) -> Device:
        device = self.get(device_id)
        if device.removed_at is None:
            with self.engine.begin() as conn:
                conn.execute(
                    update(edge_devices)
                    .where(edge_devices.c.id == device_id)
                    .values(removed_at=utc_now())
                )
        return self.get(device_id)
