-- 0011: one typed table per EasyPost object that webhook events carry
-- besides trackers, filled by eps_project_objects (functions/25_objects.sql)
-- in the transaction that stores the event.
--
-- Every table keys on the object's EasyPost id and keeps its newest
-- snapshot: newer wins by the object's own updated_at, then by the event's
-- created_at (EasyPost's clock both), never by arrival. Columns hold what
-- EasyPost documents for the object; anything else stays in the raw event
-- (webhook_events.raw), so nothing here is guessed. Money arrives as strings
-- and is stored as numeric; a value that is no number is NULL.
--
-- Links to shipments, trackers, batches and insurances are their EasyPost
-- ids as sent (the sync worker's join keys); shipment_id is shipments.id,
-- filled when the shipment row exists (a stub and a sync job otherwise, as
-- the tracker projection does). No foreign keys, for the same reason as in
-- 0002: the projection makes every row it points at in the same transaction.

-- the newest Refund's status of the shipment (submitted, refunded, rejected)
ALTER TABLE shipments ADD COLUMN refund_status    text,
                      ADD COLUMN refund_status_at timestamptz; -- that Refund's updated_at

CREATE TABLE batches (
    id                      uuid        PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id             text        NOT NULL UNIQUE,       -- batch_
    mode                    text,
    state                   text,                              -- creating, created, purchased, label_generated, ...
    reference               text,
    num_shipments           integer,
    label_url               text,
    scan_form_easypost_id   text,                              -- sf_ of its scan form, once made
    -- counts by batch status (the Batch's `status` object)
    created_count           integer,
    queued_for_purchase_count integer,
    creation_failed_count   integer,
    postage_purchased_count integer,
    postage_purchase_failed_count integer,
    ep_created_at           timestamptz,
    ep_updated_at           timestamptz,                       -- newer wins on this
    event_at                timestamptz,                       -- then on the event's created_at
    last_webhook_event_id   uuid,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- which batch a shipment is in, with its status there; replaced whole by a
-- newer snapshot of the batch
CREATE TABLE batch_shipments (
    batch_easypost_id    text NOT NULL,
    shipment_easypost_id text NOT NULL,
    shipment_id          uuid,                                 -- shipments.id
    batch_status         text,
    batch_message        text,
    PRIMARY KEY (batch_easypost_id, shipment_easypost_id)
);
CREATE INDEX batch_shipments_shipment ON batch_shipments (shipment_easypost_id);

CREATE TABLE scan_forms (
    id                    uuid        PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id           text        NOT NULL UNIQUE,         -- sf_
    mode                  text,
    status                text,                                -- creating, created, failed
    message               text,
    form_url              text,
    form_file_type        text,
    confirmation          text,
    batch_easypost_id     text,
    address_easypost_id   text,                                -- adr_ of the from address
    tracking_codes        text[],
    ep_created_at         timestamptz,
    ep_updated_at         timestamptz,
    event_at              timestamptz,
    last_webhook_event_id uuid,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scan_forms_batch ON scan_forms (batch_easypost_id);
CREATE INDEX scan_forms_tracking_codes ON scan_forms USING gin (tracking_codes);

CREATE TABLE insurances (
    id                    uuid          PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id           text          NOT NULL UNIQUE,       -- ins_
    mode                  text,
    reference             text,
    status                text,                                -- new, pending, purchased, cancelled, failed
    amount                numeric,                             -- insured value, USD
    provider              text,
    provider_id           text,
    carrier               text,
    tracking_code         text,
    shipment_easypost_id  text,
    shipment_id           uuid,
    tracker_easypost_id   text,                                -- trk_ of its Tracker
    fee_type              text,
    fee_amount            numeric,                             -- the premium
    fee_charged           boolean,
    fee_refunded          boolean,
    ep_created_at         timestamptz,
    ep_updated_at         timestamptz,
    event_at              timestamptz,
    last_webhook_event_id uuid,
    created_at            timestamptz   NOT NULL DEFAULT now(),
    updated_at            timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX insurances_tracking_code ON insurances (tracking_code);
CREATE INDEX insurances_shipment ON insurances (shipment_easypost_id);

CREATE TABLE refunds (
    id                    uuid        PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id           text        NOT NULL UNIQUE,         -- rfnd_
    mode                  text,
    status                text,                                -- submitted, refunded, rejected
    confirmation_number   text,
    carrier               text,
    tracking_code         text,
    shipment_easypost_id  text,
    shipment_id           uuid,
    ep_created_at         timestamptz,
    ep_updated_at         timestamptz,
    event_at              timestamptz,
    last_webhook_event_id uuid,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_tracking_code ON refunds (tracking_code);
CREATE INDEX refunds_shipment ON refunds (shipment_easypost_id);

CREATE TABLE reports (
    id                    uuid        PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id           text        NOT NULL UNIQUE,         -- shprep_, plrep_, trkrep_, ...
    kind                  text,                                -- its object: ShipmentReport, PaymentLogReport, ...
    mode                  text,
    status                text,                                -- new, available, failed, empty
    start_date            date,
    end_date              date,
    include_children      boolean,
    url                   text,
    url_expires_at        timestamptz,
    ep_created_at         timestamptz,
    ep_updated_at         timestamptz,
    event_at              timestamptz,
    last_webhook_event_id uuid,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- a carrier's billing adjustment of one shipment (USPS APV and the like):
-- the amounts EasyPost's shipment invoice documents
CREATE TABLE shipment_invoices (
    id                    uuid          PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id           text          NOT NULL UNIQUE,
    mode                  text,
    status                text,                                -- processed, disputed
    carrier               text,
    tracking_code         text,
    carrier_invoice_id    text,
    shipment_easypost_id  text,
    shipment_id           uuid,
    quoted_currency       text,
    quoted_amount         numeric,                             -- the selected rate
    initially_paid_amount numeric,                             -- paid at label creation
    final_invoice_amount  numeric,                             -- due after the adjustment
    ep_created_at         timestamptz,
    ep_updated_at         timestamptz,
    event_at              timestamptz,
    last_webhook_event_id uuid,
    created_at            timestamptz   NOT NULL DEFAULT now(),
    updated_at            timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX shipment_invoices_shipment ON shipment_invoices (shipment_easypost_id);

CREATE TABLE claims (
    id                    uuid          PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id           text          NOT NULL UNIQUE,       -- clm_
    mode                  text,
    type                  text,                                -- damage, loss, theft
    status                text,                                -- submitted, in_review, approved, ...
    status_detail         text,
    status_at             timestamptz,                         -- its status_timestamp
    approved_amount       numeric,
    insurance_amount      numeric,
    requested_amount      numeric,
    salvage_value         numeric,
    reference             text,
    tracking_code         text,
    insurance_easypost_id text,
    shipment_easypost_id  text,
    shipment_id           uuid,
    history               jsonb,                               -- [{status, status_detail, status_timestamp}], kept whole
    ep_created_at         timestamptz,
    ep_updated_at         timestamptz,
    event_at              timestamptz,
    last_webhook_event_id uuid,
    created_at            timestamptz   NOT NULL DEFAULT now(),
    updated_at            timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX claims_tracking_code ON claims (tracking_code);
CREATE INDEX claims_shipment ON claims (shipment_easypost_id);

-- payment.* events carrying a PaymentLog (a charge of a bank account or card)
CREATE TABLE payments (
    id                    uuid          PRIMARY KEY DEFAULT eps_uuid7(),
    easypost_id           text          NOT NULL UNIQUE,
    mode                  text,
    status                text,
    amount                numeric,
    charge_type           text,
    source_type           text,
    target_type           text,
    last4                 text,
    ep_created_at         timestamptz,
    ep_updated_at         timestamptz,
    event_at              timestamptz,
    last_webhook_event_id uuid,
    created_at            timestamptz   NOT NULL DEFAULT now(),
    updated_at            timestamptz   NOT NULL DEFAULT now()
);

-- the sync worker fetches shipments and trackers only; a tracker an
-- insurance names is fetched through the existing 'tracker' kind

-- one object snapshot inside eps_project_objects: the newest of each object
-- in the call, with what the statements read of it
CREATE TYPE eps_object_snap AS (
    ord     integer,      -- position in the call
    event   uuid,         -- webhook_events.id
    kind    text,         -- eps_object_of
    oid     text,         -- the object's EasyPost id
    u       timestamptz,  -- its updated_at
    ev_at   timestamptz,  -- the event's created_at
    r       jsonb         -- the event's result
);
