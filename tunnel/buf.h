/* buf.h - one bounded byte buffer with typed big-endian get/put, for every wire format.
 *
 * A buffer holds bytes [off, len) of data[0..cap); it never grows past 'max' bytes. Puts append
 * at the end, gets consume from the front. Every get checks what remains first, and a failed get
 * leaves the buffer unchanged. Strings are SSH strings: a u32 length, then the bytes.
 *
 * Return contract: 0 on success; -EBADMSG when a get asks for more than remains (or, for
 * buf_get_cstring, the string holds a NUL or does not fit 'dst'); -EMSGSIZE when a put would pass
 * 'max'; -ENOMEM when allocation fails. A buffer is owned by one thread at a time.
 */
#ifndef OFFLOAD_BUF_H
#define OFFLOAD_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    uint8_t *data;
    size_t off; /* read position */
    size_t len; /* end of valid bytes */
    size_t cap; /* allocated bytes; 0 for a read-only view */
    size_t max; /* hard limit on len - off + what a put may add */
};

/* Initialise an empty buffer limited to 'max' bytes. Allocates nothing yet. */
void buf_init(struct buf *b, size_t max);
/* Free the storage; the buffer may be initialised again. */
void buf_free(struct buf *b);
/* Drop all content, keep the storage. */
void buf_reset(struct buf *b);
/* A read-only view of n bytes at p (not copied, not freed). Puts on a view fail with -EMSGSIZE. */
void buf_view(struct buf *b, const void *p, size_t n);

static inline size_t buf_avail(const struct buf *b)
{
    return b->len - b->off;
}
/* The first unread byte; NULL for a buffer that never held storage. */
static inline const uint8_t *buf_ptr(const struct buf *b)
{
    return b->data ? b->data + b->off : NULL;
}

/* Make room for n more bytes and return where they go (to be committed with buf_commit). */
int buf_reserve(struct buf *b, size_t n, uint8_t **where);
void buf_commit(struct buf *b, size_t n);
/* Consume n bytes from the front (n <= buf_avail). */
void buf_consume(struct buf *b, size_t n);

int buf_put(struct buf *b, const void *p, size_t n);
int buf_put_u8(struct buf *b, uint8_t v);
int buf_put_u32(struct buf *b, uint32_t v);
int buf_put_u64(struct buf *b, uint64_t v);
int buf_put_string(struct buf *b, const void *p, size_t n);
int buf_put_cstring(struct buf *b, const char *s);
/* Overwrite a u32 already in the buffer at absolute position pos (for length prefixes). */
void buf_poke_u32(struct buf *b, size_t pos, uint32_t v);

int buf_get(struct buf *b, void *dst, size_t n);
int buf_get_u8(struct buf *b, uint8_t *v);
int buf_get_u32(struct buf *b, uint32_t *v);
int buf_get_u64(struct buf *b, uint64_t *v);
/* An SSH string, not copied: *p points into the buffer, valid until the buffer changes. */
int buf_get_string(struct buf *b, const uint8_t **p, uint32_t *n);
/* An SSH string copied to dst as a C string; refused if it holds a NUL or needs more than
 * dstlen bytes with the terminator. */
int buf_get_cstring(struct buf *b, char *dst, size_t dstlen);

#endif
