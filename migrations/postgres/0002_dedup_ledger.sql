-- The dedup ledger: one row per (project, event) ever persisted, naming the
-- batch (the Kafka record's CloudEvent id) that claimed it. See pulse/core/persisting.py.
CREATE TABLE event_ledger (
    project_id  uuid NOT NULL,
    event_id    uuid NOT NULL,
    batch_id    uuid NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, event_id)
);
CREATE INDEX event_ledger_claimed_at ON event_ledger USING brin (claimed_at);

-- One row per delivered batch: 'claimed' once its events are in the ledger,
-- 'done' once they are in ClickHouse.
CREATE TABLE persist_batches (
    batch_id    uuid PRIMARY KEY,
    project_id  uuid NOT NULL,
    status      text NOT NULL CHECK (status IN ('claimed', 'done')),
    inserted    integer NOT NULL DEFAULT 0,
    duplicates  integer NOT NULL DEFAULT 0,
    first_at    text,
    last_at     text,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    done_at     timestamptz
);
CREATE INDEX persist_batches_claimed_at ON persist_batches USING brin (claimed_at);
