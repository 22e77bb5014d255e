-- eps:no-transaction
-- 0015: the shipments that send to an address, found by an index, so that a
-- fetch that changes an address's searched fields (name, company, street,
-- city) rewrites the search row of every fetched shipment that sends to it
-- (eps_upsert_address), not only the one fetched. Partial: a stub shipment
-- (written by the webhook path, no address yet) adds no index entry.
CREATE INDEX CONCURRENTLY IF NOT EXISTS shipments_to_address ON shipments (to_address_id)
    WHERE to_address_id IS NOT NULL;
