-- Refreshes one view for one wall-clock slot, at most once across replicas:
-- a transaction-level advisory lock (safe behind PgBouncer) elects one, the
-- unique (view, tick) record keeps a late replica from repeating the slot.
-- p_tick names the slot by the unix second it starts (a daemon before this
-- one passed the slot's number, epoch / interval, which a new interval could
-- meet again). Records older than 30 days are deleted as new ones come.
-- The lock is waited for, up to 5 s: its holder may be a replica still
-- refreshing the view for the slot before, and giving up at once would
-- leave this slot without the view. A failure is recorded, not raised.
-- No parallel workers: a refresh reads the whole history, and with workers
-- it takes every core PostgreSQL has for a second or more while webhooks
-- wait; on one core it takes about as long and leaves the others to ingest
-- (bench/README.md, "the analytics refresh and the webhooks").
CREATE OR REPLACE FUNCTION eps_refresh_view(p_view text, p_tick bigint, p_instance text,
                                 OUT outcome text, OUT rows bigint, OUT duration_ms double precision,
                                 OUT error text)
LANGUAGE plpgsql SET max_parallel_workers_per_gather = 0 AS $$
DECLARE
    t0 timestamptz;
    lt text := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext('easypost-sync refresh'), hashtext(p_view));
    EXCEPTION WHEN lock_not_available THEN
        outcome := 'busy';
        RETURN;
    END;
    PERFORM set_config('lock_timeout', lt, true);
    t0 := clock_timestamp();
    IF EXISTS (SELECT 1 FROM analytics_refreshes r WHERE r.view_name = p_view AND r.tick = p_tick) THEN
        outcome := 'skipped';
        RETURN;
    END IF;
    BEGIN
        EXECUTE format('REFRESH MATERIALIZED VIEW CONCURRENTLY %I', p_view);
        EXECUTE format('SELECT count(*) FROM %I', p_view) INTO rows;
        outcome := 'ok';
    EXCEPTION WHEN others THEN
        outcome := 'failed';
        error := SQLSTATE || ': ' || SQLERRM;
    END;
    duration_ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
    INSERT INTO analytics_refreshes (view_name, tick, started_at, duration_ms, rows, outcome, error, instance_id)
    VALUES (p_view, p_tick, t0, duration_ms, rows, outcome, error, p_instance);
    DELETE FROM analytics_refreshes r WHERE r.view_name = p_view AND r.started_at < now() - interval '30 days';
END
$$;
