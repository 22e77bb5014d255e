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
-- p_ahead months after the current one, and (shipment_events, whose rows
-- carry the carrier's time) a partition from MINVALUE up to the oldest one
-- when retention has dropped the bottom. A new partition is created apart
-- and then attached: ATTACH takes SHARE UPDATE EXCLUSIVE on the parent,
-- which inserts do not wait for (CREATE TABLE ... PARTITION OF would take
-- ACCESS EXCLUSIVE). Returns the partitions made.
CREATE OR REPLACE FUNCTION eps_partitions_create(p_ahead integer) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    v_parent text;
    v_end    timestamptz := (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
                            + make_interval(months => p_ahead + 1);
    v_lo     timestamptz;
    v_hi     timestamptz;
    v_name   text;
BEGIN
    -- --migrate and a replica's tick may meet here: the second finds it done
    PERFORM pg_advisory_xact_lock(hashtext('easypost-sync partitions'), 1);
    FOREACH v_parent IN ARRAY ARRAY['webhook_events', 'shipment_events'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = v_parent::regclass AND relkind = 'p') THEN
            CONTINUE;   -- before migration 0007
        END IF;
        SELECT min(p.lo), max(p.hi) INTO v_lo, v_hi FROM eps_partitions(v_parent::regclass) p;
        v_hi := coalesce(v_hi, date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC');
        WHILE v_hi < v_end LOOP
            v_name := v_parent || '_' || to_char(v_hi AT TIME ZONE 'UTC', 'YYYY_MM');
            PERFORM eps_partition_attach(v_parent, v_name, v_hi, v_hi + interval '1 month');
            RETURN NEXT v_name;
            v_hi := v_hi + interval '1 month';
        END LOOP;
        IF v_parent = 'shipment_events' AND v_lo > '-infinity' THEN
            v_name := v_parent || '_upto_' || to_char(v_lo AT TIME ZONE 'UTC', 'YYYY_MM');
            PERFORM eps_partition_attach(v_parent, v_name, NULL, v_lo);
            RETURN NEXT v_name;
        END IF;
    END LOOP;
END
$$;

-- Creates p_name like p_parent and attaches it for [p_from, p_to), from
-- MINVALUE when p_from is NULL.
CREATE OR REPLACE FUNCTION eps_partition_attach(p_parent text, p_name text, p_from timestamptz,
                                                p_to timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
                   ' INCLUDING STORAGE INCLUDING COMPRESSION)', p_name, p_parent);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%L)', p_parent,
                   p_name, coalesce(quote_literal(p_from), 'MINVALUE'), p_to);
END
$$;

-- One maintenance run per analytics slot, by one replica (a transaction
-- advisory lock elects it, safe behind PgBouncer; the slot's row, kept 30
-- days, keeps a late replica from repeating it): makes partitions 3 months
-- ahead (as --migrate does, DB_PARTITIONS_AHEAD), picks the partitions
-- whose retention is over, and forgets the event ids older than the oldest
-- kept raw event (100,000 per run). Days <= 0 keep forever.
--
-- A raw events partition goes once all of it is older than p_event_days
-- and it holds no pending event and no failed one younger than
-- p_dead_days; a history partition once all of it is older than
-- p_history_days. The lowest history partition (MINVALUE) goes only when
-- it holds rows, and is made again empty by eps_partitions_create.
--
-- Returns what was made ('created') and what the caller must detach, each
-- as its own statement outside a transaction: ALTER TABLE ... DETACH
-- PARTITION ... CONCURRENTLY ('detach') or FINALIZE ('finalize', left
-- unfinished by an earlier run), then DROP TABLE.
CREATE OR REPLACE FUNCTION eps_partitions_maintain(p_tick bigint, p_instance text,
                                                   p_event_days integer, p_history_days integer,
                                                   p_dead_days integer)
RETURNS TABLE (parent text, part text, action text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r        record;
    v_drop   text[] := '{}';
    v_keep   boolean;
    v_floor  timestamptz;
    v_made   integer;
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
        IF r.detaching THEN
            v_drop := v_drop || r.part::text;
            RETURN QUERY SELECT r.parent, r.part::text, 'finalize';
            CONTINUE;
        END IF;
        IF r.parent = 'webhook_events' THEN
            CONTINUE WHEN p_event_days <= 0 OR r.hi > now() - make_interval(days => p_event_days);
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE status = ''pending'')'
                           ' OR EXISTS (SELECT 1 FROM %s WHERE status = ''failed'' AND (%s <= 0'
                           ' OR received_at > now() - make_interval(days => %s)))',
                           r.part, r.part, p_dead_days, p_dead_days) INTO v_keep;
            IF v_keep THEN
                RAISE LOG 'easypost-sync: keeping % past its retention: it holds pending or dead-letter events',
                          r.part;
                CONTINUE;
            END IF;
        ELSE
            CONTINUE WHEN p_history_days <= 0 OR r.hi > now() - make_interval(days => p_history_days);
            IF r.lo = '-infinity' THEN
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', r.part) INTO v_keep;
                CONTINUE WHEN NOT v_keep;
            END IF;
        END IF;
        v_drop := v_drop || r.part::text;
        RETURN QUERY SELECT r.parent, r.part::text, 'detach';
    END LOOP;

    -- the dedup key lives as long as the raw events it guards
    SELECT min(p.lo) INTO v_floor FROM eps_partitions('webhook_events') p
    WHERE p.part::text <> ALL (v_drop);
    IF v_floor > '-infinity' THEN
        DELETE FROM webhook_event_ids
        WHERE ctid = ANY (ARRAY(SELECT i.ctid FROM webhook_event_ids i
                                WHERE i.received_at < v_floor LIMIT 100000));
    END IF;
    INSERT INTO partition_maintenance (tick, instance_id, created, detached)
    VALUES (p_tick, p_instance, v_made, v_drop);
    DELETE FROM partition_maintenance m WHERE m.started_at < now() - interval '30 days';
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
