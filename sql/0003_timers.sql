-- 0003: what the daemon's timers write: system_metrics rows, analytics
-- materialized views and the log of their refreshes.

CREATE TABLE system_metrics (
    id                 uuid             PRIMARY KEY DEFAULT eps_uuid7(),
    ts                 timestamptz      NOT NULL DEFAULT now(),
    instance_id        text             NOT NULL,
    interval_s         double precision NOT NULL,   -- length of the window the rates cover
    rss_bytes          bigint           NOT NULL,
    cpu_pct            double precision NOT NULL,   -- user+system over the window, 100 = one core
    open_fds           integer          NOT NULL,
    queue_depth        integer          NOT NULL,
    queue_limit        integer          NOT NULL,
    db_conns_configured integer         NOT NULL,
    db_conns_up        integer          NOT NULL,
    db_conns_busy      integer          NOT NULL,
    http_requests_ps   double precision NOT NULL,
    events_stored_ps   double precision NOT NULL,
    duplicates_ps      double precision NOT NULL,
    http_4xx_ps        double precision NOT NULL,
    http_5xx_ps        double precision NOT NULL,
    ack_p50_ms         double precision,
    ack_p99_ms         double precision,
    ack_max_ms         double precision,
    api_in_flight      integer          NOT NULL DEFAULT 0,
    uptime_s           double precision NOT NULL
);
CREATE INDEX system_metrics_ts ON system_metrics (ts);

-- Daily volume and cost by carrier and service.
CREATE MATERIALIZED VIEW analytics_daily_volume AS
SELECT (s.created_at AT TIME ZONE 'UTC')::date                              AS day,
       coalesce(s.carrier, 'unknown')                                        AS carrier,
       coalesce(s.service, 'unknown')                                        AS service,
       count(*)                                                              AS shipments,
       count(*) FILTER (WHERE s.status = 'delivered')                        AS delivered,
       count(*) FILTER (WHERE s.status IN ('failure', 'return_to_sender', 'error')) AS failed_returned,
       coalesce(sum(s.rate), 0)::numeric(14,2)                               AS total_cost,
       avg(s.rate)::numeric(12,2)                                            AS avg_cost
FROM shipments s
GROUP BY 1, 2, 3;
CREATE UNIQUE INDEX analytics_daily_volume_key ON analytics_daily_volume (day, carrier, service);

-- Carrier performance by carrier, service and delivery day: days from the
-- first scan to delivery, on-time rate against est_delivery_date, exceptions.
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

-- Tracker status funnel: trackers per current status, per carrier.
CREATE MATERIALIZED VIEW analytics_status_funnel AS
SELECT coalesce(carrier, 'unknown') AS carrier, coalesce(status, 'unknown') AS status,
       count(*) AS trackers
FROM trackers
GROUP BY 1, 2;
CREATE UNIQUE INDEX analytics_status_funnel_key ON analytics_status_funnel (carrier, status);

CREATE TABLE analytics_refreshes (
    id          uuid             PRIMARY KEY DEFAULT eps_uuid7(),
    view_name   text             NOT NULL,
    tick        bigint           NOT NULL,   -- wall-clock slot: epoch / analytics_interval
    started_at  timestamptz      NOT NULL,
    duration_ms double precision NOT NULL,
    rows        bigint,
    outcome     text             NOT NULL CHECK (outcome IN ('ok', 'failed')),
    error       text,
    instance_id text             NOT NULL,
    UNIQUE (view_name, tick)                 -- one refresh per view per slot, across replicas
);
CREATE INDEX analytics_refreshes_started ON analytics_refreshes (started_at);

