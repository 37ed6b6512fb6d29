/* buf.c - the bounded byte buffer; see buf.h. */
#include "buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b, size_t max)
{
    memset(b, 0, sizeof(*b));
    b->max = max;
}

void buf_free(struct buf *b)
{
    if (b->cap)
        free(b->data);
    buf_init(b, b->max);
}

void buf_reset(struct buf *b)
{
    b->off = b->len = 0;
}

void buf_view(struct buf *b, const void *p, size_t n)
{
    b->data = (uint8_t *)p;
    b->off = 0;
    b->len = n;
    b->cap = 0;
    b->max = n;
}

int buf_reserve(struct buf *b, size_t n, uint8_t **where)
{
    if (b->cap == 0 && b->data != NULL)
        return -EMSGSIZE; /* a view */
    if (n > b->max || buf_avail(b) > b->max - n)
        return -EMSGSIZE;
    if (b->len + n > b->cap && b->off > 0) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (d == NULL)
            return -ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    *where = b->data ? b->data + b->len : NULL; /* NULL + 0 is undefined: n == 0, no storage */
    return 0;
}

void buf_commit(struct buf *b, size_t n)
{
    b->len += n;
}

void buf_consume(struct buf *b, size_t n)
{
    b->off += n;
    if (b->off == b->len && b->cap)
        b->off = b->len = 0;
}

int buf_put(struct buf *b, const void *p, size_t n)
{
    uint8_t *w;
    int r;

    if ((r = buf_reserve(b, n, &w)) != 0)
        return r;
    if (n)
        memcpy(w, p, n);
    buf_commit(b, n);
    return 0;
}

int buf_put_u8(struct buf *b, uint8_t v)
{
    return buf_put(b, &v, 1);
}

int buf_put_u32(struct buf *b, uint32_t v)
{
    uint8_t x[4] = {v >> 24, v >> 16, v >> 8, v};
    return buf_put(b, x, 4);
}

int buf_put_u64(struct buf *b, uint64_t v)
{
    uint8_t x[8] = {v >> 56, v >> 48, v >> 40, v >> 32, v >> 24, v >> 16, v >> 8, v};
    return buf_put(b, x, 8);
}

int buf_put_string(struct buf *b, const void *p, size_t n)
{
    uint8_t *w;
    int r;

    if (n > UINT32_MAX)
        return -EMSGSIZE;
    if ((r = buf_reserve(b, 4 + n, &w)) != 0)
        return r;
    w[0] = n >> 24;
    w[1] = n >> 16;
    w[2] = n >> 8;
    w[3] = n;
    if (n)
        memcpy(w + 4, p, n);
    buf_commit(b, 4 + n);
    return 0;
}

int buf_put_cstring(struct buf *b, const char *s)
{
    return buf_put_string(b, s, strlen(s));
}

void buf_poke_u32(struct buf *b, size_t pos, uint32_t v)
{
    b->data[pos] = v >> 24;
    b->data[pos + 1] = v >> 16;
    b->data[pos + 2] = v >> 8;
    b->data[pos + 3] = v;
}

int buf_get(struct buf *b, void *dst, size_t n)
{
    if (buf_avail(b) < n)
        return -EBADMSG;
    if (n)
        memcpy(dst, buf_ptr(b), n);
    b->off += n;
    return 0;
}

int buf_get_u8(struct buf *b, uint8_t *v)
{
    return buf_get(b, v, 1);
}

int buf_get_u32(struct buf *b, uint32_t *v)
{
    const uint8_t *p;

    if (buf_avail(b) < 4)
        return -EBADMSG;
    p = buf_ptr(b); /* not before: an empty buffer's data may be NULL */
    *v = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    b->off += 4;
    return 0;
}

int buf_get_u64(struct buf *b, uint64_t *v)
{
    const uint8_t *p;
    uint64_t x = 0;

    if (buf_avail(b) < 8)
        return -EBADMSG;
    p = buf_ptr(b);
    for (int i = 0; i < 8; i++)
        x = x << 8 | p[i];
    *v = x;
    b->off += 8;
    return 0;
}

int buf_get_string(struct buf *b, const uint8_t **p, uint32_t *n)
{
    const uint8_t *q;
    uint32_t len;

    if (buf_avail(b) < 4)
        return -EBADMSG;
    q = buf_ptr(b);
    len = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
    if (buf_avail(b) - 4 < len)
        return -EBADMSG;
    *p = q + 4;
    *n = len;
    b->off += 4 + (size_t)len;
    return 0;
}

int buf_get_cstring(struct buf *b, char *dst, size_t dstlen)
{
    size_t save = b->off;
    const uint8_t *p;
    uint32_t n;
    int r;

    if ((r = buf_get_string(b, &p, &n)) != 0)
        return r;
    if ((size_t)n + 1 > dstlen || memchr(p, 0, n) != NULL) {
        b->off = save;
        return -EBADMSG;
    }
    memcpy(dst, p, n);
    dst[n] = '\0';
    return 0;
}
