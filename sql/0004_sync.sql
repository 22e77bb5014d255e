-- 0004: the sync worker's durable job queue (an outbox written in the same
-- transaction as the event that needs it), its cursor state, and the upserts
-- that turn fetched API objects into rows.

CREATE TABLE sync_jobs (
    id              uuid        PRIMARY KEY DEFAULT eps_uuid7(),
    kind            text        NOT NULL CHECK (kind IN ('shipment', 'tracker')),
    object_id       text        NOT NULL,                 -- shp_ / trk_
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_until    timestamptz,                          -- lease of a running job
    last_status     integer,                              -- HTTP status of the last attempt
    last_error      text,
    instance_id     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- one open job per object: enqueueing again while one is pending is a no-op
CREATE UNIQUE INDEX sync_jobs_open ON sync_jobs (kind, object_id) WHERE status IN ('pending', 'running');
CREATE INDEX sync_jobs_due ON sync_jobs (next_attempt_at) WHERE status = 'pending';
CREATE INDEX sync_jobs_lease ON sync_jobs (locked_until) WHERE status = 'running';

CREATE TABLE sync_state (
    key        text        PRIMARY KEY,
    value      text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

