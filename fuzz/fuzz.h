/*  =========================================================================
    fuzz — what every fuzz target shares

    Each fuzz_*.c defines LLVMFuzzerTestOneInput for one parser of outside
    input. Built with -DKILN_FUZZ=ON (clang) it is a libFuzzer target;
    built normally it is linked with replay.c, a main() that feeds it the
    files of a corpus directory, which ctest runs over fuzz/corpus/.

    A target checks more than "no crash": the invariants its parser
    promises (a decoded message encodes, a parsed manifest round-trips).
    A broken invariant is a FUZZ_CHECK, which prints and aborts, so the
    fuzzer keeps the input as a crash.
    =========================================================================
*/
#ifndef KILN_FUZZ_H_INCLUDED
#define KILN_FUZZ_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond) \
    do { \
        if (!(cond)) { \
            fprintf (stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
            abort (); \
        } \
    } while (0)

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);
//  Optional, once before the first input (a target defines it if it
//  needs setting up, e.g. a scratch directory).
int LLVMFuzzerInitialize (int *argc, char ***argv);

//  A NUL-terminated copy of the input (caller frees), for the parsers
//  that take C strings. NULL when out of memory.
static inline char *
fuzz_string (const uint8_t *data, size_t size)
{
    char *text = (char *) malloc (size + 1);
    if (text) {
        for (size_t i = 0; i < size; i++)
            text [i] = (char) data [i];
        text [size] = 0;
    }
    return text;
}

//  A bundle's file name as the unpacker may write it: one path segment,
//  not . or .., no control character. The targets' own rule, kept apart
//  from the code they check.
static inline bool
fuzz_plain_name (const char *name)
{
    if (!*name || strcmp (name, ".") == 0 || strcmp (name, "..") == 0 || strchr (name, '/'))
        return false;
    for (const char *p = name; *p; p++)
        if ((unsigned char) *p < ' ')
            return false;
    return true;
}

#endif
