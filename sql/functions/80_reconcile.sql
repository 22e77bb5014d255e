-- The reconciler: one run at a time across replicas. The run in progress is
-- sync_state 'reconcile_run', a JSON object {run, start, end, before_id,
-- holder, until}: its window, the cursor of the next page, and its lease
-- (holder: the process's token; until: unix second). Every page commits
-- under the lease (fenced by holder), and a run whose holder stopped or died
-- (lease past) is resumed by the next replica that asks.

-- Starts a run, or resumes the unfinished one. p_slot: a scheduled run's
-- slot (eps_slot_elect, 'reconcile_slot'), NULL for any other. p_reason
-- NULL only resumes. Returns no row when another holder has the lease, when
-- the slot went to another replica, or when there is nothing to resume.
CREATE OR REPLACE FUNCTION eps_reconcile_begin(p_token text, p_instance text, p_lease_s integer,
                                               p_reason text, p_start timestamptz, p_slot bigint)
RETURNS TABLE (run bigint, reason text, window_start timestamptz, window_end timestamptz,
               before_id text, resumed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    st jsonb;
    v_run bigint;
    v_now timestamptz := now();
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('easypost-sync reconcile'));
    SELECT s.value::jsonb INTO st FROM sync_state s WHERE s.key = 'reconcile_run' FOR UPDATE;
    IF st IS NOT NULL THEN
        IF st ->> 'holder' IS DISTINCT FROM p_token
           AND (st ->> 'until')::bigint > extract(epoch FROM clock_timestamp())::bigint THEN
            RETURN;   -- another replica runs it
        END IF;
        IF p_slot IS NOT NULL AND NOT eps_slot_elect('reconcile_slot', p_slot) THEN
            RETURN;
        END IF;
        UPDATE sync_state SET value = (st || jsonb_build_object(
                   'holder', p_token,
                   'until', extract(epoch FROM clock_timestamp())::bigint + p_lease_s))::text,
               updated_at = v_now
        WHERE key = 'reconcile_run';
        UPDATE reconcile_runs r SET status = 'running', instance_id = p_instance, error = NULL,
               updated_at = v_now
        WHERE r.id = (st ->> 'run')::bigint;
        RETURN QUERY SELECT r.id, r.reason, r.window_start, r.window_end, st ->> 'before_id', true
                     FROM reconcile_runs r WHERE r.id = (st ->> 'run')::bigint;
        RETURN;
    END IF;
    IF p_reason IS NULL OR (p_slot IS NOT NULL AND NOT eps_slot_elect('reconcile_slot', p_slot)) THEN
        RETURN;
    END IF;
    INSERT INTO reconcile_runs (reason, window_start, window_end, slot, instance_id)
    VALUES (p_reason, least(p_start, v_now), v_now, p_slot, p_instance)
    RETURNING id INTO v_run;
    INSERT INTO sync_state (key, value)
    VALUES ('reconcile_run', jsonb_build_object(
                'run', v_run, 'start', least(p_start, v_now), 'end', v_now, 'before_id', NULL,
                'holder', p_token,
                'until', extract(epoch FROM clock_timestamp())::bigint + p_lease_s)::text);
    RETURN QUERY SELECT v_run, p_reason, least(p_start, v_now), v_now, NULL::text, false;
END
$$;

-- The trackers of a listed page (a jsonb array) that are new or newer than
-- the stored row, applied through eps_project_trackers (as fetched trackers:
-- NULL event); how many changed, changed status, were created. Raises on
-- data the schema refuses (a tracking detail dated 2024-02-30).
CREATE OR REPLACE FUNCTION eps_reconcile_apply(p_trackers jsonb, OUT changed integer,
                                               OUT status_changed integer, OUT created integer)
LANGUAGE plpgsql AS $$
DECLARE
    b jsonb[];
BEGIN
    WITH l AS (
        SELECT jsonb_build_object('result', t) AS body, t ->> 'status' AS status,
               eps_ts(t ->> 'updated_at') AS updated_at,
               (SELECT eps_ts(max(d ->> 'datetime')) FROM jsonb_array_elements(
                    CASE WHEN jsonb_typeof(t -> 'tracking_details') = 'array'
                         THEN t -> 'tracking_details' ELSE '[]' END) d) AS newest_at,
               CASE WHEN jsonb_typeof(t -> 'tracking_details') = 'array'
                    THEN jsonb_array_length(t -> 'tracking_details') ELSE 0 END AS details,
               t ->> 'id' AS trk
        FROM jsonb_array_elements(p_trackers) t
        WHERE eps_tracker_problem(jsonb_build_object('result', t)) IS NULL
    ), c AS (
        SELECT l.body, k.easypost_id IS NULL AS is_new,
               k.easypost_id IS NOT NULL
               AND (coalesce(l.updated_at, '-infinity'), coalesce(l.newest_at, '-infinity'), l.details)
                   > (coalesce(k.ep_updated_at, '-infinity'), coalesce(k.newest_detail_at, '-infinity'),
                      coalesce(k.details_count, -1)) AS is_newer,
               l.status IS DISTINCT FROM k.status AS other_status
        FROM l LEFT JOIN LATERAL (SELECT t.easypost_id, t.ep_updated_at, t.newest_detail_at,
                                         t.details_count, t.status
                                  FROM trackers t WHERE t.easypost_id = l.trk LIMIT 1) k ON true
    )
    SELECT count(*) FILTER (WHERE is_newer), count(*) FILTER (WHERE is_newer AND other_status),
           count(*) FILTER (WHERE is_new), array_agg(body) FILTER (WHERE is_new OR is_newer)
    INTO changed, status_changed, created, b
    FROM c;
    IF b IS NOT NULL THEN
        PERFORM eps_project_trackers(array_fill(NULL::uuid, ARRAY[cardinality(b)]), b);
    END IF;
END
$$;

-- One listed page: p_trackers is the page's "trackers" array, p_next the
-- before_id of the next page (NULL: this was the last). Applies it
-- (eps_reconcile_apply), counts, and moves the cursor, in one transaction
-- under the lease. A page with nothing newer writes no tracker, shipment or
-- shipment_events row. A tracker whose data the schema refuses does not
-- stop the run at its page for good: the page is then applied one tracker
-- at a time, and that one is skipped (counted in skipped, with a warning in
-- the server's log). ok false:
-- the lease is no longer p_token's (another replica took the run over);
-- nothing applied.
DROP FUNCTION IF EXISTS eps_reconcile_page(bigint, text, integer, jsonb, text);
CREATE FUNCTION eps_reconcile_page(p_run bigint, p_token text, p_lease_s integer,
                                   p_trackers jsonb, p_next text,
                                   OUT ok boolean, OUT listed integer, OUT changed integer,
                                   OUT status_changed integer, OUT created integer,
                                   OUT skipped integer)
LANGUAGE plpgsql AS $$
DECLARE
    st jsonb;
    page jsonb := CASE WHEN jsonb_typeof(p_trackers) = 'array' THEN p_trackers ELSE '[]' END;
    t jsonb;
    a record;
BEGIN
    listed := jsonb_array_length(page); changed := 0; status_changed := 0; created := 0; skipped := 0;
    SELECT s.value::jsonb INTO st FROM sync_state s WHERE s.key = 'reconcile_run' FOR UPDATE;
    ok := st IS NOT NULL AND (st ->> 'run')::bigint = p_run AND st ->> 'holder' = p_token;
    IF NOT ok THEN
        RETURN;
    END IF;
    BEGIN
        SELECT * INTO a FROM eps_reconcile_apply(page);
        changed := a.changed; status_changed := a.status_changed; created := a.created;
    EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
        FOR t IN SELECT e.value FROM jsonb_array_elements(page) e LOOP
            BEGIN
                SELECT * INTO a FROM eps_reconcile_apply(jsonb_build_array(t));
                changed := changed + a.changed; status_changed := status_changed + a.status_changed;
                created := created + a.created;
            EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
                skipped := skipped + 1;
                RAISE WARNING 'reconcile: tracker % skipped: %', left(t ->> 'id', 64), SQLERRM;
            END;
        END LOOP;
    END;
    UPDATE reconcile_runs r SET pages = r.pages + 1, listed = r.listed + eps_reconcile_page.listed,
           changed = r.changed + eps_reconcile_page.changed,
           status_changed = r.status_changed + eps_reconcile_page.status_changed,
           created = r.created + eps_reconcile_page.created, updated_at = now()
    WHERE r.id = p_run;
    UPDATE sync_state SET value = (st || jsonb_build_object(
               'before_id', p_next,
               'until', extract(epoch FROM clock_timestamp())::bigint + p_lease_s))::text,
           updated_at = now()
    WHERE key = 'reconcile_run';
END
$$;

-- The end of the holder's run: 'completed' (the last page is in; the run
-- leaves sync_state) or 'stopped' with why (kept there, the lease given up:
-- the next start resumes it from its cursor). Returns the run's totals.
CREATE OR REPLACE FUNCTION eps_reconcile_end(p_run bigint, p_token text, p_outcome text, p_error text)
RETURNS TABLE (listed integer, changed integer, status_changed integer, created integer)
LANGUAGE plpgsql AS $$
DECLARE
    st jsonb;
BEGIN
    SELECT s.value::jsonb INTO st FROM sync_state s WHERE s.key = 'reconcile_run' FOR UPDATE;
    IF st IS NULL OR (st ->> 'run')::bigint <> p_run OR st ->> 'holder' IS DISTINCT FROM p_token THEN
        RETURN;   -- taken over: the new holder ends it
    END IF;
    IF p_outcome = 'completed' THEN
        DELETE FROM sync_state WHERE key = 'reconcile_run';
    ELSE
        UPDATE sync_state SET value = (st || jsonb_build_object('until', 0))::text, updated_at = now()
        WHERE key = 'reconcile_run';
    END IF;
    RETURN QUERY
    UPDATE reconcile_runs r SET status = p_outcome, error = p_error, updated_at = now(),
           finished_at = CASE WHEN p_outcome = 'completed' THEN now() END
    WHERE r.id = p_run
    RETURNING r.listed, r.changed, r.status_changed, r.created;
END
$$;
