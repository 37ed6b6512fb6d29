/* sftp_client.c - asynchronous reconnecting SFTP v3 client; see sftp_client.h.
 *
 * Data path: callers serialise a request packet into their own buffer, queue it under s->lock and
 * poke the eventfd. The owner thread assigns the request id, writes the packet to the channel and
 * keeps the request in the in-flight table (owner thread only) until the reply with its id comes.
 *
 * Locks: s->lock protects the queue, the waiters' fields, the stats and the connection state.
 * The owner thread never holds s->lock while it does network I/O.
 */
#include "sftp_client.h"

#include "buf.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <libssh/libssh.h>

#define PKT_MAX        (256 * 1024 + 1024) /* largest reply accepted: OpenSSH's own limit */
#define INFLIGHT_SLOTS 1024                /* requests on the wire at once */
#define RX_WINDOW      (8u << 20)          /* SSH receive window: bytes in flight toward us */
#define EXT_MAX        16

struct req;
/* Completion, on the owner thread: err < 0, or 0 with the reply type and payload after the id. */
typedef void (*req_done_fn)(struct req *r, int err, uint8_t type, struct buf *payload);

struct req {
    struct req *next;
    struct buf pkt; /* the whole packet, length prefix included; id at offset 5 */
    uint32_t id;
    uint64_t gen;     /* handle's connection; 0 for path requests (resent after a reconnect) */
    int64_t t_queued; /* ns, monotonic */
    req_done_fn done;
    void *arg;
};

/* A synchronous caller's rendezvous; protected by s->lock. */
struct waiter {
    bool done, abandoned;
    int err;
    uint8_t type;
    struct buf reply;
};

struct tun_sftp {
    struct tun_sftp_opts o;
    char dest[512];
    int efd;
    pthread_t owner;

    pthread_mutex_t lock;
    pthread_cond_t cond;         /* broadcast on every completion; protected by lock */
    struct req *q_head, *q_tail; /* queued, not yet sent; protected by lock */
    bool stopping;               /* protected by lock */
    bool connected;              /* protected by lock */
    uint64_t gen;                /* current connection, 0 while none; protected by lock */
    int64_t last_progress;    /* ns: last byte received, or last (re)connect; protected by lock */
    int64_t down_since;       /* ns: when the link was lost; protected by lock */
    struct tun_sftp_stats st; /* protected by lock */
    char ext[EXT_MAX][64];    /* announced extensions; protected by lock */
    int n_ext;

    /* owner thread only */
    ssh_session ssh;
    ssh_channel chan;
    struct req *inflight[INFLIGHT_SLOTS];
    int n_inflight;
    uint32_t next_id;
    struct buf rx;
    size_t rx_total;    /* bytes received on this connection */
    int64_t busy_since; /* when the in-flight table last went from empty to not empty */
    int64_t last_tx;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A STATUS payload as a negative errno (0 for OK); a malformed one is -EIO. */
static int parse_status(struct buf *b)
{
    uint32_t code;
    return sfc_get_status(b, &code) != 0 ? -EIO : sfc_status_errno(code);
}

static void wake(tun_sftp_t *s)
{
    uint64_t one = 1;
    ssize_t r = write(s->efd, &one, sizeof(one));
    (void)r;
}

/* ---- request construction (any thread) ---- */

static struct req *req_new(uint8_t type, uint64_t gen)
{
    struct req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    buf_init(&r->pkt, PKT_MAX);
    r->gen = gen;
    if (buf_put_u32(&r->pkt, 0) != 0 || buf_put_u8(&r->pkt, type) != 0 ||
        buf_put_u32(&r->pkt, 0) != 0) {
        buf_free(&r->pkt);
        free(r);
        return NULL;
    }
    return r;
}

static void req_free(struct req *r)
{
    buf_free(&r->pkt);
    free(r);
}

static int submit(tun_sftp_t *s, struct req *r, req_done_fn done, void *arg)
{
    buf_poke_u32(&r->pkt, 0, (uint32_t)(buf_avail(&r->pkt) - 4));
    r->done = done;
    r->arg = arg;
    r->t_queued = now_ns();
    pthread_mutex_lock(&s->lock);
    if (s->stopping) {
        pthread_mutex_unlock(&s->lock);
        return -ESHUTDOWN;
    }
    if (!s->connected && r->t_queued - s->down_since > (int64_t)s->o.op_timeout_ms * 1000000) {
        /* down for longer than the bound already: fail now rather than make every caller
         * wait the whole bound again (a reader retrying page by page would wait n times) */
        s->st.timeouts++;
        pthread_mutex_unlock(&s->lock);
        return -EIO;
    }
    if (s->q_tail)
        s->q_tail->next = r;
    else
        s->q_head = r;
    s->q_tail = r;
    pthread_mutex_unlock(&s->lock);
    wake(s);
    return 0;
}

/* ---- synchronous calls ---- */

/* Waiters need s->lock, so their completion goes through this wrapper holding both pointers. */
struct sync_ctx {
    tun_sftp_t *s;
    struct waiter w;
};

static void sync_done(struct req *r, int err, uint8_t type, struct buf *payload)
{
    struct sync_ctx *c = r->arg;
    bool free_it;

    pthread_mutex_lock(&c->s->lock);
    c->w.err = err;
    c->w.type = type;
    if (err == 0 && payload && buf_put(&c->w.reply, buf_ptr(payload), buf_avail(payload)) != 0)
        c->w.err = -ENOMEM;
    c->w.done = true;
    free_it = c->w.abandoned;
    pthread_cond_broadcast(&c->s->cond);
    pthread_mutex_unlock(&c->s->lock);
    if (free_it) {
        buf_free(&c->w.reply);
        free(c);
    }
}

/* Send r and wait for its reply, bounded by the progress rule. On success the caller owns *out
 * (free with sync_release); its reply type is out->w.type and payload out->w.reply. */
static int call(tun_sftp_t *s, struct req *r, struct sync_ctx **out)
{
    struct sync_ctx *c = calloc(1, sizeof(*c));
    int64_t limit = (int64_t)s->o.op_timeout_ms * 1000000;
    int err;

    if (c == NULL) {
        req_free(r);
        return -ENOMEM;
    }
    c->s = s;
    buf_init(&c->w.reply, PKT_MAX);
    if ((err = submit(s, r, sync_done, c)) != 0) {
        req_free(r);
        buf_free(&c->w.reply);
        free(c);
        return err;
    }
    int64_t t0 = now_ns();
    pthread_mutex_lock(&s->lock);
    while (!c->w.done) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&s->cond, &s->lock, &ts);
        if (c->w.done)
            break;
        int64_t ref = s->connected && s->last_progress > t0 ? s->last_progress : t0;
        if (now_ns() - ref > limit || s->stopping) {
            c->w.abandoned = true;
            s->st.timeouts++;
            pthread_mutex_unlock(&s->lock);
            return -EIO;
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (c->w.err != 0) {
        err = c->w.err;
        buf_free(&c->w.reply);
        free(c);
        return err;
    }
    *out = c;
    return 0;
}

static void sync_release(struct sync_ctx *c)
{
    if (c) {
        buf_free(&c->w.reply);
        free(c);
    }
}

/* A request whose reply is STATUS (ok or error) or ATTRS. */
static int call_attr(tun_sftp_t *s, struct req *r, struct tun_sftp_attr *a)
{
    struct sync_ctx *c = NULL;
    int err;

    if ((err = call(s, r, &c)) != 0)
        return err;
    if (c->w.type == SFC_ATTRS)
        err = sfc_get_attr(&c->w.reply, a) ? -EIO : 0;
    else if (c->w.type == SFC_STATUS)
        err = parse_status(&c->w.reply) ?: -EIO;
    else
        err = -EIO;
    sync_release(c);
    return err;
}

static int call_status(tun_sftp_t *s, struct req *r)
{
    struct sync_ctx *c = NULL;
    int err;

    if ((err = call(s, r, &c)) != 0)
        return err;
    err = c->w.type == SFC_STATUS ? parse_status(&c->w.reply) : -EIO;
    sync_release(c);
    return err;
}

static int path_req(uint8_t type, const char *path, struct req **out)
{
    struct req *r = req_new(type, 0);
    if (r == NULL)
        return -ENOMEM;
    if (buf_put_cstring(&r->pkt, path) != 0) {
        req_free(r);
        return -ENAMETOOLONG;
    }
    *out = r;
    return 0;
}

static int handle_req(uint8_t type, const struct tun_sftp_handle *h, struct req **out)
{
    struct req *r = req_new(type, h->gen);
    if (r == NULL)
        return -ENOMEM;
    if (buf_put_string(&r->pkt, h->data, h->len) != 0) {
        req_free(r);
        return -ENOMEM;
    }
    *out = r;
    return 0;
}

int tun_sftp_lstat(tun_sftp_t *s, const char *path, struct tun_sftp_attr *a)
{
    struct req *r;
    int err = path_req(SFC_LSTAT, path, &r);
    return err ? err : call_attr(s, r, a);
}

int tun_sftp_stat(tun_sftp_t *s, const char *path, struct tun_sftp_attr *a)
{
    struct req *r;
    int err = path_req(SFC_STAT, path, &r);
    return err ? err : call_attr(s, r, a);
}

int tun_sftp_fstat(tun_sftp_t *s, const struct tun_sftp_handle *h, struct tun_sftp_attr *a)
{
    struct req *r;
    int err = handle_req(SFC_FSTAT, h, &r);
    return err ? err : call_attr(s, r, a);
}

int tun_sftp_close(tun_sftp_t *s, const struct tun_sftp_handle *h)
{
    struct req *r;
    int err = handle_req(SFC_CLOSE, h, &r);
    return err ? err : call_status(s, r);
}

static void ignore_done(struct req *r, int err, uint8_t type, struct buf *payload)
{
    (void)r, (void)err, (void)type, (void)payload;
}

void tun_sftp_close_async(tun_sftp_t *s, const struct tun_sftp_handle *h)
{
    struct req *r;
    if (handle_req(SFC_CLOSE, h, &r) == 0 && submit(s, r, ignore_done, NULL) != 0)
        req_free(r);
}

/* NAME reply with exactly one entry: copy its file name. */
static int call_name1(tun_sftp_t *s, struct req *r, char *out, size_t outlen)
{
    struct sync_ctx *c = NULL;
    uint32_t count;
    int err;

    if ((err = call(s, r, &c)) != 0)
        return err;
    if (c->w.type == SFC_NAME) {
        if (buf_get_u32(&c->w.reply, &count) != 0 || count != 1)
            err = -EIO;
        else if (buf_get_cstring(&c->w.reply, out, outlen) != 0)
            err = -ENAMETOOLONG;
    } else if (c->w.type == SFC_STATUS) {
        err = parse_status(&c->w.reply) ?: -EIO;
    } else {
        err = -EIO;
    }
    sync_release(c);
    return err;
}

int tun_sftp_realpath(tun_sftp_t *s, const char *path, char *out, size_t outlen)
{
    struct req *r;
    int err = path_req(SFC_REALPATH, path, &r);
    return err ? err : call_name1(s, r, out, outlen);
}

int tun_sftp_readlink(tun_sftp_t *s, const char *path, char *out, size_t outlen)
{
    struct req *r;
    int err = path_req(SFC_READLINK, path, &r);
    return err ? err : call_name1(s, r, out, outlen);
}

/* HANDLE reply. */
static int call_handle(tun_sftp_t *s, struct req *r, struct tun_sftp_handle *h)
{
    struct sync_ctx *c = NULL;
    const uint8_t *p;
    uint32_t n;
    int err;

    if ((err = call(s, r, &c)) != 0)
        return err;
    if (c->w.type == SFC_HANDLE) {
        if (buf_get_string(&c->w.reply, &p, &n) != 0 || n == 0 || n > TUN_SFTP_HANDLE_MAX) {
            err = -EIO;
        } else {
            memcpy(h->data, p, n);
            h->len = n;
        }
    } else if (c->w.type == SFC_STATUS) {
        err = parse_status(&c->w.reply) ?: -EIO;
    } else {
        err = -EIO;
    }
    sync_release(c);
    return err;
}

/* The connection generation a handle opened now would carry. Read before the OPEN is sent: if a
 * reconnect happens in between, the handle is marked with the older generation and is simply
 * reported stale at first use, never used on the wrong connection. */
static uint64_t current_gen(tun_sftp_t *s)
{
    uint64_t g;
    pthread_mutex_lock(&s->lock);
    g = s->gen;
    pthread_mutex_unlock(&s->lock);
    return g;
}

int tun_sftp_open(tun_sftp_t *s, const char *path, struct tun_sftp_handle *h)
{
    struct req *r;
    int err;

    if ((err = path_req(SFC_OPEN, path, &r)) != 0)
        return err;
    if (buf_put_u32(&r->pkt, SFC_FXF_READ) != 0 || buf_put_u32(&r->pkt, 0) != 0) {
        req_free(r);
        return -ENOMEM;
    }
    for (int tries = 0; tries < 3; tries++) {
        uint64_t g0 = current_gen(s);
        struct req *again = NULL;
        if (tries > 0) {
            if ((err = path_req(SFC_OPEN, path, &again)) != 0)
                return err;
            buf_put_u32(&again->pkt, SFC_FXF_READ);
            buf_put_u32(&again->pkt, 0);
            r = again;
        }
        err = call_handle(s, r, h);
        h->gen = current_gen(s);
        if (err != 0 || h->gen == g0 || g0 == 0)
            return err;
        /* reconnected while opening: the handle may belong to the old connection */
    }
    return err;
}

static int open_dir(tun_sftp_t *s, const char *path, struct tun_sftp_handle *h)
{
    struct req *r;
    int err;

    if ((err = path_req(SFC_OPENDIR, path, &r)) != 0)
        return err;
    h->gen = current_gen(s);
    return call_handle(s, r, h);
}

int tun_sftp_statvfs(tun_sftp_t *s, const char *path, struct statvfs *st)
{
    struct sync_ctx *c = NULL;
    struct req *r = req_new(SFC_EXTENDED, 0);
    uint64_t v[11];
    int err;

    if (r == NULL)
        return -ENOMEM;
    if (buf_put_cstring(&r->pkt, "statvfs@openssh.com") != 0 ||
        buf_put_cstring(&r->pkt, path) != 0) {
        req_free(r);
        return -ENAMETOOLONG;
    }
    if ((err = call(s, r, &c)) != 0)
        return err;
    if (c->w.type == SFC_EXTENDED_REPLY) {
        for (int i = 0; i < 11 && err == 0; i++)
            if (buf_get_u64(&c->w.reply, &v[i]) != 0)
                err = -EIO;
        if (err == 0) {
            memset(st, 0, sizeof(*st));
            st->f_bsize = v[0];
            st->f_frsize = v[1];
            st->f_blocks = v[2];
            st->f_bfree = v[3];
            st->f_bavail = v[4];
            st->f_files = v[5];
            st->f_ffree = v[6];
            st->f_favail = v[7];
            st->f_fsid = v[8];
            st->f_flag = v[9];
            st->f_namemax = v[10];
        }
    } else if (c->w.type == SFC_STATUS) {
        err = parse_status(&c->w.reply) ?: -EIO;
    } else {
        err = -EIO;
    }
    sync_release(c);
    return err;
}

/* ---- directory listing: pipelined READDIR ---- */

#define READDIR_DEPTH 4

static int list_once(tun_sftp_t *s, const char *path,
                     int (*each)(void *, const char *, const struct tun_sftp_attr *), void *arg)
{
    struct tun_sftp_handle h;
    struct sync_ctx *c[READDIR_DEPTH] = {0};
    struct req *r;
    bool eof = false;
    int err, i;

    if ((err = open_dir(s, path, &h)) != 0)
        return err;
    while (!eof && err == 0) {
        /* READDIR_DEPTH requests on the wire at once; the server answers them in order */
        int sent = 0;
        for (i = 0; i < READDIR_DEPTH; i++) {
            if ((err = handle_req(SFC_READDIR, &h, &r)) != 0)
                break;
            c[i] = calloc(1, sizeof(struct sync_ctx));
            if (c[i] == NULL) {
                req_free(r);
                err = -ENOMEM;
                break;
            }
            c[i]->s = s;
            buf_init(&c[i]->w.reply, PKT_MAX);
            if ((err = submit(s, r, sync_done, c[i])) != 0) {
                req_free(r);
                buf_free(&c[i]->w.reply);
                free(c[i]);
                c[i] = NULL;
                break;
            }
            sent++;
        }
        for (i = 0; i < sent; i++) {
            /* wait for c[i] with the progress rule */
            int64_t t0 = now_ns(), limit = (int64_t)s->o.op_timeout_ms * 1000000;
            bool timed_out = false;
            pthread_mutex_lock(&s->lock);
            while (!c[i]->w.done) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 100 * 1000000;
                if (ts.tv_nsec >= 1000000000) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000;
                }
                pthread_cond_timedwait(&s->cond, &s->lock, &ts);
                int64_t ref = s->connected && s->last_progress > t0 ? s->last_progress : t0;
                if (!c[i]->w.done && (now_ns() - ref > limit || s->stopping)) {
                    timed_out = true;
                    break;
                }
            }
            if (timed_out) {
                /* abandon this and the rest; their completions free them */
                for (int j = i; j < sent; j++) {
                    if (c[j]->w.done) {
                        buf_free(&c[j]->w.reply);
                        free(c[j]);
                    } else {
                        c[j]->w.abandoned = true;
                    }
                    c[j] = NULL;
                }
                s->st.timeouts++;
                pthread_mutex_unlock(&s->lock);
                err = -EIO;
                break;
            }
            pthread_mutex_unlock(&s->lock);
            struct sync_ctx *x = c[i];
            c[i] = NULL;
            if (err == 0 && !eof) {
                if (x->w.err != 0) {
                    err = x->w.err;
                } else if (x->w.type == SFC_STATUS) {
                    int st = parse_status(&x->w.reply);
                    if (st == -ENODATA)
                        eof = true;
                    else
                        err = st ?: -EIO;
                } else if (x->w.type == SFC_NAME) {
                    uint32_t count;
                    if (buf_get_u32(&x->w.reply, &count) != 0)
                        err = -EIO;
                    for (uint32_t k = 0; k < count && err == 0; k++) {
                        char name[1024];
                        struct tun_sftp_attr a;
                        if (sfc_get_name(&x->w.reply, name, sizeof(name), &a) != 0) {
                            err = -EIO;
                            break;
                        }
                        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
                            continue;
                        err = each(arg, name, &a);
                    }
                } else {
                    err = -EIO;
                }
            }
            sync_release(x);
        }
    }
    tun_sftp_close_async(s, &h); /* nobody waits for a directory's CLOSE */
    return err;
}

int tun_sftp_listdir(tun_sftp_t *s, const char *path,
                     int (*each)(void *, const char *, const struct tun_sftp_attr *), void *arg)
{
    int err = list_once(s, path, each, arg);
    if (err == -ESTALE)
        err = list_once(s, path, each, arg);
    return err;
}

/* ---- asynchronous requests ---- */

struct read_ctx {
    tun_sftp_read_cb done;
    void *arg;
};

static void read_done(struct req *r, int err, uint8_t type, struct buf *payload)
{
    struct read_ctx *c = r->arg;
    const uint8_t *p = NULL;
    uint32_t n = 0;

    if (err == 0) {
        if (type == SFC_DATA) {
            if (buf_get_string(payload, &p, &n) != 0)
                err = -EIO;
        } else if (type == SFC_STATUS) {
            err = parse_status(payload);
            if (err == -ENODATA)
                err = 0, n = 0; /* EOF */
            else if (err == 0)
                err = -EIO;
        } else {
            err = -EIO;
        }
    }
    c->done(c->arg, err, err ? NULL : p, err ? 0 : n);
    free(c);
}

int tun_sftp_read_async(tun_sftp_t *s, const struct tun_sftp_handle *h, uint64_t off, uint32_t len,
                        tun_sftp_read_cb done, void *arg)
{
    struct read_ctx *c;
    struct req *r;
    int err;

    if (len > TUN_SFTP_READ_MAX)
        return -EINVAL;
    if ((err = handle_req(SFC_READ, h, &r)) != 0)
        return err;
    if (buf_put_u64(&r->pkt, off) != 0 || buf_put_u32(&r->pkt, len) != 0 ||
        (c = malloc(sizeof(*c))) == NULL) {
        req_free(r);
        return -ENOMEM;
    }
    c->done = done;
    c->arg = arg;
    if ((err = submit(s, r, read_done, c)) != 0) {
        free(c);
        req_free(r);
    }
    return err;
}

struct fstat_ctx {
    tun_sftp_attr_cb done;
    void *arg;
};

static void fstat_done(struct req *r, int err, uint8_t type, struct buf *payload)
{
    struct fstat_ctx *c = r->arg;
    struct tun_sftp_attr a;

    memset(&a, 0, sizeof(a));
    if (err == 0) {
        if (type == SFC_ATTRS)
            err = sfc_get_attr(payload, &a) ? -EIO : 0;
        else if (type == SFC_STATUS)
            err = parse_status(payload) ?: -EIO;
        else
            err = -EIO;
    }
    c->done(c->arg, err, err ? NULL : &a);
    free(c);
}

int tun_sftp_fstat_async(tun_sftp_t *s, const struct tun_sftp_handle *h, tun_sftp_attr_cb done,
                         void *arg)
{
    struct fstat_ctx *c;
    struct req *r;
    int err;

    if ((err = handle_req(SFC_FSTAT, h, &r)) != 0)
        return err;
    if ((c = malloc(sizeof(*c))) == NULL) {
        req_free(r);
        return -ENOMEM;
    }
    c->done = done;
    c->arg = arg;
    if ((err = submit(s, r, fstat_done, c)) != 0) {
        free(c);
        req_free(r);
    }
    return err;
}

/* ---- owner thread ---- */

static void drop_connection(tun_sftp_t *s, const char *why)
{
    struct req *retry = NULL, **tail = &retry;

    if (s->ssh == NULL)
        return;
    fprintf(stderr, "offload: lost the sftp link to '%s': %s\n", s->dest, why);
    if (s->chan) {
        ssh_channel_free(s->chan);
        s->chan = NULL;
    }
    ssh_disconnect(s->ssh);
    ssh_free(s->ssh);
    s->ssh = NULL;
    buf_reset(&s->rx);

    pthread_mutex_lock(&s->lock);
    s->connected = false;
    s->gen = 0;
    s->down_since = now_ns();
    pthread_mutex_unlock(&s->lock);

    /* path requests go back to the front of the queue; handle requests are stale */
    for (int i = 0; i < INFLIGHT_SLOTS; i++) {
        struct req *r = s->inflight[i];
        if (r == NULL)
            continue;
        s->inflight[i] = NULL;
        if (r->gen == 0) {
            r->next = NULL;
            *tail = r;
            tail = &r->next;
        } else {
            r->done(r, -ESTALE, 0, NULL);
            req_free(r);
        }
    }
    s->n_inflight = 0;
    if (retry) {
        struct req *last = retry;
        while (last->next)
            last = last->next;
        pthread_mutex_lock(&s->lock);
        last->next = s->q_head;
        s->q_head = retry;
        if (s->q_tail == NULL)
            s->q_tail = last;
        pthread_mutex_unlock(&s->lock);
    }
}

/* Read exactly one packet with a blocking timeout (handshake only). */
static int read_packet_blocking(tun_sftp_t *s, uint8_t *type, struct buf *out, int timeout_ms)
{
    uint8_t tmp[4096];
    struct buf view;
    uint32_t id;
    int r;

    for (;;) {
        r = sfc_get_packet(&s->rx, PKT_MAX, type, &id, &view);
        if (r == 0) {
            buf_reset(out);
            return buf_put(out, buf_ptr(&view), buf_avail(&view));
        }
        if (r != -EAGAIN)
            return r;
        int n = ssh_channel_read_timeout(s->chan, tmp, sizeof(tmp), 0, timeout_ms);
        if (n <= 0)
            return n == 0 ? -ETIMEDOUT : -EIO;
        if (buf_put(&s->rx, tmp, (size_t)n) != 0)
            return -EBADMSG;
    }
}

static int establish(tun_sftp_t *s, char *err, size_t errlen)
{
    struct buf b;
    uint8_t type;
    uint32_t version;
    int r;

    if ((r = tun_ssh_connect(&s->o.ssh, &s->ssh, err, errlen)) != 0)
        return r;
    s->chan = ssh_channel_new(s->ssh);
    if (s->chan == NULL || ssh_channel_open_session(s->chan) != SSH_OK ||
        ssh_channel_request_subsystem(s->chan, "sftp") != SSH_OK) {
        snprintf(err, errlen, "cannot start the sftp subsystem on '%s': %s", s->dest,
                 ssh_get_error(s->ssh));
        r = -EIO;
        goto fail;
    }
    buf_init(&b, PKT_MAX);
    buf_put_u32(&b, 5);
    buf_put_u8(&b, SFC_INIT);
    buf_put_u32(&b, 3);
    if (ssh_channel_write(s->chan, buf_ptr(&b), (uint32_t)buf_avail(&b)) != 9) {
        buf_free(&b);
        snprintf(err, errlen, "cannot start sftp on '%s': write failed", s->dest);
        r = -EIO;
        goto fail;
    }
    buf_reset(&s->rx);
    r = read_packet_blocking(s, &type, &b, s->o.ssh.connect_timeout_s * 1000);
    if (r != 0 || type != SFC_VERSION || buf_get_u32(&b, &version) != 0 || version < 3) {
        buf_free(&b);
        snprintf(err, errlen, "sftp handshake with '%s' failed (is the sftp subsystem enabled?)",
                 s->dest);
        r = -EPROTO;
        goto fail;
    }
    pthread_mutex_lock(&s->lock);
    s->n_ext = 0;
    while (buf_avail(&b) > 0 && s->n_ext < EXT_MAX) {
        const uint8_t *p, *q;
        uint32_t n, m;
        if (buf_get_string(&b, &p, &n) != 0 || buf_get_string(&b, &q, &m) != 0)
            break;
        if (n < sizeof(s->ext[0])) {
            memcpy(s->ext[s->n_ext], p, n);
            s->ext[s->n_ext][n] = '\0';
            s->n_ext++;
        }
    }
    pthread_mutex_unlock(&s->lock);
    buf_free(&b);
    return 0;
fail:
    if (s->chan)
        ssh_channel_free(s->chan);
    s->chan = NULL;
    ssh_disconnect(s->ssh);
    ssh_free(s->ssh);
    s->ssh = NULL;
    return r;
}

static void mark_connected(tun_sftp_t *s, bool reconnect)
{
    static uint64_t gens;
    pthread_mutex_lock(&s->lock);
    s->connected = true;
    s->gen = __atomic_add_fetch(&gens, 1, __ATOMIC_RELAXED);
    s->last_progress = now_ns();
    if (reconnect)
        s->st.reconnects++;
    pthread_mutex_unlock(&s->lock);
    s->last_tx = now_ns();
}

/* Dispatch one reply packet (without its length prefix). */
static int dispatch(tun_sftp_t *s, uint8_t type, uint32_t id, struct buf *payload)
{
    struct req *r = s->inflight[id % INFLIGHT_SLOTS];

    if (r == NULL || r->id != id || type == SFC_VERSION)
        return -EBADMSG; /* a reply to nothing we asked */
    s->inflight[id % INFLIGHT_SLOTS] = NULL;
    s->n_inflight--;
    r->done(r, 0, type, payload);
    req_free(r);
    return 0;
}

static int pump_rx(tun_sftp_t *s)
{
    size_t got = 0;
    uint8_t *w;
    int n;

    for (;;) {
        /* Read straight into rx, asking for RX_WINDOW bytes without waiting: libssh grows the
         * channel's receive window to what a read asks for (its own default, 1.28 MB, caps a
         * 50 ms link at ~25 MB/s), and ssh_channel_read_nonblocking would ask only for what
         * is already buffered. */
        if (buf_reserve(&s->rx, RX_WINDOW, &w) != 0)
            return -EBADMSG;
        n = ssh_channel_read_timeout(s->chan, w, RX_WINDOW, 0, 0);
        if (n == SSH_AGAIN)
            n = 0;
        if (n < 0)
            return -EPIPE;
        if (n == 0)
            break;
        buf_commit(&s->rx, (size_t)n);
        got += (size_t)n;
        s->rx_total += (size_t)n;
        for (;;) {
            struct buf payload;
            uint8_t type;
            uint32_t id;
            int r = sfc_get_packet(&s->rx, PKT_MAX, &type, &id, &payload);
            if (r == -EAGAIN)
                break;
            if (r != 0 || dispatch(s, type, id, &payload) != 0)
                return -EBADMSG;
        }
    }
    if (got) {
        pthread_mutex_lock(&s->lock);
        s->last_progress = now_ns();
        s->st.bytes_in += got;
        pthread_mutex_unlock(&s->lock);
    }
    if (ssh_channel_is_eof(s->chan) || ssh_channel_is_closed(s->chan))
        return -EPIPE;
    return 0;
}

static int flush_queue(tun_sftp_t *s)
{
    for (;;) {
        struct req *r;
        uint64_t gen;

        if (s->n_inflight >= INFLIGHT_SLOTS - 1)
            return 0;
        pthread_mutex_lock(&s->lock);
        r = s->q_head;
        if (r) {
            s->q_head = r->next;
            if (s->q_head == NULL)
                s->q_tail = NULL;
        }
        gen = s->gen;
        pthread_mutex_unlock(&s->lock);
        if (r == NULL)
            return 0;
        r->next = NULL;
        if (r->gen != 0 && r->gen != gen) {
            r->done(r, -ESTALE, 0, NULL);
            req_free(r);
            continue;
        }
        do {
            s->next_id++;
        } while (s->inflight[s->next_id % INFLIGHT_SLOTS] != NULL);
        r->id = s->next_id;
        buf_poke_u32(&r->pkt, 5, r->id);
        s->inflight[r->id % INFLIGHT_SLOTS] = r;
        if (s->n_inflight++ == 0)
            s->busy_since = now_ns();
        size_t n = buf_avail(&r->pkt);
        if (ssh_channel_write(s->chan, buf_ptr(&r->pkt), (uint32_t)n) != (int)n)
            return -EPIPE;
        pthread_mutex_lock(&s->lock);
        s->st.requests++;
        s->st.bytes_out += n;
        pthread_mutex_unlock(&s->lock);
        s->last_tx = now_ns();
    }
}

/* Fail queued requests that waited longer than the bound without a connection. */
static void expire_queued(tun_sftp_t *s)
{
    int64_t limit = (int64_t)s->o.op_timeout_ms * 1000000, now = now_ns();
    struct req *expired = NULL, **pp;

    pthread_mutex_lock(&s->lock);
    pp = &s->q_head;
    s->q_tail = NULL;
    while (*pp) {
        struct req *r = *pp;
        if (!s->connected && now - r->t_queued > limit) {
            *pp = r->next;
            r->next = expired;
            expired = r;
            s->st.timeouts++;
        } else {
            s->q_tail = r;
            pp = &r->next;
        }
    }
    pthread_mutex_unlock(&s->lock);
    while (expired) {
        struct req *r = expired;
        expired = r->next;
        r->done(r, -EIO, 0, NULL);
        req_free(r);
    }
}

static void keepalive_done(void *arg, int err, const uint8_t *d, uint32_t n)
{
    (void)arg, (void)err, (void)d, (void)n;
}

static void *owner_main(void *arg)
{
    tun_sftp_t *s = arg;
    int64_t backoff = 200 * 1000000LL, next_try = 0;
    char err[512];

    for (;;) {
        bool stopping;
        pthread_mutex_lock(&s->lock);
        stopping = s->stopping;
        pthread_mutex_unlock(&s->lock);
        if (stopping)
            break;

        if (s->ssh == NULL) {
            expire_queued(s);
            if (now_ns() >= next_try) {
                if (establish(s, err, sizeof(err)) == 0) {
                    fprintf(stderr, "offload: reconnected to '%s'\n", s->dest);
                    mark_connected(s, true);
                    backoff = 200 * 1000000LL;
                    continue;
                }
                fprintf(stderr, "offload: %s (retrying)\n", err);
                next_try = now_ns() + backoff;
                backoff = backoff * 2 > 5000000000LL ? 5000000000LL : backoff * 2;
            }
            struct pollfd pf = {.fd = s->efd, .events = POLLIN};
            if (poll(&pf, 1, 100) > 0) {
                uint64_t v;
                ssize_t rr = read(s->efd, &v, sizeof(v));
                (void)rr;
            }
            continue;
        }

        uint64_t sent_before = s->next_id;
        if (flush_queue(s) != 0) {
            drop_connection(s, "write failed");
            continue;
        }
        /* libssh may have read packets into its own buffers while writing: drain them before
         * sleeping in poll, or the server could wait on a window we never reopen */
        size_t rx_before = s->rx_total;
        int rx = pump_rx(s);
        bool busy = s->next_id != sent_before || s->rx_total != rx_before;
        if (rx == 0) {
            struct pollfd pf[2] = {{.fd = ssh_get_fd(s->ssh), .events = POLLIN},
                                   {.fd = s->efd, .events = POLLIN}};
            int pr = poll(pf, 2, busy ? 0 : 100);
            if (pr > 0 && (pf[1].revents & POLLIN)) {
                uint64_t v;
                ssize_t rr = read(s->efd, &v, sizeof(v));
                (void)rr;
            }
            if (pr > 0 && (pf[0].revents & (POLLIN | POLLHUP | POLLERR)))
                rx = pump_rx(s);
        }
        if (rx == -EBADMSG) {
            drop_connection(s, "malformed sftp reply");
            continue;
        }
        if (rx != 0) {
            drop_connection(s, "connection closed");
            continue;
        }
        /* silence with requests in flight: dead link */
        int64_t now = now_ns(), last;
        pthread_mutex_lock(&s->lock);
        last = s->last_progress;
        pthread_mutex_unlock(&s->lock);
        if (s->n_inflight > 0 && now - (last > s->busy_since ? last : s->busy_since) >
                                     (int64_t)s->o.op_timeout_ms * 1000000) {
            drop_connection(s, "no answer within the operation timeout");
            continue;
        }
        /* keepalive on an idle link: a cheap request whose answer proves the link */
        if (s->n_inflight == 0 && now - s->last_tx > (int64_t)s->o.keepalive_s * 1000000000 &&
            now - last > (int64_t)s->o.keepalive_s * 1000000000) {
            struct req *r;
            if (path_req(SFC_REALPATH, ".", &r) == 0) {
                struct read_ctx *c = malloc(sizeof(*c));
                if (c) {
                    c->done = keepalive_done;
                    c->arg = NULL;
                    if (submit(s, r, read_done, c) != 0) {
                        free(c);
                        req_free(r);
                    }
                } else {
                    req_free(r);
                }
            }
        }
    }

    /* stopping: fail everything */
    for (int i = 0; i < INFLIGHT_SLOTS; i++) {
        struct req *r = s->inflight[i];
        if (r) {
            s->inflight[i] = NULL;
            r->done(r, -ESHUTDOWN, 0, NULL);
            req_free(r);
        }
    }
    pthread_mutex_lock(&s->lock);
    struct req *q = s->q_head;
    s->q_head = s->q_tail = NULL;
    pthread_mutex_unlock(&s->lock);
    while (q) {
        struct req *r = q;
        q = r->next;
        r->done(r, -ESHUTDOWN, 0, NULL);
        req_free(r);
    }
    return NULL;
}

int tun_sftp_start(const struct tun_sftp_opts *o, tun_sftp_t **out, char *err, size_t errlen)
{
    tun_sftp_t *s = calloc(1, sizeof(*s));
    int r;

    if (s == NULL)
        return -ENOMEM;
    s->o = *o;
    if (s->o.op_timeout_ms <= 0)
        s->o.op_timeout_ms = 5000;
    if (s->o.keepalive_s <= 0)
        s->o.keepalive_s = 15;
    if (s->o.ssh.connect_timeout_s <= 0)
        s->o.ssh.connect_timeout_s = 10;
    snprintf(s->dest, sizeof(s->dest), "%s", o->ssh.dest);
    s->o.ssh.dest = s->dest;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    buf_init(&s->rx, RX_WINDOW + 2 * PKT_MAX);
    s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->efd < 0) {
        r = -errno;
        snprintf(err, errlen, "cannot create eventfd: %s", strerror(errno));
        goto fail;
    }
    if ((r = establish(s, err, errlen)) != 0)
        goto fail;
    mark_connected(s, false);
    if ((r = -pthread_create(&s->owner, NULL, owner_main, s)) != 0) {
        snprintf(err, errlen, "cannot start the sftp thread: %s", strerror(-r));
        goto fail;
    }
    *out = s;
    return 0;
fail:
    if (s->ssh) {
        if (s->chan)
            ssh_channel_free(s->chan);
        ssh_disconnect(s->ssh);
        ssh_free(s->ssh);
    }
    if (s->efd >= 0)
        close(s->efd);
    buf_free(&s->rx);
    free(s);
    return r;
}

void tun_sftp_stop(tun_sftp_t *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    wake(s);
    pthread_join(s->owner, NULL);
    if (s->ssh) {
        if (s->chan) {
            ssh_channel_close(s->chan);
            ssh_channel_free(s->chan);
        }
        ssh_disconnect(s->ssh);
        ssh_free(s->ssh);
    }
    close(s->efd);
    buf_free(&s->rx);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}

void tun_sftp_get_stats(tun_sftp_t *s, struct tun_sftp_stats *st)
{
    pthread_mutex_lock(&s->lock);
    *st = s->st;
    st->connected = s->connected;
    pthread_mutex_unlock(&s->lock);
}

int tun_sftp_connected(tun_sftp_t *s)
{
    int c;
    pthread_mutex_lock(&s->lock);
    c = s->connected;
    pthread_mutex_unlock(&s->lock);
    return c;
}

int tun_sftp_has_ext(tun_sftp_t *s, const char *name)
{
    int yes = 0;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->n_ext; i++)
        if (strcmp(s->ext[i], name) == 0)
            yes = 1;
    pthread_mutex_unlock(&s->lock);
    return yes;
}
