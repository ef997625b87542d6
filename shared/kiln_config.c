/*  =========================================================================
    kiln_config — configuration from the environment

    The table of variables and defaults is in kiln_config.h. An empty
    variable counts as unset, so `KILN_KEY= kiln ...` clears a key rather
    than sending an empty one.
    =========================================================================
*/
#include "kiln_config.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_URL              "http://127.0.0.1:8080"
#define DEFAULT_HTTP_ADDR        "127.0.0.1:8080"
#define DEFAULT_REDIS_URL        "redis://127.0.0.1:6379"
#define DEFAULT_BROKER_ENDPOINT  "tcp://127.0.0.1:5555"
#define DEFAULT_MAX_BODY_BYTES   ((size_t) 32 << 20)
#define DEFAULT_RESULT_RETENTION_S 3600
//  10 tries, the waits doubling from 15 s: the last about two hours after
//  the first (15 s × (2^9 − 1) ≈ 2.1 h).
#define DEFAULT_WEBHOOK_TRIES 10
#define DEFAULT_WEBHOOK_BACKOFF_MS 15000
#define DEFAULT_WEBHOOK_TIMEOUT_MS 10000
#define DEFAULT_LOG_LEVEL        "info"
//  Most requests per second (and burst) KILN_RATE_LIMIT_* take.
#define RATE_LIMIT_MAX 1000000

static const char *
s_env (const char *name)
{
    const char *value = getenv (name);
    return value && *value ? value : NULL;
}

void
kiln_config_set (char **field, const char *value)
{
    char *copy = value ? strdup (value) : NULL;
    free (*field);
    *field = copy;
}

//  Parses a whole positive decimal number within max. 0 or -1.
static int
s_parse_number (const char *text, unsigned long long max, unsigned long long *value)
{
    if (!text || *text < '0' || *text > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long n = strtoull (text, &end, 10);
    if (errno || *end || n == 0 || n > max)
        return -1;
    *value = n;
    return 0;
}

kiln_config_t *
kiln_config_new (char **error)
{
    if (error)
        *error = NULL;
    kiln_config_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;

    const char *v;
    self->url = strdup ((v = s_env ("KILN_URL")) ? v : DEFAULT_URL);
    self->http_addr = strdup ((v = s_env ("KILN_HTTP_ADDR")) ? v : DEFAULT_HTTP_ADDR);
    self->redis_url = strdup ((v = s_env ("KILN_REDIS_URL")) ? v : DEFAULT_REDIS_URL);
    self->broker_endpoint = strdup ((v = s_env ("KILN_BROKER_ENDPOINT")) ? v : DEFAULT_BROKER_ENDPOINT);
    self->log_level = strdup ((v = s_env ("KILN_LOG_LEVEL")) ? v : DEFAULT_LOG_LEVEL);
    self->key = (v = s_env ("KILN_KEY")) ? strdup (v) : NULL;
    self->auth = strdup ((v = s_env ("KILN_AUTH")) ? v : "auto");
    bool ok = self->url && self->http_addr && self->redis_url
           && self->broker_endpoint && self->log_level && self->auth
           && (self->key || !s_env ("KILN_KEY"));

    if ((v = s_env ("KILN_PUBLIC_URL")))
        self->public_url = strdup (v);
    else
    if (self->http_addr &&
        asprintf (&self->public_url, "http://%s", self->http_addr) < 0)
        self->public_url = NULL;
    ok = ok && self->public_url;
    if (self->public_url) {
        size_t len = strlen (self->public_url);
        while (len > 0 && self->public_url [len - 1] == '/')
            self->public_url [--len] = 0;
    }

    if ((v = s_env ("KILN_STATE_DIR")))
        self->state_dir = strdup (v);
    else
    if ((v = s_env ("HOME"))) {
        if (asprintf (&self->state_dir, "%s/.kiln", v) < 0)
            self->state_dir = NULL;
    }
    else
        self->state_dir = strdup ("/tmp/kiln");
    ok = ok && self->state_dir;
    if (!ok) {
        kiln_config_destroy (&self);
        return NULL;
    }

    self->max_body_bytes = DEFAULT_MAX_BODY_BYTES;
    self->result_retention_s = DEFAULT_RESULT_RETENTION_S;
    self->webhook_tries = DEFAULT_WEBHOOK_TRIES;
    self->webhook_backoff_ms = DEFAULT_WEBHOOK_BACKOFF_MS;
    self->webhook_timeout_ms = DEFAULT_WEBHOOK_TIMEOUT_MS;
    //  The numeric settings: each a positive number, capped by its type.
    size_t max_body = 0;
    int *ints [] = { &self->result_retention_s, &self->webhook_tries,
                     &self->webhook_backoff_ms, &self->webhook_timeout_ms };
    const struct {
        const char *name, *unit;
        unsigned long long max;
    } numbers [] = {
        { "KILN_MAX_BODY_BYTES", "bytes", SIZE_MAX },
        { "KILN_RESULT_RETENTION", "seconds", INT_MAX },
        { "KILN_WEBHOOK_TRIES", "tries", INT_MAX },
        { "KILN_WEBHOOK_BACKOFF_MS", "milliseconds", INT_MAX },
        { "KILN_WEBHOOK_TIMEOUT_MS", "milliseconds", INT_MAX },
    };
    for (size_t i = 0; i < sizeof numbers / sizeof numbers [0]; i++) {
        if (!(v = s_env (numbers [i].name)))
            continue;
        unsigned long long n;
        if (s_parse_number (v, numbers [i].max, &n)) {
            if (error && asprintf (error, "%s: '%s' is not a positive number of %s",
                                   numbers [i].name, v, numbers [i].unit) < 0)
                *error = NULL;
            kiln_config_destroy (&self);
            return NULL;
        }
        if (i == 0)
            max_body = (size_t) n;
        else
            *ints [i - 1] = (int) n;
    }
    if (max_body)
        self->max_body_bytes = max_body;

    //  A switch: 1 or 0 (also true/false, yes/no); anything else is a
    //  mistake worth stopping for, since it guards what webhooks reach.
    if ((v = s_env ("KILN_WEBHOOK_ALLOW_PRIVATE"))) {
        if (!strcmp (v, "1") || !strcasecmp (v, "true") || !strcasecmp (v, "yes"))
            self->webhook_allow_private = true;
        else
        if (strcmp (v, "0") && strcasecmp (v, "false") && strcasecmp (v, "no")) {
            if (error && asprintf (error, "KILN_WEBHOOK_ALLOW_PRIVATE: '%s' is not 1 or 0", v) < 0)
                *error = NULL;
            kiln_config_destroy (&self);
            return NULL;
        }
    }
    //  Who may call the gateway: a typo here must not open it up
    if (strcmp (self->auth, "auto") && strcmp (self->auth, "required")
    &&  strcmp (self->auth, "off")) {
        if (error && asprintf (error, "KILN_AUTH: '%s' is not auto, required or off",
                               self->auth) < 0)
            *error = NULL;
        kiln_config_destroy (&self);
        return NULL;
    }
    //  The gateway's rate limit: 0 (or unset) is off, so unlike the
    //  numbers above a 0 is taken
    const char *rates [] = { "KILN_RATE_LIMIT_RPS", "KILN_RATE_LIMIT_BURST" };
    int *rate_fields [] = { &self->rate_limit_rps, &self->rate_limit_burst };
    for (size_t i = 0; i < 2; i++) {
        unsigned long long n = 0;
        if ((v = s_env (rates [i])) && strcmp (v, "0") != 0
        &&  s_parse_number (v, RATE_LIMIT_MAX, &n)) {
            if (error && asprintf (error, "%s: '%s' is not a number of requests (0 to %d)",
                                   rates [i], v, RATE_LIMIT_MAX) < 0)
                *error = NULL;
            kiln_config_destroy (&self);
            return NULL;
        }
        *rate_fields [i] = (int) n;
    }
    return self;
}

void
kiln_config_destroy (kiln_config_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kiln_config_t *self = *self_p;
    free (self->url);
    free (self->http_addr);
    free (self->public_url);
    free (self->redis_url);
    free (self->broker_endpoint);
    free (self->state_dir);
    free (self->key);
    free (self->log_level);
    free (self->auth);
    free (self);
    *self_p = NULL;
}

int
kiln_config_split_addr (const char *addr, char **host, int *port)
{
    if (!addr || !host || !port)
        return -1;
    const char *host_start, *host_end, *colon;
    if (*addr == '[') {
        //  [v6]:port — the brackets are there because v6 has colons.
        host_start = addr + 1;
        host_end = strchr (host_start, ']');
        if (!host_end || host_end [1] != ':')
            return -1;
        colon = host_end + 1;
    }
    else {
        host_start = addr;
        colon = strrchr (addr, ':');
        if (!colon || memchr (addr, ':', colon - addr))
            return -1;              //  bare v6 without brackets is ambiguous
        host_end = colon;
    }
    if (host_end == host_start)
        return -1;
    for (const char *c = host_start; c < host_end; c++)
        if (*c <= ' ' || *c == '/' || *c == '[' || *c == ']')
            return -1;
    unsigned long long n;
    if (strcmp (colon + 1, "0") == 0)
        n = 0;                      //  "any free port", for tests
    else
    if (s_parse_number (colon + 1, 65535, &n))
        return -1;
    char *copy = strndup (host_start, host_end - host_start);
    if (!copy)
        return -1;
    *host = copy;
    *port = (int) n;
    return 0;
}

//  ---------------------------------------------------------------------
//  Selftest

static const char *s_vars [] = {
    "KILN_URL", "KILN_HTTP_ADDR", "KILN_PUBLIC_URL", "KILN_REDIS_URL",
    "KILN_BROKER_ENDPOINT", "KILN_STATE_DIR", "KILN_KEY", "KILN_MAX_BODY_BYTES",
    "KILN_RESULT_RETENTION", "KILN_LOG_LEVEL", "KILN_WEBHOOK_TRIES",
    "KILN_WEBHOOK_BACKOFF_MS", "KILN_WEBHOOK_TIMEOUT_MS",
    "KILN_WEBHOOK_ALLOW_PRIVATE", "KILN_AUTH", "KILN_RATE_LIMIT_RPS",
    "KILN_RATE_LIMIT_BURST", NULL
};

void
kiln_config_test (bool verbose)
{
    if (verbose)
        printf (" * kiln_config: ");

    //  The test changes the environment; keep the caller's to restore.
    char *saved [sizeof s_vars / sizeof s_vars [0]] = { NULL };
    for (int i = 0; s_vars [i]; i++) {
        const char *v = getenv (s_vars [i]);
        saved [i] = v ? strdup (v) : NULL;
        unsetenv (s_vars [i]);
    }
    char *saved_home = getenv ("HOME") ? strdup (getenv ("HOME")) : NULL;

    //  Defaults.
    setenv ("HOME", "/home/tester", 1);
    char *error = NULL;
    kiln_config_t *cfg = kiln_config_new (&error);
    assert (cfg && !error);
    assert (strcmp (cfg->url, "http://127.0.0.1:8080") == 0);
    assert (strcmp (cfg->http_addr, "127.0.0.1:8080") == 0);
    assert (strcmp (cfg->public_url, "http://127.0.0.1:8080") == 0);
    assert (strcmp (cfg->redis_url, "redis://127.0.0.1:6379") == 0);
    assert (strcmp (cfg->broker_endpoint, "tcp://127.0.0.1:5555") == 0);
    assert (strcmp (cfg->state_dir, "/home/tester/.kiln") == 0);
    assert (cfg->key == NULL);
    assert (cfg->max_body_bytes == 33554432);
    assert (cfg->result_retention_s == 3600);
    assert (cfg->webhook_tries == 10);
    assert (cfg->webhook_backoff_ms == 15000);
    assert (cfg->webhook_timeout_ms == 10000);
    assert (strcmp (cfg->log_level, "info") == 0);
    assert (!cfg->webhook_allow_private);
    assert (strcmp (cfg->auth, "auto") == 0);
    kiln_config_set (&cfg->url, "http://example:1");
    assert (strcmp (cfg->url, "http://example:1") == 0);
    kiln_config_set (&cfg->key, NULL);
    assert (cfg->key == NULL);
    kiln_config_destroy (&cfg);
    assert (cfg == NULL);
    kiln_config_destroy (&cfg);             //  harmless twice

    unsetenv ("HOME");
    cfg = kiln_config_new (NULL);
    assert (cfg && strcmp (cfg->state_dir, "/tmp/kiln") == 0);
    kiln_config_destroy (&cfg);

    //  Overrides; public_url follows http_addr unless set itself.
    setenv ("KILN_URL", "http://gw:9000", 1);
    setenv ("KILN_HTTP_ADDR", "0.0.0.0:9000", 1);
    setenv ("KILN_REDIS_URL", "redis://:pw@redis:6380/2", 1);
    setenv ("KILN_BROKER_ENDPOINT", "tcp://broker:7000", 1);
    setenv ("KILN_STATE_DIR", "/var/lib/kiln", 1);
    setenv ("KILN_KEY", "id:secret", 1);
    setenv ("KILN_MAX_BODY_BYTES", "1024", 1);
    setenv ("KILN_RESULT_RETENTION", "60", 1);
    setenv ("KILN_WEBHOOK_TRIES", "3", 1);
    setenv ("KILN_WEBHOOK_BACKOFF_MS", "100", 1);
    setenv ("KILN_LOG_LEVEL", "debug", 1);
    cfg = kiln_config_new (&error);
    assert (cfg && !error);
    assert (strcmp (cfg->url, "http://gw:9000") == 0);
    assert (strcmp (cfg->http_addr, "0.0.0.0:9000") == 0);
    assert (strcmp (cfg->public_url, "http://0.0.0.0:9000") == 0);
    assert (strcmp (cfg->redis_url, "redis://:pw@redis:6380/2") == 0);
    assert (strcmp (cfg->broker_endpoint, "tcp://broker:7000") == 0);
    assert (strcmp (cfg->state_dir, "/var/lib/kiln") == 0);
    assert (strcmp (cfg->key, "id:secret") == 0);
    assert (cfg->max_body_bytes == 1024);
    assert (cfg->result_retention_s == 60);
    assert (cfg->webhook_tries == 3);
    assert (cfg->webhook_backoff_ms == 100);
    assert (strcmp (cfg->log_level, "debug") == 0);
    kiln_config_destroy (&cfg);

    //  KILN_AUTH: three words; anything else stops the process
    setenv ("KILN_AUTH", "required", 1);
    cfg = kiln_config_new (&error);
    assert (cfg && !error && strcmp (cfg->auth, "required") == 0);
    kiln_config_destroy (&cfg);
    setenv ("KILN_AUTH", "none", 1);
    cfg = kiln_config_new (&error);
    assert (cfg == NULL && error && strstr (error, "KILN_AUTH"));
    free (error);
    error = NULL;
    unsetenv ("KILN_AUTH");

    setenv ("KILN_PUBLIC_URL", "https://kiln.example.com/", 1);
    setenv ("KILN_KEY", "", 1);             //  empty is unset
    cfg = kiln_config_new (&error);
    assert (cfg);
    assert (strcmp (cfg->public_url, "https://kiln.example.com") == 0);
    assert (cfg->key == NULL);
    kiln_config_destroy (&cfg);

    //  Bad numbers: NULL and an error naming the variable.
    const char *bad [] = { "abc", "-5", "0", "12x", " 12", "99999999999999999999999", "1.5", NULL };
    for (int i = 0; bad [i]; i++) {
        setenv ("KILN_MAX_BODY_BYTES", bad [i], 1);
        cfg = kiln_config_new (&error);
        assert (cfg == NULL);
        assert (error && strstr (error, "KILN_MAX_BODY_BYTES"));
        free (error);
        error = NULL;
    }
    setenv ("KILN_MAX_BODY_BYTES", "1024", 1);
    setenv ("KILN_RESULT_RETENTION", "3000000000", 1);     //  over INT_MAX
    cfg = kiln_config_new (&error);
    assert (cfg == NULL && error && strstr (error, "KILN_RESULT_RETENTION"));
    free (error);
    error = NULL;
    setenv ("KILN_RESULT_RETENTION", "ten", 1);
    assert (kiln_config_new (NULL) == NULL);      //  error is optional

    //  The private-webhook switch.
    unsetenv ("KILN_RESULT_RETENTION");
    setenv ("KILN_WEBHOOK_ALLOW_PRIVATE", "1", 1);
    cfg = kiln_config_new (NULL);
    assert (cfg && cfg->webhook_allow_private);
    kiln_config_destroy (&cfg);
    setenv ("KILN_WEBHOOK_ALLOW_PRIVATE", "0", 1);
    cfg = kiln_config_new (NULL);
    assert (cfg && !cfg->webhook_allow_private);
    kiln_config_destroy (&cfg);
    setenv ("KILN_WEBHOOK_ALLOW_PRIVATE", "maybe", 1);
    cfg = kiln_config_new (&error);
    assert (cfg == NULL && error && strstr (error, "KILN_WEBHOOK_ALLOW_PRIVATE"));
    free (error);
    error = NULL;
    unsetenv ("KILN_WEBHOOK_ALLOW_PRIVATE");

    //  The rate limit: off by default, 0 is off, a bad number stops.
    cfg = kiln_config_new (NULL);
    assert (cfg && cfg->rate_limit_rps == 0 && cfg->rate_limit_burst == 0);
    kiln_config_destroy (&cfg);
    setenv ("KILN_RATE_LIMIT_RPS", "5", 1);
    setenv ("KILN_RATE_LIMIT_BURST", "0", 1);
    cfg = kiln_config_new (NULL);
    assert (cfg && cfg->rate_limit_rps == 5 && cfg->rate_limit_burst == 0);
    kiln_config_destroy (&cfg);
    setenv ("KILN_RATE_LIMIT_BURST", "-1", 1);
    cfg = kiln_config_new (&error);
    assert (cfg == NULL && error && strstr (error, "KILN_RATE_LIMIT_BURST"));
    free (error);
    error = NULL;
    unsetenv ("KILN_RATE_LIMIT_BURST");
    unsetenv ("KILN_RATE_LIMIT_RPS");

    //  split_addr.
    char *host = NULL;
    int port = 0;
    assert (kiln_config_split_addr ("127.0.0.1:8080", &host, &port) == 0);
    assert (strcmp (host, "127.0.0.1") == 0 && port == 8080);
    free (host);
    assert (kiln_config_split_addr ("localhost:1", &host, &port) == 0);
    assert (strcmp (host, "localhost") == 0 && port == 1);
    free (host);
    assert (kiln_config_split_addr ("[::1]:65535", &host, &port) == 0);
    assert (strcmp (host, "::1") == 0 && port == 65535);
    free (host);
    assert (kiln_config_split_addr ("0.0.0.0:0", &host, &port) == 0);
    assert (strcmp (host, "0.0.0.0") == 0 && port == 0);
    free (host);
    host = NULL;
    const char *bad_addrs [] = {
        "", "localhost", "localhost:", ":8080", "host:65536", "host:-1",
        "host:80x", "::1:80", "[::1]80", "[::1]", "[]:80", "[::1:80",
        "ho st:80", "host:00080000", NULL
    };
    for (int i = 0; bad_addrs [i]; i++) {
        assert (kiln_config_split_addr (bad_addrs [i], &host, &port) == -1);
        assert (host == NULL);
    }
    assert (kiln_config_split_addr (NULL, &host, &port) == -1);

    //  Restore the caller's environment.
    for (int i = 0; s_vars [i]; i++) {
        if (saved [i])
            setenv (s_vars [i], saved [i], 1);
        else
            unsetenv (s_vars [i]);
        free (saved [i]);
    }
    if (saved_home)
        setenv ("HOME", saved_home, 1);
    else
        unsetenv ("HOME");
    free (saved_home);

    if (verbose)
        printf ("OK\n");
}
