-- Elects one replica per webhook check slot (p_slot: the unix second the slot
-- starts, so slots of different intervals compare): a transaction-level
-- advisory lock (safe behind PgBouncer) lets one replica in at a time, and
-- the slot kept in sync_state keeps a late replica from checking it again.
-- Every caller also gets the count of disabled webhooks the last check
-- recorded (NULL before any), so a replica that was not elected reports it.
CREATE OR REPLACE FUNCTION eps_webhook_check_elect(p_slot bigint, OUT elected boolean,
                                                   OUT disabled integer)
LANGUAGE plpgsql AS $$
DECLARE
    last_slot bigint;
BEGIN
    elected := false;
    SELECT s.value::integer INTO disabled FROM sync_state s WHERE s.key = 'webhook_disabled';
    IF NOT pg_try_advisory_xact_lock(hashtext('easypost-sync webhook check')) THEN
        RETURN;
    END IF;
    SELECT s.value::bigint INTO last_slot FROM sync_state s WHERE s.key = 'webhook_check_slot';
    IF last_slot IS NOT NULL AND last_slot >= p_slot THEN
        RETURN;
    END IF;
    INSERT INTO sync_state (key, value) VALUES ('webhook_check_slot', p_slot::text)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
    elected := true;
END
$$;

-- What the elected replica found: the disabled webhooks left after its check.
CREATE OR REPLACE FUNCTION eps_webhook_check_record(p_disabled integer)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO sync_state (key, value) VALUES ('webhook_disabled', p_disabled::text)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
$$;
