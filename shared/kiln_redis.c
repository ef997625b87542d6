/*  =========================================================================
    kiln_redis — Redis URLs and connections

    URL form: redis://[[user]:password@]host[:port][/db], host a name, an
    IPv4 address or [IPv6]. User and password may be percent-encoded.
    With a user, a connection authenticates as that ACL user (AUTH user
    password); without, with the password alone, as the default user.

    Also here: EVAL with binary-safe arguments, scripts sent by SHA-1
    (EVALSHA, falling back to EVAL on NOSCRIPT) for the broker, worker
    and gateway, and, for selftests only, a
    throwaway redis-server on a free port (kiln_redis_test_server_start /
    _stop).
    =========================================================================
*/
#include "kiln_redis.h"
#include "kiln_util.h"
#include "kiln_log.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REDIS_DEFAULT_PORT 6379

//  Decodes %XX escapes of a URL part into a new string. NULL on a bad
//  escape, or an escape that decodes to NUL (it could not be sent).
static char *
s_percent_decode (const char *start, size_t len)
{
    char *out = malloc (len + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (start [i] != '%') {
            out [o++] = start [i];
            continue;
        }
        int high = i + 2 < len ? kiln_hex_value (start [i + 1]) : -1;
        int low = i + 2 < len ? kiln_hex_value (start [i + 2]) : -1;
        if (high < 0 || low < 0 || (high | low) == 0) {
            free (out);
            return NULL;
        }
        out [o++] = (char) (high * 16 + low);
        i += 2;
    }
    out [o] = 0;
    return out;
}

//  Parses a whole decimal number in [min, max]. 0 or -1.
static int
s_parse_int (const char *start, size_t len, long min, long max, int *value)
{
    if (len == 0 || len > 10)
        return -1;
    long n = 0;
    for (size_t i = 0; i < len; i++) {
        if (start [i] < '0' || start [i] > '9')
            return -1;
        n = n * 10 + (start [i] - '0');
    }
    if (n < min || n > max)
        return -1;
    *value = (int) n;
    return 0;
}

kiln_redis_url_t *
kiln_redis_url_parse (const char *url)
{
    if (!url || strncasecmp (url, "redis://", 8) != 0)
        return NULL;
    const char *authority = url + 8;
    const char *slash = strchr (authority, '/');
    const char *auth_end = slash ? slash : authority + strlen (authority);

    kiln_redis_url_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->port = REDIS_DEFAULT_PORT;

    //  userinfo: the last '@' in the authority, so a password may hold
    //  an unescaped '@'.
    const char *at = NULL;
    for (const char *c = authority; c < auth_end; c++)
        if (*c == '@')
            at = c;
    const char *host_start = authority;
    if (at) {
        const char *colon = memchr (authority, ':', at - authority);
        if (colon) {
            if (colon > authority && !(self->user = s_percent_decode (authority, colon - authority)))
                goto bad;
            if (at > colon + 1 && !(self->password = s_percent_decode (colon + 1, at - colon - 1)))
                goto bad;
        }
        else
        if (at > authority && !(self->user = s_percent_decode (authority, at - authority)))
            goto bad;
        host_start = at + 1;
    }

    //  host[:port], host possibly [v6]
    const char *host_end, *port_start = NULL;
    if (*host_start == '[') {
        const char *close = memchr (host_start, ']', auth_end - host_start);
        if (!close || close == host_start + 1)
            goto bad;
        self->host = strndup (host_start + 1, close - host_start - 1);
        host_end = close + 1;
        if (host_end < auth_end) {
            if (*host_end != ':')
                goto bad;
            port_start = host_end + 1;
        }
    }
    else {
        const char *colon = memchr (host_start, ':', auth_end - host_start);
        host_end = colon ? colon : auth_end;
        if (host_end == host_start)
            goto bad;
        self->host = strndup (host_start, host_end - host_start);
        if (colon)
            port_start = colon + 1;
    }
    if (!self->host)
        goto bad;
    for (const char *c = self->host; *c; c++)
        if (*c <= ' ' || *c == '@' || *c == '[' || *c == ']' || *c == '%' || *c == '?' || *c == '#')
            goto bad;
    if (port_start && s_parse_int (port_start, auth_end - port_start, 1, 65535, &self->port))
        goto bad;

    //  /db, or a lone trailing slash
    if (slash && slash [1]
    &&  s_parse_int (slash + 1, strlen (slash + 1), 0, INT_MAX, &self->db))
        goto bad;

    return self;

bad:
    kiln_redis_url_destroy (&self);
    return NULL;
}

void
kiln_redis_url_destroy (kiln_redis_url_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kiln_redis_url_t *self = *self_p;
    free (self->host);
    free (self->user);
    if (self->password) {
        //  Do not leave the secret lying in freed memory.
        memset (self->password, 0, strlen (self->password));
        free (self->password);
    }
    free (self);
    *self_p = NULL;
}

//  Runs one command with binary-safe arguments; 0 if Redis said OK.
static int
s_command_ok (redisContext *ctx, const char *what, int argc, const char **argv)
{
    redisReply *reply = redisCommandArgv (ctx, argc, argv, NULL);
    if (!reply) {
        kiln_log_error ("redis %s: %s", what, ctx->errstr [0] ? ctx->errstr : "no reply");
        return -1;
    }
    int rc = 0;
    if (reply->type == REDIS_REPLY_ERROR) {
        kiln_log_error ("redis %s: %s", what, reply->str);
        rc = -1;
    }
    freeReplyObject (reply);
    return rc;
}

static int
s_prepare (redisContext *ctx, const kiln_redis_url_t *url)
{
    if (!ctx || !url)
        return -1;
    if (url->password) {
        const char *argv [3] = { "AUTH", url->user ? url->user : url->password, url->password };
        if (s_command_ok (ctx, "AUTH", url->user ? 3 : 2, argv))
            return -1;
    }
    if (url->db != 0) {
        char db [16];
        snprintf (db, sizeof db, "%d", url->db);
        const char *argv [2] = { "SELECT", db };
        if (s_command_ok (ctx, "SELECT", 2, argv))
            return -1;
    }
    return 0;
}

int
kiln_redis_prepare (redisContext *ctx, const kiln_redis_url_t *url)
{
    return s_prepare (ctx, url);
}

redisContext *
kiln_redis_connect (const char *url_text, int timeout_ms)
{
    kiln_redis_url_t *url = kiln_redis_url_parse (url_text);
    if (!url) {
        kiln_log_error ("redis: malformed URL '%s'", url_text ? url_text : "(null)");
        return NULL;
    }
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    redisContext *ctx = timeout_ms > 0
                      ? redisConnectWithTimeout (url->host, url->port, tv)
                      : redisConnect (url->host, url->port);
    if (!ctx)
        kiln_log_error ("redis %s:%d: out of memory", url->host, url->port);
    else
    if (ctx->err) {
        kiln_log_error ("redis %s:%d: %s", url->host, url->port, ctx->errstr);
        redisFree (ctx);
        ctx = NULL;
    }
    else
    if (timeout_ms > 0 && redisSetTimeout (ctx, tv) != REDIS_OK) {
        kiln_log_error ("redis %s:%d: cannot set timeout", url->host, url->port);
        redisFree (ctx);
        ctx = NULL;
    }
    if (ctx && s_prepare (ctx, url)) {
        redisFree (ctx);
        ctx = NULL;
    }
    //  An authenticated connection is nothing a child process may keep
    if (ctx)
        fcntl (ctx->fd, F_SETFD, FD_CLOEXEC);
    kiln_redis_url_destroy (&url);
    return ctx;
}

//  ---------------------------------------------------------------------
//  Scripts by SHA-1: EVALSHA with a NOSCRIPT fallback

#define SCRIPT_SHA_CACHE_MAX 64     //  kiln has about 30 scripts

//  SHA-1 (FIPS 180-4), only to name scripts the way Redis does; not for
//  anything that needs a secure hash.
static uint32_t
s_rol (uint32_t x, int n)
{
    return (x << n) | (x >> (32 - n));
}

static void
s_sha1_block (uint32_t h [5], const unsigned char *p)
{
    uint32_t w [80];
    for (int i = 0; i < 16; i++)
        w [i] = (uint32_t) p [4 * i] << 24 | (uint32_t) p [4 * i + 1] << 16
              | (uint32_t) p [4 * i + 2] << 8 | (uint32_t) p [4 * i + 3];
    for (int i = 16; i < 80; i++)
        w [i] = s_rol (w [i - 3] ^ w [i - 8] ^ w [i - 14] ^ w [i - 16], 1);
    uint32_t a = h [0], b = h [1], c = h [2], d = h [3], e = h [4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        }
        else
        if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        }
        else
        if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        }
        else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = s_rol (a, 5) + f + e + k + w [i];
        e = d;
        d = c;
        c = s_rol (b, 30);
        b = a;
        a = t;
    }
    h [0] += a;
    h [1] += b;
    h [2] += c;
    h [3] += d;
    h [4] += e;
}

static void
s_sha1_hex (const void *data, size_t len, char hex [41])
{
    uint32_t h [5] = { 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0 };
    const unsigned char *p = data;
    size_t left = len;
    for (; left >= 64; p += 64, left -= 64)
        s_sha1_block (h, p);
    //  The tail, 0x80, zeros, and the length in bits: one or two blocks
    unsigned char tail [128] = { 0 };
    memcpy (tail, p, left);
    tail [left] = 0x80;
    size_t tail_len = left < 56 ? 64 : 128;
    uint64_t bits = (uint64_t) len * 8;
    for (int i = 0; i < 8; i++)
        tail [tail_len - 1 - i] = (unsigned char) (bits >> (8 * i));
    s_sha1_block (h, tail);
    if (tail_len == 128)
        s_sha1_block (h, tail + 64);
    for (int i = 0; i < 5; i++)
        snprintf (hex + 8 * i, 9, "%08x", h [i]);
}

//  Scripts seen, with their text, so a lookup is a length check and a
//  memcmp rather than a hash of the whole text.
typedef struct {
    char *text;
    size_t len;
    char sha [41];
} s_script_sha_t;

static s_script_sha_t s_script_shas [SCRIPT_SHA_CACHE_MAX];
static int s_script_sha_count;
static pthread_mutex_t s_script_sha_lock = PTHREAD_MUTEX_INITIALIZER;

void
kiln_redis_script_sha (const char *script, size_t len, char sha [41])
{
    pthread_mutex_lock (&s_script_sha_lock);
    for (int i = 0; i < s_script_sha_count; i++) {
        s_script_sha_t *entry = &s_script_shas [i];
        if (entry->len == len && memcmp (entry->text, script, len) == 0) {
            memcpy (sha, entry->sha, 41);
            pthread_mutex_unlock (&s_script_sha_lock);
            return;
        }
    }
    s_sha1_hex (script, len, sha);
    if (s_script_sha_count < SCRIPT_SHA_CACHE_MAX) {
        s_script_sha_t *entry = &s_script_shas [s_script_sha_count];
        entry->text = malloc (len + 1);
        if (entry->text) {
            memcpy (entry->text, script, len);
            entry->text [len] = 0;
            entry->len = len;
            memcpy (entry->sha, sha, 41);
            s_script_sha_count++;
        }
    }
    pthread_mutex_unlock (&s_script_sha_lock);
}

bool
kiln_redis_noscript (const redisReply *reply)
{
    return reply && reply->type == REDIS_REPLY_ERROR && reply->str
        && strncmp (reply->str, "NOSCRIPT", 8) == 0;
}

//  Reads "<prefix><decimal>\r\n" at *pos; the number, or -1.
static long long
s_resp_number (const char *cmd, size_t len, size_t *pos, char prefix)
{
    size_t i = *pos;
    if (i >= len || cmd [i] != prefix)
        return -1;
    i++;
    long long n = 0;
    size_t digits = 0;
    for (; i < len && cmd [i] >= '0' && cmd [i] <= '9' && digits < 18; i++, digits++)
        n = n * 10 + (cmd [i] - '0');
    if (digits == 0 || i + 1 >= len || cmd [i] != '\r' || cmd [i + 1] != '\n')
        return -1;
    *pos = i + 2;
    return n;
}

int
kiln_redis_evalsha_format (const char *cmd, size_t len, char **out, size_t *out_len)
{
    //  *N\r\n $4\r\n EVAL\r\n $L\r\n <script>\r\n <the rest, kept>
    size_t pos = 0;
    long long argc = s_resp_number (cmd, len, &pos, '*');
    if (argc < 2 || s_resp_number (cmd, len, &pos, '$') != 4
    ||  pos + 6 > len || strncasecmp (cmd + pos, "EVAL", 4) != 0
    ||  cmd [pos + 4] != '\r' || cmd [pos + 5] != '\n')
        return -1;
    pos += 6;
    long long script_len = s_resp_number (cmd, len, &pos, '$');
    if (script_len < 0 || (size_t) script_len + 2 > len - pos)
        return -1;
    const char *script = cmd + pos;
    size_t rest = pos + (size_t) script_len + 2;
    char sha [41];
    kiln_redis_script_sha (script, (size_t) script_len, sha);
    char head [96];                 //  62 bytes and the count
    int head_len = snprintf (head, sizeof head, "*%lld\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n", argc, sha);
    *out = malloc ((size_t) head_len + len - rest);
    if (!*out)
        return -1;
    memcpy (*out, head, (size_t) head_len);
    memcpy (*out + head_len, cmd + rest, len - rest);
    *out_len = (size_t) head_len + len - rest;
    return 0;
}

//  Sends a formatted command and waits for its reply; when it is an
//  EVAL, as EVALSHA first. Takes nothing: the caller frees cmd.
static redisReply *
s_formatted_command (redisContext *ctx, const char *cmd, size_t len)
{
    char *evalsha;
    size_t evalsha_len;
    void *reply = NULL;
    if (kiln_redis_evalsha_format (cmd, len, &evalsha, &evalsha_len) == 0) {
        int rc = redisAppendFormattedCommand (ctx, evalsha, evalsha_len);
        free (evalsha);
        if (rc != REDIS_OK || redisGetReply (ctx, &reply) != REDIS_OK)
            return NULL;
        if (!kiln_redis_noscript (reply))
            return reply;
        freeReplyObject (reply);
        reply = NULL;
    }
    if (redisAppendFormattedCommand (ctx, cmd, len) != REDIS_OK
    ||  redisGetReply (ctx, &reply) != REDIS_OK)
        return NULL;
    return reply;
}

redisReply *
kiln_redis_command_argv (redisContext *ctx, int argc, const char **argv, const size_t *argvlen)
{
    void *reply = NULL;
    if (kiln_redis_append_argv (ctx, argc, argv, argvlen) != REDIS_OK
    ||  redisGetReply (ctx, &reply) != REDIS_OK)
        return NULL;
    if (kiln_redis_noscript (reply)) {
        //  The EVAL itself, which loads the script again
        freeReplyObject (reply);
        reply = redisCommandArgv (ctx, argc, argv, argvlen);
    }
    return reply;
}

int
kiln_redis_append_argv (redisContext *ctx, int argc, const char **argv, const size_t *argvlen)
{
    if (!ctx || argc < 1)
        return REDIS_ERR;
    size_t len0 = argvlen ? argvlen [0] : strlen (argv [0]);
    if (argc < 2 || len0 != 4 || strncasecmp (argv [0], "EVAL", 4) != 0)
        return redisAppendCommandArgv (ctx, argc, argv, argvlen);
    char *cmd;
    int len = redisFormatCommandArgv (&cmd, argc, argv, argvlen);
    if (len < 0)
        return REDIS_ERR;
    char *evalsha;
    size_t evalsha_len;
    int rc;
    if (kiln_redis_evalsha_format (cmd, (size_t) len, &evalsha, &evalsha_len) == 0) {
        rc = redisAppendFormattedCommand (ctx, evalsha, evalsha_len);
        free (evalsha);
    }
    else
        rc = redisAppendFormattedCommand (ctx, cmd, (size_t) len);
    free (cmd);
    return rc;
}

redisReply *
kiln_redis_vcommand (redisContext *ctx, const char *format, va_list args)
{
    if (!ctx || !format)
        return NULL;
    if (strncasecmp (format, "EVAL ", 5) != 0)
        return redisvCommand (ctx, format, args);
    char *cmd;
    int len = redisvFormatCommand (&cmd, format, args);
    if (len < 0)
        return NULL;
    redisReply *reply = s_formatted_command (ctx, cmd, (size_t) len);
    free (cmd);
    return reply;
}

redisReply *
kiln_redis_command (redisContext *ctx, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    redisReply *reply = kiln_redis_vcommand (ctx, format, args);
    va_end (args);
    return reply;
}

//  ---------------------------------------------------------------------
//  Throwaway redis-server for selftests

#define REDIS_SERVER_BIN "/usr/bin/redis-server"
#define REDIS_START_TIMEOUT_MS 10000

//  Asks the kernel for a free loopback port. There is a window before
//  redis binds it, which is fine for tests.
static int
s_free_port (void)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in addr = { .sin_family = AF_INET };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    int port = -1;
    if (bind (fd, (struct sockaddr *) &addr, sizeof addr) == 0
    &&  getsockname (fd, (struct sockaddr *) &addr, &len) == 0)
        port = ntohs (addr.sin_port);
    close (fd);
    return port;
}

redisReply *
kiln_redis_eval (redisContext *ctx, const char *script,
                 int nkeys, const char *const *keys,
                 int nargs, const char *const *args, const size_t *lens)
{
    if (!ctx || nkeys < 0 || nargs < 0 || nkeys + nargs > KILN_REDIS_EVAL_MAX_ARGS)
        return NULL;
    const char *argv [3 + KILN_REDIS_EVAL_MAX_ARGS];
    size_t argvlen [3 + KILN_REDIS_EVAL_MAX_ARGS];
    char numkeys [16];
    snprintf (numkeys, sizeof numkeys, "%d", nkeys);
    int argc = 0;
    argv [argc] = "EVAL";
    argvlen [argc++] = 4;
    argv [argc] = script;
    argvlen [argc++] = strlen (script);
    argv [argc] = numkeys;
    argvlen [argc++] = strlen (numkeys);
    for (int i = 0; i < nkeys; i++) {
        argv [argc] = keys [i];
        argvlen [argc++] = strlen (keys [i]);
    }
    for (int i = 0; i < nargs; i++) {
        argv [argc] = args [i];
        argvlen [argc++] = lens? lens [i]: strlen (args [i]);
    }
    return kiln_redis_command_argv (ctx, argc, argv, argvlen);
}

//  Starts redis-server on a free loopback port with no persistence, in a
//  new temp dir, and waits until it answers PING. extra_args (may be
//  NULL) is a NULL-terminated list of more server arguments. Returns the
//  pid (>0) and fills *port and dir, or -1 (reason on stderr). The server
//  dies with the calling thread, so a failed assert does not leak it.
pid_t
kiln_redis_test_server_start (int *port, char dir [64], const char *const *extra_args)
{
    if (access (REDIS_SERVER_BIN, X_OK)) {
        fprintf (stderr, "kiln selftest: %s is missing: install redis-server\n", REDIS_SERVER_BIN);
        return -1;
    }
    snprintf (dir, 64, "/tmp/kiln-redis-XXXXXX");
    if (!mkdtemp (dir)) {
        fprintf (stderr, "kiln selftest: mkdtemp: %s\n", strerror (errno));
        return -1;
    }
    *port = s_free_port ();
    if (*port <= 0) {
        rmdir (dir);
        return -1;
    }
    char port_text [16], log_path [96];
    snprintf (port_text, sizeof port_text, "%d", *port);
    snprintf (log_path, sizeof log_path, "%s/redis.log", dir);
    const char *argv [64] = {
        REDIS_SERVER_BIN, "--port", port_text, "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--dir", dir,
        "--logfile", log_path, "--daemonize", "no"
    };
    int argc = 15;
    for (int i = 0; extra_args && extra_args [i] && argc < 63; i++)
        argv [argc++] = extra_args [i];
    argv [argc] = NULL;

    pid_t parent = getpid ();
    pid_t pid = fork ();
    if (pid < 0) {
        rmdir (dir);
        return -1;
    }
    if (pid == 0) {
        prctl (PR_SET_PDEATHSIG, SIGKILL);
        if (getppid () != parent)
            _exit (1);              //  parent already gone
        execv (REDIS_SERVER_BIN, (char *const *) argv);
        _exit (127);
    }
    //  Wait for PING; give up if the server exits or takes too long.
    struct timespec start;
    clock_gettime (CLOCK_MONOTONIC, &start);
    while (true) {
        int status;
        if (waitpid (pid, &status, WNOHANG) == pid) {
            fprintf (stderr, "kiln selftest: redis-server exited early (see %s)\n", log_path);
            return -1;
        }
        struct timeval tv = { 0, 200000 };
        redisContext *ctx = redisConnectWithTimeout ("127.0.0.1", *port, tv);
        if (ctx && !ctx->err) {
            redisReply *reply = redisCommand (ctx, "PING");
            //  A server with a password answers NOAUTH: it is up too.
            bool up = reply && (reply->type == REDIS_REPLY_STATUS
                             || reply->type == REDIS_REPLY_ERROR);
            if (reply)
                freeReplyObject (reply);
            redisFree (ctx);
            if (up)
                return pid;
        }
        else
        if (ctx)
            redisFree (ctx);
        struct timespec now;
        clock_gettime (CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000
            > REDIS_START_TIMEOUT_MS) {
            fprintf (stderr, "kiln selftest: redis-server did not answer PING\n");
            kill (pid, SIGKILL);
            waitpid (pid, NULL, 0);
            return -1;
        }
        usleep (20000);
    }
}

//  Stops the server and removes its dir.
void
kiln_redis_test_server_stop (pid_t pid, const char *dir)
{
    if (pid > 0) {
        kill (pid, SIGKILL);
        waitpid (pid, NULL, 0);
    }
    if (dir && *dir) {
        char cmd [128];
        snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system (cmd) != 0)
            fprintf (stderr, "kiln selftest: could not remove %s\n", dir);
    }
}

//  ---------------------------------------------------------------------
//  Selftest

static void
s_check_url (const char *text, const char *host, int port, int db, const char *password)
{
    kiln_redis_url_t *url = kiln_redis_url_parse (text);
    assert (url);
    assert (strcmp (url->host, host) == 0);
    assert (url->port == port);
    assert (url->db == db);
    if (password)
        assert (url->password && strcmp (url->password, password) == 0);
    else
        assert (url->password == NULL);
    kiln_redis_url_destroy (&url);
    assert (url == NULL);
}

void
kiln_redis_test (bool verbose)
{
    if (verbose)
        printf (" * kiln_redis: ");

    s_check_url ("redis://127.0.0.1:6379", "127.0.0.1", 6379, 0, NULL);
    s_check_url ("redis://localhost", "localhost", 6379, 0, NULL);
    s_check_url ("redis://localhost/", "localhost", 6379, 0, NULL);
    s_check_url ("REDIS://redis.internal:7000/3", "redis.internal", 7000, 3, NULL);
    s_check_url ("redis://localhost/15", "localhost", 6379, 15, NULL);
    s_check_url ("redis://:s3cret@localhost:6380", "localhost", 6380, 0, "s3cret");
    s_check_url ("redis://:s3cret@localhost:6380/2", "localhost", 6380, 2, "s3cret");
    s_check_url ("redis://alice:s3cret@db/1", "db", 6379, 1, "s3cret");
    s_check_url ("redis://alice@db", "db", 6379, 0, NULL);
    s_check_url ("redis://:p%40ss%3Aw%2Fd@db", "db", 6379, 0, "p@ss:w/d");
    s_check_url ("redis://:p@ss@db", "db", 6379, 0, "p@ss");
    s_check_url ("redis://:@db", "db", 6379, 0, NULL);
    s_check_url ("redis://[::1]:6390/4", "::1", 6390, 4, NULL);
    s_check_url ("redis://[::1]", "::1", 6379, 0, NULL);
    s_check_url ("redis://:pw@[fe80::1]:1", "fe80::1", 1, 0, "pw");

    //  The ACL user, percent-decoded; none without one
    kiln_redis_url_t *url = kiln_redis_url_parse ("redis://al%69ce:pw@db");
    assert (url && url->user && strcmp (url->user, "alice") == 0);
    kiln_redis_url_destroy (&url);
    url = kiln_redis_url_parse ("redis://:pw@db");
    assert (url && !url->user);
    kiln_redis_url_destroy (&url);

    const char *bad [] = {
        NULL, "", "redis://", "redis:///0", "http://localhost:6379", "localhost:6379",
        "redis://host:", "redis://host:0", "redis://host:65536", "redis://host:12ab",
        "redis://host:-1", "redis://host/abc", "redis://host/-1", "redis://host/1/2",
        "redis://host/99999999999", "redis://ho st", "redis://host?db=1",
        "redis://[::1", "redis://[]:6379", "redis://[::1]x", "redis://:pw@",
        "redis://:p%zzw@host", "redis://:p%0@host", "redis://:p%00w@host",
        "redis://host:6379:6380", "redis://@", "rediss://host", NULL
    };
    for (int i = 0; i == 0 || bad [i]; i++)
        assert (kiln_redis_url_parse (bad [i]) == NULL);
    kiln_redis_url_destroy (&url);          //  NULL is fine

    //  SHA-1 test vectors (FIPS 180), across the one- and two-block tails
    char hex [41];
    s_sha1_hex ("", 0, hex);
    assert (strcmp (hex, "da39a3ee5e6b4b0d3255bfef95601890afd80709") == 0);
    s_sha1_hex ("abc", 3, hex);
    assert (strcmp (hex, "a9993e364706816aba3e25717850c26c9cd0d89d") == 0);
    const char *vector = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    s_sha1_hex (vector, strlen (vector), hex);
    assert (strcmp (hex, "84983e441c3bd26ebaae4aa1f95129e5e54670f1") == 0);
    char sha [41];
    kiln_redis_script_sha (vector, strlen (vector), sha);
    kiln_redis_script_sha (vector, strlen (vector), sha);       //  remembered
    assert (strcmp (sha, "84983e441c3bd26ebaae4aa1f95129e5e54670f1") == 0);

    //  The EVALSHA form of a formatted EVAL keeps the other arguments;
    //  anything else is left alone.
    char *cmd, *rewritten;
    size_t rewritten_len;
    int cmd_len = redisFormatCommand (&cmd, "EVAL %s 1 %s %b", "abc", "key", "a\0b", (size_t) 3);
    assert (cmd_len > 0);
    assert (kiln_redis_evalsha_format (cmd, (size_t) cmd_len, &rewritten, &rewritten_len) == 0);
    static const char expect [] = "*5\r\n$7\r\nEVALSHA\r\n$40\r\na9993e364706816aba3e25717850c26c9cd0d89d\r\n"
                         "$1\r\n1\r\n$3\r\nkey\r\n$3\r\na\0b\r\n";
    assert (rewritten_len == sizeof expect - 1 && memcmp (rewritten, expect, rewritten_len) == 0);
    free (rewritten);
    free (cmd);
    cmd_len = redisFormatCommand (&cmd, "EVALSHA %s 0", "abc");
    assert (kiln_redis_evalsha_format (cmd, (size_t) cmd_len, &rewritten, &rewritten_len) == -1);
    free (cmd);
    const char *cut = "*2\r\n$4\r\nEVAL\r\n$9\r\nab";
    assert (kiln_redis_evalsha_format (cut, strlen (cut), &rewritten, &rewritten_len) == -1);

    //  Connecting where nothing listens fails fast, with NULL.
    kiln_log_init ("kiln-selftest", "error");
    int closed_port = s_free_port ();
    assert (closed_port > 0);
    char text [96];
    snprintf (text, sizeof text, "redis://127.0.0.1:%d", closed_port);
    //  The expected errors are noise on the test's stderr.
    fflush (stderr);
    int saved_stderr = dup (STDERR_FILENO);
    int devnull = open ("/dev/null", O_WRONLY);
    assert (saved_stderr >= 0 && devnull >= 0);
    dup2 (devnull, STDERR_FILENO);
    assert (kiln_redis_connect (text, 500) == NULL);
    assert (kiln_redis_connect ("garbage", 500) == NULL);
    dup2 (saved_stderr, STDERR_FILENO);

    //  A real server with an ACL user and a password for the default user:
    //  AUTH both ways, SELECT, and a wrong password refused.
    int port;
    char dir [64];
    const char *extra [] = {
        "--requirepass", "top secret", "--user", "alice", "on", ">alicepw", "~*", "&*", "+@all", NULL
    };
    pid_t pid = kiln_redis_test_server_start (&port, dir, extra);
    if (pid <= 0) {
        fprintf (stderr, "kiln_redis_test: cannot start redis-server\n");
        assert (false);
    }
    snprintf (text, sizeof text, "redis://:top%%20secret@127.0.0.1:%d/3", port);
    redisContext *ctx = kiln_redis_connect (text, 2000);
    bool ok = ctx != NULL;
    if (ok) {
        redisReply *reply = redisCommand (ctx, "CLIENT INFO");
        ok = reply && reply->type == REDIS_REPLY_STRING && strstr (reply->str, " db=3 ");
        if (reply)
            freeReplyObject (reply);
        //  EVAL: keys and binary-safe args reach the script; too many
        //  arguments are refused before anything is sent.
        const char *keys [] = { "k" };
        const char *args [] = { "a\0b" };
        size_t lens [] = { 3 };
        reply = kiln_redis_eval (ctx, "return {KEYS[1], ARGV[1]}", 1, keys, 1, args, lens);
        ok = ok && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2
          && strcmp (reply->element [0]->str, "k") == 0
          && reply->element [1]->len == 3 && memcmp (reply->element [1]->str, "a\0b", 3) == 0;
        if (reply)
            freeReplyObject (reply);
        ok = ok && !kiln_redis_eval (ctx, "return 1", 0, NULL, KILN_REDIS_EVAL_MAX_ARGS + 1, NULL, NULL);
        //  Our SHA-1 names a script as Redis does; after SCRIPT FLUSH the
        //  EVALSHA's NOSCRIPT falls back to EVAL, which loads it again.
        const char *script = "return 'sha ' .. ARGV[1]";
        char sha [41];
        kiln_redis_script_sha (script, strlen (script), sha);
        reply = redisCommand (ctx, "SCRIPT LOAD %s", script);
        ok = ok && reply && reply->type == REDIS_REPLY_STRING && strcmp (reply->str, sha) == 0;
        if (reply)
            freeReplyObject (reply);
        for (int round = 0; round < 2; round++) {
            reply = redisCommand (ctx, "SCRIPT FLUSH");
            if (reply)
                freeReplyObject (reply);
            reply = kiln_redis_command (ctx, "EVAL %s 0 %s", script, "x");
            ok = ok && reply && reply->type == REDIS_REPLY_STRING && strcmp (reply->str, "sha x") == 0;
            if (reply)
                freeReplyObject (reply);
            //  Now loaded: EVALSHA answers on the first try.
            reply = redisCommand (ctx, "EVALSHA %s 0 y", sha);
            ok = ok && reply && reply->type == REDIS_REPLY_STRING && strcmp (reply->str, "sha y") == 0;
            if (reply)
                freeReplyObject (reply);
            const char *argv [] = { "eval", script, "0", "z" };
            reply = redisCommand (ctx, "SCRIPT FLUSH");
            if (reply)
                freeReplyObject (reply);
            reply = kiln_redis_command_argv (ctx, 4, argv, NULL);
            ok = ok && reply && reply->type == REDIS_REPLY_STRING && strcmp (reply->str, "sha z") == 0;
            if (reply)
                freeReplyObject (reply);
        }
        //  Pipelined: two appended, then read in order. The script is
        //  loaded (above), so its EVALSHA runs; after SCRIPT FLUSH the
        //  same append answers NOSCRIPT, for the caller to run again.
        const char *piped [] = { "EVAL", script, "0", "p" };
        const char *echo [] = { "ECHO", "after" };
        for (int flushed = 0; flushed < 2; flushed++) {
            if (flushed) {
                reply = redisCommand (ctx, "SCRIPT FLUSH");
                if (reply)
                    freeReplyObject (reply);
            }
            ok = ok && kiln_redis_append_argv (ctx, 4, piped, NULL) == REDIS_OK
                    && kiln_redis_append_argv (ctx, 2, echo, NULL) == REDIS_OK;
            redisReply *first = NULL, *second = NULL;
            ok = ok && redisGetReply (ctx, (void **) &first) == REDIS_OK
                    && redisGetReply (ctx, (void **) &second) == REDIS_OK;
            ok = ok && first && (flushed? kiln_redis_noscript (first)
                                        : first->type == REDIS_REPLY_STRING && strcmp (first->str, "sha p") == 0)
                    && second && second->type == REDIS_REPLY_STRING && strcmp (second->str, "after") == 0;
            if (first)
                freeReplyObject (first);
            if (second)
                freeReplyObject (second);
        }
        //  Not an EVAL: sent as it is.
        reply = kiln_redis_command (ctx, "ECHO %s", "EVAL");
        ok = ok && reply && reply->type == REDIS_REPLY_STRING && strcmp (reply->str, "EVAL") == 0;
        if (reply)
            freeReplyObject (reply);
        redisFree (ctx);
    }
    snprintf (text, sizeof text, "redis://alice:alicepw@127.0.0.1:%d", port);
    ctx = kiln_redis_connect (text, 2000);
    if (ctx) {
        redisReply *reply = redisCommand (ctx, "ACL WHOAMI");
        ok = ok && reply && reply->type == REDIS_REPLY_STRING && strcmp (reply->str, "alice") == 0;
        if (reply)
            freeReplyObject (reply);
        redisFree (ctx);
    }
    else
        ok = false;
    //  kiln_redis_prepare on a context made elsewhere (the gateway's way),
    //  as the default user and as alice.
    snprintf (text, sizeof text, "redis://:top%%20secret@127.0.0.1:%d/5", port);
    url = kiln_redis_url_parse (text);
    ctx = redisConnect ("127.0.0.1", port);
    ok = ok && url && ctx && !ctx->err && kiln_redis_prepare (ctx, url) == 0;
    if (ctx)
        redisFree (ctx);
    kiln_redis_url_destroy (&url);
    snprintf (text, sizeof text, "redis://alice:alicepw@127.0.0.1:%d", port);
    url = kiln_redis_url_parse (text);
    ctx = redisConnect ("127.0.0.1", port);
    ok = ok && url && ctx && !ctx->err && kiln_redis_prepare (ctx, url) == 0;
    if (ok) {
        redisReply *reply = redisCommand (ctx, "ACL WHOAMI");
        ok = reply && reply->type == REDIS_REPLY_STRING && strcmp (reply->str, "alice") == 0;
        if (reply)
            freeReplyObject (reply);
    }
    if (ctx)
        redisFree (ctx);
    kiln_redis_url_destroy (&url);
    dup2 (devnull, STDERR_FILENO);
    snprintf (text, sizeof text, "redis://:wrong@127.0.0.1:%d", port);
    ctx = kiln_redis_connect (text, 2000);
    ok = ok && ctx == NULL;
    snprintf (text, sizeof text, "redis://:top%%20secret@127.0.0.1:%d/100000", port);
    ctx = kiln_redis_connect (text, 2000);      //  no such db
    ok = ok && ctx == NULL;
    dup2 (saved_stderr, STDERR_FILENO);
    close (saved_stderr);
    close (devnull);
    kiln_redis_test_server_stop (pid, dir);
    assert (ok);

    if (verbose)
        printf ("OK\n");
}
