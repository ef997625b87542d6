/*  =========================================================================
    bundle — unpacks a process app's artifact (a flat ustar archive)

    The archive comes from Redis and was made by a client: every header is
    checked (checksum, size, name, type) before a byte is written, and the
    whole archive lands in a temporary directory that is renamed into
    place only when it is complete, so a runner never sees half a bundle.
    =========================================================================
*/
#include "bundle.h"
#include "kiln_util.h"

#include <assert.h>

#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TAR_BLOCK_BYTES 512
//  A flat bundle of a few files; more than this is not something we made.
#define MAX_BUNDLE_FILES 256

bool
kiln_bundle_is_tar (const uint8_t *data, size_t size)
{
    return data && size >= TAR_BLOCK_BYTES && memcmp (data + 257, "ustar", 5) == 0;
}

//  Reads an octal field (NUL or space ended). -1 when it is not octal.
static int64_t
s_octal (const uint8_t *field, size_t size)
{
    int64_t value = 0;
    size_t i = 0;
    while (i < size && field [i] == ' ')
        i++;
    size_t digits = 0;
    for (; i < size && field [i] >= '0' && field [i] <= '7'; i++, digits++) {
        if (value > (INT64_MAX >> 3))
            return -1;
        value = value * 8 + (field [i] - '0');
    }
    for (; i < size; i++)
        if (field [i] != ' ' && field [i] != 0)
            return -1;
    return digits? value: -1;
}

static bool
s_zero_block (const uint8_t *block)
{
    for (size_t i = 0; i < TAR_BLOCK_BYTES; i++)
        if (block [i])
            return false;
    return true;
}

//  A name we will create in the bundle's directory: no '/', no "." or
//  "..", no control characters.
static bool
s_name_valid (const char *name)
{
    if (!*name || streq (name, ".") || streq (name, "..") || strchr (name, '/'))
        return false;
    for (const char *p = name; *p; p++)
        if ((unsigned char) *p < ' ')
            return false;
    return true;
}

static int
s_remove_entry (const char *path, const struct stat *info, int flag, struct FTW *walk)
{
    (void) info;
    (void) flag;
    (void) walk;
    remove (path);
    return 0;               //  go on: remove what can be removed
}

//  Removes dir and all it holds. Not zdir_remove: zdir skips names that
//  start with '.', which a bundle may hold, and a temporary directory
//  left behind would then block every later unpack by this process.
static void
s_remove_tree (const char *dir)
{
    nftw (dir, s_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

//  Unpacks into dir, which exists and is empty. 0 or -1 with *error.
static int
s_extract (const uint8_t *data, size_t size, const char *dir, char **error)
{
    size_t offset = 0;
    size_t files = 0;
    while (true) {
        if (offset + TAR_BLOCK_BYTES > size) {
            *error = strdup ("the bundle ends inside a header");
            return -1;
        }
        const uint8_t *header = data + offset;
        if (s_zero_block (header))
            return 0;               //  end of archive
        int64_t sum = 0;
        for (size_t i = 0; i < TAR_BLOCK_BYTES; i++)
            sum += (i >= 148 && i < 156)? ' ': header [i];
        if (s_octal (header + 148, 8) != sum) {
            *error = strdup ("the bundle has a header with a bad checksum");
            return -1;
        }
        char name [260];
        char prefix [156], base [101];
        memcpy (prefix, header + 345, 155);
        prefix [155] = 0;
        memcpy (base, header + 0, 100);
        base [100] = 0;
        if (*prefix)
            snprintf (name, sizeof name, "%s/%s", prefix, base);
        else
            snprintf (name, sizeof name, "%s", base);
        int64_t file_size = s_octal (header + 124, 12);
        char type = (char) header [156];
        if (file_size < 0 || (uint64_t) file_size > size - offset - TAR_BLOCK_BYTES) {
            *error = zsys_sprintf ("the bundle's entry '%.100s' has a bad size", name);
            return -1;
        }
        if (type != '0' && type != 0) {
            *error = zsys_sprintf ("the bundle's entry '%.100s' is not a regular file", name);
            return -1;
        }
        if (!s_name_valid (name)) {
            *error = zsys_sprintf ("the bundle's entry '%.100s' has a name we refuse "
                                   "(a path, '.', '..' or control characters)", name);
            return -1;
        }
        if (++files > MAX_BUNDLE_FILES) {
            *error = strdup ("the bundle has too many files");
            return -1;
        }
        char *path = zsys_sprintf ("%s/%s", dir, name);
        //  O_EXCL: an entry listed twice is refused, not silently replaced.
        int fd = path? open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644): -1;
        if (fd < 0) {
            *error = zsys_sprintf ("cannot write %s: %s", path? path: name, strerror (errno));
            free (path);
            return -1;
        }
        const uint8_t *bytes = header + TAR_BLOCK_BYTES;
        size_t left = (size_t) file_size;
        while (left > 0) {
            ssize_t written = write (fd, bytes, left);
            if (written < 0 && errno == EINTR)
                continue;
            if (written <= 0) {
                *error = zsys_sprintf ("cannot write %s: %s", path, strerror (errno));
                close (fd);
                free (path);
                return -1;
            }
            bytes += written;
            left -= (size_t) written;
        }
        close (fd);
        free (path);
        size_t blocks = ((size_t) file_size + TAR_BLOCK_BYTES - 1) / TAR_BLOCK_BYTES;
        offset += TAR_BLOCK_BYTES + blocks * TAR_BLOCK_BYTES;
    }
}

int
kiln_bundle_unpack (const uint8_t *data, size_t size, const char *dest, char **error)
{
    *error = NULL;
    struct stat info;
    if (stat (dest, &info) == 0 && S_ISDIR (info.st_mode))
        return 0;
    if (!kiln_bundle_is_tar (data, size)) {
        *error = strdup ("the artifact is not a bundle (no ustar header)");
        return -1;
    }
    char *temp = zsys_sprintf ("%s.tmp-%d", dest, (int) getpid ());
    if (!temp) {
        *error = strdup ("out of memory");
        return -1;
    }
    s_remove_tree (temp);           //  left by an earlier process of that pid
    if (mkdir (temp, 0755) != 0) {
        *error = zsys_sprintf ("cannot make %s: %s", temp, strerror (errno));
        free (temp);
        return -1;
    }
    int rc = s_extract (data, size, temp, error);
    if (rc == 0 && rename (temp, dest) != 0) {
        //  Another process got there first: theirs is as good as ours.
        if (!(stat (dest, &info) == 0 && S_ISDIR (info.st_mode))) {
            *error = zsys_sprintf ("cannot rename %s to %s: %s", temp, dest, strerror (errno));
            rc = -1;
        }
    }
    if (rc != 0 || access (temp, F_OK) == 0)
        s_remove_tree (temp);
    free (temp);
    return rc;
}

//  -------------------------------------------------------------------------
//  A bundle's kiln.json (bundle.h)

int
kiln_bundle_meta_parse (const char *text, size_t size, kiln_bundle_meta_t *meta,
                        char **error)
{
    memset (meta, 0, sizeof *meta);
    *error = NULL;
    json_error_t json_error;
    json_t *root = json_loadb (text, size, JSON_REJECT_DUPLICATES, &json_error);
    const char *kind = json_string_value (json_object_get (root, "kind"));
    const char *entry = json_string_value (json_object_get (root, "entry"));
    const char *name = json_string_value (json_object_get (root, "class"));
    json_t *manifest = json_object_get (root, "manifest");
    int rc = -1;
    if (!root)
        *error = zsys_sprintf ("the bundle's " KILN_BUNDLE_DESCRIPTION " is not valid JSON: %s",
                               json_error.text);
    else
    if (!kind || !streq (kind, KILN_MANIFEST_KIND_PYTHON))
        *error = zsys_sprintf ("the bundle's kind is '%.100s'; this runner runs 'python' bundles",
                               kind? kind: "(none)");
    else
    //  The runner runs dir/entry: a name the unpacker would have made
    if (!entry || !s_name_valid (entry))
        *error = strdup ("the bundle's entry must be the name of a file in it");
    else
    if (!name || !*name || !json_is_object (manifest))
        *error = strdup ("the bundle names no class or no manifest");
    else {
        char *manifest_text = json_dumps (manifest, JSON_COMPACT);
        char *why = NULL;
        meta->manifest = manifest_text
                       ? kiln_manifest_from_json (manifest_text, strlen (manifest_text), &why)
                       : NULL;
        meta->entry = strdup (entry);
        meta->class_name = strdup (name);
        if (!meta->manifest)
            *error = zsys_sprintf ("invalid app: %s", why? why: "out of memory");
        else
        if (!meta->entry || !meta->class_name)
            *error = strdup ("out of memory");
        else
            rc = 0;
        free (manifest_text);
        free (why);
    }
    json_decref (root);
    if (rc)
        kiln_bundle_meta_free (meta);
    return rc;
}

void
kiln_bundle_meta_free (kiln_bundle_meta_t *meta)
{
    free (meta->entry);
    free (meta->class_name);
    kiln_manifest_destroy (&meta->manifest);
    memset (meta, 0, sizeof *meta);
}

//  -------------------------------------------------------------------------
//  Selftest

//  Appends one ustar entry to buffer at *offset.
static void
s_test_entry (uint8_t *buffer, size_t *offset, const char *name, char type,
              const char *content)
{
    uint8_t *header = buffer + *offset;
    memset (header, 0, TAR_BLOCK_BYTES);
    snprintf ((char *) header, 100, "%s", name);
    memcpy (header + 100, "0000644", 7);
    size_t size = content? strlen (content): 0;
    snprintf ((char *) header + 124, 12, "%011o", (unsigned) size);
    header [156] = (uint8_t) type;
    memcpy (header + 257, "ustar", 6);
    memcpy (header + 263, "00", 2);
    memset (header + 148, ' ', 8);
    unsigned sum = 0;
    for (size_t i = 0; i < TAR_BLOCK_BYTES; i++)
        sum += header [i];
    snprintf ((char *) header + 148, 8, "%06o", sum);
    *offset += TAR_BLOCK_BYTES;
    if (size) {
        memcpy (buffer + *offset, content, size);
        *offset += (size + TAR_BLOCK_BYTES - 1) / TAR_BLOCK_BYTES * TAR_BLOCK_BYTES;
    }
}

//  kiln.json: text, what the runner gets (entry and class) or why not
static void
s_test_meta (void)
{
    #define MANIFEST "\"manifest\": {\"name\": \"hello\", \"endpoints\": [\"/\"]}"
    struct {
        const char *text;
        const char *entry;          //  NULL: refused
        const char *class_name;
        const char *why;            //  the reason's start
    } metas [] = {
        { "{\"kind\": \"python\", \"entry\": \"hello.py\", \"class\": \"Hello\", " MANIFEST "}",
          "hello.py", "Hello", NULL },
        { "{\"kind\": \"python\", \"entry\": \".app.py\", \"class\": \"A\", \"extra\": 1, " MANIFEST "}",
          ".app.py", "A", NULL },
        { "", NULL, NULL, "the bundle's kiln.json is not valid JSON: " },
        { "{\"kind\": \"python\"", NULL, NULL, "the bundle's kiln.json is not valid JSON: " },
        { "{\"kind\": \"python\", \"kind\": \"python\"}", NULL, NULL, "the bundle's kiln.json is not valid JSON: " },
        { "[]", NULL, NULL, "the bundle's kind is '(none)'" },
        { "{\"kind\": \"native\"}", NULL, NULL, "the bundle's kind is 'native'" },
        { "{\"kind\": \"python\", \"class\": \"A\", " MANIFEST "}", NULL, NULL, "the bundle's entry must" },
        { "{\"kind\": \"python\", \"entry\": \"\", \"class\": \"A\", " MANIFEST "}", NULL, NULL, "the bundle's entry" },
        { "{\"kind\": \"python\", \"entry\": \"..\", \"class\": \"A\", " MANIFEST "}", NULL, NULL, "the bundle's entry" },
        { "{\"kind\": \"python\", \"entry\": \".\", \"class\": \"A\", " MANIFEST "}", NULL, NULL, "the bundle's entry" },
        { "{\"kind\": \"python\", \"entry\": \"../x.py\", \"class\": \"A\", " MANIFEST "}", NULL, NULL, "the bundle's entry" },
        { "{\"kind\": \"python\", \"entry\": \"/etc/x.py\", \"class\": \"A\", " MANIFEST "}", NULL, NULL, "the bundle's entry" },
        { "{\"kind\": \"python\", \"entry\": \"a\\nb.py\", \"class\": \"A\", " MANIFEST "}", NULL, NULL, "the bundle's entry" },
        { "{\"kind\": \"python\", \"entry\": 7, \"class\": \"A\", " MANIFEST "}", NULL, NULL, "the bundle's entry" },
        { "{\"kind\": \"python\", \"entry\": \"a.py\", " MANIFEST "}", NULL, NULL, "the bundle names no class" },
        { "{\"kind\": \"python\", \"entry\": \"a.py\", \"class\": \"\", " MANIFEST "}", NULL, NULL, "the bundle names no class" },
        { "{\"kind\": \"python\", \"entry\": \"a.py\", \"class\": \"A\"}", NULL, NULL, "the bundle names no class" },
        { "{\"kind\": \"python\", \"entry\": \"a.py\", \"class\": \"A\", \"manifest\": \"{}\"}",
          NULL, NULL, "the bundle names no class" },
        { "{\"kind\": \"python\", \"entry\": \"a.py\", \"class\": \"A\", \"manifest\": {}}",
          NULL, NULL, "invalid app: name" },
    };
    #undef MANIFEST
    for (size_t i = 0; i < sizeof metas / sizeof metas [0]; i++) {
        kiln_bundle_meta_t meta;
        char *error = NULL;
        int rc = kiln_bundle_meta_parse (metas [i].text, strlen (metas [i].text), &meta, &error);
        if ((rc == 0) != (metas [i].entry != NULL)
        ||  (metas [i].why && (!error || strncmp (error, metas [i].why, strlen (metas [i].why)) != 0)))
            fprintf (stderr, "kiln.json case %zu: %d '%s'\n", i, rc, error? error: "");
        if (metas [i].entry) {
            assert (rc == 0 && !error);
            assert (streq (meta.entry, metas [i].entry));
            assert (streq (meta.class_name, metas [i].class_name));
            assert (meta.manifest && streq (meta.manifest->name, "hello"));
            kiln_bundle_meta_free (&meta);
            assert (!meta.entry && !meta.class_name && !meta.manifest);
        }
        else {
            assert (rc == -1 && error);
            assert (strncmp (error, metas [i].why, strlen (metas [i].why)) == 0);
            assert (!meta.entry && !meta.class_name && !meta.manifest);
        }
        free (error);
    }
}

void
kiln_bundle_test (bool verbose)
{
    if (verbose)
        printf (" * bundle: ");
    char root [] = "/tmp/kiln-bundle-test-XXXXXX";
    assert (mkdtemp (root));
    uint8_t *buffer = calloc (1, 16 * TAR_BLOCK_BYTES);
    assert (buffer);
    char *error = NULL;

    size_t size = 0;
    s_test_entry (buffer, &size, "hello.py", '0', "print('hi')\n");
    s_test_entry (buffer, &size, "kiln.json", '0', "{}");
    size += 2 * TAR_BLOCK_BYTES;
    assert (kiln_bundle_is_tar (buffer, size));
    char *dest = zsys_sprintf ("%s/good", root);
    assert (kiln_bundle_unpack (buffer, size, dest, &error) == 0 && !error);
    char *file = zsys_sprintf ("%s/hello.py", dest);
    size_t read_size = 0;
    char *text = (char *) kiln_read_file (file, &read_size);
    assert (text && read_size == 12 && memcmp (text, "print('hi')\n", 12) == 0);
    free (text);
    free (file);
    //  Done once: a second unpack finds it there.
    assert (kiln_bundle_unpack (buffer, size, dest, &error) == 0);
    s_remove_tree (dest);
    free (dest);

    //  Refused: paths, dot-dot, links, bad checksums, truncation.
    const char *bad_names [] = { "../evil.py", "/etc/passwd", "a/b.py", "..", NULL };
    for (const char **name = bad_names; *name; name++) {
        memset (buffer, 0, 16 * TAR_BLOCK_BYTES);
        size = 0;
        s_test_entry (buffer, &size, *name, '0', "x");
        size += 2 * TAR_BLOCK_BYTES;
        dest = zsys_sprintf ("%s/bad", root);
        assert (kiln_bundle_unpack (buffer, size, dest, &error) == -1 && error);
        assert (access (dest, F_OK) != 0);
        zstr_free (&error);
        free (dest);
    }
    memset (buffer, 0, 16 * TAR_BLOCK_BYTES);
    size = 0;
    s_test_entry (buffer, &size, "link", '2', NULL);
    size += 2 * TAR_BLOCK_BYTES;
    dest = zsys_sprintf ("%s/bad", root);
    assert (kiln_bundle_unpack (buffer, size, dest, &error) == -1 && strstr (error, "regular"));
    zstr_free (&error);
    size = 0;
    s_test_entry (buffer, &size, "a.py", '0', "x");
    buffer [0] = 'b';               //  checksum no longer matches
    size += 2 * TAR_BLOCK_BYTES;
    assert (kiln_bundle_unpack (buffer, size, dest, &error) == -1 && strstr (error, "checksum"));
    zstr_free (&error);
    //  A failed unpack leaves nothing behind, dot files included (a
    //  temporary directory left there would block the next unpack)
    memset (buffer, 0, 16 * TAR_BLOCK_BYTES);
    size = 0;
    s_test_entry (buffer, &size, ".hidden", '0', "x");
    s_test_entry (buffer, &size, "../evil.py", '0', "x");
    size += 2 * TAR_BLOCK_BYTES;
    assert (kiln_bundle_unpack (buffer, size, dest, &error) == -1);
    zstr_free (&error);
    char *temp = zsys_sprintf ("%s.tmp-%d", dest, (int) getpid ());
    assert (access (temp, F_OK) != 0);
    free (temp);
    size = 0;
    s_test_entry (buffer, &size, "a.py", '0', "x");
    assert (kiln_bundle_unpack (buffer, TAR_BLOCK_BYTES + 10, dest, &error) == -1);
    zstr_free (&error);
    assert (kiln_bundle_unpack ((const uint8_t *) "nope", 4, dest, &error) == -1);
    zstr_free (&error);
    assert (access (dest, F_OK) != 0);
    free (dest);
    free (buffer);
    s_remove_tree (root);
    s_test_meta ();
    if (verbose)
        printf ("OK\n");
}
