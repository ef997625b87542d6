/*  =========================================================================
    kiln_redis — Redis URLs and connections

    redis://[:password@]host[:port][/db] (also redis://user:password@...).
    The broker and worker use the synchronous hiredis API through
    kiln_redis_connect; the gateway takes the parsed URL to open its async
    contexts on its event loop.
    =========================================================================
*/
#ifndef KILN_REDIS_H_INCLUDED
#define KILN_REDIS_H_INCLUDED

#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct {
    char *host;
    int port;                       //  6379 when absent
    int db;                         //  0 when absent
    char *user;                     //  the ACL user; NULL when absent (default user)
    char *password;                 //  NULL when absent
} kiln_redis_url_t;

//  Parses a URL. NULL when malformed.
kiln_redis_url_t *kiln_redis_url_parse (const char *url);
void kiln_redis_url_destroy (kiln_redis_url_t **self_p);

//  Connects, authenticates, selects the db. NULL on failure, with a
//  logged reason. timeout_ms bounds the connect and every command.
redisContext *kiln_redis_connect (const char *url, int timeout_ms);

//  Sends AUTH / SELECT on a fresh connection when the URL asks for them.
//  0 or -1 (logged).
int kiln_redis_prepare (redisContext *ctx, const kiln_redis_url_t *url);

//  Most keys + arguments kiln_redis_eval takes.
#define KILN_REDIS_EVAL_MAX_ARGS 61

//  EVAL (sent as EVALSHA, see below) with binary-safe arguments: the
//  keys, then the args (lens NULL: every arg NUL-terminated; else one
//  length per arg). The reply (caller frees; it may be an error reply),
//  or NULL when the command could not be sent (the connection is gone)
//  or there are too many arguments.
redisReply *kiln_redis_eval (redisContext *ctx, const char *script,
                             int nkeys, const char *const *keys,
                             int nargs, const char *const *args, const size_t *lens);

//  ---------------------------------------------------------------------
//  Scripts by SHA-1 (EVALSHA), so Redis need not receive and hash a
//  script's whole text on every call. Every helper below turns an EVAL
//  into an EVALSHA of the same script and, when Redis answers NOSCRIPT
//  (it restarted, or SCRIPT FLUSH), sends the EVAL itself once, which
//  also loads the script again. Anything that is not an EVAL goes out
//  unchanged.

//  The script's SHA-1 as 40 lowercase hex digits, computed once per
//  script text and remembered (thread-safe).
void kiln_redis_script_sha (const char *script, size_t len, char sha [41]);

//  True when the reply is Redis's NOSCRIPT error.
bool kiln_redis_noscript (const redisReply *reply);

//  Given a formatted command (redisFormatCommand*), makes the EVALSHA
//  form of it in a new buffer (caller frees). 0, or -1 when the command
//  is not an EVAL (or out of memory): then send it as it is.
int kiln_redis_evalsha_format (const char *cmd, size_t len, char **out, size_t *out_len);

//  redisCommandArgv / redisvCommand / redisCommand with the EVALSHA
//  rewrite and the NOSCRIPT fallback (argvlen NULL: NUL-terminated args).
redisReply *kiln_redis_command_argv (redisContext *ctx, int argc, const char **argv,
                                     const size_t *argvlen);
redisReply *kiln_redis_vcommand (redisContext *ctx, const char *format, va_list args);

//  Pipelining: appends the command to the context's output buffer (an
//  EVAL as EVALSHA) without sending it; redisGetReply sends what is
//  buffered and reads the replies in order. REDIS_OK or REDIS_ERR. A
//  NOSCRIPT reply is the caller's to handle: the script did not run, and
//  kiln_redis_command_argv runs it again, loading it.
int kiln_redis_append_argv (redisContext *ctx, int argc, const char **argv,
                            const size_t *argvlen);
redisReply *kiln_redis_command (redisContext *ctx, const char *format, ...);

//  For selftests: starts redis-server on a free loopback port with no
//  persistence, in a new temp dir, and waits until it answers PING.
//  extra_args (may be NULL) is a NULL-terminated list of more server
//  arguments. Returns the pid and fills *port and dir, or -1 (reason on
//  stderr). _stop kills it and removes the dir.
pid_t kiln_redis_test_server_start (int *port, char dir [64], const char *const *extra_args);
void kiln_redis_test_server_stop (pid_t pid, const char *dir);

void kiln_redis_test (bool verbose);

#endif
