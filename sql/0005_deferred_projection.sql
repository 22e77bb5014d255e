-- 0005: deferred projection (projection = deferred): the webhook's
-- transaction stores the raw event as 'pending' and the daemon's projector
-- projects pending events right after, in small batches, through the same
-- projection. The acknowledgement then waits for one row, not for
-- every row the projection writes.

ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_status_check;
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_status_check
    CHECK (status IN ('pending', 'stored', 'projected', 'failed'));
CREATE INDEX webhook_events_pending ON webhook_events (received_at) WHERE status = 'pending';

