/* sftp_codec.c - SFTP v3 wire format; see sftp_codec.h. */
#include "sftp_codec.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int sfc_get_packet(struct buf *rx, uint32_t max, uint8_t *type, uint32_t *id, struct buf *payload)
{
    const uint8_t *p;
    uint32_t len;

    if (buf_avail(rx) < 4)
        return -EAGAIN; /* and no buf_ptr: an empty rx's data may be NULL */
    p = buf_ptr(rx);
    len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    if (buf_avail(rx) < 5)
        return len == 0 ? -EBADMSG : -EAGAIN;
    if (len == 0 || len > max || (p[4] != SFC_VERSION && len < 5))
        return -EBADMSG;
    if (buf_avail(rx) - 4 < len)
        return -EAGAIN;
    *type = p[4];
    if (p[4] == SFC_VERSION) {
        *id = 0;
        buf_view(payload, p + 5, len - 1);
    } else {
        *id = (uint32_t)p[5] << 24 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 8 | p[8];
        buf_view(payload, p + 9, len - 5);
    }
    buf_consume(rx, 4 + (size_t)len);
    return 0;
}

int sfc_get_attr(struct buf *b, struct tun_sftp_attr *a)
{
    size_t save = b->off;
    struct tun_sftp_attr x;
    uint32_t n;
    int r;

    memset(&x, 0, sizeof(x));
    if ((r = buf_get_u32(b, &x.flags)) != 0)
        goto fail;
    if ((x.flags & TUN_SFTP_ATTR_SIZE) && (r = buf_get_u64(b, &x.size)) != 0)
        goto fail;
    if ((x.flags & TUN_SFTP_ATTR_UIDGID) &&
        ((r = buf_get_u32(b, &x.uid)) != 0 || (r = buf_get_u32(b, &x.gid)) != 0))
        goto fail;
    if ((x.flags & TUN_SFTP_ATTR_PERMISSIONS) && (r = buf_get_u32(b, &x.perm)) != 0)
        goto fail;
    if ((x.flags & TUN_SFTP_ATTR_ACMODTIME) &&
        ((r = buf_get_u32(b, &x.atime)) != 0 || (r = buf_get_u32(b, &x.mtime)) != 0))
        goto fail;
    if (x.flags & TUN_SFTP_ATTR_EXTENDED) {
        if ((r = buf_get_u32(b, &n)) != 0)
            goto fail;
        if (n > SFC_EXT_PAIRS_MAX) {
            r = -EBADMSG;
            goto fail;
        }
        for (uint32_t i = 0; i < n; i++) {
            const uint8_t *p;
            uint32_t l;
            if ((r = buf_get_string(b, &p, &l)) != 0 || (r = buf_get_string(b, &p, &l)) != 0)
                goto fail;
        }
    }
    *a = x;
    return 0;
fail:
    b->off = save;
    return r;
}

int sfc_put_attr(struct buf *b, const struct tun_sftp_attr *a)
{
    uint32_t flags = a->flags & ~TUN_SFTP_ATTR_EXTENDED;
    size_t save = buf_avail(b); /* relative: a put may compact the buffer */
    int r;

    if ((r = buf_put_u32(b, flags)) != 0)
        goto fail;
    if ((flags & TUN_SFTP_ATTR_SIZE) && (r = buf_put_u64(b, a->size)) != 0)
        goto fail;
    if ((flags & TUN_SFTP_ATTR_UIDGID) &&
        ((r = buf_put_u32(b, a->uid)) != 0 || (r = buf_put_u32(b, a->gid)) != 0))
        goto fail;
    if ((flags & TUN_SFTP_ATTR_PERMISSIONS) && (r = buf_put_u32(b, a->perm)) != 0)
        goto fail;
    if ((flags & TUN_SFTP_ATTR_ACMODTIME) &&
        ((r = buf_put_u32(b, a->atime)) != 0 || (r = buf_put_u32(b, a->mtime)) != 0))
        goto fail;
    return 0;
fail:
    b->len = b->off + save;
    return r;
}

int sfc_get_name(struct buf *b, char *name, size_t namelen, struct tun_sftp_attr *a)
{
    size_t save = b->off;
    const uint8_t *p;
    uint32_t n;
    int r;

    if ((r = buf_get_cstring(b, name, namelen)) != 0 || (r = buf_get_string(b, &p, &n)) != 0 ||
        (r = sfc_get_attr(b, a)) != 0) {
        b->off = save;
        return r;
    }
    return 0;
}

int sfc_put_begin(struct buf *b, uint8_t type, uint32_t id, size_t *mark)
{
    size_t save = buf_avail(b);
    int r;

    if ((r = buf_put_u32(b, 0)) != 0 || (r = buf_put_u8(b, type)) != 0 ||
        (type != SFC_VERSION && (r = buf_put_u32(b, id)) != 0)) {
        b->len = b->off + save;
        return r;
    }
    *mark = save;
    return 0;
}

void sfc_put_end(struct buf *b, size_t mark)
{
    buf_poke_u32(b, b->off + mark, (uint32_t)(buf_avail(b) - mark - 4));
}

void sfc_put_cancel(struct buf *b, size_t mark)
{
    b->len = b->off + mark;
}

int sfc_put_status(struct buf *b, uint32_t id, uint32_t code, const char *msg)
{
    size_t mark;
    int r;

    if ((r = sfc_put_begin(b, SFC_STATUS, id, &mark)) != 0)
        return r;
    if ((r = buf_put_u32(b, code)) != 0 || (r = buf_put_cstring(b, msg)) != 0 ||
        (r = buf_put_cstring(b, "")) != 0) {
        sfc_put_cancel(b, mark);
        return r;
    }
    sfc_put_end(b, mark);
    return 0;
}

int sfc_put_name(struct buf *b, const char *name, const char *longname,
                 const struct tun_sftp_attr *a)
{
    size_t save = buf_avail(b);
    int r;

    if ((r = buf_put_cstring(b, name)) != 0 || (r = buf_put_cstring(b, longname)) != 0 ||
        (r = sfc_put_attr(b, a)) != 0) {
        b->len = b->off + save;
        return r;
    }
    return 0;
}

int sfc_get_status(struct buf *b, uint32_t *code)
{
    return buf_get_u32(b, code);
}

int sfc_get_status_msg(struct buf *b, uint32_t *code, char *msg, size_t msglen)
{
    const uint8_t *p;
    uint32_t n;
    if (msglen)
        msg[0] = '\0';
    if (buf_get_u32(b, code) != 0)
        return -EBADMSG;
    if (msglen && buf_get_string(b, &p, &n) == 0) {
        size_t k = n < msglen - 1 ? n : msglen - 1;
        memcpy(msg, p, k);
        msg[k] = '\0';
    }
    return 0;
}

int sfc_status_errno_msg(uint32_t code, const char *msg)
{
    static const int refine[] = {ENOSPC,  EDQUOT, EROFS,  EFBIG,        EEXIST, ENOTEMPTY,
                                 ENOTDIR, EISDIR, ENAMETOOLONG, ELOOP,  EXDEV,  EMLINK,
                                 EINVAL,  EBUSY,  ETXTBSY,      EPERM};
    int err = sfc_status_errno(code);
    if ((code != SFC_FAILURE && code != SFC_PERMISSION_DENIED) || !msg || !*msg)
        return err;
    for (size_t i = 0; i < sizeof(refine) / sizeof(refine[0]); i++) {
        char text[128];
        const char *t = strerror_r(refine[i], text, sizeof(text));
        if (t != text)
            snprintf(text, sizeof(text), "%s", t);
        if (text[0] >= 'A' && text[0] <= 'Z')
            text[0] = (char)(text[0] - 'A' + 'a');
        if (strcmp(text, msg) == 0)
            return -refine[i];
    }
    return err;
}

int sfc_status_errno(uint32_t code)
{
    switch (code) {
    case SFC_OK:
        return 0;
    case SFC_EOF:
        return -ENODATA;
    case SFC_NO_SUCH_FILE:
        return -ENOENT;
    case SFC_PERMISSION_DENIED:
        return -EACCES;
    case SFC_BAD_MESSAGE:
        return -EBADMSG;
    case SFC_OP_UNSUPPORTED:
        return -EOPNOTSUPP;
    default:
        return -EIO;
    }
}
