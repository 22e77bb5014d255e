/*
 * testevent.c - builds a realistic tracker.updated event with fresh ids,
 * signs it like EasyPost does and posts it with libcurl (easy interface:
 * this runs as a one-shot command, not on the daemon's loop).
 */
#include "testevent.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "sig.h"
#include "util.h"

int
testevent_send(const struct cfg *c, const char *url)
{
        unsigned char rnd[16];
        char hex[33], now[32], body[2048], sighdr[SIG_HEADER_LEN + 32], sig[SIG_HEADER_LEN + 1];
        struct err e;
        time_t t = time(NULL);
        struct tm tm;
        int rc = -1;

        if (c->nsecrets == 0) {
                fprintf(stderr, "easypost-syncd: no webhook secret configured\n");
                return -1;
        }
        struct sig_keyset *ks = sig_keyset_new((const char *const *)c->secrets, c->nsecrets, &e);
        if (ks == NULL) {
                fprintf(stderr, "easypost-syncd: %s\n", e.msg);
                return -1;
        }
        random_fill(rnd, sizeof(rnd));
        for (int i = 0; i < 16; i++)
                snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
        gmtime_r(&t, &tm);
        strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%SZ", &tm);
        int n = snprintf(body, sizeof(body),
                "{\"id\":\"evt_%s\",\"object\":\"Event\",\"mode\":\"test\",\"description\":\"tracker.updated\","
                "\"created_at\":\"%s\",\"updated_at\":\"%s\",\"previous_attributes\":{\"status\":\"pre_transit\"},"
                "\"pending_urls\":[],\"completed_urls\":[],\"result\":{\"id\":\"trk_%s\",\"object\":\"Tracker\","
                "\"mode\":\"test\",\"tracking_code\":\"EZ1000000001\",\"carrier\":\"USPS\",\"status\":\"in_transit\","
                "\"status_detail\":\"arrived_at_facility\",\"shipment_id\":\"shp_%s\",\"created_at\":\"%s\","
                "\"updated_at\":\"%s\",\"est_delivery_date\":\"%s\",\"signed_by\":null,"
                "\"public_url\":\"https://track.easypost.com/test\",\"tracking_details\":[{\"object\":\"TrackingDetail\","
                "\"message\":\"Arrived at facility\",\"description\":\"\",\"status\":\"in_transit\","
                "\"status_detail\":\"arrived_at_facility\",\"datetime\":\"%s\",\"source\":\"USPS\",\"carrier_code\":\"\","
                "\"tracking_location\":{\"object\":\"TrackingLocation\",\"city\":\"CHICAGO\",\"state\":\"IL\","
                "\"country\":\"US\",\"zip\":\"60601\"}}]}}",
                hex, now, now, hex, hex, now, now, now, now);
        sig_sign(ks, 0, body, (size_t)n, sig);
        sig_keyset_free(ks);
        snprintf(sighdr, sizeof(sighdr), "X-Hmac-Signature: %s", sig);

        CURL *h = curl_easy_init();
        struct curl_slist *hl = NULL;
        long status = 0;
        hl = curl_slist_append(hl, "Content-Type: application/json");
        hl = curl_slist_append(hl, sighdr);
        if (h == NULL)
                goto out;
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)n);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
        curl_easy_setopt(h, CURLOPT_USERAGENT, "easypost-sync/" PACKAGE_VERSION " test-event");
        if (c->basic_auth_user[0]) {
                curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
                curl_easy_setopt(h, CURLOPT_USERNAME, c->basic_auth_user);
                curl_easy_setopt(h, CURLOPT_PASSWORD, c->basic_auth_password);
        }
        fprintf(stderr, "sending tracker.updated evt_%s to %s\n", hex, url);
        CURLcode cc = curl_easy_perform(h);
        if (cc != CURLE_OK) {
                fprintf(stderr, "easypost-syncd: %s\n", curl_easy_strerror(cc));
                goto out;
        }
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        printf("\n");
        fprintf(stderr, "HTTP %ld\n", status);
        rc = status >= 200 && status < 300 ? 0 : -1;
out:
        curl_slist_free_all(hl);
        curl_easy_cleanup(h);
        return rc;
}
