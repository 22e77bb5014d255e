-- 0012: search over shipments by tracking code, reference and recipient
-- (name, company, street, city), case- and accent-insensitive
-- (eps_find_shipments in functions/90_search.sql).
--
-- The words searched are kept in a table of their own, one row per fetched
-- shipment, written by the sync worker when it fetches the shipment
-- (eps_search_refresh) and never by the webhook path: a tracker event
-- rewrites its shipments row (a new status moves it out of HOT, so every
-- index of shipments gets a new entry), and a trigram index there would be
-- written on every such update. Here it is written once per fetch.
--
-- `doc` holds the shipment's searched fields, each through eps_search_norm
-- (unaccent, lower case, spaces collapsed), one per line in a fixed order
-- (eps_search_doc): the index is over that stored value rather than over an
-- expression, so the recheck of a bitmap scan reads it instead of running
-- unaccent again on every candidate row, and the line of a match says which
-- field matched.
--
-- pg_trgm and unaccent ship with PostgreSQL's contrib (Debian's
-- postgresql-15 has them) and are trusted extensions since PostgreSQL 13: a
-- database owner, or a user with CREATE on the database, creates them
-- without being superuser. They go in schema public, which the functions
-- name explicitly (a schema of the daemon's own on search_path changes
-- nothing).

CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA public;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT e.extname, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
             WHERE e.extname IN ('pg_trgm', 'unaccent') AND n.nspname <> 'public' LOOP
        RAISE EXCEPTION 'extension % is installed in schema %; search needs it in public '
                        '(ALTER EXTENSION % SET SCHEMA public)', r.extname, r.nspname, r.extname;
    END LOOP;
END
$$;

CREATE TABLE shipment_search (
    shipment_id uuid        PRIMARY KEY,                       -- shipments.id
    created_at  timestamptz NOT NULL,                          -- the shipment's: newest first
    doc         text        NOT NULL                           -- eps_search_doc(...)
);
COMMENT ON TABLE shipment_search IS
    'Searched fields of each fetched shipment, normalised (eps_search_doc); written by the sync worker';

-- Shipments fetched before this migration.
INSERT INTO shipment_search (shipment_id, created_at, doc)
SELECT s.id, s.created_at,
       eps_search_doc(s.tracking_code, s.reference, a.name, a.company, a.street1, a.street2, a.city)
FROM shipments s LEFT JOIN addresses a ON a.id = s.to_address_id
WHERE s.synced_at IS NOT NULL;

-- fastupdate off: a fetch writes its row's trigrams into the index at once
-- (about 0.7 ms, at most api_rate fetches a second) instead of into the
-- pending list that every search would scan whole until a vacuum or a
-- flush merges it (a few ms a search, and a flush of up to 4 MB inside one
-- fetch's transaction).
CREATE INDEX shipment_search_doc ON shipment_search USING gin (doc public.gin_trgm_ops)
    WITH (fastupdate = off);
