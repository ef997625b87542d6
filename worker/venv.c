/*  =========================================================================
    venv — a Python app's requirements, installed once per worker into a
    cached virtual environment

    {dir}/{hash}/          the environment, usable once it holds .kiln-ready
    {dir}/{hash}.lock      flock'd by the one runner that builds it

    A runner that finds .kiln-ready uses the environment at once. Otherwise
    it takes the lock (a second runner starting at the same time waits
    there, then finds the environment ready), removes whatever a builder
    that died left, and builds in place: `python3 -m venv`, then
    `{env}/bin/python -m pip install …`, then .kiln-ready. A failed build
    is removed; the next runner tries again.

    Built in place rather than in a temp dir renamed at the end: a virtual
    environment is not relocatable (pip writes its absolute path into the
    scripts it installs and into bin/activate), so a renamed one would
    carry broken console scripts. The ready file does what the rename
    would: nothing half-built is ever used.

    The children run in process groups of their own, so that a timeout
    kills pip's build subprocesses too, and die with us (PR_SET_PDEATHSIG).
    =========================================================================
*/
#include "venv.h"
#include "kiln_log.h"
#include "kiln_util.h"

#include <assert.h>
#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

//  What identifies the Python an environment is made from: a venv links
//  to its interpreter, so another version or another install of the same
//  version needs an environment of its own.
#define PYTHON_IDENTITY_CODE \
    "import sys; print(sys.implementation.name, sys.version.replace(chr(10), ' '), sys.executable)"
//  How much of a child's output we keep (the rest only went to stderr).
#define OUTPUT_KEEP_BYTES       65536
//  In an error: pip's last lines, at most so many and so long.
#define ERROR_LINES_MAX         4
#define ERROR_BYTES_MAX         1024
#define LOCK_POLL_INTERVAL_MS   100
#define READ_POLL_INTERVAL_MS   200

//  -------------------------------------------------------------------------
//  Children

//  A child's output as it comes: echoed to our stderr when asked, its
//  tail kept.
typedef struct {
    char *data;
    size_t size;
    bool echo;
} s_output_t;

static void
s_output_add (s_output_t *self, const char *bytes, size_t size)
{
    if (self->echo) {
        size_t done = 0;
        while (done < size) {
            ssize_t n = write (STDERR_FILENO, bytes + done, size - done);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            done += (size_t) n;
        }
    }
    if (size > OUTPUT_KEEP_BYTES) {
        bytes += size - OUTPUT_KEEP_BYTES;
        size = OUTPUT_KEEP_BYTES;
    }
    if (self->size + size > OUTPUT_KEEP_BYTES) {
        size_t drop = self->size + size - OUTPUT_KEEP_BYTES;
        memmove (self->data, self->data + drop, self->size - drop);
        self->size -= drop;
    }
    memcpy (self->data + self->size, bytes, size);
    self->size += size;
    self->data [self->size] = '\0';
}

//  Runs argv (PATH searched), stdin from /dev/null, stdout into *output
//  (its tail; caller frees), stderr too when merge is set, else ours.
//  Kills it (its whole group) at deadline_ms. Returns its wait status,
//  or -1 with *error (it could not start, or ran out of time: what it
//  was doing, for that error).
static int
s_run_child (char *const argv [], const char *what, bool merge, bool echo, int64_t deadline_ms,
             char **output, char **error)
{
    s_output_t out = { malloc (OUTPUT_KEEP_BYTES + 1), 0, echo };
    int pipe_fds [2] = { -1, -1 };
    int null_fd = open ("/dev/null", O_RDONLY | O_CLOEXEC);
    if (!out.data || null_fd < 0 || pipe2 (pipe_fds, O_CLOEXEC) != 0) {
        *error = zsys_sprintf ("cannot run %s: %s", argv [0], out.data? strerror (errno): "out of memory");
        free (out.data);
        if (null_fd >= 0)
            close (null_fd);
        return -1;
    }
    out.data [0] = '\0';
    pid_t parent = getpid ();
    pid_t pid = fork ();
    if (pid == 0) {
        //  Only async-signal-safe calls until exec: the runner may have
        //  threads.
        prctl (PR_SET_PDEATHSIG, SIGKILL);
        if (getppid () != parent)
            _exit (127);
        setpgid (0, 0);
        dup2 (null_fd, STDIN_FILENO);
        dup2 (pipe_fds [1], STDOUT_FILENO);
        if (merge)
            dup2 (pipe_fds [1], STDERR_FILENO);
        signal (SIGPIPE, SIG_DFL);
        signal (SIGTERM, SIG_DFL);
        signal (SIGINT, SIG_DFL);
        execvp (argv [0], argv);
        static const char failed [] = "kiln-runner: cannot run the command\n";
        if (write (STDERR_FILENO, failed, sizeof failed - 1) < 0)
            _exit (127);
        _exit (127);
    }
    int saved = errno;
    close (null_fd);
    close (pipe_fds [1]);
    if (pid < 0) {
        *error = zsys_sprintf ("cannot run %s: %s", argv [0], strerror (saved));
        close (pipe_fds [0]);
        free (out.data);
        return -1;
    }
    //  Here too, so that the group exists before we may kill it.
    setpgid (pid, pid);
    //  Read until the end of its output, or the deadline.
    bool timed_out = false;
    while (true) {
        int64_t left = deadline_ms - kiln_mono_ms ();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        struct pollfd item = { pipe_fds [0], POLLIN, 0 };
        int rc = poll (&item, 1, (int) (left < READ_POLL_INTERVAL_MS? left: READ_POLL_INTERVAL_MS));
        if (rc < 0 && errno != EINTR)
            break;
        if (rc <= 0)
            continue;
        char buffer [4096];
        ssize_t n = read (pipe_fds [0], buffer, sizeof buffer);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            break;
        s_output_add (&out, buffer, (size_t) n);
    }
    close (pipe_fds [0]);
    if (timed_out)
        kill (-pid, SIGKILL);
    //  Its output ended: it exits now (a grandchild may still hold the
    //  pipe; the deadline covers that too).
    int status = 0;
    while (true) {
        pid_t done = waitpid (pid, &status, WNOHANG);
        if (done == pid || (done < 0 && errno != EINTR))
            break;
        if (!timed_out && kiln_mono_ms () >= deadline_ms) {
            timed_out = true;
            kill (-pid, SIGKILL);
        }
        zclock_sleep (20);
    }
    if (timed_out) {
        *error = zsys_sprintf ("%s took longer than the app's startup_timeout", what);
        free (out.data);
        return -1;
    }
    *output = out.data;
    return status;
}

//  "exit status 1" / "killed by signal 9", for errors.
static char *
s_status_text (int status)
{
    if (WIFSIGNALED (status))
        return zsys_sprintf ("killed by signal %d", WTERMSIG (status));
    return zsys_sprintf ("exit status %d", WIFEXITED (status)? WEXITSTATUS (status): -1);
}

//  The few lines of pip's output that say what went wrong, on one line
//  (it ends up in `kiln apps show` and in request errors): the last
//  ERROR_LINES_MAX that are not blank, notes, hints, warnings, where it
//  looked, or pip's frames around a subprocess's output. Caller frees.
static char *
s_pip_excerpt (const char *output)
{
    const char *lines [ERROR_LINES_MAX];
    size_t sizes [ERROR_LINES_MAX];
    size_t found = 0;
    const char *end = output + strlen (output);
    while (end > output && found < ERROR_LINES_MAX) {
        const char *line_end = end;
        const char *start = line_end;
        while (start > output && start [-1] != '\n')
            start--;
        end = start > output? start - 1: output;
        //  Trim: pip indents subprocess output and decorates its frames.
        while (start < line_end && strchr (" \t\r", *start))
            start++;
        while (line_end > start && strchr (" \t\r", line_end [-1]))
            line_end--;
        size_t size = (size_t) (line_end - start);
        static const char *noise [] = {
            "note:", "hint:", "WARNING:", "Looking in ", "[end of output]", "╰─>", "│ exit code:",
            "error: subprocess-exited-with-error", NULL
        };
        bool skip = size == 0;
        for (const char **prefix = noise; *prefix && !skip; prefix++)
            skip = size >= strlen (*prefix) && strncmp (start, *prefix, strlen (*prefix)) == 0;
        //  pip says its last words twice: inside the frame and after it.
        for (size_t i = 0; i < found && !skip; i++)
            skip = sizes [i] == size && memcmp (lines [i], start, size) == 0;
        if (skip)
            continue;
        lines [found] = start;
        sizes [found] = size;
        found++;
    }
    char *text = malloc (ERROR_BYTES_MAX + 1);
    if (!text)
        return NULL;
    size_t size = 0;
    for (size_t i = found; i-- > 0 && size + 2 < ERROR_BYTES_MAX; ) {
        if (size > 0) {
            memcpy (text + size, "; ", 2);
            size += 2;
        }
        size_t take = sizes [i];
        if (size + take > ERROR_BYTES_MAX) {
            //  Cut between characters: the error travels as UTF-8.
            take = ERROR_BYTES_MAX - size;
            while (take > 0 && ((uint8_t) lines [i][take] & 0xC0) == 0x80)
                take--;
        }
        memcpy (text + size, lines [i], take);
        size += take;
    }
    text [size] = '\0';
    return text;
}

//  -------------------------------------------------------------------------
//  The cache

static int
s_remove_entry (const char *path, const struct stat *info, int flag, struct FTW *ftw)
{
    (void) info;
    (void) flag;
    (void) ftw;
    remove (path);
    return 0;
}

//  rm -rf, for what a failed or dead builder left.
static void
s_remove_tree (const char *path)
{
    struct stat info;
    if (lstat (path, &info) == 0)
        nftw (path, s_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

//  Where the environments live (caller frees).
static char *
s_cache_dir (void)
{
    const char *dir = getenv (KILN_ENV_VENV_DIR);
    if (dir && *dir)
        return strdup (dir);
    const char *cache = getenv ("XDG_CACHE_HOME");
    if (cache && *cache)
        return zsys_sprintf ("%s/kiln/venvs", cache);
    const char *home = getenv ("HOME");
    if (home && *home)
        return zsys_sprintf ("%s/.cache/kiln/venvs", home);
    return strdup ("/tmp/kiln-venvs");
}

static int
s_compare_strings (const void *a, const void *b)
{
    return strcmp (*(char *const *) a, *(char *const *) b);
}

int
kiln_venv_hash (const char *identity, const char *pip_args, char **requirements, size_t count,
                char out [65])
{
    //  Sorted: the same set in another order is the same environment.
    //  Unless it holds pip options ("--extra-index-url", URL): pip reads
    //  those in order.
    char **sorted = calloc (count + 1, sizeof (char *));
    if (!sorted)
        return -1;
    memcpy (sorted, requirements, count * sizeof (char *));
    bool options = false;
    for (size_t i = 0; i < count; i++)
        options = options || requirements [i][0] == '-';
    if (!options)
        qsort (sorted, count, sizeof (char *), s_compare_strings);
    char *text = zsys_sprintf ("kiln-venv 1\npython %s\npip-args %s\n", identity, pip_args);
    for (size_t i = 0; text && i < count; i++) {
        char *longer = zsys_sprintf ("%srequirement %s\n", text, sorted [i]);
        free (text);
        text = longer;
    }
    free (sorted);
    if (!text)
        return -1;
    kiln_sha256_hex (text, strlen (text), out);
    free (text);
    return 0;
}

//  Waits for the lock until deadline_ms. 0, or -1.
static int
s_lock (int fd, int64_t deadline_ms)
{
    while (flock (fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        if (kiln_mono_ms () >= deadline_ms) {
            errno = ETIMEDOUT;
            return -1;
        }
        zclock_sleep (LOCK_POLL_INTERVAL_MS);
    }
    return 0;
}

//  Builds {dir} with the requirements; we hold its lock. 0, or -1 with
//  *error.
static int
s_build (const char *dir, const char *description, char **requirements, size_t count,
         const char *pip_args, int64_t deadline_ms, char **error)
{
    s_remove_tree (dir);
    //  The venv module makes the directory and puts pip (and, up to
    //  Python 3.11, setuptools) in it.
    char *venv_argv [] = { (char *) "python3", (char *) "-m", (char *) "venv", (char *) dir, NULL };
    char *output = NULL;
    int status = s_run_child (venv_argv, "making the virtual environment (python3 -m venv)",
                              true, true, deadline_ms, &output, error);
    if (status == -1)
        return -1;
    if (status != 0) {
        char *how = s_status_text (status);
        char *excerpt = s_pip_excerpt (output);
        *error = zsys_sprintf ("cannot make a virtual environment (python3 -m venv, %s): %s",
                               how? how: "?", excerpt && *excerpt? excerpt: "no output");
        free (how);
        free (excerpt);
        free (output);
        return -1;
    }
    free (output);
    output = NULL;

    //  python -m pip install --disable-pip-version-check --no-input
    //  [KILN_PIP_ARGS…] requirement…, each requirement as given (a spec,
    //  a path, a URL): pip parses it, we never pass it to a shell.
    char *python = zsys_sprintf ("%s/bin/python", dir);
    char *args = strdup (pip_args);
    char **argv = calloc (count + strlen (pip_args) + 8, sizeof (char *));
    if (!python || !args || !argv) {
        *error = strdup ("out of memory");
        free (python);
        free (args);
        free (argv);
        return -1;
    }
    size_t argc = 0;
    argv [argc++] = python;
    argv [argc++] = (char *) "-m";
    argv [argc++] = (char *) "pip";
    argv [argc++] = (char *) "install";
    argv [argc++] = (char *) "--disable-pip-version-check";
    argv [argc++] = (char *) "--no-input";
    char *saveptr = NULL;
    for (char *arg = strtok_r (args, " \t", &saveptr); arg; arg = strtok_r (NULL, " \t", &saveptr))
        argv [argc++] = arg;
    for (size_t i = 0; i < count; i++)
        argv [argc++] = requirements [i];
    argv [argc] = NULL;
    status = s_run_child (argv, "installing the requirements (pip install)",
                          true, true, deadline_ms, &output, error);
    free (argv);
    free (args);
    free (python);
    if (status == -1)
        return -1;
    if (status != 0) {
        char *how = s_status_text (status);
        char *excerpt = s_pip_excerpt (output);
        *error = zsys_sprintf ("pip could not install the requirements (%s): %s",
                               how? how: "?", excerpt && *excerpt? excerpt: "no output");
        free (how);
        free (excerpt);
        free (output);
        return -1;
    }
    free (output);
    char *ready = zsys_sprintf ("%s/" KILN_VENV_READY, dir);
    if (!ready || kiln_write_file (ready, description, strlen (description)) != 0) {
        *error = zsys_sprintf ("cannot write %s/" KILN_VENV_READY ": %s", dir, strerror (errno));
        free (ready);
        return -1;
    }
    free (ready);
    return 0;
}

char *
kiln_venv_ensure (char **requirements, size_t count, int64_t deadline_ms, char **error)
{
    char *cache = s_cache_dir ();
    if (!cache) {
        *error = strdup ("out of memory");
        return NULL;
    }
    if (kiln_mkdir_p (cache, 0755) != 0) {
        *error = zsys_sprintf ("cannot create %s: %s", cache, strerror (errno));
        free (cache);
        return NULL;
    }
    //  Which Python: the one that serves apps without requirements too.
    char *identity_argv [] = { (char *) "python3", (char *) "-c", (char *) PYTHON_IDENTITY_CODE, NULL };
    char *identity = NULL;
    int status = s_run_child (identity_argv, "asking python3 its version", false, false,
                              deadline_ms, &identity, error);
    if (status != 0) {
        if (status != -1)
            *error = strdup ("cannot run python3: it did not say its version");
        free (identity);
        free (cache);
        return NULL;
    }
    size_t len = strlen (identity);
    while (len > 0 && (identity [len - 1] == '\n' || identity [len - 1] == '\r'))
        identity [--len] = '\0';
    const char *pip_args = getenv (KILN_ENV_PIP_ARGS);
    pip_args = pip_args? pip_args: "";
    char hash [65];
    if (kiln_venv_hash (identity, pip_args, requirements, count, hash) != 0) {
        *error = strdup ("out of memory");
        free (identity);
        free (cache);
        return NULL;
    }
    char *dir = zsys_sprintf ("%s/%s", cache, hash);
    char *ready = zsys_sprintf ("%s/%s/" KILN_VENV_READY, cache, hash);
    char *lock_path = zsys_sprintf ("%s/%s.lock", cache, hash);
    char *python = zsys_sprintf ("%s/%s/bin/python", cache, hash);
    free (cache);
    if (!dir || !ready || !lock_path || !python) {
        *error = strdup ("out of memory");
        goto failed;
    }
    if (access (ready, F_OK) == 0) {
        kiln_log_info ("requirements: using the environment %s", dir);
        goto done;
    }
    int lock = open (lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock < 0) {
        *error = zsys_sprintf ("cannot open %s: %s", lock_path, strerror (errno));
        goto failed;
    }
    int64_t waited_ms = kiln_mono_ms ();
    if (s_lock (lock, deadline_ms) != 0) {
        *error = errno == ETIMEDOUT
               ? zsys_sprintf ("the environment %s was still being built by another runner when "
                               "the app's startup_timeout ran out", dir)
               : zsys_sprintf ("cannot lock %s: %s", lock_path, strerror (errno));
        close (lock);
        goto failed;
    }
    waited_ms = kiln_mono_ms () - waited_ms;
    if (access (ready, F_OK) == 0) {
        //  Another runner built it while we waited.
        kiln_log_info ("requirements: using the environment %s (waited %" PRId64 " ms for its build)",
                       dir, waited_ms);
        close (lock);
        goto done;
    }
    char *description = zsys_sprintf ("python %s\npip-args %s\n", identity, pip_args);
    for (size_t i = 0; description && i < count; i++) {
        char *longer = zsys_sprintf ("%srequirement %s\n", description, requirements [i]);
        free (description);
        description = longer;
    }
    if (!description) {
        *error = strdup ("out of memory");
        close (lock);
        goto failed;
    }
    kiln_log_info ("requirements: building the environment %s (%zu requirement%s)",
                   dir, count, count == 1? "": "s");
    int64_t started_ms = kiln_mono_ms ();
    int rc = s_build (dir, description, requirements, count, pip_args, deadline_ms, error);
    free (description);
    if (rc != 0)
        s_remove_tree (dir);        //  so that nothing half-built stays
    close (lock);                   //  and the next runner tries again
    if (rc != 0)
        goto failed;
    kiln_log_info ("requirements: built %s in %" PRId64 " ms", dir, kiln_mono_ms () - started_ms);
done:
    free (identity);
    free (dir);
    free (ready);
    free (lock_path);
    return python;
failed:
    free (identity);
    free (dir);
    free (ready);
    free (lock_path);
    free (python);
    return NULL;
}

//  -------------------------------------------------------------------------
//  Selftest

void
kiln_venv_test (bool verbose)
{
    if (verbose)
        printf (" * venv: ");
    //  The hash ignores order, and sees every other difference.
    char *ab [] = { (char *) "a==1", (char *) "b" };
    char *ba [] = { (char *) "b", (char *) "a==1" };
    char *a [] = { (char *) "a==1" };
    char one [65], two [65], three [65], four [65], five [65];
    assert (kiln_venv_hash ("cpython 3.11.2 /usr/bin/python3", "", ab, 2, one) == 0);
    assert (kiln_venv_hash ("cpython 3.11.2 /usr/bin/python3", "", ba, 2, two) == 0);
    assert (strcmp (one, two) == 0 && strlen (one) == 64);
    assert (kiln_venv_hash ("cpython 3.11.2 /usr/bin/python3", "", a, 1, three) == 0);
    assert (strcmp (one, three) != 0);
    assert (kiln_venv_hash ("cpython 3.12.1 /usr/bin/python3", "", ab, 2, four) == 0);
    assert (strcmp (one, four) != 0);
    assert (kiln_venv_hash ("cpython 3.11.2 /usr/bin/python3", "--no-index", ab, 2, five) == 0);
    assert (strcmp (one, five) != 0);
    //  With pip options among them, order counts.
    char *xy [] = { (char *) "--extra-index-url", (char *) "https://x", (char *) "torch" };
    char *yx [] = { (char *) "torch", (char *) "--extra-index-url", (char *) "https://x" };
    assert (kiln_venv_hash ("cpython 3.11.2 /usr/bin/python3", "", xy, 3, one) == 0);
    assert (kiln_venv_hash ("cpython 3.11.2 /usr/bin/python3", "", yx, 3, two) == 0);
    assert (strcmp (one, two) != 0);
    assert (kiln_venv_hash ("cpython 3.11.2 /usr/bin/python3", "", ab, 2, one) == 0);
    //  What the tests recompute: SHA-256 of these exact lines.
    char expected [65];
    const char *text = "kiln-venv 1\npython cpython 3.11.2 /usr/bin/python3\npip-args \n"
                       "requirement a==1\nrequirement b\n";
    kiln_sha256_hex (text, strlen (text), expected);
    assert (strcmp (one, expected) == 0);

    //  pip's message, on one line, without its notes and frames.
    char *excerpt = s_pip_excerpt (
        "Processing /pkgs/bad\n"
        "  error: subprocess-exited-with-error\n"
        "  \n"
        "  × Getting requirements to build wheel did not run successfully.\n"
        "  │ exit code: 1\n"
        "  ╰─> [3 lines of output]\n"
        "      Traceback (most recent call last):\n"
        "      RuntimeError: broken on purpose\n"
        "      [end of output]\n"
        "  \n"
        "  note: This error originates from a subprocess, and is likely not a problem with pip.\n"
        "error: subprocess-exited-with-error\n"
        "\n"
        "× Getting requirements to build wheel did not run successfully.\n"
        "│ exit code: 1\n"
        "╰─> See above for output.\n"
        "\n"
        "note: This error originates from a subprocess, and is likely not a problem with pip.\n");
    assert (excerpt);
    assert (streq (excerpt, "Processing /pkgs/bad; Traceback (most recent call last):; "
                            "RuntimeError: broken on purpose; "
                            "× Getting requirements to build wheel did not run successfully."));
    free (excerpt);
    excerpt = s_pip_excerpt ("Looking in links: /opt/wheels\n"
                             "WARNING: Retrying\n"
                             "ERROR: Could not find a version that satisfies the requirement nope\n"
                             "ERROR: No matching distribution found for nope\n");
    assert (excerpt && streq (excerpt, "ERROR: Could not find a version that satisfies the requirement nope; "
                                       "ERROR: No matching distribution found for nope"));
    free (excerpt);
    excerpt = s_pip_excerpt ("");
    assert (excerpt && streq (excerpt, ""));
    free (excerpt);
    //  A long line is cut, never overrun.
    char *long_line = malloc (5000);
    assert (long_line);
    memset (long_line, 'x', 4999);
    long_line [4999] = '\0';
    excerpt = s_pip_excerpt (long_line);
    assert (excerpt && strlen (excerpt) == ERROR_BYTES_MAX);
    free (excerpt);
    //  ...between characters: "é" is two bytes.
    for (size_t i = 1; i + 1 < 4999; i += 2)
        memcpy (long_line + i, "\xc3\xa9", 2);
    excerpt = s_pip_excerpt (long_line);
    assert (excerpt && strlen (excerpt) == ERROR_BYTES_MAX - 1);
    free (excerpt);
    free (long_line);
    if (verbose)
        printf ("OK\n");
}
