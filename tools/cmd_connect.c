/* cmd_connect.c - offload connect / status / disconnect: the laptop side of a session
 * (docs/connect.md).
 *
 * One process holds the session: the control tunnel to the cloud host (tunnel/control.h), the
 * cloud-side supervisor's protocol on the tunnel's exec channel, the docker API proxy
 * (tunnel/dockerproxy.h) whose bind rewrite creates the exports, one export endpoint per bind
 * source folder (as offload serve: confined SFTP + change feed, fresh keys), the published-port
 * listeners, the idle timer, and a control socket for `offload status` and `offload disconnect`.
 *
 * Locks: s->lock guards the export table and the supervisor protocol (one request, one reply at
 * a time, from whichever thread needs it: proxy threads creating exports, the main loop asking
 * STATUS). s->port_lock guards the port forwards.
 */
#include "offload.h"

#include "confine.h"
#include "control.h"
#include "dockerproxy.h"
#include "endpoint.h"
#include "feed_agent.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_EXPORTS    64
#define MAX_FORWARDS   64
#define LINE_MAX_LEN   (64u << 10)
#define SUP_TIMEOUT_MS 45000 /* an EXPORT waits up to 30 s for its mount on the cloud side */

struct export
{
    char name[65];
    char path[PATH_MAX];   /* the laptop folder, or file (real path) */
    char folder[PATH_MAX]; /* the folder watched: path, or a file's folder */
    bool ro;
    bool file; /* a single-file share: the folder is the root, only the file is visible */
    cf_root_t *root;
    struct sfs_root sroot;
    struct fa_root froot;
    struct tun_ep_subsys sub; /* the feed hooks: the endpoint keeps a pointer to them */
    fa_t *fa;
    tun_ep_t *ep;
    char details[PATH_MAX]; /* private: the endpoint's client key and known_hosts */
    int rport;              /* the reverse forward on the cloud host's loopback */
    char *req;              /* the EXPORT line, sent again if the cloud side's mount dies */
    char mnt[PATH_MAX];     /* where it is mounted on the cloud host */
};

struct session;
struct forward {
    struct session *s;
    char container[80];
    int port; /* the published port on the cloud host, and the laptop listener's */
    int lfd;
    pthread_t thr;
    bool used;
};

struct session {
    char host[256], id[40], state[PATH_MAX], remote_offload[PATH_MAX], docker_socket[PATH_MAX];
    char base[PATH_MAX];
    int verbose, idle_s;
    ctl_t *ctl;
    struct dp_proxy *dp;
    pthread_mutex_t lock;
    int sup_fd;        /* the supervisor protocol, on the exec channel */
    unsigned exec_gen; /* the exec channel generation sup_fd belongs to */
    pthread_mutex_t msg_lock;
    char exec_msg[512];      /* why the last exec channel ended, when it did */
    char rbuf[LINE_MAX_LEN]; /* what was read from it past the last reply line */
    size_t rlen;
    unsigned owed; /* replies to requests that timed out: skipped when they come */
    unsigned seq;  /* shares made, for their names (never reused) */
    struct export ex[MAX_EXPORTS];
    int nex;
    pthread_mutex_t port_lock;
    struct forward fw[MAX_FORWARDS];
    atomic_int stop;
    atomic_llong last_file_activity;
    atomic_int running;  /* containers running, from the events stream */
    atomic_int reattach; /* the tunnel came back: say HELLO to the supervisor again */
    char end_reason[256];
    int ctl_sock;
};

static volatile sig_atomic_t got_signal;
static void on_signal(int sig)
{
    got_signal = sig;
}

static long long mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec;
}

static void say(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct session *s, const char *fmt, ...)
{
    va_list ap;
    (void)s;
    va_start(ap, fmt);
    fputs("offload connect: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* snprintf for paths and messages that are cut rather than overflowing: 0, or -ENAMETOOLONG
 * when cut */
static int xfmt(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int xfmt(char *out, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, len, fmt, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* ---- base64 (the protocol's opaque fields) ---- */

static char *b64(const void *data, size_t n)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const uint8_t *p = data;
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        *o++ = t[v >> 18 & 63];
        *o++ = t[v >> 12 & 63];
        *o++ = i + 1 < n ? t[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? t[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

static int unb64(const char *in, char **out)
{
    size_t n = strlen(in), k = 0;
    uint8_t *o;
    if (n % 4 || !(o = malloc(n / 4 * 3 + 1)))
        return -EINVAL;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            char c = in[i + j];
            const char *t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            const char *at = c ? strchr(t, c) : NULL;
            if (c == '=' && i + 4 == n && j >= 2) {
                pad++;
                v <<= 6;
                continue;
            }
            if (!at || pad) {
                free(o);
                return -EINVAL;
            }
            v = v << 6 | (uint32_t)(at - t);
        }
        o[k++] = (uint8_t)(v >> 16);
        if (pad < 2)
            o[k++] = (uint8_t)(v >> 8);
        if (pad < 1)
            o[k++] = (uint8_t)v;
    }
    o[k] = '\0';
    *out = (char *)o;
    return 0;
}

/* ---- the supervisor protocol ---- */

/* Send one request line, read one reply line into reply (without the newline). Called with
 * s->lock held. 0, or -EPIPE when the exec channel is gone, -ETIMEDOUT, -EPROTO (too long). */
static int sup_call(struct session *s, const char *req, char *reply, size_t len)
{
    if (s->sup_fd < 0)
        return -EPIPE;
    size_t n = strlen(req);
    char *line = malloc(n + 1);
    if (!line)
        return -ENOMEM;
    memcpy(line, req, n);
    line[n] = '\n';
    for (size_t off = 0; off <= n;) {
        ssize_t w = write(s->sup_fd, line + off, n + 1 - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            free(line);
            return -EPIPE;
        }
        off += (size_t)w;
    }
    free(line);
    long long deadline = mono_s() + SUP_TIMEOUT_MS / 1000;
    for (;;) {
        char *nl = memchr(s->rbuf, '\n', s->rlen);
        if (nl) {
            size_t k = (size_t)(nl - s->rbuf);
            bool late = s->owed > 0; /* the answer to an earlier request that timed out */
            if (late)
                s->owed--;
            else
                snprintf(reply, len, "%.*s", (int)k, s->rbuf);
            memmove(s->rbuf, nl + 1, s->rlen - k - 1);
            s->rlen -= k + 1;
            if (!late)
                return 0;
            continue;
        }
        if (s->rlen == sizeof(s->rbuf)) {
            s->rlen = 0; /* a line longer than any reply: dropped whole */
            s->owed++;
            return -EPROTO;
        }
        int left = (int)((deadline - mono_s()) * 1000);
        struct pollfd pf = {.fd = s->sup_fd, .events = POLLIN};
        if (left <= 0) {
            s->owed++;
            return -ETIMEDOUT;
        }
        int r = poll(&pf, 1, left);
        if (r < 0 && errno != EINTR)
            return -errno;
        if (r <= 0)
            continue;
        ssize_t k = read(s->sup_fd, s->rbuf + s->rlen, sizeof(s->rbuf) - s->rlen);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -EPIPE;
        s->rlen += (size_t)k;
    }
}

static int sup_attach(struct session *s, char *err, size_t errlen)
{
    char reply[1024], req[128];
    unsigned gen = 0;
    int fd = ctl_exec_fd(s->ctl, s->exec_gen, 15000, &gen);
    if (fd < 0) {
        pthread_mutex_lock(&s->msg_lock);
        snprintf(err, errlen, "%s", *s->exec_msg ? s->exec_msg : "");
        pthread_mutex_unlock(&s->msg_lock);
        if (!*err)
            snprintf(err, errlen, "the session's command did not start on %s (%s)", s->host,
                     strerror(-fd));
        return -EIO;
    }
    if (s->sup_fd >= 0)
        close(s->sup_fd);
    s->sup_fd = fd;
    s->exec_gen = gen;
    s->rlen = 0;
    s->owed = 0;
    snprintf(req, sizeof(req), "HELLO 1 %s", OFFLOAD_VERSION);
    int r = sup_call(s, req, reply, sizeof(reply));
    if (r != 0) {
        char more[512] = "";
        usleep(200000); /* the exit status and stderr of a command that failed at once */
        pthread_mutex_lock(&s->msg_lock);
        snprintf(more, sizeof(more), "%s", s->exec_msg);
        pthread_mutex_unlock(&s->msg_lock);
        if (!*more)
            ctl_exec_stderr(s->ctl, more, sizeof(more));
        size_t n = strlen(more);
        while (n && more[n - 1] == '\n')
            more[--n] = '\0';
        snprintf(err, errlen, "no answer from 'offload mountd' on %s%s%s", s->host,
                 *more ? ": " : "", more);
        return r;
    }
    if (strncmp(reply, "OK 1 ", 5) != 0) {
        xfmt(err, errlen, "the cloud side refused the session: %s",
             strncmp(reply, "ERR ", 4) == 0 ? reply + 4 : reply);
        return -EPROTO;
    }
    return 0;
}

/* ---- exports ---- */

static void name_for(struct session *s, const char *path, bool ro, char *out, size_t len)
{
    const char *base = strrchr(path, '/');
    base = base && base[1] ? base + 1 : "root";
    char clean[40];
    size_t k = 0;
    for (const char *p = base; *p && k < sizeof(clean) - 1; p++)
        clean[k++] = (char)((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                                    (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'
                                ? *p
                                : '_');
    clean[k] = '\0';
    snprintf(out, len, "%s-%u%s", *clean ? clean : "x", ++s->seq, ro ? "-ro" : "");
}

static void export_free(struct export *e)
{
    free(e->req);
    tun_ep_stop(e->ep);
    fa_free(e->fa);
    if (e->root)
        cf_close_root(e->root);
    if (*e->details) {
        char p[PATH_MAX + 32];
        static const char *const files[] = {"id_ed25519", "id_ed25519.pub", "known_hosts",
                                            "ssh_config"};
        for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
            snprintf(p, sizeof(p), "%s/%s", e->details, files[i]);
            unlink(p);
        }
        char cmd[PATH_MAX + 32];
        snprintf(cmd, sizeof(cmd), "%s", e->details);
        rmdir(cmd);
    }
    memset(e, 0, sizeof(*e));
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = malloc(LINE_MAX_LEN);
    size_t k = buf ? fread(buf, 1, LINE_MAX_LEN - 1, f) : 0;
    fclose(f);
    if (buf)
        buf[k] = '\0';
    *n = k;
    return buf;
}

/* Start an export of 'path' and have the cloud side mount it. Called with s->lock held. */
static int export_new(struct session *s, const char *path, bool ro, bool file, struct export **out,
                      char *msg, size_t msglen)
{
    if (s->nex == MAX_EXPORTS) {
        snprintf(msg, msglen, "offload: at most %d shared folders in a session", MAX_EXPORTS);
        return -ENOSPC;
    }
    struct export *e = &s->ex[s->nex];
    char err[1024];
    int r;
    memset(e, 0, sizeof(*e));
    snprintf(e->path, sizeof(e->path), "%s", path);
    e->ro = ro;
    e->file = file;
    name_for(s, path, ro, e->name, sizeof(e->name));
    if ((r = file ? cf_open_root_file(path, ro, &e->root) : cf_open_root(path, ro, &e->root)) !=
        0) {
        snprintf(msg, msglen, "offload: cannot share '%s': %s", path, strerror(-r));
        return r;
    }
    e->sroot = (struct sfs_root){.name = e->name, .root = e->root};
    /* the watcher watches the folder of a single-file share (only that file) */
    snprintf(e->folder, sizeof(e->folder), "%s", path);
    if (file) {
        char *slash = strrchr(e->folder, '/');
        if (slash)
            slash == e->folder ? (void)(slash[1] = '\0') : (void)(*slash = '\0');
    }
    e->froot = (struct fa_root){e->name, e->folder, e->root};
    xfmt(e->details, sizeof(e->details), "%s/exports/%s", s->state, e->name);
    if (mkdir(e->details, 0700) != 0 && errno != EEXIST) {
        r = -errno;
        snprintf(msg, msglen, "offload: cannot create '%s': %s", e->details, strerror(errno));
        *e->details = '\0';
        goto fail;
    }
    if ((r = fa_new(&e->froot, 1, e->details, s->verbose, &e->fa, err, sizeof(err))) != 0) {
        snprintf(msg, msglen, "offload: %s", err);
        goto fail;
    }
    fa_subsys(e->fa, &e->sub);
    struct tun_ep_opts o = {.bind_addr = "127.0.0.1",
                            .roots = &e->sroot,
                            .nroots = 1,
                            .subsys = &e->sub,
                            .nsubsys = 1,
                            .verbose = s->verbose > 1};
    if ((r = tun_ep_start(&o, &e->ep, err, sizeof(err))) != 0 ||
        (r = tun_ep_write_details(e->ep, e->details, "offload-endpoint", err, sizeof(err))) != 0) {
        snprintf(msg, msglen, "offload: %s", err);
        goto fail;
    }
    if ((r = ctl_add_rforward(s->ctl, 0, "127.0.0.1", tun_ep_port(e->ep), &e->rport, err,
                              sizeof(err))) != 0) {
        snprintf(msg, msglen, "offload: cannot forward to the share from %s: %s", s->host, err);
        goto fail;
    }
    /* the key, and the host key as the cloud side will see it: [127.0.0.1]:rport */
    char p[PATH_MAX + 32], *key, *kh, *key64 = NULL, *known64 = NULL;
    size_t nk, nh;
    snprintf(p, sizeof(p), "%s/id_ed25519", e->details);
    key = slurp(p, &nk);
    snprintf(p, sizeof(p), "%s/known_hosts", e->details);
    kh = slurp(p, &nh);
    char type[64] = "", blob[1024] = "", line[1200];
    if (kh)
        sscanf(kh, "%*s %63s %1023s", type, blob);
    snprintf(line, sizeof(line), "[127.0.0.1]:%d %s %s", e->rport, type, blob);
    if (key && *type)
        key64 = b64(key, nk), known64 = b64(line, strlen(line));
    free(key);
    free(kh);
    if (!key64 || !known64) {
        free(key64);
        free(known64);
        snprintf(msg, msglen, "offload: cannot read the share's keys in '%s'", e->details);
        r = -EIO;
        goto fail;
    }
    size_t reqlen = strlen(key64) + strlen(known64) + 256;
    char *req = malloc(reqlen), reply[PATH_MAX + 512];
    if (!req) {
        free(key64);
        free(known64);
        r = -ENOMEM;
        goto fail;
    }
    snprintf(req, reqlen, "EXPORT %s %d %s%s %s %s", e->name, e->rport, ro ? "ro" : "rw",
             file ? ",file" : "", key64, known64);
    free(key64);
    free(known64);
    r = sup_call(s, req, reply, sizeof(reply));
    e->req = req;
    char want[128];
    snprintf(want, sizeof(want), "MOUNTED %s ", e->name);
    if (r != 0) {
        snprintf(msg, msglen, "offload: the cloud side did not answer (%s)", strerror(-r));
        goto fail;
    }
    if (strncmp(reply, want, strlen(want)) != 0) {
        size_t skip = strncmp(reply, "ERR ", 4) == 0 ? 4 + strlen(e->name) + 1 : 0;
        snprintf(msg, msglen, "offload: cannot mount '%s' on %s: %s", path, s->host,
                 strlen(reply) > skip ? reply + skip : reply);
        r = -EIO;
        goto fail;
    }
    if (file) {
        const char *base = strrchr(path, '/');
        xfmt(e->mnt, sizeof(e->mnt), "%s/%s", reply + strlen(want), base ? base + 1 : path);
    } else {
        xfmt(e->mnt, sizeof(e->mnt), "%s", reply + strlen(want));
    }
    s->nex++;
    say(s, "sharing '%s'%s as %s:%s", path, ro ? " read-only" : "", s->host, e->mnt);
    *out = e;
    return 0;
fail:
    if (e->rport)
        ctl_remove_rforward(s->ctl, e->rport);
    export_free(e);
    return r;
}

/* The proxy's bind rewrite (any proxy thread). */
static int rewrite_bind(void *arg, const char *src, bool ro, bool is_mount_api, char *out,
                        size_t outlen, char *msg, size_t msglen)
{
    struct session *s = arg;
    char real[PATH_MAX];
    struct stat st;

    if (stat(src, &st) != 0) {
        if (errno != ENOENT) {
            snprintf(msg, msglen, "offload: cannot share '%s': %s", src, strerror(errno));
            return -errno;
        }
        if (is_mount_api) {
            snprintf(msg, msglen,
                     "invalid mount config for type \"bind\": bind source path does not exist: %s",
                     src);
            return -ENOENT;
        }
        /* -v with a missing source: docker creates the folder on its host; here that is the
         * laptop */
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s", src);
        for (char *c = p + 1; *c; c++)
            if (*c == '/') {
                *c = '\0';
                mkdir(p, 0755);
                *c = '/';
            }
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            snprintf(msg, msglen, "error while creating mount source path '%s': %s", src,
                     strerror(errno));
            return -errno;
        }
        if (stat(src, &st) != 0) {
            int e = errno;
            snprintf(msg, msglen, "error while creating mount source path '%s': %s", src,
                     strerror(e));
            return -e;
        }
    }
    bool file = !S_ISDIR(st.st_mode);
    if (file && !S_ISREG(st.st_mode)) {
        snprintf(msg, msglen, "offload: cannot share '%s': not a folder or a regular file", src);
        return -EINVAL;
    }
    if (!realpath(src, real)) {
        snprintf(msg, msglen, "offload: cannot share '%s': %s", src, strerror(errno));
        return -errno;
    }
    pthread_mutex_lock(&s->lock);
    struct export *e = NULL;
    const char *rest = "";
    for (int i = 0; i < s->nex && !e; i++) {
        size_t n = strlen(s->ex[i].path);
        if (s->ex[i].ro != ro || s->ex[i].file != file || strncmp(real, s->ex[i].path, n) != 0)
            continue;
        if (file && real[n] != '\0')
            continue;
        if (real[n] == '\0' || (real[n] == '/' && n > 1))
            e = &s->ex[i], rest = real + n;
        else if (n == 1)
            e = &s->ex[i], rest = real; /* the root folder shared */
    }
    int r = 0;
    if (!e)
        r = export_new(s, real, ro, file, &e, msg, msglen);
    if (r == 0 && (size_t)snprintf(out, outlen, "%s%s", e->mnt, rest) >= outlen)
        r = -ENAMETOOLONG;
    pthread_mutex_unlock(&s->lock);
    if (r == 0)
        atomic_store(&s->last_file_activity, mono_s());
    return r;
}

static int connect_docker(void *arg, char *err, size_t errlen)
{
    struct session *s = arg;
    int fd;
    int r = ctl_open_unix(s->ctl, s->docker_socket, &fd, err, errlen);
    return r < 0 ? r : fd;
}

/* ---- a small docker API client over the tunnel (events, inspect, container count) ---- */

/* GET path with HTTP/1.0 (no chunking: the answer ends at EOF); the body in *body (malloc'd). */
static int docker_get(struct session *s, const char *path, char **body)
{
    char err[256], req[1024];
    int fd = connect_docker(s, err, sizeof(err));
    if (fd < 0)
        return fd;
    snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: docker\r\n\r\n", path);
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
        close(fd);
        return -EIO;
    }
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    ssize_t k;
    while (buf && (k = read(fd, buf + n, cap - n - 1)) > 0) {
        n += (size_t)k;
        if (n + 1 == cap) {
            char *nb = cap < (64u << 20) ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    close(fd);
    if (!buf)
        return -ENOMEM;
    buf[n] = '\0';
    char *b = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.", 7) != 0 || !b || atoi(buf + 9) != 200) {
        free(buf);
        return -EIO;
    }
    memmove(buf, b + 4, strlen(b + 4) + 1);
    *body = buf;
    return 0;
}

static void *forward_conn(void *arg);

struct fconn {
    struct session *s;
    int cfd, port;
};

/* Connections of published ports in flight (their threads are detached): counted, so that the
 * tunnel is not stopped under them; their laptop sockets are shut down at the end. */
#define MAX_FCONNS 256
static pthread_mutex_t fc_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fc_cond = PTHREAD_COND_INITIALIZER;
static int fc_fds[MAX_FCONNS], fc_n;

static bool fconn_add(int fd)
{
    pthread_mutex_lock(&fc_lock);
    bool ok = fc_n < MAX_FCONNS;
    if (ok)
        fc_fds[fc_n++] = fd;
    pthread_mutex_unlock(&fc_lock);
    return ok;
}

static void fconn_del(int fd)
{
    pthread_mutex_lock(&fc_lock);
    for (int i = 0; i < fc_n; i++)
        if (fc_fds[i] == fd) {
            fc_fds[i] = fc_fds[--fc_n];
            break;
        }
    pthread_cond_broadcast(&fc_cond);
    pthread_mutex_unlock(&fc_lock);
}

/* End every published-port connection and wait (bounded) for their threads to let go. */
static void forward_conns_end(struct session *s)
{
    (void)s;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    pthread_mutex_lock(&fc_lock);
    for (int i = 0; i < fc_n; i++)
        shutdown(fc_fds[i], SHUT_RDWR);
    while (fc_n > 0 && pthread_cond_timedwait(&fc_cond, &fc_lock, &ts) == 0)
        ;
    pthread_mutex_unlock(&fc_lock);
}

/* accept loop of one published port's laptop listener */
static void *forward_main(void *arg)
{
    struct forward *f = arg;
    for (;;) {
        int c = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            break; /* closed */
        }
        struct fconn *fc = malloc(sizeof(*fc));
        pthread_t t;
        if (!fc) {
            close(c);
            continue;
        }
        *fc = (struct fconn){f->s, c, f->port};
        if (atomic_load(&f->s->stop) || !fconn_add(c)) {
            close(c);
            free(fc);
            continue;
        }
        if (pthread_create(&t, NULL, forward_conn, fc) != 0) {
            fconn_del(c);
            close(c);
            free(fc);
            continue;
        }
        pthread_detach(t);
    }
    return NULL;
}

/* copy both ways between the laptop connection and a direct-tcpip channel's socket */
static void *forward_conn(void *arg)
{
    struct fconn *fc = arg;
    char err[256];
    int up;
    if (atomic_load(&fc->s->stop) ||
        ctl_open_tcp(fc->s->ctl, "127.0.0.1", fc->port, &up, err, sizeof(err)) != 0) {
        if (fc->s->verbose && !atomic_load(&fc->s->stop))
            say(fc->s, "port %d: %s", fc->port, err);
        fconn_del(fc->cfd);
        close(fc->cfd);
        free(fc);
        return NULL;
    }
    struct pollfd pf[2] = {{.fd = fc->cfd, .events = POLLIN}, {.fd = up, .events = POLLIN}};
    bool open_in[2] = {true, true};
    char buf[65536];
    while (open_in[0] || open_in[1]) {
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (!open_in[i] || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t n = read(pf[i].fd, buf, sizeof(buf));
            if (n <= 0) {
                open_in[i] = false;
                pf[i].fd = -1;
                shutdown(i == 0 ? up : fc->cfd, SHUT_WR);
                continue;
            }
            int to = i == 0 ? up : fc->cfd;
            for (ssize_t off = 0; off < n;) {
                ssize_t w = write(to, buf + off, (size_t)(n - off));
                if (w <= 0) {
                    open_in[0] = open_in[1] = false;
                    break;
                }
                off += w;
            }
        }
    }
    close(up);
    fconn_del(fc->cfd);
    close(fc->cfd);
    free(fc);
    return NULL;
}

static void forward_open(struct session *s, const char *container, int port)
{
    if (atomic_load(&s->stop))
        return;
    pthread_mutex_lock(&s->port_lock);
    for (int i = 0; i < MAX_FORWARDS; i++)
        if (s->fw[i].used && s->fw[i].port == port) {
            pthread_mutex_unlock(&s->port_lock);
            return; /* already forwarded */
        }
    int slot = -1;
    for (int i = 0; i < MAX_FORWARDS && slot < 0; i++)
        if (!s->fw[i].used)
            slot = i;
    if (slot < 0) {
        pthread_mutex_unlock(&s->port_lock);
        say(s, "port %d: too many published ports", port);
        return;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(lfd, 64) != 0) {
        say(s, "cannot publish port %d on this machine: %s", port, strerror(errno));
        if (lfd >= 0)
            close(lfd);
        pthread_mutex_unlock(&s->port_lock);
        return;
    }
    struct forward *f = &s->fw[slot];
    *f = (struct forward){.s = s, .port = port, .lfd = lfd, .used = true};
    snprintf(f->container, sizeof(f->container), "%s", container);
    if (pthread_create(&f->thr, NULL, forward_main, f) != 0) {
        close(lfd);
        f->used = false;
    } else {
        say(s, "port %d of container %.12s published on 127.0.0.1:%d", port, container, port);
    }
    pthread_mutex_unlock(&s->port_lock);
}

static void forward_close_for(struct session *s, const char *container)
{
    pthread_mutex_lock(&s->port_lock);
    for (int i = 0; i < MAX_FORWARDS; i++) {
        struct forward *f = &s->fw[i];
        if (!f->used || (container && strcmp(f->container, container) != 0))
            continue;
        shutdown(f->lfd, SHUT_RDWR);
        pthread_join(f->thr, NULL);
        close(f->lfd);
        if (container)
            say(s, "port %d of container %.12s closed", f->port, container);
        f->used = false;
    }
    pthread_mutex_unlock(&s->port_lock);
}

static void container_started(struct session *s, const char *id)
{
    char path[256], *body = NULL;
    snprintf(path, sizeof(path), "/containers/%.80s/json", id);
    if (docker_get(s, path, &body) != 0)
        return;
    json_t *root = json_loads(body, 0, NULL);
    free(body);
    json_t *ports = json_object_get(json_object_get(root, "NetworkSettings"), "Ports");
    const char *key;
    json_t *val;
    json_object_foreach(ports, key, val)
    {
        size_t i;
        json_t *b;
        json_array_foreach(val, i, b)
        {
            const char *hp = json_string_value(json_object_get(b, "HostPort"));
            const char *ip = json_string_value(json_object_get(b, "HostIp"));
            if (hp && atoi(hp) > 0 && (!ip || !strchr(ip, ':'))) /* IPv4 bindings */
                forward_open(s, id, atoi(hp));
        }
    }
    json_decref(root);
}

/* How many containers run now; with 'ports', also publish the ports of each (at the start of
 * the events stream: containers started before it). */
static void count_running(struct session *s, bool ports)
{
    char *body = NULL;
    if (docker_get(s, "/containers/json", &body) != 0)
        return;
    json_t *root = json_loads(body, 0, NULL);
    free(body);
    if (json_is_array(root))
        atomic_store(&s->running, (int)json_array_size(root));
    size_t i;
    json_t *c;
    json_array_foreach(root, i, c)
    {
        const char *id = json_string_value(json_object_get(c, "Id"));
        if (id && ports)
            container_started(s, id);
    }
    json_decref(root);
}

/* The docker events stream (start/die of containers): published ports and the idle count. */
static void *events_main(void *arg)
{
    struct session *s = arg;
    while (!atomic_load(&s->stop)) {
        char err[256];
        int fd = connect_docker(s, err, sizeof(err));
        if (fd < 0) {
            sleep(1);
            continue;
        }
        count_running(s, true);
        static const char req[] =
            "GET /events?filters=%7B%22type%22%3A%5B%22container%22%5D%2C%22event%22%3A%5B%22start"
            "%22%2C%22die%22%5D%7D HTTP/1.0\r\nHost: docker\r\n\r\n";
        if (write(fd, req, sizeof(req) - 1) != (ssize_t)sizeof(req) - 1) {
            close(fd);
            sleep(1);
            continue;
        }
        /* one JSON object a line after the head; every 2 s without an event the running
         * containers are counted again (a "die" can come before the container leaves the list) */
        char buf[65536];
        size_t n = 0;
        bool body = false;
        for (;;) {
            if (atomic_load(&s->stop))
                break;
            struct pollfd pf = {.fd = fd, .events = POLLIN};
            int pr = poll(&pf, 1, 2000);
            if (pr == 0) {
                count_running(s, false);
                continue;
            }
            if (pr < 0 && errno == EINTR)
                continue;
            ssize_t k = pr < 0 ? -1 : read(fd, buf + n, sizeof(buf) - 1 - n);
            if (k <= 0)
                break;
            n += (size_t)k;
            buf[n] = '\0';
            char *line = buf, *nl;
            while ((nl = strchr(line, '\n'))) {
                *nl = '\0';
                if (!body) {
                    body = strcmp(line, "\r") == 0 || *line == '\0';
                } else {
                    json_t *ev = json_loads(line, 0, NULL);
                    const char *status = json_string_value(json_object_get(ev, "status"));
                    const char *id = json_string_value(json_object_get(ev, "id"));
                    if (status && id && strcmp(status, "start") == 0)
                        container_started(s, id);
                    else if (status && id && strcmp(status, "die") == 0)
                        forward_close_for(s, id);
                    if (status && id)
                        count_running(s, false);
                    json_decref(ev);
                }
                line = nl + 1;
            }
            n = strlen(line);
            memmove(buf, line, n + 1);
            if (n == sizeof(buf) - 1)
                n = 0; /* a line longer than any event: dropped */
        }
        close(fd);
        if (!atomic_load(&s->stop))
            sleep(1);
    }
    return NULL;
}

/* ---- status ---- */

/* The cloud side's STATUS document (docs/connect.md), or NULL when there are no shares or it
 * cannot be asked. s->lock held. */
static json_t *cloud_status(struct session *s)
{
    char *reply = malloc(LINE_MAX_LEN), *doc = NULL;
    json_t *root = NULL;
    if (reply && s->nex > 0 && sup_call(s, "STATUS", reply, LINE_MAX_LEN) == 0 &&
        strncmp(reply, "STATUS ", 7) == 0 && unb64(reply + 7, &doc) == 0)
        root = json_loads(doc, 0, NULL);
    free(doc);
    free(reply);
    return root;
}

/* Is the cloud side's mount of share 'name' live (its change feed applied)? From cloud_status. */
static bool mount_live(json_t *status, const char *name)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(status, "mounts"), i, m)
    {
        const char *n = json_string_value(json_object_get(m, "name"));
        if (n && strcmp(n, name) == 0)
            return json_is_true(json_object_get(m, "live"));
    }
    return false;
}

static char *status_json(struct session *s)
{
    struct ctl_stats cs;
    struct dp_stats ds;
    ctl_stats(s->ctl, &cs);
    dp_get_stats(s->dp, &ds);
    json_t *o = json_object(), *ex = json_array();
    json_object_set_new(o, "host", json_string(s->host));
    json_object_set_new(o, "session", json_string(s->id));
    json_object_set_new(o, "connected", json_boolean(cs.connected));
    json_object_set_new(o, "reconnects", json_integer((json_int_t)cs.reconnects));
    json_object_set_new(o, "docker_host", json_sprintf("unix://%s/docker.sock", s->state));
    json_object_set_new(o, "docker_requests", json_integer((json_int_t)ds.requests));
    json_object_set_new(o, "bind_rewrites", json_integer((json_int_t)ds.rewrites));
    json_object_set_new(o, "containers_running", json_integer(atomic_load(&s->running)));
    json_object_set_new(o, "idle_timeout_s", json_integer(s->idle_s));
    pthread_mutex_lock(&s->lock);
    json_t *cloud = cloud_status(s);
    for (int i = 0; i < s->nex; i++) {
        struct fa_stats fs;
        fa_get_stats(s->ex[i].fa, &fs);
        /* live: the cloud side's mount follows the change feed (before that, and while the
         * feed is down, it is served over SFTP with the TTL) */
        json_array_append_new(ex, json_pack("{s:s,s:s,s:b,s:i,s:I,s:b}", "laptop", s->ex[i].path,
                                            "cloud", s->ex[i].mnt, "ro", s->ex[i].ro, "remote_port",
                                            s->ex[i].rport, "feed_batches", (json_int_t)fs.batches,
                                            "live", mount_live(cloud, s->ex[i].name)));
    }
    json_decref(cloud);
    pthread_mutex_unlock(&s->lock);
    json_object_set_new(o, "shares", ex);
    pthread_mutex_lock(&s->port_lock);
    json_t *ports = json_array();
    for (int i = 0; i < MAX_FORWARDS; i++)
        if (s->fw[i].used)
            json_array_append_new(ports, json_integer(s->fw[i].port));
    pthread_mutex_unlock(&s->port_lock);
    json_object_set_new(o, "ports", ports);
    char *out = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return out;
}

static int state_dir(char *out, size_t len)
{
    const char *run = getenv("XDG_RUNTIME_DIR"), *home = getenv("HOME");
    if (geteuid() == 0)
        snprintf(out, len, "/run/offload/connect");
    else if (run && *run)
        snprintf(out, len, "%s/offload/connect", run);
    else
        snprintf(out, len, "%s/.offload/connect", home ? home : "/tmp");
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s", out);
    for (char *c = p + 1; *c; c++)
        if (*c == '/') {
            *c = '\0';
            mkdir(p, 0700);
            *c = '/';
        }
    if (mkdir(p, 0700) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static int ctl_sock_connect(const char *state)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s/connect.sock", state);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

/* one request per connection: "status" or "disconnect" */
static void serve_ctl_request(struct session *s)
{
    int c = accept4(s->ctl_sock, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return;
    char req[64] = "";
    struct pollfd pf = {.fd = c, .events = POLLIN};
    if (poll(&pf, 1, 2000) == 1) {
        ssize_t n = read(c, req, sizeof(req) - 1);
        req[n > 0 ? n : 0] = '\0';
    }
    if (strncmp(req, "status", 6) == 0) {
        char *j = status_json(s);
        if (j) {
            dprintf(c, "%s\n", j);
            free(j);
        }
    } else if (strncmp(req, "disconnect", 10) == 0) {
        snprintf(s->end_reason, sizeof(s->end_reason), "disconnected by 'offload disconnect'");
        atomic_store(&s->stop, 1);
        dprintf(c, "ok\n");
    }
    close(c);
}

/* Ask the cloud side how its mounts are; one that died (killed, crashed) is mounted again. A
 * container that had it bound keeps a dead bind until it is restarted: that is said. */
static void check_mounts(struct session *s)
{
    char *reply = malloc(LINE_MAX_LEN);
    if (!reply)
        return;
    pthread_mutex_lock(&s->lock);
    json_t *root = cloud_status(s);
    if (root == NULL) {
        pthread_mutex_unlock(&s->lock);
        free(reply);
        return;
    }
    json_t *mounts = json_object_get(root, "mounts");
    for (int k = 0; k < s->nex; k++) {
        struct export *e = &s->ex[k];
        bool up = false, known = false;
        size_t i;
        json_t *m;
        json_array_foreach(mounts, i, m)
        {
            const char *name = json_string_value(json_object_get(m, "name"));
            if (name && strcmp(name, e->name) == 0) {
                known = true;
                up = json_is_true(json_object_get(m, "mounted"));
            }
        }
        if (up || !e->req)
            continue;
        /* its mount died, or the cloud side's session is a new one (the laptop was away longer
         * than the linger time): mount it again at the same place */
        say(s, "the cloud side's mount of '%s' %s; mounting it again%s", e->path,
            known ? "ended" : "is gone (a new session there)",
            known ? " (containers that bind it must be restarted)" : "");
        if (sup_call(s, e->req, reply, LINE_MAX_LEN) != 0 || strncmp(reply, "MOUNTED ", 8) != 0)
            say(s, "cannot mount '%s' again: %.200s", e->path, reply);
    }
    json_decref(root);
    pthread_mutex_unlock(&s->lock);
    free(reply);
}

/* The foreground status line: printed when what it says changes. */
static void status_line(struct session *s)
{
    static char last[256];
    char now[256];
    struct ctl_stats cs;
    struct dp_stats ds;
    ctl_stats(s->ctl, &cs);
    dp_get_stats(s->dp, &ds);
    pthread_mutex_lock(&s->lock);
    int nex = s->nex;
    pthread_mutex_unlock(&s->lock);
    int ports = 0;
    pthread_mutex_lock(&s->port_lock);
    for (int i = 0; i < MAX_FORWARDS; i++)
        ports += s->fw[i].used;
    pthread_mutex_unlock(&s->port_lock);
    xfmt(now, sizeof(now), "%s: link %s; %d share%s, %d container%s running, %d port%s", s->host,
         cs.connected ? "up" : "down, reconnecting", nex, nex == 1 ? "" : "s",
         atomic_load(&s->running), atomic_load(&s->running) == 1 ? "" : "s", ports,
         ports == 1 ? "" : "s");
    if (strcmp(now, last) != 0) {
        say(s, "%s", now);
        snprintf(last, sizeof(last), "%s", now);
    }
}

/* ---- docker context ---- */

static int run_quiet(char *const argv[])
{
    pid_t p = fork();
    if (p == 0) {
        int fd = open("/dev/null", O_RDWR);
        dup2(fd, 1);
        dup2(fd, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    int st;
    if (p < 0 || waitpid(p, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool context_set(struct session *s)
{
    char host[PATH_MAX + 32];
    snprintf(host, sizeof(host), "host=unix://%s/docker.sock", s->state);
    char *rm[] = {"docker", "context", "rm", "-f", "offload", NULL};
    char *mk[] = {"docker",
                  "context",
                  "create",
                  "offload",
                  "--description",
                  "offload connect: a cloud engine with this machine's files",
                  "--docker",
                  host,
                  NULL};
    char *use[] = {"docker", "context", "use", "offload", NULL};
    char *def[] = {"docker", "context", "use", "default", NULL};
    run_quiet(def);
    run_quiet(rm);
    return run_quiet(mk) == 0 && run_quiet(use) == 0;
}

static void context_unset(void)
{
    char *def[] = {"docker", "context", "use", "default", NULL};
    char *rm[] = {"docker", "context", "rm", "-f", "offload", NULL};
    run_quiet(def);
    run_quiet(rm);
}

/* ---- offload connect ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: offload connect [user@]HOST[:port] [options]\n"
            "\n"
            "Connect to a cloud host's docker engine over ssh. While connected, the docker CLI\n"
            "and compose work unchanged against it (docker context 'offload'), and every bind\n"
            "mount source (-v /laptop/dir:/app, --mount type=bind) is served from this machine,\n"
            "lazily and live, confined to what was bound. Published ports (-p) answer on this\n"
            "machine's 127.0.0.1.\n"
            "\n"
            "options:\n"
            "  -F, --ssh-config FILE      ssh config file (default: ~/.ssh/config)\n"
            "  -i, --identity FILE        identity (private key) file\n"
            "  -p, --port PORT            ssh port\n"
            "      --idle DURATION        end after this long without docker API calls, running\n"
            "                             containers or file activity (default 30m; 0: never)\n"
            "      --detach               return once connected; the session runs on\n"
            "      --print-env            print DOCKER_HOST for shells; leave docker contexts\n"
            "      --remote-offload PATH  the offload binary on the cloud host (default: offload)\n"
            "      --docker-socket PATH   the engine's socket on the cloud host\n"
            "                             (default: /var/run/docker.sock)\n"
            "      --remote-base DIR      session folders on the cloud host\n"
            "                             (default: /run/offload/sessions)\n"
            "  -v, --verbose              log every share, port and reconnect\n"
            "  -h, --help                 this text\n"
            "\n"
            "See also: offload status [--json], offload disconnect.\n");
}

static void on_link(void *arg, const struct ctl_event *ev)
{
    struct session *s = arg;
    switch (ev->kind) {
    case CTL_EV_LOST:
        say(s,
            "lost the link to %s (%s); the shares keep serving what the cloud caches, "
            "reconnecting",
            s->host, ev->msg ? ev->msg : "?");
        break;
    case CTL_EV_RETRY:
        if (s->verbose)
            say(s, "reconnecting to %s: %s (next try in %d ms)", s->host, ev->msg ? ev->msg : "?",
                ev->delay_ms);
        break;
    case CTL_EV_RECONNECTED:
        say(s, "reconnected to %s", s->host);
        atomic_store(&s->reattach, 1);
        break;
    case CTL_EV_GAVE_UP:
        say(s, "%s", ev->msg ? ev->msg : "the link cannot be restored");
        snprintf(s->end_reason, sizeof(s->end_reason), "%s", ev->msg ? ev->msg : "link failed");
        atomic_store(&s->stop, 1);
        break;
    case CTL_EV_EXEC_STDERR:
        if (s->verbose && ev->msg)
            say(s, "%s: %s", s->host, ev->msg);
        break;
    case CTL_EV_EXEC_EXITED:
        pthread_mutex_lock(&s->msg_lock);
        snprintf(s->exec_msg, sizeof(s->exec_msg), "%s", ev->msg ? ev->msg : "");
        pthread_mutex_unlock(&s->msg_lock);
        break;
    case CTL_EV_RFORWARD:
        if (!ev->ok)
            say(s, "the cloud host refused the forward of port %d for now: %s", ev->port,
                ev->msg ? ev->msg : "?");
        break;
    default:
        break;
    }
}

int cmd_connect(int argc, char **argv)
{
    static const struct option longopts[] = {{"ssh-config", required_argument, NULL, 'F'},
                                             {"identity", required_argument, NULL, 'i'},
                                             {"port", required_argument, NULL, 'p'},
                                             {"idle", required_argument, NULL, 'I'},
                                             {"detach", no_argument, NULL, 'D'},
                                             {"print-env", no_argument, NULL, 'E'},
                                             {"remote-offload", required_argument, NULL, 'R'},
                                             {"docker-socket", required_argument, NULL, 'S'},
                                             {"remote-base", required_argument, NULL, 'B'},
                                             {"verbose", no_argument, NULL, 'v'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    static struct session sess;
    struct session *s = &sess;
    const char *ssh_config = NULL, *identity = NULL;
    int port = 0, c, idle_ms = 30 * 60 * 1000, rc = 1;
    bool detach = false, print_env = false, ctx = false;
    char err[1024];
    pthread_t ev_thr;
    bool ev_started = false;

    memset(s, 0, sizeof(*s));
    snprintf(s->remote_offload, sizeof(s->remote_offload), "offload");
    snprintf(s->docker_socket, sizeof(s->docker_socket), "/var/run/docker.sock");
    s->ctl_sock = -1;
    s->sup_fd = -1;
    while ((c = getopt_long(argc, argv, "F:i:p:vh", longopts, NULL)) != -1) {
        switch (c) {
        case 'F':
            ssh_config = optarg;
            break;
        case 'i':
            identity = optarg;
            break;
        case 'p':
            port = atoi(optarg);
            break;
        case 'I':
            if (strcmp(optarg, "0") == 0)
                idle_ms = 0;
            else if (parse_duration_ms(optarg, &idle_ms) != 0) {
                fprintf(stderr, "offload connect: bad --idle '%s' (e.g. 30m, 90s)\n", optarg);
                return 2;
            }
            break;
        case 'D':
            detach = true;
            break;
        case 'E':
            print_env = true;
            break;
        case 'R':
            snprintf(s->remote_offload, sizeof(s->remote_offload), "%s", optarg);
            break;
        case 'S':
            snprintf(s->docker_socket, sizeof(s->docker_socket), "%s", optarg);
            break;
        case 'B':
            snprintf(s->base, sizeof(s->base), "%s", optarg);
            break;
        case 'v':
            s->verbose++;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind + 1 != argc) {
        usage(stderr);
        return 2;
    }
    snprintf(s->host, sizeof(s->host), "%s", argv[optind]);
    s->idle_s = idle_ms / 1000;
    for (const char *p = s->remote_offload; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              strchr("/._-+", *p))) {
            fprintf(stderr, "offload connect: --remote-offload: unusual character '%c'\n", *p);
            return 2;
        }
    if (state_dir(s->state, sizeof(s->state)) != 0) {
        fprintf(stderr, "offload connect: cannot create '%s': %s\n", s->state, strerror(errno));
        return 1;
    }
    int old = ctl_sock_connect(s->state);
    if (old >= 0) {
        close(old);
        fprintf(stderr, "offload connect: a session is already connected (see 'offload status'; "
                        "'offload disconnect' ends it)\n");
        return 1;
    }
    char p[PATH_MAX + 32];
    xfmt(p, sizeof(p), "%s/exports", s->state);
    mkdir(p, 0700);
    int ready_pipe = -1;
    if (detach) {
        /* fork before any thread exists; the parent returns once the child is connected */
        int pfd[2];
        char log[PATH_MAX + 32];
        xfmt(log, sizeof(log), "%s/connect.log", s->state);
        if (pipe2(pfd, O_CLOEXEC) != 0)
            return 1;
        pid_t pid = fork();
        if (pid < 0)
            return 1;
        if (pid > 0) {
            char b;
            close(pfd[1]);
            ssize_t k = read(pfd[0], &b, 1);
            close(pfd[0]);
            if (k == 1) {
                if (print_env)
                    printf("export DOCKER_HOST=unix://%s/docker.sock\n", s->state);
                fprintf(stderr,
                        "offload connect: connected to %s in the background (log %s); "
                        "'offload status' shows it, 'offload disconnect' ends it\n",
                        s->host, log);
                return 0;
            }
            FILE *f = fopen(log, "r");
            char line[1024];
            while (f && fgets(line, sizeof(line), f))
                fputs(line, stderr);
            if (f)
                fclose(f);
            return 1;
        }
        close(pfd[0]);
        ready_pipe = pfd[1];
        setsid();
        int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
        int lf = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (nul >= 0)
            dup2(nul, 0);
        if (lf >= 0) {
            dup2(lf, 1);
            dup2(lf, 2);
        }
        print_env = false; /* the parent printed it */
    }
    {
        uint8_t rnd[8];
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || read(fd, rnd, sizeof(rnd)) != (ssize_t)sizeof(rnd)) {
            fprintf(stderr, "offload connect: no randomness\n");
            return 1;
        }
        close(fd);
        for (int i = 0; i < 8; i++)
            sprintf(s->id + 2 * i, "%02x", rnd[i]);
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->port_lock, NULL);
    pthread_mutex_init(&s->msg_lock, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    /* Ctrl-C, SIGTERM and SIGHUP end the session cleanly; every thread started from here on
     * has them blocked (no EINTR in the tunnel, the proxy or the forwards), the main thread
     * takes them once everything is up */
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigset_t block, oldmask;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &oldmask);

    /* the tunnel, and the cloud side's supervisor on its exec channel */
    char remote_cmd[PATH_MAX * 2 + 128];
    xfmt(remote_cmd, sizeof(remote_cmd), "%s mountd --session %s%s%s", s->remote_offload, s->id,
         *s->base ? " --base " : "", s->base);
    struct ctl_opts co = {.ssh = {.dest = s->host,
                                  .port = port,
                                  .ssh_config = ssh_config,
                                  .identity = identity,
                                  .connect_timeout_s = 10},
                          .exec_cmd = remote_cmd,
                          .status = on_link,
                          .status_arg = s};
    if (ctl_start(&co, &s->ctl, err, sizeof(err)) != 0) {
        fprintf(stderr, "offload connect: %s\n", err);
        return 1;
    }
    pthread_mutex_lock(&s->lock);
    int r = sup_attach(s, err, sizeof(err));
    pthread_mutex_unlock(&s->lock);
    if (r != 0) {
        fprintf(stderr, "offload connect: %s\n", err);
        goto out;
    }

    /* the docker API proxy */
    xfmt(p, sizeof(p), "%s/docker.sock", s->state);
    struct dp_config dc = {.listen_path = p,
                           .connect_upstream = connect_docker,
                           .connect_arg = s,
                           .rewrite_bind = rewrite_bind,
                           .rewrite_arg = s,
                           .verbose = s->verbose > 1};
    if (!(s->dp = dp_start(&dc, err, sizeof(err)))) {
        fprintf(stderr, "offload connect: %s\n", err);
        goto out;
    }
    /* the control socket for status and disconnect */
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    xfmt(a.sun_path, sizeof(a.sun_path), "%s/connect.sock", s->state);
    unlink(a.sun_path);
    s->ctl_sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->ctl_sock < 0 || bind(s->ctl_sock, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        chmod(a.sun_path, 0600) != 0 || listen(s->ctl_sock, 8) != 0) {
        fprintf(stderr, "offload connect: cannot listen on '%s': %s\n", a.sun_path,
                strerror(errno));
        goto out;
    }
    if (print_env) {
        printf("export DOCKER_HOST=unix://%s/docker.sock\n", s->state);
    } else if (context_set(s)) {
        ctx = true;
    } else {
        fprintf(stderr,
                "offload connect: no docker context made (is the docker CLI installed?); use "
                "DOCKER_HOST=unix://%s/docker.sock\n",
                s->state);
    }
    if (pthread_create(&ev_thr, NULL, events_main, s) == 0)
        ev_started = true;
    atomic_store(&s->last_file_activity, mono_s());
    fprintf(stderr, "offload connect: connected to %s (session %s); docker %s; idle timeout %s\n",
            s->host, s->id,
            ctx         ? "context 'offload' selected"
            : print_env ? "via DOCKER_HOST"
                        : "socket ready",
            idle_ms ? "on" : "off");
    fflush(stdout);

    if (ready_pipe >= 0) {
        (void)!write(ready_pipe, "k", 1);
        close(ready_pipe);
        ready_pipe = -1;
    }

    pthread_sigmask(SIG_SETMASK, &oldmask, NULL); /* the main thread alone takes the signals */
    long long last_batches = -1;
    unsigned ticks = 0;
    while (!atomic_load(&s->stop) && !got_signal) {
        struct pollfd pf = {.fd = s->ctl_sock, .events = POLLIN};
        if (poll(&pf, 1, 1000) == 1)
            serve_ctl_request(s);
        if (++ticks % 5 == 0)
            check_mounts(s);
        if (!detach)
            status_line(s);
        if (atomic_exchange(&s->reattach, 0)) {
            pthread_mutex_lock(&s->lock);
            int ar = sup_attach(s, err, sizeof(err));
            pthread_mutex_unlock(&s->lock);
            if (ar != 0) {
                say(s, "%s (trying again)", err);
                atomic_store(&s->reattach, 1);
            } else {
                check_mounts(s);
            }
        }
        /* file activity: any change the shares' agents sent */
        long long batches = 0;
        pthread_mutex_lock(&s->lock);
        for (int i = 0; i < s->nex; i++) {
            struct fa_stats fs;
            fa_get_stats(s->ex[i].fa, &fs);
            batches += (long long)(fs.batches + fs.bytes_sent);
        }
        pthread_mutex_unlock(&s->lock);
        if (batches != last_batches) {
            last_batches = batches;
            atomic_store(&s->last_file_activity, mono_s());
        }
        if (idle_ms > 0) {
            long long last = dp_last_activity(s->dp);
            long long fa = atomic_load(&s->last_file_activity);
            if (fa > last)
                last = fa;
            if (dp_active(s->dp) == 0 && atomic_load(&s->running) == 0 &&
                mono_s() - last >= idle_ms / 1000) {
                snprintf(s->end_reason, sizeof(s->end_reason),
                         "idle for %d s (no docker API call, running container or file activity)",
                         idle_ms / 1000);
                break;
            }
        }
    }
    if (got_signal)
        snprintf(s->end_reason, sizeof(s->end_reason), "%s", strsignal(got_signal));
    rc = 0;
out:
    atomic_store(&s->stop, 1);
    if (*s->end_reason)
        say(s, "ending the session: %s", s->end_reason);
    /* nothing new reaches the cloud side from here on: the proxy goes first (no bind is rewritten
     * to a mount that is about to go), then the events thread and the port forwards, then the
     * cloud side's session, then the tunnel they all ran over */
    if (s->dp)
        dp_stop(s->dp);
    if (ev_started)
        pthread_join(ev_thr, NULL); /* it checks 'stop' at least every 2 s */
    forward_close_for(s, NULL);
    forward_conns_end(s);
    if (s->sup_fd >= 0) {
        char reply[256];
        pthread_mutex_lock(&s->lock);
        if (sup_call(s, "END", reply, sizeof(reply)) != 0)
            say(s, "the cloud side did not confirm the end; it removes the session by itself "
                   "after its linger time");
        pthread_mutex_unlock(&s->lock);
    }
    if (ctx)
        context_unset();
    if (s->ctl)
        ctl_stop(s->ctl);
    s->ctl = NULL;
    for (int i = 0; i < s->nex; i++)
        export_free(&s->ex[i]);
    if (s->sup_fd >= 0)
        close(s->sup_fd);
    if (s->ctl_sock >= 0) {
        close(s->ctl_sock);
        xfmt(p, sizeof(p), "%s/connect.sock", s->state);
        unlink(p);
    }
    xfmt(p, sizeof(p), "%s/exports", s->state);
    rmdir(p);
    return rc;
}

/* ---- offload status / disconnect ---- */

static int ask(const char *what, char *out, size_t len)
{
    char state[PATH_MAX];
    if (state_dir(state, sizeof(state)) != 0)
        return -errno;
    int fd = ctl_sock_connect(state);
    if (fd < 0)
        return fd;
    if (write(fd, what, strlen(what)) < 0) {
        close(fd);
        return -errno;
    }
    size_t n = 0;
    ssize_t k;
    while (n + 1 < len && (k = read(fd, out + n, len - n - 1)) > 0)
        n += (size_t)k;
    out[n] = '\0';
    close(fd);
    return 0;
}

int cmd_status(int argc, char **argv)
{
    bool js = argc > 1 && strcmp(argv[1], "--json") == 0;
    if (argc > 1 && !js) {
        fprintf(stderr, "usage: offload status [--json]\n");
        return 2;
    }
    char buf[1 << 16];
    if (ask("status", buf, sizeof(buf)) != 0) {
        if (js)
            printf("{\"connected\":false}\n");
        else
            printf("not connected (start a session with 'offload connect HOST')\n");
        return 1;
    }
    if (js) {
        fputs(buf, stdout);
        return 0;
    }
    json_t *o = json_loads(buf, 0, NULL);
    if (!o) {
        fputs(buf, stdout);
        return 1;
    }
    printf("connected to %s (session %s)%s\n", json_string_value(json_object_get(o, "host")),
           json_string_value(json_object_get(o, "session")),
           json_is_true(json_object_get(o, "connected")) ? "" : " - link down, reconnecting");
    printf("docker: %s, %lld API requests, %lld containers running\n",
           json_string_value(json_object_get(o, "docker_host")),
           (long long)json_integer_value(json_object_get(o, "docker_requests")),
           (long long)json_integer_value(json_object_get(o, "containers_running")));
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(o, "shares"), i, e)
    {
        printf("share: %s -> %s%s%s\n", json_string_value(json_object_get(e, "laptop")),
               json_string_value(json_object_get(e, "cloud")),
               json_is_true(json_object_get(e, "ro")) ? " (read-only)" : "",
               json_is_true(json_object_get(e, "live"))
                   ? ", live"
                   : ", not live yet (served over SFTP with the TTL until the feed is in)");
    }
    json_array_foreach(json_object_get(o, "ports"), i, e)
    {
        printf("port: 127.0.0.1:%lld -> cloud\n", (long long)json_integer_value(e));
    }
    json_decref(o);
    return 0;
}

int cmd_disconnect(int argc, char **argv)
{
    (void)argv;
    if (argc > 1) {
        fprintf(stderr, "usage: offload disconnect\n");
        return 2;
    }
    char buf[64];
    if (ask("disconnect", buf, sizeof(buf)) != 0) {
        fprintf(stderr, "offload disconnect: not connected\n");
        return 1;
    }
    /* wait for the session to end (its control socket goes away) */
    char state[PATH_MAX];
    state_dir(state, sizeof(state));
    for (int i = 0; i < 600; i++) {
        int fd = ctl_sock_connect(state);
        if (fd < 0)
            return 0;
        close(fd);
        usleep(100000);
    }
    fprintf(stderr, "offload disconnect: the session did not end within 60 s\n");
    return 1;
}
