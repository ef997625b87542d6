/*  =========================================================================
    scale — the broker's placement and scaling decisions, as pure functions

    See scale.h for the rules. Nothing here allocates except the error
    text, and nothing touches a socket or Redis.
    =========================================================================
*/
#include "scale.h"

#include <assert.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
kiln_scale_target (int demand, int max_multiplexing, int concurrency_buffer,
                   int min_concurrency, int max_concurrency)
{
    if (demand < 0)
        demand = 0;
    if (max_multiplexing < 1)
        max_multiplexing = 1;
    if (concurrency_buffer < 0)
        concurrency_buffer = 0;
    if (min_concurrency < 0)
        min_concurrency = 0;
    if (max_concurrency < min_concurrency)
        max_concurrency = min_concurrency;

    //  Integer ceil; demand and max_multiplexing are small positive ints.
    int target = (demand + max_multiplexing - 1) / max_multiplexing + concurrency_buffer;
    if (target < min_concurrency)
        target = min_concurrency;
    if (target > max_concurrency)
        target = max_concurrency;
    return target;
}

//  The slot entry of that machine type on the worker, or NULL.
static const kiln_scale_slot_t *
s_slot_of (const kiln_scale_worker_t *worker, const char *machine_type)
{
    for (size_t i = 0; i < worker->slot_count; i++)
        if (worker->slots [i].machine_type
        &&  strcmp (worker->slots [i].machine_type, machine_type) == 0)
            return &worker->slots [i];
    return NULL;
}

int
kiln_scale_place (const char *const *machine_types, size_t type_count,
                  const kiln_scale_worker_t *workers, size_t worker_count,
                  size_t *type_index)
{
    for (size_t t = 0; t < type_count; t++) {
        int best = -1;
        for (size_t w = 0; w < worker_count; w++) {
            const kiln_scale_slot_t *slot = s_slot_of (&workers [w], machine_types [t]);
            if (!slot || slot->used >= slot->slots)
                continue;
            if (best < 0
            ||  workers [w].runners < workers [best].runners
            || (workers [w].runners == workers [best].runners
                && strcmp (workers [w].id, workers [best].id) < 0))
                best = (int) w;
        }
        if (best >= 0) {
            if (type_index)
                *type_index = t;
            return best;
        }
    }
    return -1;
}

bool
kiln_scale_offered (const char *const *machine_types, size_t type_count,
                    const kiln_scale_worker_t *workers, size_t worker_count)
{
    for (size_t t = 0; t < type_count; t++)
        for (size_t w = 0; w < worker_count; w++) {
            const kiln_scale_slot_t *slot = s_slot_of (&workers [w], machine_types [t]);
            if (slot && slot->slots > 0)
                return true;
        }
    return false;
}

bool
kiln_scale_retire (int64_t idle_ms, int keep_alive_s, bool current,
                   int active, int target, int max_concurrency)
{
    if (!current)
        return true;            //  an idle runner of an old revision has no use
    if (max_concurrency >= 1 && active > max_concurrency)
        return true;            //  the bound was lowered under it
    if (idle_ms < (int64_t) keep_alive_s * 1000)
        return false;
    //  Retiring below the target would only make scale() start another
    //  one on the next tick; the target is never below min_concurrency.
    return active - 1 >= target;
}

int
kiln_scale_override (const char *json, kiln_scale_bounds_t *bounds, char **error)
{
    static const char *names [] = {
        "min_concurrency", "max_concurrency", "concurrency_buffer", "keep_alive"
    };
    *error = NULL;
    json_error_t json_error;
    json_t *root = json? json_loads (json, JSON_REJECT_DUPLICATES, &json_error): NULL;
    if (!json_is_object (root)) {
        json_decref (root);
        *error = strdup ("not a JSON object");
        return -1;
    }
    kiln_scale_bounds_t next = *bounds;
    int *fields [] = {
        &next.min_concurrency, &next.max_concurrency, &next.concurrency_buffer, &next.keep_alive
    };
    for (size_t i = 0; i < sizeof names / sizeof names [0] && !*error; i++) {
        json_t *value = json_object_get (root, names [i]);
        if (!value)
            continue;
        if (!json_is_integer (value) || json_integer_value (value) < 0
        ||  json_integer_value (value) > INT32_MAX) {
            size_t size = strlen (names [i]) + 64;
            *error = malloc (size);
            if (*error)
                snprintf (*error, size, "%s: must be a non-negative integer", names [i]);
        }
        else
            *fields [i] = (int) json_integer_value (value);
    }
    json_decref (root);
    if (!*error && next.max_concurrency < 1)
        *error = strdup ("max_concurrency: must be at least 1");
    if (!*error && next.min_concurrency > next.max_concurrency)
        *error = strdup ("min_concurrency: must not exceed max_concurrency");
    if (*error)
        return -1;
    *bounds = next;
    return 0;
}

char *
kiln_scale_no_worker_error (const char *const *machine_types, size_t type_count)
{
    const char *first = type_count > 0 && machine_types [0]? machine_types [0]: "CPU";
    size_t size = strlen ("No worker offers machine type ") + strlen (first) + 1;
    if (type_count > 1) {
        size += strlen (" (of: )");
        for (size_t i = 0; i < type_count; i++)
            size += strlen (machine_types [i]) + 2;
    }
    char *text = malloc (size);
    if (!text)
        return NULL;
    char *end = text + sprintf (text, "No worker offers machine type %s", first);
    if (type_count > 1) {
        end += sprintf (end, " (of: ");
        for (size_t i = 0; i < type_count; i++)
            end += sprintf (end, "%s%s", i? ", ": "", machine_types [i]);
        sprintf (end, ")");
    }
    return text;
}

void
kiln_scale_test (bool verbose)
{
    if (verbose)
        printf (" * kiln_scale: ");

    //  Target: ceil (demand / mux) + buffer, clamped to [min, max]
    assert (kiln_scale_target (0, 1, 0, 0, 2) == 0);
    assert (kiln_scale_target (1, 1, 0, 0, 2) == 1);
    assert (kiln_scale_target (5, 1, 0, 0, 2) == 2);
    assert (kiln_scale_target (0, 1, 0, 1, 2) == 1);
    assert (kiln_scale_target (3, 2, 0, 0, 10) == 2);
    assert (kiln_scale_target (4, 2, 0, 0, 10) == 2);
    assert (kiln_scale_target (5, 2, 1, 0, 10) == 4);
    assert (kiln_scale_target (0, 4, 1, 0, 10) == 1);
    assert (kiln_scale_target (100, 4, 3, 0, 10) == 10);
    //  Nonsense bounds are read sensibly, never trusted
    assert (kiln_scale_target (-3, 0, -1, -2, -5) == 0);
    assert (kiln_scale_target (3, 0, 0, 0, 5) == 3);
    assert (kiln_scale_target (0, 1, 0, 3, 1) == 3);

    //  Placement
    const kiln_scale_slot_t a_slots [] = { { "CPU", 4, 1 }, { "GPU-H100", 2, 2 } };
    const kiln_scale_slot_t b_slots [] = { { "CPU", 2, 0 }, { "GPU-A100", 1, 0 } };
    const kiln_scale_slot_t c_slots [] = { { "GPU-H100", 1, 0 } };
    kiln_scale_worker_t workers [] = {
        { "w-a", a_slots, 2, 3 },
        { "w-b", b_slots, 2, 0 },
        { "w-c", c_slots, 1, 1 },
    };
    size_t type = 99;
    //  Fewest runners among workers with a free slot of the type
    const char *const cpu [] = { "CPU" };
    assert (kiln_scale_place (cpu, 1, workers, 3, &type) == 1 && type == 0);
    //  w-a's H100 slots are full: w-c gets it
    const char *const h100 [] = { "GPU-H100" };
    assert (kiln_scale_place (h100, 1, workers, 3, &type) == 2 && type == 0);
    //  Types are tried in order: A100 before CPU
    const char *const pref [] = { "GPU-H200", "GPU-A100", "CPU" };
    assert (kiln_scale_place (pref, 3, workers, 3, &type) == 1 && type == 1);
    //  Nothing free, or nothing offered
    const char *const h200 [] = { "GPU-H200" };
    assert (kiln_scale_place (h200, 1, workers, 3, &type) == -1);
    assert (kiln_scale_place (cpu, 1, workers, 0, &type) == -1);
    //  Ties go to the smaller id
    kiln_scale_worker_t twins [] = {
        { "w-z", b_slots, 2, 1 },
        { "w-y", b_slots, 2, 1 },
    };
    assert (kiln_scale_place (cpu, 1, twins, 2, NULL) == 1);

    //  Offered: busy slots still count; missing types do not
    assert (kiln_scale_offered (h100, 1, workers, 3));
    const kiln_scale_slot_t full [] = { { "GPU-H100", 1, 1 } };
    kiln_scale_worker_t busy [] = { { "w-x", full, 1, 1 } };
    assert (kiln_scale_offered (h100, 1, busy, 1));
    assert (kiln_scale_place (h100, 1, busy, 1, &type) == -1);
    assert (!kiln_scale_offered (h200, 1, workers, 3));
    assert (!kiln_scale_offered (cpu, 1, workers, 0));
    const kiln_scale_slot_t none [] = { { "CPU", 0, 0 } };
    kiln_scale_worker_t empty [] = { { "w-0", none, 1, 0 } };
    assert (!kiln_scale_offered (cpu, 1, empty, 1));

    //  Retire
    assert (!kiln_scale_retire (1000, 300, true, 2, 0, 10));
    assert (kiln_scale_retire (300000, 300, true, 2, 0, 10));
    assert (kiln_scale_retire (300000, 300, true, 1, 0, 10));
    assert (!kiln_scale_retire (300000, 300, true, 1, 1, 10));   //  min_concurrency 1
    assert (kiln_scale_retire (300000, 300, true, 2, 1, 10));
    assert (kiln_scale_retire (0, 300, false, 1, 1, 10));        //  old revision
    assert (kiln_scale_retire (0, 0, true, 1, 0, 10));           //  keep_alive 0
    //  max_concurrency lowered below the runners up: retire now
    assert (kiln_scale_retire (0, 300, true, 3, 2, 2));
    assert (!kiln_scale_retire (0, 300, true, 2, 2, 2));

    //  Live overrides: applied over the bounds when they make sense
    kiln_scale_bounds_t bounds = { 0, 3, 0, 300 };
    char *why = NULL;
    assert (kiln_scale_override ("{\"min_concurrency\":2,\"max_concurrency\":2,"
                                 "\"keep_alive\":1,\"other\":\"x\"}", &bounds, &why) == 0);
    assert (!why && bounds.min_concurrency == 2 && bounds.max_concurrency == 2
            && bounds.concurrency_buffer == 0 && bounds.keep_alive == 1);
    assert (kiln_scale_override ("{\"concurrency_buffer\":1}", &bounds, &why) == 0);
    assert (bounds.concurrency_buffer == 1 && bounds.min_concurrency == 2);
    assert (kiln_scale_override ("{}", &bounds, &why) == 0);
    const char *refused [] = {
        "{\"min_concurrency\":3}",                    //  above max
        "{\"max_concurrency\":0}",
        "{\"keep_alive\":-1}",
        "{\"keep_alive\":\"soon\"}",
        "{\"max_concurrency\":1.5}",
        "{\"max_concurrency\":9999999999}",
        "[1]", "not json", "", NULL
    };
    for (int i = 0; refused [i]; i++) {
        kiln_scale_bounds_t before = bounds;
        assert (kiln_scale_override (refused [i], &bounds, &why) == -1);
        assert (why && *why);
        free (why);
        assert (memcmp (&before, &bounds, sizeof bounds) == 0);
    }
    assert (kiln_scale_override (NULL, &bounds, &why) == -1);
    free (why);

    //  Error text
    char *text = kiln_scale_no_worker_error (h200, 1);
    assert (text && strcmp (text, "No worker offers machine type GPU-H200") == 0);
    free (text);
    text = kiln_scale_no_worker_error (pref, 3);
    assert (text && strcmp (text, "No worker offers machine type GPU-H200"
                                  " (of: GPU-H200, GPU-A100, CPU)") == 0);
    free (text);

    if (verbose)
        printf ("OK\n");
}
