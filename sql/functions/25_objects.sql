-- Projecting the EasyPost objects that events carry besides trackers into
-- their typed tables (sql/0011_objects.sql): batches, batch_shipments,
-- scan_forms, insurances, refunds, reports, shipment_invoices, claims,
-- payments, and the refund status of shipments.
--
-- One call per batch of events (eps_ingest_batch calls it only when the
-- batch holds such events; --reproject and eps_replay call it too), a fixed
-- number of set-based statements per object kind present, none for a kind
-- absent.
--
-- Lock order, the one of 20_ingest.sql's header, each step sorted on its
-- key: tracker fetches (sync_jobs) by tracker id, shipments by easypost_id
-- (stubs and refund status in one statement), shipment fetches (sync_jobs),
-- then each object table by easypost_id in the order the statements below
-- run (batches, batch_shipments, scan_forms, insurances, refunds, reports,
-- shipment_invoices, claims, payments). eps_ingest_batch runs this after
-- the tracker projection: a batch holding both kinds passes over shipments
-- twice (each pass sorted), so two such batches crossing on two shipments
-- can deadlock; PostgreSQL breaks it and the daemon sends the batch again.

-- The object kind an event type carries, or NULL for a type this version
-- does not project. Both spellings of the claim events are EasyPost's.
CREATE OR REPLACE FUNCTION eps_object_kind(p_description text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_description IN ('batch.created', 'batch.updated') THEN 'batch'
        WHEN p_description IN ('scan_form.created', 'scan_form.updated') THEN 'scan_form'
        WHEN p_description IN ('insurance.purchased', 'insurance.cancelled') THEN 'insurance'
        WHEN p_description = 'refund.successful' THEN 'refund'
        WHEN p_description IN ('report.new', 'report.available', 'report.failed', 'report.empty') THEN 'report'
        WHEN p_description IN ('payment.created', 'payment.completed', 'payment.failed') THEN 'payment'
        WHEN p_description IN ('shipment.invoice.created', 'shipment.invoice.updated') THEN 'shipment_invoice'
        WHEN p_description IN ('claim.submitted', 'claim.updated', 'claim.cancelled', 'claim.rejected',
                               'claim.approved', 'claims.submitted', 'claims.updated', 'claims.cancelled',
                               'claims.rejected', 'claims.approved') THEN 'claim'
    END
$$;

-- The kind eps_project_objects projects this event body as, or NULL when it
-- ignores it: a type it does not know, no result object with a string id,
-- or a result that is not the object the type documents (a payment event is
-- projected only when it carries a PaymentLog).
CREATE OR REPLACE FUNCTION eps_object_of(p_description text, p_body jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN jsonb_typeof(p_body -> 'result') IS DISTINCT FROM 'object'
             OR jsonb_typeof(p_body -> 'result' -> 'id') IS DISTINCT FROM 'string' THEN NULL
        ELSE CASE eps_object_kind(p_description)
            WHEN 'batch' THEN CASE WHEN p_body -> 'result' ->> 'id' LIKE 'batch\_%' THEN 'batch' END
            WHEN 'scan_form' THEN CASE WHEN p_body -> 'result' ->> 'id' LIKE 'sf\_%' THEN 'scan_form' END
            WHEN 'insurance' THEN CASE WHEN p_body -> 'result' ->> 'id' LIKE 'ins\_%' THEN 'insurance' END
            WHEN 'refund' THEN CASE WHEN p_body -> 'result' ->> 'id' LIKE 'rfnd\_%' THEN 'refund' END
            WHEN 'report' THEN CASE WHEN p_body -> 'result' ->> 'object' LIKE '%Report' THEN 'report' END
            WHEN 'payment' THEN CASE WHEN p_body -> 'result' ->> 'object' = 'PaymentLog' THEN 'payment' END
            WHEN 'claim' THEN CASE WHEN p_body -> 'result' ->> 'id' LIKE 'clm\_%' THEN 'claim' END
            WHEN 'shipment_invoice' THEN 'shipment_invoice'
        END
    END
$$;

-- a JSON string's text; NULL for any other JSON type (no object text in a text column)
CREATE OR REPLACE FUNCTION eps_str(v jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'string' THEN v #>> '{}' END
$$;

-- a JSON whole number that fits an integer; NULL otherwise
CREATE OR REPLACE FUNCTION eps_int(v jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'number' AND (v #>> '{}') ~ '^-?\d{1,9}$' THEN (v #>> '{}')::integer END
$$;

-- a JSON boolean; NULL otherwise
CREATE OR REPLACE FUNCTION eps_bool(v jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'boolean' THEN (v #>> '{}')::boolean END
$$;

-- a YYYY-MM-DD string as a date; NULL for anything else (raises, as the
-- cast does, for text of that shape that is no date)
CREATE OR REPLACE FUNCTION eps_date(v jsonb) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'string' AND (v #>> '{}') ~ '^\d{4}-\d{2}-\d{2}$' THEN (v #>> '{}')::date END
$$;

-- Projects events of any non-tracker type into the object tables: each body
-- (an Event; p_event[i] its webhook_events.id) is dispatched by
-- eps_object_of and ignored when that is NULL. Several snapshots of one
-- object reduce to the newest; newer wins against the stored row by the
-- object's updated_at, then the event's created_at, NULL lowest; a full tie
-- keeps what is stored. Shipments named and not stored yet become stubs
-- with a sync job; a tracker an insurance names and not stored yet is
-- fetched. Raises on data the schema refuses; callers isolate the event
-- that did it.
CREATE OR REPLACE FUNCTION eps_project_objects(p_event uuid[], p_body jsonb[])
RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    s       eps_object_snap[];
    v_kinds text[];
    v_batch text[];
BEGIN
    SELECT array_agg(ROW(x.ord, x.event, x.kind, x.oid, x.u, x.ev_at, x.r)::eps_object_snap ORDER BY x.ord),
           array_agg(DISTINCT x.kind)
    INTO s, v_kinds
    FROM (SELECT DISTINCT ON (y.kind, y.oid) y.*
          FROM (SELECT b.ord::integer AS ord, b.event, k.kind, b.body -> 'result' ->> 'id' AS oid,
                       eps_ts(eps_str(b.body -> 'result' -> 'updated_at')) AS u,
                       eps_ts(eps_str(b.body -> 'created_at')) AS ev_at, b.body -> 'result' AS r
                FROM unnest(p_event, p_body) WITH ORDINALITY AS b(event, body, ord)
                CROSS JOIN LATERAL (SELECT eps_object_of(b.body ->> 'description', b.body) AS kind) k
                WHERE k.kind IS NOT NULL) y
          ORDER BY y.kind, y.oid, y.u DESC NULLS LAST, y.ev_at DESC NULLS LAST, y.ord) x;
    IF s IS NULL THEN
        RETURN;
    END IF;

    -- the tracker of an insurance, fetched when it is not stored yet
    IF 'insurance' = ANY (v_kinds) THEN
        INSERT INTO sync_jobs (kind, object_id)
        SELECT DISTINCT 'tracker', x.r -> 'tracker' ->> 'id' FROM unnest(s) x
        WHERE x.kind = 'insurance' AND jsonb_typeof(x.r -> 'tracker') = 'object'
          AND x.r -> 'tracker' ->> 'id' LIKE 'trk\_%'
          AND NOT EXISTS (SELECT 1 FROM trackers t WHERE t.easypost_id = x.r -> 'tracker' ->> 'id')
        ORDER BY 2
        ON CONFLICT (kind, object_id) WHERE status IN ('pending', 'running') DO NOTHING;
    END IF;

    -- shipments: a stub (and its fetch) for each one named and not stored,
    -- the newest refund's status on each refunded one
    IF v_kinds && ARRAY['batch', 'insurance', 'refund', 'claim', 'shipment_invoice'] THEN
        WITH named AS (
            SELECT eps_str(e -> 'id') AS shp, NULL::text AS rs, NULL::timestamptz AS rs_at
            FROM unnest(s) x
            CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN x.kind = 'batch' AND jsonb_typeof(x.r -> 'shipments') = 'array'
                                                         THEN x.r -> 'shipments' ELSE '[]' END) e
            UNION ALL
            SELECT eps_str(x.r -> 'shipment_id'),
                   CASE WHEN x.kind = 'refund' THEN eps_str(x.r -> 'status') END,
                   CASE WHEN x.kind = 'refund' THEN x.u END
            FROM unnest(s) x WHERE x.kind IN ('insurance', 'refund', 'claim', 'shipment_invoice')
        ), one AS (
            SELECT DISTINCT ON (shp) shp, rs, rs_at FROM named WHERE shp LIKE 'shp\_%'
            ORDER BY shp, rs IS NULL, rs_at DESC NULLS LAST
        ), up AS (
            INSERT INTO shipments AS t (easypost_id, refund_status, refund_status_at)
            SELECT shp, rs, rs_at FROM one ORDER BY shp
            ON CONFLICT (easypost_id) DO UPDATE SET
                refund_status = EXCLUDED.refund_status, refund_status_at = EXCLUDED.refund_status_at,
                updated_at = now()
            WHERE EXCLUDED.refund_status IS NOT NULL
              AND (t.refund_status IS NULL
                   OR coalesce(EXCLUDED.refund_status_at, '-infinity') > coalesce(t.refund_status_at, '-infinity'))
            RETURNING t.easypost_id, t.xmax = 0 AS created
        )
        INSERT INTO sync_jobs (kind, object_id)
        SELECT 'shipment', easypost_id FROM up WHERE created ORDER BY easypost_id
        ON CONFLICT (kind, object_id) WHERE status IN ('pending', 'running') DO NOTHING;
    END IF;

    IF 'batch' = ANY (v_kinds) THEN
        WITH up AS (
            INSERT INTO batches AS t (easypost_id, mode, state, reference, num_shipments, label_url,
                                      scan_form_easypost_id, created_count, queued_for_purchase_count,
                                      creation_failed_count, postage_purchased_count,
                                      postage_purchase_failed_count, ep_created_at, ep_updated_at, event_at,
                                      last_webhook_event_id)
            SELECT x.oid, eps_str(x.r -> 'mode'), eps_str(x.r -> 'state'), eps_str(x.r -> 'reference'),
                   eps_int(x.r -> 'num_shipments'), eps_str(x.r -> 'label_url'),
                   CASE WHEN jsonb_typeof(x.r -> 'scan_form') = 'object' THEN eps_str(x.r -> 'scan_form' -> 'id') END,
                   eps_int(x.r -> 'status' -> 'created'), eps_int(x.r -> 'status' -> 'queued_for_purchase'),
                   eps_int(x.r -> 'status' -> 'creation_failed'), eps_int(x.r -> 'status' -> 'postage_purchased'),
                   eps_int(x.r -> 'status' -> 'postage_purchase_failed'),
                   eps_ts(eps_str(x.r -> 'created_at')), x.u, x.ev_at, x.event
            FROM unnest(s) x WHERE x.kind = 'batch' ORDER BY x.oid
            ON CONFLICT (easypost_id) DO UPDATE SET
                mode = EXCLUDED.mode, state = EXCLUDED.state, reference = EXCLUDED.reference,
                num_shipments = EXCLUDED.num_shipments, label_url = EXCLUDED.label_url,
                scan_form_easypost_id = coalesce(EXCLUDED.scan_form_easypost_id, t.scan_form_easypost_id),
                created_count = EXCLUDED.created_count,
                queued_for_purchase_count = EXCLUDED.queued_for_purchase_count,
                creation_failed_count = EXCLUDED.creation_failed_count,
                postage_purchased_count = EXCLUDED.postage_purchased_count,
                postage_purchase_failed_count = EXCLUDED.postage_purchase_failed_count,
                ep_created_at = coalesce(EXCLUDED.ep_created_at, t.ep_created_at),
                ep_updated_at = EXCLUDED.ep_updated_at, event_at = EXCLUDED.event_at,
                last_webhook_event_id = EXCLUDED.last_webhook_event_id, updated_at = now()
            WHERE (coalesce(EXCLUDED.ep_updated_at, '-infinity'), coalesce(EXCLUDED.event_at, '-infinity'))
                > (coalesce(t.ep_updated_at, '-infinity'), coalesce(t.event_at, '-infinity'))
            RETURNING t.easypost_id
        )
        SELECT array_agg(easypost_id) INTO v_batch FROM up;

        -- the shipments of each batch written: replaced by its newer list
        -- (the batch row, locked above, serialises writers of one batch)
        IF v_batch IS NOT NULL THEN
            DELETE FROM batch_shipments WHERE batch_easypost_id = ANY (v_batch);
            INSERT INTO batch_shipments (batch_easypost_id, shipment_easypost_id, shipment_id, batch_status,
                                         batch_message)
            SELECT DISTINCT ON (x.oid, eps_str(e -> 'id')) x.oid, eps_str(e -> 'id'),
                   (SELECT sh.id FROM shipments sh WHERE sh.easypost_id = eps_str(e -> 'id') LIMIT 1),
                   eps_str(e -> 'batch_status'), eps_str(e -> 'batch_message')
            FROM unnest(s) x
            CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(x.r -> 'shipments') = 'array'
                                                         THEN x.r -> 'shipments' ELSE '[]' END) e
            WHERE x.kind = 'batch' AND x.oid = ANY (v_batch) AND jsonb_typeof(e) = 'object'
              AND eps_str(e -> 'id') IS NOT NULL
            ORDER BY x.oid, eps_str(e -> 'id');
        END IF;
    END IF;

    IF 'scan_form' = ANY (v_kinds) THEN
        INSERT INTO scan_forms AS t (easypost_id, mode, status, message, form_url, form_file_type, confirmation,
                                     batch_easypost_id, address_easypost_id, tracking_codes, ep_created_at,
                                     ep_updated_at, event_at, last_webhook_event_id)
        SELECT x.oid, eps_str(x.r -> 'mode'), eps_str(x.r -> 'status'), eps_str(x.r -> 'message'),
               eps_str(x.r -> 'form_url'), eps_str(x.r -> 'form_file_type'), eps_str(x.r -> 'confirmation'),
               eps_str(x.r -> 'batch_id'),
               CASE WHEN jsonb_typeof(x.r -> 'address') = 'object' THEN eps_str(x.r -> 'address' -> 'id') END,
               CASE WHEN jsonb_typeof(x.r -> 'tracking_codes') = 'array'
                    THEN ARRAY(SELECT eps_str(c) FROM jsonb_array_elements(x.r -> 'tracking_codes') c
                               WHERE jsonb_typeof(c) = 'string') END,
               eps_ts(eps_str(x.r -> 'created_at')), x.u, x.ev_at, x.event
        FROM unnest(s) x WHERE x.kind = 'scan_form' ORDER BY x.oid
        ON CONFLICT (easypost_id) DO UPDATE SET
            mode = EXCLUDED.mode, status = EXCLUDED.status, message = EXCLUDED.message,
            form_url = EXCLUDED.form_url, form_file_type = EXCLUDED.form_file_type,
            confirmation = EXCLUDED.confirmation, batch_easypost_id = EXCLUDED.batch_easypost_id,
            address_easypost_id = EXCLUDED.address_easypost_id, tracking_codes = EXCLUDED.tracking_codes,
            ep_created_at = coalesce(EXCLUDED.ep_created_at, t.ep_created_at),
            ep_updated_at = EXCLUDED.ep_updated_at, event_at = EXCLUDED.event_at,
            last_webhook_event_id = EXCLUDED.last_webhook_event_id, updated_at = now()
        WHERE (coalesce(EXCLUDED.ep_updated_at, '-infinity'), coalesce(EXCLUDED.event_at, '-infinity'))
            > (coalesce(t.ep_updated_at, '-infinity'), coalesce(t.event_at, '-infinity'));
    END IF;

    IF 'insurance' = ANY (v_kinds) THEN
        INSERT INTO insurances AS t (easypost_id, mode, reference, status, amount, provider, provider_id, carrier,
                                     tracking_code, shipment_easypost_id, shipment_id, tracker_easypost_id,
                                     fee_type, fee_amount, fee_charged, fee_refunded, ep_created_at,
                                     ep_updated_at, event_at, last_webhook_event_id)
        SELECT x.oid, eps_str(x.r -> 'mode'), eps_str(x.r -> 'reference'), eps_str(x.r -> 'status'),
               eps_num(x.r -> 'amount'), eps_str(x.r -> 'provider'), eps_str(x.r -> 'provider_id'),
               eps_str(x.r -> 'carrier'), eps_str(x.r -> 'tracking_code'), eps_str(x.r -> 'shipment_id'),
               (SELECT sh.id FROM shipments sh WHERE sh.easypost_id = eps_str(x.r -> 'shipment_id') LIMIT 1),
               CASE WHEN jsonb_typeof(x.r -> 'tracker') = 'object' THEN eps_str(x.r -> 'tracker' -> 'id') END,
               eps_str(f.fee -> 'type'), eps_num(f.fee -> 'amount'), eps_bool(f.fee -> 'charged'),
               eps_bool(f.fee -> 'refunded'),
               eps_ts(eps_str(x.r -> 'created_at')), x.u, x.ev_at, x.event
        FROM unnest(s) x
        CROSS JOIN LATERAL (SELECT CASE WHEN jsonb_typeof(x.r -> 'fee') = 'object' THEN x.r -> 'fee' END AS fee) f
        WHERE x.kind = 'insurance' ORDER BY x.oid
        ON CONFLICT (easypost_id) DO UPDATE SET
            mode = EXCLUDED.mode, reference = EXCLUDED.reference, status = EXCLUDED.status,
            amount = EXCLUDED.amount, provider = EXCLUDED.provider, provider_id = EXCLUDED.provider_id,
            carrier = EXCLUDED.carrier, tracking_code = EXCLUDED.tracking_code,
            shipment_easypost_id = coalesce(EXCLUDED.shipment_easypost_id, t.shipment_easypost_id),
            shipment_id = coalesce(EXCLUDED.shipment_id, t.shipment_id),
            tracker_easypost_id = coalesce(EXCLUDED.tracker_easypost_id, t.tracker_easypost_id),
            fee_type = EXCLUDED.fee_type, fee_amount = EXCLUDED.fee_amount, fee_charged = EXCLUDED.fee_charged,
            fee_refunded = EXCLUDED.fee_refunded,
            ep_created_at = coalesce(EXCLUDED.ep_created_at, t.ep_created_at),
            ep_updated_at = EXCLUDED.ep_updated_at, event_at = EXCLUDED.event_at,
            last_webhook_event_id = EXCLUDED.last_webhook_event_id, updated_at = now()
        WHERE (coalesce(EXCLUDED.ep_updated_at, '-infinity'), coalesce(EXCLUDED.event_at, '-infinity'))
            > (coalesce(t.ep_updated_at, '-infinity'), coalesce(t.event_at, '-infinity'));
    END IF;

    IF 'refund' = ANY (v_kinds) THEN
        INSERT INTO refunds AS t (easypost_id, mode, status, confirmation_number, carrier, tracking_code,
                                  shipment_easypost_id, shipment_id, ep_created_at, ep_updated_at, event_at,
                                  last_webhook_event_id)
        SELECT x.oid, eps_str(x.r -> 'mode'), eps_str(x.r -> 'status'), eps_str(x.r -> 'confirmation_number'),
               eps_str(x.r -> 'carrier'), eps_str(x.r -> 'tracking_code'), eps_str(x.r -> 'shipment_id'),
               (SELECT sh.id FROM shipments sh WHERE sh.easypost_id = eps_str(x.r -> 'shipment_id') LIMIT 1),
               eps_ts(eps_str(x.r -> 'created_at')), x.u, x.ev_at, x.event
        FROM unnest(s) x WHERE x.kind = 'refund' ORDER BY x.oid
        ON CONFLICT (easypost_id) DO UPDATE SET
            mode = EXCLUDED.mode, status = EXCLUDED.status, confirmation_number = EXCLUDED.confirmation_number,
            carrier = EXCLUDED.carrier, tracking_code = EXCLUDED.tracking_code,
            shipment_easypost_id = coalesce(EXCLUDED.shipment_easypost_id, t.shipment_easypost_id),
            shipment_id = coalesce(EXCLUDED.shipment_id, t.shipment_id),
            ep_created_at = coalesce(EXCLUDED.ep_created_at, t.ep_created_at),
            ep_updated_at = EXCLUDED.ep_updated_at, event_at = EXCLUDED.event_at,
            last_webhook_event_id = EXCLUDED.last_webhook_event_id, updated_at = now()
        WHERE (coalesce(EXCLUDED.ep_updated_at, '-infinity'), coalesce(EXCLUDED.event_at, '-infinity'))
            > (coalesce(t.ep_updated_at, '-infinity'), coalesce(t.event_at, '-infinity'));
    END IF;

    IF 'report' = ANY (v_kinds) THEN
        INSERT INTO reports AS t (easypost_id, kind, mode, status, start_date, end_date, include_children, url,
                                  url_expires_at, ep_created_at, ep_updated_at, event_at, last_webhook_event_id)
        SELECT x.oid, eps_str(x.r -> 'object'), eps_str(x.r -> 'mode'), eps_str(x.r -> 'status'),
               eps_date(x.r -> 'start_date'), eps_date(x.r -> 'end_date'), eps_bool(x.r -> 'include_children'),
               eps_str(x.r -> 'url'), eps_ts(eps_str(x.r -> 'url_expires_at')),
               eps_ts(eps_str(x.r -> 'created_at')), x.u, x.ev_at, x.event
        FROM unnest(s) x WHERE x.kind = 'report' ORDER BY x.oid
        ON CONFLICT (easypost_id) DO UPDATE SET
            kind = EXCLUDED.kind, mode = EXCLUDED.mode, status = EXCLUDED.status,
            start_date = EXCLUDED.start_date, end_date = EXCLUDED.end_date,
            include_children = EXCLUDED.include_children, url = EXCLUDED.url,
            url_expires_at = EXCLUDED.url_expires_at,
            ep_created_at = coalesce(EXCLUDED.ep_created_at, t.ep_created_at),
            ep_updated_at = EXCLUDED.ep_updated_at, event_at = EXCLUDED.event_at,
            last_webhook_event_id = EXCLUDED.last_webhook_event_id, updated_at = now()
        WHERE (coalesce(EXCLUDED.ep_updated_at, '-infinity'), coalesce(EXCLUDED.event_at, '-infinity'))
            > (coalesce(t.ep_updated_at, '-infinity'), coalesce(t.event_at, '-infinity'));
    END IF;

    IF 'shipment_invoice' = ANY (v_kinds) THEN
        INSERT INTO shipment_invoices AS t (easypost_id, mode, status, carrier, tracking_code, carrier_invoice_id,
                                            shipment_easypost_id, shipment_id, quoted_currency, quoted_amount,
                                            initially_paid_amount, final_invoice_amount, ep_created_at,
                                            ep_updated_at, event_at, last_webhook_event_id)
        SELECT x.oid, eps_str(x.r -> 'mode'), eps_str(x.r -> 'status'), eps_str(x.r -> 'carrier'),
               eps_str(x.r -> 'tracking_code'), eps_str(x.r -> 'carrier_invoice_id'),
               eps_str(x.r -> 'shipment_id'),
               (SELECT sh.id FROM shipments sh WHERE sh.easypost_id = eps_str(x.r -> 'shipment_id') LIMIT 1),
               eps_str(x.r -> 'quoted_currency'), eps_num(x.r -> 'quoted_amount'),
               eps_num(x.r -> 'initially_paid_amount'), eps_num(x.r -> 'final_invoice_amount'),
               eps_ts(eps_str(x.r -> 'created_at')), x.u, x.ev_at, x.event
        FROM unnest(s) x WHERE x.kind = 'shipment_invoice' ORDER BY x.oid
        ON CONFLICT (easypost_id) DO UPDATE SET
            mode = EXCLUDED.mode, status = EXCLUDED.status, carrier = EXCLUDED.carrier,
            tracking_code = EXCLUDED.tracking_code, carrier_invoice_id = EXCLUDED.carrier_invoice_id,
            shipment_easypost_id = coalesce(EXCLUDED.shipment_easypost_id, t.shipment_easypost_id),
            shipment_id = coalesce(EXCLUDED.shipment_id, t.shipment_id),
            quoted_currency = EXCLUDED.quoted_currency, quoted_amount = EXCLUDED.quoted_amount,
            initially_paid_amount = EXCLUDED.initially_paid_amount,
            final_invoice_amount = EXCLUDED.final_invoice_amount,
            ep_created_at = coalesce(EXCLUDED.ep_created_at, t.ep_created_at),
            ep_updated_at = EXCLUDED.ep_updated_at, event_at = EXCLUDED.event_at,
            last_webhook_event_id = EXCLUDED.last_webhook_event_id, updated_at = now()
        WHERE (coalesce(EXCLUDED.ep_updated_at, '-infinity'), coalesce(EXCLUDED.event_at, '-infinity'))
            > (coalesce(t.ep_updated_at, '-infinity'), coalesce(t.event_at, '-infinity'));
    END IF;

    IF 'claim' = ANY (v_kinds) THEN
        INSERT INTO claims AS t (easypost_id, mode, type, status, status_detail, status_at, approved_amount,
                                 insurance_amount, requested_amount, salvage_value, reference, tracking_code,
                                 insurance_easypost_id, shipment_easypost_id, shipment_id, history,
                                 ep_created_at, ep_updated_at, event_at, last_webhook_event_id)
        SELECT x.oid, eps_str(x.r -> 'mode'), eps_str(x.r -> 'type'), eps_str(x.r -> 'status'),
               eps_str(x.r -> 'status_detail'), eps_ts(eps_str(x.r -> 'status_timestamp')),
               eps_num(x.r -> 'approved_amount'), eps_num(x.r -> 'insurance_amount'),
               eps_num(x.r -> 'requested_amount'), eps_num(x.r -> 'salvage_value'), eps_str(x.r -> 'reference'),
               eps_str(x.r -> 'tracking_code'), eps_str(x.r -> 'insurance_id'), eps_str(x.r -> 'shipment_id'),
               (SELECT sh.id FROM shipments sh WHERE sh.easypost_id = eps_str(x.r -> 'shipment_id') LIMIT 1),
               CASE WHEN jsonb_typeof(x.r -> 'history') = 'array' THEN x.r -> 'history' END,
               eps_ts(eps_str(x.r -> 'created_at')), x.u, x.ev_at, x.event
        FROM unnest(s) x WHERE x.kind = 'claim' ORDER BY x.oid
        ON CONFLICT (easypost_id) DO UPDATE SET
            mode = EXCLUDED.mode, type = EXCLUDED.type, status = EXCLUDED.status,
            status_detail = EXCLUDED.status_detail, status_at = EXCLUDED.status_at,
            approved_amount = EXCLUDED.approved_amount, insurance_amount = EXCLUDED.insurance_amount,
            requested_amount = EXCLUDED.requested_amount, salvage_value = EXCLUDED.salvage_value,
            reference = EXCLUDED.reference, tracking_code = EXCLUDED.tracking_code,
            insurance_easypost_id = coalesce(EXCLUDED.insurance_easypost_id, t.insurance_easypost_id),
            shipment_easypost_id = coalesce(EXCLUDED.shipment_easypost_id, t.shipment_easypost_id),
            shipment_id = coalesce(EXCLUDED.shipment_id, t.shipment_id), history = EXCLUDED.history,
            ep_created_at = coalesce(EXCLUDED.ep_created_at, t.ep_created_at),
            ep_updated_at = EXCLUDED.ep_updated_at, event_at = EXCLUDED.event_at,
            last_webhook_event_id = EXCLUDED.last_webhook_event_id, updated_at = now()
        WHERE (coalesce(EXCLUDED.ep_updated_at, '-infinity'), coalesce(EXCLUDED.event_at, '-infinity'))
            > (coalesce(t.ep_updated_at, '-infinity'), coalesce(t.event_at, '-infinity'));
    END IF;

    IF 'payment' = ANY (v_kinds) THEN
        INSERT INTO payments AS t (easypost_id, mode, status, amount, charge_type, source_type, target_type, last4,
                                   ep_created_at, ep_updated_at, event_at, last_webhook_event_id)
        SELECT x.oid, eps_str(x.r -> 'mode'), eps_str(x.r -> 'status'), eps_num(x.r -> 'amount'),
               eps_str(x.r -> 'charge_type'), eps_str(x.r -> 'source_type'), eps_str(x.r -> 'target_type'),
               eps_str(x.r -> 'last4'), eps_ts(eps_str(x.r -> 'created_at')), x.u, x.ev_at, x.event
        FROM unnest(s) x WHERE x.kind = 'payment' ORDER BY x.oid
        ON CONFLICT (easypost_id) DO UPDATE SET
            mode = EXCLUDED.mode, status = EXCLUDED.status, amount = EXCLUDED.amount,
            charge_type = EXCLUDED.charge_type, source_type = EXCLUDED.source_type,
            target_type = EXCLUDED.target_type, last4 = EXCLUDED.last4,
            ep_created_at = coalesce(EXCLUDED.ep_created_at, t.ep_created_at),
            ep_updated_at = EXCLUDED.ep_updated_at, event_at = EXCLUDED.event_at,
            last_webhook_event_id = EXCLUDED.last_webhook_event_id, updated_at = now()
        WHERE (coalesce(EXCLUDED.ep_updated_at, '-infinity'), coalesce(EXCLUDED.event_at, '-infinity'))
            > (coalesce(t.ep_updated_at, '-infinity'), coalesce(t.event_at, '-infinity'));
    END IF;
END
$$;
