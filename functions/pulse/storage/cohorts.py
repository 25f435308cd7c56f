"""Cohorts kept: their rows in Postgres (``cohorts``, the truth), the members
of static ones in ClickHouse (``cohort_members``), written in the order
pulse.core.cohorts explains."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC
from typing import Any

import orjson

from pulse.core import cohorts
from pulse.core.cohorts import NewCohort
from pulse.errors import NotFound
from pulse.storage.clickhouse import ClickHouse
from pulse.storage.postgres import Database

COLUMNS = "cohort_id::text, name, kind, definition::text, members, created_at"


def _row(row: list[Any]) -> dict[str, Any]:
    cohort_id, name, kind, definition, members, created = row
    created = created if created.tzinfo else created.replace(tzinfo=UTC)
    return {"cohort_id": cohort_id, "name": name, "kind": kind,
            "definition": orjson.loads(definition) if definition else None, "members": members,
            "created_at": created.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")}


class CohortStore:
    def __init__(self, db: Database, ch: ClickHouse) -> None:
        self.db = db
        self.ch = ch

    def create(self, project_id: str, new: NewCohort,
               persons: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Store a cohort: ``persons`` is the query of a funnel step's persons
        (pulse.core.funnel.at_step_query) for a cohort made from one."""
        cohort_id = str(uuid.uuid4())
        members: int | None = None
        definition: Mapping[str, Any] | None = None
        if new.users is not None:
            self.ch.command(*cohorts.members_from_ids(project_id, cohort_id, new.users))
            members = len(new.users)
        elif persons is not None:
            self.ch.command(*cohorts.members_from_persons(project_id, cohort_id, persons))
            members = int(self.ch.rows(*cohorts.count_members(project_id, cohort_id))[0][0])
            definition = {"funnel": new.funnel}
        elif new.behaviour is not None:
            definition = new.behaviour.as_json()
        rows = self.db.run(
            f"INSERT INTO cohorts (cohort_id, project_id, name, kind, definition, members)"
            f" VALUES (CAST(:c AS uuid), CAST(:p AS uuid), :n, :k, CAST(:d AS jsonb), :m) RETURNING {COLUMNS}",
            c=cohort_id, p=project_id, n=new.name, k=new.kind,
            d=orjson.dumps(definition).decode() if definition is not None else None, m=members)
        return _row(rows[0])

    def listing(self, project_id: str) -> list[dict[str, Any]]:
        return [_row(r) for r in self.db.run(f"SELECT {COLUMNS} FROM cohorts WHERE project_id = CAST(:p AS uuid)"
                                             " ORDER BY created_at DESC, cohort_id", p=project_id)]

    def get(self, project_id: str, cohort_id: str) -> dict[str, Any]:
        rows = self.db.run(f"SELECT {COLUMNS} FROM cohorts WHERE project_id = CAST(:p AS uuid)"
                           " AND cohort_id = CAST(:c AS uuid)", p=project_id, c=cohort_id)
        if not rows:
            raise NotFound(f"no cohort {cohort_id} in this project")
        return _row(rows[0])

    def as_filter(self, project_id: str, cohort_id: str) -> cohorts.StaticCohort | cohorts.BehaviouralCohort:
        found = self.get(project_id, cohort_id)
        return cohorts.as_filter(found["cohort_id"], found["kind"], found["definition"])

    def delete(self, project_id: str, cohort_id: str) -> None:
        rows = self.db.run("DELETE FROM cohorts WHERE project_id = CAST(:p AS uuid) AND cohort_id = CAST(:c AS uuid)"
                           " RETURNING 1", p=project_id, c=cohort_id)
        if not rows:
            raise NotFound(f"no cohort {cohort_id} in this project")
        self.ch.command("DELETE FROM cohort_members WHERE project_id = {p:UUID} AND cohort_id = {c:UUID}",
                        {"p": project_id, "c": cohort_id})
