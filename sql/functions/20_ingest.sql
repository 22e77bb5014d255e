-- Storing events and projecting tracker events: one call per batch, a fixed
-- number of set-based statements whatever the batch size.
--
-- Lock order, the same in every transaction that writes these tables, so
-- that connections never deadlock: webhook_events by event_id, tracker
-- fetches (sync_jobs), shipments by easypost_id, shipment fetches
-- (sync_jobs), trackers by easypost_id, shipment_events by (tracker, time);
-- then, for a batch holding events of other objects, eps_project_objects
-- (25_objects.sql) in the same order: tracker fetches, shipments, shipment
-- fetches, then its own tables, each by EasyPost id.
-- Rows are sent to each INSERT sorted on those keys.

DROP FUNCTION IF EXISTS eps_ingest(uuid, text, text, text, text, text, text, timestamptz, jsonb, text);
DROP FUNCTION IF EXISTS eps_ingest(uuid, text, text, text, text, text, text, timestamptz, jsonb, text, boolean);
DROP FUNCTION IF EXISTS eps_project_tracker(uuid, jsonb);
DROP FUNCTION IF EXISTS eps_ingest_batch(uuid[], text[], text[], text[], text[], text[], text[], text[],
                                         text[], text[], boolean);

-- Why a tracker event cannot be projected, or NULL when it can.
CREATE OR REPLACE FUNCTION eps_tracker_problem(p_body jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_body IS NULL THEN 'body is not JSON PostgreSQL can hold'
        WHEN jsonb_typeof(p_body -> 'result') IS DISTINCT FROM 'object' THEN 'tracker event without a result object'
        WHEN jsonb_typeof(p_body -> 'result' -> 'id') IS DISTINCT FROM 'string' THEN 'tracker result without an id'
        WHEN (p_body -> 'result' ->> 'id') NOT LIKE 'trk\_%' THEN 'tracker result id is not a trk_ id'
        WHEN jsonb_typeof(p_body -> 'result' -> 'tracking_details') NOT IN ('array', 'null') THEN 'tracking_details is not an array'
    END
$$;

-- Projects tracker snapshots (Event bodies, or {"result": Tracker} for a
-- fetched tracker with a NULL event) into shipments, sync_jobs, trackers and
-- shipment_events. Each body must have passed eps_tracker_problem. Raises on
-- data the schema refuses; callers isolate the event that did it.
--
-- Newer wins by the snapshot, never by arrival: (updated_at, newest detail
-- time, number of details), NULL lowest; only a full tie keeps what is
-- stored. Several snapshots of one tracker in a batch reduce to the newest
-- for the tracker row, and their details are merged.
CREATE OR REPLACE FUNCTION eps_project_trackers(p_event uuid[], p_body jsonb[])
RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    s eps_snapshot[];
BEGIN
    -- each snapshot read once, with what the stored tracker row shows of it.
    -- The newest detail is the greatest datetime text: EasyPost writes them
    -- all as UTC ISO 8601 (…Z), whose text order is time order.
    -- (read without a lock: a stale row only means re-offering known details,
    -- which the unique key then skips)
    SELECT array_agg(ROW(x.ord, x.event, x.trk, x.shp, x.updated_at, x.newest_at, x.details,
                         CASE WHEN t.details_count > 0 AND x.details >= t.details_count
                                   AND eps_ts(x.r -> 'tracking_details' -> (t.details_count - 1) ->> 'datetime')
                                       = t.newest_detail_at
                              THEN t.details_count ELSE 0 END,
                         x.r)::eps_snapshot ORDER BY x.ord)
    INTO s
    FROM (SELECT b.ord::integer AS ord, b.event, b.body -> 'result' ->> 'id' AS trk,
                 nullif(b.body -> 'result' ->> 'shipment_id', '') AS shp,
                 coalesce(eps_ts(b.body -> 'result' ->> 'updated_at'), eps_ts(b.body ->> 'updated_at'),
                          eps_ts(b.body ->> 'created_at')) AS updated_at,
                 d.newest_at, d.details, b.body -> 'result' AS r
          FROM unnest(p_event, p_body) WITH ORDINALITY AS b(event, body, ord)
          CROSS JOIN LATERAL (
              SELECT eps_ts(max(e ->> 'datetime')) AS newest_at, count(*)::integer AS details
              FROM jsonb_array_elements(CASE WHEN jsonb_typeof(b.body -> 'result' -> 'tracking_details') = 'array'
                                             THEN b.body -> 'result' -> 'tracking_details' ELSE '[]' END) AS e
          ) d) x
    -- LIMIT 1 keeps these lookups index probes even in a plan cached while the table was empty
    LEFT JOIN LATERAL (SELECT k.details_count, k.newest_detail_at FROM trackers k
                       WHERE k.easypost_id = x.trk LIMIT 1) t ON true;

    -- shipments: a stub for a shipment not seen yet (and its sync job), the
    -- newest snapshot's status for the others
    WITH w AS (
        SELECT DISTINCT ON (shp) * FROM unnest(s) WHERE shp IS NOT NULL
        ORDER BY shp, updated_at DESC NULLS LAST, newest_at DESC NULLS LAST, details DESC, ord
    ), up AS (
        INSERT INTO shipments AS t (easypost_id, mode, tracking_code, carrier, status, status_at,
                                    status_detail_at, status_details)
        SELECT shp, r ->> 'mode', r ->> 'tracking_code', r ->> 'carrier', r ->> 'status', updated_at,
               newest_at, details
        FROM w ORDER BY shp
        ON CONFLICT (easypost_id) DO UPDATE SET
            status = EXCLUDED.status, status_at = EXCLUDED.status_at,
            status_detail_at = EXCLUDED.status_detail_at, status_details = EXCLUDED.status_details,
            tracking_code = coalesce(t.tracking_code, EXCLUDED.tracking_code),
            carrier = coalesce(t.carrier, EXCLUDED.carrier), updated_at = now()
        WHERE (coalesce(EXCLUDED.status_at, '-infinity'), coalesce(EXCLUDED.status_detail_at, '-infinity'),
               EXCLUDED.status_details)
            > (coalesce(t.status_at, '-infinity'), coalesce(t.status_detail_at, '-infinity'),
               coalesce(t.status_details, -1))
        RETURNING t.easypost_id, t.xmax = 0 AS created
    )
    INSERT INTO sync_jobs (kind, object_id)
    SELECT 'shipment', easypost_id FROM up WHERE created ORDER BY easypost_id
    ON CONFLICT (kind, object_id) WHERE status IN ('pending', 'running') DO NOTHING;

    -- trackers: the newest snapshot of each, newer-wins against the stored one
    INSERT INTO trackers AS t (easypost_id, tracking_code, carrier, mode, status, status_detail,
                               est_delivery_date, signed_by, public_url, shipment_easypost_id,
                               shipment_id, carrier_detail, ep_created_at, ep_updated_at,
                               newest_detail_at, details_count, last_webhook_event_id)
    SELECT w.trk, w.r ->> 'tracking_code', w.r ->> 'carrier', w.r ->> 'mode', w.r ->> 'status',
           w.r ->> 'status_detail', eps_ts(w.r ->> 'est_delivery_date'), w.r ->> 'signed_by',
           w.r ->> 'public_url', w.shp, (SELECT sh.id FROM shipments sh WHERE sh.easypost_id = w.shp LIMIT 1),
           w.r -> 'carrier_detail', eps_ts(w.r ->> 'created_at'), w.updated_at, w.newest_at, w.details,
           w.event
    FROM (SELECT DISTINCT ON (trk) * FROM unnest(s)
          ORDER BY trk, updated_at DESC NULLS LAST, newest_at DESC NULLS LAST, details DESC, ord) w
    ORDER BY w.trk
    ON CONFLICT (easypost_id) DO UPDATE SET
        tracking_code = EXCLUDED.tracking_code, carrier = EXCLUDED.carrier, mode = EXCLUDED.mode,
        status = EXCLUDED.status, status_detail = EXCLUDED.status_detail,
        est_delivery_date = EXCLUDED.est_delivery_date, signed_by = EXCLUDED.signed_by,
        public_url = EXCLUDED.public_url,
        shipment_easypost_id = coalesce(EXCLUDED.shipment_easypost_id, t.shipment_easypost_id),
        shipment_id = coalesce(EXCLUDED.shipment_id, t.shipment_id),
        carrier_detail = EXCLUDED.carrier_detail,
        ep_created_at = coalesce(EXCLUDED.ep_created_at, t.ep_created_at),
        ep_updated_at = EXCLUDED.ep_updated_at, newest_detail_at = EXCLUDED.newest_detail_at,
        details_count = EXCLUDED.details_count,
        last_webhook_event_id = coalesce(EXCLUDED.last_webhook_event_id, t.last_webhook_event_id),
        updated_at = now()
    WHERE (coalesce(EXCLUDED.ep_updated_at, '-infinity'), coalesce(EXCLUDED.newest_detail_at, '-infinity'),
           EXCLUDED.details_count)
        > (coalesce(t.ep_updated_at, '-infinity'), coalesce(t.newest_detail_at, '-infinity'),
           coalesce(t.details_count, -1));

    -- shipment_events: each detail once; EasyPost repeats the whole history
    -- in every update, so only the details after the known ones are offered.
    -- Unsorted: two transactions can only meet here on the same tracker,
    -- whose row the upsert above has locked (ON CONFLICT DO UPDATE locks the
    -- row even when its WHERE keeps the stored one), so they wait there first.
    -- The first event that carried a detail names it: rows are offered in
    -- batch order and the later copies do nothing.
    -- The partition key is the tracker's first write, raised to the history
    -- floor (read once for the statement) when retention has dropped its
    -- month: its partition exists whatever date the carrier sent, and all of
    -- a tracker's rows carry one tracker_at, so the unique key stays exact.
    INSERT INTO shipment_events (tracker_id, tracker_at, shipment_id, webhook_event_id, status,
                                 status_detail, message, description, carrier_code, source,
                                 event_datetime, tracking_location)
    SELECT t.id, greatest(t.created_at, (SELECT f.history FROM partition_floor f)), t.shipment_id,
           x.event, coalesce(d ->> 'status', ''), d ->> 'status_detail',
           coalesce(d ->> 'message', ''), d ->> 'description', d ->> 'carrier_code', d ->> 'source',
           coalesce(eps_ts(d ->> 'datetime'), x.updated_at, now()),
           CASE WHEN jsonb_typeof(d -> 'tracking_location') = 'object' THEN d -> 'tracking_location' END
    FROM unnest(s) x
    CROSS JOIN LATERAL (SELECT k.id, k.shipment_id, k.created_at FROM trackers k
                        WHERE k.easypost_id = x.trk LIMIT 1) t
    CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN x.details > x.known
                                                 THEN x.r -> 'tracking_details' ELSE '[]' END)
                       WITH ORDINALITY AS e(d, pos)
    WHERE e.pos > x.known AND jsonb_typeof(d) = 'object'
    ON CONFLICT ON CONSTRAINT shipment_events_once DO NOTHING;
END
$$;

-- Stores a batch of verified events in one statement and projects its new
-- tracker events (unless p_defer: then they stay 'pending' for the
-- projector). Parallel arrays, one element per event; p_clean is the body
-- without U+0000 where the raw body has one (jsonb cannot hold it), p_dead
-- the error of an event that broke an earlier attempt: stored raw, 'failed',
-- nothing parsed; p_partial marks a copy that holds less than the delivery
-- (backfill's list item, which has no result): a later full copy replaces
-- it instead of being a duplicate. Every other body is parsed here once (a deferred tracker
-- event by the projector), so body_error NULL means raw::jsonb works; a body
-- PostgreSQL refuses breaks the statement and the daemon isolates it. A
-- tracker event stored 'failed' (its body cannot be projected, or it is a
-- dead letter) queues a fetch of its tracker, so the tracker row still comes
-- to be. An event of another object this version knows (eps_object_of) is
-- projected by eps_project_objects in the same transaction, whether or not
-- p_defer (they are few, and small); one of a type it does not know is
-- stored raw, 'stored'. Returns each event's position and outcome:
-- projected, pending, stored, failed or duplicate.
CREATE OR REPLACE FUNCTION eps_ingest_batch(p_id uuid[], p_event_id text[], p_description text[],
                                            p_mode text[], p_object_id text[], p_raw text[],
                                            p_source text[], p_created_at text[], p_clean text[],
                                            p_dead text[], p_partial text[], p_defer boolean)
RETURNS TABLE (ord integer, status text) LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    v_ord     integer[];
    v_status  text[];
    v_event   uuid[];
    v_body    jsonb[];
    -- events of other objects to project (none in a batch of tracker events)
    v_oevent  uuid[];
    v_obody   jsonb[];
    -- full copies answered duplicate: what their row would be
    v_dup     integer[];
    v_dstatus text[];
    v_derror  text[];
    v_dberr   text[];
    v_dcreate timestamptz[];
    v_dbody   jsonb[];
    -- those that replaced a partial copy
    v_rord    integer[];
    v_rstatus text[];
    v_revent  uuid[];
    v_rbody   jsonb[];
    v_roevent uuid[];
    v_robody  jsonb[];
BEGIN
    WITH e AS MATERIALIZED (
        SELECT u.*,
               CASE WHEN u.dead IS NOT NULL THEN NULL
                    -- deferred: the projector parses it, off the acknowledgement path
                    WHEN p_defer AND u.clean IS NULL
                         AND u.description IN ('tracker.created', 'tracker.updated') THEN NULL
                    ELSE coalesce(u.clean, u.raw)::jsonb END AS body,
               u.description IN ('tracker.created', 'tracker.updated') AS tracker
        FROM unnest(p_id, p_event_id, p_description, p_mode, p_object_id, p_raw, p_source,
                    p_created_at, coalesce(p_clean, array_fill(NULL::text, ARRAY[cardinality(p_id)])),
                    coalesce(p_dead, array_fill(NULL::text, ARRAY[cardinality(p_id)])),
                    coalesce(p_partial, array_fill(NULL::text, ARRAY[cardinality(p_id)])))
             WITH ORDINALITY AS u(id, event_id, description, mode, object_id, raw, source,
                                  created_at, clean, dead, partial_, ord)
    ), c AS (
        SELECT e.*, e.partial_ IS NOT NULL AS partial,
               CASE WHEN e.tracker AND e.dead IS NULL AND NOT (p_defer AND e.clean IS NULL)
                    THEN eps_tracker_problem(e.body) END AS problem,
               -- what eps_project_objects will make of it (NULL: stored raw only)
               CASE WHEN NOT e.tracker AND e.dead IS NULL THEN eps_object_of(e.description, e.body) END AS kind,
               row_number() OVER (PARTITION BY e.event_id, e.partial_ IS NOT NULL ORDER BY e.ord) AS nth
        FROM e
    ), r AS (
        -- the row each event gets
        SELECT c.*,
               CASE WHEN c.dead IS NOT NULL THEN 'not parsed: dead letter'
                    WHEN c.clean IS NOT NULL THEN 'contains \u0000, which jsonb cannot hold' END AS body_error,
               CASE WHEN c.dead IS NOT NULL OR c.problem IS NOT NULL THEN 'failed'
                    WHEN NOT c.tracker THEN CASE WHEN c.kind IS NOT NULL THEN 'projected' ELSE 'stored' END
                    -- a body only the cleaned copy can project is projected now: it is not stored
                    WHEN p_defer AND c.clean IS NULL THEN 'pending'
                    ELSE 'projected' END AS status,
               coalesce(c.dead, c.problem) AS error,
               CASE WHEN c.dead IS NULL THEN c.created_at::timestamptz END AS created
        FROM c
    ), k AS (
        -- the dedup key, exact across partitions: the ids stored for the first time
        INSERT INTO webhook_event_ids AS i (event_id)
        SELECT DISTINCT r.event_id FROM r ORDER BY r.event_id
        ON CONFLICT (event_id) DO NOTHING
        RETURNING i.event_id
    ), ins AS (
        -- one row per new id: a full copy before a partial one, then arrival order
        INSERT INTO webhook_events AS w (id, event_id, description, mode, object_id, raw, body_error,
                                         source, status, error, event_created_at, partial)
        SELECT DISTINCT ON (r.event_id) r.id, r.event_id, r.description, r.mode, r.object_id, r.raw,
               r.body_error, r.source, r.status, r.error, r.created, r.partial
        FROM r JOIN k ON k.event_id = r.event_id
        ORDER BY r.event_id, r.partial, r.ord
        RETURNING w.id, w.status
    ), heal AS (
        -- a tracker event stored 'failed' (unprojectable or a dead letter):
        -- fetch the tracker itself, so the tracker row still comes to be
        INSERT INTO sync_jobs (kind, object_id)
        SELECT DISTINCT 'tracker', r.object_id FROM r JOIN ins ON ins.id = r.id
        WHERE r.tracker AND r.status = 'failed' AND r.object_id LIKE 'trk\_%'
        ORDER BY 2
        ON CONFLICT (kind, object_id) WHERE status IN ('pending', 'running') DO NOTHING
    )
    SELECT array_agg(r.ord::integer ORDER BY r.ord),
           array_agg(coalesce(ins.status, 'duplicate') ORDER BY r.ord),
           array_agg(ins.id) FILTER (WHERE ins.status = 'projected' AND r.tracker),
           array_agg(r.body) FILTER (WHERE ins.status = 'projected' AND r.tracker),
           array_agg(ins.id) FILTER (WHERE ins.status = 'projected' AND NOT r.tracker),
           array_agg(r.body) FILTER (WHERE ins.status = 'projected' AND NOT r.tracker),
           array_agg(r.ord::integer) FILTER (WHERE ins.id IS NULL AND NOT r.partial AND r.nth = 1),
           array_agg(r.status) FILTER (WHERE ins.id IS NULL AND NOT r.partial AND r.nth = 1),
           array_agg(r.error) FILTER (WHERE ins.id IS NULL AND NOT r.partial AND r.nth = 1),
           array_agg(r.body_error) FILTER (WHERE ins.id IS NULL AND NOT r.partial AND r.nth = 1),
           array_agg(r.created) FILTER (WHERE ins.id IS NULL AND NOT r.partial AND r.nth = 1),
           array_agg(r.body) FILTER (WHERE ins.id IS NULL AND NOT r.partial AND r.nth = 1)
    INTO v_ord, v_status, v_event, v_body, v_oevent, v_obody, v_dup, v_dstatus, v_derror, v_dberr, v_dcreate, v_dbody
    FROM r LEFT JOIN ins ON ins.id = r.id;

    IF v_dup IS NOT NULL THEN
        -- A full copy of an event stored from a partial one replaces it. A
        -- statement of its own, so that its snapshot (READ COMMITTED: one per
        -- statement) sees a partial copy whose transaction committed while
        -- the statement above waited on its dedup key. Only full copies that
        -- came back duplicate get here: a new event costs nothing more.
        WITH d AS (
            SELECT * FROM unnest(v_dup, v_dstatus, v_derror, v_dberr, v_dcreate, v_dbody)
                          AS d(ord, status, error, body_error, created, body)
        ), repl AS (
            UPDATE webhook_events w
            SET description = p_description[d.ord], mode = p_mode[d.ord], object_id = p_object_id[d.ord],
                raw = p_raw[d.ord], body_error = d.body_error, source = p_source[d.ord],
                status = d.status, error = d.error, event_created_at = d.created, partial = false,
                processed_at = now()
            FROM d
            WHERE w.event_id = p_event_id[d.ord] AND w.partial
            RETURNING d.ord, w.id, w.status, w.object_id,
                      w.description IN ('tracker.created', 'tracker.updated') AS tracker, d.body
        ), heal AS (
            INSERT INTO sync_jobs (kind, object_id)
            SELECT DISTINCT 'tracker', repl.object_id FROM repl
            WHERE repl.tracker AND repl.status = 'failed' AND repl.object_id LIKE 'trk\_%'
            ORDER BY 2
            ON CONFLICT (kind, object_id) WHERE status IN ('pending', 'running') DO NOTHING
        )
        SELECT array_agg(repl.ord), array_agg(repl.status),
               array_agg(repl.id) FILTER (WHERE repl.status = 'projected' AND repl.tracker),
               array_agg(repl.body) FILTER (WHERE repl.status = 'projected' AND repl.tracker),
               array_agg(repl.id) FILTER (WHERE repl.status = 'projected' AND NOT repl.tracker),
               array_agg(repl.body) FILTER (WHERE repl.status = 'projected' AND NOT repl.tracker)
        INTO v_rord, v_rstatus, v_revent, v_rbody, v_roevent, v_robody
        FROM repl;
        FOR i IN 1 .. coalesce(cardinality(v_rord), 0) LOOP
            v_status[v_rord[i]] := v_rstatus[i];
        END LOOP;
        v_event := v_event || v_revent;
        v_body := v_body || v_rbody;
        v_oevent := v_oevent || v_roevent;
        v_obody := v_obody || v_robody;
    END IF;

    IF v_event IS NOT NULL THEN
        PERFORM eps_project_trackers(v_event, v_body);
    END IF;
    -- only a batch with events of other objects pays for this call
    IF v_oevent IS NOT NULL THEN
        PERFORM eps_project_objects(v_oevent, v_obody);
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_ord, v_status);
END
$$;

-- Projects up to p_limit pending events, oldest first; replicas share the
-- work through SKIP LOCKED. Parsed and projected set-based; if that fails,
-- each on its own in a subtransaction, so one that fails is recorded
-- 'failed' with its error and the others go on. Every row taken leaves
-- 'pending' (projected or failed: a dead letter, replayed with --replay), so
-- none is taken again and a poison row cannot spin the projector. Returns
-- how many it took and how many of those it projected.
DROP FUNCTION IF EXISTS eps_project_pending(integer);
CREATE OR REPLACE FUNCTION eps_project_pending(p_limit integer, OUT taken integer, OUT projected integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_id      uuid[];
    v_raw     text[];
    v_ok      uuid[];
    v_body    jsonb[];
    v_bad     uuid[];
    v_why     text[];
    v_one     jsonb;
    v_problem text;
    v_berr    text;
BEGIN
    taken := 0;
    projected := 0;
    SELECT array_agg(p.id ORDER BY p.received_at), array_agg(p.raw ORDER BY p.received_at)
    INTO v_id, v_raw
    FROM (SELECT w.id, w.raw, w.received_at FROM webhook_events w
          WHERE w.status = 'pending'
          ORDER BY w.received_at
          LIMIT least(p_limit, 500)
          FOR UPDATE SKIP LOCKED) p;
    IF v_id IS NULL THEN
        RETURN;
    END IF;
    taken := cardinality(v_id);
    BEGIN
        WITH q AS MATERIALIZED (SELECT u.id, u.raw::jsonb AS body FROM unnest(v_id, v_raw) AS u(id, raw)),
             c AS (SELECT q.*, eps_tracker_problem(q.body) AS problem FROM q)
        SELECT array_agg(id) FILTER (WHERE problem IS NULL), array_agg(body) FILTER (WHERE problem IS NULL),
               array_agg(id) FILTER (WHERE problem IS NOT NULL), array_agg(problem) FILTER (WHERE problem IS NOT NULL)
        INTO v_ok, v_body, v_bad, v_why
        FROM c;
        IF v_ok IS NOT NULL THEN
            PERFORM eps_project_trackers(v_ok, v_body);
        END IF;
        UPDATE webhook_events w
        SET status = CASE WHEN x.why IS NULL THEN 'projected' ELSE 'failed' END, error = x.why,
            processed_at = now()
        FROM (SELECT unnest(v_ok) AS id, NULL::text AS why
              UNION ALL SELECT * FROM unnest(v_bad, v_why)) x
        WHERE w.id = x.id;
        -- as at ingest: a tracker whose event cannot be projected is fetched
        INSERT INTO sync_jobs (kind, object_id)
        SELECT DISTINCT 'tracker', w.object_id FROM webhook_events w
        WHERE w.id = ANY (v_bad) AND w.object_id LIKE 'trk\_%'
        ORDER BY 2
        ON CONFLICT (kind, object_id) WHERE status IN ('pending', 'running') DO NOTHING;
        projected := coalesce(cardinality(v_ok), 0);
    EXCEPTION WHEN others THEN
        projected := 0;
        FOR i IN 1 .. cardinality(v_id) LOOP
            v_problem := NULL;
            v_berr := NULL;
            BEGIN
                v_one := v_raw[i]::jsonb;
            EXCEPTION WHEN others THEN
                v_problem := SQLSTATE || ': ' || SQLERRM;
                v_berr := 'not JSON PostgreSQL can hold';
            END;
            v_problem := coalesce(v_problem, eps_tracker_problem(v_one));
            IF v_problem IS NULL THEN
                BEGIN
                    PERFORM eps_project_trackers(ARRAY[v_id[i]], ARRAY[v_one]);
                EXCEPTION WHEN others THEN
                    v_problem := SQLSTATE || ': ' || SQLERRM;
                END;
            END IF;
            UPDATE webhook_events
            SET status = CASE WHEN v_problem IS NULL THEN 'projected' ELSE 'failed' END,
                error = v_problem, body_error = coalesce(v_berr, body_error), processed_at = now()
            WHERE id = v_id[i];
            IF v_problem IS NULL THEN
                projected := projected + 1;
            END IF;
        END LOOP;
    END;
END
$$;

-- Re-runs the projection of one stored event through the same code, e.g.
-- after a fix: easypost-syncd --replay failed | EVENT_ID. Returns the new
-- status; a failure is recorded on the row, not raised.
CREATE OR REPLACE FUNCTION eps_replay(p_id uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    e         webhook_events;
    v_body    jsonb;
    v_berr    text;
    v_problem text;
    v_status  text;
BEGIN
    SELECT * INTO e FROM webhook_events WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_berr := e.body_error;
    BEGIN
        v_body := e.raw::jsonb;
        v_berr := NULL;
    EXCEPTION WHEN others THEN
        BEGIN
            v_body := replace(e.raw, '\u0000', '')::jsonb;
        EXCEPTION WHEN others THEN
            v_problem := SQLSTATE || ': ' || SQLERRM;
        END;
    END;
    IF v_problem IS NULL AND e.description IN ('tracker.created', 'tracker.updated') THEN
        v_problem := eps_tracker_problem(v_body);
        IF v_problem IS NULL THEN
            BEGIN
                PERFORM eps_project_trackers(ARRAY[p_id], ARRAY[v_body]);
            EXCEPTION WHEN others THEN
                v_problem := SQLSTATE || ': ' || SQLERRM;
            END;
        END IF;
        v_status := 'projected';
    ELSIF v_problem IS NULL AND eps_object_of(e.description, v_body) IS NOT NULL THEN
        BEGIN
            PERFORM eps_project_objects(ARRAY[p_id], ARRAY[v_body]);
        EXCEPTION WHEN others THEN
            v_problem := SQLSTATE || ': ' || SQLERRM;
        END;
        v_status := 'projected';
    END IF;
    v_status := CASE WHEN v_problem IS NOT NULL THEN 'failed' ELSE coalesce(v_status, 'stored') END;
    UPDATE webhook_events
    SET status = v_status, error = v_problem, body_error = v_berr, processed_at = now()
    WHERE id = p_id;
    RETURN v_status;
END
$$;
