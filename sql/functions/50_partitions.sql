-- Monthly partitions of webhook_events and shipment_events: made ahead,
-- dropped after their retention. Months are UTC months.

-- A partitioned table's partitions with their bounds (MINVALUE: -infinity)
-- and whether a DETACH ... CONCURRENTLY of it was left unfinished.
CREATE OR REPLACE FUNCTION eps_partitions(p_parent regclass)
RETURNS TABLE (part regclass, lo timestamptz, hi timestamptz, detaching boolean)
LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass,
           CASE WHEN m[1] = 'MINVALUE' THEN '-infinity' ELSE btrim(m[1], '''')::timestamptz END,
           CASE WHEN m[2] = 'MAXVALUE' THEN 'infinity' ELSE btrim(m[2], '''')::timestamptz END,
           i.inhdetachpending
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \((.*)\) TO \((.*)\)') m
    WHERE i.inhparent = p_parent
$$;

-- Makes the monthly partitions missing from the newest one's end through
-- p_ahead months after the current one (from the current one when there is
-- none). Both tables are keyed by a time the daemon sets (received_at; the
-- tracker's first write, 0008), so no partition below them is ever needed.
-- A new partition is created apart and then attached: ATTACH takes SHARE
-- UPDATE EXCLUSIVE on the parent, which inserts do not wait for (CREATE
-- TABLE ... PARTITION OF would take ACCESS EXCLUSIVE). Returns the
-- partitions made. Never fails on a table left with a month's name (a
-- partition detached by hand, or by a run cut short): the new one takes
-- another name.
CREATE OR REPLACE FUNCTION eps_partitions_create(p_ahead integer) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    v_parent text;
    -- month arithmetic on UTC wall-clock times: timestamptz + interval counts
    -- months in the session's TimeZone, which need not be UTC
    v_end    timestamptz := (date_trunc('month', now() AT TIME ZONE 'UTC')
                             + make_interval(months => p_ahead + 1)) AT TIME ZONE 'UTC';
    v_hi     timestamptz;
    v_next   timestamptz;
BEGIN
    -- --migrate and a replica's tick may meet here: the second finds it done
    PERFORM pg_advisory_xact_lock(hashtext('easypost-sync partitions'), 1);
    FOREACH v_parent IN ARRAY ARRAY['webhook_events', 'shipment_events'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = v_parent::regclass AND relkind = 'p') THEN
            CONTINUE;   -- before migration 0007
        END IF;
        SELECT max(p.hi) INTO v_hi FROM eps_partitions(v_parent::regclass) p;
        v_hi := coalesce(v_hi, date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC');
        WHILE v_hi < v_end LOOP
            v_next := ((v_hi AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
            RETURN NEXT eps_partition_attach(v_parent, v_parent || '_' || to_char(v_hi AT TIME ZONE 'UTC', 'YYYY_MM'),
                                             v_hi, v_next);
            v_hi := v_next;
        END LOOP;
    END LOOP;
END
$$;

-- Creates a table like p_parent and attaches it for [p_from, p_to), from
-- MINVALUE when p_from is NULL. Named p_name, or p_name_2, _3... when a
-- table holds that name already. Returns the name.
DROP FUNCTION IF EXISTS eps_partition_attach(text, text, timestamptz, timestamptz);
CREATE FUNCTION eps_partition_attach(p_parent text, p_name text, p_from timestamptz, p_to timestamptz)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_name text := p_name;
    v_n    integer := 1;
BEGIN
    WHILE to_regclass(quote_ident(v_name)) IS NOT NULL LOOP
        v_n := v_n + 1;
        v_name := p_name || '_' || v_n;
    END LOOP;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
                   ' INCLUDING STORAGE INCLUDING COMPRESSION)', v_name, p_parent);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%L)', p_parent,
                   v_name, coalesce(quote_literal(p_from), 'MINVALUE'), p_to);
    RETURN v_name;
END
$$;

-- One maintenance run per analytics slot, by one replica (a transaction
-- advisory lock elects it, safe behind PgBouncer; the slot's row, kept 30
-- days, keeps a late replica from repeating it): makes partitions 3 months
-- ahead (as --migrate does, DB_PARTITIONS_AHEAD), writes the partitions
-- whose retention is over in the ledger (partition_drops), and returns
-- every ledger entry with what is left to do for it. Days <= 0 keep forever.
--
-- A raw events partition goes once all of it is older than p_event_days
-- and it holds no pending event (queued in projection_queue); one holding a dead letter (failed) only
-- once all of it is older than p_event_days + p_dead_days (p_dead_days
-- <= 0: not until the dead letters are replayed). A history partition goes
-- once all of it is older than p_history_days; the history floor
-- (partition_floor) is raised past it in this transaction, so that the
-- rows written after it commits go to the months kept, and DETACH ...
-- CONCURRENTLY waits out the transactions that read the old floor.
--
-- Actions, each run by the caller as its own statement outside a
-- transaction, in this order: 'detach' (ALTER TABLE ... DETACH PARTITION
-- ... CONCURRENTLY, then DROP TABLE), 'finalize' (DETACH ... FINALIZE, left
-- pending by an earlier run, then DROP TABLE), 'drop' (detached by an
-- earlier run: DROP TABLE). 'created' rows name the partitions made.
-- eps_partitions_settle then forgets the entries whose table is gone.
CREATE OR REPLACE FUNCTION eps_partitions_maintain(p_tick bigint, p_instance text,
                                                   p_event_days integer, p_history_days integer,
                                                   p_dead_days integer)
RETURNS TABLE (parent text, part text, action text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r        record;
    v_keep   boolean;
    v_floor  timestamptz;
    v_made   integer;
    v_todo   text[] := '{}';
    v_raise  boolean := false;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('easypost-sync partitions'), 0)
       OR EXISTS (SELECT 1 FROM partition_maintenance m WHERE m.tick = p_tick) THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT NULL::text, c, 'created' FROM eps_partitions_create(3) c;
    GET DIAGNOSTICS v_made = ROW_COUNT;

    FOR r IN SELECT 'webhook_events' AS parent, p.* FROM eps_partitions('webhook_events') p
             UNION ALL
             SELECT 'shipment_events', p.* FROM eps_partitions('shipment_events') p
             ORDER BY 1, 3 LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM partition_drops d WHERE d.part = r.part::text);
        IF NOT r.detaching THEN
            IF r.parent = 'webhook_events' THEN
                CONTINUE WHEN p_event_days <= 0 OR r.hi > now() - make_interval(days => p_event_days);
                -- queued for the projector (the queue holds only the backlog: read whole)
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM projection_queue q'
                               ' WHERE q.received_at >= $4 AND q.received_at < $2)'
                               ' OR EXISTS (SELECT 1 FROM %s WHERE status = ''failed'' AND ($1 <= 0'
                               ' OR $2 > now() - make_interval(days => $3 + $1)))',
                               r.part)
                INTO v_keep USING p_dead_days, r.hi, p_event_days, r.lo;
                IF v_keep THEN
                    RAISE LOG 'easypost-sync: keeping % past its retention: it holds pending or dead-letter events',
                              r.part;
                    CONTINUE;
                END IF;
            ELSE
                CONTINUE WHEN p_history_days <= 0 OR r.hi > now() - make_interval(days => p_history_days);
                v_raise := true;
            END IF;
        END IF;
        -- written before the detach: a run cut short leaves it for the next
        INSERT INTO partition_drops (part, parent, lo, hi) VALUES (r.part::text, r.parent, r.lo, r.hi);
    END LOOP;
    -- the floor: the lowest history month kept (the current one at least)
    IF v_raise THEN
        SELECT min(p.lo) INTO v_floor FROM eps_partitions('shipment_events') p
        WHERE NOT EXISTS (SELECT 1 FROM partition_drops d WHERE d.part = p.part::text);
        INSERT INTO partition_floor AS f (history) VALUES (v_floor)
        ON CONFLICT (one) DO UPDATE SET history = greatest(f.history, EXCLUDED.history);
    END IF;

    FOR r IN SELECT d.part, d.parent, c.oid AS rel, i.inhdetachpending AS pending
             FROM partition_drops d
             LEFT JOIN pg_class c ON c.oid = to_regclass(quote_ident(d.part))
             LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
             ORDER BY d.parent, d.lo LOOP
        IF r.rel IS NULL THEN
            DELETE FROM partition_drops d WHERE d.part = r.part;
            CONTINUE;
        END IF;
        v_todo := v_todo || r.part;
        RETURN QUERY SELECT r.parent, r.part,
                            CASE WHEN r.pending IS NULL THEN 'drop' WHEN r.pending THEN 'finalize'
                                 ELSE 'detach' END;
    END LOOP;
    INSERT INTO partition_maintenance (tick, instance_id, created, detached)
    VALUES (p_tick, p_instance, v_made, v_todo);
    DELETE FROM partition_maintenance m WHERE m.started_at < now() - interval '30 days';
END
$$;

-- After a run's drops, on any replica (one at a time; a replica that does
-- not get the lock leaves it to the next run): forgets the ledger entries
-- whose table is gone, then the event ids older than the oldest raw events
-- table that still exists (attached, or in the ledger), 100,000 per call,
-- so that an id goes only once its event's table is dropped. Returns the
-- number of history rows whose scan time is absurd (before 2000, or more
-- than 366 days after the row was written: the partial index
-- shipment_events_odd_dates), for the gauge.
CREATE OR REPLACE FUNCTION eps_partitions_settle() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_floor timestamptz;
BEGIN
    IF pg_try_advisory_xact_lock(hashtext('easypost-sync partitions'), 0) THEN
        DELETE FROM partition_drops d WHERE to_regclass(quote_ident(d.part)) IS NULL;
        SELECT least((SELECT min(p.lo) FROM eps_partitions('webhook_events') p),
                     (SELECT min(d.lo) FROM partition_drops d WHERE d.parent = 'webhook_events'))
        INTO v_floor;
        IF v_floor > '-infinity' THEN
            DELETE FROM webhook_event_ids
            WHERE ctid = ANY (ARRAY(SELECT i.ctid FROM webhook_event_ids i
                                    WHERE i.received_at < v_floor LIMIT 100000));
        END IF;
    END IF;
    RETURN (SELECT count(*) FROM shipment_events
            WHERE event_datetime < '2000-01-01 00:00:00+00' OR event_datetime - created_at > interval '366 days');
END
$$;

-- Triggers on webhook_events (0007): a raw event deleted by hand, or the
-- table truncated, takes its dedup key with it.
CREATE OR REPLACE FUNCTION eps_forget_event_id() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhook_event_ids WHERE event_id = OLD.event_id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION eps_forget_event_ids() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE webhook_event_ids;
    RETURN NULL;
END
$$;

-- Sync jobs that ended (done or failed) p_days or more ago go, p_batch at
-- most per call, oldest first (through the primary key, an eps_uuid7 made at
-- creation, which is never after the last update), each call its own short
-- transaction. The first call of an analytics slot (p_tick: the unix second
-- it starts, so slots of different intervals compare) elects one
-- replica (eps_slot_elect, sync_state's sync_jobs_prune_slot); the elected
-- one's further batches pass p_tick NULL (under the same lock, so a batch
-- never meets another replica's).
-- Returns the jobs deleted, NULL when not elected. Days <= 0 keep them.
CREATE OR REPLACE FUNCTION eps_sync_jobs_prune(p_tick bigint, p_days integer, p_batch integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_cut  timestamptz := now() - make_interval(days => greatest(p_days, 0));
    v_n    bigint;
    v_ok   boolean;
BEGIN
    IF p_tick IS NOT NULL THEN
        v_ok := eps_slot_elect('sync_jobs_prune_slot', p_tick);
    ELSE
        v_ok := pg_try_advisory_xact_lock(hashtext('easypost-sync sync_jobs_prune_slot'));
    END IF;
    IF NOT v_ok THEN
        RETURN NULL;
    END IF;
    IF p_days <= 0 THEN
        RETURN 0;
    END IF;
    DELETE FROM sync_jobs
    WHERE id = ANY (ARRAY(
        SELECT j.id FROM sync_jobs j
        WHERE j.id < (lpad(to_hex(floor(extract(epoch FROM v_cut) * 1000)::int8), 12, '0')
                      || repeat('0', 20))::uuid
          AND j.status IN ('done', 'failed') AND j.updated_at < v_cut
        ORDER BY j.id LIMIT p_batch));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;
