/* blockcache.c - sparse per-version cache files; see blockcache.h. */
#include "blockcache.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

static void cache_path(const char *dir, int64_t id, uint64_t version, char *out, size_t len)
{
    snprintf(out, len, "%s/data/%" PRId64 ".%" PRIu64, dir, id, version);
}

int fs_cache_open_ro(const char *dir, int64_t id, uint64_t version)
{
    char path[4096];
    cache_path(dir, id, version, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    return fd < 0 ? -errno : fd;
}

int fs_cache_open(const char *dir, int64_t id, uint64_t version, uint64_t size)
{
    char path[4096];
    struct stat st;
    int fd;

    cache_path(dir, id, version, path, sizeof(path));
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != size) {
        if (ftruncate(fd, (off_t)size) != 0) {
            int e = -errno;
            close(fd);
            return e;
        }
    }
    return fd;
}

void fs_cache_remove(const char *dir, int64_t id, uint64_t version)
{
    char path[4096];

    cache_path(dir, id, version, path, sizeof(path));
    unlink(path);
}

int fs_cache_punch(const char *dir, int64_t id, uint64_t version, uint64_t off, uint64_t len)
{
    char path[4096];
    int fd, r = 0;

    cache_path(dir, id, version, path, sizeof(path));
    if ((fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW)) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) != 0)
        r = -errno;
    close(fd);
    return r;
}

void fs_cache_hash(const void *data, size_t n, uint8_t out[16])
{
    XXH128_hash_t h = XXH3_128bits(data, n);
    XXH128_canonical_t c;

    XXH128_canonicalFromHash(&c, h);
    for (int i = 0; i < 16; i++)
        out[i] = c.digest[i];
}
