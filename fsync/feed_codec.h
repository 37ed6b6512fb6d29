/* feed_codec.h - the change feed's frames (docs/feed.md): encoder and decoder (feed_*).
 *
 * Pure code over struct buf (buf.h): no I/O, no threads, no logging. An encoder or a decoder
 * belongs to one thread at a time; the functions that take neither may be called from any thread.
 *
 * The codec enforces what can be judged from one frame and the frame numbers: framing, the check,
 * seq, the payload layout, string limits, clean paths and DATA's decoding. The conversation (HELLO
 * first, which side may send what, a DATA block's hash against the announced HASHES, what an empty
 * path - the root - may name) is the caller's.
 */
#ifndef OFFLOAD_FEED_CODEC_H
#define OFFLOAD_FEED_CODEC_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define FEED_VERSION    1
#define FEED_FRAME_MAX  (4u << 20)     /* the largest len of a frame (type .. check) */
#define FEED_FRAME_MIN  13u            /* the smallest: type, seq and check */
#define FEED_HASH_LEN   16             /* a block hash: XXH3-128, big-endian */
#define FEED_STRING_MAX (PATH_MAX - 1) /* every string but DATA's bytes */
#define FEED_BLOCK_MAX  (1u << 20)     /* the largest block size a decoder accepts */

enum feed_type {
    FEED_HELLO = 1,
    FEED_SNAP_BEGIN = 2,
    FEED_ENTRY = 3,
    FEED_SNAP_END = 4,
    FEED_REMOVE = 5,
    FEED_RENAME = 6,
    FEED_HASHES = 7,
    FEED_DATA = 8,
    FEED_BATCH_END = 9,
    FEED_ACK = 10,
    FEED_HOLD = 11,
    FEED_DROP = 12,
    FEED_ERROR = 13,
    FEED_CLIENT = 14, /* mountd: u64 the id its SFTP client gave itself (client-id@offload) */
    FEED_OWN = 15, /* agent: u64 1: the next ENTRY, REMOVE or RENAME is that client's own change */
};

/* HELLO flags */
#define FEED_HELLO_OWN 0x1u /* agent: tags a subscriber's own changes (CLIENT, OWN) */

enum feed_codec {
    FEED_CODEC_RAW = 0,
    FEED_CODEC_LZ4 = 1, /* one lz4 block (LZ4_compress_default) */
};

struct feed_entry {
    const char *path; /* a clean path (feed_path_ok), "" for the root */
    uint32_t mode;    /* st_mode: type and permission bits */
    uint32_t uid, gid, nlink;
    uint64_t size;
    int64_t atime_ns, mtime_ns, ctime_ns;
    uint64_t dev, ino, version;
    const char *link; /* a symlink's target; "" (or NULL when encoding) for anything else */
};

/* One decoded frame, or one to encode with feed_put. Strings are NUL-terminated and hold no NUL. */
struct feed_msg {
    enum feed_type type;
    uint64_t seq; /* decoded: the frame's seq; ignored by feed_put */
    union {
        struct {
            uint32_t version, block_size, flags;
            const char *root, *software;
        } hello;
        uint64_t generation; /* SNAP_BEGIN, BATCH_END, ACK; CLIENT (the id), OWN (1) */
        uint64_t count;      /* SNAP_END */
        struct feed_entry entry;
        struct {
            const char *path;
        } path; /* REMOVE, HOLD, DROP */
        struct {
            const char *from, *to;
        } rename;
        struct {
            const char *path;
            uint64_t version, first;
            uint32_t n;
            const uint8_t *hashes; /* n * FEED_HASH_LEN bytes */
        } hashes;
        struct {
            const char *path;
            uint64_t version, block;
            uint32_t len;         /* raw_len */
            uint8_t codec;        /* decoded: as on the wire; feed_put: the one wanted */
            const uint8_t *bytes; /* the raw block, len bytes (decoded when it travelled lz4) */
        } data;
        struct {
            uint32_t err; /* a positive errno */
            const char *message;
        } error;
    } u;
};

struct feed_enc {
    uint64_t seq; /* the seq of the next frame */
};

struct feed_dec {
    uint64_t seq; /* the seq the next frame must carry */
    /* DATA's raw_len limit (FEED_BLOCK_MAX at most); the caller may change it between calls */
    uint32_t block_size;
    int err;        /* 0, or the fatal error that every later call returns */
    char why[192];  /* what was fatal, for the log; "" while err == 0 */
    uint8_t *arena; /* the strings, hashes and raw bytes of the last frame */
    size_t arena_cap, arena_used;
    uint8_t *block; /* the last lz4 block, decoded */
    size_t block_cap;
};

/* Start an encoder: the first frame gets seq 1. */
void feed_enc_init(struct feed_enc *e);

/* Append one whole frame holding m (m->seq is ignored: the frame gets e->seq, which then grows
 * by one) to out. DATA with codec FEED_CODEC_LZ4 goes as lz4 when that saves bytes, raw
 * otherwise. Returns 0; on failure appends nothing and leaves e->seq: -EINVAL for an unknown
 * type or codec, a NULL or over-long string, a path feed_path_ok refuses, a link on an entry that
 * is not a symlink, NULL hashes or bytes with n or len not 0, len over FEED_BLOCK_MAX;
 * -EMSGSIZE when the frame would pass FEED_FRAME_MAX or out's max; -ENOMEM. */
int feed_put(struct feed_enc *e, struct buf *out, const struct feed_msg *m);

/* Shorthands for feed_put, with the same contract. */
/* HELLO of version FEED_VERSION with 'flags' (FEED_HELLO_*). */
int feed_put_hello(struct feed_enc *e, struct buf *out, uint32_t block_size, uint32_t flags,
                   const char *root, const char *software);
/* SNAP_BEGIN, SNAP_END, BATCH_END or ACK (any other type is -EINVAL). */
int feed_put_u64msg(struct feed_enc *e, struct buf *out, enum feed_type type, uint64_t value);
int feed_put_entry(struct feed_enc *e, struct buf *out, const struct feed_entry *en);
/* REMOVE, HOLD or DROP (any other type is -EINVAL). */
int feed_put_path(struct feed_enc *e, struct buf *out, enum feed_type type, const char *path);
int feed_put_rename(struct feed_enc *e, struct buf *out, const char *from, const char *to);
/* n hashes of FEED_HASH_LEN bytes each, for blocks first .. first + n - 1; at most
 * feed_hashes_max(strlen(path)) fit in one frame. */
int feed_put_hashes(struct feed_enc *e, struct buf *out, const char *path, uint64_t version,
                    uint64_t first, uint32_t n, const uint8_t *hashes);
/* Block 'block' of raw_len bytes; compress: lz4 when it saves bytes, else raw. */
int feed_put_data(struct feed_enc *e, struct buf *out, const char *path, uint64_t version,
                  uint64_t block, const void *raw, uint32_t raw_len, bool compress);
/* err: a positive errno. */
int feed_put_error(struct feed_enc *e, struct buf *out, uint32_t err, const char *message);

/* How many hashes one HASHES frame holds for a path of path_len bytes (0 if the path is over
 * FEED_STRING_MAX). Any thread. */
uint32_t feed_hashes_max(size_t path_len);

/* Start a decoder expecting seq 1 and DATA blocks of at most block_size bytes. Allocates nothing
 * yet. Returns 0, or -EINVAL when block_size is 0 or over FEED_BLOCK_MAX. */
int feed_dec_init(struct feed_dec *d, uint32_t block_size);
/* Free what the decoder holds; every pointer it handed out dies. It may be initialised again. */
void feed_dec_free(struct feed_dec *d);

/* Take one whole frame off the front of rx and decode it into *m, whose pointers stay valid until
 * the next feed_get or feed_dec_free on d (they point into d, not into rx). Never reads past what
 * rx holds. Returns:
 *   0        a frame was consumed and *m filled;
 *   -EAGAIN  rx does not hold a whole frame yet: nothing consumed;
 *   -ENOMEM  nothing consumed, the decoder is unchanged (a retry may succeed);
 *   -EBADMSG the stream is dead (docs/feed.md, Frames): a length out of range, a bad check, a seq
 *            that is not the previous + 1, an unknown type, a short payload or bytes left over, a
 *            string over FEED_STRING_MAX or holding a NUL, a path feed_path_ok refuses, a link on
 *            an entry that is not a symlink, HASHES whose n does not match its bytes, DATA whose
 *            raw_len is over d->block_size, whose codec is unknown, or whose bytes do not decode to
 *            exactly raw_len bytes. Nothing consumed; d->why says what for the log, and every
 *            later call returns -EBADMSG without looking at rx.
 * On failure *m is unspecified. */
int feed_get(struct feed_dec *d, struct buf *rx, struct feed_msg *m);

/* Why the decoder failed, for the log ("" while it has not). */
const char *feed_dec_error(const struct feed_dec *d);

/* Whether the len bytes at p are a clean path: at most FEED_STRING_MAX bytes, no NUL, and, unless
 * empty (the root), components separated by single '/', none empty, "." or "..", none over
 * NAME_MAX bytes. Any thread. */
bool feed_path_ok(const char *p, size_t len);

/* "HELLO", "SNAP_BEGIN", ...; "unknown" for anything else. Any thread. */
const char *feed_type_name(enum feed_type t);

#endif
