/* test_feed_codec.c - unit tests of the change feed's frames (fsync/feed_codec.h). */
#include "feed_codec.h"

#include <check.h>
#include <errno.h>
#include <lz4.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#define BLOCK    65536u /* the block size the decoders under test accept */
#define BUF_MAX  (2 * (size_t)FEED_FRAME_MAX)
#define MAX_MSGS 32

/* ---- helpers ---- */

static void dec_init(struct feed_dec *d, uint32_t block_size)
{
    ck_assert_int_eq(feed_dec_init(d, block_size), 0);
}

/* A frame put together by hand, to make frames the encoder refuses to: start one with its type
 * and seq, put any payload, then end it (length and a correct check). */
static size_t raw_begin(struct buf *b, uint8_t type, uint64_t seq)
{
    size_t pos = b->len;

    ck_assert_int_eq(buf_put_u32(b, 0), 0);
    ck_assert_int_eq(buf_put_u8(b, type), 0);
    ck_assert_int_eq(buf_put_u64(b, seq), 0);
    return pos;
}

static void raw_end(struct buf *b, size_t pos)
{
    uint32_t check = (uint32_t)XXH3_64bits(b->data + pos + 4, b->len - pos - 4);

    ck_assert_int_eq(buf_put_u32(b, check), 0);
    buf_poke_u32(b, pos, (uint32_t)(b->len - pos - 4));
}

/* A frame of seq 1 whose payload is the n bytes at p. */
static void raw_frame(struct buf *b, uint8_t type, const void *p, size_t n)
{
    size_t pos = raw_begin(b, type, 1);

    ck_assert_int_eq(buf_put(b, p, n), 0);
    raw_end(b, pos);
}

static void expect_get_ok(struct feed_dec *d, struct buf *rx, struct feed_msg *m, const char *what)
{
    int r = feed_get(d, rx, m);

    ck_assert_msg(r == 0, "%s: expected a frame, got %d (%s)", what, r, feed_dec_error(d));
}

/* The next frame is fatal for the reason 'want' (a part of feed_dec_error); nothing is consumed,
 * and the decoder stays failed. */
static void expect_fatal(struct feed_dec *d, struct buf *rx, const char *want, const char *what)
{
    size_t off = rx->off, len = rx->len;
    struct feed_msg m;
    int r = feed_get(d, rx, &m);

    ck_assert_msg(r == -EBADMSG && strstr(feed_dec_error(d), want) != NULL,
                  "%s: expected -EBADMSG ('%s'), got %d ('%s')", what, want, r, feed_dec_error(d));
    ck_assert_msg(rx->off == off && rx->len == len,
                  "%s: expected nothing consumed (off %zu len %zu), got off %zu len %zu", what, off,
                  len, rx->off, rx->len);
    r = feed_get(d, rx, &m);
    ck_assert_msg(r == -EBADMSG, "%s: expected the decoder to stay failed, got %d", what, r);
}

/* Decode the one frame in b with a fresh decoder and expect it fatal for 'want'. */
static void expect_frame_fatal(struct buf *b, uint32_t block_size, const char *want,
                               const char *what)
{
    struct feed_dec d;

    dec_init(&d, block_size);
    expect_fatal(&d, b, want, what);
    feed_dec_free(&d);
}

static void expect_str(const char *want, const char *got, const char *what)
{
    ck_assert_msg(got != NULL && strcmp(want, got) == 0, "%s: expected '%s', got '%s'", what, want,
                  got ? got : "(null)");
}

/* Every field of got against want; DATA's codec only where want is raw (lz4 is the encoder's
 * choice). */
static void expect_msg_eq(const struct feed_msg *want, const struct feed_msg *got, const char *what)
{
    ck_assert_msg(got->type == want->type, "%s: expected type %s, got %s", what,
                  feed_type_name(want->type), feed_type_name(got->type));
    switch (want->type) {
    case FEED_HELLO:
        ck_assert_uint_eq(got->u.hello.version, want->u.hello.version);
        ck_assert_uint_eq(got->u.hello.block_size, want->u.hello.block_size);
        ck_assert_uint_eq(got->u.hello.flags, want->u.hello.flags);
        expect_str(want->u.hello.root, got->u.hello.root, what);
        expect_str(want->u.hello.software, got->u.hello.software, what);
        break;
    case FEED_SNAP_BEGIN:
    case FEED_BATCH_END:
    case FEED_ACK:
    case FEED_CLIENT:
    case FEED_OWN:
        ck_assert_uint_eq(got->u.generation, want->u.generation);
        break;
    case FEED_SNAP_END:
        ck_assert_uint_eq(got->u.count, want->u.count);
        break;
    case FEED_ENTRY:
        expect_str(want->u.entry.path, got->u.entry.path, what);
        ck_assert_uint_eq(got->u.entry.mode, want->u.entry.mode);
        ck_assert_uint_eq(got->u.entry.uid, want->u.entry.uid);
        ck_assert_uint_eq(got->u.entry.gid, want->u.entry.gid);
        ck_assert_uint_eq(got->u.entry.nlink, want->u.entry.nlink);
        ck_assert_uint_eq(got->u.entry.size, want->u.entry.size);
        ck_assert_int_eq(got->u.entry.atime_ns, want->u.entry.atime_ns);
        ck_assert_int_eq(got->u.entry.mtime_ns, want->u.entry.mtime_ns);
        ck_assert_int_eq(got->u.entry.ctime_ns, want->u.entry.ctime_ns);
        ck_assert_uint_eq(got->u.entry.dev, want->u.entry.dev);
        ck_assert_uint_eq(got->u.entry.ino, want->u.entry.ino);
        ck_assert_uint_eq(got->u.entry.version, want->u.entry.version);
        expect_str(want->u.entry.link ? want->u.entry.link : "", got->u.entry.link, what);
        break;
    case FEED_REMOVE:
    case FEED_HOLD:
    case FEED_DROP:
        expect_str(want->u.path.path, got->u.path.path, what);
        break;
    case FEED_RENAME:
        expect_str(want->u.rename.from, got->u.rename.from, what);
        expect_str(want->u.rename.to, got->u.rename.to, what);
        break;
    case FEED_HASHES:
        expect_str(want->u.hashes.path, got->u.hashes.path, what);
        ck_assert_uint_eq(got->u.hashes.version, want->u.hashes.version);
        ck_assert_uint_eq(got->u.hashes.first, want->u.hashes.first);
        ck_assert_uint_eq(got->u.hashes.n, want->u.hashes.n);
        ck_assert_msg(want->u.hashes.n == 0 ||
                          memcmp(got->u.hashes.hashes, want->u.hashes.hashes,
                                 (size_t)want->u.hashes.n * FEED_HASH_LEN) == 0,
                      "%s: expected the hashes sent, got others", what);
        break;
    case FEED_DATA:
        expect_str(want->u.data.path, got->u.data.path, what);
        ck_assert_uint_eq(got->u.data.version, want->u.data.version);
        ck_assert_uint_eq(got->u.data.block, want->u.data.block);
        ck_assert_uint_eq(got->u.data.len, want->u.data.len);
        if (want->u.data.codec == FEED_CODEC_RAW)
            ck_assert_msg(got->u.data.codec == FEED_CODEC_RAW,
                          "%s: expected raw as asked, got codec %u", what, got->u.data.codec);
        ck_assert_msg(want->u.data.len == 0 ||
                          memcmp(got->u.data.bytes, want->u.data.bytes, want->u.data.len) == 0,
                      "%s: expected the block sent, got other bytes", what);
        break;
    case FEED_ERROR:
        ck_assert_uint_eq(got->u.error.err, want->u.error.err);
        expect_str(want->u.error.message, got->u.error.message, what);
        break;
    default:
        ck_abort_msg("%s: no comparison for type %d", what, want->type);
    }
}

/* Encode m alone (seq 1), decode it, compare; returns the frame's len field. */
static uint32_t roundtrip(const struct feed_msg *m, const char *what)
{
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg got;
    struct buf b;
    uint32_t len;
    int r;

    feed_enc_init(&e);
    dec_init(&d, BLOCK);
    buf_init(&b, BUF_MAX);
    r = feed_put(&e, &b, m);
    ck_assert_msg(r == 0, "%s: expected the put to succeed, got %d", what, r);
    len = (uint32_t)b.data[0] << 24 | (uint32_t)b.data[1] << 16 | (uint32_t)b.data[2] << 8 |
          b.data[3];
    ck_assert_uint_eq(buf_avail(&b), 4 + (size_t)len);
    expect_get_ok(&d, &b, &got, what);
    ck_assert_uint_eq(got.seq, 1);
    ck_assert_uint_eq(buf_avail(&b), 0);
    expect_msg_eq(m, &got, what);
    buf_free(&b);
    feed_dec_free(&d);
    return len;
}

/* The payload of a valid frame of m (without len, type, seq, check). */
static size_t payload_of(const struct feed_msg *m, uint8_t *out, size_t cap)
{
    struct feed_enc e;
    struct buf b;
    size_t n;

    feed_enc_init(&e);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put(&e, &b, m), 0);
    n = buf_avail(&b) - 4 - 9 - 4;
    ck_assert_uint_le(n, cap);
    memcpy(out, b.data + 13, n);
    buf_free(&b);
    return n;
}

static uint8_t sample_hashes[3 * FEED_HASH_LEN];
static uint8_t sample_block[300];

/* One message of each type, as a stream would carry them. */
static size_t sample_msgs(struct feed_msg *m)
{
    size_t n = 0;

    for (size_t i = 0; i < sizeof(sample_hashes); i++)
        sample_hashes[i] = (uint8_t)(i * 7 + 1);
    for (size_t i = 0; i < sizeof(sample_block); i++)
        sample_block[i] = (uint8_t) "abcabcabd"[i % 9];
    memset(m, 0, MAX_MSGS * sizeof(*m));
    m[n].type = FEED_HELLO;
    m[n].u.hello.version = FEED_VERSION;
    m[n].u.hello.block_size = BLOCK;
    m[n].u.hello.root = "/proj";
    m[n++].u.hello.software = "offload test";
    m[n].type = FEED_SNAP_BEGIN;
    m[n++].u.generation = 41;
    m[n].type = FEED_ENTRY;
    m[n].u.entry = (struct feed_entry){.path = "",
                                       .mode = S_IFDIR | 0755,
                                       .uid = 1000,
                                       .gid = 1000,
                                       .nlink = 3,
                                       .size = 4096,
                                       .atime_ns = 1,
                                       .mtime_ns = 2,
                                       .ctime_ns = 3,
                                       .dev = 0x801,
                                       .ino = 2,
                                       .version = 1,
                                       .link = ""};
    n++;
    m[n].type = FEED_ENTRY;
    m[n].u.entry = (struct feed_entry){.path = "src/main.c",
                                       .mode = S_IFREG | 0644,
                                       .uid = 0xfffffffeu,
                                       .gid = 0,
                                       .nlink = 1,
                                       .size = UINT64_MAX,
                                       .atime_ns = INT64_MIN,
                                       .mtime_ns = -1,
                                       .ctime_ns = INT64_MAX,
                                       .dev = UINT64_MAX,
                                       .ino = 0x0102030405060708ull,
                                       .version = 7,
                                       .link = ""};
    n++;
    m[n].type = FEED_ENTRY;
    m[n].u.entry = (struct feed_entry){.path = "src/link",
                                       .mode = S_IFLNK | 0777,
                                       .nlink = 1,
                                       .size = 7,
                                       .version = 1,
                                       .link = "../a b/c"};
    n++;
    m[n].type = FEED_SNAP_END;
    m[n++].u.count = 3;
    m[n].type = FEED_BATCH_END;
    m[n++].u.generation = 41;
    m[n].type = FEED_RENAME;
    m[n].u.rename.from = "src/old.c";
    m[n++].u.rename.to = "src/new name.c";
    m[n].type = FEED_REMOVE;
    m[n++].u.path.path = "build";
    m[n].type = FEED_HASHES;
    m[n].u.hashes.path = "src/main.c";
    m[n].u.hashes.version = 8;
    m[n].u.hashes.first = 0;
    m[n].u.hashes.n = 3;
    m[n++].u.hashes.hashes = sample_hashes;
    m[n].type = FEED_DATA;
    m[n].u.data.path = "src/main.c";
    m[n].u.data.version = 8;
    m[n].u.data.block = 2;
    m[n].u.data.len = sizeof(sample_block);
    m[n].u.data.codec = FEED_CODEC_LZ4;
    m[n++].u.data.bytes = sample_block;
    m[n].type = FEED_DATA;
    m[n].u.data.path = "src/main.c";
    m[n].u.data.version = 8;
    m[n].u.data.block = 1;
    m[n].u.data.len = 100;
    m[n].u.data.codec = FEED_CODEC_RAW;
    m[n++].u.data.bytes = sample_block;
    m[n].type = FEED_BATCH_END;
    m[n++].u.generation = 42;
    m[n].type = FEED_ACK;
    m[n++].u.generation = 42;
    m[n].type = FEED_HOLD;
    m[n++].u.path.path = "src/main.c";
    m[n].type = FEED_DROP;
    m[n++].u.path.path = "src/main.c";
    m[n].type = FEED_CLIENT;
    m[n++].u.generation = 0x0123456789abcdefULL;
    m[n].type = FEED_OWN;
    m[n++].u.generation = 1;
    m[n].type = FEED_ERROR;
    m[n].u.error.err = ENOENT;
    m[n++].u.error.message = "unknown root '/nope'";
    ck_assert_uint_le(n, MAX_MSGS);
    return n;
}

/* The sample messages as one stream; ends[i] is where frame i ends. */
static size_t sample_stream(struct buf *b, struct feed_msg *m, size_t *ends)
{
    struct feed_enc e;
    size_t n = sample_msgs(m);

    feed_enc_init(&e);
    buf_init(b, BUF_MAX);
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(feed_put(&e, b, &m[i]), 0);
        ends[i] = buf_avail(b);
    }
    return n;
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);

    ck_assert_ptr_nonnull(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* A path of exactly len bytes: components of 'comp' bytes ('a's) separated by '/', the last one
 * shorter or equal, so that only the total length can be wrong with it. */
static char *long_path(size_t len, size_t comp)
{
    char *s = repeat('a', len);
    size_t last = 0;

    for (size_t i = comp; i < len - 1; i += comp + 1) {
        s[i] = '/';
        last = i + 1;
    }
    ck_assert_msg(len - last <= comp, "long_path(%zu, %zu): last component of %zu bytes", len, comp,
                  len - last);
    return s;
}

/* ---- round trips ---- */

START_TEST(test_hello_roundtrip)
{
    uint32_t len;
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;

    feed_enc_init(&e);
    dec_init(&d, BLOCK);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put_hello(&e, &b, 65536, 0, "/proj", "offload 0.1"), 0);
    len = (uint32_t)buf_avail(&b) - 4;
    expect_get_ok(&d, &b, &m, "hello");
    ck_assert_int_eq(m.type, FEED_HELLO);
    ck_assert_uint_eq(m.seq, 1);
    ck_assert_uint_eq(m.u.hello.version, FEED_VERSION);
    ck_assert_uint_eq(m.u.hello.block_size, 65536);
    ck_assert_uint_eq(m.u.hello.flags, 0);
    expect_str("/proj", m.u.hello.root, "root");
    expect_str("offload 0.1", m.u.hello.software, "software");
    ck_assert_uint_eq(len, 13 + 12 + 4 + 5 + 4 + 11);
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_hello_other_version_and_flags_pass_through)
{
    struct feed_msg m = {.type = FEED_HELLO};

    /* judging them is the conversation's: it answers ERROR */
    m.u.hello.version = 2;
    m.u.hello.block_size = 0;
    m.u.hello.flags = 0xffffffffu;
    m.u.hello.root = "";
    m.u.hello.software = "";
    roundtrip(&m, "hello of version 2");
}
END_TEST

START_TEST(test_u64_messages_roundtrip)
{
    static const enum feed_type types[] = {FEED_SNAP_BEGIN, FEED_SNAP_END, FEED_BATCH_END,
                                           FEED_ACK};
    static const uint64_t values[] = {0, 1, 0x0102030405060708ull, UINT64_MAX};

    for (size_t t = 0; t < 4; t++)
        for (size_t v = 0; v < 4; v++) {
            struct feed_msg m = {.type = types[t]};
            char what[64];

            m.u.generation = values[v];
            snprintf(what, sizeof(what), "%s %zu", feed_type_name(types[t]), v);
            ck_assert_uint_eq(roundtrip(&m, what), 13 + 8);
        }
}
END_TEST

START_TEST(test_u64msg_shorthand_encodes_same_as_put)
{
    struct feed_enc e1, e2;
    struct feed_msg m = {.type = FEED_ACK};
    struct buf a, b;

    feed_enc_init(&e1);
    feed_enc_init(&e2);
    buf_init(&a, BUF_MAX);
    buf_init(&b, BUF_MAX);
    m.u.generation = 99;
    ck_assert_int_eq(feed_put(&e1, &a, &m), 0);
    ck_assert_int_eq(feed_put_u64msg(&e2, &b, FEED_ACK, 99), 0);
    ck_assert_uint_eq(buf_avail(&a), buf_avail(&b));
    ck_assert_msg(memcmp(buf_ptr(&a), buf_ptr(&b), buf_avail(&a)) == 0,
                  "expected the same bytes from feed_put and feed_put_u64msg");
    buf_free(&a);
    buf_free(&b);
}
END_TEST

START_TEST(test_entry_roundtrip_all_fields)
{
    struct feed_msg m[MAX_MSGS];

    sample_msgs(m);
    ck_assert_int_eq(m[3].type, FEED_ENTRY); /* the file with extreme values */
    roundtrip(&m[3], "entry of a file");
}
END_TEST

START_TEST(test_entry_symlink_roundtrip)
{
    struct feed_msg m[MAX_MSGS];

    sample_msgs(m);
    ck_assert_int_eq(m[4].type, FEED_ENTRY);
    ck_assert(S_ISLNK(m[4].u.entry.mode));
    roundtrip(&m[4], "entry of a symlink");
}
END_TEST

START_TEST(test_entry_root_is_empty_path)
{
    struct feed_msg m[MAX_MSGS];

    sample_msgs(m);
    ck_assert_str_eq(m[2].u.entry.path, "");
    roundtrip(&m[2], "entry of the root");
}
END_TEST

START_TEST(test_entry_null_link_is_empty)
{
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg m;
    struct feed_entry en = {.path = "f", .mode = S_IFREG | 0600, .link = NULL};
    struct buf b;

    feed_enc_init(&e);
    dec_init(&d, BLOCK);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put_entry(&e, &b, &en), 0);
    expect_get_ok(&d, &b, &m, "entry with a NULL link");
    expect_str("", m.u.entry.link, "link");
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_path_messages_roundtrip)
{
    static const enum feed_type types[] = {FEED_REMOVE, FEED_HOLD, FEED_DROP};

    for (size_t t = 0; t < 3; t++) {
        struct feed_msg m = {.type = types[t]};

        m.u.path.path = "dir/sub dir/file.txt";
        roundtrip(&m, feed_type_name(types[t]));
    }
}
END_TEST

START_TEST(test_rename_roundtrip)
{
    struct feed_msg m = {.type = FEED_RENAME};

    m.u.rename.from = "a/b";
    m.u.rename.to = "c/d/e";
    roundtrip(&m, "rename");
}
END_TEST

START_TEST(test_hashes_roundtrip)
{
    struct feed_msg m[MAX_MSGS];

    sample_msgs(m);
    ck_assert_int_eq(m[9].type, FEED_HASHES);
    m[9].u.hashes.first = UINT64_MAX - 3;
    roundtrip(&m[9], "hashes");
}
END_TEST

START_TEST(test_hashes_empty_roundtrip)
{
    struct feed_msg m = {.type = FEED_HASHES};

    m.u.hashes.path = "empty";
    m.u.hashes.version = 3;
    m.u.hashes.n = 0;
    m.u.hashes.hashes = NULL;
    ck_assert_uint_eq(roundtrip(&m, "hashes of an empty file"), 13 + 4 + 5 + 8 + 8 + 4);
}
END_TEST

START_TEST(test_hashes_max_fills_one_frame)
{
    /* 13 + 24 + 11 is a multiple of 16: the largest frame is exactly FEED_FRAME_MAX */
    const char *path = "abcdefghijk";
    uint32_t n = feed_hashes_max(strlen(path));
    uint8_t *h = calloc(n + 1, FEED_HASH_LEN);
    struct feed_enc e;
    struct feed_msg m = {.type = FEED_HASHES};
    struct buf b;

    ck_assert_ptr_nonnull(h);
    h[(size_t)n * FEED_HASH_LEN - 1] = 0x5a;
    m.u.hashes.path = path;
    m.u.hashes.n = n;
    m.u.hashes.hashes = h;
    ck_assert_uint_eq(roundtrip(&m, "the most hashes"), FEED_FRAME_MAX);

    feed_enc_init(&e);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put_hashes(&e, &b, path, 1, 0, n + 1, h), -EMSGSIZE);
    ck_assert_uint_eq(buf_avail(&b), 0);
    ck_assert_uint_eq(e.seq, 1);
    ck_assert_uint_eq(feed_hashes_max(FEED_STRING_MAX + 1), 0);
    buf_free(&b);
    free(h);
}
END_TEST

START_TEST(test_data_raw_when_not_asked_to_compress)
{
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg m;
    uint8_t zero[4096] = {0};
    struct buf b;

    feed_enc_init(&e);
    dec_init(&d, BLOCK);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put_data(&e, &b, "z", 1, 0, zero, sizeof(zero), false), 0);
    ck_assert_uint_ge(buf_avail(&b), sizeof(zero));
    expect_get_ok(&d, &b, &m, "raw data");
    ck_assert_uint_eq(m.u.data.codec, FEED_CODEC_RAW);
    ck_assert_uint_eq(m.u.data.len, sizeof(zero));
    ck_assert_msg(memcmp(m.u.data.bytes, zero, sizeof(zero)) == 0, "expected the zero block back");
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_data_roundtrip_fields)
{
    struct feed_msg m[MAX_MSGS];

    sample_msgs(m);
    ck_assert_int_eq(m[10].type, FEED_DATA);
    m[10].u.data.version = UINT64_MAX;
    m[10].u.data.block = 0x0102030405060708ull;
    roundtrip(&m[10], "data, lz4 asked");
    ck_assert_int_eq(m[11].type, FEED_DATA);
    roundtrip(&m[11], "data, raw");
}
END_TEST

START_TEST(test_data_random_block_goes_raw)
{
    static uint8_t block[BLOCK];
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;
    uint64_t x = 0x9e3779b97f4a7c15ull;

    for (size_t i = 0; i < sizeof(block); i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        block[i] = (uint8_t)(x >> 32);
    }
    feed_enc_init(&e);
    dec_init(&d, BLOCK);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put_data(&e, &b, "r", 1, 0, block, sizeof(block), true), 0);
    expect_get_ok(&d, &b, &m, "random block");
    ck_assert_msg(m.u.data.codec == FEED_CODEC_RAW,
                  "incompressible block: expected codec raw, got %u", m.u.data.codec);
    ck_assert_uint_eq(m.u.data.len, sizeof(block));
    ck_assert_msg(memcmp(m.u.data.bytes, block, sizeof(block)) == 0, "expected the block back");
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_data_small_incompressible_block_goes_raw)
{
    /* lz4 makes 17 bytes of these 16: not a saving */
    static const uint8_t block[16] = {0x3b, 0x91, 0x07, 0xe4, 0x5a, 0xc2, 0x18, 0x6f,
                                      0xd3, 0x2e, 0x84, 0xb9, 0x40, 0x75, 0xfa, 0x0c};
    struct feed_msg m = {.type = FEED_DATA};
    char z[64];

    ck_assert_int_ge(LZ4_compress_default((const char *)block, z, sizeof(block), sizeof(z)),
                     (int)sizeof(block));
    m.u.data.path = "s";
    m.u.data.len = sizeof(block);
    m.u.data.codec = FEED_CODEC_LZ4;
    m.u.data.bytes = block;
    ck_assert_uint_eq(roundtrip(&m, "16 incompressible bytes"),
                      13 + 4 + 1 + 8 + 8 + 4 + 1 + 4 + sizeof(block));
}
END_TEST

START_TEST(test_data_zero_block_goes_lz4_and_small)
{
    static uint8_t zero[BLOCK];
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;
    size_t wire;

    feed_enc_init(&e);
    dec_init(&d, BLOCK);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put_data(&e, &b, "z", 1, 0, zero, sizeof(zero), true), 0);
    wire = buf_avail(&b);
    ck_assert_msg(wire < 1024, "zero block: expected a frame under 1 KiB, got %zu bytes", wire);
    expect_get_ok(&d, &b, &m, "zero block");
    ck_assert_msg(m.u.data.codec == FEED_CODEC_LZ4, "zero block: expected codec lz4, got %u",
                  m.u.data.codec);
    ck_assert_uint_eq(m.u.data.len, sizeof(zero));
    ck_assert_msg(memcmp(m.u.data.bytes, zero, sizeof(zero)) == 0, "expected zeros back");
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_data_empty_and_one_byte_blocks_go_raw)
{
    for (uint32_t len = 0; len <= 1; len++) {
        struct feed_msg m = {.type = FEED_DATA};

        m.u.data.path = "tiny";
        m.u.data.len = len;
        m.u.data.codec = FEED_CODEC_LZ4;
        m.u.data.bytes = (const uint8_t *)"x";
        ck_assert_uint_eq(roundtrip(&m, "tiny block"), 13 + 4 + 4 + 8 + 8 + 4 + 1 + 4 + len);
    }
}
END_TEST

START_TEST(test_data_at_block_size_accepted)
{
    static uint8_t block[4096];
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;

    memset(block, 'q', sizeof(block));
    feed_enc_init(&e);
    dec_init(&d, sizeof(block));
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put_data(&e, &b, "q", 1, 0, block, sizeof(block), false), 0);
    ck_assert_int_eq(feed_put_data(&e, &b, "q", 1, 0, block, sizeof(block), true), 0);
    expect_get_ok(&d, &b, &m, "raw block of block_size");
    expect_get_ok(&d, &b, &m, "lz4 block of block_size");
    ck_assert_uint_eq(m.u.data.codec, FEED_CODEC_LZ4);
    ck_assert_uint_eq(m.u.data.len, sizeof(block));
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_error_roundtrip)
{
    struct feed_msg m = {.type = FEED_ERROR};

    m.u.error.err = EPROTO;
    m.u.error.message = "unsupported block size 512";
    roundtrip(&m, "error");
    m.u.error.message = "";
    roundtrip(&m, "error with no message");
}
END_TEST

/* ---- framing ---- */

START_TEST(test_frame_layout_matches_doc)
{
    uint8_t want[4 + 1 + 8 + 4 + 3 + 4] = {0, 0, 0, 20, FEED_REMOVE, 0, 0, 0,   0,   0,
                                           0, 0, 1, 0,  0,           0, 3, 'a', '/', 'b'};
    uint32_t check = (uint32_t)XXH3_64bits(want + 4, 1 + 8 + 4 + 3);
    struct feed_enc e;
    struct buf b;

    want[20] = check >> 24;
    want[21] = check >> 16;
    want[22] = check >> 8;
    want[23] = check;
    feed_enc_init(&e);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put_path(&e, &b, FEED_REMOVE, "a/b"), 0);
    ck_assert_uint_eq(buf_avail(&b), sizeof(want));
    for (size_t i = 0; i < sizeof(want); i++)
        ck_assert_msg(buf_ptr(&b)[i] == want[i], "byte %zu: expected 0x%02x, got 0x%02x", i,
                      want[i], buf_ptr(&b)[i]);
    buf_free(&b);
}
END_TEST

START_TEST(test_seq_counts_from_one)
{
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;

    feed_enc_init(&e);
    dec_init(&d, BLOCK);
    buf_init(&b, BUF_MAX);
    ck_assert_uint_eq(e.seq, 1);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(feed_put_u64msg(&e, &b, FEED_ACK, (uint64_t)i), 0);
    ck_assert_uint_eq(e.seq, 4);
    for (uint64_t i = 1; i <= 3; i++) {
        expect_get_ok(&d, &b, &m, "ack");
        ck_assert_uint_eq(m.seq, i);
        ck_assert_uint_eq(m.u.generation, i - 1);
    }
    ck_assert_uint_eq(d.seq, 4);
    ck_assert_int_eq(feed_get(&d, &b, &m), -EAGAIN);
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_stream_of_every_type_decodes_in_order)
{
    struct feed_msg want[MAX_MSGS], got;
    struct feed_dec d;
    size_t ends[MAX_MSGS], n;
    struct buf b;

    n = sample_stream(&b, want, ends);
    dec_init(&d, BLOCK);
    for (size_t i = 0; i < n; i++) {
        expect_get_ok(&d, &b, &got, feed_type_name(want[i].type));
        ck_assert_uint_eq(got.seq, i + 1);
        expect_msg_eq(&want[i], &got, feed_type_name(want[i].type));
    }
    ck_assert_int_eq(feed_get(&d, &b, &got), -EAGAIN);
    ck_assert_str_eq(feed_dec_error(&d), "");
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_stream_byte_by_byte_eagain_until_whole)
{
    struct feed_msg want[MAX_MSGS], got;
    struct feed_dec d;
    size_t ends[MAX_MSGS], n, next = 0;
    struct buf whole, rx;

    n = sample_stream(&whole, want, ends);
    dec_init(&d, BLOCK);
    buf_init(&rx, BUF_MAX);
    for (size_t i = 0; i < buf_avail(&whole); i++) {
        int r;

        ck_assert_int_eq(buf_put_u8(&rx, buf_ptr(&whole)[i]), 0);
        r = feed_get(&d, &rx, &got);
        if (i + 1 == ends[next]) {
            ck_assert_msg(r == 0, "byte %zu completes frame %zu: expected 0, got %d (%s)", i, next,
                          r, feed_dec_error(&d));
            expect_msg_eq(&want[next], &got, feed_type_name(want[next].type));
            next++;
        } else {
            ck_assert_msg(r == -EAGAIN, "byte %zu inside frame %zu: expected -EAGAIN, got %d", i,
                          next, r);
        }
    }
    ck_assert_uint_eq(next, n);
    buf_free(&rx);
    buf_free(&whole);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_stream_split_at_every_byte)
{
    struct feed_msg want[MAX_MSGS], got;
    struct feed_dec d;
    size_t ends[MAX_MSGS], n;
    struct buf whole, rx;

    n = sample_stream(&whole, want, ends);
    for (size_t cut = 0; cut <= buf_avail(&whole); cut++) {
        size_t next = 0;
        int r;

        dec_init(&d, BLOCK);
        buf_init(&rx, BUF_MAX);
        ck_assert_int_eq(buf_put(&rx, buf_ptr(&whole), cut), 0);
        while ((r = feed_get(&d, &rx, &got)) == 0) {
            ck_assert_msg(ends[next] <= cut, "cut at %zu: frame %zu decoded before its end %zu",
                          cut, next, ends[next]);
            expect_msg_eq(&want[next], &got, "before the cut");
            next++;
        }
        ck_assert_msg(r == -EAGAIN, "cut at %zu: expected -EAGAIN, got %d (%s)", cut, r,
                      feed_dec_error(&d));
        ck_assert_msg(next == n || ends[next] > cut, "cut at %zu: frame %zu (to %zu) held back",
                      cut, next, ends[next]);
        ck_assert_int_eq(buf_put(&rx, buf_ptr(&whole) + cut, buf_avail(&whole) - cut), 0);
        while ((r = feed_get(&d, &rx, &got)) == 0) {
            expect_msg_eq(&want[next], &got, "after the cut");
            next++;
        }
        ck_assert_int_eq(r, -EAGAIN);
        ck_assert_msg(next == n, "cut at %zu: expected %zu frames, got %zu", cut, n, next);
        ck_assert_uint_eq(buf_avail(&rx), 0);
        buf_free(&rx);
        feed_dec_free(&d);
    }
    buf_free(&whole);
}
END_TEST

START_TEST(test_pointers_belong_to_decoder_not_rx)
{
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;

    feed_enc_init(&e);
    dec_init(&d, BLOCK);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put_rename(&e, &b, "from/here", "to/there"), 0);
    expect_get_ok(&d, &b, &m, "rename");
    memset(b.data, 0xee, b.cap); /* the caller reuses rx at once */
    expect_str("from/here", m.u.rename.from, "from after rx was overwritten");
    expect_str("to/there", m.u.rename.to, "to after rx was overwritten");
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

/* ---- encoder refusals ---- */

/* A put that must fail with 'want', appending nothing and leaving the seq. */
#define EXPECT_PUT_FAILS(want, call, b, e)                                                         \
    do {                                                                                           \
        size_t before_ = buf_avail(b);                                                             \
        uint64_t seq_ = (e)->seq;                                                                  \
        int r_ = (call);                                                                           \
        ck_assert_msg(r_ == (want), "%s: expected %d, got %d", #call, want, r_);                   \
        ck_assert_msg(buf_avail(b) == before_, "%s: expected nothing appended, got %zu bytes",     \
                      #call, buf_avail(b) - before_);                                              \
        ck_assert_uint_eq((e)->seq, seq_);                                                         \
    } while (0)

START_TEST(test_put_over_buffer_max_appends_nothing)
{
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;

    feed_enc_init(&e);
    buf_init(&b, 30);
    ck_assert_int_eq(feed_put_u64msg(&e, &b, FEED_ACK, 5), 0); /* 25 bytes */
    EXPECT_PUT_FAILS(-EMSGSIZE, feed_put_u64msg(&e, &b, FEED_ACK, 6), &b, &e);
    EXPECT_PUT_FAILS(-EMSGSIZE, feed_put_path(&e, &b, FEED_HOLD, "x"), &b, &e);
    dec_init(&d, BLOCK);
    expect_get_ok(&d, &b, &m, "the frame before the failed puts");
    ck_assert_uint_eq(m.u.generation, 5);
    ck_assert_int_eq(feed_put_u64msg(&e, &b, FEED_ACK, 7), 0);
    expect_get_ok(&d, &b, &m, "the frame after the failed puts");
    ck_assert_uint_eq(m.seq, 2);
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_put_refuses_unclean_paths)
{
    static const char *bad[] = {"/a", "a/", "/", "a//b", ".", "..", "a/./b", "a/../b", "../a"};
    struct feed_entry en = {.mode = S_IFREG};
    struct feed_enc e;
    struct buf b;
    uint8_t x = 0;

    feed_enc_init(&e);
    buf_init(&b, BUF_MAX);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        en.path = bad[i];
        EXPECT_PUT_FAILS(-EINVAL, feed_put_entry(&e, &b, &en), &b, &e);
        EXPECT_PUT_FAILS(-EINVAL, feed_put_path(&e, &b, FEED_REMOVE, bad[i]), &b, &e);
        EXPECT_PUT_FAILS(-EINVAL, feed_put_rename(&e, &b, bad[i], "ok"), &b, &e);
        EXPECT_PUT_FAILS(-EINVAL, feed_put_rename(&e, &b, "ok", bad[i]), &b, &e);
        EXPECT_PUT_FAILS(-EINVAL, feed_put_hashes(&e, &b, bad[i], 1, 0, 0, NULL), &b, &e);
        EXPECT_PUT_FAILS(-EINVAL, feed_put_data(&e, &b, bad[i], 1, 0, &x, 1, false), &b, &e);
    }
    EXPECT_PUT_FAILS(-EINVAL, feed_put_path(&e, &b, FEED_DROP, NULL), &b, &e);
    buf_free(&b);
}
END_TEST

START_TEST(test_put_refuses_link_on_non_symlink)
{
    struct feed_entry en = {.path = "f", .mode = S_IFREG | 0644, .link = "target"};
    struct feed_enc e;
    struct buf b;

    feed_enc_init(&e);
    buf_init(&b, BUF_MAX);
    EXPECT_PUT_FAILS(-EINVAL, feed_put_entry(&e, &b, &en), &b, &e);
    en.mode = S_IFLNK | 0777;
    ck_assert_int_eq(feed_put_entry(&e, &b, &en), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_put_refuses_wrong_type)
{
    struct feed_msg m = {.type = 0};
    struct feed_enc e;
    struct buf b;

    feed_enc_init(&e);
    buf_init(&b, BUF_MAX);
    EXPECT_PUT_FAILS(-EINVAL, feed_put_u64msg(&e, &b, FEED_REMOVE, 1), &b, &e);
    EXPECT_PUT_FAILS(-EINVAL, feed_put_path(&e, &b, FEED_ACK, "a"), &b, &e);
    EXPECT_PUT_FAILS(-EINVAL, feed_put(&e, &b, &m), &b, &e);
    m.type = FEED_OWN + 1;
    EXPECT_PUT_FAILS(-EINVAL, feed_put(&e, &b, &m), &b, &e);
    m.type = (enum feed_type)255;
    EXPECT_PUT_FAILS(-EINVAL, feed_put(&e, &b, &m), &b, &e);
    buf_free(&b);
}
END_TEST

START_TEST(test_put_refuses_over_long_string)
{
    char *s = repeat('s', FEED_STRING_MAX + 1);
    struct feed_entry en = {.path = "l", .mode = S_IFLNK | 0777, .link = s};
    struct feed_enc e;
    struct buf b;

    feed_enc_init(&e);
    buf_init(&b, BUF_MAX);
    EXPECT_PUT_FAILS(-EINVAL, feed_put_hello(&e, &b, BLOCK, 0, s, "sw"), &b, &e);
    EXPECT_PUT_FAILS(-EINVAL, feed_put_hello(&e, &b, BLOCK, 0, "/r", s), &b, &e);
    EXPECT_PUT_FAILS(-EINVAL, feed_put_entry(&e, &b, &en), &b, &e);
    EXPECT_PUT_FAILS(-EINVAL, feed_put_error(&e, &b, EIO, s), &b, &e);
    EXPECT_PUT_FAILS(-EINVAL, feed_put_hello(&e, &b, BLOCK, 0, NULL, "sw"), &b, &e);
    EXPECT_PUT_FAILS(-EINVAL, feed_put_error(&e, &b, EIO, NULL), &b, &e);
    s[FEED_STRING_MAX] = '\0'; /* at the limit: accepted */
    ck_assert_int_eq(feed_put_error(&e, &b, EIO, s), 0);
    ck_assert_int_eq(feed_put_entry(&e, &b, &en), 0);
    buf_free(&b);
    free(s);
}
END_TEST

START_TEST(test_put_refuses_bad_data_arguments)
{
    struct feed_msg m = {.type = FEED_DATA};
    struct feed_enc e;
    struct buf b;
    uint8_t x = 0;

    feed_enc_init(&e);
    buf_init(&b, BUF_MAX);
    EXPECT_PUT_FAILS(-EINVAL, feed_put_data(&e, &b, "d", 1, 0, NULL, 1, true), &b, &e);
    EXPECT_PUT_FAILS(-EINVAL, feed_put_data(&e, &b, "d", 1, 0, &x, FEED_BLOCK_MAX + 1, true), &b,
                     &e);
    EXPECT_PUT_FAILS(-EINVAL, feed_put_hashes(&e, &b, "d", 1, 0, 1, NULL), &b, &e);
    m.u.data.path = "d";
    m.u.data.len = 1;
    m.u.data.bytes = &x;
    m.u.data.codec = 2;
    EXPECT_PUT_FAILS(-EINVAL, feed_put(&e, &b, &m), &b, &e);
    buf_free(&b);
}
END_TEST

/* ---- paths ---- */

START_TEST(test_path_ok_accepts_clean_paths)
{
    static const char *good[] = {"", "a", "a/b/c", "...", ".a", "a.", "..a", "a/.b/c..", "a b/c"};
    char *name = repeat('n', NAME_MAX);
    char *path = long_path(FEED_STRING_MAX, NAME_MAX);

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        ck_assert_msg(feed_path_ok(good[i], strlen(good[i])), "'%s': expected clean", good[i]);
    ck_assert_msg(feed_path_ok(name, NAME_MAX), "a component of NAME_MAX bytes: expected clean");
    ck_assert_msg(feed_path_ok(path, FEED_STRING_MAX),
                  "a path of PATH_MAX - 1 bytes: expected clean");
    free(name);
    free(path);
}
END_TEST

START_TEST(test_path_ok_refuses_each_kind)
{
    static const char *bad[] = {"/a",  "a/",    "/",      "a//b", ".",    "..",
                                "a/.", "a/./b", "a/../b", "../a", "a/..", "./a"};
    char *name = repeat('n', NAME_MAX + 1);
    char *path = long_path(FEED_STRING_MAX + 1, 200);

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(!feed_path_ok(bad[i], strlen(bad[i])), "'%s': expected refused", bad[i]);
    ck_assert_msg(!feed_path_ok("a\0b", 3), "a NUL inside: expected refused");
    ck_assert_msg(!feed_path_ok("ab\0", 3), "a NUL at the end: expected refused");
    ck_assert_msg(!feed_path_ok(name, NAME_MAX + 1), "a component over NAME_MAX: expected refused");
    ck_assert_msg(!feed_path_ok(path, FEED_STRING_MAX + 1), "a path over PATH_MAX - 1: refused");
    free(name);
    free(path);
}
END_TEST

/* ---- decoder refusals: framing ---- */

START_TEST(test_get_truncated_frame_is_eagain)
{
    struct feed_msg want[MAX_MSGS], got;
    struct feed_dec d;
    struct buf b, rx;
    size_t ends[MAX_MSGS];

    sample_stream(&b, want, ends);
    dec_init(&d, BLOCK);
    for (size_t n = 0; n < ends[0]; n++) {
        buf_view(&rx, buf_ptr(&b), n);
        ck_assert_msg(feed_get(&d, &rx, &got) == -EAGAIN, "%zu of %zu bytes: expected -EAGAIN", n,
                      ends[0]);
        ck_assert_uint_eq(rx.off, 0);
        ck_assert_int_eq(d.err, 0);
        ck_assert_uint_eq(d.seq, 1);
    }
    buf_view(&rx, buf_ptr(&b), ends[0]);
    expect_get_ok(&d, &rx, &got, "the whole frame after its prefixes");
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_get_length_under_min_fatal)
{
    static const uint32_t lens[] = {0, 1, 12};
    struct feed_dec d;
    uint8_t in[4 + 12] = {0};
    struct buf rx;

    for (size_t i = 0; i < 3; i++) {
        in[3] = (uint8_t)lens[i];
        dec_init(&d, BLOCK);
        buf_view(&rx, in, 4); /* judged from the length alone */
        expect_fatal(&d, &rx, "out of range", "length under 13");
        feed_dec_free(&d);
        dec_init(&d, BLOCK);
        buf_view(&rx, in, sizeof(in));
        expect_fatal(&d, &rx, "out of range", "length under 13, bytes behind");
        feed_dec_free(&d);
    }
}
END_TEST

START_TEST(test_get_length_over_max_fatal)
{
    static const uint32_t lens[] = {FEED_FRAME_MAX + 1, 0x80000000u, 0xffffffffu};
    struct feed_dec d;
    uint8_t in[4];
    struct buf rx;

    for (size_t i = 0; i < 3; i++) {
        in[0] = lens[i] >> 24;
        in[1] = lens[i] >> 16;
        in[2] = lens[i] >> 8;
        in[3] = lens[i];
        dec_init(&d, BLOCK);
        buf_view(&rx, in, 4); /* not -EAGAIN: no use waiting for 4 MiB */
        expect_fatal(&d, &rx, "out of range", "length over FEED_FRAME_MAX");
        feed_dec_free(&d);
    }
}
END_TEST

START_TEST(test_get_shortest_frame_is_short_payload)
{
    struct buf b;

    for (uint8_t t = FEED_HELLO; t <= FEED_OWN; t++) {
        buf_init(&b, BUF_MAX);
        raw_frame(&b, t, NULL, 0); /* len 13: framing passes, no type has an empty payload */
        expect_frame_fatal(&b, BLOCK, "short payload", feed_type_name(t));
        buf_free(&b);
    }
}
END_TEST

START_TEST(test_get_flipped_byte_fails_check)
{
    struct feed_msg want[MAX_MSGS];
    struct feed_enc e;
    struct buf b, rx;
    uint8_t *copy;
    size_t n;

    sample_msgs(want);
    feed_enc_init(&e);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put(&e, &b, &want[3]), 0); /* an ENTRY: every kind of field */
    n = buf_avail(&b);
    copy = malloc(n);
    ck_assert_ptr_nonnull(copy);
    for (size_t i = 4; i < n; i++)
        for (int bit = 0; bit < 8; bit++) {
            char what[64];

            memcpy(copy, buf_ptr(&b), n);
            copy[i] ^= (uint8_t)(1u << bit);
            buf_view(&rx, copy, n);
            snprintf(what, sizeof(what), "byte %zu bit %d flipped", i, bit);
            expect_frame_fatal(&rx, BLOCK, "bad check", what);
        }
    free(copy);
    buf_free(&b);
}
END_TEST

START_TEST(test_get_flipped_length_byte_never_accepted)
{
    struct feed_msg want[MAX_MSGS], got;
    struct feed_enc e;
    struct feed_dec d;
    struct buf b, rx;
    uint8_t *copy;
    size_t n;

    sample_msgs(want);
    feed_enc_init(&e);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put(&e, &b, &want[3]), 0);
    ck_assert_int_eq(feed_put(&e, &b, &want[4]), 0); /* bytes behind, for a shorter length */
    n = buf_avail(&b);
    copy = malloc(n);
    ck_assert_ptr_nonnull(copy);
    for (size_t i = 0; i < 4; i++)
        for (int bit = 0; bit < 8; bit++) {
            int r;

            memcpy(copy, buf_ptr(&b), n);
            copy[i] ^= (uint8_t)(1u << bit);
            buf_view(&rx, copy, n);
            dec_init(&d, BLOCK);
            r = feed_get(&d, &rx, &got);
            ck_assert_msg(r == -EBADMSG || r == -EAGAIN,
                          "length byte %zu bit %d flipped: expected -EBADMSG or -EAGAIN, got %d", i,
                          bit, r);
            ck_assert_uint_eq(rx.off, 0);
            feed_dec_free(&d);
        }
    free(copy);
    buf_free(&b);
}
END_TEST

START_TEST(test_get_seq_gap_fatal)
{
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;

    feed_enc_init(&e);
    dec_init(&d, BLOCK);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put_u64msg(&e, &b, FEED_ACK, 1), 0);
    e.seq = 3;
    ck_assert_int_eq(feed_put_u64msg(&e, &b, FEED_ACK, 2), 0);
    expect_get_ok(&d, &b, &m, "frame 1");
    expect_fatal(&d, &b, "seq 3, not 2", "seq gap");
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_get_seq_repeat_fatal)
{
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;

    feed_enc_init(&e);
    dec_init(&d, BLOCK);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put_u64msg(&e, &b, FEED_ACK, 1), 0);
    e.seq = 1;
    ck_assert_int_eq(feed_put_u64msg(&e, &b, FEED_ACK, 1), 0);
    expect_get_ok(&d, &b, &m, "frame 1");
    expect_fatal(&d, &b, "seq 1, not 2", "seq repeat");
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_get_first_seq_not_one_fatal)
{
    static const uint64_t seqs[] = {0, 2, UINT64_MAX};
    struct feed_enc e;
    struct buf b;

    for (size_t i = 0; i < 3; i++) {
        feed_enc_init(&e);
        e.seq = seqs[i];
        buf_init(&b, BUF_MAX);
        ck_assert_int_eq(feed_put_u64msg(&e, &b, FEED_ACK, 1), 0);
        expect_frame_fatal(&b, BLOCK, "not 1", "first frame's seq not 1");
        buf_free(&b);
    }
}
END_TEST

START_TEST(test_get_unknown_type_fatal)
{
    static const uint8_t types[] = {0, FEED_OWN + 1, 200, 255};
    static const uint8_t payload[8] = {0};
    struct buf b;

    for (size_t i = 0; i < sizeof(types); i++) {
        buf_init(&b, BUF_MAX);
        raw_frame(&b, types[i], payload, sizeof(payload));
        expect_frame_fatal(&b, BLOCK, "unknown type", "unknown type");
        buf_free(&b);
    }
}
END_TEST

START_TEST(test_get_trailing_bytes_fatal)
{
    struct feed_msg m[MAX_MSGS];
    uint8_t *p = malloc(FEED_FRAME_MAX);
    size_t n, count = sample_msgs(m);
    struct buf b;

    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < count; i++) {
        const char *want = m[i].type == FEED_HASHES ? "hashes in" : "left over";

        n = payload_of(&m[i], p, FEED_FRAME_MAX - 1);
        p[n] = 0;
        buf_init(&b, BUF_MAX);
        raw_frame(&b, (uint8_t)m[i].type, p, n + 1);
        expect_frame_fatal(&b, BLOCK, want, feed_type_name(m[i].type));
        buf_free(&b);
    }
    free(p);
}
END_TEST

START_TEST(test_get_short_payload_fatal)
{
    struct feed_msg m[MAX_MSGS];
    uint8_t *p = malloc(FEED_FRAME_MAX);
    size_t n, count = sample_msgs(m);
    struct buf b;

    /* every type cut at every length, with a correct check: refused whole */
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < count; i++) {
        n = payload_of(&m[i], p, FEED_FRAME_MAX);
        for (size_t cut = 0; cut < n; cut++) {
            struct feed_dec d;
            struct feed_msg got;
            char what[64];
            int r;

            buf_init(&b, BUF_MAX);
            raw_frame(&b, (uint8_t)m[i].type, p, cut);
            snprintf(what, sizeof(what), "%s cut at %zu of %zu", feed_type_name(m[i].type), cut, n);
            dec_init(&d, BLOCK);
            r = feed_get(&d, &b, &got);
            ck_assert_msg(r == -EBADMSG, "%s: expected -EBADMSG, got %d", what, r);
            ck_assert_uint_eq(b.off, 0);
            feed_dec_free(&d);
            buf_free(&b);
        }
    }
    free(p);
}
END_TEST

START_TEST(test_get_string_past_payload_is_short_payload)
{
    static const uint8_t p[] = {0, 0, 0, 9, 'a', 'b'}; /* REMOVE: a string of 9 in 6 bytes */
    struct buf b;

    buf_init(&b, BUF_MAX);
    raw_frame(&b, FEED_REMOVE, p, sizeof(p));
    expect_frame_fatal(&b, BLOCK, "short payload", "string past the payload");
    buf_free(&b);
}
END_TEST

/* ---- decoder refusals: strings and paths ---- */

/* A REMOVE frame (seq 1) whose path is the n bytes at path. */
static void remove_frame(struct buf *b, const char *path, size_t n)
{
    size_t pos = raw_begin(b, FEED_REMOVE, 1);

    ck_assert_int_eq(buf_put_string(b, path, n), 0);
    raw_end(b, pos);
}

START_TEST(test_get_unclean_path_fatal_each_kind)
{
    static const char *bad[] = {"/a",  "a/",    "/",      "a//b", ".",    "..",
                                "a/.", "a/./b", "a/../b", "../a", "a/..", "./a"};
    char *name = repeat('n', NAME_MAX + 1);
    char *path = long_path(FEED_STRING_MAX + 1, 200);
    struct buf b;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        buf_init(&b, BUF_MAX);
        remove_frame(&b, bad[i], strlen(bad[i]));
        expect_frame_fatal(&b, BLOCK, "not a clean path", bad[i]);
        buf_free(&b);
    }
    buf_init(&b, BUF_MAX);
    remove_frame(&b, "a\0b", 3);
    expect_frame_fatal(&b, BLOCK, "holds a NUL", "NUL inside a path");
    buf_free(&b);
    buf_init(&b, BUF_MAX);
    remove_frame(&b, name, NAME_MAX + 1);
    expect_frame_fatal(&b, BLOCK, "not a clean path", "component over NAME_MAX");
    buf_free(&b);
    buf_init(&b, BUF_MAX);
    remove_frame(&b, path, FEED_STRING_MAX + 1);
    expect_frame_fatal(&b, BLOCK, "over 4095", "path over PATH_MAX - 1");
    buf_free(&b);
    free(name);
    free(path);
}
END_TEST

START_TEST(test_get_longest_path_and_name_accepted)
{
    char *name = repeat('n', NAME_MAX);
    char *path = long_path(FEED_STRING_MAX, NAME_MAX);
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;

    buf_init(&b, BUF_MAX);
    remove_frame(&b, name, NAME_MAX);
    dec_init(&d, BLOCK);
    expect_get_ok(&d, &b, &m, "a component of NAME_MAX");
    expect_str(name, m.u.path.path, "name");
    feed_dec_free(&d);
    buf_free(&b);
    buf_init(&b, BUF_MAX);
    remove_frame(&b, path, FEED_STRING_MAX);
    dec_init(&d, BLOCK);
    expect_get_ok(&d, &b, &m, "a path of PATH_MAX - 1");
    expect_str(path, m.u.path.path, "path");
    feed_dec_free(&d);
    buf_free(&b);
    free(name);
    free(path);
}
END_TEST

START_TEST(test_get_path_checked_in_every_message)
{
    struct feed_msg m[MAX_MSGS];
    size_t count = sample_msgs(m), checked = 0;
    struct feed_enc e;
    struct buf b;

    /* encode with a clean path of the same length, then make it unclean and fix the check */
    for (size_t i = 0; i < count; i++) {
        const char **fields[2] = {NULL, NULL};
        size_t nf = 0;

        switch (m[i].type) {
        case FEED_ENTRY:
            fields[nf++] = &m[i].u.entry.path;
            break;
        case FEED_REMOVE:
        case FEED_HOLD:
        case FEED_DROP:
            fields[nf++] = &m[i].u.path.path;
            break;
        case FEED_RENAME:
            fields[nf++] = &m[i].u.rename.from;
            fields[nf++] = &m[i].u.rename.to;
            break;
        case FEED_HASHES:
            fields[nf++] = &m[i].u.hashes.path;
            break;
        case FEED_DATA:
            fields[nf++] = &m[i].u.data.path;
            break;
        default:
            break;
        }
        for (size_t f = 0; f < nf; f++) {
            const char *keep = *fields[f];
            uint8_t *hit;

            *fields[f] = "a/XY/b";
            feed_enc_init(&e);
            buf_init(&b, BUF_MAX);
            ck_assert_int_eq(feed_put(&e, &b, &m[i]), 0);
            hit = memmem(b.data, b.len, "a/XY/b", 6);
            ck_assert_ptr_nonnull(hit);
            memcpy(hit + 2, "..", 2);
            b.len -= 4;     /* drop the check */
            raw_end(&b, 0); /* and put it again, over the unclean path */
            expect_frame_fatal(&b, BLOCK, "not a clean path", feed_type_name(m[i].type));
            buf_free(&b);
            *fields[f] = keep;
            checked++;
        }
    }
    ck_assert_uint_eq(checked, 11); /* ENTRY x3, RENAME x2, REMOVE, HASHES, DATA x2, HOLD, DROP */
}
END_TEST

START_TEST(test_get_over_long_strings_fatal)
{
    struct feed_msg hello = {.type = FEED_HELLO}, link = {.type = FEED_ENTRY},
                    err = {.type = FEED_ERROR};
    char *s = repeat('s', FEED_STRING_MAX);
    struct feed_msg *ms[] = {&hello, &hello, &link, &err};
    const char **fields[] = {&hello.u.hello.root, &hello.u.hello.software, &link.u.entry.link,
                             &err.u.error.message};
    struct feed_enc e;
    struct buf b;

    hello.u.hello.root = "/r";
    hello.u.hello.software = "sw";
    link.u.entry.path = "l";
    link.u.entry.mode = S_IFLNK | 0777;
    link.u.entry.link = "t";
    err.u.error.message = "m";
    for (size_t i = 0; i < 4; i++) {
        const char *keep = *fields[i];
        size_t at_off;
        uint8_t *at;

        /* encode at the limit (accepted), then make the string one byte longer */
        *fields[i] = s;
        feed_enc_init(&e);
        buf_init(&b, BUF_MAX);
        ck_assert_int_eq(feed_put(&e, &b, ms[i]), 0);
        at = memmem(b.data, b.len, s, FEED_STRING_MAX);
        ck_assert_ptr_nonnull(at);
        at_off = (size_t)(at - b.data);
        b.len -= 4; /* drop the check */
        ck_assert_int_eq(buf_put_u8(&b, 0), 0);
        at = b.data + at_off; /* the put may have moved the storage */
        memmove(at + FEED_STRING_MAX + 1, at + FEED_STRING_MAX,
                b.len - 1 - (size_t)(at + FEED_STRING_MAX - b.data));
        at[FEED_STRING_MAX] = 's';
        buf_poke_u32(&b, (size_t)(at - 4 - b.data), FEED_STRING_MAX + 1);
        raw_end(&b, 0);
        expect_frame_fatal(&b, BLOCK, "over 4095", "string over its limit");
        buf_free(&b);
        *fields[i] = keep;
    }
    free(s);
}
END_TEST

START_TEST(test_get_string_with_nul_fatal)
{
    struct feed_msg hello = {.type = FEED_HELLO}, link = {.type = FEED_ENTRY},
                    err = {.type = FEED_ERROR};
    struct feed_msg *ms[] = {&hello, &hello, &link, &err};
    const char **fields[] = {&hello.u.hello.root, &hello.u.hello.software, &link.u.entry.link,
                             &err.u.error.message};
    struct feed_enc e;
    struct buf b;

    hello.u.hello.root = "/r";
    hello.u.hello.software = "sw";
    link.u.entry.path = "l";
    link.u.entry.mode = S_IFLNK | 0777;
    link.u.entry.link = "t";
    err.u.error.message = "m";
    for (size_t i = 0; i < 4; i++) {
        const char *keep = *fields[i];
        uint8_t *at;

        *fields[i] = "xNULx";
        feed_enc_init(&e);
        buf_init(&b, BUF_MAX);
        ck_assert_int_eq(feed_put(&e, &b, ms[i]), 0);
        at = memmem(b.data, b.len, "xNULx", 5);
        ck_assert_ptr_nonnull(at);
        at[2] = '\0';
        b.len -= 4;
        raw_end(&b, 0);
        expect_frame_fatal(&b, BLOCK, "holds a NUL", "NUL inside a string");
        buf_free(&b);
        *fields[i] = keep;
    }
}
END_TEST

START_TEST(test_get_link_on_non_symlink_fatal)
{
    struct feed_entry en = {.path = "f", .mode = S_IFLNK | 0777, .link = "t"};
    struct feed_enc e;
    struct buf b;
    uint8_t *mode;

    feed_enc_init(&e);
    buf_init(&b, BUF_MAX);
    ck_assert_int_eq(feed_put_entry(&e, &b, &en), 0);
    mode = b.data + 13 + 4 + 1; /* after len, type, seq and the path "f" */
    ck_assert_uint_eq(mode[2], (S_IFLNK | 0777) >> 8);
    mode[2] = (S_IFREG | 0777) >> 8;
    b.len -= 4;
    raw_end(&b, 0);
    expect_frame_fatal(&b, BLOCK, "not a symlink", "a regular file with a link");
    buf_free(&b);
}
END_TEST

/* ---- decoder refusals: HASHES and DATA ---- */

/* A HASHES frame saying n, followed by 'have' hashes. */
static void hashes_frame(struct buf *b, uint32_t n, size_t have)
{
    size_t pos = raw_begin(b, FEED_HASHES, 1);

    ck_assert_int_eq(buf_put_cstring(b, "h"), 0);
    ck_assert_int_eq(buf_put_u64(b, 1), 0);
    ck_assert_int_eq(buf_put_u64(b, 0), 0);
    ck_assert_int_eq(buf_put_u32(b, n), 0);
    for (size_t i = 0; i < have * FEED_HASH_LEN; i++)
        ck_assert_int_eq(buf_put_u8(b, (uint8_t)i), 0);
    raw_end(b, pos);
}

START_TEST(test_get_hashes_n_mismatch_fatal)
{
    static const struct {
        uint32_t n;
        size_t have;
    } cases[] = {{3, 2}, {1, 2}, {0, 1}, {0xffffffffu, 1}, {0x10000001u, 1}};
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char what[64];

        snprintf(what, sizeof(what), "n %u with %zu hashes", cases[i].n, cases[i].have);
        buf_init(&b, BUF_MAX);
        hashes_frame(&b, cases[i].n, cases[i].have);
        expect_frame_fatal(&b, BLOCK, "hashes in", what);
        buf_free(&b);
    }
    buf_init(&b, BUF_MAX); /* the twin: n matching */
    hashes_frame(&b, 2, 2);
    dec_init(&d, BLOCK);
    expect_get_ok(&d, &b, &m, "n 2 with 2 hashes");
    ck_assert_uint_eq(m.u.hashes.n, 2);
    ck_assert_uint_eq(m.u.hashes.hashes[31], 31);
    feed_dec_free(&d);
    buf_free(&b);
}
END_TEST

/* A DATA frame of path "d" with the given raw_len, codec and bytes. */
static void data_frame(struct buf *b, uint32_t raw_len, uint8_t codec, const void *p, size_t n)
{
    size_t pos = raw_begin(b, FEED_DATA, 1);

    ck_assert_int_eq(buf_put_cstring(b, "d"), 0);
    ck_assert_int_eq(buf_put_u64(b, 1), 0);
    ck_assert_int_eq(buf_put_u64(b, 0), 0);
    ck_assert_int_eq(buf_put_u32(b, raw_len), 0);
    ck_assert_int_eq(buf_put_u8(b, codec), 0);
    ck_assert_int_eq(buf_put_string(b, p, n), 0);
    raw_end(b, pos);
}

/* n bytes of lz4 for 'len' bytes of 'c' at out. */
static size_t lz4_of(char c, size_t len, char *out, size_t cap)
{
    char *src = repeat(c, len);
    int z = LZ4_compress_default(src, out, (int)len, (int)cap);

    ck_assert_int_gt(z, 0);
    free(src);
    return (size_t)z;
}

START_TEST(test_get_data_raw_len_over_block_size_fatal)
{
    char *raw = repeat('r', 4097);
    char z[256];
    size_t zn = lz4_of('r', 4097, z, sizeof(z));
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;

    buf_init(&b, BUF_MAX);
    data_frame(&b, 4097, FEED_CODEC_RAW, raw, 4097);
    expect_frame_fatal(&b, 4096, "over the block size 4096", "raw, raw_len over block_size");
    buf_free(&b);
    buf_init(&b, BUF_MAX);
    data_frame(&b, 4097, FEED_CODEC_LZ4, z, zn);
    expect_frame_fatal(&b, 4096, "over the block size 4096", "lz4, raw_len over block_size");
    buf_free(&b);
    buf_init(&b, BUF_MAX); /* the twin: a decoder of a larger block size takes it */
    data_frame(&b, 4097, FEED_CODEC_LZ4, z, zn);
    dec_init(&d, 4097);
    expect_get_ok(&d, &b, &m, "lz4 at block_size");
    ck_assert_msg(memcmp(m.u.data.bytes, raw, 4097) == 0, "expected the block back");
    feed_dec_free(&d);
    buf_free(&b);
    free(raw);
}
END_TEST

START_TEST(test_get_block_size_over_max_counts_as_max)
{
    char *raw = repeat('r', FEED_BLOCK_MAX + 1);
    struct feed_dec d;
    struct buf b;

    buf_init(&b, BUF_MAX);
    data_frame(&b, FEED_BLOCK_MAX + 1, FEED_CODEC_RAW, raw, FEED_BLOCK_MAX + 1);
    dec_init(&d, BLOCK);
    d.block_size = UINT32_MAX; /* raised by the caller past the limit */
    expect_fatal(&d, &b, "over the block size 1048576", "raw_len over FEED_BLOCK_MAX");
    feed_dec_free(&d);
    buf_free(&b);
    free(raw);
}
END_TEST

START_TEST(test_get_data_raw_bytes_not_raw_len_fatal)
{
    static const char raw[12] = "0123456789ab";
    struct buf b;

    buf_init(&b, BUF_MAX);
    data_frame(&b, 11, FEED_CODEC_RAW, raw, 10);
    expect_frame_fatal(&b, BLOCK, "10 raw bytes for raw_len 11", "raw bytes short");
    buf_free(&b);
    buf_init(&b, BUF_MAX);
    data_frame(&b, 11, FEED_CODEC_RAW, raw, 12);
    expect_frame_fatal(&b, BLOCK, "12 raw bytes for raw_len 11", "raw bytes long");
    buf_free(&b);
}
END_TEST

START_TEST(test_get_data_lz4_decoding_short_fatal)
{
    char z[256];
    size_t zn = lz4_of('x', 1000, z, sizeof(z));
    struct buf b;

    buf_init(&b, BUF_MAX);
    data_frame(&b, 1001, FEED_CODEC_LZ4, z, zn);
    expect_frame_fatal(&b, BLOCK, "do not decode", "lz4 of 1000 bytes, raw_len 1001");
    buf_free(&b);
}
END_TEST

START_TEST(test_get_data_lz4_decoding_long_fatal)
{
    char z[256];
    size_t zn = lz4_of('x', 1000, z, sizeof(z));
    struct feed_dec d;
    struct feed_msg m;
    struct buf b;

    buf_init(&b, BUF_MAX);
    data_frame(&b, 999, FEED_CODEC_LZ4, z, zn);
    expect_frame_fatal(&b, BLOCK, "do not decode", "lz4 of 1000 bytes, raw_len 999");
    buf_free(&b);
    buf_init(&b, BUF_MAX); /* the twin: the true raw_len */
    data_frame(&b, 1000, FEED_CODEC_LZ4, z, zn);
    dec_init(&d, BLOCK);
    expect_get_ok(&d, &b, &m, "lz4 of 1000 bytes, raw_len 1000");
    ck_assert_uint_eq(m.u.data.len, 1000);
    ck_assert_uint_eq(m.u.data.bytes[999], 'x');
    feed_dec_free(&d);
    buf_free(&b);
}
END_TEST

START_TEST(test_get_data_lz4_corrupt_fatal)
{
    char z[256], bad[256];
    size_t zn = lz4_of('x', 1000, z, sizeof(z));
    struct buf b;

    /* cut short, one byte too many, empty, a literal run past the end, garbage */
    buf_init(&b, BUF_MAX);
    data_frame(&b, 1000, FEED_CODEC_LZ4, z, zn - 1);
    expect_frame_fatal(&b, BLOCK, "do not decode", "lz4 cut short");
    buf_free(&b);
    memcpy(bad, z, zn);
    bad[zn] = 0;
    buf_init(&b, BUF_MAX);
    data_frame(&b, 1000, FEED_CODEC_LZ4, bad, zn + 1);
    expect_frame_fatal(&b, BLOCK, "do not decode", "lz4 with a byte behind");
    buf_free(&b);
    buf_init(&b, BUF_MAX);
    data_frame(&b, 1000, FEED_CODEC_LZ4, NULL, 0);
    expect_frame_fatal(&b, BLOCK, "do not decode", "lz4 of no bytes");
    buf_free(&b);
    bad[0] = (char)0xf0; /* 15+ literals, then a length byte saying 255 more */
    bad[1] = (char)0xff;
    bad[2] = 'a';
    buf_init(&b, BUF_MAX);
    data_frame(&b, 1000, FEED_CODEC_LZ4, bad, 3);
    expect_frame_fatal(&b, BLOCK, "do not decode", "lz4 literals past the end");
    buf_free(&b);
    memset(bad, 0xff, sizeof(bad));
    buf_init(&b, BUF_MAX);
    data_frame(&b, 1000, FEED_CODEC_LZ4, bad, sizeof(bad));
    expect_frame_fatal(&b, BLOCK, "do not decode", "lz4 garbage");
    buf_free(&b);
}
END_TEST

START_TEST(test_get_data_unknown_codec_fatal)
{
    static const uint8_t codecs[] = {2, 3, 255};
    struct buf b;

    for (size_t i = 0; i < sizeof(codecs); i++) {
        buf_init(&b, BUF_MAX);
        data_frame(&b, 3, codecs[i], "abc", 3);
        expect_frame_fatal(&b, BLOCK, "unknown codec", "unknown codec");
        buf_free(&b);
    }
}
END_TEST

/* ---- the decoder's life ---- */

START_TEST(test_get_after_fatal_stays_failed)
{
    struct feed_enc e;
    struct feed_dec d;
    struct feed_msg m;
    struct buf b, good;
    char why[sizeof(d.why)];

    buf_init(&b, BUF_MAX);
    raw_frame(&b, 99, "xxxxxxxx", 8);
    dec_init(&d, BLOCK);
    expect_fatal(&d, &b, "unknown type", "the bad frame");
    snprintf(why, sizeof(why), "%s", feed_dec_error(&d));
    feed_enc_init(&e);
    buf_init(&good, BUF_MAX);
    ck_assert_int_eq(feed_put_u64msg(&e, &good, FEED_ACK, 1), 0);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(feed_get(&d, &good, &m), -EBADMSG);
        ck_assert_uint_eq(good.off, 0);
        ck_assert_str_eq(feed_dec_error(&d), why);
    }
    /* a new decoder takes the good frame: the refusal was the state, not the frame */
    feed_dec_free(&d);
    dec_init(&d, BLOCK);
    expect_get_ok(&d, &good, &m, "good frame, new decoder");
    buf_free(&good);
    buf_free(&b);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_dec_init_refuses_bad_block_size)
{
    struct feed_dec d;

    ck_assert_int_eq(feed_dec_init(&d, 0), -EINVAL);
    ck_assert_int_eq(feed_dec_init(&d, FEED_BLOCK_MAX + 1), -EINVAL);
    ck_assert_int_eq(feed_dec_init(&d, FEED_BLOCK_MAX), 0);
    ck_assert_int_eq(feed_dec_init(&d, 1), 0);
    feed_dec_free(&d);
}
END_TEST

START_TEST(test_type_names)
{
    static const char *names[] = {
        NULL,   "HELLO",     "SNAP_BEGIN", "ENTRY", "SNAP_END", "REMOVE", "RENAME", "HASHES",
        "DATA", "BATCH_END", "ACK",        "HOLD",  "DROP",     "ERROR",  "CLIENT", "OWN"};

    for (int t = FEED_HELLO; t <= FEED_OWN; t++)
        ck_assert_str_eq(feed_type_name((enum feed_type)t), names[t]);
    ck_assert_str_eq(feed_type_name((enum feed_type)0), "unknown");
    ck_assert_str_eq(feed_type_name((enum feed_type)16), "unknown");
    ck_assert_str_eq(feed_type_name((enum feed_type) - 1), "unknown");
}
END_TEST

static TCase *tcase(Suite *s, const char *name)
{
    TCase *tc = tcase_create(name);

    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return tc;
}

static Suite *feed_codec_suite(void)
{
    Suite *s = suite_create("feed_codec");
    TCase *tc;

    tc = tcase(s, "roundtrip");
    tcase_add_test(tc, test_hello_roundtrip);
    tcase_add_test(tc, test_hello_other_version_and_flags_pass_through);
    tcase_add_test(tc, test_u64_messages_roundtrip);
    tcase_add_test(tc, test_u64msg_shorthand_encodes_same_as_put);
    tcase_add_test(tc, test_entry_roundtrip_all_fields);
    tcase_add_test(tc, test_entry_symlink_roundtrip);
    tcase_add_test(tc, test_entry_root_is_empty_path);
    tcase_add_test(tc, test_entry_null_link_is_empty);
    tcase_add_test(tc, test_path_messages_roundtrip);
    tcase_add_test(tc, test_rename_roundtrip);
    tcase_add_test(tc, test_hashes_roundtrip);
    tcase_add_test(tc, test_hashes_empty_roundtrip);
    tcase_add_test(tc, test_hashes_max_fills_one_frame);
    tcase_add_test(tc, test_data_raw_when_not_asked_to_compress);
    tcase_add_test(tc, test_data_roundtrip_fields);
    tcase_add_test(tc, test_data_random_block_goes_raw);
    tcase_add_test(tc, test_data_small_incompressible_block_goes_raw);
    tcase_add_test(tc, test_data_zero_block_goes_lz4_and_small);
    tcase_add_test(tc, test_data_empty_and_one_byte_blocks_go_raw);
    tcase_add_test(tc, test_data_at_block_size_accepted);
    tcase_add_test(tc, test_error_roundtrip);

    tc = tcase(s, "framing");
    tcase_add_test(tc, test_frame_layout_matches_doc);
    tcase_add_test(tc, test_seq_counts_from_one);
    tcase_add_test(tc, test_stream_of_every_type_decodes_in_order);
    tcase_add_test(tc, test_stream_byte_by_byte_eagain_until_whole);
    tcase_add_test(tc, test_stream_split_at_every_byte);
    tcase_add_test(tc, test_pointers_belong_to_decoder_not_rx);

    tc = tcase(s, "put");
    tcase_add_test(tc, test_put_over_buffer_max_appends_nothing);
    tcase_add_test(tc, test_put_refuses_unclean_paths);
    tcase_add_test(tc, test_put_refuses_link_on_non_symlink);
    tcase_add_test(tc, test_put_refuses_wrong_type);
    tcase_add_test(tc, test_put_refuses_over_long_string);
    tcase_add_test(tc, test_put_refuses_bad_data_arguments);

    tc = tcase(s, "path");
    tcase_add_test(tc, test_path_ok_accepts_clean_paths);
    tcase_add_test(tc, test_path_ok_refuses_each_kind);

    tc = tcase(s, "get");
    tcase_add_test(tc, test_get_truncated_frame_is_eagain);
    tcase_add_test(tc, test_get_length_under_min_fatal);
    tcase_add_test(tc, test_get_length_over_max_fatal);
    tcase_add_test(tc, test_get_shortest_frame_is_short_payload);
    tcase_add_test(tc, test_get_flipped_byte_fails_check);
    tcase_add_test(tc, test_get_flipped_length_byte_never_accepted);
    tcase_add_test(tc, test_get_seq_gap_fatal);
    tcase_add_test(tc, test_get_seq_repeat_fatal);
    tcase_add_test(tc, test_get_first_seq_not_one_fatal);
    tcase_add_test(tc, test_get_unknown_type_fatal);
    tcase_add_test(tc, test_get_trailing_bytes_fatal);
    tcase_add_test(tc, test_get_short_payload_fatal);
    tcase_add_test(tc, test_get_string_past_payload_is_short_payload);
    tcase_add_test(tc, test_get_unclean_path_fatal_each_kind);
    tcase_add_test(tc, test_get_longest_path_and_name_accepted);
    tcase_add_test(tc, test_get_path_checked_in_every_message);
    tcase_add_test(tc, test_get_over_long_strings_fatal);
    tcase_add_test(tc, test_get_string_with_nul_fatal);
    tcase_add_test(tc, test_get_link_on_non_symlink_fatal);
    tcase_add_test(tc, test_get_hashes_n_mismatch_fatal);
    tcase_add_test(tc, test_get_data_raw_len_over_block_size_fatal);
    tcase_add_test(tc, test_get_block_size_over_max_counts_as_max);
    tcase_add_test(tc, test_get_data_raw_bytes_not_raw_len_fatal);
    tcase_add_test(tc, test_get_data_lz4_decoding_short_fatal);
    tcase_add_test(tc, test_get_data_lz4_decoding_long_fatal);
    tcase_add_test(tc, test_get_data_lz4_corrupt_fatal);
    tcase_add_test(tc, test_get_data_unknown_codec_fatal);
    tcase_add_test(tc, test_get_after_fatal_stays_failed);
    tcase_add_test(tc, test_dec_init_refuses_bad_block_size);
    tcase_add_test(tc, test_type_names);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(feed_codec_suite());
    int failed;

    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
