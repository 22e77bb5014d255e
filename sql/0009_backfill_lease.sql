-- 0009: the backfill's lease, so that one run at a time holds it across
-- replicas (its token fences every write of the run), and the failed attempts
-- counted per event, so that an event that keeps failing is set aside.

CREATE TABLE backfill_lease (
    one          boolean     PRIMARY KEY DEFAULT true CHECK (one),  -- a single row
    token        bigint      NOT NULL DEFAULT 0,   -- bumped by every election: the fence
    holder       text,                             -- names the run, for logs and --status
    locked_until timestamptz                       -- NULL or past: free
);
INSERT INTO backfill_lease DEFAULT VALUES;

CREATE TABLE backfill_failures (
    event_id   text        PRIMARY KEY,            -- an EasyPost event id not stored yet
    attempts   integer     NOT NULL,               -- runs in which it failed
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
