/*
 * wanrelay: emulate a WAN link between two TCP endpoints on one machine.
 *
 *   wanrelay --listen ADDR:PORT --connect ADDR:PORT --delay-ms D [--rate MBIT]
 *            [--max-buffer BYTES] [--stats FILE] [--quiet]
 *
 * This kernel has no netem, so latency is added in user space. For every connection accepted on
 * --listen the relay opens one to --connect and forwards both directions, holding each chunk it
 * reads for D ms before writing it on: a request/response round trip costs 2 x D. The TCP
 * handshake itself is not delayed (the kernel completes it before the relay sees the client).
 *
 * The link has two directions, up (client to server) and down (server to client), each shared by
 * every connection. With --rate, each direction is a serial line of MBIT megabit/s: a chunk read
 * at time t starts sending when the line has finished the chunks before it (of any connection),
 * takes len * 8 / rate to send, then travels D ms. That is a token bucket one chunk deep, so the
 * cap holds over any interval, never exceeded by a burst.
 *
 * Memory is bounded per connection: when one direction holds --max-buffer bytes (default 4 MiB)
 * read but not yet written, the relay stops reading that side, and TCP's own flow control pushes
 * back on the sender. Half-closes travel like data: a FIN read from one side is forwarded with
 * shutdown(SHUT_WR) after the data queued before it, D ms later; a reset is forwarded as a reset.
 *
 * Counters: bytes delivered up and down (bytes up = client to server), connections accepted and
 * open, and the largest queue any direction held. They are written as one JSON object to
 * --stats FILE on SIGUSR1 and at exit, and printed on stderr at exit unless --quiet. SIGINT and
 * SIGTERM exit cleanly (status 0). PORT 0 picks a free port; the start line on stderr (not with
 * --quiet) names it: "wanrelay: listening on 127.0.0.1:41234, ...".
 *
 * Hidden modes, for the relay's test and the benchmarks (tests/integration/wanrelay.sh):
 *
 *   wanrelay --echo-server ADDR:PORT
 *       echo every byte back; a FIN is answered with a FIN once all is echoed. Prints
 *       "wanrelay: echo server listening on ADDR:PORT" on stderr.
 *   wanrelay --ping ADDR:PORT [--count N] [--parallel P] [--size BYTES] [--timeout S]
 *       open P connections (default 1) and do N rounds (default 10); each round sends SIZE bytes
 *       (default 64) on every connection at once and waits for each echo, checking it byte for
 *       byte. Prints "exchanges=.. min_ms=.. median_ms=.. max_ms=.. elapsed_ms=..".
 *   wanrelay --send ADDR:PORT --bytes N [--parallel P] [--timeout S]
 *       stream N bytes on each of P connections, half-close, and read the echo up to EOF,
 *       checking it. Prints "bytes=.. seconds=.. mbit_s=.." (bytes one way, all connections).
 *
 * Exit status: 0 on success, 1 on an error, 2 on a usage error.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, signalfd; the build also passes -D_GNU_SOURCE */
#endif
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_MAX          (64u << 10) /* largest read, and the echo server's buffer */
#define CHUNK_MIN          1460u       /* smallest read size chosen for a slow --rate */
#define DEFAULT_MAX_BUFFER (4u << 20)
#define READS_PER_EVENT    16 /* then let other connections run; epoll is level-triggered */
#define ACCEPTS_PER_EVENT  64
#define MAX_EVENTS         256
#define NS_PER_MS          1000000ull
#define NS_PER_S           1000000000ull
#define PATTERN_LEN        65521u /* prime, so the test pattern never lines up with a chunk */

static const char *prog = "wanrelay";

/* --- small helpers ------------------------------------------------------------------------- */

/* strerror(e) with a lower-case first letter, git-style. Not reentrant. */
static const char *errstr(int e)
{
    static char buf[128];

    snprintf(buf, sizeof(buf), "%s", strerror(e));
    buf[0] = (char)tolower((unsigned char)buf[0]);
    return buf;
}

static void warn(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

_Noreturn static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s --listen ADDR:PORT --connect ADDR:PORT --delay-ms D [--rate MBIT]\n"
            "                [--max-buffer BYTES] [--stats FILE] [--quiet]\n",
            prog);
}

_Noreturn static void usage_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    usage(stderr);
    exit(2);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);

    if (!p)
        die("out of memory");
    return p;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* A whole non-negative number with an optional binary suffix (K, M, G; "KiB" and "k" too). */
static int parse_bytes(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    int shift = 0;

    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno)
        return -EINVAL;
    switch (*end) {
    case 'k':
    case 'K':
        shift = 10;
        end++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        end++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        end++;
        break;
    default:
        break;
    }
    if (shift && strcmp(end, "iB") == 0)
        end += 2;
    if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
        return -EINVAL;
    *out = (uint64_t)v << shift;
    return 0;
}

static double parse_number(const char *opt, const char *s, double min, double max)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v >= min && v <= max))
        usage_error("invalid %s '%s'", opt, s);
    return v;
}

/* Resolves "HOST:PORT" or "[V6]:PORT" (the last colon splits) into *ai; 0 or an error message. */
static const char *resolve(const char *spec, struct addrinfo **ai)
{
    static char msg[160];
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    char host[256];
    const char *colon = strrchr(spec, ':');
    size_t hlen;
    int r;

    if (!colon || colon == spec || colon[1] == '\0')
        return "expected ADDR:PORT";
    hlen = (size_t)(colon - spec);
    if (spec[0] == '[' && hlen >= 2 && spec[hlen - 1] == ']') {
        spec++;
        hlen -= 2;
    }
    if (hlen >= sizeof(host))
        return "host name too long";
    memcpy(host, spec, hlen);
    host[hlen] = '\0';
    r = getaddrinfo(host, colon + 1, &hints, ai);
    if (r != 0) {
        snprintf(msg, sizeof(msg), "%s", r == EAI_SYSTEM ? errstr(errno) : gai_strerror(r));
        msg[0] = (char)tolower((unsigned char)msg[0]);
        return msg;
    }
    return NULL;
}

/* "ADDR:PORT" of a socket's local end, "[V6]:PORT" for IPv6. */
static void local_name(int fd, char *out, size_t outsz)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[NI_MAXHOST], port[NI_MAXSERV];

    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0 ||
        getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), port, sizeof(port),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(out, outsz, "?");
        return;
    }
    snprintf(out, outsz, ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

/* Listens on spec (non-blocking, close-on-exec) or dies git-style. Names the bound address. */
static int listen_on(const char *spec, char *name, size_t namesz)
{
    struct addrinfo *ai;
    const char *err = resolve(spec, &ai);
    int fd, one = 1, e;

    if (err)
        die("cannot listen on '%s': %s", spec, err);
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        e = errno;
        freeaddrinfo(ai);
        die("cannot listen on '%s': %s", spec, errstr(e));
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        e = errno;
        freeaddrinfo(ai);
        close(fd);
        die("cannot listen on '%s': %s", spec, e == EADDRINUSE ? "address in use" : errstr(e));
    }
    freeaddrinfo(ai);
    local_name(fd, name, namesz);
    return fd;
}

/* A signalfd for SIGINT and SIGTERM (and SIGUSR1 if usr1), which are blocked; SIGPIPE ignored. */
static int signals_fd(bool usr1)
{
    sigset_t set;
    int fd;

    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    if (usr1)
        sigaddset(&set, SIGUSR1);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        die("cannot block signals: %s", errstr(errno));
    fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        die("cannot create signalfd: %s", errstr(errno));
    return fd;
}

static void epoll_add(int epfd, int fd, uint32_t events, void *ptr)
{
    struct epoll_event ev = {.events = events, .data.ptr = ptr};

    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        die("cannot watch descriptor %d: %s", fd, errstr(errno));
}

static void set_nodelay(int fd)
{
    int one = 1;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Many connections need many descriptors: raise the soft limit to the hard one. */
static void raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* --- the relay ------------------------------------------------------------------------------ */

enum side { CLIENT, SERVER };
enum chunk_kind { CH_DATA, CH_FIN, CH_RST };
enum tag_kind { TAG_LISTEN, TAG_TIMER, TAG_SIGNAL, TAG_SIDE };

struct conn;
struct half;

/* What an epoll event points at. */
struct tag {
    enum tag_kind kind;
    struct conn *conn; /* TAG_SIDE */
    enum side side;    /* TAG_SIDE */
};

/*
 * Bytes read from one side, waiting out the link before they are written to the other. A chunk
 * is on its half's queue until written, and on its link's release list until released.
 */
struct chunk {
    struct chunk *next;          /* in half->head queue */
    struct chunk *lprev, *lnext; /* in link->head list, while !released */
    struct half *half;
    uint64_t release_ns; /* CLOCK_MONOTONIC time from which it may be written */
    uint32_t len, off;   /* data[off, len) is still to write */
    uint8_t kind;        /* enum chunk_kind; FIN and RST carry no data and end the queue */
    bool released;
    unsigned char data[];
};

/*
 * One direction of the emulated link, shared by every connection. Release times on it never
 * decrease (read time + serialization on a line that only moves forward + a fixed delay), so
 * the release list is a FIFO and its head is the next expiry.
 */
struct link {
    uint64_t free_ns;          /* when the line has sent everything given to it (--rate) */
    uint64_t bytes;            /* data bytes delivered to the far side */
    struct chunk *head, *tail; /* not yet released, in release order */
};

/* One direction of one connection: read from conn->fd[src], written to conn->fd[dst]. */
struct half {
    struct conn *conn;
    struct link *link;
    enum side src, dst;
    struct chunk *head, *tail; /* read, not yet written, in order */
    size_t queued;             /* data bytes on the queue */
    bool eof;                  /* nothing more is read from src (FIN, reset, or aborted) */
    bool blocked;              /* dst would block: the queue waits for EPOLLOUT */
    bool done;                 /* the final FIN was delivered, or the direction was aborted */
};

struct relay;

struct conn {
    struct relay *relay;
    struct conn *prev, *next; /* relay->conns, or relay->dead once closed */
    int fd[2];                /* by enum side; -1 once closed */
    uint32_t mask[2];         /* epoll interest; 0 = not registered */
    struct tag tag[2];
    struct half up, down; /* up: CLIENT -> SERVER, down: SERVER -> CLIENT */
    bool connecting;      /* the connect to the server is in progress */
    bool dead;
};

struct relay {
    int epfd, lfd, tfd, sigfd;
    struct addrinfo *target; /* --connect, resolved once */
    const char *listen_spec, *connect_spec, *stats_path;
    char listen_name[80];
    uint64_t delay_ns;
    double rate_bps; /* bits per second each way; 0 = no cap */
    uint64_t max_buffer;
    size_t read_size;
    bool quiet, stop, accept_paused;
    struct link up, down;
    struct conn *conns, *dead;
    uint64_t accepted, open, queue_peak;
    uint64_t timer_at; /* absolute expiry armed on tfd; 0 = disarmed */
    struct tag tag_listen, tag_timer, tag_signal;
    unsigned char scratch[CHUNK_MAX];
};

static struct half *half_from(struct conn *c, enum side s)
{
    return s == CLIENT ? &c->up : &c->down;
}

static struct half *half_into(struct conn *c, enum side s)
{
    return s == CLIENT ? &c->down : &c->up;
}

static void link_unlink(struct link *l, struct chunk *ch)
{
    if (ch->lprev)
        ch->lprev->lnext = ch->lnext;
    else
        l->head = ch->lnext;
    if (ch->lnext)
        ch->lnext->lprev = ch->lprev;
    else
        l->tail = ch->lprev;
    ch->lprev = ch->lnext = NULL;
}

/* Takes the head chunk off h's queue and frees it. */
static void half_pop(struct half *h)
{
    struct chunk *ch = h->head;

    h->head = ch->next;
    if (!h->head)
        h->tail = NULL;
    if (!ch->released)
        link_unlink(h->link, ch);
    h->queued -= ch->len - ch->off;
    free(ch);
}

static void half_clear(struct half *h)
{
    while (h->head)
        half_pop(h);
    h->blocked = false;
}

/* Gives up on a direction whose far side is gone: what is queued is lost, nothing more is read. */
static void half_abort(struct half *h)
{
    half_clear(h);
    h->eof = true;
    h->done = true;
}

static void half_enqueue(struct half *h, enum chunk_kind kind, const void *data, size_t len)
{
    struct relay *r = h->conn->relay;
    struct link *l = h->link;
    struct chunk *ch = malloc(sizeof(*ch) + len);
    uint64_t depart = now_ns();

    if (!ch)
        die("out of memory");
    memset(ch, 0, sizeof(*ch));
    if (len)
        memcpy(ch->data, data, len);
    ch->half = h;
    ch->len = (uint32_t)len;
    ch->kind = (uint8_t)kind;
    if (r->rate_bps > 0) {
        if (l->free_ns > depart)
            depart = l->free_ns;
        /* Rounded up, so rounding can only make the line slower than --rate, never faster. */
        depart += (uint64_t)((double)len * 8 * NS_PER_S / r->rate_bps) + 1;
        l->free_ns = depart;
    }
    ch->release_ns = depart + r->delay_ns;
    if (h->tail)
        h->tail->next = ch;
    else
        h->head = ch;
    h->tail = ch;
    h->queued += len;
    if (h->queued > r->queue_peak)
        r->queue_peak = h->queued;
    ch->lprev = l->tail;
    if (l->tail)
        l->tail->lnext = ch;
    else
        l->head = ch;
    l->tail = ch;
}

/* Closes both sockets (with a reset if rst) and retires c; it is freed after this batch. */
static void conn_kill(struct conn *c, bool rst)
{
    struct relay *r = c->relay;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};

    for (int s = CLIENT; s <= SERVER; s++) {
        if (c->fd[s] < 0)
            continue;
        if (rst)
            setsockopt(c->fd[s], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(c->fd[s]);
        c->fd[s] = -1;
    }
    half_clear(&c->up);
    half_clear(&c->down);
    c->dead = true;
    if (c->prev)
        c->prev->next = c->next;
    else
        r->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = NULL;
    c->next = r->dead;
    r->dead = c;
    r->open--;
    if (r->accept_paused) {
        r->accept_paused = false;
        epoll_add(r->epfd, r->lfd, EPOLLIN, &r->tag_listen);
    }
}

/* Writes the released head of h's queue to its destination until it would block. */
static void half_flush(struct half *h)
{
    struct conn *c = h->conn;
    int fd = c->fd[h->dst];
    struct chunk *ch;
    ssize_t w;

    if (c->dead || fd < 0 || (h->dst == SERVER && c->connecting))
        return;
    h->blocked = false;
    while ((ch = h->head) && ch->released) {
        if (ch->kind == CH_RST) {
            conn_kill(c, true);
            return;
        }
        if (ch->kind == CH_FIN) {
            shutdown(fd, SHUT_WR); /* ENOTCONN if the peer is gone: nothing to forward to */
            half_pop(h);
            h->done = true;
            return;
        }
        w = send(fd, ch->data + ch->off, ch->len - ch->off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                h->blocked = true;
                return;
            }
            half_abort(h);
            return;
        }
        ch->off += (uint32_t)w;
        h->queued -= (size_t)w;
        h->link->bytes += (uint64_t)w;
        if (ch->off == ch->len)
            half_pop(h);
    }
}

/* Reads from h's source while its queue has room; a FIN or an error ends the direction. */
static void half_read(struct half *h)
{
    struct conn *c = h->conn;
    struct relay *r = c->relay;
    int fd = c->fd[h->src];
    ssize_t n;

    for (int i = 0; i < READS_PER_EVENT && fd >= 0 && !h->eof && h->queued < r->max_buffer; i++) {
        size_t room = r->max_buffer - h->queued;

        n = recv(fd, r->scratch, room < r->read_size ? room : r->read_size, 0);
        if (n > 0) {
            half_enqueue(h, CH_DATA, r->scratch, (size_t)n);
        } else if (n == 0) {
            half_enqueue(h, CH_FIN, NULL, 0);
            h->eof = true;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;
        } else {
            half_enqueue(h, CH_RST, NULL, 0);
            h->eof = true;
        }
    }
}

/*
 * After anything happened to c: closes a socket both of whose directions are over, retires the
 * connection when both are, and sets each socket's epoll interest. A socket with nothing to wait
 * for is taken out of epoll, which would otherwise keep reporting its hangup.
 */
static void conn_update(struct conn *c)
{
    struct relay *r = c->relay;

    if (c->dead)
        return;
    if (c->up.done && c->down.done) {
        conn_kill(c, false);
        return;
    }
    for (int s = CLIENT; s <= SERVER; s++) {
        struct half *from = half_from(c, s), *into = half_into(c, s);
        uint32_t want = 0;
        struct epoll_event ev;

        if (c->fd[s] < 0)
            continue;
        if (from->eof && into->done) {
            close(c->fd[s]); /* also leaves the epoll set */
            c->fd[s] = -1;
            c->mask[s] = 0;
            continue;
        }
        if (s == SERVER && c->connecting) {
            want = EPOLLOUT;
        } else {
            if (!from->eof && from->queued < r->max_buffer)
                want |= EPOLLIN;
            if (into->blocked)
                want |= EPOLLOUT;
        }
        if (want == c->mask[s])
            continue;
        ev.events = want;
        ev.data.ptr = &c->tag[s];
        if (want == 0)
            epoll_ctl(r->epfd, EPOLL_CTL_DEL, c->fd[s], NULL);
        else if (epoll_ctl(r->epfd, c->mask[s] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd[s], &ev))
            die("cannot watch a connection: %s", errstr(errno));
        c->mask[s] = want;
    }
}

static void half_init(struct half *h, struct conn *c, struct link *l, enum side src)
{
    h->conn = c;
    h->link = l;
    h->src = src;
    h->dst = src == CLIENT ? SERVER : CLIENT;
}

static void on_accept(struct relay *r)
{
    for (int i = 0; i < ACCEPTS_PER_EVENT; i++) {
        const struct addrinfo *t = r->target;
        struct conn *c;
        int cfd, sfd;

        cfd = accept4(r->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: wait for a connection to close, warn once per stall. */
                warn("cannot accept on '%s': %s", r->listen_name, errstr(errno));
                epoll_ctl(r->epfd, EPOLL_CTL_DEL, r->lfd, NULL);
                r->accept_paused = true;
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                       errno != ECONNABORTED) {
                warn("cannot accept on '%s': %s", r->listen_name, errstr(errno));
            }
            return;
        }
        sfd = socket(t->ai_family, t->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, t->ai_protocol);
        if (sfd < 0) {
            warn("cannot connect to '%s': %s", r->connect_spec, errstr(errno));
            close(cfd);
            continue;
        }
        set_nodelay(cfd);
        set_nodelay(sfd);
        c = xcalloc(1, sizeof(*c));
        c->relay = r;
        c->fd[CLIENT] = cfd;
        c->fd[SERVER] = sfd;
        for (int s = CLIENT; s <= SERVER; s++)
            c->tag[s] = (struct tag){.kind = TAG_SIDE, .conn = c, .side = (enum side)s};
        half_init(&c->up, c, &r->up, CLIENT);
        half_init(&c->down, c, &r->down, SERVER);
        c->next = r->conns;
        if (r->conns)
            r->conns->prev = c;
        r->conns = c;
        r->accepted++;
        r->open++;
        if (connect(sfd, t->ai_addr, t->ai_addrlen) == 0) {
            c->connecting = false;
        } else if (errno == EINPROGRESS) {
            c->connecting = true;
        } else {
            warn("cannot connect to '%s': %s", r->connect_spec, errstr(errno));
            conn_kill(c, true);
            continue;
        }
        conn_update(c);
    }
}

static void on_side(struct conn *c, enum side s, uint32_t ev)
{
    struct relay *r = c->relay;
    int err = 0;
    socklen_t len = sizeof(err);

    if (c->fd[s] < 0)
        return;
    if (s == SERVER && c->connecting) {
        if (getsockopt(c->fd[s], SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err) {
            warn("cannot connect to '%s': %s", r->connect_spec, errstr(err));
            conn_kill(c, true);
            return;
        }
        c->connecting = false;
        half_flush(&c->up);
        conn_update(c);
        return;
    }
    if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && half_into(c, s)->blocked)
        half_flush(half_into(c, s));
    if (!c->dead && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        half_read(half_from(c, s));
    conn_update(c);
}

/* Releases every chunk whose time has come and writes what can be written. */
static void on_timer(struct relay *r)
{
    uint64_t expirations, now;
    struct link *links[2] = {&r->up, &r->down};

    if (read(r->tfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
        die("cannot read timerfd: %s", errstr(errno));
    r->timer_at = 0;
    now = now_ns();
    for (int i = 0; i < 2; i++) {
        struct link *l = links[i];
        struct chunk *ch;

        while ((ch = l->head) && ch->release_ns <= now) {
            struct half *h = ch->half;

            link_unlink(l, ch);
            ch->released = true;
            if (!h->blocked) {
                half_flush(h);
                conn_update(h->conn);
            }
        }
    }
}

/* Arms the timer for the earliest release on either link (or disarms it). */
static void timer_update(struct relay *r)
{
    uint64_t next = 0;
    struct itimerspec its = {{0, 0}, {0, 0}};

    if (r->up.head)
        next = r->up.head->release_ns;
    if (r->down.head && (!next || r->down.head->release_ns < next))
        next = r->down.head->release_ns;
    if (next == r->timer_at)
        return;
    its.it_value.tv_sec = (time_t)(next / NS_PER_S);
    its.it_value.tv_nsec = (long)(next % NS_PER_S);
    if (timerfd_settime(r->tfd, TFD_TIMER_ABSTIME, &its, NULL) != 0)
        die("cannot arm timerfd: %s", errstr(errno));
    r->timer_at = next;
}

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* Replaces --stats FILE atomically (write FILE.tmp, rename) with the counters as JSON. */
static void write_stats(struct relay *r)
{
    char tmp[4096];
    FILE *f;

    if (!r->stats_path)
        return;
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", r->stats_path) >= (int)sizeof(tmp)) {
        warn("cannot write '%s': name too long", r->stats_path);
        return;
    }
    f = fopen(tmp, "w");
    if (!f) {
        warn("cannot write '%s': %s", tmp, errstr(errno));
        return;
    }
    fprintf(f, "{\"listen\": ");
    json_string(f, r->listen_name);
    fprintf(f, ", \"connect\": ");
    json_string(f, r->connect_spec);
    fprintf(f, ", \"delay_ms\": %.3f, \"rate_mbit\": ", (double)r->delay_ns / NS_PER_MS);
    if (r->rate_bps > 0)
        fprintf(f, "%.3f", r->rate_bps / 1e6);
    else
        fprintf(f, "null");
    fprintf(f,
            ", \"max_buffer\": %" PRIu64 ", \"connections\": %" PRIu64 ", \"open\": %" PRIu64
            ", \"bytes_up\": %" PRIu64 ", \"bytes_down\": %" PRIu64 ", \"queue_peak\": %" PRIu64
            "}\n",
            r->max_buffer, r->accepted, r->open, r->up.bytes, r->down.bytes, r->queue_peak);
    if (ferror(f) | fclose(f)) {
        warn("cannot write '%s': %s", tmp, errstr(errno));
        unlink(tmp);
        return;
    }
    if (rename(tmp, r->stats_path) != 0) {
        warn("cannot write '%s': %s", r->stats_path, errstr(errno));
        unlink(tmp);
    }
}

static void on_signal(struct relay *r)
{
    struct signalfd_siginfo si;

    while (read(r->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGUSR1)
            write_stats(r);
        else
            r->stop = true;
    }
}

static void free_conns(struct conn **list)
{
    while (*list) {
        struct conn *c = *list;

        *list = c->next;
        for (int s = CLIENT; s <= SERVER; s++)
            if (c->fd[s] >= 0)
                close(c->fd[s]);
        half_clear(&c->up);
        half_clear(&c->down);
        free(c);
    }
}

static int run_relay(struct relay *r)
{
    struct epoll_event evs[MAX_EVENTS];
    const char *err;

    err = resolve(r->connect_spec, &r->target);
    if (err)
        die("cannot connect to '%s': %s", r->connect_spec, err);
    raise_nofile();
    r->sigfd = signals_fd(true);
    r->lfd = listen_on(r->listen_spec, r->listen_name, sizeof(r->listen_name));
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    r->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (r->epfd < 0 || r->tfd < 0)
        die("cannot create epoll or timerfd: %s", errstr(errno));
    r->tag_listen.kind = TAG_LISTEN;
    r->tag_timer.kind = TAG_TIMER;
    r->tag_signal.kind = TAG_SIGNAL;
    epoll_add(r->epfd, r->lfd, EPOLLIN, &r->tag_listen);
    epoll_add(r->epfd, r->tfd, EPOLLIN, &r->tag_timer);
    epoll_add(r->epfd, r->sigfd, EPOLLIN, &r->tag_signal);
    if (!r->quiet) {
        fprintf(stderr, "%s: listening on %s, relaying to %s, %.3g ms each way", prog,
                r->listen_name, r->connect_spec, (double)r->delay_ns / NS_PER_MS);
        if (r->rate_bps > 0)
            fprintf(stderr, ", %.6g Mbit/s each way", r->rate_bps / 1e6);
        fputc('\n', stderr);
    }

    while (!r->stop) {
        int n = epoll_wait(r->epfd, evs, MAX_EVENTS, -1);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait failed: %s", errstr(errno));
        }
        for (int i = 0; i < n; i++) {
            struct tag *t = evs[i].data.ptr;

            switch (t->kind) {
            case TAG_LISTEN:
                on_accept(r);
                break;
            case TAG_TIMER:
                on_timer(r);
                break;
            case TAG_SIGNAL:
                on_signal(r);
                break;
            case TAG_SIDE:
                if (!t->conn->dead)
                    on_side(t->conn, t->side, evs[i].events);
                break;
            }
        }
        free_conns(&r->dead);
        timer_update(r);
    }

    write_stats(r);
    if (!r->quiet)
        fprintf(stderr,
                "%s: %" PRIu64 " connections, %" PRIu64 " bytes up, %" PRIu64 " bytes down\n", prog,
                r->accepted, r->up.bytes, r->down.bytes);
    free_conns(&r->conns);
    free_conns(&r->dead);
    freeaddrinfo(r->target);
    close(r->lfd);
    close(r->tfd);
    close(r->sigfd);
    close(r->epfd);
    return 0;
}

/* --- hidden mode: echo server ---------------------------------------------------------------- */

struct echo_conn {
    struct echo_conn *prev, *next;
    int fd;
    uint32_t mask;
    size_t len, off; /* buf[off, len) is still to echo */
    bool eof;
    unsigned char buf[CHUNK_MAX];
};

static void echo_close(struct echo_conn **live, struct echo_conn **dead, struct echo_conn *e)
{
    close(e->fd);
    e->fd = -1;
    if (e->prev)
        e->prev->next = e->next;
    else
        *live = e->next;
    if (e->next)
        e->next->prev = e->prev;
    e->prev = NULL;
    e->next = *dead;
    *dead = e;
}

/* Echoes what it can; returns false when the connection is over (closed by the caller). */
static bool echo_step(struct echo_conn *e)
{
    for (int i = 0; i < READS_PER_EVENT; i++) {
        ssize_t n;

        if (e->off < e->len) {
            n = send(e->fd, e->buf + e->off, e->len - e->off, MSG_NOSIGNAL);
            if (n < 0)
                return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
            e->off += (size_t)n;
            if (e->off < e->len)
                continue;
            e->off = e->len = 0;
        }
        if (e->eof)
            return false; /* all echoed: close() sends our FIN */
        n = recv(e->fd, e->buf, sizeof(e->buf), 0);
        if (n == 0)
            e->eof = true;
        else if (n > 0)
            e->len = (size_t)n;
        else
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    }
    return true;
}

static int run_echo(const char *spec)
{
    struct epoll_event evs[MAX_EVENTS];
    struct echo_conn *live = NULL, *dead = NULL;
    char name[80];
    int sigfd, lfd, epfd;
    bool stop = false;
    static int tag_listen, tag_signal;

    raise_nofile();
    sigfd = signals_fd(false);
    lfd = listen_on(spec, name, sizeof(name));
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("cannot create epoll: %s", errstr(errno));
    epoll_add(epfd, lfd, EPOLLIN, &tag_listen);
    epoll_add(epfd, sigfd, EPOLLIN, &tag_signal);
    fprintf(stderr, "%s: echo server listening on %s\n", prog, name);

    while (!stop) {
        int n = epoll_wait(epfd, evs, MAX_EVENTS, -1);

        if (n < 0 && errno != EINTR)
            die("epoll_wait failed: %s", errstr(errno));
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            struct echo_conn *e;

            if (p == &tag_signal) {
                stop = true;
            } else if (p == &tag_listen) {
                int fd;

                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    set_nodelay(fd);
                    e = xcalloc(1, sizeof(*e));
                    e->fd = fd;
                    e->next = live;
                    if (live)
                        live->prev = e;
                    live = e;
                    e->mask = EPOLLIN;
                    epoll_add(epfd, fd, EPOLLIN, e);
                }
            } else if ((e = p)->fd >= 0) {
                struct epoll_event ev = {.data.ptr = e};

                if (!echo_step(e)) {
                    echo_close(&live, &dead, e);
                    continue;
                }
                ev.events = e->off < e->len ? EPOLLOUT : EPOLLIN;
                if (ev.events != e->mask && epoll_ctl(epfd, EPOLL_CTL_MOD, e->fd, &ev) != 0)
                    die("cannot watch a connection: %s", errstr(errno));
                e->mask = ev.events;
            }
        }
        while (dead) {
            struct echo_conn *e = dead;

            dead = e->next;
            free(e);
        }
    }
    while (live) {
        struct echo_conn *e = live;

        live = e->next;
        close(e->fd);
        free(e);
    }
    close(lfd);
    close(sigfd);
    close(epfd);
    return 0;
}

/* --- hidden modes: ping and send clients ---------------------------------------------------- */

static unsigned char pattern[PATTERN_LEN];

static void pattern_init(void)
{
    uint64_t s = 0x5eed;

    for (size_t i = 0; i < PATTERN_LEN; i++) {
        uint64_t z = (s += 0x9e3779b97f4a7c15ULL);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        pattern[i] = (unsigned char)(z ^ (z >> 31));
    }
}

/* Stream position pos of connection k's pattern, as an index into pattern[]. */
static size_t pattern_at(unsigned k, uint64_t pos)
{
    return (size_t)((pos + (uint64_t)k * 7919) % PATTERN_LEN);
}

static void pattern_fill(unsigned char *buf, size_t n, unsigned k, uint64_t pos)
{
    while (n) {
        size_t at = pattern_at(k, pos), run = PATTERN_LEN - at < n ? PATTERN_LEN - at : n;

        memcpy(buf, pattern + at, run);
        buf += run;
        pos += run;
        n -= run;
    }
}

/* Offset of the first byte of buf that differs from the pattern, or n if none does. */
static size_t pattern_check(const unsigned char *buf, size_t n, unsigned k, uint64_t pos)
{
    size_t done = 0;

    while (done < n) {
        size_t at = pattern_at(k, pos + done);
        size_t run = PATTERN_LEN - at < n - done ? PATTERN_LEN - at : n - done;

        if (memcmp(buf + done, pattern + at, run) != 0) {
            while (buf[done] == pattern[at])
                done++, at++;
            return done;
        }
        done += run;
    }
    return n;
}

/* A blocking connect to spec, then non-blocking with TCP_NODELAY; dies on failure. */
static int dial(const char *spec)
{
    struct addrinfo *ai;
    const char *err = resolve(spec, &ai);
    int fd, e;

    if (err)
        die("cannot connect to '%s': %s", spec, err);
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        e = errno;
        freeaddrinfo(ai);
        die("cannot connect to '%s': %s", spec, errstr(e));
    }
    freeaddrinfo(ai);
    set_nodelay(fd);
    if (fcntl(fd, F_SETFL, O_NONBLOCK) != 0)
        die("cannot make a socket non-blocking: %s", errstr(errno));
    return fd;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* Waits up to the deadline for events on fds; dies on timeout. */
static void poll_until(struct pollfd *pfd, unsigned n, uint64_t deadline, const char *what)
{
    for (;;) {
        uint64_t now = now_ns();
        int r;

        if (now >= deadline)
            die("%s: timed out", what);
        r = poll(pfd, n, (int)((deadline - now) / NS_PER_MS) + 1);
        if (r > 0)
            return;
        if (r < 0 && errno != EINTR)
            die("poll failed: %s", errstr(errno));
    }
}

static int run_ping(const char *spec, unsigned count, unsigned parallel, size_t size,
                    double timeout_s)
{
    int *fds = xcalloc(parallel, sizeof(*fds));
    size_t *got = xcalloc(parallel, sizeof(*got));
    double *rtt = xcalloc((size_t)count * parallel, sizeof(*rtt));
    struct pollfd *pfd = xcalloc(parallel, sizeof(*pfd));
    unsigned char *out = xcalloc(1, size), *in = xcalloc(1, size);
    uint64_t start, deadline;
    size_t nrtt = 0;

    raise_nofile();
    pattern_init();
    for (unsigned k = 0; k < parallel; k++)
        fds[k] = dial(spec);
    start = now_ns();
    deadline = start + (uint64_t)(timeout_s * NS_PER_S);
    for (unsigned round = 0; round < count; round++) {
        uint64_t t0 = now_ns();
        unsigned pending = parallel;

        for (unsigned k = 0; k < parallel; k++) {
            size_t sent = 0;

            pattern_fill(out, size, k, (uint64_t)round * size);
            while (sent < size) { /* small: fits the socket buffer, but be exact */
                ssize_t w = send(fds[k], out + sent, size - sent, MSG_NOSIGNAL);

                if (w > 0) {
                    sent += (size_t)w;
                } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
                    struct pollfd one = {.fd = fds[k], .events = POLLOUT};

                    poll_until(&one, 1, deadline, "ping");
                } else {
                    die("connection %u: cannot send: %s", k, errstr(errno));
                }
            }
            got[k] = 0;
        }
        while (pending) {
            unsigned np = 0;

            for (unsigned k = 0; k < parallel; k++)
                if (got[k] < size)
                    pfd[np++] = (struct pollfd){.fd = fds[k], .events = POLLIN};
            poll_until(pfd, np, deadline, "ping");
            for (unsigned j = 0; j < np; j++) {
                unsigned k = 0;
                ssize_t n;
                size_t bad;

                if (!pfd[j].revents)
                    continue;
                while (fds[k] != pfd[j].fd)
                    k++;
                n = recv(fds[k], in, size - got[k], 0);
                if (n < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                if (n < 0)
                    die("connection %u: cannot receive: %s", k, errstr(errno));
                if (n == 0)
                    die("connection %u round %u: closed after %zu of %zu echoed bytes", k, round,
                        got[k], size);
                bad = pattern_check(in, (size_t)n, k, (uint64_t)round * size + got[k]);
                if (bad < (size_t)n)
                    die("connection %u round %u: echo differs at byte %zu", k, round, got[k] + bad);
                got[k] += (size_t)n;
                if (got[k] == size) {
                    rtt[nrtt++] = (double)(now_ns() - t0) / NS_PER_MS;
                    pending--;
                }
            }
        }
    }
    qsort(rtt, nrtt, sizeof(*rtt), cmp_double);
    printf("exchanges=%zu min_ms=%.3f median_ms=%.3f max_ms=%.3f elapsed_ms=%.1f\n", nrtt, rtt[0],
           nrtt % 2 ? rtt[nrtt / 2] : (rtt[nrtt / 2 - 1] + rtt[nrtt / 2]) / 2, rtt[nrtt - 1],
           (double)(now_ns() - start) / NS_PER_MS);
    for (unsigned k = 0; k < parallel; k++)
        close(fds[k]);
    free(fds);
    free(got);
    free(rtt);
    free(pfd);
    free(out);
    free(in);
    return 0;
}

struct stream {
    int fd;
    uint64_t sent, rcvd;
    bool shut, eof;
};

static int run_send(const char *spec, uint64_t bytes, unsigned parallel, double timeout_s)
{
    struct stream *st = xcalloc(parallel, sizeof(*st));
    struct pollfd *pfd = xcalloc(parallel, sizeof(*pfd));
    unsigned char *buf = xcalloc(1, CHUNK_MAX);
    uint64_t start, deadline, total = 0;
    unsigned open = parallel;
    double secs;

    raise_nofile();
    pattern_init();
    for (unsigned k = 0; k < parallel; k++)
        st[k].fd = dial(spec);
    start = now_ns();
    deadline = start + (uint64_t)(timeout_s * NS_PER_S);
    while (open) {
        for (unsigned k = 0; k < parallel; k++) {
            pfd[k] = (struct pollfd){.fd = st[k].eof ? -1 : st[k].fd};
            if (!st[k].eof)
                pfd[k].events = (short)(POLLIN | (st[k].shut ? 0 : POLLOUT));
        }
        poll_until(pfd, parallel, deadline, "send");
        for (unsigned k = 0; k < parallel; k++) {
            struct stream *s = &st[k];
            ssize_t n;

            if (pfd[k].revents & POLLOUT) {
                size_t want = bytes - s->sent < CHUNK_MAX ? bytes - s->sent : CHUNK_MAX;

                pattern_fill(buf, want, k, s->sent);
                n = send(s->fd, buf, want, MSG_NOSIGNAL);
                if (n < 0 && errno != EAGAIN && errno != EINTR)
                    die("connection %u: cannot send: %s", k, errstr(errno));
                if (n > 0)
                    s->sent += (uint64_t)n;
            }
            if (!s->shut && s->sent == bytes) {
                if (shutdown(s->fd, SHUT_WR) != 0)
                    die("connection %u: cannot shut down: %s", k, errstr(errno));
                s->shut = true;
            }
            if (pfd[k].revents & (POLLIN | POLLERR | POLLHUP)) {
                size_t bad;

                n = recv(s->fd, buf, CHUNK_MAX, 0);
                if (n < 0 && errno != EAGAIN && errno != EINTR)
                    die("connection %u: cannot receive: %s", k, errstr(errno));
                if (n == 0) {
                    if (s->rcvd != bytes)
                        die("connection %u: echo ended after %" PRIu64 " of %" PRIu64 " bytes", k,
                            s->rcvd, bytes);
                    s->eof = true;
                    open--;
                } else if (n > 0) {
                    bad = pattern_check(buf, (size_t)n, k, s->rcvd);
                    if (bad < (size_t)n || s->rcvd + (uint64_t)n > bytes)
                        die("connection %u: echo differs at byte %" PRIu64, k, s->rcvd + bad);
                    s->rcvd += (uint64_t)n;
                }
            }
        }
    }
    secs = (double)(now_ns() - start) / NS_PER_S;
    for (unsigned k = 0; k < parallel; k++) {
        total += st[k].rcvd;
        close(st[k].fd);
    }
    printf("bytes=%" PRIu64 " seconds=%.3f mbit_s=%.3f\n", total, secs,
           (double)total * 8 / secs / 1e6);
    free(st);
    free(pfd);
    free(buf);
    return 0;
}

/* --- options -------------------------------------------------------------------------------- */

enum {
    OPT_LISTEN = 256,
    OPT_CONNECT,
    OPT_DELAY,
    OPT_RATE,
    OPT_MAX_BUFFER,
    OPT_STATS,
    OPT_QUIET,
    OPT_ECHO,
    OPT_PING,
    OPT_SEND,
    OPT_COUNT,
    OPT_PARALLEL,
    OPT_SIZE,
    OPT_BYTES,
    OPT_TIMEOUT,
    OPT_HELP,
};

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"connect", required_argument, NULL, OPT_CONNECT},
        {"delay-ms", required_argument, NULL, OPT_DELAY},
        {"rate", required_argument, NULL, OPT_RATE},
        {"max-buffer", required_argument, NULL, OPT_MAX_BUFFER},
        {"stats", required_argument, NULL, OPT_STATS},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"echo-server", required_argument, NULL, OPT_ECHO},
        {"ping", required_argument, NULL, OPT_PING},
        {"send", required_argument, NULL, OPT_SEND},
        {"count", required_argument, NULL, OPT_COUNT},
        {"parallel", required_argument, NULL, OPT_PARALLEL},
        {"size", required_argument, NULL, OPT_SIZE},
        {"bytes", required_argument, NULL, OPT_BYTES},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    static struct relay relay; /* large (the read buffer): not on the stack */
    struct relay *r = &relay;
    const char *echo = NULL, *ping = NULL, *send_to = NULL;
    double delay_ms = -1, timeout_s = 60;
    uint64_t count = 10, parallel = 1, size = 64, bytes = 0, v;
    int opt;

    r->max_buffer = DEFAULT_MAX_BUFFER;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (opt) {
        case OPT_LISTEN:
            r->listen_spec = optarg;
            break;
        case OPT_CONNECT:
            r->connect_spec = optarg;
            break;
        case OPT_DELAY:
            delay_ms = parse_number("--delay-ms", optarg, 0, 3600e3);
            break;
        case OPT_RATE:
            r->rate_bps = parse_number("--rate", optarg, 1e-3, 1e6) * 1e6;
            break;
        case OPT_MAX_BUFFER:
            if (parse_bytes(optarg, &v) != 0 || v < 1 || v > (1ull << 40))
                usage_error("invalid --max-buffer '%s'", optarg);
            r->max_buffer = v;
            break;
        case OPT_STATS:
            r->stats_path = optarg;
            break;
        case OPT_QUIET:
            r->quiet = true;
            break;
        case OPT_ECHO:
            echo = optarg;
            break;
        case OPT_PING:
            ping = optarg;
            break;
        case OPT_SEND:
            send_to = optarg;
            break;
        case OPT_COUNT:
            if (parse_bytes(optarg, &count) != 0 || count < 1 || count > 1000000)
                usage_error("invalid --count '%s'", optarg);
            break;
        case OPT_PARALLEL:
            if (parse_bytes(optarg, &parallel) != 0 || parallel < 1 || parallel > 10000)
                usage_error("invalid --parallel '%s'", optarg);
            break;
        case OPT_SIZE:
            if (parse_bytes(optarg, &size) != 0 || size < 1 || size > (1u << 20))
                usage_error("invalid --size '%s'", optarg);
            break;
        case OPT_BYTES:
            if (parse_bytes(optarg, &bytes) != 0 || bytes < 1)
                usage_error("invalid --bytes '%s'", optarg);
            break;
        case OPT_TIMEOUT:
            timeout_s = parse_number("--timeout", optarg, 0.001, 86400);
            break;
        case OPT_HELP:
            usage(stdout);
            return 0;
        case ':':
            usage_error("option '%s' needs a value", argv[optind - 1]);
        default:
            usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        usage_error("unexpected argument '%s'", argv[optind]);
    if (!!echo + !!ping + !!send_to > 1)
        usage_error("--echo-server, --ping and --send exclude each other");
    if (echo)
        return run_echo(echo);
    if (ping)
        return run_ping(ping, (unsigned)count, (unsigned)parallel, (size_t)size, timeout_s);
    if (send_to) {
        if (!bytes)
            usage_error("--send needs --bytes");
        return run_send(send_to, bytes, (unsigned)parallel, timeout_s);
    }
    if (!r->listen_spec || !r->connect_spec || delay_ms < 0)
        usage_error("--listen, --connect and --delay-ms are required");
    r->delay_ns = (uint64_t)(delay_ms * NS_PER_MS + 0.5);
    r->read_size = CHUNK_MAX;
    if (r->rate_bps > 0) { /* about 2 ms of the line per read, so pacing stays smooth */
        double two_ms = r->rate_bps / 8 * 0.002;

        r->read_size = two_ms < CHUNK_MIN   ? CHUNK_MIN
                       : two_ms > CHUNK_MAX ? CHUNK_MAX
                                            : (size_t)two_ms;
    }
    return run_relay(r);
}
