-- Elects one replica per webhook check slot (p_slot: the unix second the slot
-- starts; eps_slot_elect, the slot kept in sync_state as webhook_check_slot).
-- Every caller also gets what the last check recorded (NULL before any): the
-- count of disabled webhooks and since when the first was disabled. A
-- replica that was not elected reports them; the elected one starts from
-- them, so it sees a webhook re-enabled since, whichever replica (or an
-- earlier life of this one, before a restart) made that check.
DROP FUNCTION IF EXISTS eps_webhook_check_elect(bigint);
CREATE FUNCTION eps_webhook_check_elect(p_slot bigint, OUT elected boolean, OUT disabled integer,
                                        OUT since text)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT s.value::integer INTO disabled FROM sync_state s WHERE s.key = 'webhook_disabled';
    SELECT s.value INTO since FROM sync_state s WHERE s.key = 'webhook_disabled_since';
    elected := eps_slot_elect('webhook_check_slot', p_slot);
END
$$;

-- What the elected replica found: the disabled webhooks left after its check,
-- and the earliest disabled_at seen while any stays disabled (EasyPost's UTC
-- ISO 8601 text, whose text order is time order); cleared once none is.
DROP FUNCTION IF EXISTS eps_webhook_check_record(integer);
CREATE FUNCTION eps_webhook_check_record(p_disabled integer, p_since text DEFAULT NULL)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO sync_state (key, value) VALUES ('webhook_disabled', p_disabled::text)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
    DELETE FROM sync_state WHERE key = 'webhook_disabled_since' AND p_disabled = 0;
    INSERT INTO sync_state AS s (key, value)
    SELECT 'webhook_disabled_since', p_since WHERE p_disabled > 0 AND p_since IS NOT NULL
    ON CONFLICT (key) DO UPDATE SET value = least(s.value, EXCLUDED.value), updated_at = now();
$$;
