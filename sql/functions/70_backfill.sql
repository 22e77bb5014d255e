-- The backfill's election, lease and fenced writes.
--
-- A run is elected per wall-clock slot (p_slot: the unix second the slot
-- starts; eps_slot_elect, the slot kept in sync_state as backfill_slot) and
-- only while no other run holds the lease (backfill_lease): a run that
-- outlasts its slot keeps the later slots from starting a second run. The
-- lease is renewed while the run runs and released when it ends; a replica
-- that dies mid-run blocks later slots only until its lease runs out. Every
-- write of a run names its token: once a lease lapsed or another run took it,
-- the old run's writes change nothing.

DROP FUNCTION IF EXISTS eps_backfill_elect(bigint);

-- p_slot NULL is a run asked for (backfill_now): elected whenever the lease
-- is free. The elected run gets its token, the cursor (the oldest event not
-- known settled, listed again) and the sweep left unfinished by a run that
-- stopped at its page cap (top: the cursor once the sweep ends; next: where
-- the listing goes on, before_id).
CREATE OR REPLACE FUNCTION eps_backfill_elect(p_slot bigint, p_holder text, p_lease_s integer,
                                              OUT elected boolean, OUT token bigint, OUT cursor text,
                                              OUT sweep_top text, OUT sweep_next text)
LANGUAGE plpgsql AS $$
DECLARE
    l backfill_lease;
BEGIN
    elected := false;
    SELECT * INTO l FROM backfill_lease FOR UPDATE;
    IF NOT FOUND OR (l.locked_until IS NOT NULL AND l.locked_until > now()) THEN
        RETURN;
    END IF;
    IF p_slot IS NOT NULL AND NOT eps_slot_elect('backfill_slot', p_slot) THEN
        RETURN;
    END IF;
    UPDATE backfill_lease b SET token = b.token + 1, holder = p_holder,
           locked_until = now() + make_interval(secs => p_lease_s)
    RETURNING b.token INTO token;
    elected := true;
    SELECT s.value INTO cursor FROM sync_state s WHERE s.key = 'backfill_cursor';
    SELECT s.value::json ->> 'top', s.value::json ->> 'next' INTO sweep_top, sweep_next
    FROM sync_state s WHERE s.key = 'backfill_sweep';
END
$$;

-- True while the lease is still p_token's and has not run out.
CREATE OR REPLACE FUNCTION eps_backfill_holds(p_token bigint) RETURNS boolean
LANGUAGE sql AS $$
    SELECT EXISTS (SELECT 1 FROM backfill_lease
                   WHERE token = p_token AND locked_until > now() FOR UPDATE)
$$;

-- Extends the run's lease; false once it lapsed or another run holds it.
CREATE OR REPLACE FUNCTION eps_backfill_renew(p_token bigint, p_lease_s integer) RETURNS boolean
LANGUAGE sql AS $$
    WITH u AS (UPDATE backfill_lease SET locked_until = now() + make_interval(secs => p_lease_s)
               WHERE token = p_token AND locked_until > now() RETURNING 1)
    SELECT count(*) = 1 FROM u
$$;

-- Hands the lease back (a run stopped by a shutdown), if still p_token's.
CREATE OR REPLACE FUNCTION eps_backfill_release(p_token bigint) RETURNS void
LANGUAGE sql AS $$
    UPDATE backfill_lease SET locked_until = NULL WHERE token = p_token
$$;

-- One more failed attempt at recovering event p_event_id (a fetch that
-- failed, a body that is not usable). p_status is the fetch's HTTP status
-- (0: no answer; NULL: not a fetch's failure). Returns the attempts counted
-- so far and whether the event may still wait (eps_sync_outlasts: the
-- failure was of the moment, no answer, 429 or 5xx, and the first one is
-- less than a day old), or a NULL row when the lease is no longer p_token's
-- (nothing counted).
DROP FUNCTION IF EXISTS eps_backfill_failed(bigint, text, text);
DROP FUNCTION IF EXISTS eps_backfill_failed(bigint, text, text, boolean);
CREATE FUNCTION eps_backfill_failed(p_token bigint, p_event_id text, p_error text, p_status integer,
                                    OUT attempts integer, OUT may_wait boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_first timestamptz;
BEGIN
    IF NOT eps_backfill_holds(p_token) THEN
        RETURN;
    END IF;
    INSERT INTO backfill_failures AS f (event_id, attempts, last_error)
    VALUES (p_event_id, 1, p_error)
    ON CONFLICT (event_id) DO UPDATE SET attempts = f.attempts + 1, last_error = EXCLUDED.last_error,
                                         updated_at = now()
    RETURNING f.attempts, f.first_at INTO attempts, v_first;
    may_wait := coalesce(eps_sync_outlasts(p_status, v_first), false);
END
$$;

-- Saves where the next run starts: p_cursor (NULL: unchanged) and the
-- sweep (p_top NULL: none). Counts of events stored since are dropped.
-- False, and nothing written, when the lease is no longer p_token's.
CREATE OR REPLACE FUNCTION eps_backfill_save(p_token bigint, p_cursor text, p_top text, p_next text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT eps_backfill_holds(p_token) THEN
        RETURN false;
    END IF;
    IF p_cursor IS NOT NULL THEN
        INSERT INTO sync_state (key, value) VALUES ('backfill_cursor', p_cursor)
        ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
    END IF;
    IF p_top IS NULL THEN
        DELETE FROM sync_state WHERE key = 'backfill_sweep';
    ELSE
        INSERT INTO sync_state (key, value)
        VALUES ('backfill_sweep', json_build_object('top', p_top, 'next', p_next)::text)
        ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
    END IF;
    DELETE FROM backfill_failures f
    WHERE EXISTS (SELECT 1 FROM webhook_events w WHERE w.event_id = f.event_id);
    RETURN true;
END
$$;

-- How a run ended (p_outcome 'completed' or 'failed'), for --status: the
-- last run, and the time of the last completed one.
CREATE OR REPLACE FUNCTION eps_backfill_record(p_outcome text, p_recovered bigint, p_error text)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO sync_state (key, value)
    VALUES ('backfill_last_run', json_build_object('outcome', p_outcome, 'recovered', p_recovered,
                                                   'error', p_error)::text)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
    INSERT INTO sync_state (key, value)
    SELECT 'backfill_last_completed', p_recovered::text WHERE p_outcome = 'completed'
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
$$;

-- A run's end: recorded (eps_backfill_record), then the lease released so
-- the next slot may run. Nothing is written for a lease no longer held.
CREATE OR REPLACE FUNCTION eps_backfill_end(p_token bigint, p_outcome text, p_recovered bigint,
                                            p_error text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT eps_backfill_holds(p_token) THEN
        RETURN;
    END IF;
    PERFORM eps_backfill_record(p_outcome, p_recovered, p_error);
    UPDATE backfill_lease SET locked_until = NULL WHERE token = p_token;
END
$$;
