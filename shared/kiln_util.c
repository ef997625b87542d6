/*  =========================================================================
    kiln_util — ids, clocks, hashing and files

    SHA-256 is implemented here (FIPS 180-4) rather than pulled from a
    crypto library: kiln only needs it to name artifacts by content, and
    one small function is cheaper than one more dependency.
    =========================================================================
*/
#include "kiln_util.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

//  ---------------------------------------------------------------------
//  Ids

//  Fills buf with random bytes from the kernel. getrandom() first (no
//  file descriptor, works in a chroot); /dev/urandom if the kernel is too
//  old for it.
static int
s_random_bytes (uint8_t *buf, size_t size)
{
    size_t got = 0;
    while (got < size) {
        ssize_t rc = getrandom (buf + got, size - got, 0);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            break;
        got += rc;
    }
    if (got == size)
        return 0;
    int fd = open ("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    got = 0;
    while (got < size) {
        ssize_t rc = read (fd, buf + got, size - got);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            break;
        got += rc;
    }
    close (fd);
    return got == size ? 0 : -1;
}

void
kiln_uuid4 (char out [KILN_UUID_LEN + 1])
{
    uint8_t b [16];
    if (s_random_bytes (b, sizeof b)) {
        //  No kernel randomness at all: an id that collides would merge
        //  two requests, so refuse to go on rather than guess.
        fprintf (stderr, "kiln: no source of random bytes\n");
        abort ();
    }
    b [6] = (b [6] & 0x0f) | 0x40;     //  version 4
    b [8] = (b [8] & 0x3f) | 0x80;     //  variant 10xx
    snprintf (out, KILN_UUID_LEN + 1,
              "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
              b [0], b [1], b [2], b [3], b [4], b [5], b [6], b [7],
              b [8], b [9], b [10], b [11], b [12], b [13], b [14], b [15]);
}

//  ---------------------------------------------------------------------
//  Clocks

int64_t
kiln_now_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
kiln_mono_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

//  ---------------------------------------------------------------------
//  SHA-256 (FIPS 180-4)

typedef struct {
    uint32_t h [8];
    uint8_t block [64];
    size_t block_len;
    uint64_t total_bytes;
} s_sha256_t;

static const uint32_t s_k [64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void
s_sha256_block (s_sha256_t *self, const uint8_t *p)
{
    uint32_t w [64];
    for (int i = 0; i < 16; i++)
        w [i] = (uint32_t) p [i * 4] << 24 | (uint32_t) p [i * 4 + 1] << 16
              | (uint32_t) p [i * 4 + 2] << 8 | (uint32_t) p [i * 4 + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROTR (w [i - 15], 7) ^ ROTR (w [i - 15], 18) ^ (w [i - 15] >> 3);
        uint32_t s1 = ROTR (w [i - 2], 17) ^ ROTR (w [i - 2], 19) ^ (w [i - 2] >> 10);
        w [i] = w [i - 16] + s0 + w [i - 7] + s1;
    }
    uint32_t a = self->h [0], b = self->h [1], c = self->h [2], d = self->h [3];
    uint32_t e = self->h [4], f = self->h [5], g = self->h [6], h = self->h [7];
    for (int i = 0; i < 64; i++) {
        uint32_t S1 = ROTR (e, 6) ^ ROTR (e, 11) ^ ROTR (e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = h + S1 + ch + s_k [i] + w [i];
        uint32_t S0 = ROTR (a, 2) ^ ROTR (a, 13) ^ ROTR (a, 22);
        uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = S0 + maj;
        h = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    self->h [0] += a; self->h [1] += b; self->h [2] += c; self->h [3] += d;
    self->h [4] += e; self->h [5] += f; self->h [6] += g; self->h [7] += h;
}

static void
s_sha256_init (s_sha256_t *self)
{
    static const uint32_t h0 [8] = {
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
    };
    memcpy (self->h, h0, sizeof h0);
    self->block_len = 0;
    self->total_bytes = 0;
}

static void
s_sha256_update (s_sha256_t *self, const uint8_t *data, size_t size)
{
    self->total_bytes += size;
    if (self->block_len) {
        size_t take = 64 - self->block_len;
        if (take > size)
            take = size;
        memcpy (self->block + self->block_len, data, take);
        self->block_len += take;
        data += take;
        size -= take;
        if (self->block_len < 64)
            return;
        s_sha256_block (self, self->block);
        self->block_len = 0;
    }
    while (size >= 64) {
        s_sha256_block (self, data);
        data += 64;
        size -= 64;
    }
    memcpy (self->block, data, size);
    self->block_len = size;
}

static void
s_sha256_final (s_sha256_t *self, uint8_t digest [32])
{
    uint64_t bits = self->total_bytes * 8;
    uint8_t pad [72] = { 0x80 };
    //  Pad to 56 mod 64, then the length in bits, big-endian.
    size_t pad_len = self->block_len < 56 ? 56 - self->block_len : 120 - self->block_len;
    for (int i = 0; i < 8; i++)
        pad [pad_len + i] = (uint8_t) (bits >> (56 - 8 * i));
    s_sha256_update (self, pad, pad_len + 8);
    assert (self->block_len == 0);
    for (int i = 0; i < 8; i++) {
        digest [i * 4] = (uint8_t) (self->h [i] >> 24);
        digest [i * 4 + 1] = (uint8_t) (self->h [i] >> 16);
        digest [i * 4 + 2] = (uint8_t) (self->h [i] >> 8);
        digest [i * 4 + 3] = (uint8_t) self->h [i];
    }
}

void
kiln_sha256_hex (const void *data, size_t size, char out [KILN_SHA256_HEX_LEN + 1])
{
    s_sha256_t ctx;
    s_sha256_init (&ctx);
    s_sha256_update (&ctx, (const uint8_t *) data, size);
    uint8_t digest [32];
    s_sha256_final (&ctx, digest);
    static const char hex [] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out [i * 2] = hex [digest [i] >> 4];
        out [i * 2 + 1] = hex [digest [i] & 15];
    }
    out [KILN_SHA256_HEX_LEN] = 0;
}

//  ---------------------------------------------------------------------
//  Files

int
kiln_hex_value (char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

uint8_t *
kiln_read_file (const char *path, size_t *size)
{
    int fd = open (path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    //  Read until EOF rather than trust st_size: /proc files and pipes
    //  report 0, and a file may grow while we read it.
    struct stat st;
    size_t capacity = 4096;
    if (fstat (fd, &st) == 0 && S_ISREG (st.st_mode) && st.st_size > 0)
        capacity = (size_t) st.st_size + 1;
    uint8_t *data = malloc (capacity);
    size_t used = 0;
    while (data) {
        if (used + 1 >= capacity) {
            uint8_t *bigger = realloc (data, capacity * 2);
            if (!bigger) {
                free (data);
                data = NULL;
                errno = ENOMEM;
                break;
            }
            data = bigger;
            capacity *= 2;
        }
        ssize_t rc = read (fd, data + used, capacity - used - 1);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0) {
            int saved = errno;
            free (data);
            data = NULL;
            errno = saved;
            break;
        }
        if (rc == 0)
            break;
        used += rc;
    }
    int saved = errno;
    close (fd);
    errno = saved;
    if (!data)
        return NULL;
    data [used] = 0;
    if (size)
        *size = used;
    return data;
}

int
kiln_write_file (const char *path, const void *data, size_t size)
{
    //  The temp file sits next to the target so that rename() stays on one
    //  file system and is atomic: a reader sees the old file or the new,
    //  never half of one.
    size_t len = strlen (path);
    char *tmp = malloc (len + 16);
    if (!tmp)
        return -1;
    snprintf (tmp, len + 16, "%s.tmp.XXXXXX", path);
    int fd = mkostemp (tmp, O_CLOEXEC);
    if (fd < 0) {
        free (tmp);
        return -1;
    }
    const uint8_t *at = data;
    size_t left = size;
    int rc = 0;
    while (left > 0) {
        ssize_t n = write (fd, at, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = -1;
            break;
        }
        at += n;
        left -= n;
    }
    //  mkostemp makes 0600; a cache file is as readable as any other.
    if (rc == 0) {
        mode_t mask = umask (0);
        umask (mask);
        if (fchmod (fd, 0666 & ~mask))
            rc = -1;
    }
    if (rc == 0 && fsync (fd))
        rc = -1;
    if (close (fd))
        rc = -1;
    if (rc == 0 && rename (tmp, path))
        rc = -1;
    if (rc) {
        int saved = errno;
        unlink (tmp);
        errno = saved;
    }
    free (tmp);
    return rc;
}

int
kiln_mkdir_p (const char *path, int mode)
{
    if (!path || !*path) {
        errno = EINVAL;
        return -1;
    }
    char *copy = strdup (path);
    if (!copy)
        return -1;
    int rc = 0;
    //  Make each prefix in turn; one that exists already is fine.
    for (char *p = copy + 1; rc == 0; p++) {
        if (*p == '/' || *p == 0) {
            char saved = *p;
            *p = 0;
            if (mkdir (copy, mode) && errno != EEXIST)
                rc = -1;
            *p = saved;
            if (saved == 0)
                break;
        }
    }
    if (rc == 0) {
        struct stat st;
        if (stat (path, &st))
            rc = -1;
        else
        if (!S_ISDIR (st.st_mode)) {
            errno = ENOTDIR;
            rc = -1;
        }
    }
    free (copy);
    return rc;
}

//  ---------------------------------------------------------------------
//  Selftest

static void
s_check_sha (const void *data, size_t size, const char *expect)
{
    char hex [KILN_SHA256_HEX_LEN + 1];
    kiln_sha256_hex (data, size, hex);
    assert (strcmp (hex, expect) == 0);
}

void
kiln_util_test (bool verbose)
{
    assert (kiln_hex_value ('0') == 0 && kiln_hex_value ('9') == 9);
    assert (kiln_hex_value ('a') == 10 && kiln_hex_value ('F') == 15);
    assert (kiln_hex_value ('g') == -1 && kiln_hex_value ('%') == -1);
    if (verbose)
        printf (" * kiln_util: ");

    //  SHA-256: the FIPS 180-2 test vectors.
    s_check_sha ("abc", 3,
                 "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    s_check_sha ("", 0,
                 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    s_check_sha (two, strlen (two),
                 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    //  (one million 'a', fed in uneven pieces through the streaming API)
    {
        s_sha256_t ctx;
        s_sha256_init (&ctx);
        uint8_t a [997];
        memset (a, 'a', sizeof a);
        size_t left = 1000000;
        while (left) {
            size_t n = left < sizeof a ? left : sizeof a;
            s_sha256_update (&ctx, a, n);
            left -= n;
        }
        uint8_t digest [32];
        s_sha256_final (&ctx, digest);
        char hex [65];
        for (int i = 0; i < 32; i++)
            snprintf (hex + i * 2, 3, "%02x", digest [i]);
        assert (strcmp (hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0);
    }
    //  Lengths around the padding boundary hash the same in one call and
    //  byte by byte.
    for (size_t len = 50; len < 140; len++) {
        uint8_t buf [140];
        for (size_t i = 0; i < len; i++)
            buf [i] = (uint8_t) (i * 7);
        char one [65];
        kiln_sha256_hex (buf, len, one);
        s_sha256_t ctx;
        s_sha256_init (&ctx);
        for (size_t i = 0; i < len; i++)
            s_sha256_update (&ctx, buf + i, 1);
        uint8_t digest [32];
        s_sha256_final (&ctx, digest);
        char hex [65];
        for (int i = 0; i < 32; i++)
            snprintf (hex + i * 2, 3, "%02x", digest [i]);
        assert (strcmp (one, hex) == 0);
    }

    //  UUID v4: format, version and variant bits, no repeats.
    char ids [64][KILN_UUID_LEN + 1];
    for (int i = 0; i < 64; i++) {
        kiln_uuid4 (ids [i]);
        const char *u = ids [i];
        assert (strlen (u) == KILN_UUID_LEN);
        for (int c = 0; c < KILN_UUID_LEN; c++) {
            if (c == 8 || c == 13 || c == 18 || c == 23)
                assert (u [c] == '-');
            else
                assert ((u [c] >= '0' && u [c] <= '9') || (u [c] >= 'a' && u [c] <= 'f'));
        }
        assert (u [14] == '4');
        assert (u [19] == '8' || u [19] == '9' || u [19] == 'a' || u [19] == 'b');
        for (int j = 0; j < i; j++)
            assert (strcmp (ids [i], ids [j]) != 0);
    }

    //  Clocks move forward and the wall clock is plausible (after 2020).
    int64_t mono = kiln_mono_ms ();
    assert (mono > 0);
    assert (kiln_mono_ms () >= mono);
    assert (kiln_now_ms () > 1577836800000LL);

    //  Files: mkdir -p, atomic write, read back with a NUL after.
    char dir [] = "/tmp/kiln-util-test-XXXXXX";
    assert (mkdtemp (dir));
    char path [256];
    snprintf (path, sizeof path, "%s/a/b/c", dir);
    assert (kiln_mkdir_p (path, 0755) == 0);
    assert (kiln_mkdir_p (path, 0755) == 0);       //  exists already
    snprintf (path, sizeof path, "%s/a/b/c/", dir);
    assert (kiln_mkdir_p (path, 0755) == 0);       //  trailing slash
    snprintf (path, sizeof path, "%s/a/b/c/file.bin", dir);
    const uint8_t content [] = { 'h', 0, 'i', 0xff, '\n' };
    assert (kiln_write_file (path, content, sizeof content) == 0);
    size_t size = 0;
    uint8_t *back = kiln_read_file (path, &size);
    assert (back);
    assert (size == sizeof content);
    assert (memcmp (back, content, size) == 0);
    assert (back [size] == 0);
    free (back);
    //  Overwrite with an empty file, then with a large one.
    assert (kiln_write_file (path, "", 0) == 0);
    back = kiln_read_file (path, &size);
    assert (back && size == 0 && back [0] == 0);
    free (back);
    size_t big_size = 3 * 1000 * 1000 + 17;
    uint8_t *big = malloc (big_size);
    assert (big);
    for (size_t i = 0; i < big_size; i++)
        big [i] = (uint8_t) (i * 31);
    assert (kiln_write_file (path, big, big_size) == 0);
    back = kiln_read_file (path, &size);
    assert (back && size == big_size && memcmp (back, big, size) == 0);
    free (back);
    free (big);
    //  Failure cases set errno.
    snprintf (path, sizeof path, "%s/missing", dir);
    errno = 0;
    assert (kiln_read_file (path, &size) == NULL);
    assert (errno == ENOENT);
    snprintf (path, sizeof path, "%s/nodir/file", dir);
    assert (kiln_write_file (path, "x", 1) == -1);
    snprintf (path, sizeof path, "%s/a/b/c/file.bin/sub", dir);
    assert (kiln_mkdir_p (path, 0755) == -1);      //  a file is in the way
    assert (kiln_mkdir_p ("", 0755) == -1);
    //  A file in /proc reports size 0 but has content.
    back = kiln_read_file ("/proc/self/status", &size);
    assert (back && size > 0 && strstr ((char *) back, "Name:"));
    free (back);

    //  Clean up.
    char cmd [300];
    snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert (system (cmd) == 0);

    if (verbose)
        printf ("OK\n");
}
