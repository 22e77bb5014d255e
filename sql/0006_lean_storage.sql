-- 0006: fewer copies and index entries per event, and what newer-wins and
-- the skipping of known tracking details need.
--
-- * webhook_events keeps the body once: `raw`, byte for byte. Its JSON form
--   is the view webhook_event_bodies (raw::jsonb; every row whose body_error
--   is NULL was parsed by PostgreSQL when it was stored, so the cast holds).
-- * shipment_events is keyed by its natural key alone (tracker, time, status,
--   message): no uuid key, no index on shipment_id (a shipment's events are
--   reached through trackers.shipment_id, then the natural key's prefix).
-- * trackers and shipments remember which snapshot they show: its newest
--   tracking detail time and its number of details. Ties on updated_at are
--   broken by those, and a later snapshot only inserts the details after the
--   ones the tracker row already shows.

ALTER TABLE webhook_events DROP COLUMN body;
-- a copy that holds less than the delivery (backfill's list item, without
-- its result): the full copy replaces it when it comes
ALTER TABLE webhook_events ADD COLUMN partial boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN webhook_events.body_error IS
    'why raw is not JSON PostgreSQL can hold (NULL: raw::jsonb works)';

CREATE VIEW webhook_event_bodies AS
SELECT id, event_id, description, mode, object_id, source, status, error, event_created_at,
       received_at, processed_at, partial,
       CASE WHEN body_error IS NULL THEN raw::jsonb END AS body
FROM webhook_events;

ALTER TABLE shipment_events DROP CONSTRAINT shipment_events_pkey;
ALTER TABLE shipment_events DROP COLUMN id;
DROP INDEX shipment_events_shipment;

ALTER TABLE trackers ADD COLUMN newest_detail_at timestamptz,  -- of the snapshot shown
                     ADD COLUMN details_count    integer;      -- tracking details in it
ALTER TABLE shipments ADD COLUMN status_detail_at timestamptz, -- same, for `status`
                      ADD COLUMN status_details   integer;

-- One tracker snapshot inside a batch (see eps_project_trackers).
CREATE TYPE eps_snapshot AS (
    ord        integer,     -- position in the batch (arrival order)
    event      uuid,        -- webhook_events.id; NULL for an object the sync worker fetched
    trk        text,        -- trk_
    shp        text,        -- shp_ or NULL
    updated_at timestamptz, -- the tracker's updated_at (else the event's)
    newest_at  timestamptz, -- its newest tracking detail's datetime
    details    integer,     -- elements in tracking_details
    known      integer,     -- leading details the stored tracker row already shows
    r          jsonb        -- the Tracker object
);

-- Nothing looks trackers up by (carrier, status): the status funnel reads
-- the whole table. One index less on every tracker write.
DROP INDEX trackers_carrier_status;

-- A tracker update rewrites its tracker and shipment rows. Room on each page
-- and no always-changing column in an index let most of those updates be HOT
-- (no new index entries): updated_at leaves the covering index, which keeps
-- the columns a lookup by tracking code reads.
DROP INDEX shipments_tracking_code;
CREATE INDEX shipments_tracking_code ON shipments (tracking_code) INCLUDE (status, carrier, service);
ALTER TABLE shipments SET (fillfactor = 80);
ALTER TABLE trackers SET (fillfactor = 80);

-- Trackers whose shipment row is not there yet, by the shp_ id they name:
-- the sync worker links them when it fetches that shipment, which without
-- this index scans every tracker. Nearly empty: the projection makes the
-- stub shipment before the tracker.
CREATE INDEX trackers_unlinked ON trackers (shipment_easypost_id)
    WHERE shipment_id IS NULL AND shipment_easypost_id IS NOT NULL;
