-- easypost-syncd --reproject: rebuilds the projections from the stored raw
-- events, online, in short transactions (one per step), resumable.
--
-- The run in progress is sync_state 'reproject_run', a JSON object: its phase,
-- the cursor inside the phase, and the totals so far; every step moves them in
-- the transaction that did the work, so a run stopped anywhere (kill -9, a
-- lost connection) resumes after its last committed step. The last finished
-- run's totals stay in 'reproject_last'. Two runs at once share the work (each
-- step locks the state row first).
--
-- Phases:
--   trackers  per batch of trackers named by stored tracker events (sorted by
--             trk_ id): their history rows are deleted, their tracker row and
--             the tracker-derived columns of the shipments their events name
--             are emptied, and all their stored events are projected again,
--             oldest first, through eps_project_trackers, in one transaction:
--             each tracker's events one after the other, as they came, so
--             the rows are those the daemon made when it received them.
--             The tracker row keeps its id (and so its history partition);
--             a deleted one is made again with a new id. A tracker whose row
--             showed a newer snapshot than any stored event (fetched from the
--             API, or edited) gets a tracker fetch queued, so the API's
--             state comes back; a tracker without a projectable stored event
--             (fetched only) is left as it is.
--   orphans   history rows whose tracker row is gone (a user deleted it; its
--             rebuilt row has a new id) are deleted.
--   objects   the typed tables (batches, scan forms, insurances, refunds,
--             reports, shipment invoices, claims, payments) and the
--             shipments' refund status are emptied, then every other stored
--             event is projected again, oldest first (by id: UUID v7 made on
--             receipt), through eps_project_objects.
--
-- Lock order as at ingest (20_ingest.sql): tracker fetches, shipments by
-- easypost_id, trackers by easypost_id, shipment_events; every step takes
-- them in that order, sorted.

-- jsonb of a stored body that holds U+0000 (body_error set), NULL when even
-- the cleaned copy is not JSON PostgreSQL can hold.
CREATE OR REPLACE FUNCTION eps_reproject_body(p_raw text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN replace(p_raw, '\u0000', '')::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

-- The first tracker after p_after named by a stored event the rebuild
-- projects, or NULL: an ordered probe of webhook_events' object_id index.
CREATE OR REPLACE FUNCTION eps_reproject_next_tracker(p_after text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT min(w.object_id) FROM webhook_events w
    WHERE w.object_id > p_after AND w.object_id LIKE 'trk\_%'
      AND w.description IN ('tracker.created', 'tracker.updated')
      AND w.status IN ('projected', 'pending') AND NOT w.partial
$$;

-- Rebuilds the trackers p_trk (sorted) from their stored events. Returns
-- what it did; raises on data the schema refuses (the caller isolates).
CREATE OR REPLACE FUNCTION eps_reproject_trackers(p_trk text[], OUT trackers integer,
                                                  OUT events integer, OUT history_deleted integer,
                                                  OUT history_inserted integer, OUT refetch integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_event uuid[];
    v_body  jsonb[];
    v_nth   integer[];
    v_trk   text[];
    v_shp   text[];
    v_fetch text[];
    v_ids   uuid[];
    v_re    uuid[];
    v_rb    jsonb[];
BEGIN
    trackers := 0; events := 0; history_deleted := 0; history_inserted := 0; refetch := 0;
    -- the rows first, in the writers' order (shipments, then trackers): a
    -- webhook that projected onto them and has not committed is waited for
    -- here, so the events read below include it (read first, they would not,
    -- and the rebuild would drop what it wrote once it commits)
    PERFORM 1 FROM shipments s
    WHERE s.easypost_id IN (SELECT t.shipment_easypost_id FROM trackers t WHERE t.easypost_id = ANY (p_trk))
    ORDER BY s.easypost_id FOR UPDATE;
    PERFORM 1 FROM trackers t WHERE t.easypost_id = ANY (p_trk) ORDER BY t.easypost_id FOR UPDATE;
    -- the trackers' projectable stored events, oldest first (as they came),
    -- each with its place among its tracker's events
    SELECT array_agg(e.id ORDER BY e.received_at, e.id), array_agg(e.body ORDER BY e.received_at, e.id),
           array_agg(e.nth ORDER BY e.received_at, e.id)
    INTO v_event, v_body, v_nth
    FROM (SELECT f.*, row_number() OVER (PARTITION BY f.body -> 'result' ->> 'id'
                                         ORDER BY f.received_at, f.id)::integer AS nth
          FROM (SELECT w.id, w.received_at,
                       CASE WHEN w.body_error IS NULL THEN w.raw::jsonb
                            ELSE eps_reproject_body(w.raw) END AS body
                FROM webhook_events w
                WHERE w.object_id = ANY (p_trk) AND w.description IN ('tracker.created', 'tracker.updated')
                  AND w.status IN ('projected', 'pending') AND NOT w.partial) f
          WHERE eps_tracker_problem(f.body) IS NULL) e;
    IF v_event IS NULL THEN
        RETURN;
    END IF;
    events := cardinality(v_event);

    -- each tracker's newest stored snapshot (the projection's order), and
    -- whether the stored row shows a newer one: then the API is asked again
    WITH x AS (
        SELECT b -> 'result' ->> 'id' AS trk, nullif(b -> 'result' ->> 'shipment_id', '') AS shp,
               coalesce(eps_ts(b -> 'result' ->> 'updated_at'), eps_ts(b ->> 'updated_at'),
                        eps_ts(b ->> 'created_at')) AS updated_at,
               d.newest_at, d.details
        FROM unnest(v_body) AS b
        CROSS JOIN LATERAL (
            SELECT eps_ts(max(e ->> 'datetime')) AS newest_at, count(*)::integer AS details
            FROM jsonb_array_elements(CASE WHEN jsonb_typeof(b -> 'result' -> 'tracking_details') = 'array'
                                           THEN b -> 'result' -> 'tracking_details' ELSE '[]' END) AS e
        ) d
    ), n AS (
        SELECT DISTINCT ON (trk) * FROM x
        ORDER BY trk, updated_at DESC NULLS LAST, newest_at DESC NULLS LAST, details DESC
    )
    SELECT array_agg(n.trk ORDER BY n.trk),
           array_agg(n.trk ORDER BY n.trk) FILTER (
               WHERE (coalesce(t.ep_updated_at, '-infinity'), coalesce(t.newest_detail_at, '-infinity'),
                      coalesce(t.details_count, -1))
                   > (coalesce(n.updated_at, '-infinity'), coalesce(n.newest_at, '-infinity'), n.details)),
           (SELECT array_agg(DISTINCT x.shp ORDER BY x.shp) FROM x WHERE x.shp IS NOT NULL)
    INTO v_trk, v_fetch, v_shp
    FROM n LEFT JOIN trackers t ON t.easypost_id = n.trk;
    trackers := cardinality(v_trk);
    refetch := coalesce(cardinality(v_fetch), 0);

    INSERT INTO sync_jobs (kind, object_id)
    SELECT 'tracker', f FROM unnest(v_fetch) AS f ORDER BY f
    ON CONFLICT (kind, object_id) WHERE status IN ('pending', 'running') DO NOTHING;

    -- the shipments the events name: their status is the trackers' again
    PERFORM 1 FROM shipments s WHERE s.easypost_id = ANY (v_shp) ORDER BY s.easypost_id FOR UPDATE;
    UPDATE shipments SET status = NULL, status_at = NULL, status_detail_at = NULL,
           status_details = NULL, updated_at = now()
    WHERE easypost_id = ANY (v_shp);

    -- the tracker rows: emptied (so that every stored snapshot can win) and
    -- their history deleted; eps_project_trackers then writes both again
    SELECT array_agg(k.id) INTO v_ids
    FROM (SELECT t.id FROM trackers t WHERE t.easypost_id = ANY (v_trk)
          ORDER BY t.easypost_id FOR UPDATE) k;
    IF v_ids IS NOT NULL THEN
        DELETE FROM shipment_events WHERE tracker_id = ANY (v_ids);
        GET DIAGNOSTICS history_deleted = ROW_COUNT;
        UPDATE trackers SET tracking_code = NULL, carrier = NULL, mode = NULL, status = NULL,
               status_detail = NULL, est_delivery_date = NULL, signed_by = NULL, public_url = NULL,
               shipment_easypost_id = NULL, shipment_id = NULL, carrier_detail = NULL,
               ep_created_at = NULL, ep_updated_at = NULL, newest_detail_at = NULL,
               details_count = NULL, last_webhook_event_id = NULL
        WHERE id = ANY (v_ids);
    END IF;

    -- Replayed as the daemon met them: a tracker's events one call each, in
    -- arrival order (a snapshot only adds the details after those its
    -- tracker row shows), the n-th events of all the trackers in one call.
    FOR i IN 1 .. (SELECT max(n) FROM unnest(v_nth) AS n) LOOP
        SELECT array_agg(u.e ORDER BY u.o), array_agg(u.b ORDER BY u.o) INTO v_re, v_rb
        FROM unnest(v_event, v_body, v_nth) WITH ORDINALITY AS u(e, b, n, o) WHERE u.n = i;
        PERFORM eps_project_trackers(v_re, v_rb);
    END LOOP;

    v_ids := ARRAY(SELECT t.id FROM trackers t WHERE t.easypost_id = ANY (v_trk));
    SELECT count(*) INTO history_inserted FROM shipment_events e WHERE e.tracker_id = ANY (v_ids);
END
$$;

-- Starts a run, or finds the unfinished one. Returns whether it resumed and
-- the run's state (see the top of this file).
CREATE OR REPLACE FUNCTION eps_reproject_begin(OUT resumed boolean, OUT state jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('easypost-sync reproject'));
    SELECT s.value::jsonb INTO state FROM sync_state s WHERE s.key = 'reproject_run' FOR UPDATE;
    resumed := state IS NOT NULL;
    IF resumed THEN
        RETURN;
    END IF;
    state := jsonb_build_object('phase', 'trackers', 'cursor', NULL, 'started_at', now(),
                                'trackers', 0, 'events', 0, 'history_deleted', 0,
                                'history_inserted', 0, 'refetch', 0, 'orphans', 0, 'objects', 0,
                                'failed', 0, 'kept', 0);
    INSERT INTO sync_state (key, value) VALUES ('reproject_run', state::text);
END
$$;

-- One step of the run: up to p_batch trackers (phase trackers), the history
-- of up to 10 x p_batch tracker ids (orphans) or p_batch events (objects),
-- and the moved cursor, in the caller's transaction. A tracker or event the
-- projection refuses is skipped, counted in failed and named in a WARNING.
-- Returns the run's state after the step; phase 'done' when it finished
-- (also when another run finished it).
CREATE OR REPLACE FUNCTION eps_reproject_step(p_batch integer) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    st      jsonb;
    v_phase text;
    v_cur   text;
    v_trk   text[];
    v_ids   uuid[];
    v_event uuid[];
    v_body  jsonb[];
    r       record;
    n       integer;
BEGIN
    SELECT s.value::jsonb INTO st FROM sync_state s WHERE s.key = 'reproject_run' FOR UPDATE;
    IF st IS NULL THEN
        RETURN coalesce((SELECT s.value::jsonb FROM sync_state s WHERE s.key = 'reproject_last'),
                        '{}') || '{"phase": "done"}';
    END IF;
    v_phase := st ->> 'phase';
    v_cur := st ->> 'cursor';
    p_batch := greatest(p_batch, 1);

    IF v_phase = 'trackers' THEN
        -- the next trackers after the cursor, one index probe each (a
        -- DISTINCT over the rest of the table would sort it at every step)
        WITH RECURSIVE nx(o, i) AS (
            SELECT eps_reproject_next_tracker(coalesce(v_cur, '')), 1
            UNION ALL
            SELECT eps_reproject_next_tracker(nx.o), nx.i + 1 FROM nx WHERE nx.o IS NOT NULL AND nx.i < p_batch
        )
        SELECT array_agg(nx.o ORDER BY nx.o) INTO v_trk FROM nx WHERE nx.o IS NOT NULL;
        IF v_trk IS NULL THEN
            st := st || '{"phase": "orphans", "cursor": null}';
        ELSE
            BEGIN
                SELECT * INTO r FROM eps_reproject_trackers(v_trk);
                st := st || jsonb_build_object(
                    'trackers', (st ->> 'trackers')::bigint + r.trackers,
                    'events', (st ->> 'events')::bigint + r.events,
                    'history_deleted', (st ->> 'history_deleted')::bigint + r.history_deleted,
                    'history_inserted', (st ->> 'history_inserted')::bigint + r.history_inserted,
                    'refetch', (st ->> 'refetch')::bigint + r.refetch);
            EXCEPTION WHEN others THEN
                -- one at a time: a tracker that fails keeps its rows as they were
                FOR i IN 1 .. cardinality(v_trk) LOOP
                    BEGIN
                        SELECT * INTO r FROM eps_reproject_trackers(ARRAY[v_trk[i]]);
                        st := st || jsonb_build_object(
                            'trackers', (st ->> 'trackers')::bigint + r.trackers,
                            'events', (st ->> 'events')::bigint + r.events,
                            'history_deleted', (st ->> 'history_deleted')::bigint + r.history_deleted,
                            'history_inserted', (st ->> 'history_inserted')::bigint + r.history_inserted,
                            'refetch', (st ->> 'refetch')::bigint + r.refetch);
                    EXCEPTION WHEN others THEN
                        RAISE WARNING 'tracker % not rebuilt: %: %', v_trk[i], SQLSTATE, SQLERRM;
                        st := st || jsonb_build_object('failed', (st ->> 'failed')::bigint + 1);
                    END;
                END LOOP;
            END;
            st := st || jsonb_build_object('cursor', v_trk[cardinality(v_trk)]);
        END IF;

    ELSIF v_phase = 'orphans' THEN
        WITH RECURSIVE nx(t, i) AS (
            SELECT (SELECT e.tracker_id FROM shipment_events e
                    WHERE e.tracker_id > coalesce(v_cur::uuid, '00000000-0000-0000-0000-000000000000')
                    ORDER BY e.tracker_id LIMIT 1), 1
            UNION ALL
            SELECT (SELECT e.tracker_id FROM shipment_events e WHERE e.tracker_id > nx.t
                    ORDER BY e.tracker_id LIMIT 1), nx.i + 1
            FROM nx WHERE nx.t IS NOT NULL AND nx.i < p_batch * 10
        )
        SELECT array_agg(nx.t ORDER BY nx.t) INTO v_ids FROM nx WHERE nx.t IS NOT NULL;
        IF v_ids IS NULL THEN
            -- the typed tables are made again from their events: emptied
            -- here, in the step that enters the phase (a webhook meanwhile
            -- writes its newer snapshot, which the replay then leaves alone)
            DELETE FROM batch_shipments;
            DELETE FROM batches;
            DELETE FROM scan_forms;
            DELETE FROM insurances;
            DELETE FROM refunds;
            DELETE FROM reports;
            DELETE FROM shipment_invoices;
            DELETE FROM claims;
            DELETE FROM payments;
            UPDATE shipments SET refund_status = NULL, refund_status_at = NULL
            WHERE refund_status IS NOT NULL OR refund_status_at IS NOT NULL;
            st := st || '{"phase": "objects", "cursor": null}';
        ELSE
            DELETE FROM shipment_events e
            WHERE e.tracker_id = ANY (v_ids)
              AND NOT EXISTS (SELECT 1 FROM trackers t WHERE t.id = e.tracker_id);
            GET DIAGNOSTICS n = ROW_COUNT;
            st := st || jsonb_build_object('orphans', (st ->> 'orphans')::bigint + n,
                                           'cursor', v_ids[cardinality(v_ids)]);
        END IF;

    ELSIF v_phase = 'objects' THEN
        SELECT array_agg(x.id ORDER BY x.id), array_agg(x.body ORDER BY x.id) INTO v_event, v_body
            FROM (SELECT w.id,
                         CASE WHEN w.body_error IS NULL THEN w.raw::jsonb
                              ELSE eps_reproject_body(w.raw) END AS body
                  FROM webhook_events w
                  WHERE w.id > coalesce(v_cur::uuid, '00000000-0000-0000-0000-000000000000')
                    AND w.description NOT IN ('tracker.created', 'tracker.updated')
                    AND w.status <> 'failed' AND NOT w.partial
                  ORDER BY w.id LIMIT p_batch) x;
        IF v_event IS NULL THEN
            st := st || '{"phase": "done", "cursor": null}';
        ELSE
            BEGIN
                PERFORM eps_project_objects(v_event, v_body);
                st := st || jsonb_build_object('objects', (st ->> 'objects')::bigint + cardinality(v_event));
            EXCEPTION WHEN others THEN
                FOR i IN 1 .. cardinality(v_event) LOOP
                    BEGIN
                        PERFORM eps_project_objects(ARRAY[v_event[i]], ARRAY[v_body[i]]);
                        st := st || jsonb_build_object('objects', (st ->> 'objects')::bigint + 1);
                    EXCEPTION WHEN others THEN
                        RAISE WARNING 'event % not projected: %: %', v_event[i], SQLSTATE, SQLERRM;
                        st := st || jsonb_build_object('failed', (st ->> 'failed')::bigint + 1);
                    END;
                END LOOP;
            END;
            st := st || jsonb_build_object('cursor', v_event[cardinality(v_event)]);
        END IF;
    END IF;

    IF st ->> 'phase' = 'done' THEN
        -- trackers no stored event could rebuild (fetched from the API only): left as they are
        SELECT count(*) INTO n FROM trackers t
        WHERE NOT EXISTS (SELECT 1 FROM webhook_events w
                          WHERE w.object_id = t.easypost_id
                            AND w.description IN ('tracker.created', 'tracker.updated')
                            AND w.status IN ('projected', 'pending') AND NOT w.partial);
        st := st || jsonb_build_object('kept', n, 'finished_at', now());
        DELETE FROM sync_state WHERE key = 'reproject_run';
        INSERT INTO sync_state (key, value) VALUES ('reproject_last', st::text)
        ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
    ELSE
        UPDATE sync_state SET value = st::text, updated_at = now() WHERE key = 'reproject_run';
    END IF;
    RETURN st;
END
$$;
