-- 0001: raw webhook events. lz4 rather than the default pglz for the body:
-- a fraction of the CPU per event on the ingest path, at a slightly lower
-- ratio. (Migrations hold tables and indexes; functions live in functions/.)

CREATE TABLE webhook_events (
    id               uuid        PRIMARY KEY,              -- UUID v7 made by the daemon
    event_id         text        NOT NULL UNIQUE,          -- EasyPost evt_ id: the dedup key
    description      text        NOT NULL,                 -- e.g. tracker.updated
    mode             text,                                 -- test / production
    object_id        text,                                 -- result.id (trk_, shp_, batch_ ...)
    raw              text        COMPRESSION lz4 NOT NULL, -- the body byte for byte as received
    body             jsonb       COMPRESSION lz4,          -- NULL when jsonb cannot hold it
    body_error       text,                                 -- why body is NULL
    source           text        NOT NULL DEFAULT 'webhook'
                                 CHECK (source IN ('webhook', 'backfill')),
    status           text        NOT NULL DEFAULT 'stored'
                                 CHECK (status IN ('stored', 'projected', 'failed')),
    error            text,                                 -- projection or dead-letter error
    event_created_at timestamptz,                          -- the event's own created_at
    received_at      timestamptz NOT NULL DEFAULT now(),
    processed_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_events_object ON webhook_events (object_id);
CREATE INDEX webhook_events_failed ON webhook_events (received_at) WHERE status = 'failed';

