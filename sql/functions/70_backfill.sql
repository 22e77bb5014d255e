-- Elects one replica per backfill slot (p_slot: the unix second the slot
-- starts; eps_slot_elect, the slot kept in sync_state as backfill_slot).
-- Nothing is held during the run: a replica that dies mid-run blocks no
-- later slot. p_slot NULL is a run asked for (backfill_now): always elected.
-- The elected one also gets the cursor to list after.
CREATE OR REPLACE FUNCTION eps_backfill_elect(p_slot bigint, OUT elected boolean, OUT cursor text)
LANGUAGE plpgsql AS $$
BEGIN
    elected := p_slot IS NULL OR eps_slot_elect('backfill_slot', p_slot);
    IF elected THEN
        SELECT s.value INTO cursor FROM sync_state s WHERE s.key = 'backfill_cursor';
    END IF;
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
