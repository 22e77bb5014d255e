-- 0002: shipment data and the projection of tracker events into it.
--
-- EasyPost delivers at least once, in no guaranteed order, and every
-- tracker.updated repeats the tracker's whole history.
--
-- The projection's own rows (trackers, shipment_events) carry no foreign
-- keys: eps_project_tracker makes every row they point at in the same
-- transaction, and a per-row RI trigger would double the cost of each
-- tracking detail on the ingest path. So: trackers are
-- upserted newest-wins on the tracker's own updated_at, each tracking detail
-- is one shipment_events row stored once (unique key), and a shipment the
-- webhooks mention before the sync worker has fetched it is a stub row keyed
-- by its shp_ id. EasyPost ids are the unique join keys for sync.

-- UUID v7 (RFC 9562) for rows made inside PostgreSQL: the ms timestamp over
-- the first 48 bits of a random v4, version bits turned from 4 into 7.
CREATE FUNCTION eps_uuid7() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
                  substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                  FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

-- ISO 8601 text -> timestamptz; NULL for NULL, empty or non-ISO text.
CREATE FUNCTION eps_ts(p text) RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p ~ '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$'
                THEN p::timestamptz END
$$;

CREATE TABLE addresses (
    id            uuid        PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id   text        NOT NULL UNIQUE,                  -- adr_
    name          text,
    company       text,
    street1       text,
    street2       text,
    city          text,
    state         text,
    zip           text,
    country       text        CHECK (country ~ '^[A-Z]{2}$'),
    phone         text,
    email         text,
    residential   boolean,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE parcels (
    id                 uuid        PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id        text        NOT NULL UNIQUE,             -- prcl_
    length             numeric     CHECK (length > 0),
    width              numeric     CHECK (width > 0),
    height             numeric     CHECK (height > 0),
    weight             numeric     NOT NULL CHECK (weight > 0), -- ounces
    predefined_package text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customs_infos (
    id                   uuid        PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id          text        NOT NULL UNIQUE,           -- cstinfo_
    contents_type        text,
    contents_explanation text,
    customs_certify      boolean,
    customs_signer       text,
    eel_pfc              text,
    non_delivery_option  text,
    restriction_type     text,
    customs_items        jsonb,                                 -- kept whole, not searched
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shipments (
    id                uuid          PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id       text          NOT NULL UNIQUE,            -- shp_
    mode              text,
    status            text,                                     -- delivery status (tracker's)
    tracking_code     text,
    reference         text,
    carrier           text,                                     -- selected rate
    service           text,
    rate              numeric(12,2) CHECK (rate >= 0),
    currency          text,
    from_address_id   uuid          REFERENCES addresses (id),
    to_address_id     uuid          REFERENCES addresses (id),
    return_address_id uuid          REFERENCES addresses (id),
    buyer_address_id  uuid          REFERENCES addresses (id),
    parcel_id         uuid          REFERENCES parcels (id),    -- nullable: not every shipment has one
    customs_info_id   uuid          REFERENCES customs_infos (id),
    label_url         text,
    batch_id          text,
    is_return         boolean,
    ep_updated_at     timestamptz,                              -- EasyPost's updated_at: newer wins
    status_at         timestamptz,                              -- tracker time of `status`
    synced_at         timestamptz,                              -- NULL: a stub not yet fetched
    created_at        timestamptz   NOT NULL DEFAULT now(),     -- EasyPost's created_at once synced
    updated_at        timestamptz   NOT NULL DEFAULT now()
);

-- Query patterns: volume by carrier/service over time, status over time,
-- lookup by tracking code (index-only for the usual columns), the open
-- shipments, the failed ones.
CREATE INDEX shipments_carrier_service_created ON shipments (carrier, service, created_at);
CREATE INDEX shipments_status_created ON shipments (status, created_at);
CREATE INDEX shipments_tracking_code ON shipments (tracking_code)
    INCLUDE (status, carrier, service, updated_at);
CREATE INDEX shipments_active ON shipments (created_at)
    WHERE status IS NULL OR status NOT IN ('delivered', 'return_to_sender', 'failure', 'cancelled', 'error');
CREATE INDEX shipments_failed ON shipments (created_at)
    WHERE status IN ('failure', 'return_to_sender', 'error', 'cancelled');

CREATE TABLE trackers (
    id                   uuid        PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id          text        NOT NULL UNIQUE,           -- trk_ (tracking codes get recycled)
    tracking_code        text,
    carrier              text,
    mode                 text,
    status               text,
    status_detail        text,
    est_delivery_date    timestamptz,
    signed_by            text,
    public_url           text,
    shipment_easypost_id text,                                  -- shp_ as sent
    shipment_id          uuid,                                  -- shipments.id
    carrier_detail       jsonb,                                 -- kept whole, not searched
    ep_created_at        timestamptz,
    ep_updated_at        timestamptz,                           -- newer wins on this
    last_webhook_event_id uuid,                                 -- webhook_events.id
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX trackers_tracking_code ON trackers (tracking_code);
CREATE INDEX trackers_shipment ON trackers (shipment_id);
CREATE INDEX trackers_carrier_status ON trackers (carrier, status);

CREATE TABLE shipment_events (
    id                uuid        PRIMARY KEY DEFAULT eps_uuid7(),
    tracker_id        uuid        NOT NULL,                     -- trackers.id
    shipment_id       uuid,                                     -- shipments.id
    webhook_event_id  uuid,                                     -- webhook_events.id of the first event that carried it
    status            text        NOT NULL DEFAULT '',
    status_detail     text,
    message           text        NOT NULL DEFAULT '',
    description       text,
    carrier_code      text,
    source            text,
    event_datetime    timestamptz NOT NULL,
    tracking_location jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- the history every tracker.updated repeats is stored once; this index
    -- also serves "a tracker's events in time order" (tracker_id, event_datetime)
    CONSTRAINT shipment_events_once UNIQUE (tracker_id, event_datetime, status, message)
);
CREATE INDEX shipment_events_shipment ON shipment_events (shipment_id);

-- Outbox hook: the sync worker's migration replaces this with a real enqueue.
CREATE FUNCTION eps_enqueue(p_kind text, p_object_id text) RETURNS void
LANGUAGE sql AS $$ SELECT $$;

-- Why a tracker event cannot be projected, or NULL when it can.
CREATE FUNCTION eps_tracker_problem(p_body jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_body IS NULL THEN 'body is not JSON PostgreSQL can hold'
        WHEN jsonb_typeof(p_body -> 'result') IS DISTINCT FROM 'object' THEN 'tracker event without a result object'
        WHEN jsonb_typeof(p_body -> 'result' -> 'id') IS DISTINCT FROM 'string' THEN 'tracker result without an id'
        WHEN (p_body -> 'result' ->> 'id') NOT LIKE 'trk\_%' THEN 'tracker result id is not a trk_ id'
        WHEN jsonb_typeof(p_body -> 'result' -> 'tracking_details') NOT IN ('array', 'null') THEN 'tracking_details is not an array'
    END
$$;

-- Projects one tracker.created / tracker.updated event (already stored as
-- p_event). Raises on data the schema refuses; the daemon then stores the
-- event as a dead letter and keeps its batch neighbours.
CREATE FUNCTION eps_project_tracker(p_event uuid, p_body jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r          jsonb := p_body -> 'result';
    v_updated  timestamptz := coalesce(eps_ts(r ->> 'updated_at'), eps_ts(p_body ->> 'updated_at'),
                                       eps_ts(p_body ->> 'created_at'));
    v_shp      text := nullif(r ->> 'shipment_id', '');
    v_shipment uuid;
    v_tracker  uuid;
    v_newer    boolean := false;
    v_new_shipment boolean := false;
BEGIN
    IF v_shp IS NOT NULL THEN
        INSERT INTO shipments (easypost_id, mode, tracking_code, carrier, status, status_at)
        VALUES (v_shp, r ->> 'mode', r ->> 'tracking_code', r ->> 'carrier', r ->> 'status', v_updated)
        ON CONFLICT (easypost_id) DO NOTHING
        RETURNING id INTO v_shipment;
        v_new_shipment := v_shipment IS NOT NULL;
        IF v_shipment IS NULL THEN
            SELECT id INTO v_shipment FROM shipments WHERE easypost_id = v_shp;
        END IF;
    END IF;

    INSERT INTO trackers AS t (easypost_id, tracking_code, carrier, mode, status, status_detail,
                               est_delivery_date, signed_by, public_url, shipment_easypost_id,
                               shipment_id, carrier_detail, ep_created_at, ep_updated_at,
                               last_webhook_event_id)
    VALUES (r ->> 'id', r ->> 'tracking_code', r ->> 'carrier', r ->> 'mode', r ->> 'status',
            r ->> 'status_detail', eps_ts(r ->> 'est_delivery_date'), r ->> 'signed_by',
            r ->> 'public_url', v_shp, v_shipment, r -> 'carrier_detail',
            eps_ts(r ->> 'created_at'), v_updated, p_event)
    ON CONFLICT (easypost_id) DO UPDATE SET
        tracking_code = EXCLUDED.tracking_code, carrier = EXCLUDED.carrier, mode = EXCLUDED.mode,
        status = EXCLUDED.status, status_detail = EXCLUDED.status_detail,
        est_delivery_date = EXCLUDED.est_delivery_date, signed_by = EXCLUDED.signed_by,
        public_url = EXCLUDED.public_url,
        shipment_easypost_id = coalesce(EXCLUDED.shipment_easypost_id, t.shipment_easypost_id),
        shipment_id = coalesce(EXCLUDED.shipment_id, t.shipment_id),
        carrier_detail = EXCLUDED.carrier_detail,
        ep_created_at = coalesce(EXCLUDED.ep_created_at, t.ep_created_at),
        ep_updated_at = EXCLUDED.ep_updated_at,
        last_webhook_event_id = EXCLUDED.last_webhook_event_id, updated_at = now()
    -- newer wins: an older snapshot of the tracker never overwrites its status
    WHERE t.ep_updated_at IS NULL OR EXCLUDED.ep_updated_at >= t.ep_updated_at
    RETURNING id INTO v_tracker;
    v_newer := v_tracker IS NOT NULL;
    IF NOT v_newer THEN
        SELECT id INTO v_tracker FROM trackers WHERE easypost_id = r ->> 'id';
    END IF;

    IF v_shipment IS NOT NULL AND v_newer AND NOT v_new_shipment THEN
        UPDATE shipments s SET status = r ->> 'status', status_at = v_updated,
               tracking_code = coalesce(s.tracking_code, r ->> 'tracking_code'),
               carrier = coalesce(s.carrier, r ->> 'carrier'), updated_at = now()
        WHERE s.id = v_shipment AND (s.status_at IS NULL OR s.status_at <= v_updated)
          AND (s.status IS DISTINCT FROM r ->> 'status' OR s.status_at IS DISTINCT FROM v_updated);
    END IF;

    INSERT INTO shipment_events (tracker_id, shipment_id, webhook_event_id, status, status_detail,
                                 message, description, carrier_code, source, event_datetime,
                                 tracking_location)
    SELECT v_tracker, v_shipment, p_event, coalesce(d ->> 'status', ''), d ->> 'status_detail',
           coalesce(d ->> 'message', ''), d ->> 'description', d ->> 'carrier_code', d ->> 'source',
           coalesce(eps_ts(d ->> 'datetime'), v_updated, now()),
           CASE WHEN jsonb_typeof(d -> 'tracking_location') = 'object' THEN d -> 'tracking_location' END
    FROM jsonb_array_elements(coalesce(nullif(r -> 'tracking_details', 'null'::jsonb), '[]'::jsonb)) AS d
    WHERE jsonb_typeof(d) = 'object'
    ON CONFLICT ON CONSTRAINT shipment_events_once DO NOTHING;

    IF v_new_shipment THEN
        PERFORM eps_enqueue('shipment', v_shp);
    ELSIF v_shp IS NOT NULL THEN
        PERFORM eps_enqueue('shipment', v_shp)
        FROM shipments WHERE id = v_shipment AND synced_at IS NULL;
    END IF;
END
$$;

-- The ingest entry point, now with projection. Returns 'projected',
-- 'stored' (kept raw: no projection for this description), 'failed' (stored
-- with an error) or 'duplicate'.
CREATE OR REPLACE FUNCTION eps_ingest(p_id uuid, p_event_id text, p_description text, p_mode text,
                                      p_object_id text, p_raw text, p_source text,
                                      p_created_at timestamptz, p_clean jsonb, p_error text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_body    jsonb;
    v_status  text := 'stored';
    v_problem text;
    v_tracker boolean := p_description IN ('tracker.created', 'tracker.updated');
BEGIN
    IF p_error IS NOT NULL THEN
        INSERT INTO webhook_events (id, event_id, description, mode, object_id, raw, body,
                                    body_error, source, status, error, event_created_at)
        VALUES (p_id, p_event_id, p_description, p_mode, p_object_id, p_raw, NULL,
                'not parsed: dead letter', p_source, 'failed', p_error, p_created_at)
        ON CONFLICT (event_id) DO NOTHING;
        RETURN CASE WHEN FOUND THEN 'failed' ELSE 'duplicate' END;
    END IF;

    IF p_clean IS NULL THEN
        v_body := p_raw::jsonb;
    END IF;
    IF v_tracker THEN
        v_problem := eps_tracker_problem(coalesce(v_body, p_clean));
        v_status := CASE WHEN v_problem IS NULL THEN 'projected' ELSE 'failed' END;
    END IF;
    INSERT INTO webhook_events (id, event_id, description, mode, object_id, raw, body,
                                body_error, source, status, error, event_created_at)
    VALUES (p_id, p_event_id, p_description, p_mode, p_object_id, p_raw, v_body,
            CASE WHEN p_clean IS NOT NULL THEN 'contains \u0000, which jsonb cannot hold' END,
            p_source, v_status, v_problem, p_created_at)
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;
    IF v_status = 'projected' THEN
        PERFORM eps_project_tracker(p_id, coalesce(v_body, p_clean));
    END IF;
    RETURN v_status;
END
$$;

-- Re-runs the projection of one stored event through the same code, e.g.
-- after a fix: easypost-syncd --replay failed | EVENT_ID. Returns the new
-- status; a failure is recorded on the row, not raised.
CREATE FUNCTION eps_replay(p_id uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    e         webhook_events;
    v_body    jsonb;
    v_problem text;
BEGIN
    SELECT * INTO e FROM webhook_events WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF e.description NOT IN ('tracker.created', 'tracker.updated') THEN
        UPDATE webhook_events SET status = 'stored', error = NULL, processed_at = now()
        WHERE id = p_id;
        RETURN 'stored';
    END IF;
    BEGIN
        v_body := coalesce(e.body, e.raw::jsonb);
    EXCEPTION WHEN others THEN
        v_body := coalesce(e.body, replace(e.raw, '\u0000', '')::jsonb);
    END;
    v_problem := eps_tracker_problem(v_body);
    IF v_problem IS NULL THEN
        BEGIN
            PERFORM eps_project_tracker(p_id, v_body);
        EXCEPTION WHEN others THEN
            v_problem := SQLSTATE || ': ' || SQLERRM;
        END;
    END IF;
    UPDATE webhook_events
    SET status = CASE WHEN v_problem IS NULL THEN 'projected' ELSE 'failed' END,
        error = v_problem, processed_at = now()
    WHERE id = p_id;
    RETURN CASE WHEN v_problem IS NULL THEN 'projected' ELSE 'failed' END;
END
$$;
