/* test_buf.c - unit tests of the bounded byte buffer (tunnel/buf.h). */
#include "buf.h"
#include "deadline.h"

#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole state of a buffer, to show that a failed call left it as it was. */
struct snap {
    uint8_t *data;
    size_t off, len, cap, max;
    uint8_t bytes[512]; /* a copy of [off, len), when it fits */
    size_t nbytes;
};

static void take(struct snap *s, const struct buf *b)
{
    s->data = b->data;
    s->off = b->off;
    s->len = b->len;
    s->cap = b->cap;
    s->max = b->max;
    s->nbytes = buf_avail(b) < sizeof(s->bytes) ? buf_avail(b) : sizeof(s->bytes);
    if (s->nbytes)
        memcpy(s->bytes, buf_ptr(b), s->nbytes);
}

static void expect_unchanged(const struct snap *s, const struct buf *b, const char *what)
{
    if (b->data != s->data || b->off != s->off || b->len != s->len || b->cap != s->cap ||
        b->max != s->max)
        ck_abort_msg("%s: expected buffer unchanged (data %p off %zu len %zu cap %zu max %zu), "
                     "got data %p off %zu len %zu cap %zu max %zu",
                     what, (void *)s->data, s->off, s->len, s->cap, s->max, (void *)b->data, b->off,
                     b->len, b->cap, b->max);
    if (s->nbytes && memcmp(buf_ptr(b), s->bytes, s->nbytes) != 0)
        ck_abort_msg("%s: expected the buffer's bytes unchanged, they differ", what);
}

/* The buffer holds exactly the n bytes at want. */
static void expect_bytes(const struct buf *b, const void *want, size_t n)
{
    ck_assert_uint_eq(buf_avail(b), n);
    if (n)
        ck_assert_mem_eq(buf_ptr(b), want, n);
}

/* ---- init, free, reset ---- */

START_TEST(test_init_is_empty_and_allocates_nothing)
{
    struct buf b;

    memset(&b, 0x5a, sizeof(b));
    buf_init(&b, 100);
    ck_assert_ptr_null(b.data);
    ck_assert_uint_eq(buf_avail(&b), 0);
    ck_assert_uint_eq(b.cap, 0);
    ck_assert_uint_eq(b.max, 100);
}
END_TEST

START_TEST(test_free_releases_and_allows_reinit)
{
    struct buf b;

    buf_init(&b, 1000);
    ck_assert_int_eq(buf_put(&b, "hello", 5), 0);
    buf_free(&b);
    ck_assert_ptr_null(b.data);
    ck_assert_uint_eq(b.cap, 0);
    ck_assert_uint_eq(buf_avail(&b), 0);
    ck_assert_uint_eq(b.max, 1000);
    ck_assert_int_eq(buf_put(&b, "again", 5), 0);
    expect_bytes(&b, "again", 5);
    buf_free(&b);
    buf_free(&b); /* freeing a freed buffer is harmless */
}
END_TEST

START_TEST(test_reset_drops_content_keeps_storage)
{
    struct buf b;
    uint8_t *data;
    size_t cap;

    buf_init(&b, 1000);
    ck_assert_int_eq(buf_put(&b, "abcdef", 6), 0);
    buf_consume(&b, 2);
    data = b.data;
    cap = b.cap;
    buf_reset(&b);
    ck_assert_uint_eq(buf_avail(&b), 0);
    ck_assert_ptr_eq(b.data, data);
    ck_assert_uint_eq(b.cap, cap);
    ck_assert_int_eq(buf_put(&b, "xy", 2), 0);
    expect_bytes(&b, "xy", 2);
    buf_free(&b);
}
END_TEST

/* ---- puts ---- */

START_TEST(test_put_u8_u32_u64_are_big_endian)
{
    static const uint8_t want[] = {0xab, 0x01, 0x02, 0x03, 0x04, 0x11, 0x22,
                                   0x33, 0x44, 0x55, 0x66, 0x77, 0x88};
    struct buf b;

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put_u8(&b, 0xab), 0);
    ck_assert_int_eq(buf_put_u32(&b, 0x01020304u), 0);
    ck_assert_int_eq(buf_put_u64(&b, 0x1122334455667788ull), 0);
    expect_bytes(&b, want, sizeof(want));
    buf_free(&b);
}
END_TEST

START_TEST(test_put_string_prefixes_length)
{
    static const uint8_t want[] = {0, 0, 0, 3, 'a', 0, 'c'};
    struct buf b;

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put_string(&b, "a\0c", 3), 0);
    expect_bytes(&b, want, sizeof(want));
    buf_free(&b);
}
END_TEST

START_TEST(test_put_empty_string_is_length_zero)
{
    static const uint8_t want[] = {0, 0, 0, 0};
    struct buf b;

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put_string(&b, NULL, 0), 0);
    expect_bytes(&b, want, sizeof(want));
    buf_free(&b);
}
END_TEST

START_TEST(test_put_cstring_omits_terminator)
{
    static const uint8_t want[] = {0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'};
    struct buf b;

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put_cstring(&b, "hello"), 0);
    expect_bytes(&b, want, sizeof(want));
    buf_free(&b);
}
END_TEST

START_TEST(test_put_up_to_max_succeeds)
{
    uint8_t x[16];
    struct buf b;

    memset(x, 7, sizeof(x));
    buf_init(&b, 16);
    ck_assert_int_eq(buf_put(&b, x, 12), 0);
    ck_assert_int_eq(buf_put_u32(&b, 0x07070707u), 0);
    expect_bytes(&b, x, 16);
    buf_free(&b);
}
END_TEST

START_TEST(test_put_over_max_is_emsgsize)
{
    struct buf b;
    struct snap s;

    buf_init(&b, 10);
    ck_assert_int_eq(buf_put(&b, "0123456", 7), 0);
    take(&s, &b);
    ck_assert_int_eq(buf_put_u32(&b, 1), -EMSGSIZE);
    expect_unchanged(&s, &b, "put_u32 over max");
    ck_assert_int_eq(buf_put_u64(&b, 1), -EMSGSIZE);
    expect_unchanged(&s, &b, "put_u64 over max");
    ck_assert_int_eq(buf_put(&b, "abcd", 4), -EMSGSIZE);
    expect_unchanged(&s, &b, "put over max");
    ck_assert_int_eq(buf_put_u8(&b, 1), 0);
    ck_assert_int_eq(buf_put_u8(&b, 2), 0);
    ck_assert_int_eq(buf_put_u8(&b, 3), 0);
    take(&s, &b);
    ck_assert_int_eq(buf_put_u8(&b, 4), -EMSGSIZE);
    expect_unchanged(&s, &b, "put_u8 at max");
    buf_free(&b);
}
END_TEST

START_TEST(test_put_huge_size_is_emsgsize)
{
    struct buf b;
    struct snap s;

    buf_init(&b, 1024);
    ck_assert_int_eq(buf_put_u8(&b, 1), 0);
    take(&s, &b);
    ck_assert_int_eq(buf_put(&b, "x", SIZE_MAX), -EMSGSIZE);
    expect_unchanged(&s, &b, "put of SIZE_MAX bytes");
    ck_assert_int_eq(buf_put_string(&b, "x", (size_t)UINT32_MAX + 1), -EMSGSIZE);
    expect_unchanged(&s, &b, "put_string longer than a u32");
    buf_free(&b);
}
END_TEST

START_TEST(test_put_string_over_max_writes_nothing)
{
    struct buf b;
    struct snap s;

    buf_init(&b, 10);
    ck_assert_int_eq(buf_put_u8(&b, 9), 0);
    take(&s, &b);
    /* the prefix alone would fit, prefix and bytes do not */
    ck_assert_int_eq(buf_put_string(&b, "abcdef", 6), -EMSGSIZE);
    expect_unchanged(&s, &b, "put_string over max");
    ck_assert_int_eq(buf_put_cstring(&b, "abcdef"), -EMSGSIZE);
    expect_unchanged(&s, &b, "put_cstring over max");
    ck_assert_int_eq(buf_put_string(&b, "abcde", 5), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_put_max_counts_unconsumed_bytes_only)
{
    struct buf b;

    buf_init(&b, 8);
    ck_assert_int_eq(buf_put_u64(&b, 1), 0);
    ck_assert_int_eq(buf_put_u8(&b, 1), -EMSGSIZE);
    buf_consume(&b, 4);
    ck_assert_int_eq(buf_put_u32(&b, 0xdeadbeefu), 0);
    {
        static const uint8_t want[] = {0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef};
        expect_bytes(&b, want, sizeof(want));
    }
    ck_assert_int_eq(buf_put_u8(&b, 1), -EMSGSIZE);
    buf_free(&b);
}
END_TEST

START_TEST(test_put_grows_past_initial_storage)
{
    enum { N = 100000 };
    uint8_t *x = malloc(N);
    struct buf b;

    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < N; i++)
        x[i] = (uint8_t)(i * 131 + 7);
    buf_init(&b, N);
    for (size_t i = 0; i < N; i += 1000)
        ck_assert_int_eq(buf_put(&b, x + i, 1000), 0);
    ck_assert_uint_ge(b.cap, N);
    expect_bytes(&b, x, N);
    buf_free(&b);
    free(x);
}
END_TEST

START_TEST(test_poke_u32_overwrites_in_place)
{
    static const uint8_t want[] = {0xca, 0xfe, 0xba, 0xbe, 'x', 'y'};
    struct buf b;

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put_u32(&b, 0), 0);
    ck_assert_int_eq(buf_put(&b, "xy", 2), 0);
    buf_poke_u32(&b, 0, 0xcafebabeu);
    expect_bytes(&b, want, sizeof(want));
    buf_free(&b);
}
END_TEST

/* ---- gets ---- */

START_TEST(test_get_u8_u32_u64_decode_big_endian)
{
    static const uint8_t in[] = {0xab, 0x01, 0x02, 0x03, 0x04, 0x11, 0x22,
                                 0x33, 0x44, 0x55, 0x66, 0x77, 0x88};
    struct buf b;
    uint8_t v8;
    uint32_t v32;
    uint64_t v64;

    buf_view(&b, in, sizeof(in));
    ck_assert_int_eq(buf_get_u8(&b, &v8), 0);
    ck_assert_uint_eq(v8, 0xab);
    ck_assert_int_eq(buf_get_u32(&b, &v32), 0);
    ck_assert_uint_eq(v32, 0x01020304u);
    ck_assert_int_eq(buf_get_u64(&b, &v64), 0);
    ck_assert_uint_eq(v64, 0x1122334455667788ull);
    ck_assert_uint_eq(buf_avail(&b), 0);
}
END_TEST

START_TEST(test_put_get_roundtrip_extremes)
{
    static const uint32_t u32s[] = {0, 1, 0x7fffffffu, 0x80000000u, UINT32_MAX};
    static const uint64_t u64s[] = {
        0, 1, 0xffffffffull, 0x100000000ull, 0x8000000000000000ull, UINT64_MAX};
    struct buf b;

    buf_init(&b, 1024);
    for (size_t i = 0; i < sizeof(u32s) / sizeof(u32s[0]); i++)
        ck_assert_int_eq(buf_put_u32(&b, u32s[i]), 0);
    for (size_t i = 0; i < sizeof(u64s) / sizeof(u64s[0]); i++)
        ck_assert_int_eq(buf_put_u64(&b, u64s[i]), 0);
    ck_assert_int_eq(buf_put_u8(&b, 0), 0);
    ck_assert_int_eq(buf_put_u8(&b, 0xff), 0);
    for (size_t i = 0; i < sizeof(u32s) / sizeof(u32s[0]); i++) {
        uint32_t v;
        ck_assert_int_eq(buf_get_u32(&b, &v), 0);
        ck_assert_uint_eq(v, u32s[i]);
    }
    for (size_t i = 0; i < sizeof(u64s) / sizeof(u64s[0]); i++) {
        uint64_t v;
        ck_assert_int_eq(buf_get_u64(&b, &v), 0);
        ck_assert_uint_eq(v, u64s[i]);
    }
    {
        uint8_t v;
        ck_assert_int_eq(buf_get_u8(&b, &v), 0);
        ck_assert_uint_eq(v, 0);
        ck_assert_int_eq(buf_get_u8(&b, &v), 0);
        ck_assert_uint_eq(v, 0xff);
    }
    ck_assert_uint_eq(buf_avail(&b), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_get_copies_and_consumes)
{
    struct buf b;
    char out[4] = "zzz";

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put(&b, "abcdef", 6), 0);
    ck_assert_int_eq(buf_get(&b, out, 3), 0);
    ck_assert_mem_eq(out, "abc", 3);
    expect_bytes(&b, "def", 3);
    buf_free(&b);
}
END_TEST

START_TEST(test_get_zero_bytes_succeeds)
{
    struct buf b;
    struct snap s;
    char out = 'z';

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put(&b, "ab", 2), 0);
    take(&s, &b);
    ck_assert_int_eq(buf_get(&b, &out, 0), 0);
    expect_unchanged(&s, &b, "get of 0 bytes");
    ck_assert_int_eq(out, 'z');
    buf_free(&b);
}
END_TEST

START_TEST(test_get_u8_empty_fails_and_leaves_buffer)
{
    static const uint8_t in[] = {1};
    struct buf b;
    struct snap s;
    uint8_t v = 0x77;

    buf_view(&b, in, sizeof(in));
    buf_consume(&b, 1);
    take(&s, &b);
    ck_assert_int_eq(buf_get_u8(&b, &v), -EBADMSG);
    expect_unchanged(&s, &b, "get_u8 of empty buffer");
    ck_assert_uint_eq(v, 0x77);
}
END_TEST

START_TEST(test_get_u32_short_buffer_fails_and_leaves_buffer)
{
    static const uint8_t in[] = {1, 2, 3};
    struct buf b;
    struct snap s;

    for (size_t n = 0; n < 4; n++) {
        uint32_t v = 0x77777777u;
        buf_view(&b, in, n);
        take(&s, &b);
        ck_assert_msg(buf_get_u32(&b, &v) == -EBADMSG, "get_u32 of %zu bytes: expected -EBADMSG",
                      n);
        expect_unchanged(&s, &b, "get_u32 of a short buffer");
        ck_assert_uint_eq(v, 0x77777777u);
    }
}
END_TEST

START_TEST(test_get_u64_short_buffer_fails_and_leaves_buffer)
{
    static const uint8_t in[] = {1, 2, 3, 4, 5, 6, 7};
    struct buf b;
    struct snap s;

    for (size_t n = 0; n < 8; n++) {
        uint64_t v = 0x7777777777777777ull;
        buf_view(&b, in, n);
        take(&s, &b);
        ck_assert_msg(buf_get_u64(&b, &v) == -EBADMSG, "get_u64 of %zu bytes: expected -EBADMSG",
                      n);
        expect_unchanged(&s, &b, "get_u64 of a short buffer");
        ck_assert_uint_eq(v, 0x7777777777777777ull);
    }
}
END_TEST

START_TEST(test_get_more_than_avail_fails_and_leaves_buffer)
{
    struct buf b;
    struct snap s;
    char out[8] = "zzzzzzz";

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put(&b, "abcdef", 6), 0);
    buf_consume(&b, 1);
    take(&s, &b);
    ck_assert_int_eq(buf_get(&b, out, 6), -EBADMSG);
    expect_unchanged(&s, &b, "get past the end");
    ck_assert_str_eq(out, "zzzzzzz");
    ck_assert_int_eq(buf_get(&b, out, SIZE_MAX), -EBADMSG);
    expect_unchanged(&s, &b, "get of SIZE_MAX bytes");
    buf_free(&b);
}
END_TEST

START_TEST(test_get_on_fresh_buffer_fails)
{
    struct buf b;
    uint8_t v8;
    uint32_t v32;
    uint64_t v64;
    const uint8_t *p;
    char s[4];

    buf_init(&b, 64);
    ck_assert_int_eq(buf_get_u8(&b, &v8), -EBADMSG);
    ck_assert_int_eq(buf_get_u32(&b, &v32), -EBADMSG);
    ck_assert_int_eq(buf_get_u64(&b, &v64), -EBADMSG);
    ck_assert_int_eq(buf_get_string(&b, &p, &v32), -EBADMSG);
    ck_assert_int_eq(buf_get_cstring(&b, s, sizeof(s)), -EBADMSG);
    ck_assert_ptr_null(b.data);
    ck_assert_uint_eq(b.off, 0);
    ck_assert_uint_eq(b.len, 0);
}
END_TEST

/* ---- strings ---- */

START_TEST(test_get_string_points_into_buffer)
{
    static const uint8_t in[] = {0, 0, 0, 3, 'a', 0, 'c', 0x99};
    struct buf b;
    const uint8_t *p;
    uint32_t n;

    buf_view(&b, in, sizeof(in));
    ck_assert_int_eq(buf_get_string(&b, &p, &n), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_ptr_eq(p, in + 4);
    ck_assert_uint_eq(buf_avail(&b), 1);
    ck_assert_uint_eq(*buf_ptr(&b), 0x99);
}
END_TEST

START_TEST(test_get_string_empty)
{
    static const uint8_t in[] = {0, 0, 0, 0};
    struct buf b;
    const uint8_t *p = NULL;
    uint32_t n = 99;

    buf_view(&b, in, sizeof(in));
    ck_assert_int_eq(buf_get_string(&b, &p, &n), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_uint_eq(buf_avail(&b), 0);
}
END_TEST

START_TEST(test_get_string_truncated_prefix_fails)
{
    static const uint8_t in[] = {0, 0, 0};
    struct buf b;
    struct snap s;
    const uint8_t *p = NULL;
    uint32_t n = 99;

    for (size_t len = 0; len <= sizeof(in); len++) {
        buf_view(&b, in, len);
        take(&s, &b);
        ck_assert_int_eq(buf_get_string(&b, &p, &n), -EBADMSG);
        expect_unchanged(&s, &b, "get_string of a truncated length prefix");
        ck_assert_ptr_null(p);
        ck_assert_uint_eq(n, 99);
    }
}
END_TEST

START_TEST(test_get_string_length_past_end_fails)
{
    static const uint8_t in[] = {0, 0, 0, 10, '1', '2', '3', '4', '5', '6', '7', '8', '9'};
    struct buf b;
    struct snap s;
    const uint8_t *p = NULL;
    uint32_t n = 99;

    buf_view(&b, in, sizeof(in));
    take(&s, &b);
    ck_assert_int_eq(buf_get_string(&b, &p, &n), -EBADMSG);
    expect_unchanged(&s, &b, "get_string one byte short");
    ck_assert_ptr_null(p);
    ck_assert_uint_eq(n, 99);
}
END_TEST

START_TEST(test_get_string_huge_length_fails)
{
    static const uint8_t in[] = {0xff, 0xff, 0xff, 0xff, 'a', 'b'};
    static const uint8_t in2[] = {0xff, 0xff, 0xff, 0xfc, 'a', 'b'};
    struct buf b;
    struct snap s;
    const uint8_t *p = NULL;
    uint32_t n = 99;

    buf_view(&b, in, sizeof(in));
    take(&s, &b);
    ck_assert_int_eq(buf_get_string(&b, &p, &n), -EBADMSG);
    expect_unchanged(&s, &b, "get_string with length 0xffffffff");
    buf_view(&b, in2, sizeof(in2));
    take(&s, &b);
    ck_assert_int_eq(buf_get_string(&b, &p, &n), -EBADMSG);
    expect_unchanged(&s, &b, "get_string with length 0xfffffffc");
    ck_assert_uint_eq(n, 99);
}
END_TEST

START_TEST(test_get_cstring_roundtrip)
{
    struct buf b;
    char out[16];

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put_cstring(&b, "hello"), 0);
    ck_assert_int_eq(buf_put_cstring(&b, ""), 0);
    ck_assert_int_eq(buf_get_cstring(&b, out, sizeof(out)), 0);
    ck_assert_str_eq(out, "hello");
    ck_assert_int_eq(buf_get_cstring(&b, out, sizeof(out)), 0);
    ck_assert_str_eq(out, "");
    ck_assert_uint_eq(buf_avail(&b), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_get_cstring_exact_fit)
{
    struct buf b;
    char out[6];

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put_cstring(&b, "hello"), 0);
    ck_assert_int_eq(buf_get_cstring(&b, out, sizeof(out)), 0);
    ck_assert_str_eq(out, "hello");
    buf_free(&b);
}
END_TEST

START_TEST(test_get_cstring_too_long_refused)
{
    struct buf b;
    struct snap s;
    char out[5] = "zzzz";

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put_cstring(&b, "hello"), 0);
    take(&s, &b);
    ck_assert_int_eq(buf_get_cstring(&b, out, sizeof(out)), -EBADMSG);
    expect_unchanged(&s, &b, "get_cstring one byte too long");
    ck_assert_int_eq(buf_get_cstring(&b, out, 0), -EBADMSG);
    expect_unchanged(&s, &b, "get_cstring into 0 bytes");
    ck_assert_str_eq(out, "zzzz");
    buf_free(&b);
}
END_TEST

START_TEST(test_get_cstring_empty_needs_one_byte)
{
    static const uint8_t in[] = {0, 0, 0, 0};
    struct buf b;
    struct snap s;
    char out[1] = {'z'};

    buf_view(&b, in, sizeof(in));
    take(&s, &b);
    ck_assert_int_eq(buf_get_cstring(&b, out, 0), -EBADMSG);
    expect_unchanged(&s, &b, "get_cstring of '' into 0 bytes");
    ck_assert_int_eq(buf_get_cstring(&b, out, 1), 0);
    ck_assert_int_eq(out[0], '\0');
}
END_TEST

START_TEST(test_get_cstring_with_nul_refused)
{
    static const uint8_t in[] = {0, 0, 0, 3, 'a', 0, 'c'};
    static const uint8_t last[] = {0, 0, 0, 2, 'a', 0};
    struct buf b;
    struct snap s;
    char out[16] = "untouched";

    buf_view(&b, in, sizeof(in));
    take(&s, &b);
    ck_assert_int_eq(buf_get_cstring(&b, out, sizeof(out)), -EBADMSG);
    expect_unchanged(&s, &b, "get_cstring holding a NUL");
    buf_view(&b, last, sizeof(last));
    take(&s, &b);
    ck_assert_int_eq(buf_get_cstring(&b, out, sizeof(out)), -EBADMSG);
    expect_unchanged(&s, &b, "get_cstring ending in a NUL");
    ck_assert_str_eq(out, "untouched");
}
END_TEST

START_TEST(test_get_cstring_truncated_fails)
{
    static const uint8_t in[] = {0, 0, 0, 5, 'h', 'e', 'l', 'l'};
    struct buf b;
    struct snap s;
    char out[16] = "untouched";

    for (size_t n = 0; n <= sizeof(in); n++) {
        buf_view(&b, in, n);
        take(&s, &b);
        ck_assert_msg(buf_get_cstring(&b, out, sizeof(out)) == -EBADMSG,
                      "get_cstring of %zu bytes: expected -EBADMSG", n);
        expect_unchanged(&s, &b, "get_cstring of a truncated string");
    }
    ck_assert_str_eq(out, "untouched");
}
END_TEST

/* ---- reserve, commit, consume ---- */

START_TEST(test_reserve_commit_appends)
{
    struct buf b;
    uint8_t *w;

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put(&b, "ab", 2), 0);
    ck_assert_int_eq(buf_reserve(&b, 4, &w), 0);
    ck_assert_uint_eq(buf_avail(&b), 2); /* reserving adds nothing yet */
    memcpy(w, "cdef", 4);
    buf_commit(&b, 4);
    expect_bytes(&b, "abcdef", 6);
    buf_free(&b);
}
END_TEST

START_TEST(test_reserve_partial_commit)
{
    struct buf b;
    uint8_t *w;

    buf_init(&b, 64);
    ck_assert_int_eq(buf_reserve(&b, 32, &w), 0);
    memcpy(w, "xyz", 3);
    buf_commit(&b, 3);
    expect_bytes(&b, "xyz", 3);
    ck_assert_int_eq(buf_put(&b, "!", 1), 0);
    expect_bytes(&b, "xyz!", 4);
    buf_free(&b);
}
END_TEST

START_TEST(test_reserve_over_max_is_emsgsize)
{
    struct buf b;
    struct snap s;
    uint8_t *w = NULL;

    buf_init(&b, 16);
    ck_assert_int_eq(buf_put(&b, "0123456789", 10), 0);
    take(&s, &b);
    ck_assert_int_eq(buf_reserve(&b, 7, &w), -EMSGSIZE);
    expect_unchanged(&s, &b, "reserve over max");
    ck_assert_int_eq(buf_reserve(&b, SIZE_MAX, &w), -EMSGSIZE);
    expect_unchanged(&s, &b, "reserve of SIZE_MAX");
    ck_assert_ptr_null(w);
    ck_assert_int_eq(buf_reserve(&b, 6, &w), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_reserve_compacts_consumed_space)
{
    uint8_t x[300];
    struct buf b;
    uint8_t *data, *w;
    size_t cap;

    for (size_t i = 0; i < sizeof(x); i++)
        x[i] = (uint8_t)i;
    buf_init(&b, 4096);
    ck_assert_int_eq(buf_put(&b, x, 200), 0);
    data = b.data;
    cap = b.cap;
    buf_consume(&b, 150);
    /* 50 bytes remain at offset 150; room for cap - 50 more once they move to the front */
    ck_assert_int_eq(buf_reserve(&b, cap - 50, &w), 0);
    ck_assert_ptr_eq(b.data, data);
    ck_assert_uint_eq(b.cap, cap);
    ck_assert_uint_eq(b.off, 0);
    ck_assert_ptr_eq(w, data + 50);
    expect_bytes(&b, x + 150, 50);
    buf_free(&b);
}
END_TEST

START_TEST(test_reserve_keeps_content_when_growing)
{
    uint8_t x[1000];
    struct buf b;
    uint8_t *w;

    for (size_t i = 0; i < sizeof(x); i++)
        x[i] = (uint8_t)(i * 7);
    buf_init(&b, 4096);
    ck_assert_int_eq(buf_put(&b, x, 100), 0);
    buf_consume(&b, 10);
    ck_assert_int_eq(buf_reserve(&b, 900, &w), 0);
    memcpy(w, x + 100, 900);
    buf_commit(&b, 900);
    expect_bytes(&b, x + 10, 990);
    buf_free(&b);
}
END_TEST

START_TEST(test_consume_moves_read_position)
{
    struct buf b;

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put(&b, "abcdef", 6), 0);
    buf_consume(&b, 0);
    expect_bytes(&b, "abcdef", 6);
    buf_consume(&b, 4);
    expect_bytes(&b, "ef", 2);
    buf_free(&b);
}
END_TEST

START_TEST(test_consume_all_rewinds_owned_buffer)
{
    struct buf b;

    buf_init(&b, 64);
    ck_assert_int_eq(buf_put(&b, "abcdef", 6), 0);
    buf_consume(&b, 6);
    ck_assert_uint_eq(b.off, 0);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_int_eq(buf_put(&b, "gh", 2), 0);
    expect_bytes(&b, "gh", 2);
    buf_free(&b);
}
END_TEST

/* ---- views ---- */

START_TEST(test_view_reads_without_copy)
{
    static const uint8_t in[] = {0, 0, 0, 42, 9};
    struct buf b;
    uint32_t v;

    buf_view(&b, in, sizeof(in));
    ck_assert_ptr_eq(buf_ptr(&b), in);
    ck_assert_uint_eq(buf_avail(&b), sizeof(in));
    ck_assert_uint_eq(b.cap, 0);
    ck_assert_int_eq(buf_get_u32(&b, &v), 0);
    ck_assert_uint_eq(v, 42);
    ck_assert_ptr_eq(buf_ptr(&b), in + 4);
}
END_TEST

START_TEST(test_view_refuses_put)
{
    uint8_t in[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    static const uint8_t orig[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    struct buf b;
    struct snap s;
    uint8_t *w = NULL;

    buf_view(&b, in, sizeof(in));
    buf_consume(&b, 4); /* even with room freed at the front */
    take(&s, &b);
    ck_assert_int_eq(buf_put(&b, "x", 1), -EMSGSIZE);
    ck_assert_int_eq(buf_put_u8(&b, 1), -EMSGSIZE);
    ck_assert_int_eq(buf_put_u32(&b, 1), -EMSGSIZE);
    ck_assert_int_eq(buf_put_u64(&b, 1), -EMSGSIZE);
    ck_assert_int_eq(buf_put_string(&b, "x", 1), -EMSGSIZE);
    ck_assert_int_eq(buf_put_cstring(&b, "x"), -EMSGSIZE);
    ck_assert_int_eq(buf_reserve(&b, 1, &w), -EMSGSIZE);
    ck_assert_ptr_null(w);
    expect_unchanged(&s, &b, "put on a view");
    ck_assert_mem_eq(in, orig, sizeof(in));
}
END_TEST

START_TEST(test_view_free_does_not_free_memory)
{
    uint8_t in[4] = {1, 2, 3, 4}; /* on the stack: freeing it would be caught */
    struct buf b;

    buf_view(&b, in, sizeof(in));
    buf_free(&b);
    ck_assert_ptr_null(b.data);
    ck_assert_uint_eq(buf_avail(&b), 0);
    ck_assert_uint_eq(in[3], 4);
}
END_TEST

START_TEST(test_view_get_past_end_fails_unchanged)
{
    static const uint8_t in[] = {1, 2, 3, 4, 5, 6};
    struct buf b;
    struct snap s;
    uint64_t v = 0;

    /* the view ends before the array does: a get must not read past it */
    buf_view(&b, in, 5);
    take(&s, &b);
    ck_assert_int_eq(buf_get_u64(&b, &v), -EBADMSG);
    expect_unchanged(&s, &b, "get_u64 past the end of a view");
    ck_assert_uint_eq(v, 0);
}
END_TEST

START_TEST(test_view_consume_to_end_leaves_it_empty)
{
    static const uint8_t in[] = {1, 2, 3};
    struct buf b;
    uint8_t v;

    buf_view(&b, in, sizeof(in));
    buf_consume(&b, 3);
    ck_assert_uint_eq(buf_avail(&b), 0);
    ck_assert_int_eq(buf_get_u8(&b, &v), -EBADMSG);
}
END_TEST

/* deadline.h, the other small utility of the tunnel layer: whole seconds and the nanoseconds
 * carried into them, for waits shorter and longer than a second. */
static int64_t ts_ns(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

START_TEST(test_deadline_ms_adds_and_normalizes)
{
    static const int64_t waits[] = {0, 1, 50, 999, 1000, 1500, 60000};
    for (size_t i = 0; i < sizeof(waits) / sizeof(waits[0]); i++) {
        for (int k = 0; k < 200; k++) { /* lands at many sub-second phases of the clock */
            struct timespec before, after;
            clock_gettime(CLOCK_MONOTONIC, &before);
            struct timespec d = deadline_ms(CLOCK_MONOTONIC, waits[i]);
            clock_gettime(CLOCK_MONOTONIC, &after);
            ck_assert_int_ge(d.tv_nsec, 0);
            ck_assert_int_lt(d.tv_nsec, 1000000000);
            ck_assert_int_ge(ts_ns(d), ts_ns(before) + waits[i] * 1000000);
            ck_assert_int_le(ts_ns(d), ts_ns(after) + waits[i] * 1000000);
        }
    }
}
END_TEST

static TCase *tcase(Suite *s, const char *name)
{
    TCase *tc = tcase_create(name);
    suite_add_tcase(s, tc);
    return tc;
}

static Suite *buf_suite(void)
{
    Suite *s = suite_create("buf");
    TCase *tc;

    tc = tcase(s, "lifecycle");
    tcase_add_test(tc, test_init_is_empty_and_allocates_nothing);
    tcase_add_test(tc, test_free_releases_and_allows_reinit);
    tcase_add_test(tc, test_reset_drops_content_keeps_storage);

    tc = tcase(s, "put");
    tcase_add_test(tc, test_put_u8_u32_u64_are_big_endian);
    tcase_add_test(tc, test_put_string_prefixes_length);
    tcase_add_test(tc, test_put_empty_string_is_length_zero);
    tcase_add_test(tc, test_put_cstring_omits_terminator);
    tcase_add_test(tc, test_put_up_to_max_succeeds);
    tcase_add_test(tc, test_put_over_max_is_emsgsize);
    tcase_add_test(tc, test_put_huge_size_is_emsgsize);
    tcase_add_test(tc, test_put_string_over_max_writes_nothing);
    tcase_add_test(tc, test_put_max_counts_unconsumed_bytes_only);
    tcase_add_test(tc, test_put_grows_past_initial_storage);
    tcase_add_test(tc, test_poke_u32_overwrites_in_place);

    tc = tcase(s, "get");
    tcase_add_test(tc, test_get_u8_u32_u64_decode_big_endian);
    tcase_add_test(tc, test_put_get_roundtrip_extremes);
    tcase_add_test(tc, test_get_copies_and_consumes);
    tcase_add_test(tc, test_get_zero_bytes_succeeds);
    tcase_add_test(tc, test_get_u8_empty_fails_and_leaves_buffer);
    tcase_add_test(tc, test_get_u32_short_buffer_fails_and_leaves_buffer);
    tcase_add_test(tc, test_get_u64_short_buffer_fails_and_leaves_buffer);
    tcase_add_test(tc, test_get_more_than_avail_fails_and_leaves_buffer);
    tcase_add_test(tc, test_get_on_fresh_buffer_fails);

    tc = tcase(s, "string");
    tcase_add_test(tc, test_get_string_points_into_buffer);
    tcase_add_test(tc, test_get_string_empty);
    tcase_add_test(tc, test_get_string_truncated_prefix_fails);
    tcase_add_test(tc, test_get_string_length_past_end_fails);
    tcase_add_test(tc, test_get_string_huge_length_fails);
    tcase_add_test(tc, test_get_cstring_roundtrip);
    tcase_add_test(tc, test_get_cstring_exact_fit);
    tcase_add_test(tc, test_get_cstring_too_long_refused);
    tcase_add_test(tc, test_get_cstring_empty_needs_one_byte);
    tcase_add_test(tc, test_get_cstring_with_nul_refused);
    tcase_add_test(tc, test_get_cstring_truncated_fails);

    tc = tcase(s, "reserve");
    tcase_add_test(tc, test_reserve_commit_appends);
    tcase_add_test(tc, test_reserve_partial_commit);
    tcase_add_test(tc, test_reserve_over_max_is_emsgsize);
    tcase_add_test(tc, test_reserve_compacts_consumed_space);
    tcase_add_test(tc, test_reserve_keeps_content_when_growing);
    tcase_add_test(tc, test_consume_moves_read_position);
    tcase_add_test(tc, test_consume_all_rewinds_owned_buffer);

    tc = tcase(s, "view");
    tcase_add_test(tc, test_view_reads_without_copy);
    tcase_add_test(tc, test_view_refuses_put);
    tcase_add_test(tc, test_view_free_does_not_free_memory);
    tcase_add_test(tc, test_view_get_past_end_fails_unchanged);
    tcase_add_test(tc, test_view_consume_to_end_leaves_it_empty);

    tc = tcase(s, "deadline");
    tcase_add_test(tc, test_deadline_ms_adds_and_normalizes);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(buf_suite());
    int failed;

    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
