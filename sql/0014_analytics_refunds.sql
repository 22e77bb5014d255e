-- 0014: refunds by carrier and day, from the refunds table (0011) and the
-- postage of the shipments they name: what was refunded, what is still
-- submitted and what the carrier rejected. Refreshed with the other
-- analytics views (one replica per slot, CONCURRENTLY: hence the unique
-- index). A refund whose shipment is not fetched yet counts with no postage
-- until it is.
CREATE MATERIALIZED VIEW analytics_refunds AS
SELECT (coalesce(r.ep_updated_at, r.ep_created_at, r.created_at) AT TIME ZONE 'UTC')::date AS day,
       coalesce(s.carrier, r.carrier, 'unknown')                             AS carrier,
       coalesce(r.status, 'unknown')                                         AS status,
       count(*)                                                              AS refunds,
       coalesce(sum(s.rate), 0)::numeric(14,2)                               AS postage,
       count(*) FILTER (WHERE s.rate IS NULL)                                AS without_postage
FROM refunds r
LEFT JOIN shipments s ON s.easypost_id = r.shipment_easypost_id
GROUP BY 1, 2, 3;
CREATE UNIQUE INDEX analytics_refunds_key ON analytics_refunds (day, carrier, status);
