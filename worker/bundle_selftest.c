/*  =========================================================================
    kiln-bundle-selftest — the bundle module's selftest (worker/bundle.c)
    =========================================================================
*/
#include "bundle.h"

#include <string.h>

int
main (int argc, char *argv [])
{
    kiln_bundle_test (argc > 1 && strcmp (argv [1], "-v") == 0);
    return 0;
}
