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
 * Reconnects: path requests (stat, open, ...) waiting at a reconnect are sent again on the new
 * connection; requests on a handle opened on an earlier connection fail with -ESTALE (reopen).
 *
 * Errors: negative errno. SFTP status codes map to ENOENT, EACCES, EIO (failure), EBADMSG,
 * EOPNOTSUPP; a malformed reply drops the connection (logged) and fails its request with -EIO.
 */
#ifndef OFFLOAD_SFTP_CLIENT_H
#define OFFLOAD_SFTP_CLIENT_H

#include <stdint.h>
#include <sys/statvfs.h>

#include "sftp_codec.h"
#include "ssh_client.h"

#define TUN_SFTP_HANDLE_MAX 256   /* longest handle accepted from a server */
#define TUN_SFTP_READ_MAX   65536 /* largest READ length asked of a server (OpenSSH serves 256k) */

typedef struct tun_sftp tun_sftp_t;

struct tun_sftp_handle {
    uint64_t gen; /* the connection it was opened on */
    uint32_t len;
    uint8_t data[TUN_SFTP_HANDLE_MAX];
};

struct tun_sftp_opts {
    struct tun_ssh_opts ssh;
    int op_timeout_ms; /* 0 means 5000 */
    int keepalive_s;   /* 0 means 15 */
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
int tun_sftp_fstat(tun_sftp_t *s, const struct tun_sftp_handle *h, struct tun_sftp_attr *a);
int tun_sftp_close(tun_sftp_t *s, const struct tun_sftp_handle *h);
/* Close without waiting for the answer (errors are ignored: the handle is gone either way). */
void tun_sftp_close_async(tun_sftp_t *s, const struct tun_sftp_handle *h);

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

#endif
