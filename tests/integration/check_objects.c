/*
 * check_objects.c - the events of EasyPost objects other than trackers
 * projected into their typed tables: the batch and scan-form fixtures, a
 * payload per documented event type, newer-wins, shipment stubs and fetch
 * jobs, an unknown type stored raw and shown, a poison body isolated, and
 * a batch of tracker events that never calls the object projection.
 */
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"
#include "util.h"

static struct daemon dm;

static void
up(void)
{
        ck_assert_int_eq(daemon_start(&dm, NULL), 0);
}

static void
down(void)
{
        ck_assert_int_eq(daemon_stop(&dm, SIGTERM), 0);
}

static void
wipe(PGconn *c)
{
        db_exec(c, "TRUNCATE shipment_events, trackers, shipments, webhook_events, projection_queue, sync_jobs, batches,"
                   " batch_shipments, scan_forms, insurances, refunds, reports, shipment_invoices, claims,"
                   " payments CASCADE");
}

/* Posts one Event (make_event's envelope) and expects 200. */
static void
post(const char *id, const char *description, const char *result)
{
        char resp[256];
        char *b = make_event(id, description, result);
        int st = post_event(dm.port, b, strlen(b), resp, sizeof(resp));

        ck_assert_msg(st == 200, "%s: %d %s", id, st, resp);
        free(b);
}

static void
expect_text(PGconn *c, const char *sql, const char *param, const char *want)
{
        char *got = db_text(c, sql, param);

        ck_assert_msg(strcmp(got, want) == 0, "%s [%s]: got '%s', want '%s'", sql, param ? param : "",
                      got, want);
        free(got);
}

static void
expect_status(PGconn *c, const char *event_id, const char *want)
{
        expect_text(c, "SELECT status FROM webhook_events WHERE event_id = $1", event_id, want);
}

START_TEST(test_fixtures_projected)
{
        SKIP_WITHOUT_FIXTURES();
        PGconn *c = db_open();
        char resp[256];
        size_t len;
        char *body;

        /* batch.created: state, counts by batch status, its shipment linked by a stub and a fetch */
        wipe(c);
        body = fixture_read("event_batch_created_docs.json", &len);
        ck_assert_int_eq(post_event(dm.port, body, len, resp, sizeof(resp)), 200);
        free(body);
        expect_status(c, "evt_...", "projected");
        expect_text(c, "SELECT concat_ws('/', state, mode, num_shipments, created_count, queued_for_purchase_count,"
                       " creation_failed_count, postage_purchased_count, postage_purchase_failed_count,"
                       " coalesce(label_url, '-'), coalesce(scan_form_easypost_id, '-'), ep_updated_at)"
                       " FROM batches WHERE easypost_id = $1",
                    "batch_...", "purchased/production/1/0/0/0/1/0/-/-/2015-12-03 19:09:19+00");
        expect_text(c, "SELECT b.batch_status || '/' || (b.shipment_id = s.id) || '/' || (s.synced_at IS NULL)"
                       " FROM batch_shipments b JOIN shipments s ON s.easypost_id = b.shipment_easypost_id"
                       " WHERE b.batch_easypost_id = $1",
                    "batch_...", "postage_purchased/true/true");
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE kind = 'shipment' AND object_id = $1",
                                 "shp_a5b1348307694736aaqqqq8fqda53f93"), 1);
        expect_text(c, "SELECT count(*) FROM batches b JOIN webhook_events w ON w.id = b.last_webhook_event_id"
                       " WHERE w.event_id = $1", "evt_...", "1");

        /* batch.updated: its label and its four shipment entries (one id) */
        wipe(c);
        body = fixture_read("event_batch_updated_docs.json", &len);
        ck_assert_int_eq(post_event(dm.port, body, len, resp, sizeof(resp)), 200);
        free(body);
        expect_status(c, "evt_...", "projected");
        expect_text(c, "SELECT state || '/' || label_url || '/' || num_shipments || '/' || mode"
                       " FROM batches WHERE easypost_id = $1",
                    "batch_...", "label_generated/https://amazonaws.com/.../a1b2c3.pdf/1/test");
        expect_text(c, "SELECT string_agg(shipment_easypost_id || ':' || batch_status, ',') FROM batch_shipments",
                    NULL, "shp_...:created");

        /* scan_form.created: status, form, batch, tracking codes, its address */
        wipe(c);
        body = fixture_read("event_scan_form_created_docs.json", &len);
        ck_assert_int_eq(post_event(dm.port, body, len, resp, sizeof(resp)), 200);
        free(body);
        expect_status(c, "evt_...", "projected");
        expect_text(c, "SELECT concat_ws('/', status, form_url, batch_easypost_id, address_easypost_id,"
                       " array_to_string(tracking_codes, ','), ep_created_at, ep_updated_at)"
                       " FROM scan_forms WHERE easypost_id = $1",
                    "sf_...",
                    "created/https://easypost-files.s3-us-west-2.amazonaws.com/...2c0cb9.pdf/batch_.../"
                    "adr_tyRwEd23/9405536897846194850412,9400136897846194907281,9400136897846194977529/"
                    "2015-09-30 21:00:55+00/2015-09-30 21:00:57+00");
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM scan_forms WHERE '9400136897846194907281' = ANY (tracking_codes)",
                                 NULL), 1);
        PQfinish(c);
}
END_TEST

/* One payload per documented event type, written from EasyPost's object
 * references: every type lands in its table with typed columns. */
START_TEST(test_documented_payloads)
{
        PGconn *c = db_open();

        wipe(c);
        post("evt_doc_batch", "batch.updated",
             "{\"id\":\"batch_d1\",\"object\":\"Batch\",\"mode\":\"test\",\"state\":\"label_generated\","
             "\"num_shipments\":2,\"reference\":\"run-7\",\"created_at\":\"2024-02-01T10:00:00Z\","
             "\"updated_at\":\"2024-02-01T10:05:00Z\",\"scan_form\":{\"id\":\"sf_d1\",\"object\":\"ScanForm\"},"
             "\"shipments\":[{\"id\":\"shp_d1\",\"batch_status\":\"postage_purchased\",\"batch_message\":null},"
             "{\"id\":\"shp_d2\",\"batch_status\":\"postage_purchase_failed\",\"batch_message\":\"no rate\"}],"
             "\"status\":{\"created\":0,\"queued_for_purchase\":0,\"creation_failed\":0,"
             "\"postage_purchased\":1,\"postage_purchase_failed\":1},\"pickup\":null,"
             "\"label_url\":\"https://example.com/batch_d1.pdf\"}");
        post("evt_doc_sf", "scan_form.updated",
             "{\"id\":\"sf_d1\",\"object\":\"ScanForm\",\"status\":\"created\",\"message\":null,"
             "\"form_url\":\"https://example.com/sf_d1.pdf\",\"form_file_type\":null,\"batch_id\":\"batch_d1\","
             "\"confirmation\":null,\"tracking_codes\":[\"EZ1\",\"EZ2\"],"
             "\"created_at\":\"2024-02-01T11:00:00Z\",\"updated_at\":\"2024-02-01T11:00:01Z\"}");
        post("evt_doc_ins", "insurance.purchased",
             "{\"id\":\"ins_d1\",\"object\":\"Insurance\",\"mode\":\"test\",\"reference\":\"ins-ref\","
             "\"amount\":\"100.00000\",\"provider\":\"easypost\",\"provider_id\":null,\"carrier\":\"USPS\","
             "\"shipment_id\":\"shp_d1\",\"tracking_code\":\"EZ1\",\"status\":\"purchased\","
             "\"tracker\":{\"id\":\"trk_d1\",\"object\":\"Tracker\"},\"to_address\":null,\"from_address\":null,"
             "\"fee\":{\"object\":\"Fee\",\"type\":\"InsuranceFee\",\"amount\":\"1.00000\",\"charged\":true,"
             "\"refunded\":false},\"messages\":[],\"created_at\":\"2024-02-02T09:00:00Z\","
             "\"updated_at\":\"2024-02-02T09:00:02Z\"}");
        post("evt_doc_insc", "insurance.cancelled",
             "{\"id\":\"ins_d2\",\"object\":\"Insurance\",\"amount\":\"25.5\",\"status\":\"cancelled\","
             "\"tracking_code\":\"EZ9\",\"shipment_id\":null,\"tracker\":null,\"fee\":null,"
             "\"updated_at\":\"2024-02-02T09:10:00Z\"}");
        post("evt_doc_rfnd", "refund.successful",
             "{\"id\":\"rfnd_d1\",\"object\":\"Refund\",\"created_at\":\"2024-01-24T00:07:22Z\","
             "\"updated_at\":\"2024-02-08T00:07:22Z\",\"tracking_code\":\"EZ2\",\"confirmation_number\":\"CN-1\","
             "\"status\":\"refunded\",\"carrier\":\"USPS\",\"shipment_id\":\"shp_d2\"}");
        post("evt_doc_rep1", "report.new",
             "{\"id\":\"shprep_d1\",\"object\":\"ShipmentReport\",\"mode\":\"test\",\"status\":\"new\","
             "\"start_date\":\"2022-10-01\",\"end_date\":\"2022-10-02\",\"include_children\":false,"
             "\"url\":null,\"url_expires_at\":null,\"created_at\":\"2024-01-24T00:07:24Z\","
             "\"updated_at\":\"2024-01-24T00:07:24Z\"}");
        post("evt_doc_rep2", "report.available",
             "{\"id\":\"plrep_d2\",\"object\":\"PaymentLogReport\",\"mode\":\"test\",\"status\":\"available\","
             "\"start_date\":\"2022-11-01\",\"end_date\":\"2022-11-30\",\"include_children\":true,"
             "\"url\":\"https://example.com/plrep_d2.csv\",\"url_expires_at\":\"2024-01-24T00:08:00Z\","
             "\"created_at\":\"2024-01-24T00:07:24Z\",\"updated_at\":\"2024-01-24T00:07:40Z\"}");
        post("evt_doc_rep3", "report.failed",
             "{\"id\":\"trkrep_d3\",\"object\":\"TrackerReport\",\"status\":\"failed\","
             "\"start_date\":\"2022-12-01\",\"end_date\":\"2022-12-02\",\"updated_at\":null}");
        post("evt_doc_rep4", "report.empty",
             "{\"id\":\"refrep_d4\",\"object\":\"RefundReport\",\"status\":\"empty\","
             "\"start_date\":\"2022-12-01\",\"end_date\":\"2022-12-02\"}");
        post("evt_doc_pay1", "payment.created",
             "{\"id\":\"paylog_d1\",\"object\":\"PaymentLog\",\"source_type\":\"credit_card\","
             "\"target_type\":\"wallet\",\"charge_type\":\"recharge\",\"status\":\"pending\","
             "\"amount\":\"50.00\",\"last4\":\"4242\",\"created_at\":\"2024-03-01T00:00:00Z\","
             "\"updated_at\":\"2024-03-01T00:00:00Z\"}");
        post("evt_doc_pay2", "payment.completed",
             "{\"id\":\"paylog_d1\",\"object\":\"PaymentLog\",\"source_type\":\"credit_card\","
             "\"target_type\":\"wallet\",\"charge_type\":\"recharge\",\"status\":\"completed\","
             "\"amount\":\"50.00\",\"last4\":\"4242\",\"created_at\":\"2024-03-01T00:00:00Z\","
             "\"updated_at\":\"2024-03-01T00:05:00Z\"}");
        post("evt_doc_pay3", "payment.failed",
             "{\"id\":\"paylog_d3\",\"object\":\"PaymentLog\",\"status\":\"failed\",\"amount\":\"12.5\","
             "\"updated_at\":\"2024-03-02T00:00:00Z\"}");
        post("evt_doc_inv1", "shipment.invoice.created",
             "{\"id\":\"shpinv_d1\",\"shipment_id\":\"shp_d1\",\"carrier\":\"USPS\",\"tracking_code\":\"EZ1\","
             "\"status\":\"processed\",\"quoted_currency\":\"USD\",\"quoted_amount\":\"6.07\","
             "\"initially_paid_amount\":\"6.07\",\"final_invoice_amount\":\"8.45\","
             "\"created_at\":\"2024-02-10T00:00:00Z\",\"updated_at\":\"2024-02-10T00:00:00Z\"}");
        post("evt_doc_inv2", "shipment.invoice.updated",
             "{\"id\":\"shpinv_d1\",\"shipment_id\":\"shp_d1\",\"carrier\":\"USPS\",\"tracking_code\":\"EZ1\","
             "\"status\":\"disputed\",\"quoted_currency\":\"USD\",\"quoted_amount\":\"6.07\","
             "\"initially_paid_amount\":\"6.07\",\"final_invoice_amount\":\"7.00\","
             "\"updated_at\":\"2024-02-11T00:00:00Z\"}");
        /* the claim events in both spellings EasyPost documents */
        static const char *const claim_types[] = { "claim.submitted", "claims.updated", "claim.cancelled",
                                                   "claims.rejected", "claim.approved", "claims.submitted",
                                                   "claim.updated", "claims.cancelled", "claim.rejected",
                                                   "claims.approved" };
        for (size_t i = 0; i < ARRAY_LEN(claim_types); i++) {
                char id[32], res[768];
                snprintf(id, sizeof(id), "evt_doc_clm%zu", i);
                snprintf(res, sizeof(res),
                         "{\"id\":\"clm_d%zu\",\"object\":\"Claim\",\"mode\":\"test\",\"type\":\"damage\","
                         "\"status\":\"approved_partial\",\"status_detail\":\"partly covered\","
                         "\"status_timestamp\":\"2024-04-02T10:00:00Z\",\"approved_amount\":\"80.00\","
                         "\"insurance_amount\":\"100.00\",\"requested_amount\":\"100.00\",\"salvage_value\":\"5\","
                         "\"reference\":\"c-%zu\",\"tracking_code\":\"EZ1\",\"insurance_id\":\"ins_d1\","
                         "\"shipment_id\":\"shp_d1\",\"history\":[{\"status\":\"submitted\","
                         "\"status_detail\":\"received\",\"status_timestamp\":\"2024-04-01T10:00:00Z\"},"
                         "{\"status\":\"approved_partial\",\"status_detail\":\"partly covered\","
                         "\"status_timestamp\":\"2024-04-02T10:00:00Z\"}],"
                         "\"created_at\":\"2024-04-01T10:00:00Z\",\"updated_at\":\"2024-04-02T10:00:00Z\"}",
                         i, i);
                post(id, claim_types[i], res);
                expect_status(c, id, "projected");
        }

        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE status <> 'projected'", NULL), 0);
        expect_text(c, "SELECT concat_ws('/', state, reference, num_shipments, postage_purchased_count,"
                       " postage_purchase_failed_count, scan_form_easypost_id, label_url) FROM batches"
                       " WHERE easypost_id = $1",
                    "batch_d1", "label_generated/run-7/2/1/1/sf_d1/https://example.com/batch_d1.pdf");
        expect_text(c, "SELECT string_agg(shipment_easypost_id || ':' || batch_status || ':' ||"
                       " coalesce(batch_message, '-'), ',' ORDER BY shipment_easypost_id) FROM batch_shipments",
                    NULL, "shp_d1:postage_purchased:-,shp_d2:postage_purchase_failed:no rate");
        expect_text(c, "SELECT status || '/' || batch_easypost_id || '/' || array_length(tracking_codes, 1)"
                       " FROM scan_forms WHERE easypost_id = $1", "sf_d1", "created/batch_d1/2");
        /* money as numeric, the fee, the links */
        expect_text(c, "SELECT concat_ws('/', status, amount = 100, provider, carrier, tracking_code, reference,"
                       " shipment_easypost_id, shipment_id IS NOT NULL, tracker_easypost_id, fee_type,"
                       " fee_amount = 1, fee_charged, fee_refunded, pg_typeof(amount))"
                       " FROM insurances WHERE easypost_id = $1",
                    "ins_d1", "purchased/t/easypost/USPS/EZ1/ins-ref/shp_d1/t/trk_d1/InsuranceFee/t/t/f/numeric");
        expect_text(c, "SELECT status || '/' || amount || '/' || coalesce(shipment_easypost_id, '-')"
                       " FROM insurances WHERE easypost_id = $1", "ins_d2", "cancelled/25.5/-");
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE kind = 'tracker' AND object_id = $1",
                                 "trk_d1"), 1);
        /* the refund, and the refunded shipment's refund status */
        expect_text(c, "SELECT concat_ws('/', r.status, r.confirmation_number, r.carrier, r.tracking_code,"
                       " r.shipment_id = s.id, s.refund_status, s.refund_status_at)"
                       " FROM refunds r JOIN shipments s ON s.easypost_id = r.shipment_easypost_id"
                       " WHERE r.easypost_id = $1",
                    "rfnd_d1", "refunded/CN-1/USPS/EZ2/t/refunded/2024-02-08 00:07:22+00");
        expect_text(c, "SELECT string_agg(concat_ws('/', easypost_id, kind, status, start_date, end_date,"
                       " include_children, coalesce(url, '-'), url_expires_at), ',' ORDER BY easypost_id)"
                       " FROM reports",
                    NULL,
                    "plrep_d2/PaymentLogReport/available/2022-11-01/2022-11-30/t/"
                    "https://example.com/plrep_d2.csv/2024-01-24 00:08:00+00,"
                    "refrep_d4/RefundReport/empty/2022-12-01/2022-12-02/-,"
                    "shprep_d1/ShipmentReport/new/2022-10-01/2022-10-02/f/-,"
                    "trkrep_d3/TrackerReport/failed/2022-12-01/2022-12-02/-");
        expect_text(c, "SELECT string_agg(concat_ws('/', easypost_id, status, amount, charge_type, last4), ','"
                       " ORDER BY easypost_id) FROM payments",
                    NULL, "paylog_d1/completed/50.00/recharge/4242,paylog_d3/failed/12.5");
        expect_text(c, "SELECT concat_ws('/', status, carrier, quoted_amount, initially_paid_amount,"
                       " final_invoice_amount, shipment_id IS NOT NULL) FROM shipment_invoices"
                       " WHERE easypost_id = $1",
                    "shpinv_d1", "disputed/USPS/6.07/6.07/7.00/t");
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM claims", NULL), (long)ARRAY_LEN(claim_types));
        expect_text(c, "SELECT concat_ws('/', type, status, status_detail, status_at, approved_amount,"
                       " insurance_amount, requested_amount, salvage_value, insurance_easypost_id,"
                       " shipment_id IS NOT NULL, jsonb_array_length(history), history -> 0 ->> 'status')"
                       " FROM claims WHERE easypost_id = $1",
                    "clm_d3", "damage/approved_partial/partly covered/2024-04-02 10:00:00+00/80.00/100.00/"
                              "100.00/5/ins_d1/t/2/submitted");
        /* each shipment named once became one stub and one fetch */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipments WHERE synced_at IS NULL", NULL), 2);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE kind = 'shipment'", NULL), 2);
        PQfinish(c);
}
END_TEST

/* An older snapshot never overwrites a newer one, whatever the arrival order;
 * the shipment's refund status follows the newest refund. */
START_TEST(test_newer_wins)
{
        PGconn *c = db_open();

        wipe(c);
        post("evt_nw_3", "insurance.purchased",
             "{\"id\":\"ins_nw\",\"object\":\"Insurance\",\"status\":\"purchased\",\"amount\":\"30\","
             "\"updated_at\":\"2024-05-01T12:00:00Z\"}");
        post("evt_nw_1", "insurance.purchased",
             "{\"id\":\"ins_nw\",\"object\":\"Insurance\",\"status\":\"pending\",\"amount\":\"10\","
             "\"updated_at\":\"2024-05-01T10:00:00Z\"}");
        expect_text(c, "SELECT status || '/' || amount FROM insurances WHERE easypost_id = $1", "ins_nw",
                    "purchased/30");
        expect_status(c, "evt_nw_1", "projected");
        post("evt_nw_4", "insurance.cancelled",
             "{\"id\":\"ins_nw\",\"object\":\"Insurance\",\"status\":\"cancelled\",\"amount\":\"30\","
             "\"updated_at\":\"2024-05-01T13:00:00Z\"}");
        expect_text(c, "SELECT status FROM insurances WHERE easypost_id = $1", "ins_nw", "cancelled");
        expect_text(c, "SELECT w.event_id FROM insurances i JOIN webhook_events w ON w.id = i.last_webhook_event_id"
                       " WHERE i.easypost_id = $1", "ins_nw", "evt_nw_4");

        /* the same object twice in one burst (one batch or several): the newer stays */
        char *bodies[2] = {
                make_event("evt_nw_b2", "claim.updated",
                           "{\"id\":\"clm_nw\",\"status\":\"approved\",\"updated_at\":\"2024-05-02T00:00:00Z\"}"),
                make_event("evt_nw_b1", "claims.updated",
                           "{\"id\":\"clm_nw\",\"status\":\"in_review\",\"updated_at\":\"2024-05-01T00:00:00Z\"}"),
        };
        size_t lens[2] = { strlen(bodies[0]), strlen(bodies[1]) };
        int sts[2];
        post_many(dm.port, bodies, lens, 2, 2, sts);
        ck_assert_int_eq(sts[0], 200);
        ck_assert_int_eq(sts[1], 200);
        expect_text(c, "SELECT status FROM claims WHERE easypost_id = $1", "clm_nw", "approved");
        free(bodies[0]);
        free(bodies[1]);

        /* refund status: a newer refund of the shipment wins, an older one does not */
        post("evt_nw_r2", "refund.successful",
             "{\"id\":\"rfnd_nw2\",\"status\":\"rejected\",\"shipment_id\":\"shp_nw\","
             "\"updated_at\":\"2024-05-03T00:00:00Z\"}");
        post("evt_nw_r1", "refund.successful",
             "{\"id\":\"rfnd_nw1\",\"status\":\"submitted\",\"shipment_id\":\"shp_nw\","
             "\"updated_at\":\"2024-05-02T00:00:00Z\"}");
        expect_text(c, "SELECT refund_status FROM shipments WHERE easypost_id = $1", "shp_nw", "rejected");
        post("evt_nw_r3", "refund.successful",
             "{\"id\":\"rfnd_nw1\",\"status\":\"refunded\",\"shipment_id\":\"shp_nw\","
             "\"updated_at\":\"2024-05-04T00:00:00Z\"}");
        expect_text(c, "SELECT refund_status FROM shipments WHERE easypost_id = $1", "shp_nw", "refunded");
        expect_text(c, "SELECT string_agg(easypost_id || ':' || status, ',' ORDER BY easypost_id) FROM refunds",
                    NULL, "rfnd_nw1:refunded,rfnd_nw2:rejected");
        PQfinish(c);
}
END_TEST

/* A shipment not stored yet becomes a stub with one fetch job; a stored one
 * is linked and not fetched again; a tracker already stored is not fetched. */
START_TEST(test_shipment_stub_and_job)
{
        PGconn *c = db_open();

        wipe(c);
        db_exec(c, "INSERT INTO shipments (easypost_id, synced_at, tracking_code) VALUES ('shp_have', now(), 'EZH')");
        db_exec(c, "INSERT INTO trackers (easypost_id) VALUES ('trk_have')");
        post("evt_stub_1", "refund.successful",
             "{\"id\":\"rfnd_s1\",\"status\":\"submitted\",\"shipment_id\":\"shp_missing\","
             "\"updated_at\":\"2024-06-01T00:00:00Z\"}");
        post("evt_stub_2", "insurance.purchased",
             "{\"id\":\"ins_s2\",\"status\":\"purchased\",\"shipment_id\":\"shp_have\","
             "\"tracker\":{\"id\":\"trk_have\",\"object\":\"Tracker\"},\"updated_at\":\"2024-06-01T00:00:00Z\"}");
        post("evt_stub_3", "claim.submitted",
             "{\"id\":\"clm_s3\",\"status\":\"submitted\",\"shipment_id\":\"shp_missing\","
             "\"updated_at\":\"2024-06-01T00:00:00Z\"}");
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipments WHERE easypost_id = $1 AND synced_at IS NULL",
                                 "shp_missing"), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE kind = 'shipment' AND object_id = $1",
                                 "shp_missing"), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id IN ('shp_have', 'trk_have')",
                                 NULL), 0);
        expect_text(c, "SELECT (i.shipment_id = s.id)::text FROM insurances i JOIN shipments s"
                       " ON s.easypost_id = 'shp_have' WHERE i.easypost_id = $1", "ins_s2", "true");
        expect_text(c, "SELECT (c.shipment_id = s.id)::text FROM claims c JOIN shipments s"
                       " ON s.easypost_id = 'shp_missing' WHERE c.easypost_id = $1", "clm_s3", "true");
        /* the stub keeps what the sync worker will fill: only the refund status is set */
        expect_text(c, "SELECT concat_ws('/', refund_status, coalesce(tracking_code, '-')) FROM shipments"
                       " WHERE easypost_id = $1", "shp_missing", "submitted/-");
        PQfinish(c);
}
END_TEST

/* Runs easypost-syncd with args against the test database; the output. */
static char *
run_status(void)
{
        const char *tmp = getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp";
        char outp[512], bin[512];
        int st = 0;

        snprintf(outp, sizeof(outp), "%s/objects-status-%d.out", tmp, (int)getpid());
        snprintf(bin, sizeof(bin), "%s/easypost-syncd", getenv("abs_top_builddir"));
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                int o = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                int n = open("/dev/null", O_WRONLY);
                if (o < 0 || n < 0)
                        _exit(127);
                dup2(o, 1);
                dup2(n, 2);
                setenv("DATABASE_URL", getenv("TEST_PG_CONNINFO"), 1);
                execl(bin, "easypost-syncd", "--status", (char *)NULL);
                _exit(127);
        }
        ck_assert_int_eq(waitpid(pid, &st, 0), pid);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 127, "--status did not run");
        size_t len;
        FILE *f = fopen(outp, "rb");
        ck_assert_ptr_nonnull(f);
        char *out = xmalloc(1 << 16);
        len = fread(out, 1, (1 << 16) - 1, f);
        out[len] = '\0';
        fclose(f);
        return out;
}

/* A type this version does not know: stored raw, counted as "other", and
 * --status lists it as such; a known one is not marked. */
START_TEST(test_unknown_type_stored_and_shown)
{
        PGconn *c = db_open();

        wipe(c);
        double before = daemon_metric(dm.port, "easypost_sync_events_total{description=\"other\",outcome=\"stored\"}");
        double known = daemon_metric(dm.port, "easypost_sync_events_total{description=\"claims.approved\","
                                              "outcome=\"stored\"}");
        post("evt_unk_1", "parcel.teleported", "{\"id\":\"tel_1\",\"object\":\"Teleport\"}");
        post("evt_unk_2", "claim.message", "{\"id\":\"cmsg_1\",\"object\":\"ClaimMessage\",\"claim_id\":\"clm_x\"}");
        post("evt_unk_3", "claims.approved", "{\"id\":\"clm_unk\",\"status\":\"approved\"}");
        expect_status(c, "evt_unk_1", "stored");
        expect_status(c, "evt_unk_2", "stored");
        expect_status(c, "evt_unk_3", "projected");
        expect_text(c, "SELECT raw FROM webhook_events WHERE event_id = $1", "evt_unk_1",
                    "{\"id\":\"evt_unk_1\",\"object\":\"Event\",\"mode\":\"test\",\"description\":\"parcel.teleported\","
                    "\"created_at\":\"2025-01-02T03:04:05.678Z\",\"previous_attributes\":{},"
                    "\"result\":{\"id\":\"tel_1\",\"object\":\"Teleport\"}}");
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM claims", NULL), 1);
        ck_assert_double_eq(daemon_metric(dm.port, "easypost_sync_events_total{description=\"other\","
                                                   "outcome=\"stored\"}"), before + 2);
        ck_assert_double_eq(daemon_metric(dm.port, "easypost_sync_events_total{description=\"claims.approved\","
                                                   "outcome=\"stored\"}"), known + 1);

        char *out = run_status();
        char *line = strstr(out, "parcel.teleported");
        ck_assert_msg(line != NULL, "%s", out);
        char *eol = strchr(line, '\n');
        ck_assert_ptr_nonnull(eol);
        *eol = '\0';
        ck_assert_msg(strstr(line, "stored") && strstr(line, "unknown to this version"), "%s", line);
        *eol = '\n';
        line = strstr(out, "claims.approved");
        ck_assert_ptr_nonnull(line);
        eol = strchr(line, '\n');
        *eol = '\0';
        ck_assert_msg(strstr(line, "projected") && !strstr(line, "unknown"), "%s", line);
        free(out);
        PQfinish(c);
}
END_TEST

/* A body that breaks the projection (a date of ISO shape that is no date)
 * is set aside as a dead letter; its neighbours in the burst are projected.
 * --replay of a projected object event rebuilds its row. */
START_TEST(test_poison_isolated_and_replay)
{
        PGconn *c = db_open();
        enum { N = 12 };
        char *bodies[N];
        size_t lens[N];
        int sts[N];

        wipe(c);
        for (int i = 0; i < N; i++) {
                char id[32], res[256];
                snprintf(id, sizeof(id), "evt_poi_%02d", i);
                snprintf(res, sizeof(res),
                         "{\"id\":\"rfnd_poi%02d\",\"status\":\"refunded\",\"updated_at\":\"%s\"}", i,
                         i == 5 ? "2024-13-45T00:00:00Z" : "2024-07-01T00:00:00Z");
                bodies[i] = make_event(id, "refund.successful", res);
                lens[i] = strlen(bodies[i]);
        }
        post_many(dm.port, bodies, lens, N, 6, sts);
        for (int i = 0; i < N; i++) {
                ck_assert_int_eq(sts[i], 200);
                free(bodies[i]);
        }
        expect_status(c, "evt_poi_05", "failed");
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE status = 'projected'", NULL), N - 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM refunds", NULL), N - 1);

        db_exec(c, "DELETE FROM refunds WHERE easypost_id = 'rfnd_poi03'");
        expect_text(c, "SELECT eps_replay(id) FROM webhook_events WHERE event_id = $1", "evt_poi_03", "projected");
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM refunds WHERE easypost_id = 'rfnd_poi03'", NULL), 1);
        expect_text(c, "SELECT eps_replay(id) FROM webhook_events WHERE event_id = $1", "evt_poi_05", "failed");
        PQfinish(c);
}
END_TEST

/* The fast path: a batch of tracker events calls no object projection (not
 * even once per batch); a batch with one object event calls it once. Counted
 * by PostgreSQL itself for this transaction (pg_stat_xact_user_functions). */
START_TEST(test_tracker_batch_makes_no_call)
{
        PGconn *c = db_open();
        const char *calls = "SELECT coalesce((SELECT calls FROM pg_stat_xact_user_functions"
                            " WHERE funcname = $1), 0)";
        const char *batch = "SELECT string_agg(status, ',' ORDER BY ord) FROM eps_ingest_batch("
                            " ARRAY[eps_uuid7(), eps_uuid7()], ARRAY[$1 || '_a', $1 || '_b'], %s,"
                            " ARRAY['test', 'test'], ARRAY[NULL, NULL]::text[], %s,"
                            " ARRAY['webhook', 'webhook'], ARRAY[NULL, NULL]::text[], NULL, NULL, NULL, false)";
        char sql[1024];

        wipe(c);
        db_exec(c, "BEGIN");
        db_exec(c, "SET LOCAL track_functions = 'pl'");
        snprintf(sql, sizeof(sql), batch, "ARRAY['tracker.created', 'tracker.updated']",
                 "ARRAY['{\"result\":{\"id\":\"trk_fp1\",\"tracking_details\":[]}}',"
                 " '{\"result\":{\"id\":\"trk_fp2\",\"tracking_details\":[]}}']");
        expect_text(c, sql, "evt_fp1", "projected,projected");
        ck_assert_int_eq(db_long(c, calls, "eps_project_trackers"), 1);
        ck_assert_int_eq(db_long(c, calls, "eps_project_objects"), 0);
        snprintf(sql, sizeof(sql), batch, "ARRAY['tracker.updated', 'batch.created']",
                 "ARRAY['{\"result\":{\"id\":\"trk_fp1\",\"tracking_details\":[]}}',"
                 " '{\"description\":\"batch.created\",\"result\":{\"id\":\"batch_fp\",\"state\":\"created\"}}']");
        expect_text(c, sql, "evt_fp2", "projected,projected");
        ck_assert_int_eq(db_long(c, calls, "eps_project_trackers"), 2);
        ck_assert_int_eq(db_long(c, calls, "eps_project_objects"), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM batches WHERE easypost_id = $1", "batch_fp"), 1);
        db_exec(c, "ROLLBACK");
        PQfinish(c);
}
END_TEST

Suite *
objects_suite(void)
{
        Suite *s = suite_create("objects");
        TCase *tc = tcase_create("objects");

        tcase_set_timeout(tc, 120);
        tcase_add_unchecked_fixture(tc, up, down);
        tcase_add_test(tc, test_fixtures_projected);
        tcase_add_test(tc, test_documented_payloads);
        tcase_add_test(tc, test_newer_wins);
        tcase_add_test(tc, test_shipment_stub_and_job);
        tcase_add_test(tc, test_unknown_type_stored_and_shown);
        tcase_add_test(tc, test_poison_isolated_and_replay);
        tcase_add_test(tc, test_tracker_batch_makes_no_call);
        suite_add_tcase(s, tc);
        return s;
}
