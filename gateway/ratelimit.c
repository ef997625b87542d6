/*  =========================================================================
    ratelimit — requests per second per caller, a token bucket each

    Tokens are counted in thousandths so that refill is exact integer
    arithmetic: at R requests per second a bucket gains R thousandths a
    millisecond.
    =========================================================================
*/
#include "ratelimit.h"

#include <czmq.h>
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  One request's cost, in thousandths of a token.
#define TOKEN_MILLI 1000

typedef struct {
    int64_t milli;          //  tokens now, in thousandths
    int64_t last_ms;        //  when milli was worked out
} s_bucket_t;

struct _kiln_ratelimit_t {
    int64_t rate;           //  tokens a second = thousandths a ms
    int64_t capacity;       //  burst, in thousandths
    size_t max_keys;
    zhashx_t *buckets;      //  key → s_bucket_t
};

static void
s_bucket_free (void **item)
{
    free (*item);
    *item = NULL;
}

kiln_ratelimit_t *
kiln_ratelimit_new (int rate_per_s, int burst, size_t max_keys)
{
    if (rate_per_s < 1 || burst < 0 || max_keys < 1)
        return NULL;
    kiln_ratelimit_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->rate = rate_per_s;
    self->capacity = (int64_t) (burst ? burst : rate_per_s) * TOKEN_MILLI;
    self->max_keys = max_keys;
    self->buckets = zhashx_new ();
    if (!self->buckets) {
        free (self);
        return NULL;
    }
    zhashx_set_destructor (self->buckets, s_bucket_free);
    return self;
}

void
kiln_ratelimit_destroy (kiln_ratelimit_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    zhashx_destroy (&(*self_p)->buckets);
    free (*self_p);
    *self_p = NULL;
}

//  The bucket's tokens at now_ms, refilled up to the capacity.
static int64_t
s_level (const kiln_ratelimit_t *self, const s_bucket_t *bucket, int64_t now_ms)
{
    int64_t elapsed = now_ms > bucket->last_ms ? now_ms - bucket->last_ms : 0;
    //  Past this, any bucket is full (and the product cannot overflow)
    if (elapsed >= self->capacity / self->rate + 1)
        return self->capacity;
    int64_t level = bucket->milli + elapsed * self->rate;
    return level < self->capacity ? level : self->capacity;
}

//  Makes room for one more bucket: drops every full one (they hold
//  nothing a new bucket would not), else the one idle the longest.
static void
s_evict (kiln_ratelimit_t *self, int64_t now_ms)
{
    size_t size = zhashx_size (self->buckets);
    char **full = calloc (size ? size : 1, sizeof (char *));
    if (!full)
        return;
    size_t count = 0;
    const char *oldest = NULL;
    int64_t oldest_ms = INT64_MAX;
    for (s_bucket_t *bucket = zhashx_first (self->buckets); bucket;
         bucket = zhashx_next (self->buckets)) {
        const char *key = zhashx_cursor (self->buckets);
        if (s_level (self, bucket, now_ms) >= self->capacity)
            full [count++] = (char *) key;
        if (bucket->last_ms < oldest_ms) {
            oldest_ms = bucket->last_ms;
            oldest = key;
        }
    }
    //  Keys point into the table: copy before deleting
    for (size_t i = 0; i < count; i++)
        full [i] = strdup (full [i]);
    char *victim = count == 0 && oldest ? strdup (oldest) : NULL;
    for (size_t i = 0; i < count; i++) {
        if (full [i])
            zhashx_delete (self->buckets, full [i]);
        free (full [i]);
    }
    if (victim)
        zhashx_delete (self->buckets, victim);
    free (victim);
    free (full);
}

int64_t
kiln_ratelimit_take (kiln_ratelimit_t *self, const char *key, int64_t now_ms)
{
    if (!self || !key)
        return 0;
    s_bucket_t *bucket = zhashx_lookup (self->buckets, key);
    if (!bucket) {
        if (zhashx_size (self->buckets) >= self->max_keys)
            s_evict (self, now_ms);
        bucket = calloc (1, sizeof *bucket);
        //  Out of memory: let the request through rather than refuse all
        if (!bucket)
            return 0;
        bucket->milli = self->capacity;
        bucket->last_ms = now_ms;
        if (zhashx_insert (self->buckets, key, bucket) != 0) {
            free (bucket);
            return 0;
        }
    }
    bucket->milli = s_level (self, bucket, now_ms);
    if (now_ms > bucket->last_ms)
        bucket->last_ms = now_ms;
    if (bucket->milli >= TOKEN_MILLI) {
        bucket->milli -= TOKEN_MILLI;
        return 0;
    }
    int64_t wait_ms = (TOKEN_MILLI - bucket->milli + self->rate - 1) / self->rate;
    return wait_ms > 0 ? wait_ms : 1;
}

size_t
kiln_ratelimit_size (const kiln_ratelimit_t *self)
{
    return self ? zhashx_size (self->buckets) : 0;
}

//  ---------------------------------------------------------------------
//  Selftest

void
kiln_ratelimit_test (bool verbose)
{
    if (verbose)
        printf (" * ratelimit: ");

    //  Bad arguments
    assert (kiln_ratelimit_new (0, 1, 1) == NULL);
    assert (kiln_ratelimit_new (1, -1, 1) == NULL);
    assert (kiln_ratelimit_new (1, 1, 0) == NULL);

    //  Rate 2/s, burst 3: three at once, then one every 500 ms.
    kiln_ratelimit_t *limit = kiln_ratelimit_new (2, 3, 100);
    assert (limit);
    struct {
        const char *key;
        int64_t now_ms;
        int64_t expect;     //  0: allowed, else the wait in ms
    } table [] = {
        { "a", 1000, 0 },
        { "a", 1000, 0 },
        { "a", 1000, 0 },
        { "a", 1000, 500 },     //  empty: a token in 500 ms
        { "b", 1000, 0 },       //  another key has its own bucket
        { "a", 1250, 250 },     //  half a token back
        { "a", 1500, 0 },       //  one whole token
        { "a", 1500, 500 },
        { "a", 1499, 500 },     //  a clock going back refills nothing
        { "a", 9000, 0 },       //  long idle: full again, not more
        { "a", 9000, 0 },
        { "a", 9000, 0 },
        { "a", 9000, 500 },
    };
    for (size_t i = 0; i < sizeof table / sizeof table [0]; i++) {
        int64_t got = kiln_ratelimit_take (limit, table [i].key, table [i].now_ms);
        if (got != table [i].expect) {
            fprintf (stderr, "ratelimit row %zu: %s at %lld: expected %lld, got %lld\n", i,
                     table [i].key, (long long) table [i].now_ms,
                     (long long) table [i].expect, (long long) got);
            assert (false);
        }
    }
    assert (kiln_ratelimit_size (limit) == 2);
    kiln_ratelimit_destroy (&limit);
    assert (limit == NULL);
    kiln_ratelimit_destroy (&limit);

    //  Burst 0 is the rate; a wait rounds up to whole ms.
    limit = kiln_ratelimit_new (3, 0, 10);
    for (int i = 0; i < 3; i++)
        assert (kiln_ratelimit_take (limit, "k", 0) == 0);
    assert (kiln_ratelimit_take (limit, "k", 0) == 334);
    kiln_ratelimit_destroy (&limit);

    //  Bounded memory: refilled buckets go first, else the oldest, and
    //  the busy ones keep their state.
    limit = kiln_ratelimit_new (1, 1, 3);
    assert (kiln_ratelimit_take (limit, "x", 0) == 0);
    assert (kiln_ratelimit_take (limit, "y", 100) == 0);
    assert (kiln_ratelimit_take (limit, "z", 200) == 0);
    assert (kiln_ratelimit_take (limit, "w", 300) == 0);  //  all busy: x (oldest) goes
    assert (kiln_ratelimit_size (limit) == 3);
    assert (kiln_ratelimit_take (limit, "y", 300) > 0);   //  y kept its empty bucket
    assert (kiln_ratelimit_take (limit, "v", 5000) == 0); //  all refilled: all go
    assert (kiln_ratelimit_size (limit) == 1);
    for (int i = 0; i < 1000; i++) {
        char key [16];
        snprintf (key, sizeof key, "k%d", i);
        kiln_ratelimit_take (limit, key, 6000 + i);
        assert (kiln_ratelimit_size (limit) <= 3);
    }
    kiln_ratelimit_destroy (&limit);

    if (verbose)
        printf ("OK\n");
}
