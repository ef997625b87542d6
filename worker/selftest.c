/*  =========================================================================
    kiln-worker-selftest — the worker's module selftests

        kiln-worker-selftest [gpu|sdk|all] [-v]

    gpu: device name → machine type, --slots parsing, discovery (which
    must say "no GPU" and go on where there is none). sdk: the app SDK's
    request, response and RESULT making, without a broker.
    =========================================================================
*/
#include "gpu.h"
#include "sdk.h"
#include "kiln_log.h"

#include <stdio.h>
#include <string.h>

int
main (int argc, char *argv [])
{
    const char *which = argc > 1? argv [1]: "all";
    bool verbose = argc > 2 && strcmp (argv [2], "-v") == 0;
    kiln_log_init ("kiln-worker-selftest", verbose? "debug": "info");
    bool all = strcmp (which, "all") == 0;
    if (!all && strcmp (which, "gpu") != 0 && strcmp (which, "sdk") != 0) {
        fprintf (stderr, "kiln-worker-selftest: no module '%s'\n", which);
        return 2;
    }
    if (all || strcmp (which, "gpu") == 0)
        kiln_gpu_test (verbose);
    if (all || strcmp (which, "sdk") == 0)
        kiln_sdk_test (verbose);
    return 0;
}
