/*  =========================================================================
    kiln_log — process logging

    One line per event on stderr, built in a buffer and written with one
    write() so that lines from threads and from the processes that share
    a terminal (kiln up) never interleave mid-line.
    =========================================================================
*/
#include "kiln_log.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

//  A line longer than this is cut: a log line is for people, not a
//  transport for data.
#define LOG_LINE_MAX_BYTES 4096

static char s_process [64] = "";
static volatile int s_level = -1;   //  -1 until init or the first line

static int
s_level_from_name (const char *name)
{
    if (!name)
        return KILN_LEVEL_INFO;
    if (strcasecmp (name, "debug") == 0)
        return KILN_LEVEL_DEBUG;
    if (strcasecmp (name, "info") == 0)
        return KILN_LEVEL_INFO;
    if (strcasecmp (name, "warn") == 0 || strcasecmp (name, "warning") == 0)
        return KILN_LEVEL_WARN;
    if (strcasecmp (name, "error") == 0)
        return KILN_LEVEL_ERROR;
    return KILN_LEVEL_INFO;
}

void
kiln_log_init (const char *process_name, const char *level)
{
    snprintf (s_process, sizeof s_process, "%s",
              process_name && *process_name ? process_name : "kiln");
    s_level = s_level_from_name (level);
}

void
kiln_log (kiln_level_t level, const char *format, ...)
{
    //  A process that never called init still logs sensibly: its own
    //  name and the level from the environment.
    if (s_level < 0) {
        if (!*s_process)
            snprintf (s_process, sizeof s_process, "%s", program_invocation_short_name);
        s_level = s_level_from_name (getenv ("KILN_LOG_LEVEL"));
    }
    if ((int) level < s_level)
        return;

    static const char *names [] = { "DEBUG", "INFO", "WARN", "ERROR" };
    const char *name = (unsigned) level < 4 ? names [level] : "INFO";

    int saved_errno = errno;        //  callers log then inspect errno
    struct timeval tv;
    gettimeofday (&tv, NULL);
    struct tm tm;
    gmtime_r (&tv.tv_sec, &tm);

    char line [LOG_LINE_MAX_BYTES];
    int len = snprintf (line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s ",
                        tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                        tm.tm_hour, tm.tm_min, tm.tm_sec, (int) (tv.tv_usec / 1000),
                        s_process, name);
    va_list args;
    va_start (args, format);
    int body = vsnprintf (line + len, sizeof line - len - 1, format, args);
    va_end (args);
    if (body < 0)
        body = 0;
    len += body;
    if (len > (int) sizeof line - 2)
        len = (int) sizeof line - 2;
    //  One event, one line: embedded newlines would forge extra lines.
    for (int i = 0; i < len; i++)
        if (line [i] == '\n' || line [i] == '\r')
            line [i] = ' ';
    line [len++] = '\n';

    const char *at = line;
    while (len > 0) {
        ssize_t rc = write (STDERR_FILENO, at, len);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            break;
        at += rc;
        len -= rc;
    }
    errno = saved_errno;
}

void
kiln_log_test (bool verbose)
{
    if (verbose)
        printf (" * kiln_log: ");
    fflush (stderr);

    //  Capture stderr in a temp file to check what reaches it.
    char path [] = "/tmp/kiln-log-test-XXXXXX";
    int fd = mkstemp (path);
    assert (fd >= 0);
    int saved = dup (STDERR_FILENO);
    assert (saved >= 0);
    dup2 (fd, STDERR_FILENO);

    kiln_log_init ("kiln-test", "warn");
    kiln_log_info ("hidden %d", 1);
    kiln_log_warn ("shown %d", 2);
    kiln_log_error ("two\nlines");
    kiln_log_init ("kiln-test", "debug");
    kiln_log_debug ("debug now");
    kiln_log_init ("kiln-test", "bogus");       //  falls back to info
    kiln_log_debug ("hidden again");
    kiln_log_info ("%s", "info line");
    //  An over-long line is cut, still ends with a newline.
    char *big = malloc (3 * LOG_LINE_MAX_BYTES);
    assert (big);
    memset (big, 'x', 3 * LOG_LINE_MAX_BYTES - 1);
    big [3 * LOG_LINE_MAX_BYTES - 1] = 0;
    kiln_log_info ("%s", big);
    free (big);

    dup2 (saved, STDERR_FILENO);
    close (saved);

    char text [4 * LOG_LINE_MAX_BYTES] = "";
    ssize_t n = pread (fd, text, sizeof text - 1, 0);
    assert (n > 0);
    text [n] = 0;
    close (fd);
    unlink (path);

    assert (!strstr (text, "hidden"));
    assert (strstr (text, " kiln-test WARN shown 2\n"));
    assert (strstr (text, " kiln-test ERROR two lines\n"));
    assert (strstr (text, " kiln-test DEBUG debug now\n"));
    assert (strstr (text, " kiln-test INFO info line\n"));
    //  Every line starts with an ISO-8601 UTC timestamp.
    int lines = 0;
    for (char *line = text; *line; lines++) {
        assert (strlen (line) > 24);
        assert (line [4] == '-' && line [10] == 'T' && line [19] == '.' && line [23] == 'Z');
        char *end = strchr (line, '\n');
        assert (end);
        assert (end - line < LOG_LINE_MAX_BYTES);
        line = end + 1;
    }
    assert (lines == 5);

    kiln_log_init ("kiln-test", "info");
    if (verbose)
        printf ("OK\n");
}
