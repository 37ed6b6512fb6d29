/* control.c - the control tunnel: one libssh client session, one owner thread (see control.h).
 *
 * The owner thread runs its own poll() over the wake eventfd, the session's socket and every
 * bridged local socket, then lets libssh read and write the connection (ssh_event_dopoll on an
 * event holding only the session, so that no libssh call ever runs code of ours but the channel
 * callbacks, which only set flags). Channel data stays in libssh's buffers until the local socket
 * can take it; libssh reopens the channel's window only as it is read, so a slow local reader
 * stops the remote sender.
 *
 * Global requests: libssh 0.10 keeps one pending global request per session and answers the next
 * call of any global-request function with the pending one's reply. So at most one is in flight
 * here (c->gr): tcpip-forward, cancel-tcpip-forward or a keepalive, each polled with the same
 * call until it stops returning SSH_AGAIN.
 */
#include "control.h"

#include "deadline.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h> /* ssh_send_keepalive, declared there but usable by clients */

#define CHUNK               (64u << 10) /* bytes buffered per bridge and direction */
#define OPEN_TIMEOUT_MS     30000       /* bound on a channel open a caller waits for */
#define TAIL_MAX            4096        /* stderr bytes kept of the exec channel */
#define LINE_MAX_           1024        /* longest stderr line reported as one event */
#define RFWD_LO             16384       /* ports tried for a reverse forward on "any port" */
#define RFWD_HI             32767
#define RFWD_TRIES          32
#define DOPOLL_ROUNDS       64   /* ssh_event_dopoll calls per iteration while data keeps coming */
#define PUMP_ROUNDS         4    /* chunks moved per bridge and iteration before the others' turn */
#define EXIT_STATUS_WAIT_MS 2000 /* exec: how long its exit status may trail its EOF */
#define FWD_ADDR            "127.0.0.1"

enum b_kind { B_EXEC, B_UNIX, B_TCP, B_RFWD };
enum b_state { BS_OPENING, BS_EXEC_REQ, BS_CONNECTING, BS_OPEN, BS_DONE };

struct req;

/* One channel bridged to one local socket. Owner thread only. */
struct bridge {
    struct ctl *c;
    enum b_kind kind;
    enum b_state state;
    ssh_channel ch;
    struct ssh_channel_callbacks_struct cb;
    int sock;        /* our end, non-blocking */
    int user;        /* the socketpair end for the requester, -1 once handed over */
    struct req *req; /* the caller waiting for the open; NULL if none or given up */
    int64_t deadline;
    char *target; /* remote path or host, or the local address of a reverse forward */
    int port;
    int pfi; /* index in this iteration's pollfd array, -1: not polled */
    uint8_t up[CHUNK], down[CHUNK];
    size_t up_off, up_len, down_off, down_len;
    /* set by the channel callbacks: */
    bool rx_pending, err_pending, eof_flag, remote_closed, exit_known;
    int exit_status;
    int64_t status_wait_ms; /* exec: when both ends were done and the status had not come */
    char exit_signal[32];
    /* stream state: */
    bool sock_eof;   /* read EOF from sock */
    bool eof_sent;   /* the channel's EOF went out */
    bool remote_eof; /* every byte of the channel was read and its EOF seen */
    bool sock_shut;  /* shutdown(sock, SHUT_WR) done */
    bool failed;
    unsigned gen; /* exec: generation */
    char line[LINE_MAX_ + 1];
    size_t line_len;
    struct bridge *next;
};

enum f_state { F_LISTEN, F_ACTIVE, F_CANCEL };

/* A reverse forward. Owner thread only. */
struct rfwd {
    int want; /* port asked for, 0: any */
    int port; /* bound port, 0 until the server first said yes */
    struct sockaddr_storage local;
    socklen_t local_len;
    char local_desc[300];
    enum f_state state;
    int tries;
    int64_t retry_at, backoff;
    struct req *add_req, *del_req;
    struct rfwd *next;
};

enum rq_kind { RQ_UNIX, RQ_TCP, RQ_RFWD_ADD, RQ_RFWD_DEL };

/* A call waiting for the owner thread; lives on the caller's stack. */
struct req {
    enum rq_kind kind;
    const char *target; /* UNIX: path; TCP: host */
    int port;           /* TCP: port; ADD: port asked for; DEL: bound port */
    struct sockaddr_storage local;
    socklen_t local_len;
    char local_desc[300];
    char *err;
    size_t errlen;
    /* results: written by the owner thread before done, read by the caller after it */
    int rc, fd, bound;
    bool done; /* protected by ctl->lock */
    struct req *next;
};

enum gr_kind { GR_IDLE, GR_KEEPALIVE, GR_LISTEN, GR_CANCEL };

struct ctl {
    /* set by ctl_start, read-only afterwards */
    struct ctl_opts o;
    char *dest, *config, *identity, *cmd;
    int ka_ms, ka_max, bo_min, bo_max;
    pthread_t thread;
    int wake_fd;

    /* Lock order: only one lock. */
    pthread_mutex_t lock;
    pthread_cond_t cond;         /* a request is done, an exec channel started, state changed */
    struct req *q_head, *q_tail; /* protected by lock */
    bool stopping;               /* protected by lock */
    bool connected, gave_up;     /* protected by lock */
    int exec_fd;                 /* protected by lock: our copy of the exec channel's local end */
    unsigned exec_gen;           /* protected by lock */
    unsigned exec_done_gen;      /* protected by lock: the last exec generation that ended */
    char tail[TAIL_MAX];         /* protected by lock: stderr of the exec channel */
    size_t tail_len;             /* protected by lock */
    struct ctl_stats st;         /* protected by lock */
    int64_t last_activity;       /* protected by lock */

    ssh_session s0; /* the first session, from ctl_start to the owner thread */

    /* owner thread only */
    ssh_session s;
    ssh_event ev;
    struct ssh_counter_struct txc, rxc;
    uint64_t rx_seen;
    int64_t last_rx, last_ka;
    enum gr_kind gr;
    struct rfwd *gr_fwd;
    int gr_port;
    bool rfwd_used; /* a tcpip-forward was sent on this session: accept forwarded channels */
    struct bridge *bridges;
    struct bridge *exec;
    struct rfwd *fwds;
    bool busy;
    uint64_t up_acc, down_acc;
    uint64_t rng;
    unsigned gen_next;
    struct pollfd *pf;
    size_t pf_cap;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return r;
}

static void wake(struct ctl *c)
{
    uint64_t one = 1;
    ssize_t w = write(c->wake_fd, &one, sizeof(one));
    (void)w;
}

static void emit(struct ctl *c, const struct ctl_event *ev)
{
    if (c->o.status)
        c->o.status(c->o.status_arg, ev);
}

static void emit_simple(struct ctl *c, enum ctl_event_kind kind, const char *msg)
{
    struct ctl_event ev = {.kind = kind, .msg = msg, .fd = -1};
    emit(c, &ev);
}

/* Complete a waiting call. The caller may return (and free r) as soon as the lock is dropped. */
static void req_done(struct ctl *c, struct req *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void req_done(struct ctl *c, struct req *r, int rc, const char *fmt, ...)
{
    if (rc != 0 && r->err && r->errlen && fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err, r->errlen, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_lock(&c->lock);
    r->rc = rc;
    r->done = true;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

static bool session_dead(struct ctl *c)
{
    return (ssh_get_status(c->s) & (SSH_CLOSED | SSH_CLOSED_ERROR)) != 0 || !ssh_is_connected(c->s);
}

static uint64_t rnd(struct ctl *c)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

/* --- channel callbacks: they only take note ---------------------------------------------- */

static int on_data(ssh_session s, ssh_channel ch, void *data, uint32_t len, int is_stderr,
                   void *userdata)
{
    (void)s, (void)ch, (void)data, (void)len;
    struct bridge *b = userdata;
    if (is_stderr)
        b->err_pending = true;
    else
        b->rx_pending = true;
    return 0; /* left in libssh's buffer until the local side can take it */
}

static void on_eof(ssh_session s, ssh_channel ch, void *userdata)
{
    (void)s, (void)ch;
    struct bridge *b = userdata;
    b->eof_flag = true;
}

static void on_close(ssh_session s, ssh_channel ch, void *userdata)
{
    (void)s, (void)ch;
    struct bridge *b = userdata;
    b->eof_flag = true;
    b->remote_closed = true;
}

static void on_exit_status(ssh_session s, ssh_channel ch, int status, void *userdata)
{
    (void)s, (void)ch;
    struct bridge *b = userdata;
    b->exit_known = true;
    b->exit_status = status;
}

static void on_exit_signal(ssh_session s, ssh_channel ch, const char *sig, int core,
                           const char *errmsg, const char *lang, void *userdata)
{
    (void)s, (void)ch, (void)core, (void)errmsg, (void)lang;
    struct bridge *b = userdata;
    snprintf(b->exit_signal, sizeof(b->exit_signal), "%s", sig ? sig : "?");
}

/* --- bridges -------------------------------------------------------------------------------- */

static struct bridge *bridge_new(struct ctl *c, enum b_kind kind, int sock, ssh_channel ch)
{
    struct bridge *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->c = c;
    b->kind = kind;
    b->sock = sock;
    b->user = -1;
    b->pfi = -1;
    b->ch = ch;
    b->cb.userdata = b;
    b->cb.channel_data_function = on_data;
    b->cb.channel_eof_function = on_eof;
    b->cb.channel_close_function = on_close;
    b->cb.channel_exit_status_function = on_exit_status;
    b->cb.channel_exit_signal_function = on_exit_signal;
    ssh_callbacks_init(&b->cb);
    ssh_set_channel_callbacks(ch, &b->cb);
    b->next = c->bridges;
    c->bridges = b;
    return b;
}

static void bridge_free(struct bridge *b)
{
    if (b->ch) {
        /* libssh may deliver the peer's close after the free: no callback may reach b */
        ssh_remove_channel_callbacks(b->ch, &b->cb);
        ssh_channel_free(b->ch); /* sends the close if we have not yet */
    }
    if (b->sock >= 0)
        close(b->sock);
    if (b->user >= 0)
        close(b->user);
    free(b->target);
    free(b);
}

/* A socketpair: *ours non-blocking, *theirs blocking; both close-on-exec. */
static int make_pair(int *ours, int *theirs)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return -errno;
    if (fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK) != 0) {
        int e = errno;
        close(sv[0]);
        close(sv[1]);
        return -e;
    }
    *ours = sv[0];
    *theirs = sv[1];
    return 0;
}

/* The first word of the remote command, for messages. */
static void cmd_name(const char *cmd, char *out, size_t len)
{
    size_t n = strcspn(cmd, " \t");
    if (n >= len)
        n = len - 1;
    memcpy(out, cmd, n);
    out[n] = '\0';
}

static void exec_flush_line(struct ctl *c, struct bridge *b)
{
    if (b->line_len == 0)
        return;
    b->line[b->line_len] = '\0';
    struct ctl_event ev = {.kind = CTL_EV_EXEC_STDERR, .msg = b->line, .fd = -1, .gen = b->gen};
    emit(c, &ev);
    b->line_len = 0;
}

/* Take what the remote command wrote on stderr: into the tail and, line by line, events. */
static void exec_read_stderr(struct ctl *c, struct bridge *b)
{
    char tmp[4096];
    int n;
    while ((n = ssh_channel_read_nonblocking(b->ch, tmp, sizeof(tmp), 1)) > 0) {
        pthread_mutex_lock(&c->lock);
        if ((size_t)n >= TAIL_MAX) {
            memcpy(c->tail, tmp + n - TAIL_MAX, TAIL_MAX);
            c->tail_len = TAIL_MAX;
        } else {
            if (c->tail_len + (size_t)n > TAIL_MAX) {
                size_t drop = c->tail_len + (size_t)n - TAIL_MAX;
                memmove(c->tail, c->tail + drop, c->tail_len - drop);
                c->tail_len -= drop;
            }
            memcpy(c->tail + c->tail_len, tmp, (size_t)n);
            c->tail_len += (size_t)n;
        }
        pthread_mutex_unlock(&c->lock);
        for (int i = 0; i < n; i++) {
            if (tmp[i] == '\n')
                exec_flush_line(c, b);
            else if (b->line_len < LINE_MAX_)
                b->line[b->line_len++] = tmp[i];
        }
    }
    b->err_pending = false;
}

/* The last non-empty line of the exec channel's stderr. */
static void exec_last_line(struct ctl *c, char *out, size_t len)
{
    pthread_mutex_lock(&c->lock);
    size_t end = c->tail_len;
    while (end > 0 && (c->tail[end - 1] == '\n' || c->tail[end - 1] == '\r'))
        end--;
    size_t start = end;
    while (start > 0 && c->tail[start - 1] != '\n')
        start--;
    size_t n = end - start < len - 1 ? end - start : len - 1;
    memcpy(out, c->tail + start, n);
    out[n] = '\0';
    pthread_mutex_unlock(&c->lock);
}

/* The exec channel ended (or never started): say so, drop our copy of its local end. */
static void exec_ended(struct ctl *c, struct bridge *b, const char *why)
{
    char name[128], last[300], msg[768];
    if (!why && b->err_pending)
        exec_read_stderr(c, b);
    exec_flush_line(c, b);
    cmd_name(c->cmd, name, sizeof(name));
    exec_last_line(c, last, sizeof(last));
    const char *sep = last[0] ? ": " : "";
    int status = b->exit_known ? b->exit_status : -1;
    if (why)
        snprintf(msg, sizeof(msg), "'%s' on '%s' ended: %s", name, c->dest, why);
    else if (!b->exit_known && b->exit_signal[0])
        snprintf(msg, sizeof(msg), "'%s' on '%s' was killed by signal %s%s%s", name, c->dest,
                 b->exit_signal, sep, last);
    else if (!b->exit_known)
        snprintf(msg, sizeof(msg), "'%s' on '%s' ended without an exit status%s%s", name, c->dest,
                 sep, last);
    else if (status == 127)
        snprintf(msg, sizeof(msg), "'%s' is not installed on '%s' (exit status 127%s%s)", name,
                 c->dest, sep, last);
    else if (status == 126)
        snprintf(msg, sizeof(msg), "'%s' on '%s' cannot be run (exit status 126%s%s)", name,
                 c->dest, sep, last);
    else if (status == 0)
        snprintf(msg, sizeof(msg), "'%s' on '%s' exited", name, c->dest);
    else
        snprintf(msg, sizeof(msg), "'%s' on '%s' exited with status %d%s%s", name, c->dest, status,
                 sep, last);
    pthread_mutex_lock(&c->lock);
    if (c->exec_fd >= 0 && c->exec_gen == b->gen) {
        close(c->exec_fd);
        c->exec_fd = -1;
    }
    if (b->gen > c->exec_done_gen)
        c->exec_done_gen = b->gen;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    struct ctl_event ev = {
        .kind = CTL_EV_EXEC_EXITED, .msg = msg, .status = status, .fd = -1, .gen = b->gen};
    emit(c, &ev);
    if (c->exec == b)
        c->exec = NULL;
}

static void exec_start(struct ctl *c)
{
    int ours, theirs;
    ssh_channel ch;
    char why[256];

    if (!c->cmd)
        return;
    unsigned gen = ++c->gen_next;
    if (make_pair(&ours, &theirs) != 0) {
        snprintf(why, sizeof(why), "cannot set up the exec channel: out of descriptors");
        goto fail;
    }
    struct bridge *b = NULL;
    if ((ch = ssh_channel_new(c->s)) == NULL || (b = bridge_new(c, B_EXEC, ours, ch)) == NULL) {
        if (ch)
            ssh_channel_free(ch);
        close(ours);
        close(theirs);
        snprintf(why, sizeof(why), "cannot set up the exec channel: out of memory");
        goto fail;
    }
    b->user = theirs;
    b->gen = gen;
    b->state = BS_OPENING;
    c->exec = b;
    pthread_mutex_lock(&c->lock);
    c->tail_len = 0;
    pthread_mutex_unlock(&c->lock);
    return;
fail:;
    struct ctl_event ev = {
        .kind = CTL_EV_EXEC_EXITED, .msg = why, .status = -1, .fd = -1, .gen = gen};
    emit(c, &ev);
}

/* Start a direct-streamlocal or direct-tcpip channel for a waiting call. */
static void open_start(struct ctl *c, struct req *r)
{
    int ours, theirs, e;
    ssh_channel ch;
    struct bridge *b;

    if ((e = make_pair(&ours, &theirs)) != 0) {
        req_done(c, r, e, "cannot make a socketpair: %s", strerror(-e));
        return;
    }
    if ((ch = ssh_channel_new(c->s)) == NULL ||
        (b = bridge_new(c, r->kind == RQ_UNIX ? B_UNIX : B_TCP, ours, ch)) == NULL) {
        if (ch)
            ssh_channel_free(ch);
        close(ours);
        close(theirs);
        req_done(c, r, -ENOMEM, "out of memory");
        return;
    }
    b->user = theirs;
    b->req = r;
    b->target = strdup(r->target);
    b->port = r->port;
    b->state = BS_OPENING;
    b->deadline = now_ms() + OPEN_TIMEOUT_MS;
    if (!b->target) {
        b->req = NULL;
        b->state = BS_DONE;
        req_done(c, r, -ENOMEM, "out of memory");
    }
}

static const char *bridge_what(const struct bridge *b, char *buf, size_t len)
{
    if (b->kind == B_TCP)
        snprintf(buf, len, "%s:%d", b->target, b->port);
    else
        snprintf(buf, len, "%s", b->target ? b->target : "?");
    return buf;
}

static int open_call(struct ctl *c, struct bridge *b)
{
    switch (b->kind) {
    case B_EXEC:
        if (b->state == BS_OPENING)
            return ssh_channel_open_session(b->ch);
        return ssh_channel_request_exec(b->ch, c->cmd);
    case B_UNIX:
        return ssh_channel_open_forward_unix(b->ch, b->target, FWD_ADDR, 0);
    case B_TCP:
        return ssh_channel_open_forward(b->ch, b->target, b->port, FWD_ADDR, 0);
    case B_RFWD:
        break;
    }
    return SSH_ERROR;
}

/* Drive a channel open (and the exec request) one step. */
static void bridge_opening(struct ctl *c, struct bridge *b, int64_t now)
{
    char what[600];
    for (;;) {
        int rc = open_call(c, b);
        if (rc == SSH_AGAIN) {
            if (b->req && now >= b->deadline) {
                struct req *r = b->req;
                b->req = NULL; /* the channel is closed once the server answers */
                close(b->user);
                b->user = -1;
                req_done(c, r, -ETIMEDOUT, "cannot open '%s' on '%s': no answer in %d s",
                         bridge_what(b, what, sizeof(what)), c->dest, OPEN_TIMEOUT_MS / 1000);
            }
            return;
        }
        if (session_dead(c))
            return; /* the iteration ends with lose() */
        if (rc != SSH_OK) {
            const char *e = ssh_get_error(c->s);
            b->state = BS_DONE;
            if (b->kind == B_EXEC) {
                char why[512];
                snprintf(why, sizeof(why), "the server refused to run it: %s", e);
                exec_ended(c, b, why);
            } else if (b->req) {
                struct req *r = b->req;
                b->req = NULL;
                req_done(c, r, -ECONNREFUSED, "cannot open '%s' on '%s': %s",
                         bridge_what(b, what, sizeof(what)), c->dest, e);
            }
            return;
        }
        c->busy = true;
        if (b->kind == B_EXEC && b->state == BS_OPENING) {
            b->state = BS_EXEC_REQ;
            continue;
        }
        break;
    }
    if (b->kind == B_EXEC) {
        b->state = BS_OPEN;
        pthread_mutex_lock(&c->lock);
        if (c->exec_fd >= 0)
            close(c->exec_fd);
        c->exec_fd = b->user;
        c->exec_gen = b->gen;
        c->st.exec_gen = b->gen;
        pthread_cond_broadcast(&c->cond);
        pthread_mutex_unlock(&c->lock);
        struct ctl_event ev = {.kind = CTL_EV_EXEC_STARTED, .fd = b->user, .gen = b->gen};
        b->user = -1; /* c->exec_fd owns it now */
        emit(c, &ev);
        return;
    }
    if (!b->req) { /* the caller gave up waiting */
        b->state = BS_DONE;
        return;
    }
    struct req *r = b->req;
    b->req = NULL;
    r->fd = b->user;
    b->user = -1;
    b->state = BS_OPEN;
    req_done(c, r, 0, NULL);
}

/* A reverse forward's local connection finished connecting (or failed to). */
static void bridge_connecting(struct bridge *b, short rev)
{
    int e = 0;
    socklen_t el = sizeof(e);
    if (!(rev & (POLLOUT | POLLERR | POLLHUP)))
        return;
    if (getsockopt(b->sock, SOL_SOCKET, SO_ERROR, &e, &el) != 0)
        e = errno;
    if (e == EINPROGRESS || e == EALREADY)
        return;
    b->c->busy = true;
    if (e != 0) {
        /* nobody listens on the laptop side (an export that stopped): the cloud side's
         * client sees its connection closed */
        b->failed = true;
        return;
    }
    b->state = BS_OPEN;
}

/* Move data both ways as far as both sides take it. rev: this iteration's poll result. */
static void bridge_pump(struct ctl *c, struct bridge *b, short rev)
{
    bool sock_readable = (rev & (POLLIN | POLLHUP | POLLERR)) != 0;

    for (int round = 0; round < PUMP_ROUNDS && !b->failed; round++) {
        bool moved = false;

        /* remote -> local */
        if (b->err_pending && b->kind == B_EXEC)
            exec_read_stderr(c, b);
        else if (b->err_pending) { /* stderr on a forwarding channel: nobody to give it to */
            char tmp[4096];
            while (ssh_channel_read_nonblocking(b->ch, tmp, sizeof(tmp), 1) > 0)
                ;
            b->err_pending = false;
        }
        if (b->down_off == b->down_len)
            b->down_off = b->down_len = 0;
        if (!b->remote_eof && (b->rx_pending || b->eof_flag) && b->down_len < CHUNK) {
            if (b->down_off > 0) {
                memmove(b->down, b->down + b->down_off, b->down_len - b->down_off);
                b->down_len -= b->down_off;
                b->down_off = 0;
            }
            uint32_t room = (uint32_t)(CHUNK - b->down_len);
            int n = ssh_channel_read_nonblocking(b->ch, b->down + b->down_len, room, 0);
            if (n > 0) {
                b->down_len += (size_t)n;
                c->down_acc += (uint64_t)n;
                if ((uint32_t)n < room)
                    b->rx_pending = false;
                moved = true;
            } else if (n == SSH_EOF) {
                b->remote_eof = true;
                moved = true;
            } else if (n == 0) {
                b->rx_pending = false;
            } else {
                b->failed = true;
                break;
            }
        }
        if (b->down_off < b->down_len) {
            ssize_t w = send(b->sock, b->down + b->down_off, b->down_len - b->down_off,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) {
                b->down_off += (size_t)w;
                moved = true;
            } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                b->failed = true; /* the local side is gone */
                break;
            }
        }
        if (b->remote_eof && b->down_off == b->down_len && !b->sock_shut) {
            shutdown(b->sock, SHUT_WR);
            b->sock_shut = true;
            moved = true;
        }

        /* local -> remote: never more than the channel's window takes */
        if (!b->sock_eof && b->up_len == 0 && !b->remote_closed && sock_readable) {
            uint32_t win = ssh_channel_window_size(b->ch);
            size_t want = win < CHUNK ? win : CHUNK;
            if (want > 0) {
                ssize_t n = recv(b->sock, b->up, want, MSG_DONTWAIT);
                if (n > 0) {
                    b->up_off = 0;
                    b->up_len = (size_t)n;
                    if ((size_t)n < want)
                        sock_readable = false;
                    moved = true;
                } else if (n == 0) {
                    b->sock_eof = true;
                    moved = true;
                } else if (errno == EAGAIN || errno == EINTR) {
                    sock_readable = false;
                } else {
                    b->failed = true;
                    break;
                }
            }
        }
        if (b->up_off < b->up_len) {
            if (b->remote_closed) {
                b->up_off = b->up_len = 0; /* the channel takes nothing any more */
            } else {
                int w =
                    ssh_channel_write(b->ch, b->up + b->up_off, (uint32_t)(b->up_len - b->up_off));
                if (w > 0) {
                    b->up_off += (size_t)w;
                    c->up_acc += (uint64_t)w;
                    moved = true;
                } else if (w < 0) {
                    b->failed = true;
                    break;
                }
            }
            if (b->up_off == b->up_len)
                b->up_off = b->up_len = 0;
        }
        if (b->sock_eof && b->up_len == 0 && !b->eof_sent && !b->remote_closed) {
            ssh_channel_send_eof(b->ch);
            b->eof_sent = true;
            moved = true;
        }
        if (!moved)
            break;
        c->busy = true;
    }
    bool down_done = b->remote_eof && b->sock_shut;
    bool up_done = b->eof_sent || b->remote_closed;
    if (down_done && up_done && b == c->exec && !b->failed && !b->remote_closed && !b->exit_known &&
        !b->exit_signal[0]) {
        /* sshd sends the command's EOF when its output closes and the exit status when it has
         * reaped it, then closes: wait (a bounded while) for the status rather than report none */
        int64_t now = now_ms();
        if (b->status_wait_ms == 0)
            b->status_wait_ms = now;
        if (now - b->status_wait_ms < EXIT_STATUS_WAIT_MS)
            return;
    }
    if (b->failed || (down_done && up_done))
        b->state = BS_DONE;
}

/* --- reverse forwards ----------------------------------------------------------------------- */

static void fwd_unlink(struct ctl *c, struct rfwd *f)
{
    for (struct rfwd **pp = &c->fwds; *pp; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            break;
        }
    if (c->gr_fwd == f)
        c->gr_fwd = NULL;
}

static struct rfwd *fwd_by_port(struct ctl *c, int port)
{
    for (struct rfwd *f = c->fwds; f; f = f->next)
        if (f->port == port && port != 0)
            return f;
    return NULL;
}

/* A forwarded-tcpip channel arrived for f: connect to the laptop side and bridge. */
static void rfwd_accept(struct ctl *c, struct rfwd *f, ssh_channel ch)
{
    int s = socket(f->local.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct bridge *b;
    if (s < 0 || (b = bridge_new(c, B_RFWD, s, ch)) == NULL) {
        if (s >= 0)
            close(s);
        ssh_channel_close(ch);
        ssh_channel_free(ch);
        return;
    }
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    b->target = strdup(f->local_desc);
    b->port = f->port;
    if (connect(s, (struct sockaddr *)&f->local, f->local_len) == 0)
        b->state = BS_OPEN;
    else if (errno == EINPROGRESS)
        b->state = BS_CONNECTING;
    else
        b->failed = true, b->state = BS_DONE;
    c->busy = true;
}

static void accept_forwards(struct ctl *c)
{
    if (!c->rfwd_used)
        return;
    for (int i = 0; i < 32; i++) {
        int dport = 0, oport = 0;
        char *orig = NULL;
        ssh_channel ch = ssh_channel_open_forward_port(c->s, 0, &dport, &orig, &oport);
        ssh_string_free_char(orig);
        if (!ch)
            return;
        struct rfwd *f = fwd_by_port(c, dport);
        if (!f) { /* cancelled meanwhile */
            ssh_channel_close(ch);
            ssh_channel_free(ch);
            continue;
        }
        rfwd_accept(c, f, ch);
    }
}

static int fwd_pick_port(struct ctl *c)
{
    for (;;) {
        int p = RFWD_LO + (int)(rnd(c) % (RFWD_HI - RFWD_LO + 1));
        if (!fwd_by_port(c, p))
            return p;
    }
}

static void listen_done(struct ctl *c, struct rfwd *f, bool ok, int64_t now)
{
    char msg[512];
    if (ok) {
        f->port = c->gr_port;
        f->state = F_ACTIVE;
        f->backoff = 0;
        if (f->del_req) {
            f->state = F_CANCEL;
        } else if (f->add_req) {
            struct req *r = f->add_req;
            f->add_req = NULL;
            r->bound = f->port;
            req_done(c, r, 0, NULL);
        } else {
            struct ctl_event ev = {.kind = CTL_EV_RFORWARD, .fd = -1, .port = f->port, .ok = true};
            emit(c, &ev);
        }
        return;
    }
    const char *e = ssh_get_error(c->s);
    if (f->del_req) {
        struct req *r = f->del_req;
        fwd_unlink(c, f);
        free(f);
        req_done(c, r, 0, NULL);
        return;
    }
    if (f->port == 0) { /* the first request: the caller waits */
        if (f->want == 0 && ++f->tries < RFWD_TRIES)
            return; /* another random port next */
        struct req *r = f->add_req;
        int tried = c->gr_port;
        fwd_unlink(c, f);
        free(f);
        if (r->port == 0)
            req_done(c, r, -EADDRINUSE,
                     "the server on '%s' refused to listen on %d ports of %s (the last %d: %s)",
                     c->dest, RFWD_TRIES, FWD_ADDR, tried, e);
        else
            req_done(c, r, -EADDRINUSE, "the server on '%s' refused to listen on %s:%d (%s)",
                     c->dest, FWD_ADDR, tried, e);
        return;
    }
    f->backoff = f->backoff ? f->backoff * 2 : c->bo_min;
    if (f->backoff > c->bo_max)
        f->backoff = c->bo_max;
    f->retry_at = now + f->backoff;
    snprintf(msg, sizeof(msg),
             "the server on '%s' refused to listen on %s:%d again (%s); asking again in %lld ms",
             c->dest, FWD_ADDR, f->port, e, (long long)f->backoff);
    struct ctl_event ev = {.kind = CTL_EV_RFORWARD, .msg = msg, .fd = -1, .port = f->port};
    emit(c, &ev);
}

/* Choose the next global request when none is in flight. */
static bool gr_next(struct ctl *c, int64_t now)
{
    for (struct rfwd *f = c->fwds; f; f = f->next)
        if (f->state == F_CANCEL) {
            c->gr = GR_CANCEL;
            c->gr_fwd = f;
            c->gr_port = f->port;
            return true;
        }
    for (struct rfwd *f = c->fwds; f; f = f->next)
        if (f->state == F_LISTEN && now >= f->retry_at) {
            c->gr = GR_LISTEN;
            c->gr_fwd = f;
            c->gr_port = f->port ? f->port : f->want ? f->want : fwd_pick_port(c);
            c->rfwd_used = true;
            return true;
        }
    if (c->ka_ms > 0 && now - c->last_rx >= c->ka_ms && now - c->last_ka >= c->ka_ms) {
        ssh_send_keepalive(c->s);
        c->last_ka = now;
        c->gr = GR_KEEPALIVE;
        return true;
    }
    return false;
}

static void gr_step(struct ctl *c, int64_t now)
{
    for (int i = 0; i < 8; i++) {
        int rc;
        if (c->gr == GR_IDLE && !gr_next(c, now))
            return;
        if (c->gr == GR_KEEPALIVE)
            /* ssh_send_keepalive left its request pending in libssh and offers no call that
             * only waits for the answer; this one does while a request is pending (and asks
             * a harmless question of its own if the answer had come already) */
            rc = ssh_channel_cancel_forward(c->s, FWD_ADDR, 0);
        else if (c->gr == GR_LISTEN)
            rc = ssh_channel_listen_forward(c->s, FWD_ADDR, c->gr_port, NULL);
        else
            rc = ssh_channel_cancel_forward(c->s, FWD_ADDR, c->gr_port);
        if (rc == SSH_AGAIN || session_dead(c))
            return;
        enum gr_kind k = c->gr;
        struct rfwd *f = c->gr_fwd;
        c->gr = GR_IDLE;
        c->gr_fwd = NULL;
        c->busy = true;
        if (k == GR_LISTEN && f) {
            listen_done(c, f, rc == SSH_OK, now);
        } else if (k == GR_CANCEL && f) {
            struct req *r = f->del_req;
            fwd_unlink(c, f);
            free(f);
            if (r)
                req_done(c, r, 0, NULL);
        }
    }
}

/* --- requests from other threads ------------------------------------------------------------ */

static void handle_req(struct ctl *c, struct req *r)
{
    if (r->kind == RQ_RFWD_DEL) {
        struct rfwd *f = fwd_by_port(c, r->port);
        if (!f || f->del_req) {
            req_done(c, r, -ENOENT, NULL);
            return;
        }
        if (c->s && f->state == F_ACTIVE) {
            f->state = F_CANCEL;
            f->del_req = r;
        } else if (c->s && c->gr_fwd == f) {
            f->del_req = r; /* its tcpip-forward is in flight: cancelled once it is answered */
        } else {
            fwd_unlink(c, f);
            free(f);
            req_done(c, r, 0, NULL);
        }
        return;
    }
    if (!c->s) {
        req_done(c, r, -ENOTCONN, "not connected to '%s'", c->dest);
        return;
    }
    if (r->kind == RQ_UNIX || r->kind == RQ_TCP) {
        open_start(c, r);
        return;
    }
    /* RQ_RFWD_ADD */
    if (r->port != 0) {
        for (struct rfwd *f = c->fwds; f; f = f->next)
            if (f->port == r->port || f->want == r->port) {
                req_done(c, r, -EADDRINUSE, "port %d of '%s' is already forwarded", r->port,
                         c->dest);
                return;
            }
    }
    struct rfwd *f = calloc(1, sizeof(*f));
    if (!f) {
        req_done(c, r, -ENOMEM, "out of memory");
        return;
    }
    f->want = r->port;
    f->local = r->local;
    f->local_len = r->local_len;
    memcpy(f->local_desc, r->local_desc, sizeof(f->local_desc));
    f->state = F_LISTEN;
    f->add_req = r;
    f->next = c->fwds;
    c->fwds = f;
}

static struct req *take_queue(struct ctl *c)
{
    pthread_mutex_lock(&c->lock);
    struct req *q = c->q_head;
    c->q_head = c->q_tail = NULL;
    pthread_mutex_unlock(&c->lock);
    return q;
}

static void take_requests(struct ctl *c)
{
    struct req *q = take_queue(c);
    while (q) {
        struct req *r = q;
        q = q->next;
        r->next = NULL;
        handle_req(c, r);
    }
}

/* --- the session ---------------------------------------------------------------------------- */

static void session_up(struct ctl *c, ssh_session s)
{
    int64_t now = now_ms();
    c->s = s;
    ssh_set_blocking(s, 0);
    memset(&c->txc, 0, sizeof(c->txc));
    memset(&c->rxc, 0, sizeof(c->rxc));
    ssh_set_counters(s, &c->txc, &c->rxc);
    c->ev = ssh_event_new();
    if (c->ev)
        ssh_event_add_session(c->ev, s);
    c->rx_seen = 0;
    c->last_rx = c->last_ka = now;
    c->gr = GR_IDLE;
    c->gr_fwd = NULL;
    c->rfwd_used = false;
    c->busy = true;
    for (struct rfwd *f = c->fwds; f; f = f->next) {
        f->state = F_LISTEN;
        f->retry_at = 0;
        f->backoff = 0;
    }
    pthread_mutex_lock(&c->lock);
    c->connected = true;
    c->st.connected = true;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    exec_start(c);
}

static void session_free(struct ctl *c)
{
    if (c->ev) {
        ssh_event_remove_session(c->ev, c->s);
        ssh_event_free(c->ev);
        c->ev = NULL;
    }
    ssh_disconnect(c->s);
    ssh_free(c->s);
    c->s = NULL;
    c->gr = GR_IDLE;
    c->gr_fwd = NULL;
}

/* End every bridge: callers waiting get rc, the exec channel is reported with why. */
static void bridges_end(struct ctl *c, int rc, const char *why)
{
    char what[600];
    while (c->bridges) {
        struct bridge *b = c->bridges;
        c->bridges = b->next;
        if (b->req) {
            struct req *r = b->req;
            b->req = NULL;
            req_done(c, r, rc, "cannot open '%s' on '%s': %s", bridge_what(b, what, sizeof(what)),
                     c->dest, why);
        }
        if (b->kind == B_EXEC && why)
            exec_ended(c, b, why);
        bridge_free(b);
    }
    c->exec = NULL;
}

/* The connection is gone: report it, end its channels, keep the forwards for the next one. */
static void lose(struct ctl *c, const char *reason)
{
    char msg[600];
    snprintf(msg, sizeof(msg), "connection to '%s' lost: %s", c->dest, reason);
    pthread_mutex_lock(&c->lock);
    c->connected = false;
    c->st.connected = false;
    pthread_mutex_unlock(&c->lock);
    emit_simple(c, CTL_EV_LOST, msg);
    bridges_end(c, -ECONNRESET, "connection lost");
    struct rfwd **pp = &c->fwds;
    while (*pp) {
        struct rfwd *f = *pp;
        struct req *add = f->add_req, *del = f->del_req;
        if (f->port == 0 || del) {
            *pp = f->next;
            free(f);
            if (add)
                req_done(c, add, -ECONNRESET, "cannot forward a port of '%s': %s", c->dest, msg);
            if (del)
                req_done(c, del, 0, NULL);
            continue;
        }
        f->state = F_LISTEN;
        pp = &f->next;
    }
    session_free(c);
    take_requests(c); /* fail what came meanwhile */
}

static void build_poll(struct ctl *c, size_t *npf)
{
    size_t need = 2;
    for (struct bridge *b = c->bridges; b; b = b->next)
        need++;
    if (need > c->pf_cap) {
        struct pollfd *p = realloc(c->pf, need * 2 * sizeof(*p));
        if (p) {
            c->pf = p;
            c->pf_cap = need * 2;
        }
    }
    size_t n = 0;
    if (c->pf_cap < 2) { /* out of memory: poll nothing, sleep, try again */
        *npf = 0;
        c->busy = false;
        return;
    }
    c->pf[n++] = (struct pollfd){.fd = c->wake_fd, .events = POLLIN};
    c->pf[n++] = (struct pollfd){
        .fd = ssh_get_fd(c->s),
        .events = POLLIN | ((ssh_get_poll_flags(c->s) & SSH_WRITE_PENDING) ? POLLOUT : 0)};
    for (struct bridge *b = c->bridges; b; b = b->next) {
        short ev = 0;
        b->pfi = -1;
        if (n >= c->pf_cap)
            continue; /* out of memory: served when busy */
        if (b->state == BS_CONNECTING)
            ev = POLLOUT;
        if (b->state == BS_OPEN) {
            if (!b->sock_eof && b->up_len == 0 && !b->remote_closed &&
                ssh_channel_window_size(b->ch) > 0)
                ev |= POLLIN;
            if (b->down_off < b->down_len)
                ev |= POLLOUT;
        }
        if (!ev)
            continue;
        b->pfi = (int)n;
        c->pf[n++] = (struct pollfd){.fd = b->sock, .events = ev};
    }
    *npf = n;
}

static int poll_timeout(struct ctl *c)
{
    if (c->busy)
        return 0;
    int t = 1000;
    if (c->ka_ms > 0 && c->ka_ms / 2 < t)
        t = c->ka_ms / 2;
    return t;
}

static void flush_stats(struct ctl *c)
{
    unsigned nb = 0, nf = 0;
    for (struct bridge *b = c->bridges; b; b = b->next)
        nb += b->state == BS_OPEN || b->state == BS_CONNECTING;
    for (struct rfwd *f = c->fwds; f; f = f->next)
        nf++;
    pthread_mutex_lock(&c->lock);
    c->st.bytes_up += c->up_acc;
    c->st.bytes_down += c->down_acc;
    if (c->up_acc || c->down_acc)
        c->last_activity = now_ms();
    c->st.channels_open = nb;
    c->st.rforwards = nf;
    pthread_mutex_unlock(&c->lock);
    c->up_acc = c->down_acc = 0;
}

/* One turn of the loop while connected. */
static void iterate(struct ctl *c)
{
    size_t npf;
    char why[300];

    build_poll(c, &npf);
    int pr = poll(c->pf, npf, poll_timeout(c));
    if (pr > 0 && (c->pf[0].revents & POLLIN)) {
        uint64_t v;
        ssize_t rr = read(c->wake_fd, &v, sizeof(v));
        (void)rr;
    }
    c->busy = false;

    /* libssh reads and writes the connection */
    if (!c->ev) {
        lose(c, "out of resources");
        return;
    }
    /* SSH_ERROR alone may be an interrupted poll: the session's state decides */
    for (int i = 0; i < DOPOLL_ROUNDS && ssh_event_dopoll(c->ev, 0) == SSH_OK; i++)
        ;
    if (session_dead(c)) {
        snprintf(why, sizeof(why), "%s", ssh_get_error(c->s));
        lose(c, why[0] ? why : "connection closed");
        return;
    }
    uint64_t rx0 = c->rxc.in_packets;
    int64_t now = now_ms();

    take_requests(c);
    gr_step(c, now);
    accept_forwards(c);
    for (struct bridge *b = c->bridges; b; b = b->next) {
        short rev = b->pfi >= 0 ? c->pf[b->pfi].revents : 0;
        if (b->state == BS_OPENING || b->state == BS_EXEC_REQ)
            bridge_opening(c, b, now);
        else if (b->state == BS_CONNECTING)
            bridge_connecting(b, rev);
        if (b->state == BS_OPEN)
            bridge_pump(c, b, rev);
        if (b->failed)
            b->state = BS_DONE;
    }
    for (struct bridge **pp = &c->bridges; *pp;) {
        struct bridge *b = *pp;
        if (b->state != BS_DONE) {
            pp = &b->next;
            continue;
        }
        *pp = b->next;
        if (b == c->exec)
            exec_ended(c, b, b->failed ? "the local side closed" : NULL);
        bridge_free(b);
    }
    if (session_dead(c)) {
        snprintf(why, sizeof(why), "%s", ssh_get_error(c->s));
        lose(c, why[0] ? why : "connection closed");
        return;
    }
    /* liveness: any packet from the server counts */
    if (c->rxc.in_packets != c->rx_seen) {
        c->rx_seen = c->rxc.in_packets;
        c->last_rx = now;
    }
    if (c->ka_ms > 0 && now - c->last_rx >= (int64_t)c->ka_ms * c->ka_max) {
        snprintf(why, sizeof(why), "no answer for %lld s (keepalive)",
                 (long long)(now - c->last_rx) / 1000);
        flush_stats(c);
        lose(c, why);
        return;
    }
    if (c->rxc.in_packets != rx0)
        c->busy = true; /* packets read by calls after dopoll may hold data for a bridge */
    flush_stats(c);
}

static bool is_stopping(struct ctl *c)
{
    pthread_mutex_lock(&c->lock);
    bool s = c->stopping;
    pthread_mutex_unlock(&c->lock);
    return s;
}

/* Disconnected: sleep until timeout_ms passed or a call came, failing calls. */
static void idle_wait(struct ctl *c, int timeout_ms)
{
    struct pollfd pf = {.fd = c->wake_fd, .events = POLLIN};
    if (poll(&pf, 1, timeout_ms) > 0) {
        uint64_t v;
        ssize_t rr = read(c->wake_fd, &v, sizeof(v));
        (void)rr;
    }
    take_requests(c);
}

static void *owner_main(void *arg)
{
    struct ctl *c = arg;
    int64_t next_try = 0, backoff = c->bo_min;
    char err[1024];

    session_up(c, c->s0);
    c->s0 = NULL;
    emit_simple(c, CTL_EV_CONNECTED, NULL);
    while (!is_stopping(c)) {
        if (c->s) {
            iterate(c);
            if (!c->s) {
                next_try = now_ms(); /* the first attempt at once, then with backoff */
                backoff = c->bo_min;
            }
            continue;
        }
        pthread_mutex_lock(&c->lock);
        bool gave_up = c->gave_up;
        pthread_mutex_unlock(&c->lock);
        int64_t now = now_ms();
        if (gave_up || now < next_try) {
            idle_wait(c, gave_up ? 1000 : (int)(next_try - now));
            continue;
        }
        ssh_session s = NULL;
        int r = tun_ssh_connect(&c->o.ssh, &s, err, sizeof(err));
        if (r == 0) {
            pthread_mutex_lock(&c->lock);
            c->st.reconnects++;
            pthread_mutex_unlock(&c->lock);
            session_up(c, s);
            emit_simple(c, CTL_EV_RECONNECTED, NULL);
            continue;
        }
        if (r == -ENOKEY || r == -EKEYREJECTED) {
            pthread_mutex_lock(&c->lock);
            c->gave_up = true;
            c->st.gave_up = true;
            pthread_cond_broadcast(&c->cond);
            pthread_mutex_unlock(&c->lock);
            if (c->o.status)
                emit_simple(c, CTL_EV_GAVE_UP, err);
            else
                fprintf(stderr, "offload: giving up on '%s': %s\n", c->dest, err);
            continue;
        }
        struct ctl_event ev = {
            .kind = CTL_EV_RETRY, .msg = err, .fd = -1, .delay_ms = (int)backoff};
        emit(c, &ev);
        next_try = now_ms() + backoff;
        backoff = backoff * 2 > c->bo_max ? c->bo_max : backoff * 2;
    }

    /* stopping */
    bridges_end(c, -ECANCELED, NULL);
    while (c->fwds) {
        struct rfwd *f = c->fwds;
        c->fwds = f->next;
        if (f->add_req)
            req_done(c, f->add_req, -ECANCELED, "the tunnel to '%s' is stopping", c->dest);
        if (f->del_req)
            req_done(c, f->del_req, 0, NULL);
        free(f);
    }
    if (c->s)
        session_free(c);
    for (struct req *q = take_queue(c); q;) {
        struct req *r = q;
        q = q->next;
        req_done(c, r, -ECANCELED, "the tunnel to '%s' is stopping", c->dest);
    }
    pthread_mutex_lock(&c->lock);
    c->connected = false;
    c->st.connected = false;
    if (c->exec_fd >= 0)
        close(c->exec_fd);
    c->exec_fd = -1;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* --- the public calls ------------------------------------------------------------------------- */

static void ctl_free(struct ctl *c)
{
    if (c->wake_fd >= 0)
        close(c->wake_fd);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    free(c->pf);
    free(c->dest);
    free(c->config);
    free(c->identity);
    free(c->cmd);
    free(c);
}

static char *dup_or_null(const char *s, bool *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = true;
    return d;
}

int ctl_start(const struct ctl_opts *o, ctl_t **out, char *err, size_t errlen)
{
    bool oom = false;
    ssh_session s = NULL;
    int r;

    *out = NULL;
    if (!o->ssh.dest || !*o->ssh.dest)
        return fail(err, errlen, -EINVAL, "no destination");
    struct ctl *c = calloc(1, sizeof(*c));
    if (!c)
        return fail(err, errlen, -ENOMEM, "out of memory");
    c->wake_fd = -1;
    c->exec_fd = -1;
    pthread_mutex_init(&c->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);
    c->o = *o;
    c->dest = dup_or_null(o->ssh.dest, &oom);
    c->config = dup_or_null(o->ssh.ssh_config, &oom);
    c->identity = dup_or_null(o->ssh.identity, &oom);
    c->cmd = o->exec_cmd && *o->exec_cmd ? dup_or_null(o->exec_cmd, &oom) : NULL;
    c->o.ssh.dest = c->dest;
    c->o.ssh.ssh_config = c->config;
    c->o.ssh.identity = c->identity;
    c->o.exec_cmd = c->cmd;
    c->ka_ms = o->keepalive_s < 0 ? 0 : (o->keepalive_s ? o->keepalive_s : 15) * 1000;
    c->ka_max = o->keepalive_max > 0 ? o->keepalive_max : 3;
    c->bo_min = o->backoff_min_ms > 0 ? o->backoff_min_ms : 1000;
    c->bo_max = o->backoff_max_ms > 0 ? o->backoff_max_ms : 30000;
    if (c->bo_max < c->bo_min)
        c->bo_max = c->bo_min;
    c->rng = (uint64_t)now_ms() * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid() << 32 ^
             (uint64_t)(uintptr_t)c;
    if (c->rng == 0)
        c->rng = 1;
    c->last_activity = now_ms();
    c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (oom || c->wake_fd < 0) {
        r = fail(err, errlen, -ENOMEM, "out of resources");
        goto out;
    }
    if ((r = tun_ssh_connect(&c->o.ssh, &s, err, errlen)) != 0)
        goto out;
    /* the session goes to the owner thread, which owns it from here on; connected already,
     * so that calls made as soon as this returns are taken */
    c->s0 = s;
    c->connected = c->st.connected = true;
    if (pthread_create(&c->thread, NULL, owner_main, c) != 0) {
        r = fail(err, errlen, -EAGAIN, "cannot start the tunnel thread");
        goto out;
    }
    *out = c;
    return 0;
out:
    if (s) {
        ssh_disconnect(s);
        ssh_free(s);
    }
    ctl_free(c);
    return r;
}

/* Queue r for the owner thread and wait until it is done. */
static int submit(struct ctl *c, struct req *r)
{
    if (pthread_equal(pthread_self(), c->thread))
        return fail(r->err, r->errlen, -EDEADLK,
                    "the tunnel's own thread cannot wait for the tunnel");
    r->done = false;
    r->next = NULL;
    pthread_mutex_lock(&c->lock);
    if (c->stopping) {
        pthread_mutex_unlock(&c->lock);
        return fail(r->err, r->errlen, -ECANCELED, "the tunnel to '%s' is stopping", c->dest);
    }
    if (!c->connected && r->kind != RQ_RFWD_DEL) {
        bool gave_up = c->gave_up;
        pthread_mutex_unlock(&c->lock);
        return fail(r->err, r->errlen, -ENOTCONN, "not connected to '%s' (%s)", c->dest,
                    gave_up ? "gave up" : "reconnecting");
    }
    if (c->q_tail)
        c->q_tail->next = r;
    else
        c->q_head = r;
    c->q_tail = r;
    wake(c);
    while (!r->done)
        pthread_cond_wait(&c->cond, &c->lock);
    pthread_mutex_unlock(&c->lock);
    return r->rc;
}

int ctl_open_unix(ctl_t *c, const char *remote_path, int *fd, char *err, size_t errlen)
{
    struct req r = {.kind = RQ_UNIX, .target = remote_path, .fd = -1, .err = err, .errlen = errlen};
    *fd = -1;
    if (!remote_path || !*remote_path)
        return fail(err, errlen, -EINVAL, "no remote socket path");
    int rc = submit(c, &r);
    if (rc == 0)
        *fd = r.fd;
    return rc;
}

int ctl_open_tcp(ctl_t *c, const char *host, int port, int *fd, char *err, size_t errlen)
{
    struct req r = {
        .kind = RQ_TCP, .target = host, .port = port, .fd = -1, .err = err, .errlen = errlen};
    *fd = -1;
    if (!host || !*host || port <= 0 || port > 65535)
        return fail(err, errlen, -EINVAL, "bad remote address '%s:%d'", host ? host : "", port);
    int rc = submit(c, &r);
    if (rc == 0)
        *fd = r.fd;
    return rc;
}

int ctl_add_rforward(ctl_t *c, int remote_port, const char *local_host, int local_port,
                     int *bound_port, char *err, size_t errlen)
{
    struct req r = {
        .kind = RQ_RFWD_ADD, .port = remote_port, .fd = -1, .err = err, .errlen = errlen};
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai;
    char serv[16];

    *bound_port = 0;
    if (remote_port < 0 || remote_port > 65535)
        return fail(err, errlen, -EINVAL, "bad remote port %d", remote_port);
    if (!local_host || local_port <= 0 || local_port > 65535)
        return fail(err, errlen, -EINVAL, "bad local address '%s:%d'", local_host ? local_host : "",
                    local_port);
    snprintf(serv, sizeof(serv), "%d", local_port);
    int g = getaddrinfo(local_host, serv, &hints, &ai);
    if (g != 0)
        return fail(err, errlen, -EINVAL, "cannot resolve '%s': %s", local_host, gai_strerror(g));
    memcpy(&r.local, ai->ai_addr, ai->ai_addrlen);
    r.local_len = ai->ai_addrlen;
    freeaddrinfo(ai);
    snprintf(r.local_desc, sizeof(r.local_desc), "%s:%d", local_host, local_port);
    int rc = submit(c, &r);
    if (rc == 0)
        *bound_port = r.bound;
    return rc;
}

int ctl_remove_rforward(ctl_t *c, int bound_port)
{
    struct req r = {.kind = RQ_RFWD_DEL, .port = bound_port, .fd = -1};
    if (bound_port <= 0 || bound_port > 65535)
        return -ENOENT;
    return submit(c, &r);
}

int ctl_exec_fd(ctl_t *c, unsigned after, int timeout_ms, unsigned *gen)
{
    struct timespec until;
    int fd;

    if (!c->cmd)
        return -EINVAL;
    if (pthread_equal(pthread_self(), c->thread))
        timeout_ms = 0;
    if (timeout_ms > 0) {
        until = deadline_ms(CLOCK_MONOTONIC, timeout_ms);
    }
    pthread_mutex_lock(&c->lock);
    while (c->exec_fd < 0 || c->exec_gen <= after) {
        int w = 0;
        if (c->stopping || c->gave_up) {
            pthread_mutex_unlock(&c->lock);
            return -EPIPE;
        }
        if (c->exec_done_gen > after) { /* that generation came and went */
            pthread_mutex_unlock(&c->lock);
            return -ECHILD;
        }
        if (timeout_ms == 0)
            w = ETIMEDOUT;
        else if (timeout_ms < 0)
            pthread_cond_wait(&c->cond, &c->lock);
        else
            w = pthread_cond_timedwait(&c->cond, &c->lock, &until);
        if (w == ETIMEDOUT) {
            pthread_mutex_unlock(&c->lock);
            return -ETIMEDOUT;
        }
    }
    fd = fcntl(c->exec_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        fd = -errno;
    else if (gen)
        *gen = c->exec_gen;
    pthread_mutex_unlock(&c->lock);
    return fd;
}

size_t ctl_exec_stderr(ctl_t *c, char *buf, size_t len)
{
    if (len == 0)
        return 0;
    pthread_mutex_lock(&c->lock);
    size_t n = c->tail_len < len - 1 ? c->tail_len : len - 1;
    memcpy(buf, c->tail + c->tail_len - n, n);
    pthread_mutex_unlock(&c->lock);
    buf[n] = '\0';
    return n;
}

void ctl_stats(ctl_t *c, struct ctl_stats *st)
{
    pthread_mutex_lock(&c->lock);
    *st = c->st;
    int64_t idle = now_ms() - c->last_activity;
    pthread_mutex_unlock(&c->lock);
    st->idle_ms = idle > 0 ? (uint64_t)idle : 0;
}

void ctl_stop(ctl_t *c)
{
    if (!c)
        return;
    assert(!pthread_equal(pthread_self(), c->thread));
    pthread_mutex_lock(&c->lock);
    c->stopping = true;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    wake(c);
    pthread_join(c->thread, NULL);
    ctl_free(c);
}
