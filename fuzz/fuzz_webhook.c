/*  =========================================================================
    fuzz_webhook — what the webhook deliverer makes of outside input
    (broker/webhook.c): the app's result, put into the body it POSTs, and
    the address a webhook URL resolves to, checked against private ranges

    Input: byte 0 picks (even: body, odd: address).
    - body: bytes 1-2 the status (big-endian, as a signed 16-bit number),
      byte 3 the error's length n, then n bytes of error text, then the
      result. kiln_webhook_body must give JSON with request_id,
      gateway_request_id, status "OK" exactly for a 2xx, an error on
      every non-2xx, and a payload that is the result as JSON when it is
      JSON, else as text when it is UTF-8, else null with payload_error.
    - address: the rest as an IPv4 (4 bytes) or IPv6 (16 bytes) address.
      An IPv4-mapped IPv6 address (::ffff:a.b.c.d) must be judged as the
      IPv4 address it maps; 127/8, 10/8 and ::1 are always private.
    =========================================================================
*/
#include "fuzz.h"
#include "webhook.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define REQUEST_ID "3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c"

static void
s_body (const uint8_t *data, size_t size)
{
    if (size < 3)
        return;
    int status = (int16_t) ((data [0] << 8) | data [1]);
    size_t error_size = data [2];
    data += 3;
    size -= 3;
    if (error_size > size)
        error_size = size;
    char *error = fuzz_string (data, error_size);
    if (!error)
        return;
    const char *result = (const char *) data + error_size;
    size_t result_size = size - error_size;

    char *body = kiln_webhook_body (REQUEST_ID, status, result, result_size, error);
    FUZZ_CHECK (body);
    json_t *root = json_loads (body, JSON_ALLOW_NUL, NULL);
    FUZZ_CHECK (json_is_object (root));
    FUZZ_CHECK (strcmp (json_string_value (json_object_get (root, "request_id")), REQUEST_ID) == 0);
    FUZZ_CHECK (strcmp (json_string_value (json_object_get (root, "gateway_request_id")), REQUEST_ID) == 0);
    bool ok = status >= 200 && status < 300;
    const char *said = json_string_value (json_object_get (root, "status"));
    FUZZ_CHECK (said && strcmp (said, ok ? "OK" : "ERROR") == 0);
    if (!ok)
        FUZZ_CHECK (json_is_string (json_object_get (root, "error")));

    json_t *payload = json_object_get (root, "payload");
    FUZZ_CHECK (payload);
    json_t *as_json = result_size
        ? json_loadb (result, result_size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL) : NULL;
    json_t *as_text = result_size && !as_json ? json_stringn (result, result_size) : NULL;
    if (as_json)
        FUZZ_CHECK (json_equal (payload, as_json));
    else
    if (as_text)
        FUZZ_CHECK (json_equal (payload, as_text));
    else {
        FUZZ_CHECK (json_is_null (payload));
        FUZZ_CHECK (!result_size || json_is_string (json_object_get (root, "payload_error")));
    }
    json_decref (as_json);
    json_decref (as_text);
    json_decref (root);
    free (body);
    free (error);
}

static bool
s_private_v4 (const uint8_t ip [4])
{
    struct sockaddr_in in;
    memset (&in, 0, sizeof in);
    in.sin_family = AF_INET;
    memcpy (&in.sin_addr, ip, 4);
    return kiln_webhook_address_private ((const struct sockaddr *) &in);
}

static void
s_address (const uint8_t *data, size_t size)
{
    if (size >= 16) {
        struct sockaddr_in6 in6;
        memset (&in6, 0, sizeof in6);
        in6.sin6_family = AF_INET6;
        memcpy (in6.sin6_addr.s6_addr, data, 16);
        bool verdict = kiln_webhook_address_private ((const struct sockaddr *) &in6);
        static const uint8_t mapped [12] = { 0,0,0,0, 0,0,0,0, 0,0,0xff,0xff };
        if (memcmp (data, mapped, 12) == 0)
            FUZZ_CHECK (verdict == s_private_v4 (data + 12));
        if (IN6_IS_ADDR_LOOPBACK (&in6.sin6_addr) || IN6_IS_ADDR_UNSPECIFIED (&in6.sin6_addr)
        ||  IN6_IS_ADDR_LINKLOCAL (&in6.sin6_addr))
            FUZZ_CHECK (verdict);
    }
    if (size >= 4) {
        bool verdict = s_private_v4 (data);
        if (data [0] == 127 || data [0] == 10 || data [0] == 0
        || (data [0] == 192 && data [1] == 168) || (data [0] == 169 && data [1] == 254)
        || (data [0] == 172 && (data [1] & 0xf0) == 16))
            FUZZ_CHECK (verdict);
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    //  An exact-size copy, so a read past the end is caught
    uint8_t *rest = malloc (size);
    if (!rest)
        return 0;
    memcpy (rest, data + 1, size - 1);
    if (data [0] % 2 == 0)
        s_body (rest, size - 1);
    else
        s_address (rest, size - 1);
    free (rest);
    return 0;
}
