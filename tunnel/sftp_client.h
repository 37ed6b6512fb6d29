/* sftp_client.h - an asynchronous, reconnecting SFTP v3 client over one libssh session.
 *
 * One owner thread holds the SSH session and its "sftp" channel and runs the event loop; any
 * other thread hands it requests through a queue and an eventfd. Many requests are in flight at
 * once (pipelining); replies are matched by request id.
 *
 * Time bounds: a request fails with -EIO when the link made no progress (no byte received while
 * the request was waiting, or no connection) for op_timeout_ms. A live link that is merely busy
 * never fails a request. A request made while the link has already been down for longer than
 * op_timeout_ms fails at once with -EIO (it would only wait the whole bound again). A link that
 * stays silent with requests in flight is declared dead, and the owner reconnects with backoff (0.2
 * s doubling to 5 s) until tun_sftp_stop().
 *
 * Reconnects, read side: read-only path requests (stat, open for reading, ...) waiting at a
 * reconnect are sent again on the new connection; requests on a handle opened on an earlier
 * connection fail with -ESTALE (reopen).
 *
 * Reconnects, write side (every request that may change the server: OPEN with any flag but READ,
 * WRITE, SETSTAT, FSETSTAT, REMOVE, MKDIR, RMDIR, RENAME, SYMLINK, hardlink, fsync, and CLOSE
 * through tun_sftp_op_async). A write-side request is never sent twice. When the link is lost:
 *   - one already sent has an unknown outcome (done or not, the answer is lost): it fails with
 *     -ECONNRESET, and the caller decides whether to replay it;
 *   - a path request not yet sent stays queued and is sent on the new connection (within the time
 *     bound), in queue order, unless the ordered stream is halted (below);
 *   - a request on a handle opened on an earlier connection is not sent: -ESTALE;
 *   - one still queued when the link has been down for op_timeout_ms is not sent: -EIO.
 * A synchronous write-side call that gives up for lack of progress withdraws its request when it
 * was not sent yet (-EIO: nothing happened) and returns -ECONNRESET when it was (outcome unknown).
 *
 * The ordered stream: tun_sftp_write_async and tun_sftp_op_async requests are sent strictly in the
 * order they were queued (servers answer in order too), so a caller may pipeline a long sequence
 * whose later steps depend on earlier ones. When a stream request fails without an answer from the
 * server (-ECONNRESET, -ESTALE, or -EIO for a link down too long), the stream halts: every stream
 * request still queued fails with -ECANCELED (never sent), and new ones are refused with
 * -ECANCELED, until tun_sftp_resume(). So nothing queued after a lost request can overtake its
 * replay. Synchronous calls are not part of the stream and never halt it or wait for it.
 *
 * Errors: negative errno. SFTP status codes map to ENOENT, EACCES, EIO (failure), EBADMSG,
 * EOPNOTSUPP; a malformed reply drops the connection (logged) and fails its request with -EIO.
 * SFTP v3 has no code for most errno values: OpenSSH's server answers FAILURE ("Failure"), so -EIO,
 * for EEXIST, ENOTEMPTY, EISDIR, ENOSPC, EDQUOT, EROFS and the rest. `offload serve` sends the
 * errno's text with the status, which the client maps back (sfc_status_errno_msg): from it those
 * arrive as themselves (and EPERM / EROFS behind PERMISSION_DENIED).
 */
#ifndef OFFLOAD_SFTP_CLIENT_H
#define OFFLOAD_SFTP_CLIENT_H

#include <stdint.h>
#include <stdio.h> /* RENAME_NOREPLACE, RENAME_EXCHANGE (_GNU_SOURCE) */
#include <sys/statvfs.h>

#include "sftp_codec.h"
#include "ssh_client.h"

#define TUN_SFTP_HANDLE_MAX 256   /* longest handle accepted from a server */
#define TUN_SFTP_READ_MAX   65536 /* largest READ length asked of a server (OpenSSH serves 256k) */
#define TUN_SFTP_WRITE_MAX  65536 /* largest WRITE sent; tun_sftp_write_max() may allow less */

typedef struct tun_sftp tun_sftp_t;

struct tun_sftp_handle {
    uint64_t gen; /* the connection it was opened on */
    uint32_t len;
    uint8_t data[TUN_SFTP_HANDLE_MAX];
};

struct tun_sftp_opts {
    struct tun_ssh_opts ssh;
    int op_timeout_ms;  /* 0 means 5000 */
    int keepalive_s;    /* 0 means 15 */
    uint64_t client_id; /* not 0: sent with client-id@offload to a server that offers it, on
                           every (re)connect (offload serve then knows our writes: docs/feed.md) */
};

struct tun_sftp_stats {
    uint64_t requests;   /* requests sent: each one a round trip, pipelined or not */
    uint64_t bytes_in;   /* SFTP bytes received */
    uint64_t bytes_out;  /* SFTP bytes sent */
    uint64_t reconnects; /* successful reconnects after a lost link */
    uint64_t timeouts;   /* requests failed for lack of progress */
    int connected;
};

/* Connect (synchronously, reporting the first failure in err), start the owner thread.
 * *out is freed with tun_sftp_stop(). */
int tun_sftp_start(const struct tun_sftp_opts *o, tun_sftp_t **out, char *err, size_t errlen);
/* Stop the owner thread, fail every request still waiting, disconnect and free. */
void tun_sftp_stop(tun_sftp_t *s);

void tun_sftp_get_stats(tun_sftp_t *s, struct tun_sftp_stats *st);
/* Is the link up right now? (A hint: it may drop the next moment.) */
int tun_sftp_connected(tun_sftp_t *s);
/* Extensions the current server announced (e.g. "statvfs@openssh.com"): 1 yes, 0 no. */
int tun_sftp_has_ext(tun_sftp_t *s, const char *name);

/* Synchronous calls: any thread except the owner; each blocks until the reply or the time bound. */
int tun_sftp_lstat(tun_sftp_t *s, const char *path, struct tun_sftp_attr *a);
int tun_sftp_stat(tun_sftp_t *s, const char *path, struct tun_sftp_attr *a);
int tun_sftp_realpath(tun_sftp_t *s, const char *path, char *out, size_t outlen);
int tun_sftp_readlink(tun_sftp_t *s, const char *path, char *out, size_t outlen);
int tun_sftp_statvfs(tun_sftp_t *s, const char *path, struct statvfs *st);
/* Open for reading (SSH_FXF_READ). */
int tun_sftp_open(tun_sftp_t *s, const char *path, struct tun_sftp_handle *h);
/* Open with SFC_FXF_* pflags (READ, WRITE, APPEND, CREAT, TRUNC, EXCL). create_attrs (may be NULL)
 * are the attributes of a file CREAT makes, usually just TUN_SFTP_ATTR_PERMISSIONS (the server's
 * umask applies). The handle in *h belongs to the connection that answered. With EXCL an existing
 * file gives -EEXIST from `offload serve`, -EIO from OpenSSH's server (see Errors). Any pflag but
 * READ makes it a write-side request: if the link drops after it was sent, -ECONNRESET (it may have
 * created or truncated the file). */
int tun_sftp_open_flags(tun_sftp_t *s, const char *path, uint32_t pflags,
                        const struct tun_sftp_attr *create_attrs, struct tun_sftp_handle *h);
int tun_sftp_fstat(tun_sftp_t *s, const struct tun_sftp_handle *h, struct tun_sftp_attr *a);
int tun_sftp_close(tun_sftp_t *s, const struct tun_sftp_handle *h);
/* Close without waiting for the answer (errors are ignored: the handle is gone either way). */
void tun_sftp_close_async(tun_sftp_t *s, const struct tun_sftp_handle *h);

/* Synchronous write-side calls: any thread except the owner; each blocks until the server's answer
 * or the time bound, and returns 0 or a negative errno (see Errors and the reconnect rules above).
 * Paths are the server's (absolute, or relative to its start directory); they are not resolved
 * here. */
/* Apply a's SIZE (truncate), PERMISSIONS (chmod) and ACMODTIME (whole seconds: SFTP v3 has no
 * nanoseconds) to path; UIDGID is sent too, if set. OpenSSH's server follows a symlink as last
 * component, offload's endpoint does not (sftp_server.h). */
int tun_sftp_setstat(tun_sftp_t *s, const char *path, const struct tun_sftp_attr *a);
int tun_sftp_fsetstat(tun_sftp_t *s, const struct tun_sftp_handle *h,
                      const struct tun_sftp_attr *a);
/* Unlink a file (not a directory: -EIO). */
int tun_sftp_remove(tun_sftp_t *s, const char *path);
/* Make a directory with permission bits mode (the server's umask applies). */
int tun_sftp_mkdir(tun_sftp_t *s, const char *path, uint32_t mode);
int tun_sftp_rmdir(tun_sftp_t *s, const char *path);
/* Rename from to to. flags 0 replaces an existing target atomically, as rename(2) does, with the
 * posix-rename@openssh.com extension (-EOPNOTSUPP when the server did not announce it: plain SFTP
 * v3 RENAME cannot replace). RENAME_NOREPLACE sends plain RENAME, which fails (-EIO) when to
 * exists. RENAME_EXCHANGE and any other flag: -EINVAL (SFTP cannot swap two names atomically). */
int tun_sftp_rename(tun_sftp_t *s, const char *from, const char *to, unsigned flags);
/* Make a symlink at linkpath whose content is target (stored as given). On the wire the target
 * comes first, then the link path: OpenSSH's order, the reverse of the draft's. */
int tun_sftp_symlink(tun_sftp_t *s, const char *target, const char *linkpath);
/* Make to a hard link of from (hardlink@openssh.com; -EOPNOTSUPP when not announced). */
int tun_sftp_hardlink(tun_sftp_t *s, const char *from, const char *to);
/* Flush an open file to stable storage (fsync@openssh.com; -EOPNOTSUPP when not announced). */
int tun_sftp_fsync(tun_sftp_t *s, const struct tun_sftp_handle *h);
/* The largest len tun_sftp_write_async accepts on the current connection: TUN_SFTP_WRITE_MAX, or
 * less when the server's limits@openssh.com says so; 32768 (what every server takes) when the
 * server does not announce limits@openssh.com. Any thread. */
uint32_t tun_sftp_write_max(tun_sftp_t *s);

/* List a directory: opendir, pipelined readdirs until EOF, close. each() is called (on the
 * calling thread) for every entry but "." and ".."; a nonzero return stops the listing and is
 * returned. A listing cut by a reconnect is restarted once from the beginning; callers must
 * tolerate seeing an entry twice. */
int tun_sftp_listdir(tun_sftp_t *s, const char *path,
                     int (*each)(void *arg, const char *name, const struct tun_sftp_attr *a),
                     void *arg);

/* Asynchronous read of up to len (<= TUN_SFTP_READ_MAX) bytes at off. done() runs on the owner
 * thread with err 0 and the bytes (n == 0 at end of file; n may be short), or err < 0; 'data' is
 * valid only during the call. done() must be quick and must not call the synchronous functions.
 * Returns 0 when queued (done() will be called exactly once), <0 if not queued. */
typedef void (*tun_sftp_read_cb)(void *arg, int err, const uint8_t *data, uint32_t n);
int tun_sftp_read_async(tun_sftp_t *s, const struct tun_sftp_handle *h, uint64_t off, uint32_t len,
                        tun_sftp_read_cb done, void *arg);
/* Asynchronous fstat, ordered after every request queued before it (servers answer in order),
 * which lets a reader check that a file did not change under a batch of reads. */
typedef void (*tun_sftp_attr_cb)(void *arg, int err, const struct tun_sftp_attr *a);
int tun_sftp_fstat_async(tun_sftp_t *s, const struct tun_sftp_handle *h, tun_sftp_attr_cb done,
                         void *arg);
/* The same for the exact identity of an open file (fstat-id@offload, which `offload serve`
 * announces; -EOPNOTSUPP from other servers): device, inode, size, mtime in ns. */
struct tun_sftp_ident {
    uint64_t dev, ino, size;
    int64_t mtime_ns;
};
typedef void (*tun_sftp_ident_cb)(void *arg, int err, const struct tun_sftp_ident *id);
int tun_sftp_fstat_id_async(tun_sftp_t *s, const struct tun_sftp_handle *h, tun_sftp_ident_cb done,
                            void *arg);

/* ---- the ordered write stream ---- */

/* Completion of a stream request, on the owner thread, exactly once: err 0 when the server did it,
 * a mapped status (see Errors), or -ECONNRESET / -ESTALE / -EIO / -ECANCELED (the reconnect rules
 * above), or -ESHUTDOWN from tun_sftp_stop. It must be quick and must not call the synchronous
 * functions; it may queue more stream requests and may call tun_sftp_resume. */
typedef void (*tun_sftp_status_cb)(void *arg, int err);
/* An open's outcome: the handle (valid during the call only; copy it) when err is 0. */
typedef void (*tun_sftp_open_cb)(void *arg, int err, const struct tun_sftp_handle *h);

/* Queue a WRITE of len bytes (len <= tun_sftp_write_max(s)) at off on h. The data is copied now:
 * the caller's buffer may be reused at once. Any thread, including from a done() callback.
 * Returns 0 when queued (done() will be called exactly once); -EINVAL (len too large, bad handle),
 * -ECANCELED (the stream is halted), -EIO (the link has been down longer than the time bound: this
 * also halts the stream), -ESHUTDOWN or -ENOMEM when not queued (done() is not called). */
int tun_sftp_write_async(tun_sftp_t *s, const struct tun_sftp_handle *h, uint64_t off,
                         const void *data, uint32_t len, tun_sftp_status_cb done, void *arg);

/* tun_sftp_write_async of the bytes of fd at 'off' (the same offset in the file and in h), read
 * straight into the request: no copy in between. *got is how many were read: fewer than len at
 * the file's end, 0 when there is nothing there (then nothing is queued and done() is not
 * called). A read error is -errno, nothing queued. */
int tun_sftp_write_fd_async(tun_sftp_t *s, const struct tun_sftp_handle *h, uint64_t off, int fd,
                            uint32_t len, uint32_t *got, tun_sftp_status_cb done, void *arg);

/* Queue an OPEN of path with SFC_FXF_* pflags on the ordered stream (create_attrs as for
 * tun_sftp_open_flags); done() gets the handle. Returns and calls done() as tun_sftp_write_async
 * does. Requests queued after it may use the handle only once done() has it, but requests on
 * other files need not wait: the server opens the file in stream order. */
int tun_sftp_open_async(tun_sftp_t *s, const char *path, uint32_t pflags,
                        const struct tun_sftp_attr *create_attrs, tun_sftp_open_cb done, void *arg);

/* One write-side request for tun_sftp_op_async. Fields not named for a type are ignored. */
enum tun_sftp_op_type {
    TUN_SFTP_OP_SETSTAT = 1, /* path, attr */
    TUN_SFTP_OP_FSETSTAT,    /* h, attr */
    TUN_SFTP_OP_REMOVE,      /* path */
    TUN_SFTP_OP_MKDIR,       /* path, mode */
    TUN_SFTP_OP_RMDIR,       /* path */
    TUN_SFTP_OP_RENAME,      /* path -> to, flags (as tun_sftp_rename) */
    TUN_SFTP_OP_SYMLINK,     /* a link at path whose content is target */
    TUN_SFTP_OP_HARDLINK,    /* path -> to */
    TUN_SFTP_OP_FSYNC,       /* h */
    TUN_SFTP_OP_CLOSE,       /* h */
    TUN_SFTP_OP_WRITE,       /* h, off, data, len (as tun_sftp_write_async) */
};

struct tun_sftp_op {
    enum tun_sftp_op_type type;
    const char *path;
    const char *to;     /* RENAME, HARDLINK: the new name */
    const char *target; /* SYMLINK: the link's content */
    const struct tun_sftp_handle *h;
    struct tun_sftp_attr attr; /* SETSTAT, FSETSTAT */
    uint32_t mode;             /* MKDIR: permission bits */
    unsigned flags;            /* RENAME: 0 or RENAME_NOREPLACE */
    uint64_t off;              /* WRITE */
    const void *data;          /* WRITE: len bytes */
    uint32_t len;
};

/* Queue op on the ordered stream. Everything op points to (strings, handle, data) is copied now.
 * Any thread, including from a done() callback. Returns 0 when queued (done() will be called
 * exactly once), or, not queued, what tun_sftp_op_encode refuses (-EINVAL, -EOPNOTSUPP for an
 * extension the server did not announce, -ENAMETOOLONG) or what tun_sftp_write_async returns. A
 * CLOSE that fails -ECANCELED leaves the handle open on the server (send it again after resuming).
 */
int tun_sftp_op_async(tun_sftp_t *s, const struct tun_sftp_op *op, tun_sftp_status_cb done,
                      void *arg);

/* Lift a halt of the stream. Call it once every stream request queued before has completed and the
 * caller knows what to replay (reopening stale handles first). Any thread, including a done()
 * callback. A stream request queued before this call that is still waiting is never sent: it
 * fails -ECANCELED. */
void tun_sftp_resume(tun_sftp_t *s);

/* Extensions tun_sftp_op_encode may use: the announced ones, as bits. */
#define TUN_SFTP_EXT_POSIX_RENAME 0x1u /* posix-rename@openssh.com */
#define TUN_SFTP_EXT_HARDLINK     0x2u /* hardlink@openssh.com */
#define TUN_SFTP_EXT_FSYNC        0x4u /* fsync@openssh.com */
#define TUN_SFTP_EXT_FSTAT_ID     0x8u /* fstat-id@offload */

/* Append the request packet for op, with request id 'id', to out: exactly what tun_sftp_op_async
 * sends, given the server's extensions 'exts' (TUN_SFTP_EXT_*). Pure: no I/O, any thread.
 * Returns 0; -EINVAL for an unknown type, a missing path, name, target, handle or data, a handle of
 * length 0 or over TUN_SFTP_HANDLE_MAX, a WRITE over TUN_SFTP_WRITE_MAX, or rename flags other
 * than 0 and RENAME_NOREPLACE; -EOPNOTSUPP when op needs an extension exts lacks; -ENAMETOOLONG
 * when the packet would pass out's maximum; -ENOMEM. On failure out is unchanged. */
int tun_sftp_op_encode(const struct tun_sftp_op *op, unsigned exts, uint32_t id, struct buf *out);

#endif
