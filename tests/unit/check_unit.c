/* check_unit.c - one SRunner for every pure-module suite. */
#include <stdlib.h>

#include "testutil.h"

int
main(void)
{
        SRunner *sr = srunner_create(sig_suite());
        srunner_add_suite(sr, cfg_suite());
        srunner_add_suite(sr, epevent_suite());
        srunner_add_suite(sr, uuid7_suite());
        srunner_add_suite(sr, httpc_suite());
        srunner_add_suite(sr, sqlsplit_suite());
        srunner_run_all(sr, CK_NORMAL);
        int failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
