/* feed_codec.c - the change feed's frames; see feed_codec.h and docs/feed.md. */
#include "feed_codec.h"

#include <errno.h>
#include <inttypes.h>
#include <lz4.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

/* u32 len, then len bytes: u8 type, u64 seq, payload, u32 check */
#define LEN_BYTES   4u
#define HEAD_BYTES  9u /* type and seq */
#define CHECK_BYTES 4u

/* DATA: string path, u64 version, u64 block, u32 raw_len, u8 codec, string bytes */
#define DATA_FIXED (4u + 8u + 8u + 4u + 1u + 4u)
/* HASHES: string path, u64 version, u64 first, u32 n, n hashes */
#define HASHES_FIXED (4u + 8u + 8u + 4u)

_Static_assert(FEED_FRAME_MIN == HEAD_BYTES + CHECK_BYTES,
               "the smallest frame is type, seq, check");
_Static_assert(FEED_HASH_LEN == sizeof(XXH128_canonical_t), "a block hash is one XXH3-128");
_Static_assert(FEED_FRAME_MIN + DATA_FIXED + FEED_STRING_MAX + FEED_BLOCK_MAX <= FEED_FRAME_MAX,
               "a raw DATA frame of the largest block and path fits one frame");
_Static_assert(FEED_FRAME_MAX <= INT32_MAX, "lz4 sizes are ints");
_Static_assert(FEED_STRING_MAX >= NAME_MAX, "a path holds at least one longest name");

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const uint8_t *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static uint32_t frame_check(const uint8_t *p, size_t n)
{
    return (uint32_t)XXH3_64bits(p, n);
}

bool feed_path_ok(const char *p, size_t len)
{
    size_t start = 0;

    if (len == 0)
        return true;
    if (len > FEED_STRING_MAX || memchr(p, '\0', len) != NULL)
        return false;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && p[i] != '/')
            continue;
        size_t n = i - start;
        const char *c = p + start;
        if (n == 0 || n > NAME_MAX || (n == 1 && c[0] == '.') ||
            (n == 2 && c[0] == '.' && c[1] == '.'))
            return false;
        start = i + 1;
    }
    return true;
}

uint32_t feed_hashes_max(size_t path_len)
{
    if (path_len > FEED_STRING_MAX)
        return 0;
    return (uint32_t)((FEED_FRAME_MAX - FEED_FRAME_MIN - HASHES_FIXED - path_len) / FEED_HASH_LEN);
}

/* ---- encoding ---- */

/* A string field: non-NULL (unless null_ok: then NULL is empty) and within FEED_STRING_MAX. */
static int put_str(struct buf *out, const char *s, bool null_ok)
{
    size_t n;

    if (s == NULL)
        return null_ok ? buf_put_string(out, "", 0) : -EINVAL;
    if ((n = strlen(s)) > FEED_STRING_MAX)
        return -EINVAL;
    return buf_put_string(out, s, n);
}

static int put_path(struct buf *out, const char *path)
{
    if (path == NULL || !feed_path_ok(path, strlen(path)))
        return -EINVAL;
    return buf_put_string(out, path, strlen(path));
}

static int put_hello(struct buf *out, const struct feed_msg *m)
{
    int r;

    if ((r = buf_put_u32(out, m->u.hello.version)) != 0 ||
        (r = buf_put_u32(out, m->u.hello.block_size)) != 0 ||
        (r = buf_put_u32(out, m->u.hello.flags)) != 0 ||
        (r = put_str(out, m->u.hello.root, false)) != 0 ||
        (r = put_str(out, m->u.hello.software, false)) != 0)
        return r;
    return 0;
}

static int put_u64msg(struct buf *out, const struct feed_msg *m)
{
    return buf_put_u64(out, m->u.generation);
}

static int put_entry(struct buf *out, const struct feed_msg *m)
{
    const struct feed_entry *en = &m->u.entry;
    int r;

    if (!S_ISLNK(en->mode) && en->link != NULL && en->link[0] != '\0')
        return -EINVAL;
    if ((r = put_path(out, en->path)) != 0 || (r = buf_put_u32(out, en->mode)) != 0 ||
        (r = buf_put_u32(out, en->uid)) != 0 || (r = buf_put_u32(out, en->gid)) != 0 ||
        (r = buf_put_u32(out, en->nlink)) != 0 || (r = buf_put_u64(out, en->size)) != 0 ||
        (r = buf_put_u64(out, (uint64_t)en->atime_ns)) != 0 ||
        (r = buf_put_u64(out, (uint64_t)en->mtime_ns)) != 0 ||
        (r = buf_put_u64(out, (uint64_t)en->ctime_ns)) != 0 ||
        (r = buf_put_u64(out, en->dev)) != 0 || (r = buf_put_u64(out, en->ino)) != 0 ||
        (r = buf_put_u64(out, en->version)) != 0 || (r = put_str(out, en->link, true)) != 0)
        return r;
    return 0;
}

static int put_path_msg(struct buf *out, const struct feed_msg *m)
{
    return put_path(out, m->u.path.path);
}

static int put_rename(struct buf *out, const struct feed_msg *m)
{
    int r;

    if ((r = put_path(out, m->u.rename.from)) != 0 || (r = put_path(out, m->u.rename.to)) != 0)
        return r;
    return 0;
}

static int put_hashes(struct buf *out, const struct feed_msg *m)
{
    int r;

    if (m->u.hashes.n != 0 && m->u.hashes.hashes == NULL)
        return -EINVAL;
    if ((r = put_path(out, m->u.hashes.path)) != 0 ||
        (r = buf_put_u64(out, m->u.hashes.version)) != 0 ||
        (r = buf_put_u64(out, m->u.hashes.first)) != 0 ||
        (r = buf_put_u32(out, m->u.hashes.n)) != 0)
        return r;
    if ((size_t)m->u.hashes.n > (FEED_FRAME_MAX / FEED_HASH_LEN))
        return -EMSGSIZE; /* before the multiplication can overflow a 32-bit size_t */
    return buf_put(out, m->u.hashes.hashes, (size_t)m->u.hashes.n * FEED_HASH_LEN);
}

/* The bytes go lz4 when asked and the block shrinks, raw otherwise: room for the raw block is
 * reserved, lz4 writes into it with a capacity one byte short of raw, and 0 (did not fit) means
 * raw. Positions are kept relative to out->off, since a reserve may move the content. */
static int put_data(struct buf *out, const struct feed_msg *m)
{
    uint32_t len = m->u.data.len;
    size_t codec_at;
    uint8_t *w;
    int r, z = 0;

    if ((len != 0 && m->u.data.bytes == NULL) || len > FEED_BLOCK_MAX ||
        (m->u.data.codec != FEED_CODEC_RAW && m->u.data.codec != FEED_CODEC_LZ4))
        return -EINVAL;
    if ((r = put_path(out, m->u.data.path)) != 0 ||
        (r = buf_put_u64(out, m->u.data.version)) != 0 ||
        (r = buf_put_u64(out, m->u.data.block)) != 0 || (r = buf_put_u32(out, len)) != 0)
        return r;
    codec_at = buf_avail(out);
    if ((r = buf_put_u8(out, FEED_CODEC_RAW)) != 0 || (r = buf_reserve(out, 4 + len, &w)) != 0)
        return r;
    if (m->u.data.codec == FEED_CODEC_LZ4 && len > 1)
        z = LZ4_compress_default((const char *)m->u.data.bytes, (char *)w + 4, (int)len,
                                 (int)len - 1);
    if (z > 0) {
        out->data[out->off + codec_at] = FEED_CODEC_LZ4;
        len = (uint32_t)z;
    } else if (len) {
        memcpy(w + 4, m->u.data.bytes, len);
    }
    w[0] = len >> 24;
    w[1] = len >> 16;
    w[2] = len >> 8;
    w[3] = len;
    buf_commit(out, 4 + (size_t)len);
    return 0;
}

static int put_error(struct buf *out, const struct feed_msg *m)
{
    int r;

    if ((r = buf_put_u32(out, m->u.error.err)) != 0 ||
        (r = put_str(out, m->u.error.message, false)) != 0)
        return r;
    return 0;
}

/* ---- decoding ---- */

/* Record why the stream is dead; returns -EBADMSG. */
__attribute__((format(printf, 2, 3))) static int bad(struct feed_dec *d, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(d->why, sizeof(d->why), fmt, ap);
    va_end(ap);
    return -EBADMSG;
}

/* n bytes of the arena, which feed_get sized to the frame: every string takes one byte more than
 * its bytes but has four bytes of length on the wire, so a frame's copies never pass its len. */
static uint8_t *arena_take(struct feed_dec *d, size_t n)
{
    uint8_t *p = d->arena + d->arena_used;

    if (n > d->arena_cap - d->arena_used)
        abort(); /* the sizing above is wrong: a programmer error */
    d->arena_used += n;
    return p;
}

/* A string field as a C string in the arena. */
static int get_str(struct feed_dec *d, struct buf *pl, const char **s, const char *what)
{
    const uint8_t *p;
    uint32_t n;
    uint8_t *c;
    int r;

    if ((r = buf_get_string(pl, &p, &n)) != 0)
        return r;
    if (n > FEED_STRING_MAX)
        return bad(d, "%s of %" PRIu32 " bytes, over %d", what, n, FEED_STRING_MAX);
    if (memchr(p, '\0', n) != NULL)
        return bad(d, "%s holds a NUL", what);
    c = arena_take(d, (size_t)n + 1);
    if (n)
        memcpy(c, p, n);
    c[n] = '\0';
    *s = (const char *)c;
    return 0;
}

static int get_path(struct feed_dec *d, struct buf *pl, const char **s, const char *what)
{
    int r;

    if ((r = get_str(d, pl, s, what)) != 0)
        return r;
    if (!feed_path_ok(*s, strlen(*s)))
        return bad(d, "%s is not a clean path", what);
    return 0;
}

static int get_i64(struct buf *pl, int64_t *v)
{
    uint64_t u;
    int r;

    if ((r = buf_get_u64(pl, &u)) != 0)
        return r;
    *v = (int64_t)u;
    return 0;
}

static int get_hello(struct feed_dec *d, struct buf *pl, struct feed_msg *m)
{
    int r;

    if ((r = buf_get_u32(pl, &m->u.hello.version)) != 0 ||
        (r = buf_get_u32(pl, &m->u.hello.block_size)) != 0 ||
        (r = buf_get_u32(pl, &m->u.hello.flags)) != 0 ||
        (r = get_str(d, pl, &m->u.hello.root, "root")) != 0 ||
        (r = get_str(d, pl, &m->u.hello.software, "software")) != 0)
        return r;
    return 0;
}

static int get_u64msg(struct feed_dec *d, struct buf *pl, struct feed_msg *m)
{
    (void)d;
    return buf_get_u64(pl, &m->u.generation);
}

static int get_entry(struct feed_dec *d, struct buf *pl, struct feed_msg *m)
{
    struct feed_entry *en = &m->u.entry;
    int r;

    if ((r = get_path(d, pl, &en->path, "path")) != 0 || (r = buf_get_u32(pl, &en->mode)) != 0 ||
        (r = buf_get_u32(pl, &en->uid)) != 0 || (r = buf_get_u32(pl, &en->gid)) != 0 ||
        (r = buf_get_u32(pl, &en->nlink)) != 0 || (r = buf_get_u64(pl, &en->size)) != 0 ||
        (r = get_i64(pl, &en->atime_ns)) != 0 || (r = get_i64(pl, &en->mtime_ns)) != 0 ||
        (r = get_i64(pl, &en->ctime_ns)) != 0 || (r = buf_get_u64(pl, &en->dev)) != 0 ||
        (r = buf_get_u64(pl, &en->ino)) != 0 || (r = buf_get_u64(pl, &en->version)) != 0 ||
        (r = get_str(d, pl, &en->link, "link")) != 0)
        return r;
    if (!S_ISLNK(en->mode) && en->link[0] != '\0')
        return bad(d, "link on an entry of mode 0%" PRIo32 ", not a symlink", en->mode);
    return 0;
}

static int get_path_msg(struct feed_dec *d, struct buf *pl, struct feed_msg *m)
{
    return get_path(d, pl, &m->u.path.path, "path");
}

static int get_rename(struct feed_dec *d, struct buf *pl, struct feed_msg *m)
{
    int r;

    if ((r = get_path(d, pl, &m->u.rename.from, "from")) != 0 ||
        (r = get_path(d, pl, &m->u.rename.to, "to")) != 0)
        return r;
    return 0;
}

static int get_hashes(struct feed_dec *d, struct buf *pl, struct feed_msg *m)
{
    uint8_t *h;
    int r;

    if ((r = get_path(d, pl, &m->u.hashes.path, "path")) != 0 ||
        (r = buf_get_u64(pl, &m->u.hashes.version)) != 0 ||
        (r = buf_get_u64(pl, &m->u.hashes.first)) != 0 ||
        (r = buf_get_u32(pl, &m->u.hashes.n)) != 0)
        return r;
    if ((uint64_t)m->u.hashes.n * FEED_HASH_LEN != buf_avail(pl))
        return bad(d, "%" PRIu32 " hashes in %zu bytes", m->u.hashes.n, buf_avail(pl));
    h = arena_take(d, buf_avail(pl));
    if ((r = buf_get(pl, h, buf_avail(pl))) != 0)
        return r;
    m->u.hashes.hashes = h;
    return 0;
}

static int get_data(struct feed_dec *d, struct buf *pl, struct feed_msg *m)
{
    uint32_t limit = d->block_size < FEED_BLOCK_MAX ? d->block_size : FEED_BLOCK_MAX;
    const uint8_t *p;
    uint32_t n;
    uint8_t *raw;
    int r, z;

    if ((r = get_path(d, pl, &m->u.data.path, "path")) != 0 ||
        (r = buf_get_u64(pl, &m->u.data.version)) != 0 ||
        (r = buf_get_u64(pl, &m->u.data.block)) != 0 ||
        (r = buf_get_u32(pl, &m->u.data.len)) != 0 || (r = buf_get_u8(pl, &m->u.data.codec)) != 0 ||
        (r = buf_get_string(pl, &p, &n)) != 0)
        return r;
    if (m->u.data.len > limit)
        return bad(d, "raw_len %" PRIu32 " over the block size %" PRIu32, m->u.data.len, limit);
    if (m->u.data.codec == FEED_CODEC_RAW) {
        if (n != m->u.data.len)
            return bad(d, "%" PRIu32 " raw bytes for raw_len %" PRIu32, n, m->u.data.len);
        raw = arena_take(d, n);
        if (n)
            memcpy(raw, p, n);
    } else if (m->u.data.codec == FEED_CODEC_LZ4) {
        if (d->block_cap < limit) {
            if ((raw = realloc(d->block, limit)) == NULL)
                return -ENOMEM;
            d->block = raw;
            d->block_cap = limit;
        }
        raw = d->block;
        z = LZ4_decompress_safe((const char *)p, (char *)raw, (int)n, (int)m->u.data.len);
        if (z != (int)m->u.data.len)
            return bad(d, "lz4 bytes do not decode to raw_len %" PRIu32 " bytes", m->u.data.len);
    } else {
        return bad(d, "unknown codec %u", m->u.data.codec);
    }
    m->u.data.bytes = raw;
    return 0;
}

static int get_error(struct feed_dec *d, struct buf *pl, struct feed_msg *m)
{
    int r;

    if ((r = buf_get_u32(pl, &m->u.error.err)) != 0 ||
        (r = get_str(d, pl, &m->u.error.message, "message")) != 0)
        return r;
    return 0;
}

/* ---- the table ---- */

struct feed_ops {
    const char *name;
    int (*put)(struct buf *out, const struct feed_msg *m);
    int (*get)(struct feed_dec *d, struct buf *pl, struct feed_msg *m);
};

static const struct feed_ops feed_ops[] = {
    [FEED_HELLO] = {"HELLO", put_hello, get_hello},
    [FEED_SNAP_BEGIN] = {"SNAP_BEGIN", put_u64msg, get_u64msg},
    [FEED_ENTRY] = {"ENTRY", put_entry, get_entry},
    [FEED_SNAP_END] = {"SNAP_END", put_u64msg, get_u64msg},
    [FEED_REMOVE] = {"REMOVE", put_path_msg, get_path_msg},
    [FEED_RENAME] = {"RENAME", put_rename, get_rename},
    [FEED_HASHES] = {"HASHES", put_hashes, get_hashes},
    [FEED_DATA] = {"DATA", put_data, get_data},
    [FEED_BATCH_END] = {"BATCH_END", put_u64msg, get_u64msg},
    [FEED_ACK] = {"ACK", put_u64msg, get_u64msg},
    [FEED_HOLD] = {"HOLD", put_path_msg, get_path_msg},
    [FEED_DROP] = {"DROP", put_path_msg, get_path_msg},
    [FEED_ERROR] = {"ERROR", put_error, get_error},
    [FEED_CLIENT] = {"CLIENT", put_u64msg, get_u64msg},
    [FEED_OWN] = {"OWN", put_u64msg, get_u64msg},
};

static const struct feed_ops *ops_of(unsigned type)
{
    if (type >= sizeof(feed_ops) / sizeof(feed_ops[0]) || feed_ops[type].name == NULL)
        return NULL;
    return &feed_ops[type];
}

const char *feed_type_name(enum feed_type t)
{
    const struct feed_ops *o = ops_of((unsigned)t);

    return o ? o->name : "unknown";
}

/* ---- frames ---- */

void feed_enc_init(struct feed_enc *e)
{
    e->seq = 1;
}

int feed_put(struct feed_enc *e, struct buf *out, const struct feed_msg *m)
{
    const struct feed_ops *o = ops_of((unsigned)m->type);
    size_t rel = buf_avail(out), start, len;
    int r;

    if (o == NULL)
        return -EINVAL;
    if ((r = buf_put_u32(out, 0)) != 0 || (r = buf_put_u8(out, (uint8_t)m->type)) != 0 ||
        (r = buf_put_u64(out, e->seq)) != 0 || (r = o->put(out, m)) != 0)
        goto fail;
    start = out->off + rel;
    len = out->len - start - LEN_BYTES + CHECK_BYTES;
    if (len > FEED_FRAME_MAX) {
        r = -EMSGSIZE;
        goto fail;
    }
    if ((r = buf_put_u32(
             out, frame_check(out->data + out->off + rel + LEN_BYTES, len - CHECK_BYTES))) != 0)
        goto fail;
    buf_poke_u32(out, out->off + rel, (uint32_t)len);
    e->seq++;
    return 0;
fail:
    out->len = out->off + rel;
    return r;
}

int feed_put_hello(struct feed_enc *e, struct buf *out, uint32_t block_size, uint32_t flags,
                   const char *root, const char *software)
{
    struct feed_msg m = {.type = FEED_HELLO};

    m.u.hello.version = FEED_VERSION;
    m.u.hello.block_size = block_size;
    m.u.hello.flags = flags;
    m.u.hello.root = root;
    m.u.hello.software = software;
    return feed_put(e, out, &m);
}

int feed_put_u64msg(struct feed_enc *e, struct buf *out, enum feed_type type, uint64_t value)
{
    struct feed_msg m = {.type = type};

    if (type != FEED_SNAP_BEGIN && type != FEED_SNAP_END && type != FEED_BATCH_END &&
        type != FEED_ACK && type != FEED_CLIENT && type != FEED_OWN)
        return -EINVAL;
    m.u.generation = value;
    return feed_put(e, out, &m);
}

int feed_put_entry(struct feed_enc *e, struct buf *out, const struct feed_entry *en)
{
    struct feed_msg m = {.type = FEED_ENTRY};

    m.u.entry = *en;
    return feed_put(e, out, &m);
}

int feed_put_path(struct feed_enc *e, struct buf *out, enum feed_type type, const char *path)
{
    struct feed_msg m = {.type = type};

    if (type != FEED_REMOVE && type != FEED_HOLD && type != FEED_DROP)
        return -EINVAL;
    m.u.path.path = path;
    return feed_put(e, out, &m);
}

int feed_put_rename(struct feed_enc *e, struct buf *out, const char *from, const char *to)
{
    struct feed_msg m = {.type = FEED_RENAME};

    m.u.rename.from = from;
    m.u.rename.to = to;
    return feed_put(e, out, &m);
}

int feed_put_hashes(struct feed_enc *e, struct buf *out, const char *path, uint64_t version,
                    uint64_t first, uint32_t n, const uint8_t *hashes)
{
    struct feed_msg m = {.type = FEED_HASHES};

    m.u.hashes.path = path;
    m.u.hashes.version = version;
    m.u.hashes.first = first;
    m.u.hashes.n = n;
    m.u.hashes.hashes = hashes;
    return feed_put(e, out, &m);
}

int feed_put_data(struct feed_enc *e, struct buf *out, const char *path, uint64_t version,
                  uint64_t block, const void *raw, uint32_t raw_len, bool compress)
{
    struct feed_msg m = {.type = FEED_DATA};

    m.u.data.path = path;
    m.u.data.version = version;
    m.u.data.block = block;
    m.u.data.len = raw_len;
    m.u.data.codec = compress ? FEED_CODEC_LZ4 : FEED_CODEC_RAW;
    m.u.data.bytes = raw;
    return feed_put(e, out, &m);
}

int feed_put_error(struct feed_enc *e, struct buf *out, uint32_t err, const char *message)
{
    struct feed_msg m = {.type = FEED_ERROR};

    m.u.error.err = err;
    m.u.error.message = message;
    return feed_put(e, out, &m);
}

int feed_dec_init(struct feed_dec *d, uint32_t block_size)
{
    memset(d, 0, sizeof(*d));
    if (block_size == 0 || block_size > FEED_BLOCK_MAX)
        return -EINVAL;
    d->seq = 1;
    d->block_size = block_size;
    return 0;
}

void feed_dec_free(struct feed_dec *d)
{
    free(d->arena);
    free(d->block);
    d->arena = d->block = NULL;
    d->arena_cap = d->arena_used = d->block_cap = 0;
}

const char *feed_dec_error(const struct feed_dec *d)
{
    return d->why;
}

/* Make the stream dead: what (not d->why) goes to d->why, prefixed with the frame it was in. */
static int fail(struct feed_dec *d, uint8_t type, uint64_t seq, const char *what)
{
    snprintf(d->why, sizeof(d->why), "%.16s frame %" PRIu64 ": %.127s", feed_type_name(type), seq,
             what);
    d->err = -EBADMSG;
    return d->err;
}

int feed_get(struct feed_dec *d, struct buf *rx, struct feed_msg *m)
{
    const struct feed_ops *o;
    const uint8_t *p, *f;
    struct buf pl;
    uint32_t len;
    uint64_t seq;
    uint8_t type;
    char what[sizeof(d->why)];
    int r;

    if (d->err)
        return d->err;
    if (buf_avail(rx) < LEN_BYTES)
        return -EAGAIN; /* and no buf_ptr: an empty rx's data may be NULL */
    p = buf_ptr(rx);
    len = be32(p);
    if (len < FEED_FRAME_MIN || len > FEED_FRAME_MAX) {
        snprintf(d->why, sizeof(d->why), "frame %" PRIu64 ": length %" PRIu32 " out of range",
                 d->seq, len);
        return d->err = -EBADMSG;
    }
    if (buf_avail(rx) - LEN_BYTES < len)
        return -EAGAIN;
    f = p + LEN_BYTES;
    type = f[0];
    seq = be64(f + 1);
    if (frame_check(f, len - CHECK_BYTES) != be32(f + len - CHECK_BYTES))
        return fail(d, type, d->seq, "bad check");
    if (seq != d->seq) {
        snprintf(what, sizeof(what), "seq %" PRIu64 ", not %" PRIu64, seq, d->seq);
        return fail(d, type, d->seq, what);
    }
    if ((o = ops_of(type)) == NULL) {
        snprintf(what, sizeof(what), "unknown type %u", type);
        return fail(d, type, seq, what);
    }
    if (d->arena_cap < len) {
        uint8_t *a = realloc(d->arena, len);
        if (a == NULL)
            return -ENOMEM;
        d->arena = a;
        d->arena_cap = len;
    }
    d->arena_used = 0;
    memset(m, 0, sizeof(*m));
    m->type = (enum feed_type)type;
    m->seq = seq;
    buf_view(&pl, f + HEAD_BYTES, len - FEED_FRAME_MIN);
    d->why[0] = '\0';
    r = o->get(d, &pl, m);
    if (r == -ENOMEM) {
        d->why[0] = '\0';
        return r;
    }
    if (r != 0) {
        snprintf(what, sizeof(what), "%s", d->why[0] ? d->why : "short payload");
        return fail(d, type, seq, what);
    }
    if (buf_avail(&pl) != 0) {
        snprintf(what, sizeof(what), "%zu bytes left over", buf_avail(&pl));
        return fail(d, type, seq, what);
    }
    buf_consume(rx, LEN_BYTES + (size_t)len);
    d->seq++;
    return 0;
}
