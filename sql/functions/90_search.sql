-- Search: shipments by tracking code, reference or recipient (name,
-- company, street, city), whatever the case and the accents.
--
-- A fetched shipment's fields are one row of shipment_search (0012), written
-- by the sync worker (eps_sync_shipment calls eps_search_refresh), searched
-- through its trigram index: any part of three characters or more. A tracker
-- whose shipment is not fetched yet (no API key, the fetch still queued, a
-- tracker made without a shipment) is found by its whole tracking code, in
-- any case, through the trackers' own B-tree: the webhook path writes no
-- search index.
--
-- unaccent() is only STABLE (its dictionary is looked up by name at run
-- time); eps_search_norm names the function and the dictionary by schema,
-- which makes the result fixed for a given text, so it is declared
-- IMMUTABLE and PostgreSQL evaluates it once per query on a constant.

CREATE OR REPLACE FUNCTION eps_search_norm(p text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT btrim(regexp_replace(lower(public.unaccent('public.unaccent'::regdictionary, p)),
                                '\s+', ' ', 'g'))
$$;

-- The searched fields of a shipment as stored in shipment_search.doc: each
-- normalised, one per line, in this order (eps_search_matched names them);
-- a missing field is an empty line. Normalising collapses every newline
-- inside a field, and a searched text never holds one, so a match never
-- spans two fields.
CREATE OR REPLACE FUNCTION eps_search_doc(p_tracking_code text, p_reference text, p_name text,
                                          p_company text, p_street1 text, p_street2 text,
                                          p_city text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT concat_ws(E'\n', coalesce(eps_search_norm(p_tracking_code), ''),
                     coalesce(eps_search_norm(p_reference), ''), coalesce(eps_search_norm(p_name), ''),
                     coalesce(eps_search_norm(p_company), ''),
                     coalesce(eps_search_norm(concat_ws(' ', p_street1, p_street2)), ''),
                     coalesce(eps_search_norm(p_city), ''))
$$;

-- The LIKE pattern that finds p anywhere in a field, or NULL when p has
-- fewer than three characters once normalised (a trigram index cannot
-- narrow a shorter text: it would read the whole index).
CREATE OR REPLACE FUNCTION eps_search_pattern(p text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT CASE WHEN length(n) >= 3 THEN '%' || regexp_replace(n, '([\\%_])', '\\\1', 'g') || '%' END
    FROM (SELECT eps_search_norm(p) AS n) x
$$;

-- The names of the fields of doc that p_pattern matches, in doc's order.
CREATE OR REPLACE FUNCTION eps_search_matched(p_doc text, p_pattern text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(u.field ORDER BY u.i)
    FROM unnest(ARRAY['tracking_code', 'reference', 'name', 'company', 'street', 'city'],
                string_to_array(p_doc, E'\n')) WITH ORDINALITY AS u(field, line, i)
    WHERE u.line LIKE p_pattern
$$;

-- The spellings of p that a tracking code is stored as: as typed, and
-- without spaces in upper and in lower case.
CREATE OR REPLACE FUNCTION eps_search_codes(p text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT ARRAY[btrim(p), upper(c), lower(c)] FROM (SELECT regexp_replace(p, '\s', '', 'g') AS c) x
$$;

-- Writes the search row of the shipment with EasyPost id p_easypost_id from
-- its shipments row and its to_address (the recipient). Called by the sync
-- worker after it stored a fetched shipment, in the same transaction.
CREATE OR REPLACE FUNCTION eps_search_refresh(p_easypost_id text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO shipment_search AS t (shipment_id, created_at, doc)
    SELECT s.id, s.created_at,
           eps_search_doc(s.tracking_code, s.reference, a.name, a.company, a.street1, a.street2, a.city)
    FROM shipments s LEFT JOIN addresses a ON a.id = s.to_address_id
    WHERE s.easypost_id = p_easypost_id AND s.synced_at IS NOT NULL
    ON CONFLICT (shipment_id) DO UPDATE SET created_at = EXCLUDED.created_at, doc = EXCLUDED.doc
    WHERE (t.created_at, t.doc) IS DISTINCT FROM (EXCLUDED.created_at, EXCLUDED.doc)
$$;

-- eps_find_shipments(text, limit): the shipments whose tracking code,
-- reference, or recipient's name, company, street or city contains p_text,
-- ignoring case and accents ("muller" finds "Müller"), at most p_limit
-- (NULL: all). p_text needs three characters or more for a part to match;
-- a whole tracking code (of a tracker whose shipment is not fetched yet, or
-- that has none) is found whatever its length. Rows: exact tracking codes
-- first, then the newest shipments. A tracker without a shipment row has a
-- NULL shipment_id and easypost_id. `matched` names the fields that hold
-- p_text: tracking_code, reference, name, company, street, city.
--
-- A plain SQL function that PostgreSQL inlines into the calling query, so
-- the pattern is a constant when the query is planned (the trigram index's
-- estimate sees it) and EXPLAIN of a call shows the real plan.
CREATE OR REPLACE FUNCTION eps_find_shipments(p_text text, p_limit integer DEFAULT 50)
RETURNS TABLE (shipment_id uuid, easypost_id text, tracker_id text, tracking_code text,
               reference text, recipient text, status text, matched text[])
LANGUAGE sql STABLE AS $$
    SELECT h.id, s.easypost_id, coalesce(h.tracker, st.easypost_id),
           coalesce(s.tracking_code, h.code), s.reference,
           nullif(concat_ws(', ', nullif(a.name, ''), nullif(a.company, ''),
                            nullif(concat_ws(' ', nullif(a.street1, ''), nullif(a.street2, '')), ''),
                            nullif(a.city, '')), ''),
           coalesce(s.status, h.tracker_status),
           CASE WHEN h.tracker IS NULL OR 'tracking_code' = ANY (coalesce(m.fields, '{}')) THEN m.fields
                ELSE array_prepend('tracking_code', coalesce(m.fields, '{}')) END
    FROM (
        -- which fields matched is worked out below, for the rows returned
        -- only: a common word matches tens of thousands
        SELECT coalesce(d.shipment_id, k.shipment_id) AS id, k.easypost_id AS tracker,
               k.tracking_code AS code, k.status AS tracker_status, d.doc,
               coalesce(d.exact, false) OR k.id IS NOT NULL AS exact,
               coalesce(d.created_at, k.created_at) AS created_at,
               coalesce(d.shipment_id, k.shipment_id, k.id) AS k
        FROM (SELECT x.shipment_id, x.created_at, x.doc,
                     split_part(x.doc, E'\n', 1) = eps_search_norm(p_text) AS exact
              FROM shipment_search x
              WHERE x.doc LIKE eps_search_pattern(p_text)) d
        FULL JOIN (SELECT DISTINCT ON (coalesce(t.shipment_id, t.id)) t.id, t.easypost_id,
                          t.shipment_id, t.tracking_code, t.status,
                          coalesce(t.ep_created_at, t.created_at) AS created_at
                   FROM trackers t
                   WHERE t.tracking_code = ANY (eps_search_codes(p_text))
                   ORDER BY coalesce(t.shipment_id, t.id), t.ep_updated_at DESC NULLS LAST) k
            ON k.shipment_id = d.shipment_id
        ORDER BY 6 DESC, 7 DESC, 8
        LIMIT p_limit
    ) h
    CROSS JOIN LATERAL (SELECT eps_search_matched(h.doc, eps_search_pattern(p_text)) AS fields) m
    LEFT JOIN shipments s ON s.id = h.id
    LEFT JOIN addresses a ON a.id = s.to_address_id
    LEFT JOIN LATERAL (SELECT t2.easypost_id FROM trackers t2 WHERE t2.shipment_id = h.id
                       ORDER BY t2.ep_updated_at DESC NULLS LAST LIMIT 1) st ON h.tracker IS NULL
    ORDER BY h.exact DESC, h.created_at DESC, h.k
$$;
