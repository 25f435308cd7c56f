"""Projects: the wall around every tenant's data."""

from __future__ import annotations

import uuid
from datetime import datetime

from pulse.errors import InvalidInput
from pulse.storage.postgres import Database


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput.field("name", "is required")
    if len(name) > 200:
        raise InvalidInput.field("name", "must be at most 200 characters")
    return name.strip()


def create_project(db: Database, name: str) -> dict[str, object]:
    project_id = str(uuid.uuid4())
    created: datetime = db.run(
        "INSERT INTO projects (project_id, name) VALUES (CAST(:p AS uuid), :n) RETURNING created_at",
        p=project_id, n=check_name(name))[0][0]
    return {"project_id": project_id, "name": name.strip(), "created_at": created.isoformat()}
