/*  =========================================================================
    replay — a main() for a fuzz target built without libFuzzer

        fuzz_msg DIR|FILE...

    Feeds every regular file of each directory (in name order), and each
    file named, to LLVMFuzzerTestOneInput once. ctest runs each target so
    over its committed corpus (fuzz/corpus/<target>/), so the normal and
    the sanitizer builds replay every seed and every crash ever found.
    Exits 1 when it replayed nothing (a missing corpus is an error); a
    broken invariant aborts.
    =========================================================================
*/
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

//  Weak: a target without setup does not define it.
__attribute__ ((weak)) int LLVMFuzzerInitialize (int *argc, char ***argv);

static int
s_replay_file (const char *path)
{
    FILE *file = fopen (path, "rb");
    if (!file) {
        fprintf (stderr, "replay: cannot open %s\n", path);
        return -1;
    }
    size_t size = 0, capacity = 4096;
    uint8_t *data = malloc (capacity);
    size_t got;
    while (data && (got = fread (data + size, 1, capacity - size, file)) > 0) {
        size += got;
        if (size == capacity) {
            uint8_t *bigger = realloc (data, capacity * 2);
            if (!bigger) {
                free (data);
                data = NULL;
            }
            else {
                data = bigger;
                capacity *= 2;
            }
        }
    }
    fclose (file);
    if (!data) {
        fprintf (stderr, "replay: out of memory reading %s\n", path);
        return -1;
    }
    //  An exact-size copy, so ASan sees a read past the input's end
    uint8_t *input = malloc (size ? size : 1);
    if (!input) {
        free (data);
        return -1;
    }
    memcpy (input, data, size);
    free (data);
    LLVMFuzzerTestOneInput (input, size);
    free (input);
    return 0;
}

static int
s_by_name (const struct dirent **a, const struct dirent **b)
{
    return strcmp ((*a)->d_name, (*b)->d_name);
}

int
main (int argc, char *argv [])
{
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize (&argc, &argv);
    int replayed = 0, failed = 0;
    for (int arg = 1; arg < argc; arg++) {
        struct stat info;
        if (stat (argv [arg], &info) != 0) {
            fprintf (stderr, "replay: no such file or directory: %s\n", argv [arg]);
            failed++;
            continue;
        }
        if (!S_ISDIR (info.st_mode)) {
            if (s_replay_file (argv [arg]) == 0)
                replayed++;
            else
                failed++;
            continue;
        }
        struct dirent **names;
        int count = scandir (argv [arg], &names, NULL, s_by_name);
        for (int i = 0; i < count; i++) {
            char path [4096];
            snprintf (path, sizeof path, "%s/%s", argv [arg], names [i]->d_name);
            if (stat (path, &info) == 0 && S_ISREG (info.st_mode)) {
                if (s_replay_file (path) == 0)
                    replayed++;
                else
                    failed++;
            }
            free (names [i]);
        }
        if (count >= 0)
            free (names);
        else {
            fprintf (stderr, "replay: cannot read directory %s\n", argv [arg]);
            failed++;
        }
    }
    printf ("replay: %d inputs replayed, %d unreadable\n", replayed, failed);
    return replayed > 0 && failed == 0 ? 0 : 1;
}
