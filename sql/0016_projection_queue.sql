-- 0016: the deferred projector's queue. A deferred tracker event is stored
-- with its row in webhook_events and its key here, in the same transaction;
-- the projector takes keys from here (SKIP LOCKED) and deletes them when it
-- commits: by id for the snapshots the daemon typed when it received them,
-- oldest id first (UUID v7: time-ordered) for the others, whose raw rows it
-- reads by their whole key (received_at names the partition). A projected event's row is
-- written once: before, the projector rewrote every row it projected to mark
-- it (a new version of the whole row, raw body and all, and an entry in each
-- of its indexes: the status is in the partial indexes' predicates, so the
-- update could not be HOT). The row's status is 'projected' from the start;
-- the projector updates it only to record a failure ('failed'). Events stored
-- 'pending' before this migration are queued here and marked 'projected'
-- when the projector takes them.
CREATE TABLE projection_queue (
    id          uuid        PRIMARY KEY,
    received_at timestamptz NOT NULL
);
INSERT INTO projection_queue (received_at, id)
SELECT received_at, id FROM webhook_events WHERE status = 'pending';
-- the queue finds pending events now
DROP INDEX webhook_events_pending;
