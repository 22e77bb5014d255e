-- Elects one replica per webhook check slot (p_slot: the unix second the slot
-- starts; eps_slot_elect, the slot kept in sync_state as webhook_check_slot).
-- Every caller also gets the count of disabled webhooks the last check
-- recorded (NULL before any), so a replica that was not elected reports it.
CREATE OR REPLACE FUNCTION eps_webhook_check_elect(p_slot bigint, OUT elected boolean,
                                                   OUT disabled integer)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT s.value::integer INTO disabled FROM sync_state s WHERE s.key = 'webhook_disabled';
    elected := eps_slot_elect('webhook_check_slot', p_slot);
END
$$;

-- What the elected replica found: the disabled webhooks left after its check.
CREATE OR REPLACE FUNCTION eps_webhook_check_record(p_disabled integer)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO sync_state (key, value) VALUES ('webhook_disabled', p_disabled::text)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
$$;
