-- 0005: deferred projection (projection = deferred): the webhook's
-- transaction stores the raw event as 'pending' and the daemon's projector
-- projects pending events right after, in small batches, through the same
-- eps_project_tracker. The acknowledgement then waits for one row, not for
-- every row the projection writes.

ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_status_check;
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_status_check
    CHECK (status IN ('pending', 'stored', 'projected', 'failed'));
CREATE INDEX webhook_events_pending ON webhook_events (received_at) WHERE status = 'pending';

-- eps_ingest with the choice: p_defer leaves tracker events 'pending'.
CREATE FUNCTION eps_ingest(p_id uuid, p_event_id text, p_description text, p_mode text,
                           p_object_id text, p_raw text, p_source text,
                           p_created_at timestamptz, p_clean jsonb, p_error text, p_defer boolean)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_body    jsonb;
    v_status  text := 'stored';
    v_problem text;
    v_tracker boolean := p_description IN ('tracker.created', 'tracker.updated');
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
    IF v_tracker THEN
        v_problem := eps_tracker_problem(coalesce(v_body, p_clean));
        v_status := CASE WHEN v_problem IS NOT NULL THEN 'failed'
                         -- a body only p_clean can project is projected now: it is not stored
                         WHEN p_defer AND p_clean IS NULL THEN 'pending'
                         ELSE 'projected' END;
    END IF;
    INSERT INTO webhook_events (id, event_id, description, mode, object_id, raw, body,
                                body_error, source, status, error, event_created_at)
    VALUES (p_id, p_event_id, p_description, p_mode, p_object_id, p_raw, v_body,
            CASE WHEN p_clean IS NOT NULL THEN 'contains \u0000, which jsonb cannot hold' END,
            p_source, v_status, v_problem, p_created_at)
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;
    IF v_status = 'projected' THEN
        PERFORM eps_project_tracker(p_id, coalesce(v_body, p_clean));
    END IF;
    RETURN v_status;
END
$$;

-- The original signature stays, as the inline case of the new one.
CREATE OR REPLACE FUNCTION eps_ingest(p_id uuid, p_event_id text, p_description text, p_mode text,
                                      p_object_id text, p_raw text, p_source text,
                                      p_created_at timestamptz, p_clean jsonb, p_error text)
RETURNS text LANGUAGE sql AS $$
    SELECT eps_ingest(p_id, p_event_id, p_description, p_mode, p_object_id, p_raw, p_source,
                      p_created_at, p_clean, p_error, false)
$$;

-- Projects up to p_limit pending events, oldest first; replicas share the
-- work through SKIP LOCKED. Each event in its own subtransaction, so one
-- that fails is recorded 'failed' with its error and the others go on; the
-- limit stays under 64 to keep snapshots free of subtransaction overflow.
-- Returns how many events it took.
CREATE FUNCTION eps_project_pending(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r         record;
    n         integer := 0;
    v_problem text;
BEGIN
    FOR r IN SELECT id, body FROM webhook_events
             WHERE status = 'pending'
             ORDER BY received_at
             LIMIT least(p_limit, 60)
             FOR UPDATE SKIP LOCKED
    LOOP
        v_problem := eps_tracker_problem(r.body);
        IF v_problem IS NULL THEN
            BEGIN
                PERFORM eps_project_tracker(r.id, r.body);
            EXCEPTION WHEN others THEN
                v_problem := SQLSTATE || ': ' || SQLERRM;
            END;
        END IF;
        UPDATE webhook_events
        SET status = CASE WHEN v_problem IS NULL THEN 'projected' ELSE 'failed' END,
            error = v_problem, processed_at = now()
        WHERE id = r.id;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
