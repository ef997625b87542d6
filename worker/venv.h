/*  =========================================================================
    venv — a Python app's requirements, installed once per worker into a
    cached virtual environment

    The first runner of an app with `requirements` builds the environment
    (`python3 -m venv`, then pip); every later runner, of that app or of any
    other with the same requirements, reuses it. Environments live in
    {dir}/{hash}/, where hash is the SHA-256 of what decides their contents:
    the Python (implementation, version, executable), the operator's extra
    pip arguments and the requirements. See "Requirements" in
    docs/PROCESS_APPS.md.
    =========================================================================
*/
#ifndef KILN_VENV_H_INCLUDED
#define KILN_VENV_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  Where the environments live; the worker sets it for its runners to
//  {state_dir}/worker/venvs. Without it: $XDG_CACHE_HOME/kiln/venvs,
//  ~/.cache/kiln/venvs, or /tmp/kiln-venvs.
#define KILN_ENV_VENV_DIR   "KILN_VENV_DIR"
//  Extra pip install arguments, split at spaces (no quoting), e.g.
//  "--no-index --find-links /srv/wheels". Part of the hash.
#define KILN_ENV_PIP_ARGS   "KILN_PIP_ARGS"
//  Written into an environment last: one without it is half-built.
#define KILN_VENV_READY     ".kiln-ready"

//  Makes sure the environment for requirements exists (building it under
//  a lock when it does not; pip's output goes to our stderr) and returns
//  the path of its python (caller frees). Gives up at deadline_ms
//  (kiln_mono_ms clock). NULL with *error (caller frees) on failure: for
//  a failed install, pip's exit status and its last lines.
char *kiln_venv_ensure (char **requirements, size_t count, int64_t deadline_ms, char **error);

//  The environment's name: the SHA-256 (hex) of identity (what python3
//  says it is), pip_args and the requirements, sorted bytewise (as given
//  when one is a pip option: starts with '-'); 0, or -1 when out of
//  memory. Exposed for the selftest.
int kiln_venv_hash (const char *identity, const char *pip_args, char **requirements, size_t count,
                    char out [65]);

void kiln_venv_test (bool verbose);

#endif
