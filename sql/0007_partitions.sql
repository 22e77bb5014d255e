-- 0007: webhook_events and shipment_events partitioned by month, so that
-- retention drops whole partitions instead of deleting rows.
--
-- * webhook_events by received_at (the server's now(): an event always
--   lands in the current month). A unique index on a partitioned table must
--   hold the partition key, so event_id can no longer be unique there: the
--   dedup key moves to webhook_event_ids, one narrow row per event id, kept
--   as long as the events' partitions (eps_partitions_maintain).
-- * shipment_events by event_datetime, which its natural key already holds:
--   the key stays exact across partitions.
-- * No DEFAULT partition (it would block creating a partition whose rows it
--   holds). Partitions are made ahead by eps_partitions_create, called by
--   --migrate and by the elected replica at each analytics tick.
--
-- Converting an existing database copies no event: each table is renamed
-- and attached as the partition from MINVALUE to the end of the newest
-- month it holds (one scan to check the bound), its unique index is
-- attached as it is, and the event ids are copied into webhook_event_ids.
-- Every statement here runs in one transaction holding ACCESS EXCLUSIVE on
-- both tables: ingest waits for it (README, "Storage").

DROP VIEW webhook_event_bodies;
DROP MATERIALIZED VIEW analytics_carrier_performance;

-- the old tables become the first partition
ALTER TABLE webhook_events RENAME TO webhook_events_before;
ALTER TABLE webhook_events_before DROP CONSTRAINT webhook_events_pkey;
ALTER TABLE webhook_events_before DROP CONSTRAINT webhook_events_event_id_key;
ALTER INDEX webhook_events_object RENAME TO webhook_events_before_object;
ALTER INDEX webhook_events_failed RENAME TO webhook_events_before_failed;
ALTER INDEX webhook_events_pending RENAME TO webhook_events_before_pending;
ALTER TABLE shipment_events RENAME TO shipment_events_before;
ALTER TABLE shipment_events_before RENAME CONSTRAINT shipment_events_once TO shipment_events_before_once;

CREATE TABLE webhook_events (
    id               uuid        NOT NULL,                 -- UUID v7 made by the daemon
    event_id         text        NOT NULL,                 -- EasyPost evt_ id (unique: webhook_event_ids)
    description      text        NOT NULL,
    mode             text,
    object_id        text,
    raw              text        COMPRESSION lz4 NOT NULL, -- the body byte for byte as received
    body_error       text,
    source           text        NOT NULL DEFAULT 'webhook'
                                 CONSTRAINT webhook_events_source_check
                                 CHECK (source IN ('webhook', 'backfill')),
    status           text        NOT NULL DEFAULT 'stored'
                                 CONSTRAINT webhook_events_status_check
                                 CHECK (status IN ('pending', 'stored', 'projected', 'failed')),
    error            text,
    event_created_at timestamptz,
    received_at      timestamptz NOT NULL DEFAULT now(),   -- the partition key
    processed_at     timestamptz NOT NULL DEFAULT now(),
    partial          boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
COMMENT ON COLUMN webhook_events.body_error IS
    'why raw is not JSON PostgreSQL can hold (NULL: raw::jsonb works)';
CREATE INDEX webhook_events_event_id ON webhook_events (event_id);
CREATE INDEX webhook_events_object ON webhook_events (object_id);
CREATE INDEX webhook_events_failed ON webhook_events (received_at) WHERE status = 'failed';
CREATE INDEX webhook_events_pending ON webhook_events (received_at) WHERE status = 'pending';

-- The dedup key: an event id is stored once, whatever its partition. BRIN
-- on received_at (rows arrive in time order) lets retention find the old
-- ones for nearly nothing per insert.
CREATE TABLE webhook_event_ids (
    event_id    text        PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_event_ids_received ON webhook_event_ids USING brin (received_at);

CREATE TABLE shipment_events (
    tracker_id        uuid        NOT NULL,
    shipment_id       uuid,
    webhook_event_id  uuid,
    status            text        NOT NULL DEFAULT '',
    status_detail     text,
    message           text        NOT NULL DEFAULT '',
    description       text,
    carrier_code      text,
    source            text,
    event_datetime    timestamptz NOT NULL,                 -- the partition key
    tracking_location jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT shipment_events_once UNIQUE (tracker_id, event_datetime, status, message)
) PARTITION BY RANGE (event_datetime);

-- One row per maintenance slot, across replicas (eps_partitions_maintain).
CREATE TABLE partition_maintenance (
    tick        bigint      PRIMARY KEY,   -- the analytics slot
    instance_id text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    created     integer     NOT NULL DEFAULT 0,
    detached    text[]
);

-- A table with rows becomes the partition from MINVALUE to the end of its
-- newest month (at least the current one); an empty one is dropped, and
-- eps_partitions_create makes the months from the current one.
DO $$
DECLARE
    v_month timestamptz := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    v_hi    timestamptz;
BEGIN
    SELECT greatest(v_month, date_trunc('month', max(received_at) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
           + interval '1 month'
    INTO v_hi FROM webhook_events_before HAVING count(*) > 0;
    IF v_hi IS NULL THEN
        DROP TABLE webhook_events_before;
    ELSE
        EXECUTE format('ALTER TABLE webhook_events ATTACH PARTITION webhook_events_before'
                       ' FOR VALUES FROM (MINVALUE) TO (%L)', v_hi);
        INSERT INTO webhook_event_ids (event_id, received_at)
        SELECT event_id, received_at FROM webhook_events_before;
    END IF;
    v_hi := NULL;
    SELECT greatest(v_month, date_trunc('month', max(event_datetime) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
           + interval '1 month'
    INTO v_hi FROM shipment_events_before HAVING count(*) > 0;
    IF v_hi IS NULL THEN
        DROP TABLE shipment_events_before;
    ELSE
        EXECUTE format('ALTER TABLE shipment_events ATTACH PARTITION shipment_events_before'
                       ' FOR VALUES FROM (MINVALUE) TO (%L)', v_hi);
    END IF;
END
$$;
SELECT eps_partitions_create(3);

CREATE VIEW webhook_event_bodies AS
SELECT id, event_id, description, mode, object_id, source, status, error, event_created_at,
       received_at, processed_at, partial,
       CASE WHEN body_error IS NULL THEN raw::jsonb END AS body
FROM webhook_events;

-- as in 0003, now over the partitioned table
CREATE MATERIALIZED VIEW analytics_carrier_performance AS
WITH per_tracker AS (
    SELECT t.id,
           coalesce(t.carrier, 'unknown')                                    AS carrier,
           coalesce(s.service, 'unknown')                                    AS service,
           t.est_delivery_date,
           min(e.event_datetime)                                             AS first_scan,
           min(e.event_datetime) FILTER (WHERE e.status = 'delivered')       AS delivered_at,
           count(*) FILTER (WHERE e.status IN ('failure', 'return_to_sender', 'error')) AS exceptions
    FROM trackers t
    JOIN shipment_events e ON e.tracker_id = t.id
    LEFT JOIN shipments s ON s.id = t.shipment_id
    GROUP BY t.id, t.carrier, s.service, t.est_delivery_date
)
SELECT carrier, service,
       (delivered_at AT TIME ZONE 'UTC')::date                               AS day,
       count(*)                                                              AS delivered,
       round(avg(extract(epoch FROM delivered_at - first_scan) / 86400)::numeric, 2) AS avg_days_to_deliver,
       round(avg(CASE WHEN est_delivery_date IS NULL THEN NULL
                      WHEN delivered_at::date <= est_delivery_date::date THEN 1.0 ELSE 0.0 END), 4) AS on_time_rate,
       sum(exceptions)                                                       AS exceptions
FROM per_tracker
WHERE delivered_at IS NOT NULL
GROUP BY 1, 2, 3;
CREATE UNIQUE INDEX analytics_carrier_performance_key ON analytics_carrier_performance (carrier, service, day);

-- Deleting a raw event by hand forgets its id too, as when event_id was
-- unique on webhook_events: a later delivery of it is stored again.
-- (Retention drops partitions, which fires no trigger; it trims the ids.)
CREATE TRIGGER webhook_events_forget AFTER DELETE ON webhook_events
    FOR EACH ROW EXECUTE FUNCTION eps_forget_event_id();
CREATE TRIGGER webhook_events_forget_all AFTER TRUNCATE ON webhook_events
    FOR EACH STATEMENT EXECUTE FUNCTION eps_forget_event_ids();
