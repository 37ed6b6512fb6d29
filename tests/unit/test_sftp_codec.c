/* test_sftp_codec.c - unit tests of the SFTP v3 wire format (tunnel/sftp_codec.h). */
#include "sftp_codec.h"

#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PKT_MAX (256 * 1024 + 1024) /* what sftp_client.c passes as max */
#define ALL_FLAGS                                                                                  \
    (TUN_SFTP_ATTR_SIZE | TUN_SFTP_ATTR_UIDGID | TUN_SFTP_ATTR_PERMISSIONS |                       \
     TUN_SFTP_ATTR_ACMODTIME)

static const struct tun_sftp_attr sample_attr = {
    .flags = ALL_FLAGS,
    .size = 0x0102030405060708ull,
    .uid = 1000,
    .gid = 0xfffffffeu,
    .perm = 0100644,
    .atime = 1700000000u,
    .mtime = 0xffffffffu,
};

static void expect_attr_eq(const struct tun_sftp_attr *want, const struct tun_sftp_attr *got)
{
    ck_assert_uint_eq(got->flags, want->flags);
    ck_assert_uint_eq(got->size, want->size);
    ck_assert_uint_eq(got->uid, want->uid);
    ck_assert_uint_eq(got->gid, want->gid);
    ck_assert_uint_eq(got->perm, want->perm);
    ck_assert_uint_eq(got->atime, want->atime);
    ck_assert_uint_eq(got->mtime, want->mtime);
}

/* A struct filled with a pattern, to show that a failed get did not write it. */
static void poison(void *p, size_t n)
{
    memset(p, 0xa5, n);
}

static void expect_poisoned(const void *p, size_t n, const char *what)
{
    const uint8_t *q = p;

    for (size_t i = 0; i < n; i++)
        if (q[i] != 0xa5)
            ck_abort_msg("%s: expected the output untouched (0xa5), got 0x%02x at byte %zu", what,
                         q[i], i);
}

static void expect_at(const struct buf *b, size_t off, size_t len, const char *what)
{
    if (b->off != off || b->len != len)
        ck_abort_msg("%s: expected off %zu len %zu (unchanged), got off %zu len %zu", what, off,
                     len, b->off, b->len);
}

/* Start a packet (length placeholder, type, id unless VERSION); returns where the length goes. */
static size_t pkt_begin(struct buf *b, uint8_t type, uint32_t id)
{
    size_t pos = b->len;

    ck_assert_int_eq(buf_put_u32(b, 0), 0);
    ck_assert_int_eq(buf_put_u8(b, type), 0);
    if (type != SFC_VERSION)
        ck_assert_int_eq(buf_put_u32(b, id), 0);
    return pos;
}

static void pkt_end(struct buf *b, size_t pos)
{
    buf_poke_u32(b, pos, (uint32_t)(b->len - pos - 4));
}

/* ---- framing ---- */

START_TEST(test_packet_whole_returns_type_id_payload)
{
    struct buf rx, payload;
    uint8_t type;
    uint32_t id, code;
    size_t pos;

    buf_init(&rx, PKT_MAX);
    pos = pkt_begin(&rx, SFC_STATUS, 0x01020304u);
    ck_assert_int_eq(buf_put_u32(&rx, SFC_NO_SUCH_FILE), 0);
    ck_assert_int_eq(buf_put_cstring(&rx, "no such file"), 0);
    pkt_end(&rx, pos);
    ck_assert_int_eq(sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload), 0);
    ck_assert_uint_eq(type, SFC_STATUS);
    ck_assert_uint_eq(id, 0x01020304u);
    ck_assert_uint_eq(buf_avail(&payload), 4 + 4 + 12);
    ck_assert_ptr_eq(buf_ptr(&payload), rx.data + 9);
    ck_assert_int_eq(buf_get_u32(&payload, &code), 0);
    ck_assert_uint_eq(code, SFC_NO_SUCH_FILE);
    ck_assert_uint_eq(buf_avail(&rx), 0);
    buf_free(&rx);
}
END_TEST

START_TEST(test_packet_empty_payload)
{
    static const uint8_t in[] = {0, 0, 0, 5, SFC_HANDLE, 0, 0, 0, 7};
    struct buf rx, payload;
    uint8_t type;
    uint32_t id;

    buf_view(&rx, in, sizeof(in));
    ck_assert_int_eq(sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload), 0);
    ck_assert_uint_eq(type, SFC_HANDLE);
    ck_assert_uint_eq(id, 7);
    ck_assert_uint_eq(buf_avail(&payload), 0);
    ck_assert_uint_eq(buf_avail(&rx), 0);
}
END_TEST

START_TEST(test_packet_incomplete_is_eagain_and_consumes_nothing)
{
    struct buf whole, rx, payload;
    uint8_t type;
    uint32_t id;
    size_t pos;

    buf_init(&whole, PKT_MAX);
    pos = pkt_begin(&whole, SFC_DATA, 99);
    ck_assert_int_eq(buf_put_string(&whole, "0123456789", 10), 0);
    pkt_end(&whole, pos);
    for (size_t n = 0; n < buf_avail(&whole); n++) {
        buf_init(&rx, PKT_MAX);
        ck_assert_int_eq(buf_put(&rx, buf_ptr(&whole), n), 0);
        poison(&type, sizeof(type));
        poison(&id, sizeof(id));
        poison(&payload, sizeof(payload));
        ck_assert_msg(sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload) == -EAGAIN,
                      "packet of %zu of %zu bytes: expected -EAGAIN", n, buf_avail(&whole));
        expect_at(&rx, 0, n, "incomplete packet");
        expect_poisoned(&type, sizeof(type), "type of an incomplete packet");
        expect_poisoned(&id, sizeof(id), "id of an incomplete packet");
        expect_poisoned(&payload, sizeof(payload), "payload of an incomplete packet");
        buf_free(&rx);
    }
    buf_free(&whole);
}
END_TEST

START_TEST(test_packet_arrives_byte_by_byte)
{
    struct buf whole, rx, payload;
    uint8_t type;
    uint32_t id, v;
    size_t pos, n;
    int r = -EAGAIN;

    buf_init(&whole, PKT_MAX);
    pos = pkt_begin(&whole, SFC_ATTRS, 5);
    ck_assert_int_eq(sfc_put_attr(&whole, &sample_attr), 0);
    pkt_end(&whole, pos);
    buf_init(&rx, PKT_MAX);
    for (n = 0; n < buf_avail(&whole) && r == -EAGAIN; n++) {
        ck_assert_int_eq(buf_put_u8(&rx, buf_ptr(&whole)[n]), 0);
        r = sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload);
    }
    ck_assert_int_eq(r, 0);
    ck_assert_uint_eq(n, buf_avail(&whole));
    ck_assert_uint_eq(type, SFC_ATTRS);
    ck_assert_uint_eq(id, 5);
    ck_assert_int_eq(buf_get_u32(&payload, &v), 0);
    ck_assert_uint_eq(v, ALL_FLAGS);
    buf_free(&rx);
    buf_free(&whole);
}
END_TEST

START_TEST(test_packet_several_in_one_buffer_taken_in_order)
{
    struct buf rx, payload;
    uint8_t type;
    uint32_t id;
    size_t pos, partial;

    buf_init(&rx, PKT_MAX);
    for (uint32_t i = 1; i <= 3; i++) {
        pos = pkt_begin(&rx, SFC_HANDLE, i);
        ck_assert_int_eq(buf_put_string(&rx, "h", 1), 0);
        pkt_end(&rx, pos);
    }
    partial = buf_avail(&rx);
    pos = pkt_begin(&rx, SFC_STATUS, 4); /* the fourth lacks its body */
    buf_poke_u32(&rx, pos, 9);
    partial = buf_avail(&rx) - partial;
    for (uint32_t i = 1; i <= 3; i++) {
        ck_assert_int_eq(sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload), 0);
        ck_assert_uint_eq(type, SFC_HANDLE);
        ck_assert_uint_eq(id, i);
        ck_assert_uint_eq(buf_avail(&payload), 5);
    }
    ck_assert_int_eq(sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload), -EAGAIN);
    ck_assert_uint_eq(buf_avail(&rx), partial);
    buf_free(&rx);
}
END_TEST

START_TEST(test_packet_payload_is_read_only_view)
{
    struct buf rx, payload;
    uint8_t type;
    uint32_t id;
    size_t pos;

    buf_init(&rx, PKT_MAX);
    pos = pkt_begin(&rx, SFC_DATA, 1);
    ck_assert_int_eq(buf_put_string(&rx, "abc", 3), 0);
    pkt_end(&rx, pos);
    ck_assert_int_eq(sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload), 0);
    ck_assert_uint_eq(payload.cap, 0);
    ck_assert_int_eq(buf_put_u8(&payload, 1), -EMSGSIZE);
    ck_assert_uint_eq(buf_avail(&payload), 7);
    buf_free(&rx);
}
END_TEST

START_TEST(test_packet_zero_length_is_ebadmsg)
{
    static const uint8_t in[] = {0, 0, 0, 0, SFC_STATUS, 0, 0, 0, 1};
    struct buf rx, payload;
    uint8_t type;
    uint32_t id;

    /* judged as soon as the length is in, and likewise with more bytes behind it */
    for (size_t n = 4; n <= sizeof(in); n++) {
        buf_view(&rx, in, n);
        ck_assert_msg(sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload) == -EBADMSG,
                      "zero length with %zu bytes in: expected -EBADMSG", n);
        expect_at(&rx, 0, n, "zero-length packet");
    }
}
END_TEST

START_TEST(test_packet_short_length_is_ebadmsg)
{
    uint8_t in[16];
    struct buf rx, payload;
    uint8_t type;
    uint32_t id;

    memset(in, 0, sizeof(in));
    in[4] = SFC_STATUS;
    for (uint8_t len = 1; len < 5; len++) {
        in[3] = len;
        buf_view(&rx, in, sizeof(in));
        ck_assert_msg(sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload) == -EBADMSG,
                      "STATUS of length %u: expected -EBADMSG", len);
        expect_at(&rx, 0, sizeof(in), "packet too short for an id");
    }
}
END_TEST

START_TEST(test_packet_over_max_is_ebadmsg)
{
    struct buf rx, payload;
    uint8_t type;
    uint32_t id;
    size_t pos;

    buf_init(&rx, 8192);
    pos = pkt_begin(&rx, SFC_DATA, 1);
    ck_assert_int_eq(buf_put(&rx, "0123456789", 10), 0);
    pkt_end(&rx, pos); /* length 15 */
    ck_assert_int_eq(sfc_get_packet(&rx, 14, &type, &id, &payload), -EBADMSG);
    expect_at(&rx, 0, 19, "packet over max");
    buf_free(&rx);

    /* refused from its header alone, before the body arrives */
    buf_init(&rx, 8192);
    ck_assert_int_eq(buf_put_u32(&rx, 4097), 0);
    ck_assert_int_eq(buf_put_u8(&rx, SFC_DATA), 0);
    ck_assert_int_eq(sfc_get_packet(&rx, 4096, &type, &id, &payload), -EBADMSG);
    expect_at(&rx, 0, 5, "header of a packet over max");
    buf_free(&rx);
}
END_TEST

START_TEST(test_packet_at_max_accepted)
{
    struct buf rx, payload;
    uint8_t type;
    uint32_t id;
    size_t pos;

    buf_init(&rx, 8192);
    pos = pkt_begin(&rx, SFC_DATA, 1);
    ck_assert_int_eq(buf_put(&rx, "0123456789", 10), 0);
    pkt_end(&rx, pos);
    ck_assert_int_eq(sfc_get_packet(&rx, 15, &type, &id, &payload), 0);
    ck_assert_uint_eq(buf_avail(&payload), 10);
    buf_free(&rx);
}
END_TEST

START_TEST(test_packet_huge_length_is_ebadmsg)
{
    static const uint8_t in[] = {0xff, 0xff, 0xff, 0xff, SFC_DATA, 0, 0, 0, 1, 'x'};
    struct buf rx, payload;
    uint8_t type;
    uint32_t id;

    buf_view(&rx, in, sizeof(in));
    ck_assert_int_eq(sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload), -EBADMSG);
    expect_at(&rx, 0, sizeof(in), "packet of length 0xffffffff");
    ck_assert_int_eq(sfc_get_packet(&rx, UINT32_MAX - 1, &type, &id, &payload), -EBADMSG);
}
END_TEST

START_TEST(test_packet_version_has_no_id)
{
    static const uint8_t in[] = {0, 0, 0, 5, SFC_VERSION, 0, 0, 0, 3};
    struct buf rx, payload;
    uint8_t type;
    uint32_t id = 77, version;

    buf_view(&rx, in, sizeof(in));
    ck_assert_int_eq(sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload), 0);
    ck_assert_uint_eq(type, SFC_VERSION);
    ck_assert_uint_eq(id, 0);
    ck_assert_uint_eq(buf_avail(&payload), 4);
    ck_assert_int_eq(buf_get_u32(&payload, &version), 0);
    ck_assert_uint_eq(version, 3);
}
END_TEST

START_TEST(test_packet_version_of_length_one_accepted)
{
    static const uint8_t in[] = {0, 0, 0, 1, SFC_VERSION, 0xee};
    struct buf rx, payload;
    uint8_t type;
    uint32_t id = 77;

    buf_view(&rx, in, sizeof(in));
    ck_assert_int_eq(sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload), 0);
    ck_assert_uint_eq(type, SFC_VERSION);
    ck_assert_uint_eq(id, 0);
    ck_assert_uint_eq(buf_avail(&payload), 0);
    ck_assert_uint_eq(buf_avail(&rx), 1);
}
END_TEST

START_TEST(test_packet_version_truncated_is_eagain)
{
    static const uint8_t in[] = {0, 0, 0, 5, SFC_VERSION, 0, 0, 0};
    struct buf rx, payload;
    uint8_t type;
    uint32_t id;

    buf_view(&rx, in, sizeof(in));
    ck_assert_int_eq(sfc_get_packet(&rx, PKT_MAX, &type, &id, &payload), -EAGAIN);
    expect_at(&rx, 0, sizeof(in), "truncated VERSION");
}
END_TEST

/* ---- attributes ---- */

START_TEST(test_attr_encoding_is_v3_order)
{
    static const uint8_t want[] = {
        0,    0,    0,    0x0f,             /* flags */
        1,    2,    3,    4,    5, 6, 7, 8, /* size */
        0,    0,    0x03, 0xe8,             /* uid */
        0xff, 0xff, 0xff, 0xfe,             /* gid */
        0,    0,    0x81, 0xa4,             /* perm */
        0x65, 0x53, 0xf1, 0x00,             /* atime */
        0xff, 0xff, 0xff, 0xff,             /* mtime */
    };
    struct buf b;

    buf_init(&b, 1024);
    ck_assert_int_eq(sfc_put_attr(&b, &sample_attr), 0);
    ck_assert_uint_eq(buf_avail(&b), sizeof(want));
    ck_assert_mem_eq(buf_ptr(&b), want, sizeof(want));
    buf_free(&b);
}
END_TEST

START_TEST(test_attr_roundtrip_all_flags)
{
    struct tun_sftp_attr got;
    struct buf b;

    buf_init(&b, 1024);
    ck_assert_int_eq(sfc_put_attr(&b, &sample_attr), 0);
    ck_assert_int_eq(sfc_get_attr(&b, &got), 0);
    expect_attr_eq(&sample_attr, &got);
    ck_assert_uint_eq(buf_avail(&b), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_attr_roundtrip_every_flag_subset)
{
    struct tun_sftp_attr want, got;
    struct buf b;

    buf_init(&b, 1024);
    for (uint32_t flags = 0; flags <= ALL_FLAGS; flags++) {
        want = sample_attr;
        want.flags = flags;
        ck_assert_int_eq(sfc_put_attr(&b, &want), 0);
        poison(&got, sizeof(got));
        ck_assert_int_eq(sfc_get_attr(&b, &got), 0);
        if (!(flags & TUN_SFTP_ATTR_SIZE))
            want.size = 0;
        if (!(flags & TUN_SFTP_ATTR_UIDGID))
            want.uid = want.gid = 0;
        if (!(flags & TUN_SFTP_ATTR_PERMISSIONS))
            want.perm = 0;
        if (!(flags & TUN_SFTP_ATTR_ACMODTIME))
            want.atime = want.mtime = 0;
        expect_attr_eq(&want, &got); /* absent fields read as 0 */
        ck_assert_msg(buf_avail(&b) == 0, "flags 0x%x: expected everything read, %zu bytes left",
                      flags, buf_avail(&b));
    }
    buf_free(&b);
}
END_TEST

START_TEST(test_attr_put_drops_extended_flag)
{
    static const uint8_t want[] = {0, 0, 0, 0x04, 0, 0, 0x41, 0xed};
    struct tun_sftp_attr a = {.flags = TUN_SFTP_ATTR_PERMISSIONS | TUN_SFTP_ATTR_EXTENDED,
                              .perm = 040755};
    struct buf b;

    buf_init(&b, 1024);
    ck_assert_int_eq(sfc_put_attr(&b, &a), 0);
    ck_assert_uint_eq(buf_avail(&b), sizeof(want));
    ck_assert_mem_eq(buf_ptr(&b), want, sizeof(want));
    buf_free(&b);
}
END_TEST

/* All fields, then EXTENDED with two pairs, then a marker u32 that the get must not touch. */
static void put_attr_with_extended(struct buf *b)
{
    ck_assert_int_eq(buf_put_u32(b, ALL_FLAGS | TUN_SFTP_ATTR_EXTENDED), 0);
    ck_assert_int_eq(buf_put_u64(b, sample_attr.size), 0);
    ck_assert_int_eq(buf_put_u32(b, sample_attr.uid), 0);
    ck_assert_int_eq(buf_put_u32(b, sample_attr.gid), 0);
    ck_assert_int_eq(buf_put_u32(b, sample_attr.perm), 0);
    ck_assert_int_eq(buf_put_u32(b, sample_attr.atime), 0);
    ck_assert_int_eq(buf_put_u32(b, sample_attr.mtime), 0);
    ck_assert_int_eq(buf_put_u32(b, 2), 0);
    ck_assert_int_eq(buf_put_cstring(b, "acl@example.com"), 0);
    ck_assert_int_eq(buf_put_string(b, "\0\1\2", 3), 0);
    ck_assert_int_eq(buf_put_cstring(b, ""), 0);
    ck_assert_int_eq(buf_put_cstring(b, "v"), 0);
}

START_TEST(test_attr_extended_pairs_skipped)
{
    struct tun_sftp_attr want = sample_attr, got;
    struct buf b;
    uint32_t marker;

    buf_init(&b, 1024);
    put_attr_with_extended(&b);
    ck_assert_int_eq(buf_put_u32(&b, 0xfeedf00du), 0);
    ck_assert_int_eq(sfc_get_attr(&b, &got), 0);
    want.flags |= TUN_SFTP_ATTR_EXTENDED;
    expect_attr_eq(&want, &got);
    ck_assert_int_eq(buf_get_u32(&b, &marker), 0);
    ck_assert_uint_eq(marker, 0xfeedf00du);
    buf_free(&b);
}
END_TEST

START_TEST(test_attr_truncated_each_field_fails_unchanged)
{
    struct tun_sftp_attr got;
    struct buf whole, b;

    buf_init(&whole, 1024);
    put_attr_with_extended(&whole);
    for (size_t n = 0; n < buf_avail(&whole); n++) {
        buf_view(&b, buf_ptr(&whole), n);
        poison(&got, sizeof(got));
        ck_assert_msg(sfc_get_attr(&b, &got) == -EBADMSG,
                      "attrs cut to %zu of %zu bytes: expected -EBADMSG", n, buf_avail(&whole));
        expect_at(&b, 0, n, "truncated attrs");
        expect_poisoned(&got, sizeof(got), "truncated attrs");
    }
    buf_view(&b, buf_ptr(&whole), buf_avail(&whole));
    ck_assert_int_eq(sfc_get_attr(&b, &got), 0);
    buf_free(&whole);
}
END_TEST

START_TEST(test_attr_extended_count_at_max_accepted)
{
    struct tun_sftp_attr got;
    struct buf b;

    buf_init(&b, 4096);
    ck_assert_int_eq(buf_put_u32(&b, TUN_SFTP_ATTR_EXTENDED), 0);
    ck_assert_int_eq(buf_put_u32(&b, SFC_EXT_PAIRS_MAX), 0);
    for (int i = 0; i < SFC_EXT_PAIRS_MAX; i++) {
        ck_assert_int_eq(buf_put_cstring(&b, "k"), 0);
        ck_assert_int_eq(buf_put_cstring(&b, "v"), 0);
    }
    ck_assert_int_eq(sfc_get_attr(&b, &got), 0);
    ck_assert_uint_eq(got.flags, TUN_SFTP_ATTR_EXTENDED);
    ck_assert_uint_eq(buf_avail(&b), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_attr_too_many_extended_pairs_refused)
{
    struct tun_sftp_attr got;
    struct buf b;
    size_t len;

    buf_init(&b, 4096);
    ck_assert_int_eq(buf_put_u32(&b, TUN_SFTP_ATTR_EXTENDED), 0);
    ck_assert_int_eq(buf_put_u32(&b, SFC_EXT_PAIRS_MAX + 1), 0);
    for (int i = 0; i < SFC_EXT_PAIRS_MAX + 1; i++) {
        ck_assert_int_eq(buf_put_cstring(&b, "k"), 0);
        ck_assert_int_eq(buf_put_cstring(&b, "v"), 0);
    }
    len = b.len;
    poison(&got, sizeof(got));
    ck_assert_int_eq(sfc_get_attr(&b, &got), -EBADMSG);
    expect_at(&b, 0, len, "attrs with too many extended pairs");
    expect_poisoned(&got, sizeof(got), "attrs with too many extended pairs");
    buf_free(&b);
}
END_TEST

START_TEST(test_attr_garbage_extended_count_refused)
{
    static const uint8_t in[] = {0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0};
    struct tun_sftp_attr got;
    struct buf b;

    buf_view(&b, in, sizeof(in));
    poison(&got, sizeof(got));
    ck_assert_int_eq(sfc_get_attr(&b, &got), -EBADMSG);
    expect_at(&b, 0, sizeof(in), "attrs with 0xffffffff extended pairs");
    expect_poisoned(&got, sizeof(got), "attrs with 0xffffffff extended pairs");
}
END_TEST

START_TEST(test_attr_extended_string_past_end_refused)
{
    static const uint8_t in[] = {0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 'k', 0, 0, 0x10, 0, 'v'};
    struct tun_sftp_attr got;
    struct buf b;

    buf_view(&b, in, sizeof(in));
    poison(&got, sizeof(got));
    ck_assert_int_eq(sfc_get_attr(&b, &got), -EBADMSG);
    expect_at(&b, 0, sizeof(in), "extended value past the end");
    expect_poisoned(&got, sizeof(got), "extended value past the end");
}
END_TEST

START_TEST(test_attr_put_over_max_is_emsgsize_and_unchanged)
{
    uint8_t x[250];
    struct buf b;

    for (size_t i = 0; i < sizeof(x); i++)
        x[i] = (uint8_t)(i + 1);
    /* plain: only the flags word fits */
    buf_init(&b, 6);
    ck_assert_int_eq(buf_put_u8(&b, 0x42), 0);
    ck_assert_int_eq(sfc_put_attr(&b, &sample_attr), -EMSGSIZE);
    ck_assert_uint_eq(buf_avail(&b), 1);
    ck_assert_uint_eq(*buf_ptr(&b), 0x42);
    buf_free(&b);

    /* the failing put comes after one that compacted the buffer: 50 unread bytes sit at the
     * end of the first 256-byte allocation, so the size field moves them to the front; then
     * the gid passes max. The 50 bytes must survive and nothing else remain. */
    buf_init(&b, 50 + 4 + 8 + 4);
    ck_assert_int_eq(buf_put(&b, x, 66), 0);
    for (int i = 0; i < 3; i++) {
        buf_consume(&b, 60);
        ck_assert_int_eq(buf_put(&b, x + 66 + 60 * i, 60), 0);
    }
    buf_consume(&b, 16); /* off 196, len 246 */
    ck_assert_uint_eq(b.cap, 256);
    ck_assert_uint_eq(b.off, 196);
    ck_assert_int_eq(sfc_put_attr(&b, &sample_attr), -EMSGSIZE);
    ck_assert_uint_eq(b.off, 0); /* it did compact */
    ck_assert_uint_eq(buf_avail(&b), 50);
    ck_assert_mem_eq(buf_ptr(&b), x + 196, 50);
    ck_assert_int_eq(buf_put_u32(&b, 0x01020304u), 0); /* and the buffer is still usable */
    ck_assert_uint_eq(buf_avail(&b), 54);
    ck_assert_mem_eq(buf_ptr(&b) + 50, "\x01\x02\x03\x04", 4);
    buf_free(&b);
}
END_TEST

START_TEST(test_attr_put_on_view_is_emsgsize)
{
    uint8_t in[64] = {0};
    struct buf b;

    buf_view(&b, in, sizeof(in));
    ck_assert_int_eq(sfc_put_attr(&b, &sample_attr), -EMSGSIZE);
    expect_at(&b, 0, sizeof(in), "put_attr on a view");
}
END_TEST

/* ---- names ---- */

static void put_name(struct buf *b, const void *name, size_t n, const char *longname,
                     const struct tun_sftp_attr *a)
{
    ck_assert_int_eq(buf_put_string(b, name, n), 0);
    ck_assert_int_eq(buf_put_cstring(b, longname), 0);
    ck_assert_int_eq(sfc_put_attr(b, a), 0);
}

START_TEST(test_name_entry_roundtrip)
{
    struct tun_sftp_attr got;
    struct buf b;
    char name[64];

    buf_init(&b, 1024);
    put_name(&b, "file.txt", 8, "-rw-r--r--    1 u g  1 Jan  1 00:00 file.txt", &sample_attr);
    ck_assert_int_eq(sfc_get_name(&b, name, sizeof(name), &got), 0);
    ck_assert_str_eq(name, "file.txt");
    expect_attr_eq(&sample_attr, &got);
    ck_assert_uint_eq(buf_avail(&b), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_name_several_entries_in_sequence)
{
    static const char *const names[] = {"a", "bb", "a name with spaces", "\xc3\xa9t\xc3\xa9"};
    struct tun_sftp_attr a = sample_attr, got;
    struct buf b;
    uint32_t count;
    char name[64];

    buf_init(&b, 4096);
    ck_assert_int_eq(buf_put_u32(&b, 4), 0);
    for (uint32_t i = 0; i < 4; i++) {
        a.size = i;
        put_name(&b, names[i], strlen(names[i]), "", &a);
    }
    ck_assert_int_eq(buf_get_u32(&b, &count), 0);
    ck_assert_uint_eq(count, 4);
    for (uint32_t i = 0; i < count; i++) {
        ck_assert_int_eq(sfc_get_name(&b, name, sizeof(name), &got), 0);
        ck_assert_str_eq(name, names[i]);
        ck_assert_uint_eq(got.size, i);
    }
    ck_assert_uint_eq(buf_avail(&b), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_name_exact_fit_accepted)
{
    struct tun_sftp_attr got;
    struct buf b;
    char name[6];

    buf_init(&b, 1024);
    put_name(&b, "hello", 5, "x", &sample_attr);
    ck_assert_int_eq(sfc_get_name(&b, name, sizeof(name), &got), 0);
    ck_assert_str_eq(name, "hello");
    buf_free(&b);
}
END_TEST

START_TEST(test_name_too_long_refused)
{
    struct tun_sftp_attr got;
    struct buf b;
    char name[5];
    size_t len;

    buf_init(&b, 1024);
    put_name(&b, "hello", 5, "x", &sample_attr);
    len = b.len;
    poison(&got, sizeof(got));
    ck_assert_int_eq(sfc_get_name(&b, name, sizeof(name), &got), -EBADMSG);
    expect_at(&b, 0, len, "name one byte too long");
    expect_poisoned(&got, sizeof(got), "attrs of a name too long");
    buf_free(&b);
}
END_TEST

START_TEST(test_name_with_nul_refused)
{
    struct tun_sftp_attr got;
    struct buf b;
    char name[64];
    size_t len;

    buf_init(&b, 1024);
    put_name(&b, "evil\0/../etc", 12, "x", &sample_attr);
    len = b.len;
    poison(&got, sizeof(got));
    ck_assert_int_eq(sfc_get_name(&b, name, sizeof(name), &got), -EBADMSG);
    expect_at(&b, 0, len, "name holding a NUL");
    expect_poisoned(&got, sizeof(got), "attrs of a name holding a NUL");
    buf_free(&b);
}
END_TEST

START_TEST(test_name_truncated_each_part_fails_unchanged)
{
    struct tun_sftp_attr got;
    struct buf whole, b;
    char name[64];

    buf_init(&whole, 1024);
    ck_assert_int_eq(buf_put_cstring(&whole, "dir"), 0);
    ck_assert_int_eq(buf_put_cstring(&whole, "drwxr-xr-x dir"), 0);
    put_attr_with_extended(&whole);
    for (size_t n = 0; n < buf_avail(&whole); n++) {
        buf_view(&b, buf_ptr(&whole), n);
        poison(&got, sizeof(got));
        ck_assert_msg(sfc_get_name(&b, name, sizeof(name), &got) == -EBADMSG,
                      "name entry cut to %zu of %zu bytes: expected -EBADMSG", n,
                      buf_avail(&whole));
        expect_at(&b, 0, n, "truncated name entry");
        expect_poisoned(&got, sizeof(got), "attrs of a truncated name entry");
    }
    buf_view(&b, buf_ptr(&whole), buf_avail(&whole));
    ck_assert_int_eq(sfc_get_name(&b, name, sizeof(name), &got), 0);
    ck_assert_str_eq(name, "dir");
    buf_free(&whole);
}
END_TEST

START_TEST(test_name_longname_past_end_refused)
{
    static const uint8_t in[] = {0, 0, 0, 1, 'a', 0x7f, 0xff, 0xff, 0xff, 'l', 0, 0, 0, 0};
    struct tun_sftp_attr got;
    struct buf b;
    char name[64];

    buf_view(&b, in, sizeof(in));
    poison(&got, sizeof(got));
    ck_assert_int_eq(sfc_get_name(&b, name, sizeof(name), &got), -EBADMSG);
    expect_at(&b, 0, sizeof(in), "long name past the end");
    expect_poisoned(&got, sizeof(got), "attrs after a long name past the end");
}
END_TEST

START_TEST(test_name_bad_attrs_refused_whole_entry)
{
    struct tun_sftp_attr got;
    struct buf b;
    char name[64];
    size_t len;

    buf_init(&b, 4096);
    ck_assert_int_eq(buf_put_cstring(&b, "f"), 0);
    ck_assert_int_eq(buf_put_cstring(&b, "l"), 0);
    ck_assert_int_eq(buf_put_u32(&b, TUN_SFTP_ATTR_EXTENDED), 0);
    ck_assert_int_eq(buf_put_u32(&b, SFC_EXT_PAIRS_MAX + 1), 0);
    len = b.len;
    poison(&got, sizeof(got));
    ck_assert_int_eq(sfc_get_name(&b, name, sizeof(name), &got), -EBADMSG);
    expect_at(&b, 0, len, "name entry with bad attrs"); /* back before the name, not after */
    expect_poisoned(&got, sizeof(got), "bad attrs of a name entry");
    buf_free(&b);
}
END_TEST

/* ---- status ---- */

START_TEST(test_status_reads_code_only)
{
    struct buf b;
    uint32_t code;
    char msg[32];

    buf_init(&b, 1024);
    ck_assert_int_eq(buf_put_u32(&b, SFC_PERMISSION_DENIED), 0);
    ck_assert_int_eq(buf_put_cstring(&b, "denied"), 0);
    ck_assert_int_eq(buf_put_cstring(&b, "en"), 0);
    ck_assert_int_eq(sfc_get_status(&b, &code), 0);
    ck_assert_uint_eq(code, SFC_PERMISSION_DENIED);
    ck_assert_int_eq(buf_get_cstring(&b, msg, sizeof(msg)), 0); /* the message is left in place */
    ck_assert_str_eq(msg, "denied");
    buf_free(&b);
}
END_TEST

START_TEST(test_status_truncated_fails_unchanged)
{
    static const uint8_t in[] = {0, 0, 0};
    struct buf b;
    uint32_t code;

    for (size_t n = 0; n <= sizeof(in); n++) {
        buf_view(&b, in, n);
        code = 0xa5a5a5a5u;
        ck_assert_msg(sfc_get_status(&b, &code) == -EBADMSG,
                      "status of %zu bytes: expected -EBADMSG", n);
        expect_at(&b, 0, n, "truncated status");
        ck_assert_uint_eq(code, 0xa5a5a5a5u);
    }
}
END_TEST

/* A FAILURE whose message is the text of an errno SFTP v3 has no code for is that errno; other
 * messages, and OpenSSH's plain "Failure", stay -EIO. */
START_TEST(test_status_message_refines_failure)
{
    struct buf b;
    uint32_t code;
    char msg[64];

    ck_assert_int_eq(sfc_status_errno_msg(SFC_FAILURE, "no space left on device"), -ENOSPC);
    ck_assert_int_eq(sfc_status_errno_msg(SFC_FAILURE, "disk quota exceeded"), -EDQUOT);
    ck_assert_int_eq(sfc_status_errno_msg(SFC_PERMISSION_DENIED, "read-only file system"), -EROFS);
    ck_assert_int_eq(sfc_status_errno_msg(SFC_PERMISSION_DENIED, "permission denied"), -EACCES);
    ck_assert_int_eq(sfc_status_errno_msg(SFC_FAILURE, "Failure"), -EIO);
    ck_assert_int_eq(sfc_status_errno_msg(SFC_FAILURE, ""), -EIO);
    ck_assert_int_eq(sfc_status_errno_msg(SFC_FAILURE, NULL), -EIO);
    ck_assert_int_eq(sfc_status_errno_msg(SFC_NO_SUCH_FILE, "no space left on device"), -ENOENT);
    buf_init(&b, 1024);
    ck_assert_int_eq(buf_put_u32(&b, SFC_FAILURE), 0);
    ck_assert_int_eq(buf_put_cstring(&b, "no space left on device"), 0);
    ck_assert_int_eq(buf_put_cstring(&b, ""), 0);
    ck_assert_int_eq(sfc_get_status_msg(&b, &code, msg, sizeof(msg)), 0);
    ck_assert_uint_eq(code, SFC_FAILURE);
    ck_assert_str_eq(msg, "no space left on device");
    ck_assert_int_eq(sfc_status_errno_msg(code, msg), -ENOSPC);
    buf_free(&b);
    /* a status with no message at all */
    buf_init(&b, 1024);
    ck_assert_int_eq(buf_put_u32(&b, SFC_FAILURE), 0);
    ck_assert_int_eq(sfc_get_status_msg(&b, &code, msg, sizeof(msg)), 0);
    ck_assert_str_eq(msg, "");
    buf_free(&b);
}
END_TEST

START_TEST(test_status_codes_map_to_errno)
{
    static const struct {
        uint32_t code;
        int err;
    } map[] = {
        {SFC_OK, 0},
        {SFC_EOF, -ENODATA},
        {SFC_NO_SUCH_FILE, -ENOENT},
        {SFC_PERMISSION_DENIED, -EACCES},
        {SFC_FAILURE, -EIO},
        {SFC_BAD_MESSAGE, -EBADMSG},
        {SFC_NO_CONNECTION, -EIO},
        {SFC_CONNECTION_LOST, -EIO},
        {SFC_OP_UNSUPPORTED, -EOPNOTSUPP},
    };

    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        int got = sfc_status_errno(map[i].code);
        ck_assert_msg(got == map[i].err, "status %u: expected %d, got %d", map[i].code, map[i].err,
                      got);
    }
}
END_TEST

START_TEST(test_status_unknown_code_is_eio)
{
    static const uint32_t codes[] = {9, 100, 0x7fffffffu, 0x80000000u, UINT32_MAX};

    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        int got = sfc_status_errno(codes[i]);
        ck_assert_msg(got == -EIO, "status %u: expected %d, got %d", codes[i], -EIO, got);
    }
}
END_TEST

/* ---- building packets ---- */

START_TEST(test_put_packet_frames_length_type_id)
{
    struct buf b, payload;
    uint8_t type;
    uint32_t id, v;
    size_t mark;

    buf_init(&b, PKT_MAX);
    ck_assert_int_eq(sfc_put_begin(&b, SFC_HANDLE, 0x0a0b0c0du, &mark), 0);
    ck_assert_uint_eq(mark, 0);
    ck_assert_int_eq(buf_put_u32(&b, 77), 0);
    sfc_put_end(&b, mark);
    ck_assert_uint_eq(buf_avail(&b), 4 + 1 + 4 + 4);
    ck_assert_uint_eq(b.data[3], 9); /* type, id, u32 */
    ck_assert_int_eq(sfc_get_packet(&b, PKT_MAX, &type, &id, &payload), 0);
    ck_assert_uint_eq(type, SFC_HANDLE);
    ck_assert_uint_eq(id, 0x0a0b0c0du);
    ck_assert_int_eq(buf_get_u32(&payload, &v), 0);
    ck_assert_uint_eq(v, 77);
    ck_assert_uint_eq(buf_avail(&payload), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_put_version_packet_has_no_id)
{
    struct buf b, payload;
    uint8_t type;
    uint32_t id = 1, v;
    size_t mark;

    buf_init(&b, PKT_MAX);
    ck_assert_int_eq(sfc_put_begin(&b, SFC_VERSION, 12345, &mark), 0);
    ck_assert_int_eq(buf_put_u32(&b, 3), 0);
    sfc_put_end(&b, mark);
    ck_assert_uint_eq(buf_avail(&b), 4 + 1 + 4);
    ck_assert_int_eq(sfc_get_packet(&b, PKT_MAX, &type, &id, &payload), 0);
    ck_assert_uint_eq(type, SFC_VERSION);
    ck_assert_uint_eq(id, 0);
    ck_assert_int_eq(buf_get_u32(&payload, &v), 0);
    ck_assert_uint_eq(v, 3);
    buf_free(&b);
}
END_TEST

/* The mark counts unread bytes, so a put that compacts the buffer does not move the packet away
 * from it. */
START_TEST(test_put_packet_mark_survives_compaction)
{
    static uint8_t big[4096];
    struct buf b, payload;
    const uint8_t *p;
    uint8_t type;
    uint32_t id, n;
    size_t mark;

    buf_init(&b, PKT_MAX);
    ck_assert_int_eq(buf_put(&b, "0123456789", 10), 0);
    buf_consume(&b, 8); /* "89" stays unread at offset 8 */
    ck_assert_int_eq(sfc_put_begin(&b, SFC_DATA, 5, &mark), 0);
    ck_assert_uint_eq(mark, 2);
    memset(big, 'x', sizeof(big));
    ck_assert_int_eq(buf_put_string(&b, big, sizeof(big)), 0); /* grows: compacts first */
    ck_assert_uint_eq(b.off, 0);
    sfc_put_end(&b, mark);
    buf_consume(&b, 2);
    ck_assert_int_eq(sfc_get_packet(&b, PKT_MAX, &type, &id, &payload), 0);
    ck_assert_uint_eq(type, SFC_DATA);
    ck_assert_uint_eq(id, 5);
    ck_assert_int_eq(buf_get_string(&payload, &p, &n), 0);
    ck_assert_uint_eq(n, sizeof(big));
    ck_assert_uint_eq(buf_avail(&b), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_put_cancel_drops_packet)
{
    struct buf b;
    size_t mark;

    buf_init(&b, PKT_MAX);
    ck_assert_int_eq(buf_put(&b, "keep", 4), 0);
    ck_assert_int_eq(sfc_put_begin(&b, SFC_NAME, 1, &mark), 0);
    ck_assert_int_eq(buf_put_u32(&b, 3), 0);
    sfc_put_cancel(&b, mark);
    ck_assert_uint_eq(buf_avail(&b), 4);
    ck_assert_int_eq(memcmp(buf_ptr(&b), "keep", 4), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_put_begin_over_max_is_emsgsize_and_unchanged)
{
    struct buf b;
    size_t mark = 0xa5;

    for (size_t max = 0; max < 9; max++) {
        buf_init(&b, max);
        ck_assert_msg(sfc_put_begin(&b, SFC_STATUS, 1, &mark) == -EMSGSIZE,
                      "begin in %zu bytes: expected -EMSGSIZE", max);
        ck_assert_uint_eq(buf_avail(&b), 0);
        ck_assert_uint_eq(mark, 0xa5);
        buf_free(&b);
    }
}
END_TEST

START_TEST(test_put_status_roundtrip)
{
    struct buf b, payload;
    uint8_t type;
    uint32_t id, code;
    char msg[64], lang[8];

    buf_init(&b, PKT_MAX);
    ck_assert_int_eq(sfc_put_status(&b, 42, SFC_PERMISSION_DENIED, "read-only file system"), 0);
    ck_assert_int_eq(sfc_get_packet(&b, PKT_MAX, &type, &id, &payload), 0);
    ck_assert_uint_eq(type, SFC_STATUS);
    ck_assert_uint_eq(id, 42);
    ck_assert_int_eq(sfc_get_status(&payload, &code), 0);
    ck_assert_uint_eq(code, SFC_PERMISSION_DENIED);
    ck_assert_int_eq(buf_get_cstring(&payload, msg, sizeof(msg)), 0);
    ck_assert_str_eq(msg, "read-only file system");
    ck_assert_int_eq(buf_get_cstring(&payload, lang, sizeof(lang)), 0);
    ck_assert_str_eq(lang, "");
    ck_assert_uint_eq(buf_avail(&payload), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_put_status_over_max_is_emsgsize_and_unchanged)
{
    const size_t whole = 4 + 1 + 4 + 4 + 4 + 3 + 4; /* "abc" */
    struct buf b;

    for (size_t max = 2; max < 2 + whole; max++) {
        buf_init(&b, max);
        ck_assert_int_eq(buf_put(&b, "xy", 2), 0);
        ck_assert_msg(sfc_put_status(&b, 1, SFC_FAILURE, "abc") == -EMSGSIZE,
                      "status in %zu bytes: expected -EMSGSIZE", max);
        ck_assert_uint_eq(buf_avail(&b), 2);
        buf_free(&b);
    }
    buf_init(&b, 2 + whole);
    ck_assert_int_eq(buf_put(&b, "xy", 2), 0);
    ck_assert_int_eq(sfc_put_status(&b, 1, SFC_FAILURE, "abc"), 0);
    ck_assert_uint_eq(buf_avail(&b), 2 + whole);
    buf_free(&b);
}
END_TEST

START_TEST(test_put_name_roundtrip)
{
    struct tun_sftp_attr got;
    struct buf b;
    char name[32];

    buf_init(&b, PKT_MAX);
    ck_assert_int_eq(
        sfc_put_name(&b, "file.c", "-rw-r--r-- 1 0 0 5 Jan 1 00:00 file.c", &sample_attr), 0);
    poison(&got, sizeof(got));
    ck_assert_int_eq(sfc_get_name(&b, name, sizeof(name), &got), 0);
    ck_assert_str_eq(name, "file.c");
    expect_attr_eq(&sample_attr, &got);
    ck_assert_uint_eq(buf_avail(&b), 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_put_name_over_max_is_emsgsize_and_unchanged)
{
    const size_t whole = 1 + 4 + 1 + 4 + 2 + 4 + 8 + 8 + 4 + 8; /* 7, "n", "ln", all flags */
    struct buf b;

    for (size_t max = 1; max < whole; max++) {
        buf_init(&b, max);
        ck_assert_int_eq(buf_put_u8(&b, 7), 0);
        ck_assert_msg(sfc_put_name(&b, "n", "ln", &sample_attr) == -EMSGSIZE,
                      "name entry in %zu bytes: expected -EMSGSIZE", max);
        ck_assert_uint_eq(buf_avail(&b), 1);
        buf_free(&b);
    }
    buf_init(&b, whole);
    ck_assert_int_eq(buf_put_u8(&b, 7), 0);
    ck_assert_int_eq(sfc_put_name(&b, "n", "ln", &sample_attr), 0);
    ck_assert_uint_eq(buf_avail(&b), whole);
    buf_free(&b);
}
END_TEST

static TCase *tcase(Suite *s, const char *name)
{
    TCase *tc = tcase_create(name);
    suite_add_tcase(s, tc);
    return tc;
}

static Suite *sftp_codec_suite(void)
{
    Suite *s = suite_create("sftp_codec");
    TCase *tc;

    tc = tcase(s, "packet");
    tcase_add_test(tc, test_packet_whole_returns_type_id_payload);
    tcase_add_test(tc, test_packet_empty_payload);
    tcase_add_test(tc, test_packet_incomplete_is_eagain_and_consumes_nothing);
    tcase_add_test(tc, test_packet_arrives_byte_by_byte);
    tcase_add_test(tc, test_packet_several_in_one_buffer_taken_in_order);
    tcase_add_test(tc, test_packet_payload_is_read_only_view);
    tcase_add_test(tc, test_packet_zero_length_is_ebadmsg);
    tcase_add_test(tc, test_packet_short_length_is_ebadmsg);
    tcase_add_test(tc, test_packet_over_max_is_ebadmsg);
    tcase_add_test(tc, test_packet_at_max_accepted);
    tcase_add_test(tc, test_packet_huge_length_is_ebadmsg);
    tcase_add_test(tc, test_packet_version_has_no_id);
    tcase_add_test(tc, test_packet_version_of_length_one_accepted);
    tcase_add_test(tc, test_packet_version_truncated_is_eagain);

    tc = tcase(s, "attr");
    tcase_add_test(tc, test_attr_encoding_is_v3_order);
    tcase_add_test(tc, test_attr_roundtrip_all_flags);
    tcase_add_test(tc, test_attr_roundtrip_every_flag_subset);
    tcase_add_test(tc, test_attr_put_drops_extended_flag);
    tcase_add_test(tc, test_attr_extended_pairs_skipped);
    tcase_add_test(tc, test_attr_truncated_each_field_fails_unchanged);
    tcase_add_test(tc, test_attr_extended_count_at_max_accepted);
    tcase_add_test(tc, test_attr_too_many_extended_pairs_refused);
    tcase_add_test(tc, test_attr_garbage_extended_count_refused);
    tcase_add_test(tc, test_attr_extended_string_past_end_refused);
    tcase_add_test(tc, test_attr_put_over_max_is_emsgsize_and_unchanged);
    tcase_add_test(tc, test_attr_put_on_view_is_emsgsize);

    tc = tcase(s, "name");
    tcase_add_test(tc, test_name_entry_roundtrip);
    tcase_add_test(tc, test_name_several_entries_in_sequence);
    tcase_add_test(tc, test_name_exact_fit_accepted);
    tcase_add_test(tc, test_name_too_long_refused);
    tcase_add_test(tc, test_name_with_nul_refused);
    tcase_add_test(tc, test_name_truncated_each_part_fails_unchanged);
    tcase_add_test(tc, test_name_longname_past_end_refused);
    tcase_add_test(tc, test_name_bad_attrs_refused_whole_entry);

    tc = tcase(s, "status");
    tcase_add_test(tc, test_status_reads_code_only);
    tcase_add_test(tc, test_status_truncated_fails_unchanged);
    tcase_add_test(tc, test_status_codes_map_to_errno);
    tcase_add_test(tc, test_status_message_refines_failure);
    tcase_add_test(tc, test_status_unknown_code_is_eio);

    tc = tcase(s, "put");
    tcase_add_test(tc, test_put_packet_frames_length_type_id);
    tcase_add_test(tc, test_put_version_packet_has_no_id);
    tcase_add_test(tc, test_put_packet_mark_survives_compaction);
    tcase_add_test(tc, test_put_cancel_drops_packet);
    tcase_add_test(tc, test_put_begin_over_max_is_emsgsize_and_unchanged);
    tcase_add_test(tc, test_put_status_roundtrip);
    tcase_add_test(tc, test_put_status_over_max_is_emsgsize_and_unchanged);
    tcase_add_test(tc, test_put_name_roundtrip);
    tcase_add_test(tc, test_put_name_over_max_is_emsgsize_and_unchanged);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(sftp_codec_suite());
    int failed;

    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
