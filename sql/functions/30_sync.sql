-- The sync worker's queue operations and the upserts that turn fetched API
-- objects into rows.

CREATE OR REPLACE FUNCTION eps_enqueue(p_kind text, p_object_id text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO sync_jobs (kind, object_id) VALUES (p_kind, p_object_id)
    ON CONFLICT (kind, object_id) WHERE status IN ('pending', 'running') DO NOTHING
$$;

DROP FUNCTION IF EXISTS eps_sync_claim(integer, text, integer);
DROP FUNCTION IF EXISTS eps_sync_retry(uuid, text, integer, bigint);
DROP FUNCTION IF EXISTS eps_sync_release(uuid, text, integer);
DROP FUNCTION IF EXISTS eps_sync_fail(uuid, text, integer);
DROP FUNCTION IF EXISTS eps_sync_apply(uuid, jsonb);

-- Whether a job whose last attempt ended with HTTP status p_status (0: no
-- answer) may go on past p_max attempts: when the cause was of the moment
-- (no answer, 429, 5xx: EasyPost or the path to it in trouble) and the job
-- is less than a day old. Its backoff is then at its cap (5 minutes), so an
-- incident longer than the first attempts' 8 minutes does not leave a
-- shipment a stub for good, and a day of them still ends the job.
CREATE OR REPLACE FUNCTION eps_sync_outlasts(p_status integer, p_created timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT (p_status = 0 OR p_status = 429 OR p_status >= 500) AND p_created > now() - interval '1 day'
$$;

-- Claims up to p_n due jobs (or running ones whose lease ran out: their
-- worker died) for p_lease_s seconds. SKIP LOCKED: replicas never collide.
-- A claim is (instance, attempts): every later transition names it, so a
-- worker whose lease ran out cannot touch the job another one holds now.
-- A job that has had p_max attempts ends 'failed' with its last error
-- instead of being claimed again, unless eps_sync_outlasts.
CREATE OR REPLACE FUNCTION eps_sync_claim(p_n integer, p_instance text, p_lease_s integer,
                                          p_max integer)
RETURNS TABLE (id uuid, kind text, object_id text, attempts integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    UPDATE sync_jobs j
    SET status = 'failed', locked_until = NULL, updated_at = now(),
        last_error = 'gave up after ' || j.attempts || ' attempts: ' || coalesce(j.last_error, 'no answer')
    WHERE j.id IN (SELECT c.id FROM sync_jobs c
                   WHERE ((c.status = 'pending' AND c.next_attempt_at <= now())
                          OR (c.status = 'running' AND c.locked_until < now()))
                     AND c.attempts >= p_max AND NOT coalesce(eps_sync_outlasts(c.last_status, c.created_at), false)
                   FOR UPDATE SKIP LOCKED);
    RETURN QUERY
    UPDATE sync_jobs j
    SET status = 'running', attempts = j.attempts + 1, instance_id = p_instance,
        locked_until = now() + make_interval(secs => p_lease_s), updated_at = now()
    WHERE j.id IN (SELECT c.id FROM sync_jobs c
                   WHERE ((c.status = 'pending' AND c.next_attempt_at <= now())
                          OR (c.status = 'running' AND c.locked_until < now()))
                     AND (c.attempts < p_max OR coalesce(eps_sync_outlasts(c.last_status, c.created_at), false))
                   ORDER BY c.next_attempt_at
                   LIMIT p_n
                   FOR UPDATE SKIP LOCKED)
    RETURNING j.id, j.kind, j.object_id, j.attempts;
END
$$;

-- Another attempt later, or 'failed' once p_max attempts are spent (unless
-- eps_sync_outlasts). Returns the job's new status, NULL when the claim is
-- no longer this worker's.
CREATE OR REPLACE FUNCTION eps_sync_retry(p_id uuid, p_error text, p_status integer, p_delay_ms bigint,
                                          p_instance text, p_attempt integer, p_max integer)
RETURNS text LANGUAGE sql AS $$
    UPDATE sync_jobs
    SET status = CASE WHEN attempts >= p_max AND NOT eps_sync_outlasts(p_status, created_at)
                      THEN 'failed' ELSE 'pending' END,
        last_error = CASE WHEN attempts >= p_max AND NOT eps_sync_outlasts(p_status, created_at)
                          THEN 'gave up after ' || attempts || ' attempts: ' || p_error
                          ELSE p_error END,
        last_status = p_status,
        next_attempt_at = now() + make_interval(secs => p_delay_ms / 1000.0),
        locked_until = NULL, updated_at = now()
    WHERE id = p_id AND status = 'running' AND instance_id = p_instance AND attempts = p_attempt
    RETURNING status
$$;

-- Extends the leases of the jobs a worker still holds (p_ids with the
-- attempts it claimed them at): a job waiting in the worker's pacer queue,
-- behind a 429 pause, stays its own. A claim that is no longer this
-- worker's is left alone. Returns how many were extended.
CREATE OR REPLACE FUNCTION eps_sync_renew(p_ids uuid[], p_attempts integer[], p_instance text,
                                          p_lease_s integer)
RETURNS integer LANGUAGE sql AS $$
    WITH u AS (UPDATE sync_jobs j SET locked_until = now() + make_interval(secs => p_lease_s)
               FROM unnest(p_ids, p_attempts) AS h(id, attempts)
               WHERE j.id = h.id AND j.attempts = h.attempts AND j.status = 'running'
                 AND j.instance_id = p_instance
               RETURNING 1)
    SELECT count(*)::integer FROM u
$$;

-- 401/403: not the job's fault; give the attempt back.
CREATE OR REPLACE FUNCTION eps_sync_release(p_id uuid, p_error text, p_status integer,
                                            p_instance text, p_attempt integer)
RETURNS void LANGUAGE sql AS $$
    UPDATE sync_jobs SET status = 'pending', attempts = greatest(attempts - 1, 0),
           last_error = p_error, last_status = p_status, locked_until = NULL, updated_at = now()
    WHERE id = p_id AND status = 'running' AND instance_id = p_instance AND attempts = p_attempt
$$;

CREATE OR REPLACE FUNCTION eps_sync_fail(p_id uuid, p_error text, p_status integer,
                                         p_instance text, p_attempt integer)
RETURNS void LANGUAGE sql AS $$
    UPDATE sync_jobs SET status = 'failed', last_error = p_error, last_status = p_status,
           locked_until = NULL, updated_at = now()
    WHERE id = p_id AND status = 'running' AND instance_id = p_instance AND attempts = p_attempt
$$;

-- An EasyPost Address object -> addresses row; returns its id. When the
-- fields search reads (name, company, street, city) change, the search rows
-- of the fetched shipments that send to it are written again: one address
-- can be the recipient of many shipments, and each has its own row.
CREATE OR REPLACE FUNCTION eps_upsert_address(a jsonb) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    v_country text := upper(nullif(a ->> 'country', ''));
    v_old text[];
BEGIN
    IF a IS NULL OR jsonb_typeof(a) <> 'object' OR (a ->> 'id') IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_country !~ '^[A-Z]{2}$' THEN
        v_country := NULL;
    END IF;
    SELECT ARRAY[t.name, t.company, t.street1, t.street2, t.city] INTO v_old
    FROM addresses t WHERE t.easypost_id = a ->> 'id';
    INSERT INTO addresses AS t (easypost_id, name, company, street1, street2, city, state, zip,
                                country, phone, email, residential)
    VALUES (a ->> 'id', a ->> 'name', a ->> 'company', a ->> 'street1', a ->> 'street2',
            a ->> 'city', a ->> 'state', a ->> 'zip', v_country, a ->> 'phone', a ->> 'email',
            CASE WHEN jsonb_typeof(a -> 'residential') = 'boolean' THEN (a ->> 'residential')::boolean END)
    ON CONFLICT (easypost_id) DO UPDATE SET
        name = EXCLUDED.name, company = EXCLUDED.company, street1 = EXCLUDED.street1,
        street2 = EXCLUDED.street2, city = EXCLUDED.city, state = EXCLUDED.state,
        zip = EXCLUDED.zip, country = EXCLUDED.country, phone = EXCLUDED.phone,
        email = EXCLUDED.email, residential = EXCLUDED.residential, updated_at = now()
    RETURNING id INTO v_id;
    IF v_old IS DISTINCT FROM ARRAY[a ->> 'name', a ->> 'company', a ->> 'street1', a ->> 'street2',
                                    a ->> 'city'] THEN
        PERFORM eps_search_refresh(s.easypost_id)
        FROM shipments s
        WHERE s.to_address_id = v_id AND s.synced_at IS NOT NULL;
    END IF;
    RETURN v_id;
END
$$;

-- A fetched Shipment -> shipments (+ addresses, parcel, customs info);
-- newer wins on EasyPost's updated_at; the delivery status stays the
-- trackers' (webhooks) unless none has been seen yet.
CREATE OR REPLACE FUNCTION eps_sync_shipment(s jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    p        jsonb := s -> 'parcel';
    c        jsonb := s -> 'customs_info';
    r        jsonb := s -> 'selected_rate';
    v_parcel uuid;
    v_customs uuid;
    v_updated timestamptz := eps_ts(s ->> 'updated_at');
BEGIN
    IF jsonb_typeof(p) = 'object' AND (p ->> 'id') IS NOT NULL AND eps_num(p -> 'weight') > 0 THEN
        INSERT INTO parcels AS t (easypost_id, length, width, height, weight, predefined_package)
        VALUES (p ->> 'id', nullif(eps_num(p -> 'length'), 0), nullif(eps_num(p -> 'width'), 0),
                nullif(eps_num(p -> 'height'), 0), eps_num(p -> 'weight'), p ->> 'predefined_package')
        ON CONFLICT (easypost_id) DO UPDATE SET
            length = EXCLUDED.length, width = EXCLUDED.width, height = EXCLUDED.height,
            weight = EXCLUDED.weight, predefined_package = EXCLUDED.predefined_package,
            updated_at = now()
        RETURNING id INTO v_parcel;
    END IF;
    IF jsonb_typeof(c) = 'object' AND (c ->> 'id') IS NOT NULL THEN
        INSERT INTO customs_infos AS t (easypost_id, contents_type, contents_explanation,
                                        customs_certify, customs_signer, eel_pfc,
                                        non_delivery_option, restriction_type, customs_items)
        VALUES (c ->> 'id', c ->> 'contents_type', c ->> 'contents_explanation',
                CASE WHEN jsonb_typeof(c -> 'customs_certify') = 'boolean' THEN (c ->> 'customs_certify')::boolean END,
                c ->> 'customs_signer', c ->> 'eel_pfc', c ->> 'non_delivery_option',
                c ->> 'restriction_type', c -> 'customs_items')
        ON CONFLICT (easypost_id) DO UPDATE SET
            contents_type = EXCLUDED.contents_type,
            contents_explanation = EXCLUDED.contents_explanation,
            customs_certify = EXCLUDED.customs_certify, customs_signer = EXCLUDED.customs_signer,
            eel_pfc = EXCLUDED.eel_pfc, non_delivery_option = EXCLUDED.non_delivery_option,
            restriction_type = EXCLUDED.restriction_type, customs_items = EXCLUDED.customs_items,
            updated_at = now()
        RETURNING id INTO v_customs;
    END IF;

    INSERT INTO shipments AS t (easypost_id, mode, status, tracking_code, reference, carrier,
                                service, rate, currency, from_address_id, to_address_id,
                                return_address_id, buyer_address_id, parcel_id, customs_info_id,
                                label_url, batch_id, is_return, ep_updated_at, synced_at,
                                created_at)
    VALUES (s ->> 'id', s ->> 'mode', s ->> 'status', s ->> 'tracking_code', s ->> 'reference',
            r ->> 'carrier', r ->> 'service', eps_num(r -> 'rate'), r ->> 'currency',
            eps_upsert_address(s -> 'from_address'), eps_upsert_address(s -> 'to_address'),
            eps_upsert_address(s -> 'return_address'), eps_upsert_address(s -> 'buyer_address'),
            v_parcel, v_customs, s -> 'postage_label' ->> 'label_url', s ->> 'batch_id',
            CASE WHEN jsonb_typeof(s -> 'is_return') = 'boolean' THEN (s ->> 'is_return')::boolean END,
            v_updated, now(), coalesce(eps_ts(s ->> 'created_at'), now()))
    ON CONFLICT (easypost_id) DO UPDATE SET
        mode = EXCLUDED.mode,
        status = coalesce(t.status, EXCLUDED.status),
        tracking_code = coalesce(EXCLUDED.tracking_code, t.tracking_code),
        reference = EXCLUDED.reference,
        carrier = coalesce(EXCLUDED.carrier, t.carrier), service = EXCLUDED.service,
        rate = EXCLUDED.rate, currency = EXCLUDED.currency,
        from_address_id = EXCLUDED.from_address_id, to_address_id = EXCLUDED.to_address_id,
        return_address_id = EXCLUDED.return_address_id, buyer_address_id = EXCLUDED.buyer_address_id,
        parcel_id = EXCLUDED.parcel_id, customs_info_id = EXCLUDED.customs_info_id,
        label_url = EXCLUDED.label_url, batch_id = EXCLUDED.batch_id, is_return = EXCLUDED.is_return,
        ep_updated_at = EXCLUDED.ep_updated_at, synced_at = now(), created_at = EXCLUDED.created_at,
        updated_at = now()
    WHERE t.ep_updated_at IS NULL OR EXCLUDED.ep_updated_at IS NULL
       OR EXCLUDED.ep_updated_at >= t.ep_updated_at;
    -- trackers that arrived before their shipment row get linked now
    UPDATE trackers tr SET shipment_id = sh.id
    FROM shipments sh
    WHERE sh.easypost_id = s ->> 'id' AND tr.shipment_easypost_id = sh.easypost_id
      AND tr.shipment_id IS NULL;
    -- its search row (90_search.sql): written here, never on the webhook path
    PERFORM eps_search_refresh(s ->> 'id');
END
$$;

-- A fetched job result: apply it and close the job, in one transaction.
CREATE OR REPLACE FUNCTION eps_sync_apply(p_id uuid, p_object jsonb, p_instance text,
                                          p_attempt integer, p_max integer, p_delay_ms bigint)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_kind  text;
    v_error text;
BEGIN
    SELECT kind INTO v_kind FROM sync_jobs
    WHERE id = p_id AND status = 'running' AND instance_id = p_instance AND attempts = p_attempt
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'gone';   -- the lease ran out and another worker owns it now
    END IF;
    BEGIN
        IF v_kind = 'shipment' THEN
            PERFORM eps_sync_shipment(p_object);
        ELSIF eps_tracker_problem(jsonb_build_object('result', p_object)) IS NULL THEN
            PERFORM eps_project_trackers(ARRAY[NULL::uuid], ARRAY[jsonb_build_object('result', p_object)]);
        END IF;
    EXCEPTION WHEN others THEN
        -- the object was fetched but the schema refuses it: an attempt, recorded
        v_error := 'applying it: ' || SQLSTATE || ': ' || SQLERRM;
    END;
    IF v_error IS NOT NULL THEN
        RETURN eps_sync_retry(p_id, v_error, 200, p_delay_ms, p_instance, p_attempt, p_max);
    END IF;
    UPDATE sync_jobs SET status = 'done', last_status = 200, last_error = NULL,
           locked_until = NULL, updated_at = now()
    WHERE id = p_id;
    RETURN 'done';
END
$$;