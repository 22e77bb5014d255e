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
DROP FUNCTION IF EXISTS eps_ingest_batch(uuid[], text[], text[], text[], text[], text[], text[], text[],
                                         text[], text[], text[], boolean);
-- (before the tracking locations came as text, parsed only for the details written)
DROP FUNCTION IF EXISTS eps_project_trackers(integer[], uuid[], text[], text[], text[], text[], text[], text[],
                                             text[], text[], text[], text[], jsonb[], text[], text[], text[],
                                             text[], integer[], integer[], integer[], text[], text[], text[],
                                             text[], text[], text[], text[], jsonb[], integer[], uuid[], jsonb[]);
DROP FUNCTION IF EXISTS eps_ingest_batch(uuid[], text[], text[], text[], text[], text[], text[], text[], text[],
                                         text[], text[], boolean, text[], text[], text[], text[], text[],
                                         text[], text[], text[], text[], jsonb[], text[], text[], text[],
                                         text[], integer[], integer[], integer[], text[], text[], text[],
                                         text[], text[], text[], text[], jsonb[]);
DROP FUNCTION IF EXISTS eps_project_typed(uuid[], text[], text[], text[], text[], text[], text[], text[],
                                          text[], text[], text[], jsonb[], text[], text[], text[], text[],
                                          integer[], integer[], integer[], text[], text[], text[], text[],
                                          text[], text[], text[], jsonb[]);

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

-- Projects tracker snapshots into shipments, sync_jobs, trackers and
-- shipment_events: the one projection body. Snapshots come typed, as
-- parallel arrays (the daemon's scanner extracts them from the raw body, so
-- PostgreSQL parses no JSON for them), or as jsonb (Event bodies, or
-- {"result": Tracker} for a fetched tracker with a NULL event), which are
-- typed here first the same way. Every snapshot must have passed
-- eps_tracker_problem. Raises on data the schema refuses; callers isolate
-- the event that did it.
--
--   p_take      the keys (positions in the t_ arrays) of the typed snapshots to project
--   t_*         per typed snapshot: the event, result.id, result's fields as text (->>),
--               carrier_detail as jsonb, the event's updated_at and created_at, and the
--               number of elements of tracking_details (all objects)
--   d_*         per tracking detail that is an object: its snapshot's key, its position
--               (1-based) in tracking_details, its fields as text, tracking_location
--               (NULL unless an object) as jsonb (d_location) or as its JSON text
--               (d_location_text, from the daemon: parsed only for the details written,
--               while an update repeats the whole history); a detail has one or neither
--   j_key, j_event, j_body  snapshots as jsonb, with their keys (distinct from p_take's)
--
-- The key orders snapshots (arrival order): it breaks full ties below and
-- names the event that first carried a detail.
--
-- Newer wins by the snapshot, never by arrival: (updated_at, newest detail
-- time, number of details), NULL lowest; only a full tie keeps what is
-- stored. Several snapshots of one tracker in a batch reduce to the newest
-- for the tracker row, and their details are merged.
CREATE OR REPLACE FUNCTION eps_project_trackers(
    p_take integer[], t_event uuid[], t_trk text[], t_shp text[], t_mode text[], t_code text[],
    t_carrier text[], t_status text[], t_status_detail text[], t_est text[], t_signed text[],
    t_url text[], t_cdetail jsonb[], t_created text[], t_updated text[], t_ev_updated text[],
    t_ev_created text[], t_details integer[],
    d_key integer[], d_pos integer[], d_status text[], d_status_detail text[], d_message text[],
    d_description text[], d_carrier_code text[], d_source text[], d_datetime text[],
    d_location jsonb[], d_location_text text[],
    j_key integer[], j_event uuid[], j_body jsonb[])
RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    -- the snapshots, one element each
    s_key     integer[];
    s_event   uuid[];
    s_trk     text[];
    s_shp     text[];
    s_upd     timestamptz[];
    s_newest  timestamptz[];
    s_details integer[];
    s_known   integer[];
    s_mode    text[];
    s_code    text[];
    s_carrier text[];
    s_status  text[];
    s_sdetail text[];
    s_est     timestamptz[];
    s_signed  text[];
    s_url     text[];
    s_cdetail jsonb[];
    s_created timestamptz[];
BEGIN
    IF j_body IS NOT NULL THEN
        -- the jsonb snapshots' details, typed as the scanner types them
        SELECT d_key || array_agg(b.k), d_pos || array_agg(e.pos::integer),
               d_status || array_agg(e.d ->> 'status'), d_status_detail || array_agg(e.d ->> 'status_detail'),
               d_message || array_agg(e.d ->> 'message'), d_description || array_agg(e.d ->> 'description'),
               d_carrier_code || array_agg(e.d ->> 'carrier_code'), d_source || array_agg(e.d ->> 'source'),
               d_datetime || array_agg(e.d ->> 'datetime'),
               -- d_location lines up with d_key: typed details come with d_location_text
               coalesce(d_location, array_fill(NULL::jsonb, ARRAY[coalesce(cardinality(d_key), 0)]))
                   || array_agg(CASE WHEN jsonb_typeof(e.d -> 'tracking_location') = 'object'
                                            THEN e.d -> 'tracking_location' END)
        INTO d_key, d_pos, d_status, d_status_detail, d_message, d_description, d_carrier_code,
             d_source, d_datetime, d_location
        FROM unnest(j_key, j_body) AS b(k, body)
        CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(b.body -> 'result' -> 'tracking_details') = 'array'
                                                     THEN b.body -> 'result' -> 'tracking_details' ELSE '[]' END)
                           WITH ORDINALITY AS e(d, pos)
        WHERE jsonb_typeof(e.d) = 'object';
    END IF;

    -- each snapshot once, with what the stored tracker row shows of it.
    -- The newest detail is the greatest datetime text: EasyPost writes them
    -- all as UTC ISO 8601 (…Z), whose text order is time order.
    -- (read without a lock: a stale row only means re-offering known details,
    -- which the unique key then skips)
    SELECT array_agg(x.k), array_agg(x.event), array_agg(x.trk), array_agg(x.shp), array_agg(x.upd),
           array_agg(n.newest_at), array_agg(x.details),
           array_agg(CASE WHEN t.details_count > 0 AND x.details >= t.details_count
                               AND eps_ts(kd.dt) = t.newest_detail_at
                               AND (x.details = t.details_count OR eps_ts(kn.dt) > t.newest_detail_at)
                          THEN t.details_count ELSE 0 END),
           array_agg(x.mode), array_agg(x.code), array_agg(x.carrier), array_agg(x.status),
           array_agg(x.sdetail), array_agg(x.est), array_agg(x.signed), array_agg(x.url),
           array_agg(x.cdetail), array_agg(x.created)
    INTO s_key, s_event, s_trk, s_shp, s_upd, s_newest, s_details, s_known, s_mode, s_code,
         s_carrier, s_status, s_sdetail, s_est, s_signed, s_url, s_cdetail, s_created
    FROM (SELECT u.i::integer AS k, u.event, u.trk, nullif(u.shp, '') AS shp,
                 coalesce(eps_ts(u.upd), eps_ts(u.evupd), eps_ts(u.evcre)) AS upd, u.details,
                 u.mode, u.code, u.carrier, u.status, u.sdetail, eps_ts(u.est) AS est, u.signed,
                 u.url, u.cdetail, eps_ts(u.created) AS created
          FROM unnest(t_event, t_trk, t_shp, t_mode, t_code, t_carrier, t_status, t_status_detail,
                      t_est, t_signed, t_url, t_cdetail, t_created, t_updated, t_ev_updated,
                      t_ev_created, t_details)
               WITH ORDINALITY AS u(event, trk, shp, mode, code, carrier, status, sdetail, est,
                                    signed, url, cdetail, created, upd, evupd, evcre, details, i)
          WHERE u.i = ANY (p_take)
          UNION ALL
          SELECT j.k, j.event, j.r ->> 'id', nullif(j.r ->> 'shipment_id', ''),
                 coalesce(eps_ts(j.r ->> 'updated_at'), eps_ts(j.body ->> 'updated_at'),
                          eps_ts(j.body ->> 'created_at')),
                 CASE WHEN jsonb_typeof(j.r -> 'tracking_details') = 'array'
                      THEN jsonb_array_length(j.r -> 'tracking_details') ELSE 0 END,
                 j.r ->> 'mode', j.r ->> 'tracking_code', j.r ->> 'carrier', j.r ->> 'status',
                 j.r ->> 'status_detail', eps_ts(j.r ->> 'est_delivery_date'), j.r ->> 'signed_by',
                 j.r ->> 'public_url', j.r -> 'carrier_detail', eps_ts(j.r ->> 'created_at')
          FROM (SELECT b.k, b.event, b.body, b.body -> 'result' AS r
                FROM unnest(j_key, j_event, j_body) AS b(k, event, body)) j) x
    LEFT JOIN (SELECT dn.k, eps_ts(max(dn.dt)) AS newest_at FROM unnest(d_key, d_datetime) AS dn(k, dt)
               GROUP BY dn.k) n ON n.k = x.k
    -- LIMIT 1 keeps these lookups index probes even in a plan cached while the table was empty
    LEFT JOIN LATERAL (SELECT k.details_count, k.newest_detail_at FROM trackers k
                       WHERE k.easypost_id = x.trk LIMIT 1) t ON true
    LEFT JOIN unnest(d_key, d_pos, d_datetime) AS kd(k, pos, dt) ON kd.k = x.k AND kd.pos = t.details_count
    -- the detail after them must be newer: a snapshot whose first details_count
    -- end at the stored newest time but hold a new detail of that same time
    -- (sorted before a known one) is not the stored history plus new ones
    LEFT JOIN unnest(d_key, d_pos, d_datetime) AS kn(k, pos, dt) ON kn.k = x.k AND kn.pos = t.details_count + 1;

    -- shipments: a stub for a shipment not seen yet (and its sync job), the
    -- newest snapshot's status for the others
    WITH w AS (
        SELECT DISTINCT ON (u.shp) *
        FROM unnest(s_key, s_shp, s_upd, s_newest, s_details, s_mode, s_code, s_carrier, s_status)
             AS u(k, shp, upd, newest_at, details, mode, code, carrier, status)
        WHERE u.shp IS NOT NULL
        ORDER BY u.shp, u.upd DESC NULLS LAST, u.newest_at DESC NULLS LAST, u.details DESC, u.k
    ), up AS (
        INSERT INTO shipments AS t (easypost_id, mode, tracking_code, carrier, status, status_at,
                                    status_detail_at, status_details)
        SELECT w.shp, w.mode, w.code, w.carrier, w.status, w.upd, w.newest_at, w.details
        FROM w ORDER BY w.shp
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
    SELECT w.trk, w.code, w.carrier, w.mode, w.status, w.sdetail, w.est, w.signed, w.url, w.shp,
           (SELECT sh.id FROM shipments sh WHERE sh.easypost_id = w.shp LIMIT 1),
           w.cdetail, w.created, w.upd, w.newest_at, w.details, w.event
    FROM (SELECT DISTINCT ON (u.trk) *
          FROM unnest(s_key, s_event, s_trk, s_shp, s_upd, s_newest, s_details, s_mode, s_code,
                      s_carrier, s_status, s_sdetail, s_est, s_signed, s_url, s_cdetail, s_created)
               AS u(k, event, trk, shp, upd, newest_at, details, mode, code, carrier, status,
                    sdetail, est, signed, url, cdetail, created)
          ORDER BY u.trk, u.upd DESC NULLS LAST, u.newest_at DESC NULLS LAST, u.details DESC, u.k) w
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
    -- Two transactions can only meet here on the same tracker, whose row the
    -- upsert above has locked (ON CONFLICT DO UPDATE locks the row even when
    -- its WHERE keeps the stored one), so they wait there first.
    -- The first event that carried a detail names it: rows are offered in
    -- snapshot order and the later copies do nothing.
    -- The partition key is the tracker's first write, raised to the history
    -- floor (read once for the statement) when retention has dropped its
    -- month: its partition exists whatever date the carrier sent, and all of
    -- a tracker's rows carry one tracker_at, so the unique key stays exact.
    -- (each tracker looked up once per snapshot, not once per detail)
    WITH x AS MATERIALIZED (
        SELECT x.k, x.event, x.upd, x.known, t.id, t.shipment_id,
               greatest(t.created_at, (SELECT f.history FROM partition_floor f)) AS tracker_at
        FROM unnest(s_key, s_event, s_trk, s_upd, s_details, s_known)
             AS x(k, event, trk, upd, details, known)
        CROSS JOIN LATERAL (SELECT k.id, k.shipment_id, k.created_at FROM trackers k
                            WHERE k.easypost_id = x.trk LIMIT 1) t
        WHERE x.details > x.known
    )
    INSERT INTO shipment_events (tracker_id, tracker_at, shipment_id, webhook_event_id, status,
                                 status_detail, message, description, carrier_code, source,
                                 event_datetime, tracking_location)
    SELECT x.id, x.tracker_at, x.shipment_id, x.event, coalesce(d.status, ''), d.sdetail,
           coalesce(d.message, ''), d.description, d.carrier_code, d.source,
           coalesce(eps_ts(d.dt), x.upd, now()), coalesce(d.loc, d.loc_text::jsonb)
    FROM x
    JOIN unnest(d_key, d_pos, d_status, d_status_detail, d_message, d_description, d_carrier_code,
                d_source, d_datetime, d_location, d_location_text)
         AS d(k, pos, status, sdetail, message, description, carrier_code, source, dt, loc, loc_text)
      ON d.k = x.k AND d.pos > x.known
    ORDER BY x.k, d.pos
    ON CONFLICT ON CONSTRAINT shipment_events_once DO NOTHING;
END
$$;

-- The jsonb entry point (the projector, --replay, the sync worker, the
-- reconciler, --reproject): Event bodies, or {"result": Tracker} with a NULL
-- event, in arrival order.
CREATE OR REPLACE FUNCTION eps_project_trackers(p_event uuid[], p_body jsonb[])
RETURNS void LANGUAGE sql AS $$
    SELECT eps_project_trackers(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                    (SELECT array_agg(i::integer ORDER BY i)
                                     FROM generate_subscripts(p_body, 1) AS i),
                                    p_event, p_body)
$$;

-- Stores a batch of verified events in one statement and projects its new
-- tracker events (unless p_defer: then their keys go to projection_queue
-- for the projector, and their rows say 'projected' from the start). Parallel arrays, one element per event; p_clean is the body
-- without U+0000 where the raw body has one (jsonb cannot hold it), p_dead
-- the error of an event that broke an earlier attempt: stored raw, 'failed',
-- nothing parsed; p_partial marks a copy that holds less than the delivery
-- (backfill's list item, which has no result): a later full copy replaces
-- it instead of being a duplicate. Every other body is parsed here once (a deferred tracker
-- event by the projector; a typed one, below, never: the daemon's scanner
-- accepts only JSON that jsonb holds), so body_error NULL means raw::jsonb
-- works; a body PostgreSQL refuses breaks the statement and the daemon
-- isolates it. A
-- tracker event stored 'failed' (its body cannot be projected, or it is a
-- dead letter) queues a fetch of its tracker, so the tracker row still comes
-- to be. An event of another object this version knows (eps_object_of) is
-- projected by eps_project_objects in the same transaction, whether or not
-- p_defer (they are few, and small); one of a type it does not know is
-- stored raw, 'stored'. Returns each event's position and outcome:
-- projected, pending, stored, failed or duplicate.
--
-- A tracker event the daemon's scanner typed comes with its snapshot in the
-- t_ and d_ arrays (see eps_project_trackers; t_details[i] NULL: not
-- typed, p_object_id[i] is its result.id): its body is not parsed here at
-- all. The scanner types only what passes eps_tracker_problem.
CREATE OR REPLACE FUNCTION eps_ingest_batch(p_id uuid[], p_event_id text[], p_description text[],
                                            p_mode text[], p_object_id text[], p_raw text[],
                                            p_source text[], p_created_at text[], p_clean text[],
                                            p_dead text[], p_partial text[], p_defer boolean,
                                            t_shp text[] DEFAULT NULL, t_mode text[] DEFAULT NULL,
                                            t_code text[] DEFAULT NULL, t_carrier text[] DEFAULT NULL,
                                            t_status text[] DEFAULT NULL,
                                            t_status_detail text[] DEFAULT NULL,
                                            t_est text[] DEFAULT NULL, t_signed text[] DEFAULT NULL,
                                            t_url text[] DEFAULT NULL, t_cdetail jsonb[] DEFAULT NULL,
                                            t_created text[] DEFAULT NULL, t_updated text[] DEFAULT NULL,
                                            t_ev_updated text[] DEFAULT NULL,
                                            t_ev_created text[] DEFAULT NULL,
                                            t_details integer[] DEFAULT NULL,
                                            d_key integer[] DEFAULT NULL, d_pos integer[] DEFAULT NULL,
                                            d_status text[] DEFAULT NULL,
                                            d_status_detail text[] DEFAULT NULL,
                                            d_message text[] DEFAULT NULL,
                                            d_description text[] DEFAULT NULL,
                                            d_carrier_code text[] DEFAULT NULL,
                                            d_source text[] DEFAULT NULL, d_datetime text[] DEFAULT NULL,
                                            d_location jsonb[] DEFAULT NULL,
                                            d_location_text text[] DEFAULT NULL)
RETURNS TABLE (ord integer, status text) LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    v_ord     integer[];
    v_status  text[];
    -- tracker events to project: typed (their positions), or as jsonb
    v_take    integer[];
    v_key     integer[];
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
    -- the partial copies they replace: positions in v_dup, row keys
    v_pi      integer[];
    v_pid     uuid[];
    v_pat     timestamptz[];
    v_heal    text[];
    -- deferred events stored: their keys for projection_queue
    v_qat     timestamptz[];
    v_qid     uuid[];
    v_o       integer;
    v_st      text;
    v_obj     text;
    v_trk     boolean;
    v_b       jsonb;
BEGIN
    WITH e AS MATERIALIZED (
        SELECT u.*, y.typed,
               CASE WHEN u.dead IS NOT NULL THEN NULL
                    -- deferred: the projector parses it, off the acknowledgement path
                    WHEN p_defer AND u.clean IS NULL
                         AND u.description IN ('tracker.created', 'tracker.updated') THEN NULL
                    -- typed by the daemon: nothing to parse
                    WHEN y.typed AND u.clean IS NULL
                         AND u.description IN ('tracker.created', 'tracker.updated') THEN NULL
                    ELSE coalesce(u.clean, u.raw)::jsonb END AS body,
               u.description IN ('tracker.created', 'tracker.updated') AS tracker
        FROM unnest(p_id, p_event_id, p_description, p_mode, p_object_id, p_raw, p_source,
                    p_created_at, coalesce(p_clean, array_fill(NULL::text, ARRAY[cardinality(p_id)])),
                    coalesce(p_dead, array_fill(NULL::text, ARRAY[cardinality(p_id)])),
                    coalesce(p_partial, array_fill(NULL::text, ARRAY[cardinality(p_id)])),
                    coalesce(t_details, array_fill(NULL::integer, ARRAY[cardinality(p_id)])))
             WITH ORDINALITY AS u(id, event_id, description, mode, object_id, raw, source,
                                  created_at, clean, dead, partial_, details, ord)
             CROSS JOIN LATERAL (SELECT u.details IS NOT NULL AND u.object_id LIKE 'trk\_%' AS typed) y
    ), c AS (
        SELECT e.*, e.partial_ IS NOT NULL AS partial,
               CASE WHEN e.tracker AND e.dead IS NULL AND NOT (p_defer AND e.clean IS NULL)
                         AND NOT (e.typed AND e.clean IS NULL)
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
        -- a deferred one is 'projected' from the start: its key in
        -- projection_queue (below) says it is not yet
        INSERT INTO webhook_events AS w (id, event_id, description, mode, object_id, raw, body_error,
                                         source, status, error, event_created_at, partial)
        SELECT DISTINCT ON (r.event_id) r.id, r.event_id, r.description, r.mode, r.object_id, r.raw,
               r.body_error, r.source, CASE WHEN r.status = 'pending' THEN 'projected' ELSE r.status END,
               r.error, r.created, r.partial
        FROM r JOIN k ON k.event_id = r.event_id
        ORDER BY r.event_id, r.partial, r.ord
        RETURNING w.id, w.received_at
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
           array_agg(CASE WHEN ins.id IS NULL THEN 'duplicate' ELSE r.status END ORDER BY r.ord),
           array_agg(r.ord::integer) FILTER (WHERE ins.id IS NOT NULL AND r.status = 'projected' AND r.tracker AND r.body IS NULL),
           array_agg(r.ord::integer) FILTER (WHERE ins.id IS NOT NULL AND r.status = 'projected' AND r.tracker AND r.body IS NOT NULL),
           array_agg(ins.id) FILTER (WHERE ins.id IS NOT NULL AND r.status = 'projected' AND r.tracker AND r.body IS NOT NULL),
           array_agg(r.body) FILTER (WHERE ins.id IS NOT NULL AND r.status = 'projected' AND r.tracker AND r.body IS NOT NULL),
           array_agg(ins.id) FILTER (WHERE ins.id IS NOT NULL AND r.status = 'projected' AND NOT r.tracker),
           array_agg(r.body) FILTER (WHERE ins.id IS NOT NULL AND r.status = 'projected' AND NOT r.tracker),
           array_agg(r.ord::integer) FILTER (WHERE ins.id IS NULL AND NOT r.partial AND r.nth = 1),
           array_agg(r.status) FILTER (WHERE ins.id IS NULL AND NOT r.partial AND r.nth = 1),
           array_agg(r.error) FILTER (WHERE ins.id IS NULL AND NOT r.partial AND r.nth = 1),
           array_agg(r.body_error) FILTER (WHERE ins.id IS NULL AND NOT r.partial AND r.nth = 1),
           array_agg(r.created) FILTER (WHERE ins.id IS NULL AND NOT r.partial AND r.nth = 1),
           array_agg(r.body) FILTER (WHERE ins.id IS NULL AND NOT r.partial AND r.nth = 1),
           array_agg(ins.received_at) FILTER (WHERE ins.id IS NOT NULL AND r.status = 'pending'),
           array_agg(ins.id) FILTER (WHERE ins.id IS NOT NULL AND r.status = 'pending')
    INTO v_ord, v_status, v_take, v_key, v_event, v_body, v_oevent, v_obody, v_dup, v_dstatus, v_derror, v_dberr,
         v_dcreate, v_dbody, v_qat, v_qid
    FROM r LEFT JOIN ins ON ins.id = r.id;
    -- A statement of its own, run only when deferred: the inline path never
    -- names the queue.
    IF v_qid IS NOT NULL THEN
        INSERT INTO projection_queue (received_at, id) SELECT * FROM unnest(v_qat, v_qid);
    END IF;

    IF v_dup IS NOT NULL THEN
        -- A full copy of an event stored from a partial one replaces it. A
        -- statement of its own, so that its snapshot (READ COMMITTED: one per
        -- statement) sees a partial copy whose transaction committed while
        -- the statement above waited on its dedup key. Only full copies that
        -- came back duplicate get here: a new event costs nothing more.
        -- Each is found by one probe of the event_id index (LIMIT 1 keeps
        -- it a probe in a plan cached while the table was small: a join
        -- planned then scans the whole partition on every later call), and
        -- replaced by its primary key, in event_id order.
        SELECT array_agg(d.i ORDER BY p_event_id[d.ord]), array_agg(w.id ORDER BY p_event_id[d.ord]),
               array_agg(w.received_at ORDER BY p_event_id[d.ord])
        INTO v_pi, v_pid, v_pat
        FROM unnest(v_dup) WITH ORDINALITY AS d(ord, i)
        CROSS JOIN LATERAL (SELECT w.id, w.received_at FROM webhook_events w
                            WHERE w.event_id = p_event_id[d.ord] AND w.partial LIMIT 1) w;
        FOR j IN 1 .. coalesce(cardinality(v_pi), 0) LOOP
            v_o := v_dup[v_pi[j]];
            v_st := v_dstatus[v_pi[j]];
            -- deferred: queued before the row is touched, the order the
            -- projector locks them in (key, then row), so the two cannot
            -- deadlock; a projector holding the partial copy's key makes
            -- this wait until it commits. A key still queued is locked
            -- (DO UPDATE), so a projector skips it until this commits:
            -- taken now, it would read the partial copy and store it
            -- 'failed' onto the full one
            IF v_st = 'pending' THEN
                INSERT INTO projection_queue AS q (received_at, id) VALUES (v_pat[j], v_pid[j])
                ON CONFLICT (id) DO UPDATE SET received_at = q.received_at;
            END IF;
            UPDATE webhook_events w
            SET description = p_description[v_o], mode = p_mode[v_o], object_id = p_object_id[v_o],
                raw = p_raw[v_o], body_error = v_dberr[v_pi[j]], source = p_source[v_o],
                status = CASE WHEN v_st = 'pending' THEN 'projected' ELSE v_st END, error = v_derror[v_pi[j]],
                event_created_at = v_dcreate[v_pi[j]], partial = false, processed_at = now()
            WHERE w.id = v_pid[j] AND w.received_at = v_pat[j] AND w.partial
            RETURNING w.object_id, w.description IN ('tracker.created', 'tracker.updated')
            INTO v_obj, v_trk;
            CONTINUE WHEN NOT FOUND;
            v_status[v_o] := v_st;
            IF v_trk AND v_st = 'failed' AND v_obj LIKE 'trk\_%' THEN
                v_heal := v_heal || v_obj;
            ELSIF v_st = 'projected' THEN
                -- a typed tracker event was not parsed: its replacement is
                v_b := coalesce(v_dbody[v_pi[j]], coalesce(p_clean[v_o], p_raw[v_o])::jsonb);
                IF v_trk THEN
                    -- after the batch's own, in arrival order
                    v_key := v_key || (v_o + cardinality(p_id));
                    v_event := v_event || v_pid[j];
                    v_body := v_body || v_b;
                ELSE
                    v_oevent := v_oevent || v_pid[j];
                    v_obody := v_obody || v_b;
                END IF;
            END IF;
        END LOOP;
        -- a replacement stored 'failed' heals its tracker from the API
        IF v_heal IS NOT NULL THEN
            INSERT INTO sync_jobs (kind, object_id)
            SELECT DISTINCT 'tracker', h.oid FROM unnest(v_heal) AS h(oid) ORDER BY 2
            ON CONFLICT (kind, object_id) WHERE status IN ('pending', 'running') DO NOTHING;
        END IF;
    END IF;

    IF v_take IS NOT NULL OR v_event IS NOT NULL THEN
        PERFORM eps_project_trackers(v_take, p_id, p_object_id, t_shp, t_mode, t_code, t_carrier,
                                         t_status, t_status_detail, t_est, t_signed, t_url, t_cdetail,
                                         t_created, t_updated, t_ev_updated, t_ev_created, t_details,
                                         d_key, d_pos, d_status, d_status_detail, d_message,
                                         d_description, d_carrier_code, d_source, d_datetime,
                                         d_location, d_location_text, v_key, v_event, v_body);
    END IF;
    -- only a batch with events of other objects pays for this call
    IF v_oevent IS NOT NULL THEN
        PERFORM eps_project_objects(v_oevent, v_obody);
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_ord, v_status);
END
$$;

-- Projects up to p_limit queued events (projection_queue), oldest id first;
-- replicas share the work through SKIP LOCKED on the keys. Parsed and
-- projected set-based; if that fails, each on its own in a subtransaction,
-- so one that fails is recorded 'failed' with its error and the others go
-- on. Every key taken is deleted (projected, or failed: a dead letter,
-- replayed with --replay), so none is taken again and a poison row cannot
-- spin the projector. Returns how many it took and how many of those it
-- projected. A projected row is not written: it says 'projected' since its
-- insert (one stored 'pending' before 0016 is marked now). Its key goes when
-- the transaction commits, and with it the row's last trace of waiting.
-- Rows are read, and a failure written, one by one by their whole key
-- (received_at, id): a probe of one partition's primary key, whatever the
-- planner knows of the table (a join by id read a month's partition whole
-- for every batch while PostgreSQL thought it small, a cost that grew with
-- the month). The keys are deleted by ctid, a TID scan, for the same reason.
DROP FUNCTION IF EXISTS eps_project_pending(integer);
CREATE OR REPLACE FUNCTION eps_project_pending(p_limit integer, OUT taken integer, OUT projected integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_id      uuid[];
    v_at      timestamptz[];
    v_obj     text[];
    v_raw     text[];
    v_was     text[];
    v_ok      uuid[];
    v_body    jsonb[];
    v_why     text[];
    v_one     jsonb;
    v_problem text;
    v_berr    text;
BEGIN
    taken := 0;
    projected := 0;
    WITH q AS (DELETE FROM projection_queue x
               WHERE x.ctid = ANY (ARRAY(SELECT y.ctid FROM projection_queue y
                                         ORDER BY y.id
                                         LIMIT least(p_limit, 500)
                                         FOR UPDATE SKIP LOCKED))
               RETURNING x.received_at, x.id)
    SELECT array_agg(q.id ORDER BY q.id), array_agg(q.received_at ORDER BY q.id),
           array_agg(w.object_id ORDER BY q.id), array_agg(w.raw ORDER BY q.id),
           array_agg(w.status ORDER BY q.id)
    INTO v_id, v_at, v_obj, v_raw, v_was
    FROM q
    -- LIMIT 1: a probe per key, never a join PostgreSQL may hash
    CROSS JOIN LATERAL (SELECT w.object_id, w.raw, w.status FROM webhook_events w
                        WHERE w.id = q.id AND w.received_at = q.received_at LIMIT 1) w;
    IF v_id IS NULL THEN
        RETURN;
    END IF;
    taken := cardinality(v_id);
    BEGIN
        WITH q AS MATERIALIZED (SELECT u.id, u.raw::jsonb AS body, u.i
                                FROM unnest(v_id, v_raw) WITH ORDINALITY AS u(id, raw, i)),
             c AS (SELECT q.*, eps_tracker_problem(q.body) AS problem FROM q)
        SELECT array_agg(id ORDER BY i) FILTER (WHERE problem IS NULL),
               array_agg(body ORDER BY i) FILTER (WHERE problem IS NULL),
               array_agg(problem ORDER BY i)
        INTO v_ok, v_body, v_why
        FROM c;
        IF v_ok IS NOT NULL THEN
            PERFORM eps_project_trackers(v_ok, v_body);
        END IF;
        -- failures (and rows stored 'pending' before 0016) written one at a
        -- time by the whole key: a join lets the planner read a partition
        -- whole when it thinks it small
        FOR i IN 1 .. taken LOOP
            CONTINUE WHEN v_why[i] IS NULL AND v_was[i] = 'projected';
            UPDATE webhook_events
            SET status = CASE WHEN v_why[i] IS NULL THEN 'projected' ELSE 'failed' END, error = v_why[i],
                processed_at = now()
            WHERE id = v_id[i] AND received_at = v_at[i];
        END LOOP;
        -- as at ingest: a tracker whose event cannot be projected is fetched
        INSERT INTO sync_jobs (kind, object_id)
        SELECT DISTINCT 'tracker', x.obj FROM unnest(v_obj, v_why) AS x(obj, why)
        WHERE x.why IS NOT NULL AND x.obj LIKE 'trk\_%'
        ORDER BY 2
        ON CONFLICT (kind, object_id) WHERE status IN ('pending', 'running') DO NOTHING;
        projected := coalesce(cardinality(v_ok), 0);
    EXCEPTION WHEN deadlock_detected OR serialization_failure THEN
        -- not the events' fault: the whole transaction rolls back and its
        -- keys go back to the queue, taken again by the next call
        RAISE;
    WHEN others THEN
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
                EXCEPTION WHEN deadlock_detected OR serialization_failure THEN
                    RAISE;
                WHEN others THEN
                    v_problem := SQLSTATE || ': ' || SQLERRM;
                END;
            END IF;
            IF v_problem IS NULL THEN
                projected := projected + 1;
                CONTINUE WHEN v_was[i] = 'projected';
            END IF;
            UPDATE webhook_events
            SET status = CASE WHEN v_problem IS NULL THEN 'projected' ELSE 'failed' END,
                error = v_problem, body_error = coalesce(v_berr, body_error), processed_at = now()
            WHERE id = v_id[i] AND received_at = v_at[i];
            -- as at ingest: a tracker whose event cannot be projected is fetched
            IF v_problem IS NOT NULL AND v_obj[i] LIKE 'trk\_%' THEN
                INSERT INTO sync_jobs (kind, object_id) VALUES ('tracker', v_obj[i])
                ON CONFLICT (kind, object_id) WHERE status IN ('pending', 'running') DO NOTHING;
            END IF;
        END LOOP;
    END;
END
$$;

-- Projects the deferred tracker events whose snapshots the daemon typed when
-- it received them (the t_ and d_ arrays of eps_ingest_batch, one snapshot
-- per event, keys 1..n): those whose key it can take from projection_queue
-- (SKIP LOCKED; another projector may have taken some, or the replacement
-- of a partial copy queued the row under that copy's id). No raw row is
-- read, no body parsed. Returns how many it took and projected, the same
-- number: when the projection raises, the block rolls back, the keys with
-- it, and it returns 0/0; eps_project_pending then takes those events from
-- their raw rows, each on its own if need be, and records the one that
-- fails.
CREATE OR REPLACE FUNCTION eps_project_typed(p_id uuid[], p_object_id text[],
                                             t_shp text[], t_mode text[], t_code text[], t_carrier text[],
                                             t_status text[], t_status_detail text[], t_est text[],
                                             t_signed text[], t_url text[], t_cdetail jsonb[],
                                             t_created text[], t_updated text[], t_ev_updated text[],
                                             t_ev_created text[], t_details integer[],
                                             d_key integer[], d_pos integer[], d_status text[],
                                             d_status_detail text[], d_message text[], d_description text[],
                                             d_carrier_code text[], d_source text[], d_datetime text[],
                                             d_location jsonb[] DEFAULT NULL,
                                             d_location_text text[] DEFAULT NULL,
                                             OUT taken integer, OUT projected integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_take integer[];
BEGIN
    taken := 0;
    projected := 0;
    BEGIN
        WITH q AS (DELETE FROM projection_queue x
                   WHERE x.ctid = ANY (ARRAY(SELECT y.ctid FROM projection_queue y
                                             WHERE y.id = ANY (p_id)
                                             ORDER BY y.id
                                             FOR UPDATE SKIP LOCKED))
                   RETURNING x.id)
        SELECT array_agg(u.i::integer ORDER BY u.i) INTO v_take
        FROM unnest(p_id) WITH ORDINALITY AS u(id, i) JOIN q ON q.id = u.id;
        IF v_take IS NULL THEN
            RETURN;
        END IF;
        PERFORM eps_project_trackers(v_take, p_id, p_object_id, t_shp, t_mode, t_code, t_carrier,
                                     t_status, t_status_detail, t_est, t_signed, t_url, t_cdetail,
                                     t_created, t_updated, t_ev_updated, t_ev_created, t_details,
                                     d_key, d_pos, d_status, d_status_detail, d_message,
                                     d_description, d_carrier_code, d_source, d_datetime,
                                     d_location, d_location_text, NULL, NULL, NULL);
        taken := cardinality(v_take);
        projected := taken;
    EXCEPTION WHEN others THEN
        RAISE LOG 'easypost-sync: typed projection of % events failed (%: %); left to eps_project_pending',
                  cardinality(p_id), SQLSTATE, SQLERRM;
        taken := 0;
        projected := 0;
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
