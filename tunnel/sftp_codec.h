/* sftp_codec.h - SFTP v3 wire format: framing, attributes, names, status codes (sfc_*).
 *
 * Pure functions over struct buf (buf.h): no I/O, no state, any thread. Every get checks what
 * remains before use and, on failure, leaves the buffer as it was. Used by the client
 * (sftp_client.c) and by the server (sftp_server.c).
 */
#ifndef OFFLOAD_SFTP_CODEC_H
#define OFFLOAD_SFTP_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

enum sfc_type {
    SFC_INIT = 1,
    SFC_VERSION = 2,
    SFC_OPEN = 3,
    SFC_CLOSE = 4,
    SFC_READ = 5,
    SFC_WRITE = 6,
    SFC_LSTAT = 7,
    SFC_FSTAT = 8,
    SFC_SETSTAT = 9,
    SFC_FSETSTAT = 10,
    SFC_OPENDIR = 11,
    SFC_READDIR = 12,
    SFC_REMOVE = 13,
    SFC_MKDIR = 14,
    SFC_RMDIR = 15,
    SFC_REALPATH = 16,
    SFC_STAT = 17,
    SFC_RENAME = 18,
    SFC_READLINK = 19,
    SFC_SYMLINK = 20,
    SFC_STATUS = 101,
    SFC_HANDLE = 102,
    SFC_DATA = 103,
    SFC_NAME = 104,
    SFC_ATTRS = 105,
    SFC_EXTENDED = 200,
    SFC_EXTENDED_REPLY = 201,
};

enum sfc_status {
    SFC_OK = 0,
    SFC_EOF = 1,
    SFC_NO_SUCH_FILE = 2,
    SFC_PERMISSION_DENIED = 3,
    SFC_FAILURE = 4,
    SFC_BAD_MESSAGE = 5,
    SFC_NO_CONNECTION = 6,
    SFC_CONNECTION_LOST = 7,
    SFC_OP_UNSUPPORTED = 8,
};

/* OPEN pflags */
#define SFC_FXF_READ   0x00000001u
#define SFC_FXF_WRITE  0x00000002u
#define SFC_FXF_APPEND 0x00000004u
#define SFC_FXF_CREAT  0x00000008u
#define SFC_FXF_TRUNC  0x00000010u
#define SFC_FXF_EXCL   0x00000020u

/* attribute flags */
#define TUN_SFTP_ATTR_SIZE        0x00000001u
#define TUN_SFTP_ATTR_UIDGID      0x00000002u
#define TUN_SFTP_ATTR_PERMISSIONS 0x00000004u
#define TUN_SFTP_ATTR_ACMODTIME   0x00000008u
#define TUN_SFTP_ATTR_EXTENDED    0x80000000u

#define SFC_EXT_PAIRS_MAX 64 /* extended attribute pairs accepted in one ATTRS */

struct tun_sftp_attr {
    uint32_t flags; /* TUN_SFTP_ATTR_* present */
    uint64_t size;
    uint32_t uid, gid;
    uint32_t perm; /* st_mode: type and permission bits */
    uint32_t atime, mtime;
};

/* Take one whole packet off the front of 'rx': its type, its request id (0 for VERSION, which
 * has none) and a read-only view of the rest in 'payload', valid until rx changes. Returns 0,
 * -EAGAIN when rx does not hold a whole packet yet (nothing consumed), or -EBADMSG when the
 * length is below 5 (1 for VERSION) or above max (the stream cannot be trusted any more). */
int sfc_get_packet(struct buf *rx, uint32_t max, uint8_t *type, uint32_t *id, struct buf *payload);

/* ATTRS as SFTP v3 encodes them; extended pairs are skipped (at most SFC_EXT_PAIRS_MAX). */
int sfc_get_attr(struct buf *b, struct tun_sftp_attr *a);
int sfc_put_attr(struct buf *b, const struct tun_sftp_attr *a);

/* One entry of a NAME reply: file name (copied into name, NUL-terminated; a name holding a NUL
 * or longer than namelen - 1 is refused), long name (skipped) and attributes. */
int sfc_get_name(struct buf *b, char *name, size_t namelen, struct tun_sftp_attr *a);

/* A STATUS payload's code (message and language tag are not needed). */
int sfc_get_status(struct buf *b, uint32_t *code);
/* Start a packet of 'type' at the end of 'b': a length placeholder, the type and, except for
 * VERSION, the id. *mark records where it starts as the number of unread bytes before it, which
 * stays true when a later put compacts the buffer. Returns 0, or -EMSGSIZE / -ENOMEM with 'b'
 * unchanged. */
int sfc_put_begin(struct buf *b, uint8_t type, uint32_t id, size_t *mark);
/* Fill in the length of the packet started at 'mark' with everything put after it. Nothing may be
 * consumed from 'b' between sfc_put_begin and this call. */
void sfc_put_end(struct buf *b, size_t mark);
/* Drop the packet started at 'mark' and everything put after it. */
void sfc_put_cancel(struct buf *b, size_t mark);

/* A whole STATUS packet: code, message 'msg' and an empty language tag. Returns 0, or -EMSGSIZE /
 * -ENOMEM with 'b' unchanged. */
int sfc_put_status(struct buf *b, uint32_t id, uint32_t code, const char *msg);
/* One entry of a NAME reply: file name, long name ("ls -l" line) and attributes. Returns 0, or
 * -EMSGSIZE / -ENOMEM with 'b' unchanged. */
int sfc_put_name(struct buf *b, const char *name, const char *longname,
                 const struct tun_sftp_attr *a);

/* A status code as a negative errno: 0, -ENODATA (EOF), -ENOENT, -EACCES, -EBADMSG, -EIO,
 * -EOPNOTSUPP; unknown codes are -EIO. */
int sfc_status_errno(uint32_t code);
/* The same, refined by the status message: SFTP v3 has no code for a full disk, a quota, a
 * read-only file system and the like, so a FAILURE (or PERMISSION_DENIED) whose message is the
 * text of such an errno (as `offload serve` sends: strerror, first letter lower-cased; OpenSSH's
 * server says only "Failure") is that errno: -ENOSPC, -EDQUOT, -EROFS, -EFBIG, -EEXIST,
 * -ENOTEMPTY, -ENOTDIR, -EISDIR, -ENAMETOOLONG, -ELOOP, -EXDEV, -EMLINK, -EINVAL, -EBUSY, -ETXTBSY,
 * -EPERM. 'msg' may be NULL. */
int sfc_status_errno_msg(uint32_t code, const char *msg);
/* A STATUS payload's code and message (copied into msg, NUL-terminated, cut to msglen - 1; empty
 * when absent). */
int sfc_get_status_msg(struct buf *b, uint32_t *code, char *msg, size_t msglen);

#endif
