/* fuzz_feed_codec.c - libFuzzer target for the change feed's frames (fsync/feed_codec.h).
 *
 * The input is a byte stream as a peer would send it. It is decoded twice per block size: from a
 * read-only view of the whole input, and fed in chunks into an owned buffer (partial frames,
 * compaction, growth); both must end the same way after the same frames. Since random bytes
 * rarely carry a right check, each pass runs again on a copy whose checks are made right, so
 * that the payload parsers get the mutations. After every call the contract of feed_get is
 * checked (what -EAGAIN and -EBADMSG leave, a dead decoder staying dead), and every decoded frame
 * is encoded again: the same bytes where the encoding is canonical (everything but lz4), and a
 * decoding of the re-encoding that gives the same fields, with either codec for DATA.
 */
#include "feed_codec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void same_str(const char *a, const char *b)
{
    CHECK(a != NULL && b != NULL);
    CHECK(strcmp(a, b) == 0);
}

static void same_msg(const struct feed_msg *a, const struct feed_msg *b)
{
    CHECK(a->type == b->type);
    CHECK(a->seq == b->seq);
    switch (a->type) {
    case FEED_HELLO:
        CHECK(a->u.hello.version == b->u.hello.version);
        CHECK(a->u.hello.block_size == b->u.hello.block_size);
        CHECK(a->u.hello.flags == b->u.hello.flags);
        same_str(a->u.hello.root, b->u.hello.root);
        same_str(a->u.hello.software, b->u.hello.software);
        break;
    case FEED_SNAP_BEGIN:
    case FEED_SNAP_END:
    case FEED_BATCH_END:
    case FEED_ACK:
    case FEED_CLIENT:
    case FEED_OWN:
        CHECK(a->u.generation == b->u.generation);
        break;
    case FEED_ENTRY: {
        const struct feed_entry *x = &a->u.entry, *y = &b->u.entry;
        same_str(x->path, y->path);
        CHECK(x->mode == y->mode && x->uid == y->uid && x->gid == y->gid);
        CHECK(x->nlink == y->nlink && x->size == y->size);
        CHECK(x->atime_ns == y->atime_ns && x->mtime_ns == y->mtime_ns);
        CHECK(x->ctime_ns == y->ctime_ns && x->dev == y->dev && x->ino == y->ino);
        CHECK(x->version == y->version);
        same_str(x->link, y->link);
        break;
    }
    case FEED_REMOVE:
    case FEED_HOLD:
    case FEED_DROP:
        same_str(a->u.path.path, b->u.path.path);
        break;
    case FEED_RENAME:
        same_str(a->u.rename.from, b->u.rename.from);
        same_str(a->u.rename.to, b->u.rename.to);
        break;
    case FEED_HASHES:
        same_str(a->u.hashes.path, b->u.hashes.path);
        CHECK(a->u.hashes.version == b->u.hashes.version);
        CHECK(a->u.hashes.first == b->u.hashes.first);
        CHECK(a->u.hashes.n == b->u.hashes.n);
        CHECK(a->u.hashes.n == 0 || memcmp(a->u.hashes.hashes, b->u.hashes.hashes,
                                           (size_t)a->u.hashes.n * FEED_HASH_LEN) == 0);
        break;
    case FEED_DATA:
        same_str(a->u.data.path, b->u.data.path);
        CHECK(a->u.data.version == b->u.data.version);
        CHECK(a->u.data.block == b->u.data.block);
        CHECK(a->u.data.len == b->u.data.len);
        CHECK(a->u.data.len == 0 || memcmp(a->u.data.bytes, b->u.data.bytes, a->u.data.len) == 0);
        break;
    case FEED_ERROR:
        CHECK(a->u.error.err == b->u.error.err);
        same_str(a->u.error.message, b->u.error.message);
        break;
    default:
        CHECK(!"a decoded frame of an unknown type");
    }
}

/* What every decoded frame must satisfy on its own. */
static void check_fields(const struct feed_msg *m, uint32_t block_size)
{
    switch (m->type) {
    case FEED_ENTRY:
        CHECK(feed_path_ok(m->u.entry.path, strlen(m->u.entry.path)));
        CHECK(strlen(m->u.entry.link) <= FEED_STRING_MAX);
        break;
    case FEED_REMOVE:
    case FEED_HOLD:
    case FEED_DROP:
        CHECK(feed_path_ok(m->u.path.path, strlen(m->u.path.path)));
        break;
    case FEED_RENAME:
        CHECK(feed_path_ok(m->u.rename.from, strlen(m->u.rename.from)));
        CHECK(feed_path_ok(m->u.rename.to, strlen(m->u.rename.to)));
        break;
    case FEED_DATA:
        CHECK(m->u.data.len <= block_size);
        CHECK(m->u.data.codec == FEED_CODEC_RAW || m->u.data.codec == FEED_CODEC_LZ4);
        break;
    default:
        break;
    }
}

/* Encode m again (as the frame of the same seq) with 'codec' for DATA; returns the frame in out. */
static void reencode(const struct feed_msg *m, uint8_t codec, struct buf *out)
{
    struct feed_msg c = *m;
    struct feed_enc e;
    int r;

    feed_enc_init(&e);
    e.seq = m->seq;
    if (c.type == FEED_DATA)
        c.u.data.codec = codec;
    buf_init(out, 4 + (size_t)FEED_FRAME_MAX);
    r = feed_put(&e, out, &c);
    if (r != 0) {
        fprintf(stderr, "re-encoding a decoded %s: got %d\n", feed_type_name(m->type), r);
        abort();
    }
    CHECK(e.seq == m->seq + 1);
}

/* The re-encoding decodes (by a decoder expecting that seq) to the same fields. */
static void redecode(const struct feed_msg *m, uint32_t block_size, struct buf *out)
{
    struct feed_dec d;
    struct feed_msg back;
    int r;

    CHECK(feed_dec_init(&d, block_size) == 0);
    d.seq = m->seq;
    r = feed_get(&d, out, &back);
    if (r != 0) {
        fprintf(stderr, "decoding a re-encoded %s: got %d (%s)\n", feed_type_name(m->type), r,
                feed_dec_error(&d));
        abort();
    }
    CHECK(buf_avail(out) == 0);
    same_msg(m, &back);
    feed_dec_free(&d);
}

/* The size of DATA's frame (with its u32 len) when its bytes go raw. */
static size_t raw_data_frame(const struct feed_msg *m)
{
    return 4 + FEED_FRAME_MIN + 4 + strlen(m->u.data.path) + 8 + 8 + 4 + 1 + 4 + m->u.data.len;
}

/* A decoded frame, whose wire bytes were wire[0..n). */
static void check_frame(const struct feed_msg *m, uint32_t block_size, const uint8_t *wire,
                        size_t n)
{
    bool lz4 = m->type == FEED_DATA && m->u.data.codec == FEED_CODEC_LZ4;
    struct buf out;

    CHECK(n >= 4 + FEED_FRAME_MIN && be32(wire) == n - 4);
    check_fields(m, block_size);
    reencode(m, lz4 ? FEED_CODEC_LZ4 : FEED_CODEC_RAW, &out);
    if (!lz4) { /* canonical: the very same bytes */
        CHECK(buf_avail(&out) == n);
        CHECK(memcmp(buf_ptr(&out), wire, n) == 0);
    } else { /* lz4 again (maybe not the same), or raw: never larger than raw */
        CHECK(buf_avail(&out) <= raw_data_frame(m));
    }
    redecode(m, block_size, &out);
    buf_free(&out);
    if (m->type == FEED_DATA) { /* and the other codec */
        reencode(m, lz4 ? FEED_CODEC_RAW : FEED_CODEC_LZ4, &out);
        if (lz4)
            CHECK(buf_avail(&out) == raw_data_frame(m));
        else
            CHECK(buf_avail(&out) <= n);
        redecode(m, block_size, &out);
        buf_free(&out);
    }
}

/* One feed_get, checked against its contract; returns its result. */
static int next_frame(struct feed_dec *d, struct buf *rx)
{
    size_t off = rx->off, len = rx->len, avail = buf_avail(rx);
    const uint8_t *p = avail ? buf_ptr(rx) : NULL;
    uint64_t seq = d->seq;
    struct feed_msg m;
    int r = feed_get(d, rx, &m);

    CHECK(r == 0 || r == -EAGAIN || r == -EBADMSG);
    if (r != 0) {
        CHECK(rx->off == off && rx->len == len);
        CHECK(d->seq == seq);
        if (r == -EAGAIN) {
            CHECK(d->err == 0 && feed_dec_error(d)[0] == '\0');
            CHECK(avail < 4 || avail - 4 < be32(p));
        } else {
            CHECK(feed_dec_error(d)[0] != '\0');
            CHECK(feed_get(d, rx, &m) == -EBADMSG); /* dead stays dead */
            CHECK(rx->off == off && rx->len == len);
        }
        return r;
    }
    CHECK(m.seq == seq && d->seq == seq + 1);
    CHECK(avail - buf_avail(rx) == 4 + (size_t)be32(p));
    check_frame(&m, d->block_size, p, avail - buf_avail(rx));
    return 0;
}

struct outcome {
    size_t frames;
    int last;
};

static struct outcome run_view(const uint8_t *data, size_t size, uint32_t block_size)
{
    struct outcome o = {0, 0};
    struct feed_dec d;
    struct buf rx;

    CHECK(feed_dec_init(&d, block_size) == 0);
    buf_view(&rx, data, size);
    while ((o.last = next_frame(&d, &rx)) == 0)
        o.frames++;
    feed_dec_free(&d);
    return o;
}

static struct outcome run_chunks(const uint8_t *data, size_t size, uint32_t block_size,
                                 size_t chunk)
{
    struct outcome o = {0, -EAGAIN};
    struct feed_dec d;
    struct buf rx;

    CHECK(feed_dec_init(&d, block_size) == 0);
    /* room for a partial frame plus one chunk: a put never fails */
    buf_init(&rx, 4 + (size_t)FEED_FRAME_MAX + chunk);
    for (size_t i = 0; i < size && o.last == -EAGAIN; i += chunk) {
        size_t n = size - i < chunk ? size - i : chunk;
        CHECK(buf_put(&rx, data + i, n) == 0);
        while ((o.last = next_frame(&d, &rx)) == 0)
            o.frames++;
    }
    buf_free(&rx);
    feed_dec_free(&d);
    return o;
}

/* Make the check of every whole frame right, walking the lengths as the decoder would. */
static void fix_checks(uint8_t *p, size_t size)
{
    size_t off = 0;

    while (size - off >= 4) {
        uint32_t len = be32(p + off), c;
        if (len < FEED_FRAME_MIN || len > FEED_FRAME_MAX || size - off - 4 < len)
            break;
        c = (uint32_t)XXH3_64bits(p + off + 4, len - 4);
        p[off + len] = c >> 24;
        p[off + len + 1] = c >> 16;
        p[off + len + 2] = c >> 8;
        p[off + len + 3] = c;
        off += 4 + (size_t)len;
    }
}

static void run(const uint8_t *data, size_t size, size_t chunk)
{
    static const uint32_t block_sizes[] = {512, 65536};

    for (size_t i = 0; i < sizeof(block_sizes) / sizeof(block_sizes[0]); i++) {
        struct outcome v = run_view(data, size, block_sizes[i]);
        struct outcome c = run_chunks(data, size, block_sizes[i], chunk);

        if (v.frames != c.frames || v.last != c.last) {
            fprintf(stderr, "whole: %zu frames then %d; in chunks of %zu: %zu frames then %d\n",
                    v.frames, v.last, chunk, c.frames, c.last);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t chunk = 1 + size % 61;
    uint8_t *fixed;

    run(data, size, chunk);
    if ((fixed = malloc(size ? size : 1)) == NULL)
        return 0;
    if (size)
        memcpy(fixed, data, size);
    fix_checks(fixed, size);
    run(fixed, size, chunk);
    free(fixed);
    return 0;
}
