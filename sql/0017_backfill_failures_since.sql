-- 0017: when the backfill first failed to recover an event. A failure of the
-- moment (no answer, 429, 5xx: EasyPost or the path to it in trouble) sets
-- the event aside only once it has failed so for a day (eps_backfill_failed):
-- an incident longer than sync_max_attempts runs must not leave an event
-- stored from its list item, without the payload EasyPost still holds.
ALTER TABLE backfill_failures ADD COLUMN first_at timestamptz NOT NULL DEFAULT now();
