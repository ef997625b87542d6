/*  =========================================================================
    kiln-venv-selftest — the venv module's selftest (worker/venv.c)
    =========================================================================
*/
#include "venv.h"

#include <string.h>

int
main (int argc, char *argv [])
{
    kiln_venv_test (argc > 1 && strcmp (argv [1], "-v") == 0);
    return 0;
}
