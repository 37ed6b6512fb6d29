/* ctltest.c - drive the control tunnel (tunnel/control.h), for tests/integration/control_tunnel.sh.
 *
 *   ctltest [-F ssh_config] [-i identity] [--cmd CMD] [--keepalive S] [--backoff-max-ms MS] DEST
 *
 * Starts the tunnel to DEST (on failure: "ctltest: MESSAGE" on stderr, exit 1) and reads
 * commands from stdin, one a line: "ID VERB ARGS..." (words separated by single spaces). Each
 * command answers one line on stdout, "ID ok DETAILS" or "ID fail MESSAGE". The tunnel's events
 * are printed as they come, one line each:
 *
 *   event connected | event lost MSG | event retry DELAY_MS MSG | event reconnected |
 *   event gave-up MSG | event exec-started gen=G | event exec-stderr gen=G LINE |
 *   event exec-exited gen=G status=S MSG | event rforward port=P ok|fail [MSG]
 *
 * Verbs (BYTES of a seeded stream; "checked" = every byte compared with what was sent):
 *   exec-echo BYTES [AFTER]      send BYTES through the exec channel (generation > AFTER, waited
 *                                for up to 20 s) and read them back, checked: for `cat`; no
 *                                half-close, so the channel keeps running. "ok gen=G bytes=N"
 *   exec-halfclose BYTES [AFTER] send BYTES, shutdown(SHUT_WR), read to EOF: "ok gen=G output=TEXT"
 *                                (newlines as spaces; for `wc -c`)
 *   unix PATH BYTES PARALLEL     PARALLEL threads each open a channel to the unix socket PATH on
 *                                the cloud host (an echo server), send BYTES, half-close, read
 *                                the echo to EOF, checked. "ok channels=P bytes=N"
 *   tcp HOST PORT BYTES PARALLEL the same over direct-tcpip channels
 *   open-unix PATH | open-tcp HOST PORT   open and close one channel: "ok" or the failure
 *   rforward LHOST LPORT [RPORT] "ok port=P"
 *   unrforward PORT              "ok"
 *   stats                        "ok connected=0|1 gave_up=0|1 reconnects=N channels=N
 *                                rforwards=N exec_gen=G up=B down=B"
 *   stderr                       "ok TEXT": the exec channel's stderr tail (newlines as spaces)
 *   quit                         stop the tunnel and exit 0 (also at the end of stdin)
 *
 *   ctltest --echo-unix PATH | --echo-tcp ADDR:PORT
 *
 * An echo server, one thread a connection; a half-close is answered with one once all is echoed.
 * Prints "ctltest: echo listening on PATH|ADDR:PORT" on stderr once it listens (PORT 0: any).
 */
#include "control.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_    8192
#define STALL_MS     60000 /* no progress for this long fails a stream */
#define MAX_PARALLEL 256
#define EXEC_WAIT_MS 20000
#define OUTPUT_MAX   4096

static ctl_t *ctl;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&out_lock);
    vprintf(fmt, ap);
    putchar('\n');
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
    va_end(ap);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One line: newlines and tabs as spaces. */
static void flatten(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '\r' || *s == '\t')
            *s = ' ';
}

static void on_event(void *arg, const struct ctl_event *ev)
{
    (void)arg;
    char msg[2048];
    snprintf(msg, sizeof(msg), "%s", ev->msg ? ev->msg : "");
    flatten(msg);
    switch (ev->kind) {
    case CTL_EV_CONNECTED:
        say("event connected");
        break;
    case CTL_EV_LOST:
        say("event lost %s", msg);
        break;
    case CTL_EV_RETRY:
        say("event retry %d %s", ev->delay_ms, msg);
        break;
    case CTL_EV_RECONNECTED:
        say("event reconnected");
        break;
    case CTL_EV_GAVE_UP:
        say("event gave-up %s", msg);
        fprintf(stderr, "ctltest: gave up: %s\n", msg);
        break;
    case CTL_EV_EXEC_STARTED:
        say("event exec-started gen=%u", ev->gen);
        break;
    case CTL_EV_EXEC_STDERR:
        say("event exec-stderr gen=%u %s", ev->gen, msg);
        break;
    case CTL_EV_EXEC_EXITED:
        say("event exec-exited gen=%u status=%d %s", ev->gen, ev->status, msg);
        break;
    case CTL_EV_RFORWARD:
        say("event rforward port=%d %s%s%s", ev->port, ev->ok ? "ok" : "fail", msg[0] ? " " : "",
            msg);
        break;
    }
}

/* --- seeded streams ------------------------------------------------------------------------- */

struct gen {
    uint64_t x;
    uint8_t buf[8];
    unsigned left;
};

static void gen_init(struct gen *g, uint64_t seed)
{
    g->x = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    if (g->x == 0)
        g->x = 1;
    g->left = 0;
}

static void gen_fill(struct gen *g, uint8_t *p, size_t n)
{
    while (n--) {
        if (g->left == 0) {
            g->x ^= g->x >> 12;
            g->x ^= g->x << 25;
            g->x ^= g->x >> 27;
            uint64_t v = g->x * 0x2545F4914F6CDD1Dull;
            memcpy(g->buf, &v, 8);
            g->left = 8;
        }
        *p++ = g->buf[8 - g->left--];
    }
}

/* Send 'bytes' of stream 'seed' on fd and check that the same come back; with halfclose, then
 * shutdown(SHUT_WR) and expect EOF right after them. 0, or -1 with a message in why. */
static int stream_check(int fd, uint64_t seed, size_t bytes, bool halfclose, char *why,
                        size_t whylen)
{
    static __thread uint8_t wbuf[65536], rbuf[65536], expect[65536];
    struct gen wg, rg;
    size_t sent = 0, got = 0, wlen = 0, woff = 0;
    bool shut = false, eof = false;
    int64_t last = now_ms();

    gen_init(&wg, seed);
    gen_init(&rg, seed);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    while (!(got == bytes && (!halfclose || eof))) {
        if (halfclose && sent == bytes && woff == wlen && !shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (sent < bytes || woff < wlen)
            pf.events |= POLLOUT;
        int pr = poll(&pf, 1, 1000);
        if (pr < 0 && errno != EINTR) {
            snprintf(why, whylen, "poll: %s", strerror(errno));
            return -1;
        }
        if (pr <= 0) {
            if (now_ms() - last > STALL_MS) {
                snprintf(why, whylen, "stalled: sent %zu of %zu, got %zu back", sent, bytes, got);
                return -1;
            }
            continue;
        }
        if (pf.revents & POLLOUT) {
            if (woff == wlen && sent < bytes) {
                wlen = bytes - sent < sizeof(wbuf) ? bytes - sent : sizeof(wbuf);
                gen_fill(&wg, wbuf, wlen);
                woff = 0;
                sent += wlen;
            }
            ssize_t w = send(fd, wbuf + woff, wlen - woff, MSG_NOSIGNAL);
            if (w > 0) {
                woff += (size_t)w;
                last = now_ms();
            } else if (w < 0 && errno != EAGAIN) {
                snprintf(why, whylen, "send after %zu bytes: %s", sent - wlen + woff,
                         strerror(errno));
                return -1;
            }
        }
        if (pf.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = recv(fd, rbuf, sizeof(rbuf), 0);
            if (n < 0 && errno != EAGAIN) {
                snprintf(why, whylen, "recv after %zu bytes: %s", got, strerror(errno));
                return -1;
            }
            if (n == 0) {
                eof = true;
                if (got < bytes) {
                    snprintf(why, whylen, "EOF after %zu of %zu bytes", got, bytes);
                    return -1;
                }
                continue;
            }
            if (n > 0) {
                if (got + (size_t)n > bytes) {
                    snprintf(why, whylen, "%zu bytes back, more than the %zu sent", got + (size_t)n,
                             bytes);
                    return -1;
                }
                gen_fill(&rg, expect, (size_t)n);
                for (ssize_t i = 0; i < n; i++)
                    if (rbuf[i] != expect[i]) {
                        snprintf(why, whylen, "byte %zu differs: expected 0x%02x, got 0x%02x",
                                 got + (size_t)i, expect[i], rbuf[i]);
                        return -1;
                    }
                got += (size_t)n;
                last = now_ms();
            }
        }
    }
    return 0;
}

/* --- commands ------------------------------------------------------------------------------- */

struct par {
    bool tcp;
    const char *target;
    int port;
    size_t bytes;
    uint64_t seed;
    int rc;
    char why[512];
};

static void *par_main(void *arg)
{
    struct par *p = arg;
    int fd;
    char err[512];
    int r = p->tcp ? ctl_open_tcp(ctl, p->target, p->port, &fd, err, sizeof(err))
                   : ctl_open_unix(ctl, p->target, &fd, err, sizeof(err));
    if (r != 0) {
        snprintf(p->why, sizeof(p->why), "%s", err);
        p->rc = -1;
        return NULL;
    }
    p->rc = stream_check(fd, p->seed, p->bytes, true, p->why, sizeof(p->why));
    close(fd);
    return NULL;
}

static void cmd_parallel(const char *id, bool tcp, const char *target, int port, size_t bytes,
                         int n)
{
    struct par *ps = calloc((size_t)n, sizeof(*ps));
    pthread_t *th = calloc((size_t)n, sizeof(*th));
    int failed = 0;
    if (!ps || !th) {
        say("%s fail out of memory", id);
        free(ps);
        free(th);
        return;
    }
    for (int i = 0; i < n; i++) {
        ps[i] = (struct par){.tcp = tcp,
                             .target = target,
                             .port = port,
                             .bytes = bytes,
                             .seed = (uint64_t)now_ms() * 131 + (uint64_t)i};
        if (pthread_create(&th[i], NULL, par_main, &ps[i]) != 0) {
            ps[i].rc = -1;
            snprintf(ps[i].why, sizeof(ps[i].why), "cannot start a thread");
            th[i] = 0;
        }
    }
    for (int i = 0; i < n; i++)
        if (th[i])
            pthread_join(th[i], NULL);
    for (int i = 0; i < n; i++)
        if (ps[i].rc != 0) {
            if (!failed)
                say("%s fail channel %d of %d: %s", id, i, n, ps[i].why);
            failed++;
        }
    if (!failed)
        say("%s ok channels=%d bytes=%zu", id, n, bytes);
    free(ps);
    free(th);
}

static void cmd_exec(const char *id, size_t bytes, unsigned after, bool halfclose)
{
    unsigned gen = 0;
    char why[512];
    int fd = ctl_exec_fd(ctl, after, EXEC_WAIT_MS, &gen);
    if (fd < 0) {
        say("%s fail no exec channel above generation %u: %s", id, after, strerror(-fd));
        return;
    }
    if (!halfclose) {
        if (stream_check(fd, gen, bytes, false, why, sizeof(why)) != 0)
            say("%s fail gen=%u %s", id, gen, why);
        else
            say("%s ok gen=%u bytes=%zu", id, gen, bytes);
        close(fd);
        return;
    }
    /* half-close: everything out, then everything back to EOF */
    uint8_t buf[65536];
    struct gen g;
    size_t sent = 0;
    gen_init(&g, gen);
    while (sent < bytes) {
        size_t n = bytes - sent < sizeof(buf) ? bytes - sent : sizeof(buf);
        gen_fill(&g, buf, n);
        for (size_t off = 0; off < n;) {
            ssize_t w = send(fd, buf + off, n - off, MSG_NOSIGNAL);
            if (w <= 0) {
                say("%s fail send after %zu bytes: %s", id, sent + off, strerror(errno));
                close(fd);
                return;
            }
            off += (size_t)w;
        }
        sent += n;
    }
    shutdown(fd, SHUT_WR);
    char out[OUTPUT_MAX + 1];
    size_t len = 0;
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, STALL_MS) <= 0) {
            say("%s fail no EOF within %d s after the half-close", id, STALL_MS / 1000);
            close(fd);
            return;
        }
        ssize_t n = recv(fd, out + len, OUTPUT_MAX - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len == OUTPUT_MAX)
            break;
    }
    out[len] = '\0';
    flatten(out);
    while (len > 0 && out[len - 1] == ' ')
        out[--len] = '\0';
    say("%s ok gen=%u output=%s", id, gen, out);
    close(fd);
}

static void cmd_open(const char *id, bool tcp, const char *target, int port)
{
    int fd;
    char err[512];
    int r = tcp ? ctl_open_tcp(ctl, target, port, &fd, err, sizeof(err))
                : ctl_open_unix(ctl, target, &fd, err, sizeof(err));
    if (r != 0) {
        say("%s fail %s (%s)", id, err, strerror(-r));
        return;
    }
    close(fd);
    say("%s ok", id);
}

static void cmd_stats(const char *id)
{
    struct ctl_stats st;
    ctl_stats(ctl, &st);
    say("%s ok connected=%d gave_up=%d reconnects=%u channels=%u rforwards=%u exec_gen=%u "
        "up=%llu down=%llu",
        id, st.connected, st.gave_up, st.reconnects, st.channels_open, st.rforwards, st.exec_gen,
        (unsigned long long)st.bytes_up, (unsigned long long)st.bytes_down);
}

static size_t to_size(const char *s)
{
    return s ? (size_t)strtoull(s, NULL, 10) : 0;
}

/* One command line; returns false on quit. */
static bool run(char *line)
{
    char *w[8] = {0};
    int n = 0;
    for (char *t = strtok(line, " "); t && n < 8; t = strtok(NULL, " "))
        w[n++] = t;
    if (n < 2) {
        say("%s fail usage: ID VERB ARGS...", n ? w[0] : "?");
        return true;
    }
    const char *id = w[0], *v = w[1];
    if (strcmp(v, "quit") == 0)
        return false;
    if (strcmp(v, "exec-echo") == 0 && n >= 3)
        cmd_exec(id, to_size(w[2]), (unsigned)to_size(w[3]), false);
    else if (strcmp(v, "exec-halfclose") == 0 && n >= 3)
        cmd_exec(id, to_size(w[2]), (unsigned)to_size(w[3]), true);
    else if (strcmp(v, "unix") == 0 && n == 5 && atoi(w[4]) > 0 && atoi(w[4]) <= MAX_PARALLEL)
        cmd_parallel(id, false, w[2], 0, to_size(w[3]), atoi(w[4]));
    else if (strcmp(v, "tcp") == 0 && n == 6 && atoi(w[5]) > 0 && atoi(w[5]) <= MAX_PARALLEL)
        cmd_parallel(id, true, w[2], atoi(w[3]), to_size(w[4]), atoi(w[5]));
    else if (strcmp(v, "open-unix") == 0 && n == 3)
        cmd_open(id, false, w[2], 0);
    else if (strcmp(v, "open-tcp") == 0 && n == 4)
        cmd_open(id, true, w[2], atoi(w[3]));
    else if (strcmp(v, "rforward") == 0 && (n == 4 || n == 5)) {
        int port;
        char err[512];
        int r = ctl_add_rforward(ctl, n == 5 ? atoi(w[4]) : 0, w[2], atoi(w[3]), &port, err,
                                 sizeof(err));
        if (r != 0)
            say("%s fail %s (%s)", id, err, strerror(-r));
        else
            say("%s ok port=%d", id, port);
    } else if (strcmp(v, "unrforward") == 0 && n == 3) {
        int r = ctl_remove_rforward(ctl, atoi(w[2]));
        if (r != 0)
            say("%s fail %s", id, strerror(-r));
        else
            say("%s ok", id);
    } else if (strcmp(v, "stats") == 0) {
        cmd_stats(id);
    } else if (strcmp(v, "stderr") == 0) {
        char tail[4200];
        ctl_exec_stderr(ctl, tail, sizeof(tail));
        flatten(tail);
        say("%s ok %s", id, tail);
    } else {
        say("%s fail usage: unknown or malformed command '%s'", id, v);
    }
    return true;
}

/* --- echo server ------------------------------------------------------------------------------ */

static void *echo_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    static __thread uint8_t buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = send(fd, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
            if (w <= 0)
                goto out;
            off += w;
        }
    }
    shutdown(fd, SHUT_WR);
out:
    close(fd);
    return NULL;
}

static int echo_server(const char *unix_path, const char *tcp_addr)
{
    int ls;
    char where[300];
    if (unix_path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(unix_path) >= sizeof(sa.sun_path)) {
            fprintf(stderr, "ctltest: socket path too long: '%s'\n", unix_path);
            return 1;
        }
        strcpy(sa.sun_path, unix_path);
        unlink(unix_path);
        ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(ls, 128) != 0) {
            fprintf(stderr, "ctltest: cannot listen on '%s': %s\n", unix_path, strerror(errno));
            return 1;
        }
        snprintf(where, sizeof(where), "%s", unix_path);
    } else {
        char host[256];
        const char *colon = strrchr(tcp_addr, ':');
        struct sockaddr_in sa = {.sin_family = AF_INET};
        if (!colon || (size_t)(colon - tcp_addr) >= sizeof(host)) {
            fprintf(stderr, "ctltest: bad address '%s': expected ADDR:PORT\n", tcp_addr);
            return 2;
        }
        memcpy(host, tcp_addr, (size_t)(colon - tcp_addr));
        host[colon - tcp_addr] = '\0';
        sa.sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
            fprintf(stderr, "ctltest: bad address '%s': not an IPv4 address\n", tcp_addr);
            return 2;
        }
        int one = 1;
        ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ls >= 0)
            setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        socklen_t sl = sizeof(sa);
        if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(ls, 128) != 0 ||
            getsockname(ls, (struct sockaddr *)&sa, &sl) != 0) {
            fprintf(stderr, "ctltest: cannot listen on '%s': %s\n", tcp_addr, strerror(errno));
            return 1;
        }
        snprintf(where, sizeof(where), "%s:%u", host, ntohs(sa.sin_port));
    }
    fprintf(stderr, "ctltest: echo listening on %s\n", where);
    for (;;) {
        int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            fprintf(stderr, "ctltest: accept: %s\n", strerror(errno));
            return 1;
        }
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &at, echo_conn, (void *)(intptr_t)fd) != 0)
            close(fd);
        pthread_attr_destroy(&at);
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: ctltest [-F ssh_config] [-i identity] [--cmd CMD] [--keepalive S]\n"
                    "               [--backoff-max-ms MS] DEST   (commands on stdin)\n"
                    "       ctltest --echo-unix PATH | --echo-tcp ADDR:PORT\n");
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {{"cmd", required_argument, NULL, 'c'},
                                       {"keepalive", required_argument, NULL, 'k'},
                                       {"backoff-max-ms", required_argument, NULL, 'b'},
                                       {"echo-unix", required_argument, NULL, 'U'},
                                       {"echo-tcp", required_argument, NULL, 'T'},
                                       {NULL, 0, NULL, 0}};
    struct ctl_opts o = {0};
    const char *echo_unix = NULL, *echo_tcp = NULL;
    int opt;

    signal(SIGPIPE, SIG_IGN);
    while ((opt = getopt_long(argc, argv, "F:i:", lo, NULL)) != -1) {
        switch (opt) {
        case 'F':
            o.ssh.ssh_config = optarg;
            break;
        case 'i':
            o.ssh.identity = optarg;
            break;
        case 'c':
            o.exec_cmd = optarg;
            break;
        case 'k':
            o.keepalive_s = atoi(optarg);
            break;
        case 'b':
            o.backoff_max_ms = atoi(optarg);
            break;
        case 'U':
            echo_unix = optarg;
            break;
        case 'T':
            echo_tcp = optarg;
            break;
        default:
            usage();
            return 2;
        }
    }
    if (echo_unix || echo_tcp)
        return echo_server(echo_unix, echo_tcp);
    if (optind != argc - 1) {
        usage();
        return 2;
    }
    o.ssh.dest = argv[optind];
    o.status = on_event;

    char err[1024];
    int r = ctl_start(&o, &ctl, err, sizeof(err));
    if (r != 0) {
        fprintf(stderr, "ctltest: %s\n", err);
        return 1;
    }
    static char line[LINE_MAX_];
    while (fgets(line, sizeof(line), stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] && !run(line))
            break;
    }
    ctl_stop(ctl);
    return 0;
}
