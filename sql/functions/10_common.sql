-- Helpers every other function uses. (Files in functions/ are applied by
-- --migrate before the numbered migrations whenever their text changes, with
-- check_function_bodies off; each function has this one definition.)

-- UUID v7 (RFC 9562) for rows made inside PostgreSQL: the ms timestamp over
-- the first 48 bits of a random v4, version bits turned from 4 into 7.
CREATE OR REPLACE FUNCTION eps_uuid7() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
                  substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                  FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

-- ISO 8601 text -> timestamptz; NULL for NULL, empty or non-ISO text.
-- EasyPost's own form (2024-05-01T12:00:00Z) takes the LIKE branch, several
-- times cheaper than the regular expression; it runs once per tracking
-- detail. A plain SQL expression, STABLE like the cast it makes (TimeZone),
-- so the planner inlines it instead of calling a function per row. Text of
-- ISO shape that is no date (2024-13-45) raises, as the cast does.
CREATE OR REPLACE FUNCTION eps_ts(p text) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p LIKE '____-__-__T__:__:__Z' THEN p::timestamptz
                WHEN p ~ '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$'
                THEN p::timestamptz END
$$;

-- numeric from an EasyPost number or money string ("6.07"); NULL otherwise
CREATE OR REPLACE FUNCTION eps_num(v jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'number' THEN (v #>> '{}')::numeric
                WHEN jsonb_typeof(v) = 'string' AND (v #>> '{}') ~ '^-?\d+(\.\d+)?$' THEN (v #>> '{}')::numeric
           END
$$;

-- Elects the caller for wall-clock slot p_slot (a unix second, so slots of
-- different intervals compare) of the task whose slot sync_state keeps
-- under p_key: a transaction-level advisory lock (safe behind PgBouncer)
-- lets one replica in at a time, and the slot recorded keeps a late one from
-- taking it again. Nothing outlives the transaction: a replica that dies
-- after its election blocks no later slot.
CREATE OR REPLACE FUNCTION eps_slot_elect(p_key text, p_slot bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    last_slot bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('easypost-sync ' || p_key)) THEN
        RETURN false;
    END IF;
    SELECT s.value::bigint INTO last_slot FROM sync_state s WHERE s.key = p_key;
    IF last_slot >= p_slot THEN
        RETURN false;
    END IF;
    INSERT INTO sync_state (key, value) VALUES (p_key, p_slot::text)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
    RETURN true;
END
$$;
