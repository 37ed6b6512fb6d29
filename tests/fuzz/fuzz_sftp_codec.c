/* fuzz_sftp_codec.c - libFuzzer target for the SFTP v3 wire format (tunnel/sftp_codec.h).
 *
 * The input is a byte stream as a peer would send it. It is cut into packets with
 * sfc_get_packet, twice per packet limit: once from a read-only view of the whole input, once fed
 * in chunks into an owned buffer (so that partial packets, compaction and growth happen). Every
 * payload is copied to an allocation of its exact size, so ASan catches any read past its end,
 * and parsed according to its type. After every call the invariants of the headers are checked:
 * return codes, a failed get leaves the buffer and the outputs as they were, a successful one
 * consumes what the wire format says, and attributes survive a put/get round trip.
 */
#include "sftp_codec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define PKT_MAX (256 * 1024 + 1024) /* what sftp_client.c passes */
#define NAME_MAX_LEN 256
#define KNOWN_FLAGS                                                                                \
    (TUN_SFTP_ATTR_SIZE | TUN_SFTP_ATTR_UIDGID | TUN_SFTP_ATTR_PERMISSIONS |                       \
     TUN_SFTP_ATTR_ACMODTIME)

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A buffer's whole state, to compare before and after a call. */
struct mark {
    const uint8_t *data;
    size_t off, len, cap, max;
};

static struct mark mark_of(const struct buf *b)
{
    struct mark m = {b->data, b->off, b->len, b->cap, b->max};
    return m;
}

static void check_unchanged(const struct mark *m, const struct buf *b)
{
    CHECK(b->data == m->data);
    CHECK(b->off == m->off);
    CHECK(b->len == m->len);
    CHECK(b->cap == m->cap);
    CHECK(b->max == m->max);
}

/* After a successful get: only off moved, forward, and not past len. */
static size_t check_consumed(const struct mark *m, const struct buf *b)
{
    CHECK(b->data == m->data);
    CHECK(b->len == m->len);
    CHECK(b->cap == m->cap);
    CHECK(b->max == m->max);
    CHECK(b->off >= m->off);
    CHECK(b->off <= b->len);
    return b->off - m->off;
}

static int check_u32(struct buf *b, uint32_t *v)
{
    struct mark m = mark_of(b);
    uint32_t x = 0xa5a5a5a5u;
    int r = buf_get_u32(b, &x);

    CHECK(r == 0 || r == -EBADMSG);
    CHECK((r == 0) == (m.len - m.off >= 4));
    if (r != 0) {
        check_unchanged(&m, b);
        CHECK(x == 0xa5a5a5a5u);
        return r;
    }
    CHECK(check_consumed(&m, b) == 4);
    CHECK(x == be32(m.data + m.off));
    *v = x;
    return 0;
}

static int check_string(struct buf *b)
{
    struct mark m = mark_of(b);
    const uint8_t *p = NULL;
    uint32_t n = 0xa5a5a5a5u;
    int r = buf_get_string(b, &p, &n);

    CHECK(r == 0 || r == -EBADMSG);
    if (r != 0) {
        check_unchanged(&m, b);
        CHECK(p == NULL && n == 0xa5a5a5a5u);
        CHECK(m.len - m.off < 4 || m.len - m.off - 4 < be32(m.data + m.off));
        return r;
    }
    CHECK(check_consumed(&m, b) == 4 + (size_t)n);
    CHECK(p == m.data + m.off + 4);
    CHECK(n == be32(m.data + m.off));
    return 0;
}

static int check_cstring(struct buf *b, size_t dstlen)
{
    struct mark m = mark_of(b);
    char dst[NAME_MAX_LEN];
    int r;

    CHECK(dstlen <= sizeof(dst));
    memset(dst, 0xa5, sizeof(dst));
    r = buf_get_cstring(b, dst, dstlen);
    CHECK(r == 0 || r == -EBADMSG);
    if (r != 0) {
        check_unchanged(&m, b);
        return r;
    }
    CHECK(check_consumed(&m, b) == 4 + strlen(dst));
    CHECK(strlen(dst) < dstlen);
    CHECK(be32(m.data + m.off) == strlen(dst));
    CHECK(memcmp(m.data + m.off + 4, dst, strlen(dst)) == 0);
    return 0;
}

/* Wire size of an ATTRS without extended pairs. */
static size_t attr_size(uint32_t flags)
{
    return 4 + (flags & TUN_SFTP_ATTR_SIZE ? 8 : 0) + (flags & TUN_SFTP_ATTR_UIDGID ? 8 : 0) +
           (flags & TUN_SFTP_ATTR_PERMISSIONS ? 4 : 0) + (flags & TUN_SFTP_ATTR_ACMODTIME ? 8 : 0);
}

/* What a get returned for a field the flags say is absent. */
static void check_absent_fields_zero(const struct tun_sftp_attr *a)
{
    if (!(a->flags & TUN_SFTP_ATTR_SIZE))
        CHECK(a->size == 0);
    if (!(a->flags & TUN_SFTP_ATTR_UIDGID))
        CHECK(a->uid == 0 && a->gid == 0);
    if (!(a->flags & TUN_SFTP_ATTR_PERMISSIONS))
        CHECK(a->perm == 0);
    if (!(a->flags & TUN_SFTP_ATTR_ACMODTIME))
        CHECK(a->atime == 0 && a->mtime == 0);
}

/* Put the attributes back on the wire and read them again. */
static void check_attr_roundtrip(const struct tun_sftp_attr *a, const uint8_t *wire, size_t used)
{
    struct tun_sftp_attr back;
    struct buf e;

    buf_init(&e, attr_size(a->flags));
    CHECK(sfc_put_attr(&e, a) == 0);
    CHECK(buf_avail(&e) == attr_size(a->flags));
    if (!(a->flags & TUN_SFTP_ATTR_EXTENDED)) {
        CHECK(buf_avail(&e) == used);
        CHECK(memcmp(buf_ptr(&e), wire, used) == 0);
    }
    memset(&back, 0xa5, sizeof(back));
    CHECK(sfc_get_attr(&e, &back) == 0);
    CHECK(buf_avail(&e) == 0);
    CHECK(back.flags == (a->flags & ~TUN_SFTP_ATTR_EXTENDED));
    CHECK(back.size == a->size && back.uid == a->uid && back.gid == a->gid);
    CHECK(back.perm == a->perm && back.atime == a->atime && back.mtime == a->mtime);
    buf_free(&e);

    /* one byte short of room: refused, and nothing of it left behind */
    buf_init(&e, attr_size(a->flags) - 1);
    CHECK(sfc_put_attr(&e, a) == -EMSGSIZE);
    CHECK(buf_avail(&e) == 0);
    buf_free(&e);
}

static int check_attr(struct buf *b)
{
    struct mark m = mark_of(b);
    struct tun_sftp_attr a, poisoned;
    size_t used;
    int r;

    memset(&a, 0xa5, sizeof(a));
    poisoned = a;
    r = sfc_get_attr(b, &a);
    CHECK(r == 0 || r == -EBADMSG);
    if (r != 0) {
        check_unchanged(&m, b);
        CHECK(memcmp(&a, &poisoned, sizeof(a)) == 0);
        return r;
    }
    used = check_consumed(&m, b);
    CHECK(a.flags == be32(m.data + m.off));
    CHECK(used >= attr_size(a.flags));
    if (!(a.flags & TUN_SFTP_ATTR_EXTENDED))
        CHECK(used == attr_size(a.flags));
    else
        CHECK(be32(m.data + m.off + attr_size(a.flags)) <= SFC_EXT_PAIRS_MAX);
    check_absent_fields_zero(&a);
    check_attr_roundtrip(&a, m.data + m.off, used);
    return 0;
}

static int check_name(struct buf *b, size_t namelen)
{
    struct mark m = mark_of(b);
    struct tun_sftp_attr a, poisoned;
    char name[NAME_MAX_LEN];
    int r;

    CHECK(namelen <= sizeof(name));
    memset(&a, 0xa5, sizeof(a));
    poisoned = a;
    memset(name, 0xa5, sizeof(name));
    r = sfc_get_name(b, name, namelen, &a);
    CHECK(r == 0 || r == -EBADMSG);
    if (r != 0) {
        check_unchanged(&m, b);
        CHECK(memcmp(&a, &poisoned, sizeof(a)) == 0);
        return r;
    }
    check_consumed(&m, b);
    CHECK(strlen(name) < namelen);
    CHECK(be32(m.data + m.off) == strlen(name));
    CHECK(memcmp(m.data + m.off + 4, name, strlen(name)) == 0);
    check_absent_fields_zero(&a);
    return 0;
}

static void check_status(struct buf *b)
{
    struct mark m = mark_of(b);
    uint32_t code = 0xa5a5a5a5u;
    int r = sfc_get_status(b, &code), e;

    CHECK(r == 0 || r == -EBADMSG);
    if (r != 0) {
        check_unchanged(&m, b);
        CHECK(code == 0xa5a5a5a5u);
        return;
    }
    CHECK(check_consumed(&m, b) == 4);
    CHECK(code == be32(m.data + m.off));
    e = sfc_status_errno(code);
    CHECK(e == 0 || e == -ENODATA || e == -ENOENT || e == -EACCES || e == -EBADMSG ||
          e == -EIO || e == -EOPNOTSUPP);
    CHECK((e == 0) == (code == SFC_OK));
    if (code > SFC_OP_UNSUPPORTED)
        CHECK(e == -EIO);
    check_cstring(b, NAME_MAX_LEN); /* message */
    check_cstring(b, NAME_MAX_LEN); /* language tag */
}

/* Parse one payload (an exact-size copy) as its type says. */
static void parse_payload(uint8_t type, struct buf *b)
{
    uint32_t v, count;

    switch (type) {
    case SFC_VERSION:
        if (check_u32(b, &v) == 0)
            while (check_string(b) == 0 && check_string(b) == 0)
                ;
        break;
    case SFC_STATUS:
        check_status(b);
        break;
    case SFC_HANDLE:
    case SFC_DATA:
        check_string(b);
        break;
    case SFC_NAME:
        if (check_u32(b, &count) == 0)
            for (uint32_t i = 0; i < count && check_name(b, NAME_MAX_LEN) == 0; i++)
                ;
        break;
    case SFC_ATTRS:
        check_attr(b);
        break;
    case SFC_OPEN: /* filename, pflags, attrs */
        if (check_string(b) == 0 && check_u32(b, &v) == 0)
            check_attr(b);
        break;
    case SFC_SETSTAT: /* path or handle, then attrs */
    case SFC_FSETSTAT:
    case SFC_MKDIR:
        if (check_string(b) == 0)
            check_attr(b);
        break;
    default: /* anything else: try the structured parsers on it, with small name buffers */
        if (check_attr(b) != 0)
            check_name(b, 1 + (buf_avail(b) ? buf_ptr(b)[0] % 16 : 0));
        break;
    }
}

/* One sfc_get_packet call, checked against the framing rules; returns its result. */
static int next_packet(struct buf *rx, uint32_t max)
{
    struct mark m = mark_of(rx);
    size_t avail = buf_avail(rx);
    const uint8_t *p = avail ? buf_ptr(rx) : NULL;
    uint8_t type = 0xa5;
    uint32_t id = 0xa5a5a5a5u, len = 0;
    struct buf payload, poisoned;
    int r, want;

    if (avail >= 4)
        len = be32(p);
    if (avail < 4)
        want = -EAGAIN;
    else if (len == 0)
        want = -EBADMSG;
    else if (avail < 5)
        want = -EAGAIN;
    else if (len > max || (p[4] != SFC_VERSION && len < 5))
        want = -EBADMSG;
    else if (avail - 4 < len)
        want = -EAGAIN;
    else
        want = 0;

    memset(&payload, 0xa5, sizeof(payload));
    poisoned = payload;
    r = sfc_get_packet(rx, max, &type, &id, &payload);
    if (r != want) {
        fprintf(stderr, "sfc_get_packet: expected %d, got %d (avail %zu, len %u, max %u)\n", want,
                r, avail, len, max);
        abort();
    }
    if (r != 0) {
        check_unchanged(&m, rx);
        CHECK(type == 0xa5 && id == 0xa5a5a5a5u);
        CHECK(memcmp(&payload, &poisoned, sizeof(payload)) == 0);
        return r;
    }
    CHECK(buf_avail(rx) == avail - 4 - len);
    CHECK(type == p[4]);
    CHECK(payload.cap == 0 && payload.off == 0);
    if (type == SFC_VERSION) {
        CHECK(id == 0);
        CHECK(payload.data == p + 5 && payload.len == len - 1);
    } else {
        CHECK(id == be32(p + 5));
        CHECK(payload.data == p + 9 && payload.len == len - 5);
    }

    /* an exact-size copy: any read past the payload's end is a heap overflow */
    {
        size_t n = buf_avail(&payload);
        uint8_t *copy = malloc(n ? n : 1);
        struct buf b;

        CHECK(copy != NULL);
        if (n)
            memcpy(copy, buf_ptr(&payload), n);
        buf_view(&b, copy, n);
        CHECK(buf_put_u8(&b, 0) == -EMSGSIZE); /* a view refuses puts */
        parse_payload(type, &b);
        free(copy);
    }
    return 0;
}

/* The whole input as one read-only view. */
static void run_view(const uint8_t *data, size_t size, uint32_t max)
{
    struct buf rx;

    buf_view(&rx, data, size);
    while (next_packet(&rx, max) == 0)
        ;
}

/* The input fed in chunks of 'chunk' bytes into an owned buffer, as a socket would deliver it. */
static void run_chunks(const uint8_t *data, size_t size, uint32_t max, size_t chunk)
{
    struct buf rx;
    int r = -EAGAIN;

    /* room for a partial packet (< 4 + max bytes) plus one chunk: a put never fails */
    buf_init(&rx, 4 + (size_t)max + chunk);
    for (size_t i = 0; i < size && r == -EAGAIN; i += chunk) {
        size_t n = size - i < chunk ? size - i : chunk;
        CHECK(buf_put(&rx, data + i, n) == 0);
        while ((r = next_packet(&rx, max)) == 0)
            ;
    }
    buf_free(&rx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint32_t maxes[] = {4096, PKT_MAX};
    size_t chunk = 1 + size % 61;

    for (size_t i = 0; i < sizeof(maxes) / sizeof(maxes[0]); i++) {
        run_view(data, size, maxes[i]);
        run_chunks(data, size, maxes[i], chunk);
    }
    return 0;
}
