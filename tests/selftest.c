/*  =========================================================================
    kiln-selftest — runs one module's selftest: kiln-selftest MODULE [-v]

    ctest registers one test per module (tests/CMakeLists.txt), so a
    failure names its module.
    =========================================================================
*/
#include "kiln_auth.h"
#include "kiln_config.h"
#include "kiln_keys.h"
#include "kiln_log.h"
#include "kiln_manifest.h"
#include "kiln_msg.h"
#include "kiln_redis.h"
#include "kiln_scripts.h"
#include "kiln_util.h"
#include "access.h"
#include "inputs.h"
#include "ratelimit.h"
#include "route.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    void (*test) (bool verbose);
} s_module_t;

static const s_module_t s_modules [] = {
    { "msg", kiln_msg_test },
    { "keys", kiln_keys_test },
    { "scripts", kiln_scripts_test },
    { "config", kiln_config_test },
    { "log", kiln_log_test },
    { "util", kiln_util_test },
    { "manifest", kiln_manifest_test },
    { "redis", kiln_redis_test },
    { "route", kiln_route_test },
    { "auth", kiln_auth_test },
    { "access", kiln_access_test },
    { "ratelimit", kiln_ratelimit_test },
    { "inputs", kiln_input_test },
    { NULL, NULL }
};

int
main (int argc, char *argv [])
{
    bool verbose = argc > 2 && strcmp (argv [2], "-v") == 0;
    for (const s_module_t *m = s_modules; m->name; m++)
        if (argc < 2 || strcmp (argv [1], "all") == 0 || strcmp (argv [1], m->name) == 0) {
            m->test (verbose);
            if (argc >= 2 && strcmp (argv [1], "all") != 0)
                return 0;
        }
    if (argc >= 2 && strcmp (argv [1], "all") != 0) {
        fprintf (stderr, "kiln-selftest: no module '%s'\n", argv [1]);
        return 2;
    }
    return 0;
}
