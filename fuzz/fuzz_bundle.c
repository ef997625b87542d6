/*  =========================================================================
    fuzz_bundle — the bundle unpacker (worker/bundle.c): a ustar archive
    that a client uploaded, unpacked by the worker

    Input: the archive. It is unpacked into a fresh scratch directory,
    twice: as it is, and with every header checksum made right (so the
    fuzzer gets past the checksum to the names, types and sizes).

    Either the unpack fails with a reason and leaves nothing behind, or
    it makes the destination directory and nothing else: in it only
    regular files with plain names (no '/', not "." or "..", no control
    character), at most 256, and no temporary directory left beside it.
    =========================================================================
*/
#include "fuzz.h"
#include "bundle.h"

#include <dirent.h>
#include <ftw.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOCK 512

static char s_scratch [PATH_MAX];

static int
s_remove_one (const char *path, const struct stat *info, int flag, struct FTW *ftw)
{
    (void) info;
    (void) flag;
    (void) ftw;
    remove (path);
    return 0;
}

static void
s_remove_tree (const char *path)
{
    nftw (path, s_remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void
s_cleanup (void)
{
    if (s_scratch [0])
        s_remove_tree (s_scratch);
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
    (void) argc;
    (void) argv;
    //  In memory when we can: the unpacker writes files for every input
    const char *base = access ("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv ("TMPDIR");
    snprintf (s_scratch, sizeof s_scratch, "%s/kiln-fuzz-bundle-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp (s_scratch)) {
        perror ("fuzz_bundle: mkdtemp");
        exit (1);
    }
    atexit (s_cleanup);
    return 0;
}

static void
s_unpack (const uint8_t *data, size_t size)
{
    char dest [PATH_MAX + 8];
    snprintf (dest, sizeof dest, "%s/app", s_scratch);
    char *error = NULL;
    int rc = kiln_bundle_unpack (data, size, dest, &error);
    FUZZ_CHECK (rc == 0 || rc == -1);
    FUZZ_CHECK ((rc == 0) == (error == NULL));
    if (!kiln_bundle_is_tar (data, size))
        FUZZ_CHECK (rc == -1);

    //  The scratch directory holds dest (on success) and nothing else
    DIR *scratch = opendir (s_scratch);
    FUZZ_CHECK (scratch);
    struct dirent *entry;
    while ((entry = readdir (scratch))) {
        if (strcmp (entry->d_name, ".") == 0 || strcmp (entry->d_name, "..") == 0)
            continue;
        if (strcmp (entry->d_name, "app") != 0)
            fprintf (stderr, "left beside the bundle: %s\n", entry->d_name);
        FUZZ_CHECK (rc == 0 && strcmp (entry->d_name, "app") == 0);
    }
    closedir (scratch);
    if (rc == 0) {
        struct stat info;
        FUZZ_CHECK (lstat (dest, &info) == 0 && S_ISDIR (info.st_mode));
        DIR *bundle = opendir (dest);
        FUZZ_CHECK (bundle);
        size_t files = 0;
        while ((entry = readdir (bundle))) {
            if (strcmp (entry->d_name, ".") == 0 || strcmp (entry->d_name, "..") == 0)
                continue;
            FUZZ_CHECK (fuzz_plain_name (entry->d_name));
            char path [2 * PATH_MAX];
            snprintf (path, sizeof path, "%s/%s", dest, entry->d_name);
            FUZZ_CHECK (lstat (path, &info) == 0 && S_ISREG (info.st_mode));
            FUZZ_CHECK ((size_t) info.st_size <= size);
            files++;
        }
        closedir (bundle);
        FUZZ_CHECK (files <= 256);
    }
    free (error);
    s_remove_tree (dest);
}

//  Makes every header's checksum right, walking the archive as a tar
//  reader would. True if it changed anything.
static bool
s_fix_checksums (uint8_t *data, size_t size)
{
    bool changed = false;
    size_t offset = 0;
    while (offset + BLOCK <= size) {
        uint8_t *header = data + offset;
        bool zero = true;
        for (size_t i = 0; i < BLOCK && zero; i++)
            zero = header [i] == 0;
        if (zero)
            break;
        unsigned sum = 0;
        for (size_t i = 0; i < BLOCK; i++)
            sum += (i >= 148 && i < 156) ? ' ' : header [i];
        char field [8];
        snprintf (field, sizeof field, "%06o", sum & 0777777);
        if (memcmp (header + 148, field, 7) != 0 || header [155] != ' ') {
            memcpy (header + 148, field, 7);
            header [155] = ' ';
            changed = true;
        }
        //  The entry's size: octal, else stop walking
        unsigned long long file_size = 0;
        size_t i = 124;
        while (i < 136 && header [i] == ' ')
            i++;
        if (i == 136 || header [i] < '0' || header [i] > '7')
            break;
        for (; i < 136 && header [i] >= '0' && header [i] <= '7'; i++)
            file_size = file_size * 8 + (header [i] - '0');
        if (file_size > size)
            break;
        offset += BLOCK + (size_t) (file_size + BLOCK - 1) / BLOCK * BLOCK;
    }
    return changed;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    s_unpack (data, size);
    uint8_t *fixed = malloc (size ? size : 1);
    if (!fixed)
        return 0;
    memcpy (fixed, data, size);
    if (s_fix_checksums (fixed, size))
        s_unpack (fixed, size);
    free (fixed);
    return 0;
}
