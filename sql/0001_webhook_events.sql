-- 0001: raw webhook events and the ingest function the daemon calls per event.
-- lz4 rather than the default pglz for the two copies of the body: a fraction
-- of the CPU per event on the ingest path, at a slightly lower ratio.

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

-- One call per event, inside the batch's transaction.
--   p_clean  the body with U+0000 removed, only when the raw body has one
--            (jsonb cannot store it): body stays NULL, projection uses p_clean
--   p_error  set when this event broke its batch: store it raw as a dead letter
-- Returns 'stored', 'failed' or 'duplicate' (later migrations add 'projected').
CREATE FUNCTION eps_ingest(p_id uuid, p_event_id text, p_description text, p_mode text,
                           p_object_id text, p_raw text, p_source text,
                           p_created_at timestamptz, p_clean jsonb, p_error text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_body jsonb;
BEGIN
    IF p_error IS NOT NULL THEN
        INSERT INTO webhook_events (id, event_id, description, mode, object_id, raw, body,
                                    body_error, source, status, error, event_created_at)
        VALUES (p_id, p_event_id, p_description, p_mode, p_object_id, p_raw, NULL,
                'not parsed: dead letter', p_source, 'failed', p_error, p_created_at)
        ON CONFLICT (event_id) DO NOTHING;
        RETURN CASE WHEN FOUND THEN 'failed' ELSE 'duplicate' END;
    END IF;

    IF p_clean IS NULL THEN
        v_body := p_raw::jsonb;
    END IF;
    INSERT INTO webhook_events (id, event_id, description, mode, object_id, raw, body,
                                body_error, source, event_created_at)
    VALUES (p_id, p_event_id, p_description, p_mode, p_object_id, p_raw, v_body,
            CASE WHEN p_clean IS NOT NULL THEN 'contains \u0000, which jsonb cannot hold' END,
            p_source, p_created_at)
    ON CONFLICT (event_id) DO NOTHING;
    RETURN CASE WHEN FOUND THEN 'stored' ELSE 'duplicate' END;
END
$$;
