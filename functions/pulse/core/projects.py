"""Projects: the wall around every tenant's data."""

from __future__ import annotations

import uuid
from datetime import datetime

from pulse.errors import InvalidInput
from pulse.storage.postgres import Database

MAX_TEXT = 200


def check_uuid(field: str, value: object, detail: str = "must be a UUID") -> str:
    """An id from a request, in its canonical form, else a 400 naming ``field``."""
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInput.field(field, detail)
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise InvalidInput.field(field, detail) from exc


def check_text(field: str, value: object, required: bool = False) -> str | None:
    """A name people give something (a project, a key, their own): at most
    ``MAX_TEXT`` characters, no control characters (no NUL, no line breaks)."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidInput.field(field, "is required" if required else "must be a string")
    if len(value) > MAX_TEXT:
        raise InvalidInput.field(field, f"must be at most {MAX_TEXT} characters")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise InvalidInput.field(field, "must not contain control characters")
    return value.strip() or None


def check_name(name: object) -> str:
    return check_text("name", name, required=True) or ""


def create_project(db: Database, name: object) -> dict[str, object]:
    project_id, checked = str(uuid.uuid4()), check_name(name)
    created: datetime = db.run(
        "INSERT INTO projects (project_id, name) VALUES (CAST(:p AS uuid), :n) RETURNING created_at",
        p=project_id, n=checked)[0][0]
    return {"project_id": project_id, "name": checked, "created_at": created.isoformat()}
