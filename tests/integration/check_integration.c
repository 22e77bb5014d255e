/*
 * check_integration.c - one SRunner for the suites that need PostgreSQL and
 * the daemon. CK_RUN_SUITE / CK_RUN_CASE select a part (Check's own variables).
 */
#include <curl/curl.h>
#include <stdlib.h>

#include "itest.h"

int
main(void)
{
        SRunner *sr = srunner_create(ingest_suite());

        srunner_add_suite(sr, project_suite());
        srunner_add_suite(sr, contention_suite());
        srunner_add_suite(sr, dbconn_suite());
        srunner_add_suite(sr, sync_suite());
        srunner_add_suite(sr, pacer_suite());
        srunner_add_suite(sr, backfill_suite());
        srunner_add_suite(sr, projector_suite());
        srunner_add_suite(sr, webhook_health_suite());
        srunner_add_suite(sr, timers_suite());
        srunner_add_suite(sr, ops_suite());
        srunner_add_suite(sr, faults_suite());
        srunner_add_suite(sr, hostile_suite());
        srunner_add_suite(sr, status_suite());
        srunner_add_suite(sr, partitions_suite());
        srunner_add_suite(sr, reconcile_suite());
        srunner_add_suite(sr, migrate_suite());
        srunner_add_suite(sr, converge_suite());
        srunner_add_suite(sr, objects_suite());
        srunner_add_suite(sr, reproject_suite());
        srunner_add_suite(sr, search_suite());

        curl_global_init(CURL_GLOBAL_DEFAULT);
        srunner_run_all(sr, CK_NORMAL);
        int failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        curl_global_cleanup();
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
