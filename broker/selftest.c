/*  =========================================================================
    kiln-broker-selftest — the broker's pure modules: scale and logline

        kiln-broker-selftest [-v]

    The actor itself (broker.c) is tested with real processes by the
    integration suite (tests/).
    =========================================================================
*/
#include "logline.h"
#include "scale.h"

#include <stdio.h>
#include <string.h>

int
main (int argc, char *argv [])
{
    bool verbose = argc > 1 && strcmp (argv [1], "-v") == 0;
    kiln_scale_test (verbose);
    kiln_logline_test (verbose);
    printf ("kiln-broker-selftest: OK\n");
    return 0;
}
