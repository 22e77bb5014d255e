-- 0002: shipment data and the projection of tracker events into it.
--
-- EasyPost delivers at least once, in no guaranteed order, and every
-- tracker.updated repeats the tracker's whole history.
--
-- The projection's own rows (trackers, shipment_events) carry no foreign
-- keys: the projection makes every row they point at in the same
-- transaction, and a per-row RI trigger would double the cost of each
-- tracking detail on the ingest path. So: trackers are
-- upserted newest-wins on the tracker's own updated_at, each tracking detail
-- is one shipment_events row stored once (unique key), and a shipment the
-- webhooks mention before the sync worker has fetched it is a stub row keyed
-- by its shp_ id. EasyPost ids are the unique join keys for sync.

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

