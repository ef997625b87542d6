/*  =========================================================================
    echo — the smallest useful kiln app: answers with what it was sent

        POST /local/echo        {"a": 1}   →  {"path": "/", "input": {"a": 1}}
        POST /local/echo/sub    hello      →  {"path": "/sub", "input": "hello"}
        POST /local/echo/fail   {"status": 409, "detail": "taken"}
                                           →  409 {"detail": "taken", "error_type": "app_error"}

    A JSON body comes back parsed; anything else comes back as a string.
    /fail answers with the error it is asked for, to show how an app's own
    errors reach the caller.

    Build:   cc -shared -fPIC -I<kiln>/include echo.c -ljansson -o echo.so
    Deploy:  kiln deploy echo.so --name local/echo
    =========================================================================
*/
#include <kiln/app.h>

#include <jansson.h>
#include <stdlib.h>

//  Answers {"path": ..., "input": ...} for every endpoint but /fail.
static int
s_echo (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;               //  echo needs no setup()
    size_t size;
    const char *body = kiln_request_body (req, &size);
    const char *path = kiln_request_path (req);

    //  JSON_DECODE_ANY: a bare 42 or "text" is JSON too.
    json_t *input = size? json_loadb (body, size, JSON_DECODE_ANY, NULL): NULL;
    if (!input)
        input = json_stringn (body, size);
    if (!input)
        return kiln_response_set_error (resp, 422, "bad_request",
                                        "the body is neither JSON nor UTF-8 text");

    kiln_request_log (req, KILN_LOG_INFO, "echoing %zu bytes on %s", size, path);
    json_t *answer = json_pack ("{s:s, s:o}", "path", path, "input", input);
    char *text = answer? json_dumps (answer, JSON_COMPACT): NULL;
    json_decref (answer);
    if (!text)
        return -1;              //  out of memory: kiln answers 500 for us
    int rc = kiln_response_set_json (resp, text);
    free (text);
    return rc;
}

//  Answers the error the body asks for: {"status": N, "detail": "..."}.
static int
s_fail (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    size_t size;
    const char *body = kiln_request_body (req, &size);
    json_t *json = json_loadb (body, size, 0, NULL);
    json_int_t status = 500;
    const char *detail = "failed on purpose";
    json_t *value = json? json_object_get (json, "status"): NULL;
    if (json_is_integer (value) && json_integer_value (value) >= 400 && json_integer_value (value) <= 599)
        status = json_integer_value (value);
    value = json? json_object_get (json, "detail"): NULL;
    if (json_is_string (value))
        detail = json_string_value (value);

    kiln_request_log (req, KILN_LOG_WARN, "failing with %d on purpose", (int) status);
    int rc = kiln_response_set_error (resp, (int) status, "app_error", detail);
    json_decref (json);         //  after set_error: detail points into it
    return rc;
}

static const kiln_endpoint_t s_endpoints [] = {
    { "/", s_echo },
    { "/sub", s_echo },
    { "/fail", s_fail },
    { NULL, NULL }
};

KILN_APP_EXPORT const kiln_app_t kiln_app = {
    .abi_version     = KILN_APP_ABI_VERSION,
    .name            = "echo",
    .machine_types   = KILN_MACHINE_TYPES ("CPU"),
    .max_concurrency = 2,
    .endpoints       = s_endpoints,
};
