/*  =========================================================================
    zsend — send raw ZeroMQ frames to an endpoint (a test tool)

    The integration tests use it to throw malformed and truncated messages
    at the broker's ROUTER socket, bypassing libkiln's codec, and to see
    what the broker answers.

        zsend [--identity ID] [--recv-ms MS] ENDPOINT FRAME [FRAME ...]

    Connects one DEALER socket (with routing identity ID, if given) to
    ENDPOINT and sends the FRAMEs as one multipart message. A FRAME is
    `hex:0102ff` (bytes in hex), `raw:text` (the text's bytes) or `empty`
    (a zero-length frame). With --recv-ms it then waits up to that long
    for one reply and prints it on stdout as a line of hex frames
    separated by spaces ("empty" for a zero-length frame). Exits 0 once
    the message is handed to ZeroMQ (reply or not), 1 on a bad argument
    or a socket error.
    =========================================================================
*/
#include <czmq.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Long enough for the message to leave before the socket closes, even
//  while the TCP connection is still being set up.
#define LINGER_MS 2000

static void
s_usage (void)
{
    fprintf (stderr,
        "usage: zsend [--identity ID] [--recv-ms MS] ENDPOINT FRAME [FRAME ...]\n"
        "  FRAME: hex:0102ff | raw:text | empty\n");
}

static int
s_hex_digit (char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char) tolower ((unsigned char) c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

//  Adds one frame described by `spec` to `msg`. 0, or -1 if malformed.
static int
s_add_frame (zmsg_t *msg, const char *spec)
{
    if (streq (spec, "empty"))
        return zmsg_addmem (msg, NULL, 0);
    if (strncmp (spec, "raw:", 4) == 0)
        return zmsg_addmem (msg, spec + 4, strlen (spec + 4));
    if (strncmp (spec, "hex:", 4) != 0)
        return -1;

    const char *hex = spec + 4;
    size_t len = strlen (hex);
    if (len % 2)
        return -1;
    uint8_t *bytes = (uint8_t *) malloc (len / 2 + 1);
    if (!bytes)
        return -1;
    for (size_t i = 0; i < len / 2; i++) {
        int hi = s_hex_digit (hex [2 * i]);
        int lo = s_hex_digit (hex [2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free (bytes);
            return -1;
        }
        bytes [i] = (uint8_t) (hi * 16 + lo);
    }
    int rc = zmsg_addmem (msg, bytes, len / 2);
    free (bytes);
    return rc;
}

static void
s_print_message (zmsg_t *msg)
{
    zframe_t *frame = zmsg_first (msg);
    bool first = true;
    while (frame) {
        if (!first)
            putchar (' ');
        first = false;
        const uint8_t *data = zframe_data (frame);
        size_t size = zframe_size (frame);
        if (size == 0)
            fputs ("empty", stdout);
        for (size_t i = 0; i < size; i++)
            printf ("%02x", data [i]);
        frame = zmsg_next (msg);
    }
    putchar ('\n');
    fflush (stdout);
}

int
main (int argc, char *argv [])
{
    const char *identity = NULL;
    int recv_ms = 0;
    int argn = 1;
    while (argn < argc && strncmp (argv [argn], "--", 2) == 0) {
        if (streq (argv [argn], "--identity") && argn + 1 < argc)
            identity = argv [argn + 1];
        else
        if (streq (argv [argn], "--recv-ms") && argn + 1 < argc)
            recv_ms = atoi (argv [argn + 1]);
        else {
            s_usage ();
            return 1;
        }
        argn += 2;
    }
    if (argc - argn < 2 || recv_ms < 0) {
        s_usage ();
        return 1;
    }
    const char *endpoint = argv [argn++];

    zmsg_t *msg = zmsg_new ();
    for (; argn < argc; argn++) {
        if (s_add_frame (msg, argv [argn])) {
            fprintf (stderr, "zsend: bad frame '%s'\n", argv [argn]);
            zmsg_destroy (&msg);
            return 1;
        }
    }

    zsock_t *dealer = zsock_new (ZMQ_DEALER);
    if (!dealer) {
        zmsg_destroy (&msg);
        return 1;
    }
    zsock_set_linger (dealer, LINGER_MS);
    if (identity)
        zsock_set_identity (dealer, identity);
    if (zsock_connect (dealer, "%s", endpoint)) {
        fprintf (stderr, "zsend: cannot connect to %s\n", endpoint);
        zmsg_destroy (&msg);
        zsock_destroy (&dealer);
        return 1;
    }
    if (zmsg_send (&msg, dealer)) {
        fprintf (stderr, "zsend: send failed: %s\n", zmq_strerror (zmq_errno ()));
        zmsg_destroy (&msg);
        zsock_destroy (&dealer);
        return 1;
    }

    if (recv_ms > 0) {
        int64_t deadline_ms = zclock_mono () + recv_ms;
        zsock_set_rcvtimeo (dealer, 50);
        while (zclock_mono () < deadline_ms) {
            zmsg_t *reply = zmsg_recv (dealer);
            if (reply) {
                s_print_message (reply);
                zmsg_destroy (&reply);
                break;
            }
        }
    }
    zsock_destroy (&dealer);
    return 0;
}
