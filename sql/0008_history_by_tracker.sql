-- 0008: shipment_events partitioned by a time the daemon sets, never by a
-- carrier's: tracker_at, the tracker row's first write (trackers.created_at,
-- never updated), raised to the history floor once retention has dropped the
-- tracker's month. A carrier's scan time (event_datetime) is stored as sent,
-- whatever it is (1970, 2099), and no longer decides where the row goes:
-- the partition of every new row exists by construction.
--
-- * The unique key becomes (tracker_id, tracker_at, event_datetime, status,
--   message): a tracker's rows all carry one tracker_at, so dedup stays
--   exact and the probe prunes to one partition.
-- * partition_floor holds the lowest month retention keeps; the projection
--   writes greatest(trackers.created_at, floor). The upkeep raises it (and
--   commits) before it detaches the months below it.
-- * partition_drops is the upkeep's ledger: a partition is written there
--   before its DETACH, and every run finishes the entries an earlier run
--   left (detach, finalize, drop).
-- * A scan dated before 2000 or more than 366 days after the row was written
--   is counted through a partial index (easypost_sync_history_odd_dates).
--
-- Converting an existing database copies the history into the new table
-- (tracker_at from trackers) and drops the old one: it holds ACCESS
-- EXCLUSIVE on shipment_events and analytics_carrier_performance for the
-- length of the copy (README, "Partitions and retention").

DROP MATERIALIZED VIEW analytics_carrier_performance;

ALTER TABLE shipment_events RENAME TO shipment_events_0007;
ALTER TABLE shipment_events_0007 RENAME CONSTRAINT shipment_events_once TO shipment_events_0007_once;
-- free the month names for the new partitions
DO $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    FOR r IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'shipment_events_0007'::regclass ORDER BY 1 LOOP
        n := n + 1;
        EXECUTE format('ALTER TABLE %I RENAME TO %I', r.relname, 'shipment_events_0007_p' || n);
    END LOOP;
END
$$;

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
    event_datetime    timestamptz NOT NULL,                 -- the carrier's scan time, as sent
    tracking_location jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    tracker_at        timestamptz NOT NULL,                 -- the partition key (see above)
    CONSTRAINT shipment_events_once UNIQUE (tracker_id, tracker_at, event_datetime, status, message)
) PARTITION BY RANGE (tracker_at);
COMMENT ON COLUMN shipment_events.tracker_at IS
    'greatest(trackers.created_at, partition_floor.history) when the row was written: the partition key';
-- scans with an absurd date, for the gauge (the predicate is repeated in eps_partitions_settle)
CREATE INDEX shipment_events_odd_dates ON shipment_events (created_at)
    WHERE event_datetime < '2000-01-01 00:00:00+00' OR event_datetime - created_at > interval '366 days';

CREATE TABLE partition_floor (
    one     boolean     PRIMARY KEY DEFAULT true CHECK (one),
    history timestamptz NOT NULL   -- shipment_events: the lowest month kept
);

CREATE TABLE partition_drops (
    part      text        PRIMARY KEY,   -- the partition's table (names are never reused)
    parent    text        NOT NULL,
    lo        timestamptz NOT NULL,
    hi        timestamptz NOT NULL,
    noted_at  timestamptz NOT NULL DEFAULT now()
);

-- the months the history spans, from the oldest tracker's, then the copy
DO $$
DECLARE
    v_month timestamptz := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    v_lo    timestamptz;
BEGIN
    SELECT least(v_month, date_trunc('month', min(coalesce(t.created_at, e.created_at)) AT TIME ZONE 'UTC')
                          AT TIME ZONE 'UTC')
    INTO v_lo
    FROM shipment_events_0007 e LEFT JOIN trackers t ON t.id = e.tracker_id;
    v_lo := coalesce(v_lo, v_month);
    INSERT INTO partition_floor (history) VALUES (v_lo);
    WHILE v_lo <= v_month LOOP
        PERFORM eps_partition_attach('shipment_events',
                                     'shipment_events_' || to_char(v_lo AT TIME ZONE 'UTC', 'YYYY_MM'),
                                     v_lo, v_lo + interval '1 month');
        v_lo := v_lo + interval '1 month';
    END LOOP;
END
$$;
SELECT eps_partitions_create(3);

INSERT INTO shipment_events (tracker_id, shipment_id, webhook_event_id, status, status_detail, message,
                             description, carrier_code, source, event_datetime, tracking_location,
                             created_at, tracker_at)
SELECT e.tracker_id, e.shipment_id, e.webhook_event_id, e.status, e.status_detail, e.message,
       e.description, e.carrier_code, e.source, e.event_datetime, e.tracking_location, e.created_at,
       coalesce(t.created_at, e.created_at)
FROM shipment_events_0007 e LEFT JOIN trackers t ON t.id = e.tracker_id;

DROP TABLE shipment_events_0007;

-- as in 0007
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
