/* sftp_client.c - asynchronous reconnecting SFTP v3 client; see sftp_client.h.
 *
 * Data path: callers serialise a request packet into their own buffer, queue it under s->lock and
 * poke the eventfd. The owner thread assigns the request id, writes the packet to the channel and
 * keeps the request in the in-flight table (owner thread only) until the reply with its id comes.
 *
 * Locks: s->lock protects the queue, the waiters' fields, the stats and the connection state.
 * The owner thread never holds s->lock while it does network I/O, and never while it runs a
 * completion (done() may queue more requests).
 *
 * Request kinds decide what a lost link does to a request (see sftp_client.h): REQ_READ ones are
 * sent again (path) or fail -ESTALE (handle); REQ_WRITE and REQ_STREAM ones are never sent twice
 * (-ECONNRESET when cut in flight); REQ_STREAM ones also halt the ordered stream when they fail
 * without an answer, which cancels the stream requests behind them.
 */
#include "sftp_client.h"

#include "buf.h"
#include "deadline.h"

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

#define PKT_MAX           (256 * 1024 + 1024) /* largest reply accepted: OpenSSH's own limit */
#define INFLIGHT_SLOTS    1024                /* requests on the wire at once */
#define RX_WINDOW         (8u << 20)          /* SSH receive window: bytes in flight toward us */
#define EXT_MAX           16
#define WRITE_MAX_DEFAULT 32768u /* what every server takes when it states no limits */

struct req;
/* Completion, on the owner thread: err < 0, or 0 with the reply type and payload after the id. */
typedef void (*req_done_fn)(struct req *r, int err, uint8_t type, struct buf *payload);

enum req_kind {
    REQ_READ,   /* no side effect: a path request may be sent again */
    REQ_WRITE,  /* may change the server: never sent twice; a synchronous caller */
    REQ_STREAM, /* REQ_WRITE on the ordered stream (write_async, op_async) */
};

struct req {
    struct req *next;
    struct buf pkt; /* the whole packet, length prefix included; id at offset 5 */
    uint32_t id;
    uint8_t kind;     /* enum req_kind */
    uint64_t gen;     /* handle's connection; 0 for path requests */
    uint64_t seq;     /* send order on its connection (owner thread) */
    uint64_t epoch;   /* REQ_STREAM: s->epoch when queued */
    int64_t t_queued; /* ns, monotonic */
    req_done_fn done;
    void *arg;
};

/* A synchronous caller's rendezvous; protected by s->lock. */
struct waiter {
    bool done, abandoned;
    int err;
    uint8_t type;
    uint64_t gen; /* the connection that answered */
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
    int n_ext;                /* protected by lock */
    unsigned exts;            /* TUN_SFTP_EXT_* of the announced extensions; protected by lock */
    uint32_t write_max;       /* tun_sftp_write_max(); protected by lock */
    bool halted;              /* the ordered stream is halted; protected by lock */
    uint64_t epoch;           /* bumped by tun_sftp_resume; protected by lock */

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
    uint64_t seq; /* requests sent, ever */
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A STATUS payload as a negative errno (0 for OK), refined by its message where SFTP v3 has no
 * code (a full disk, a quota, a read-only file system); a malformed one is -EIO. */
static int parse_status(struct buf *b)
{
    uint32_t code;
    char msg[128];
    return sfc_get_status_msg(b, &code, msg, sizeof(msg)) != 0 ? -EIO
                                                               : sfc_status_errno_msg(code, msg);
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
    if (r->kind == REQ_STREAM && s->halted) {
        pthread_mutex_unlock(&s->lock);
        return -ECANCELED;
    }
    if (!s->connected && r->t_queued - s->down_since > (int64_t)s->o.op_timeout_ms * 1000000) {
        /* down for longer than the bound already: fail now rather than make every caller
         * wait the whole bound again (a reader retrying page by page would wait n times) */
        s->st.timeouts++;
        if (r->kind == REQ_STREAM)
            s->halted = true; /* the owner cancels what is queued behind */
        pthread_mutex_unlock(&s->lock);
        if (r->kind == REQ_STREAM)
            wake(s);
        return -EIO;
    }
    r->epoch = s->epoch;
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
    c->w.gen = c->s->gen;
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

/* Take r out of the queue if it is still there (not sent, not being completed). s->lock held. */
static bool withdraw(tun_sftp_t *s, struct req *r)
{
    struct req **pp = &s->q_head, *prev = NULL;

    while (*pp && *pp != r) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp == NULL)
        return false;
    *pp = r->next;
    if (s->q_tail == r)
        s->q_tail = prev;
    return true;
}

/* Send r and wait for its reply, bounded by the progress rule. On success the caller owns *out
 * (free with sync_release); its reply type is out->w.type and payload out->w.reply. A request that
 * times out before it was sent is withdrawn (-EIO); a write-side one that was sent is -ECONNRESET
 * (its outcome is unknown), a read-side one -EIO. */
static int call(tun_sftp_t *s, struct req *r, struct sync_ctx **out)
{
    struct sync_ctx *c = calloc(1, sizeof(*c));
    int64_t limit = (int64_t)s->o.op_timeout_ms * 1000000;
    uint8_t kind = r->kind; /* r may be freed by the owner once it is queued */
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
        struct timespec ts = deadline_ms(CLOCK_REALTIME, 100);
        pthread_cond_timedwait(&s->cond, &s->lock, &ts);
        if (c->w.done)
            break;
        int64_t ref = s->connected && s->last_progress > t0 ? s->last_progress : t0;
        if (now_ns() - ref > limit || s->stopping) {
            s->st.timeouts++;
            if (withdraw(s, r)) {
                pthread_mutex_unlock(&s->lock);
                req_free(r);
                buf_free(&c->w.reply);
                free(c);
                return -EIO;
            }
            c->w.abandoned = true; /* r is on the wire: its completion frees c and r */
            pthread_mutex_unlock(&s->lock);
            return kind == REQ_READ ? -EIO : -ECONNRESET;
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

/* The handle in a reply of 'type' to an OPEN or OPENDIR, answered by connection 'gen'. */
static int parse_handle(uint8_t type, struct buf *reply, uint64_t gen, struct tun_sftp_handle *h)
{
    const uint8_t *p;
    uint32_t n;

    if (type == SFC_STATUS)
        return parse_status(reply) ?: -EIO;
    if (type != SFC_HANDLE || buf_get_string(reply, &p, &n) != 0 || n == 0 ||
        n > TUN_SFTP_HANDLE_MAX)
        return -EIO;
    memcpy(h->data, p, n);
    h->len = n;
    h->gen = gen;
    return 0;
}

/* HANDLE reply; h->gen is the connection that answered. */
static int call_handle(tun_sftp_t *s, struct req *r, struct tun_sftp_handle *h)
{
    struct sync_ctx *c = NULL;
    int err;

    if ((err = call(s, r, &c)) != 0)
        return err;
    err = parse_handle(c->w.type, &c->w.reply, c->w.gen, h);
    sync_release(c);
    return err;
}

/* An OPEN request of 'kind' (not queued yet). */
static int open_req(const char *path, uint32_t pflags, const struct tun_sftp_attr *create_attrs,
                    enum req_kind kind, struct req **out)
{
    struct tun_sftp_attr none = {0};
    struct req *r;
    int err;

    if ((err = path_req(SFC_OPEN, path, &r)) != 0)
        return err;
    r->kind = kind;
    if (buf_put_u32(&r->pkt, pflags) != 0 ||
        sfc_put_attr(&r->pkt, create_attrs ? create_attrs : &none) != 0) {
        req_free(r);
        return -ENAMETOOLONG;
    }
    *out = r;
    return 0;
}

int tun_sftp_open_flags(tun_sftp_t *s, const char *path, uint32_t pflags,
                        const struct tun_sftp_attr *create_attrs, struct tun_sftp_handle *h)
{
    struct req *r;
    int err =
        open_req(path, pflags, create_attrs, pflags == SFC_FXF_READ ? REQ_READ : REQ_WRITE, &r);
    return err ? err : call_handle(s, r, h);
}

int tun_sftp_open(tun_sftp_t *s, const char *path, struct tun_sftp_handle *h)
{
    return tun_sftp_open_flags(s, path, SFC_FXF_READ, NULL, h);
}

static int open_dir(tun_sftp_t *s, const char *path, struct tun_sftp_handle *h)
{
    struct req *r;
    int err;

    if ((err = path_req(SFC_OPENDIR, path, &r)) != 0)
        return err;
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

/* ---- write-side requests ---- */

/* The fields a request carries after its type, id and extension name, always in this order. The
 * target comes before the path: SYMLINK in OpenSSH's order (sftp-client.c do_symlink, and
 * sftp-server.c process_symlink, which calls symlink(first, second)). */
#define F_TARGET 0x01u /* string */
#define F_PATH   0x02u /* string */
#define F_TO     0x04u /* string */
#define F_HANDLE 0x08u /* string */
#define F_ATTR   0x10u /* attrs */
#define F_MODE   0x20u /* attrs holding only the permissions */
#define F_DATA   0x40u /* u64 offset, string */

struct op_spec {
    uint8_t type;     /* SFC_* request type; 0 for no such op */
    const char *ext;  /* extension name for SFC_EXTENDED */
    unsigned ext_bit; /* TUN_SFTP_EXT_* the server must have announced */
    unsigned fields;
};

static const struct op_spec op_specs[] = {
    [TUN_SFTP_OP_SETSTAT] = {SFC_SETSTAT, NULL, 0, F_PATH | F_ATTR},
    [TUN_SFTP_OP_FSETSTAT] = {SFC_FSETSTAT, NULL, 0, F_HANDLE | F_ATTR},
    [TUN_SFTP_OP_REMOVE] = {SFC_REMOVE, NULL, 0, F_PATH},
    [TUN_SFTP_OP_MKDIR] = {SFC_MKDIR, NULL, 0, F_PATH | F_MODE},
    [TUN_SFTP_OP_RMDIR] = {SFC_RMDIR, NULL, 0, F_PATH},
    [TUN_SFTP_OP_RENAME] = {SFC_EXTENDED, "posix-rename@openssh.com", TUN_SFTP_EXT_POSIX_RENAME,
                            F_PATH | F_TO},
    [TUN_SFTP_OP_SYMLINK] = {SFC_SYMLINK, NULL, 0, F_TARGET | F_PATH},
    [TUN_SFTP_OP_HARDLINK] = {SFC_EXTENDED, "hardlink@openssh.com", TUN_SFTP_EXT_HARDLINK,
                              F_PATH | F_TO},
    [TUN_SFTP_OP_FSYNC] = {SFC_EXTENDED, "fsync@openssh.com", TUN_SFTP_EXT_FSYNC, F_HANDLE},
    [TUN_SFTP_OP_CLOSE] = {SFC_CLOSE, NULL, 0, F_HANDLE},
    [TUN_SFTP_OP_WRITE] = {SFC_WRITE, NULL, 0, F_HANDLE | F_DATA},
};
/* RENAME with RENAME_NOREPLACE: plain SFTP v3 RENAME, which refuses an existing target */
static const struct op_spec rename_noreplace = {SFC_RENAME, NULL, 0, F_PATH | F_TO};

/* The spec op is encoded with, or NULL (-EINVAL) for a type or rename flags that have none. */
static const struct op_spec *op_spec_of(const struct tun_sftp_op *op)
{
    if ((unsigned)op->type >= sizeof(op_specs) / sizeof(op_specs[0]) ||
        op_specs[op->type].type == 0)
        return NULL;
    if (op->type == TUN_SFTP_OP_RENAME && op->flags != 0)
        return op->flags == RENAME_NOREPLACE ? &rename_noreplace : NULL;
    return &op_specs[op->type];
}

int tun_sftp_op_encode(const struct tun_sftp_op *op, unsigned exts, uint32_t id, struct buf *out)
{
    const struct op_spec *sp = op_spec_of(op);
    struct tun_sftp_attr mode_attr = {.flags = TUN_SFTP_ATTR_PERMISSIONS};
    size_t mark;
    int r;

    if (sp == NULL || ((sp->fields & F_TARGET) && op->target == NULL) ||
        ((sp->fields & F_PATH) && op->path == NULL) || ((sp->fields & F_TO) && op->to == NULL) ||
        ((sp->fields & F_HANDLE) &&
         (op->h == NULL || op->h->len == 0 || op->h->len > TUN_SFTP_HANDLE_MAX)) ||
        ((sp->fields & F_DATA) &&
         (op->len > TUN_SFTP_WRITE_MAX || (op->data == NULL && op->len > 0))))
        return -EINVAL;
    if (sp->ext_bit && !(exts & sp->ext_bit))
        return -EOPNOTSUPP;
    mode_attr.perm = op->mode & 07777;
    if ((r = sfc_put_begin(out, sp->type, id, &mark)) != 0)
        return r == -EMSGSIZE ? -ENAMETOOLONG : r;
    if ((sp->ext && (r = buf_put_cstring(out, sp->ext)) != 0) ||
        ((sp->fields & F_TARGET) && (r = buf_put_cstring(out, op->target)) != 0) ||
        ((sp->fields & F_PATH) && (r = buf_put_cstring(out, op->path)) != 0) ||
        ((sp->fields & F_TO) && (r = buf_put_cstring(out, op->to)) != 0) ||
        ((sp->fields & F_HANDLE) && (r = buf_put_string(out, op->h->data, op->h->len)) != 0) ||
        ((sp->fields & F_ATTR) && (r = sfc_put_attr(out, &op->attr)) != 0) ||
        ((sp->fields & F_MODE) && (r = sfc_put_attr(out, &mode_attr)) != 0) ||
        ((sp->fields & F_DATA) && ((r = buf_put_u64(out, op->off)) != 0 ||
                                   (r = buf_put_string(out, op->data, op->len)) != 0))) {
        sfc_put_cancel(out, mark);
        return r == -EMSGSIZE ? -ENAMETOOLONG : r;
    }
    sfc_put_end(out, mark);
    return 0;
}

/* A request for op of 'kind', encoded for the current server's extensions. */
static int op_req(tun_sftp_t *s, const struct tun_sftp_op *op, uint8_t kind, struct req **out)
{
    struct req *r = calloc(1, sizeof(*r));
    unsigned exts;
    int err;

    if (r == NULL)
        return -ENOMEM;
    buf_init(&r->pkt, PKT_MAX);
    pthread_mutex_lock(&s->lock);
    exts = s->exts;
    pthread_mutex_unlock(&s->lock);
    if ((err = tun_sftp_op_encode(op, exts, 0, &r->pkt)) != 0) {
        req_free(r);
        return err;
    }
    r->kind = kind;
    r->gen = (op_spec_of(op)->fields & F_HANDLE) ? op->h->gen : 0;
    *out = r;
    return 0;
}

static int call_op(tun_sftp_t *s, const struct tun_sftp_op *op)
{
    struct req *r;
    int err = op_req(s, op, REQ_WRITE, &r);
    return err ? err : call_status(s, r);
}

int tun_sftp_setstat(tun_sftp_t *s, const char *path, const struct tun_sftp_attr *a)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_SETSTAT, .path = path, .attr = *a};
    return call_op(s, &op);
}

int tun_sftp_fsetstat(tun_sftp_t *s, const struct tun_sftp_handle *h, const struct tun_sftp_attr *a)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_FSETSTAT, .h = h, .attr = *a};
    return call_op(s, &op);
}

int tun_sftp_remove(tun_sftp_t *s, const char *path)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_REMOVE, .path = path};
    return call_op(s, &op);
}

int tun_sftp_mkdir(tun_sftp_t *s, const char *path, uint32_t mode)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_MKDIR, .path = path, .mode = mode};
    return call_op(s, &op);
}

int tun_sftp_rmdir(tun_sftp_t *s, const char *path)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_RMDIR, .path = path};
    return call_op(s, &op);
}

int tun_sftp_rename(tun_sftp_t *s, const char *from, const char *to, unsigned flags)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_RENAME, .path = from, .to = to, .flags = flags};
    return call_op(s, &op);
}

int tun_sftp_symlink(tun_sftp_t *s, const char *target, const char *linkpath)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_SYMLINK, .path = linkpath, .target = target};
    return call_op(s, &op);
}

int tun_sftp_hardlink(tun_sftp_t *s, const char *from, const char *to)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_HARDLINK, .path = from, .to = to};
    return call_op(s, &op);
}

int tun_sftp_fsync(tun_sftp_t *s, const struct tun_sftp_handle *h)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_FSYNC, .h = h};
    return call_op(s, &op);
}

uint32_t tun_sftp_write_max(tun_sftp_t *s)
{
    uint32_t m;
    pthread_mutex_lock(&s->lock);
    m = s->write_max;
    pthread_mutex_unlock(&s->lock);
    return m;
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
                struct timespec ts = deadline_ms(CLOCK_REALTIME, 100);
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

struct ident_ctx {
    tun_sftp_ident_cb done;
    void *arg;
};

static void ident_done(struct req *r, int err, uint8_t type, struct buf *payload)
{
    struct ident_ctx *c = r->arg;
    struct tun_sftp_ident id;
    uint64_t mt = 0;

    memset(&id, 0, sizeof(id));
    if (err == 0) {
        if (type == SFC_EXTENDED_REPLY)
            err = buf_get_u64(payload, &id.dev) || buf_get_u64(payload, &id.ino) ||
                          buf_get_u64(payload, &id.size) || buf_get_u64(payload, &mt)
                      ? -EIO
                      : 0;
        else if (type == SFC_STATUS)
            err = parse_status(payload) ?: -EIO;
        else
            err = -EIO;
    }
    id.mtime_ns = (int64_t)mt;
    c->done(c->arg, err, err ? NULL : &id);
    free(c);
}

int tun_sftp_fstat_id_async(tun_sftp_t *s, const struct tun_sftp_handle *h, tun_sftp_ident_cb done,
                            void *arg)
{
    struct ident_ctx *c;
    struct req *r;
    int err;

    pthread_mutex_lock(&s->lock);
    bool has = s->exts & TUN_SFTP_EXT_FSTAT_ID;
    pthread_mutex_unlock(&s->lock);
    if (!has)
        return -EOPNOTSUPP;
    if ((r = req_new(SFC_EXTENDED, h->gen)) == NULL)
        return -ENOMEM;
    if (buf_put_cstring(&r->pkt, "fstat-id@offload") != 0 ||
        buf_put_string(&r->pkt, h->data, h->len) != 0 || (c = malloc(sizeof(*c))) == NULL) {
        req_free(r);
        return -ENOMEM;
    }
    c->done = done;
    c->arg = arg;
    if ((err = submit(s, r, ident_done, c)) != 0) {
        free(c);
        req_free(r);
    }
    return err;
}

/* ---- the ordered write stream ---- */

struct status_ctx {
    tun_sftp_status_cb done;
    void *arg;
};

static void status_done(struct req *r, int err, uint8_t type, struct buf *payload)
{
    struct status_ctx *c = r->arg;

    if (err == 0)
        err = type == SFC_STATUS ? parse_status(payload) : -EIO;
    c->done(c->arg, err);
    free(c);
}

/* Queue r, whose answer is a STATUS for done(); on failure r is freed and done() not called. */
static int submit_status(tun_sftp_t *s, struct req *r, tun_sftp_status_cb done, void *arg)
{
    struct status_ctx *c = malloc(sizeof(*c));
    int err;

    if (c == NULL) {
        req_free(r);
        return -ENOMEM;
    }
    c->done = done;
    c->arg = arg;
    if ((err = submit(s, r, status_done, c)) != 0) {
        free(c);
        req_free(r);
    }
    return err;
}

int tun_sftp_op_async(tun_sftp_t *s, const struct tun_sftp_op *op, tun_sftp_status_cb done,
                      void *arg)
{
    struct req *r;
    int err;

    if (op->type == TUN_SFTP_OP_WRITE && op->len > tun_sftp_write_max(s))
        return -EINVAL;
    if ((err = op_req(s, op, REQ_STREAM, &r)) != 0)
        return err;
    return submit_status(s, r, done, arg);
}

int tun_sftp_write_fd_async(tun_sftp_t *s, const struct tun_sftp_handle *h, uint64_t off, int fd,
                            uint32_t len, uint32_t *got, tun_sftp_status_cb done, void *arg)
{
    /* a WRITE with an empty data string, then the data read in behind it */
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_WRITE, .h = h, .off = off, .data = "", .len = 0};
    struct req *r;
    uint8_t *w;
    ssize_t n;
    int err;

    *got = 0;
    if (len > tun_sftp_write_max(s))
        return -EINVAL;
    if ((err = op_req(s, &op, REQ_STREAM, &r)) != 0)
        return err;
    size_t len_at = buf_avail(&r->pkt) - 4; /* the data string's length: last in the packet */
    if ((err = buf_reserve(&r->pkt, len, &w)) != 0) {
        req_free(r);
        return err;
    }
    do {
        n = pread(fd, w, len, (off_t)off);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
        err = n < 0 ? -errno : 0;
        req_free(r);
        return err;
    }
    buf_commit(&r->pkt, (size_t)n);
    buf_poke_u32(&r->pkt, len_at, (uint32_t)n);
    if ((err = submit_status(s, r, done, arg)) == 0)
        *got = (uint32_t)n;
    return err;
}

struct open_ctx {
    tun_sftp_t *s;
    tun_sftp_open_cb done;
    void *arg;
};

static void open_done(struct req *r, int err, uint8_t type, struct buf *payload)
{
    struct open_ctx *c = r->arg;
    struct tun_sftp_handle h = {0};

    if (err == 0) {
        pthread_mutex_lock(&c->s->lock);
        uint64_t gen = c->s->gen; /* the connection that answered */
        pthread_mutex_unlock(&c->s->lock);
        err = parse_handle(type, payload, gen, &h);
    }
    c->done(c->arg, err, err ? NULL : &h);
    free(c);
}

int tun_sftp_open_async(tun_sftp_t *s, const char *path, uint32_t pflags,
                        const struct tun_sftp_attr *create_attrs, tun_sftp_open_cb done, void *arg)
{
    struct open_ctx *c;
    struct req *r;
    int err;

    if ((err = open_req(path, pflags, create_attrs, REQ_STREAM, &r)) != 0)
        return err;
    if ((c = malloc(sizeof(*c))) == NULL) {
        req_free(r);
        return -ENOMEM;
    }
    *c = (struct open_ctx){s, done, arg};
    if ((err = submit(s, r, open_done, c)) != 0) {
        free(c);
        req_free(r);
    }
    return err;
}

int tun_sftp_write_async(tun_sftp_t *s, const struct tun_sftp_handle *h, uint64_t off,
                         const void *data, uint32_t len, tun_sftp_status_cb done, void *arg)
{
    struct tun_sftp_op op = {
        .type = TUN_SFTP_OP_WRITE, .h = h, .off = off, .data = data, .len = len};
    return tun_sftp_op_async(s, &op, done, arg);
}

void tun_sftp_resume(tun_sftp_t *s)
{
    pthread_mutex_lock(&s->lock);
    s->halted = false;
    s->epoch++;
    pthread_mutex_unlock(&s->lock);
    wake(s);
}

/* ---- owner thread ---- */

/* Complete every request of a list (linked by next) in order with err, and free it. */
static void complete_all(struct req *list, int err)
{
    while (list) {
        struct req *r = list;
        list = r->next;
        r->done(r, err, 0, NULL);
        req_free(r);
    }
}

/* While the stream is halted, fail every queued stream request with -ECANCELED, in queue order. */
static void cancel_stream(tun_sftp_t *s)
{
    struct req *out = NULL, **tail = &out, **pp;

    pthread_mutex_lock(&s->lock);
    if (!s->halted) {
        pthread_mutex_unlock(&s->lock);
        return;
    }
    pp = &s->q_head;
    s->q_tail = NULL;
    while (*pp) {
        struct req *r = *pp;
        if (r->kind == REQ_STREAM) {
            *pp = r->next;
            r->next = NULL;
            *tail = r;
            tail = &r->next;
        } else {
            s->q_tail = r;
            pp = &r->next;
        }
    }
    pthread_mutex_unlock(&s->lock);
    complete_all(out, -ECANCELED);
}

static int by_seq(const void *a, const void *b)
{
    const struct req *x = *(struct req *const *)a, *y = *(struct req *const *)b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void drop_connection(tun_sftp_t *s, const char *why)
{
    struct req *retry = NULL, **tail = &retry;
    struct req *cut[INFLIGHT_SLOTS];
    size_t n_cut = 0;
    bool halt = false;

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

    /* read-side path requests go back to the front of the queue, read-side handle requests are
     * stale; write-side ones were cut with an unknown outcome */
    for (int i = 0; i < INFLIGHT_SLOTS; i++) {
        struct req *r = s->inflight[i];
        if (r == NULL)
            continue;
        s->inflight[i] = NULL;
        if (r->kind != REQ_READ) {
            cut[n_cut++] = r;
            halt |= r->kind == REQ_STREAM;
        } else if (r->gen == 0) {
            r->next = NULL;
            *tail = r;
            tail = &r->next;
        } else {
            r->done(r, -ESTALE, 0, NULL);
            req_free(r);
        }
    }
    s->n_inflight = 0;
    if (halt) {
        /* halted before any completion runs, so a callback sees the state it is told about */
        pthread_mutex_lock(&s->lock);
        s->halted = true;
        pthread_mutex_unlock(&s->lock);
    }
    qsort(cut, n_cut, sizeof(cut[0]), by_seq);
    for (size_t i = 0; i < n_cut; i++) {
        cut[i]->done(cut[i], -ECONNRESET, 0, NULL);
        req_free(cut[i]);
    }
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
    cancel_stream(s);
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

/* One EXTENDED request 'name' (with the u64 'arg' when it is not NULL) during the handshake,
 * before any other request; its reply is left in b, its type in *type. */
static int handshake_ext(tun_sftp_t *s, struct buf *b, const char *name, const uint64_t *arg,
                         uint8_t *type)
{
    size_t mark;
    int r;

    buf_reset(b);
    if ((r = sfc_put_begin(b, SFC_EXTENDED, 0, &mark)) != 0 ||
        (r = buf_put_cstring(b, name)) != 0 || (arg && (r = buf_put_u64(b, *arg)) != 0))
        return r;
    sfc_put_end(b, mark);
    if (ssh_channel_write(s->chan, buf_ptr(b), (uint32_t)buf_avail(b)) != (int)buf_avail(b))
        return -EIO;
    return read_packet_blocking(s, type, b, s->o.ssh.connect_timeout_s * 1000);
}

/* Ask limits@openssh.com for the largest WRITE. A reply other than the limits leaves *write_max
 * as it is; a lost channel is an error. */
static int query_write_max(tun_sftp_t *s, struct buf *b, uint32_t *write_max)
{
    uint64_t v[4];
    uint8_t type;
    int r;

    if ((r = handshake_ext(s, b, "limits@openssh.com", NULL, &type)) != 0)
        return r;
    if (type != SFC_EXTENDED_REPLY)
        return 0;
    for (int i = 0; i < 4; i++)
        if (buf_get_u64(b, &v[i]) != 0)
            return 0;
    /* packet, read, write, open handles; 0 means no limit */
    *write_max = v[2] == 0 || v[2] > TUN_SFTP_WRITE_MAX ? TUN_SFTP_WRITE_MAX : (uint32_t)v[2];
    return 0;
}

/* client-id@offload: name this client to the server (its change hook tells our writes apart). */
static int send_client_id(tun_sftp_t *s, struct buf *b)
{
    uint8_t type;
    int r = handshake_ext(s, b, "client-id@offload", &s->o.client_id, &type);
    return r != 0 ? r : type == SFC_STATUS ? 0 : -EPROTO;
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
    static const struct {
        const char *name;
        unsigned bit;
    } known[] = {{"posix-rename@openssh.com", TUN_SFTP_EXT_POSIX_RENAME},
                 {"hardlink@openssh.com", TUN_SFTP_EXT_HARDLINK},
                 {"fsync@openssh.com", TUN_SFTP_EXT_FSYNC},
                 {"fstat-id@offload", TUN_SFTP_EXT_FSTAT_ID}};
    bool has_limits = false, has_client_id = false;
    pthread_mutex_lock(&s->lock);
    s->n_ext = 0;
    s->exts = 0;
    while (buf_avail(&b) > 0 && s->n_ext < EXT_MAX) {
        const uint8_t *p, *q;
        uint32_t n, m;
        if (buf_get_string(&b, &p, &n) != 0 || buf_get_string(&b, &q, &m) != 0)
            break;
        if (n < sizeof(s->ext[0])) {
            memcpy(s->ext[s->n_ext], p, n);
            s->ext[s->n_ext][n] = '\0';
            for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
                if (strcmp(s->ext[s->n_ext], known[i].name) == 0)
                    s->exts |= known[i].bit;
            has_limits |= strcmp(s->ext[s->n_ext], "limits@openssh.com") == 0;
            has_client_id |= strcmp(s->ext[s->n_ext], "client-id@offload") == 0;
            s->n_ext++;
        }
    }
    pthread_mutex_unlock(&s->lock);
    uint32_t write_max = WRITE_MAX_DEFAULT;
    if (has_limits && (r = query_write_max(s, &b, &write_max)) != 0) {
        buf_free(&b);
        snprintf(err, errlen, "sftp handshake with '%s' failed (limits@openssh.com)", s->dest);
        goto fail;
    }
    if (has_client_id && s->o.client_id != 0 && (r = send_client_id(s, &b)) != 0) {
        buf_free(&b);
        snprintf(err, errlen, "sftp handshake with '%s' failed (client-id@offload)", s->dest);
        goto fail;
    }
    pthread_mutex_lock(&s->lock);
    s->write_max = write_max;
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
        int fail = 0;

        if (s->n_inflight >= INFLIGHT_SLOTS - 1)
            return 0;
        /* Send only what the server's window takes: a write that waits for window would stop
         * us reading replies, and a server blocked on sending them stops reading requests. With
         * nothing in flight there is no reply to wait for, and a write may wait. */
        uint32_t window = ssh_channel_window_size(s->chan);
        pthread_mutex_lock(&s->lock);
        r = s->q_head;
        if (r && s->n_inflight > 0 && window < buf_avail(&r->pkt))
            r = NULL;
        if (r) {
            s->q_head = r->next;
            if (s->q_head == NULL)
                s->q_tail = NULL;
            if (r->kind == REQ_STREAM && (s->halted || r->epoch != s->epoch)) {
                fail = -ECANCELED;
            } else if (r->gen != 0 && r->gen != s->gen) {
                fail = -ESTALE;
                if (r->kind == REQ_STREAM)
                    s->halted = true;
            }
        }
        pthread_mutex_unlock(&s->lock);
        if (r == NULL)
            return 0;
        r->next = NULL;
        if (fail) {
            bool stream = r->kind == REQ_STREAM;
            r->done(r, fail, 0, NULL);
            req_free(r);
            if (stream)
                cancel_stream(s);
            continue;
        }
        r->seq = ++s->seq;
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
    struct req *expired = NULL, **tail = &expired, **pp;
    bool halt = false;

    pthread_mutex_lock(&s->lock);
    pp = &s->q_head;
    s->q_tail = NULL;
    while (*pp) {
        struct req *r = *pp;
        if (!s->connected && now - r->t_queued > limit) {
            *pp = r->next;
            r->next = NULL;
            *tail = r;
            tail = &r->next;
            s->st.timeouts++;
            halt |= r->kind == REQ_STREAM;
        } else {
            s->q_tail = r;
            pp = &r->next;
        }
    }
    if (halt)
        s->halted = true;
    pthread_mutex_unlock(&s->lock);
    complete_all(expired, -EIO);
    cancel_stream(s);
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
        cancel_stream(s); /* a halt set by a caller (submit) */

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
