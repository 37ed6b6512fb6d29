/* blockcache.h - sparse cache files holding fetched blocks, one file per file version.
 *
 * Layout: DIR/data/<id>.<version>; each file is created at the size of the version it holds, so
 * a block lives at its own offset and unfetched ranges are holes. Contents are only trusted
 * after their XXH3-128 hash matches the index (see fs_cache_hash).
 * Any thread may call these; they keep no state of their own.
 */
#ifndef OFFLOAD_BLOCKCACHE_H
#define OFFLOAD_BLOCKCACHE_H

#include <stddef.h>
#include <stdint.h>

#define FS_BLOCK_SIZE 65536u

/* Open (creating, sized to 'size') the cache file of (id, version); returns an fd (caller
 * closes) or a negative errno. */
int fs_cache_open(const char *dir, int64_t id, uint64_t version, uint64_t size);
/* Open the existing cache file of (id, version) for reading, as it is (never resized: a reader
 * must not cut a file a writer is growing); an fd or a negative errno (-ENOENT). */
int fs_cache_open_ro(const char *dir, int64_t id, uint64_t version);
/* Remove the cache file of (id, version), if any. */
void fs_cache_remove(const char *dir, int64_t id, uint64_t version);
/* Give the disk space of [off, off+len) back (punch a hole). 0 or a negative errno. */
int fs_cache_punch(const char *dir, int64_t id, uint64_t version, uint64_t off, uint64_t len);
/* XXH3-128 of n bytes, big-endian into out[16]. */
void fs_cache_hash(const void *data, size_t n, uint8_t out[16]);

#endif
