/* session_sup.c - the session supervisor of `offload mountd` (see session_sup.h). */
#include "session_sup.h"

#include "offload.h"

#include "mount.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTO_VERSION "1"
#define MAX_MOUNTS    32
#define MOUNT_WAIT_MS 30000 /* EXPORT: bound on the mount coming up */
#define FLUSH_WAIT_MS 10000 /* session end: bound on writing back what containers wrote */
#define STOP_WAIT_MS  5000  /* a mount process's exit after its unmount */
#define STATS_WAIT_MS 500   /* one mount's counters */
#define KEY_MAX       16384 /* decoded KEY64 */
#define KNOWN_MAX     4096  /* decoded KNOWN64 */
#define OUT_MAX       (1 << 20)
#define ERRTEXT_MAX   900
#define MAX_FIELDS    8
#define DIR_MAX       3800 /* BASE/ID: room below it for the session's own paths */

enum mstate { M_STARTING, M_MOUNTED, M_DEAD };

struct mnt {
    char name[65];
    bool ro;
    bool file;      /* a single-file share: the mount follows the file's name (-o follow_replace) */
    char *args;     /* "PORT MODE KEY64 KNOWN64" as received: a repeated EXPORT is recognised */
    pid_t pid;      /* the `offload mount -f` process; 0 once reaped */
    int out_fd;     /* its stdout and stderr; -1 once closed */
    char part[512]; /* an unfinished line of that output */
    size_t partlen;
    char errtext[ERRTEXT_MAX]; /* its last error line, for ERR replies */
    enum mstate state;
    int64_t deadline; /* M_STARTING: when to give up */
    char path[PATH_MAX], stats[PATH_MAX];
};

struct sb { /* a growing string */
    char *p;
    size_t len, cap;
};

struct client {
    int fd; /* -1: no client attached */
    unsigned gen;
    bool hello, eof, skipping;
    char in[SUP_LINE_MAX];
    size_t inlen;
    struct sb out; /* replies not yet written */
};

struct sup {
    const struct sup_opts *o;
    char dir[DIR_MAX]; /* BASE/ID, resolved */
    int lfd, sigfd;
    struct client c;
    unsigned gen;
    struct mnt *m[MAX_MOUNTS];
    size_t nm;
    struct mnt *pending; /* the EXPORT whose reply is outstanding: no request is read meanwhile */
    unsigned pending_gen;
    int64_t detached_at;
    sigset_t oldmask;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void slog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void slog(const char *fmt, ...)
{
    char when[32];
    time_t t = time(NULL);
    struct tm tm;
    va_list ap;

    strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime_r(&t, &tm));
    fprintf(stderr, "%s offload mountd[%d]: ", when, (int)getpid());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

/* ---- names, base64, strings ---- */

static bool valid_token(const char *s, const char *extra)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr(extra, *p)))
            return false;
    return true;
}

bool sup_valid_id(const char *id)
{
    return valid_token(id, "_-");
}

bool sup_valid_name(const char *name)
{
    return valid_token(name, "_.-") && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Decode standard padded base64 into a new NUL-terminated buffer of at most 'max' bytes.
 * 0, -EINVAL (not base64) or -E2BIG; *out is the caller's to free. */
static int b64_decode(const char *in, size_t max, char **out, size_t *outlen)
{
    size_t n = strlen(in), o = 0;
    if (n == 0 || n % 4 != 0)
        return -EINVAL;
    if (n / 4 * 3 > max + 2)
        return -E2BIG;
    char *buf = malloc(n / 4 * 3 + 1);
    if (buf == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            const char *p = in[i + k] ? strchr(b64chars, in[i + k]) : NULL;
            if (in[i + k] == '=' && i + 4 == n && k >= 2 && (k == 3 || in[i + 3] == '=')) {
                pad++;
                v <<= 6;
            } else if (p == NULL || pad) {
                free(buf);
                return -EINVAL;
            } else {
                v = v << 6 | (uint32_t)(p - b64chars);
            }
        }
        buf[o++] = (char)(v >> 16);
        if (pad < 2)
            buf[o++] = (char)(v >> 8 & 0xff);
        if (pad < 1)
            buf[o++] = (char)(v & 0xff);
    }
    if (o > max) {
        free(buf);
        return -E2BIG;
    }
    buf[o] = '\0';
    *out = buf;
    *outlen = o;
    return 0;
}

static void b64_encode(const char *in, size_t n, char *out)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        out[o++] = b64chars[v >> 18 & 63];
        out[o++] = b64chars[v >> 12 & 63];
        out[o++] = i + 1 < n ? b64chars[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? b64chars[v & 63] : '=';
    }
    out[o] = '\0';
}

static void sb_vprintf(struct sb *b, const char *fmt, va_list ap)
{
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    if (n >= 0 && b->len + (size_t)n + 1 > b->cap) {
        size_t cap = (b->len + (size_t)n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            n = -1;
        } else {
            b->p = p;
            b->cap = cap;
        }
    }
    if (n >= 0) {
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, again);
        b->len += (size_t)n;
    }
    va_end(again);
}

static void sb_printf(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(b, fmt, ap);
    va_end(ap);
}

static void sb_json_str(struct sb *b, const char *s)
{
    sb_printf(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            sb_printf(b, "\\%c", *p);
        else if (*p < 0x20)
            sb_printf(b, "\\u%04x", *p);
        else
            sb_printf(b, "%c", *p);
    }
    sb_printf(b, "\"");
}

/* ---- files, processes, mounts ---- */

static int mkdirs(const char *path, mode_t mode)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    for (char *p = tmp + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(tmp, mode) != 0 && errno != EEXIST)
                return -errno;
            if (c == '\0')
                return 0;
            *p = c;
        }
    }
}

int sup_check_dir(const char *dir, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(dir, &st) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot use '%s': %s", dir, strerror(e));
        return -e;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "cannot use '%s': not a directory (a symlink or a file is refused)",
                 dir);
        return -ENOTDIR;
    }
    if (st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
        snprintf(err, errlen, "cannot use '%s': it must belong to uid %d and be private (0700)",
                 dir, (int)geteuid());
        return -EPERM;
    }
    return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)ftw;
    if ((flag == FTW_DP ? rmdir(path) : unlink(path)) != 0 && errno != ENOENT)
        slog("cannot remove '%s': %s", path, strerror(errno));
    return 0;
}

/* Remove 'path' and everything below it, without following links or entering other mounts. */
static void rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

/* Is 'path' a mount point? (from mountinfo: never touches the mount itself, which may hang) */
static bool is_mounted(const char *path)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char *line = NULL, mp[PATH_MAX];
    size_t cap = 0;
    bool found = false;

    while (f && !found && getline(&line, &cap, f) > 0) {
        const char *p = line;
        for (int i = 0; i < 4 && p; i++) /* the mount point is the fifth field */
            if ((p = strchr(p, ' ')) != NULL)
                p++;
        if (p == NULL)
            continue;
        size_t o = 0;
        for (; *p && *p != ' ' && o + 1 < sizeof(mp); p++) {
            if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] && p[3]) {
                mp[o++] = (char)((p[1] - '0') << 6 | (p[2] - '0') << 3 | (p[3] - '0'));
                p += 3;
            } else {
                mp[o++] = *p;
            }
        }
        mp[o] = '\0';
        found = strcmp(mp, path) == 0;
    }
    free(line);
    if (f)
        fclose(f);
    return found;
}

/* Run argv as a child: stdin /dev/null, stdout and stderr to 'out' (-1: /dev/null), signals as
 * at exec time, working directory '/'. Returns its pid or a negative errno. */
static pid_t spawn(struct sup *s, char *const argv[], int out)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid < 0 ? -errno : pid;
    signal(SIGPIPE, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    sigprocmask(SIG_SETMASK, &s->oldmask, NULL);
    int nul = open("/dev/null", O_RDWR);
    if (nul < 0 || dup2(nul, 0) < 0 || dup2(out >= 0 ? out : nul, 1) < 0 ||
        dup2(out >= 0 ? out : nul, 2) < 0 || chdir("/") != 0)
        _exit(127);
    if (strchr(argv[0], '/'))
        execv(argv[0], argv);
    else
        execvp(argv[0], argv);
    fprintf(stderr, "offload mountd: cannot run '%s': %s\n", argv[0], strerror(errno));
    _exit(127);
}

/* Wait for 'pid' at most timeout_ms, then SIGKILL it. Its wait status, or -1 if it was killed. */
static int wait_bounded(pid_t pid, int timeout_ms)
{
    int64_t until = now_ms() + timeout_ms;
    int st;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        if (r < 0 && errno != EINTR)
            return -1;
        if (now_ms() >= until) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(20000);
    }
}

/* Run a command to its end (bounded: 10 s), its output to the log. 0 if it exited 0. */
static int run(struct sup *s, char *const argv[])
{
    pid_t pid = spawn(s, argv, 2);
    if (pid < 0)
        return pid;
    int st = wait_bounded(pid, 10000);
    return st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}

/* Unmount 'path': fusermount3 -u, lazily (-uz) when busy. */
static void unmount_path(struct sup *s, const char *path)
{
    if (!is_mounted(path))
        return;
    char *u[] = {"fusermount3", "-u", (char *)path, NULL};
    char *uz[] = {"fusermount3", "-uz", (char *)path, NULL};
    if (run(s, u) == 0 && !is_mounted(path))
        return;
    slog("'%s' is busy: detaching it lazily", path);
    if (run(s, uz) == 0 && !is_mounted(path))
        return;
    if (umount2(path, MNT_DETACH) != 0)
        slog("cannot unmount '%s': %s", path, strerror(errno));
}

/* The counters of a mount, from its stats socket, bounded by STATS_WAIT_MS. 0 or -errno. */
static int fetch_counters(const char *sock, char *out, size_t len)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t got = 0;
    int fd, r = 0;
    int64_t until = now_ms() + STATS_WAIT_MS;

    if (strlen(sock) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, sock, strlen(sock) + 1);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        r = -errno;
        goto out;
    }
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int64_t left = until - now_ms();
        if (left <= 0 || got + 1 >= len) {
            r = -ETIMEDOUT;
            break;
        }
        if (poll(&p, 1, (int)left) < 0 && errno != EINTR) {
            r = -errno;
            break;
        }
        ssize_t n = read(fd, out + got, len - got - 1);
        if (n == 0)
            break;
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            r = -errno;
            break;
        }
        if (n > 0)
            got += (size_t)n;
    }
    out[got] = '\0';
    while (got > 0 && (out[got - 1] == '\n' || out[got - 1] == ' '))
        out[--got] = '\0';
    if (r == 0 && (got < 2 || out[0] != '{' || out[got - 1] != '}' || strchr(out, '\n')))
        r = -EPROTO;
out:
    close(fd);
    return r;
}

/* ---- the client ---- */

static void client_close(struct sup *s, const char *why)
{
    if (s->c.fd < 0)
        return;
    slog("client detached (%s); the session lingers %d s", why, s->o->linger_ms / 1000);
    close(s->c.fd);
    s->c.fd = -1;
    s->detached_at = now_ms();
}

static void reply(struct sup *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct sup *s, const char *fmt, ...)
{
    va_list ap;
    if (s->c.fd < 0)
        return;
    if (s->c.out.len > OUT_MAX) {
        client_close(s, "it does not read its replies");
        return;
    }
    va_start(ap, fmt);
    sb_vprintf(&s->c.out, fmt, ap);
    va_end(ap);
    sb_printf(&s->c.out, "\n");
}

/* Write what is buffered; with wait_ms > 0 keep trying that long. */
static void client_flush(struct sup *s, int wait_ms)
{
    struct client *c = &s->c;
    int64_t until = now_ms() + wait_ms;
    while (c->fd >= 0 && c->out.len > 0) {
        ssize_t n = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
        if (n > 0) {
            memmove(c->out.p, c->out.p + n, c->out.len - (size_t)n);
            c->out.len -= (size_t)n;
        } else if (n < 0 && errno == EAGAIN && now_ms() < until) {
            struct pollfd p = {.fd = c->fd, .events = POLLOUT};
            poll(&p, 1, 50);
        } else if (n < 0 && errno == EAGAIN) {
            return;
        } else if (!(n < 0 && errno == EINTR)) {
            client_close(s, "the connection broke");
        }
    }
}

/* ---- mounts ---- */

static struct mnt *find_mount(struct sup *s, const char *name)
{
    for (size_t i = 0; i < s->nm; i++)
        if (strcmp(s->m[i]->name, name) == 0)
            return s->m[i];
    return NULL;
}

/* Keep one line of a mount process's output: to the log, and the last error for ERR replies. */
static void mount_line(struct mnt *m)
{
    m->part[m->partlen] = '\0';
    if (m->partlen > 0) {
        slog("mount '%s': %s", m->name, m->part);
        const char *msg = strncmp(m->part, "offload: ", 9) == 0 ? m->part + 9 : NULL;
        if (msg || m->errtext[0] == '\0')
            snprintf(m->errtext, sizeof(m->errtext), "%s", msg ? msg : m->part);
    }
    m->partlen = 0;
}

/* Read what a mount process wrote, without blocking; closes the pipe at its end. */
static void mount_output(struct mnt *m)
{
    char buf[4096];
    while (m->out_fd >= 0) {
        ssize_t n = read(m->out_fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) { /* the process is gone */
            mount_line(m);
            close(m->out_fd);
            m->out_fd = -1;
            return;
        }
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] != '\n')
                m->part[m->partlen++] = buf[i];
            if (buf[i] == '\n' || m->partlen == sizeof(m->part) - 1)
                mount_line(m);
        }
    }
}

/* The process of 'm' has ended (already reaped): its output is read, its counters' socket gone. */
static void mount_exited(struct mnt *m, int st)
{
    mount_output(m);
    if (m->out_fd >= 0) { /* a descendant holds the pipe: stop reading it */
        close(m->out_fd);
        m->out_fd = -1;
    }
    unlink(m->stats);
    if (WIFSIGNALED(st))
        slog("mount '%s' (pid %d) was killed by signal %d", m->name, (int)m->pid, WTERMSIG(st));
    else
        slog("mount '%s' (pid %d) exited with status %d", m->name, (int)m->pid, WEXITSTATUS(st));
    m->pid = 0;
}

/* Stop these mounts: write back what containers wrote (bounded), unmount, end the processes. */
static void stop_mounts(struct sup *s, struct mnt **list, size_t n)
{
    pid_t flushers[MAX_MOUNTS];
    char doc[8192];

    for (size_t i = 0; i < n; i++) {
        struct mnt *m = list[i];
        flushers[i] = 0;
        if (m->ro || m->state != M_MOUNTED || m->pid == 0 ||
            fetch_counters(m->stats, doc, sizeof(doc)) != 0 || !strstr(doc, "\"connected\":true"))
            continue;
        /* an fsync of the root waits until the journal is written back (mountd's fsyncdir) */
        if ((flushers[i] = fork()) == 0) {
            int fd = open(m->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            _exit(fd >= 0 && fsync(fd) == 0 ? 0 : 1);
        }
    }
    int64_t until = now_ms() + FLUSH_WAIT_MS;
    for (size_t i = 0; i < n; i++) {
        if (flushers[i] <= 0)
            continue;
        int64_t left = until - now_ms();
        int st = wait_bounded(flushers[i], left > 0 ? (int)left : 0);
        if (st != 0)
            slog("mount '%s': not everything written in it reached the laptop (%s)", list[i]->name,
                 st < 0 ? "timed out" : "fsync failed");
    }
    for (size_t i = 0; i < n; i++)
        unmount_path(s, list[i]->path);
    until = now_ms() + STOP_WAIT_MS;
    for (size_t i = 0; i < n; i++) {
        struct mnt *m = list[i];
        if (m->pid == 0)
            continue;
        int64_t left = until - now_ms();
        int st = wait_bounded(m->pid, left > 0 ? (int)left : 0);
        mount_exited(m, st < 0 ? SIGKILL : st);
        unmount_path(s, m->path); /* a killed process leaves its mount behind */
    }
}

static void remove_mount(struct sup *s, struct mnt *m)
{
    char p[PATH_MAX + 80];
    if (m->pid > 0 || is_mounted(m->path))
        stop_mounts(s, &m, 1);
    snprintf(p, sizeof(p), "%s/exports/%s", s->dir, m->name);
    rm_tree(p);
    snprintf(p, sizeof(p), "%s/cache/%s", s->dir, m->name);
    rm_tree(p);
    if (rmdir(m->path) != 0 && errno != ENOENT)
        slog("cannot remove '%s': %s", m->path, strerror(errno));
    for (size_t i = 0; i < s->nm; i++)
        if (s->m[i] == m) { /* the others keep their order (STATUS lists them so) */
            memmove(&s->m[i], &s->m[i + 1], (s->nm - i - 1) * sizeof(s->m[0]));
            s->nm--;
            break;
        }
    free(m->args);
    free(m);
}

/* The outstanding EXPORT is settled: reply to the client that asked, if still attached. */
static void settle(struct sup *s, bool ok, const char *why)
{
    struct mnt *m = s->pending;
    s->pending = NULL;
    if (ok) {
        m->state = M_MOUNTED;
        slog("mounted '%s' on '%s'%s", m->name, m->path, m->ro ? " (read-only)" : "");
        if (s->c.gen == s->pending_gen)
            reply(s, "MOUNTED %s %s", m->name, m->path);
        return;
    }
    slog("cannot mount '%s': %s", m->name, why);
    if (s->c.gen == s->pending_gen)
        reply(s, "ERR %s %s", m->name, why);
    remove_mount(s, m);
}

/* Reap the mount processes that ended (SIGCHLD). */
static void reap(struct sup *s)
{
    for (size_t i = 0; i < s->nm; i++) {
        struct mnt *m = s->m[i];
        int st;
        if (m->pid <= 0 || waitpid(m->pid, &st, WNOHANG) != m->pid)
            continue;
        mount_exited(m, st);
        if (m == s->pending) {
            char why[ERRTEXT_MAX + 40];
            snprintf(why, sizeof(why), "%s",
                     m->errtext[0] ? m->errtext : "the mount process ended before mounting");
            settle(s, false, why);
            i = (size_t)-1; /* the table changed */
        } else if (m->state != M_DEAD) {
            m->state = M_DEAD;
            slog("mount '%s' is no longer served (its process ended)", m->name);
        }
    }
}

static int write_file(const char *path, const char *text, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    ssize_t w = write(fd, text, len);
    int r = w == (ssize_t)len ? 0 : -EIO;
    if (close(fd) != 0 && r == 0)
        r = -errno;
    return r;
}

/* Turn KNOWN64's text ("[host]:port type key [comment]" or "type key") into the known_hosts
 * line for [127.0.0.1]:port. 0 or -EINVAL. */
static int known_line(const char *text, unsigned port, char *out, size_t len)
{
    char copy[KNOWN_MAX + 1], *f[4], *save = NULL;
    int nf = 0;
    snprintf(copy, sizeof(copy), "%s", text);
    size_t n = strlen(copy);
    while (n > 0 && (copy[n - 1] == '\n' || copy[n - 1] == '\r'))
        copy[--n] = '\0';
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p < 0x20 && *p != '\t')
            return -EINVAL;
    for (char *t = strtok_r(copy, " \t", &save); t && nf < 4; t = strtok_r(NULL, " \t", &save))
        f[nf++] = t;
    int k = nf >= 2 && (strncmp(f[0], "ssh-", 4) == 0 || strncmp(f[0], "ecdsa-", 6) == 0 ||
                        strncmp(f[0], "sk-", 3) == 0)
                ? 0
                : 1;
    if (nf < k + 2)
        return -EINVAL;
    if (strspn(f[k], "abcdefghijklmnopqrstuvwxyz0123456789@.-") != strlen(f[k]) ||
        strspn(f[k + 1], b64chars) + strspn(f[k + 1] + strspn(f[k + 1], b64chars), "=") !=
            strlen(f[k + 1]))
        return -EINVAL;
    n = (size_t)snprintf(out, len, "[127.0.0.1]:%u %s %s\n", port, f[k], f[k + 1]);
    return n < len ? 0 : -EINVAL;
}

/* Write BASE/ID/exports/NAME and start `offload mount -f` for it. 0, or -errno with err set. */
static int start_mount(struct sup *s, struct mnt *m, unsigned port, const char *key, size_t keylen,
                       const char *known, char *err, size_t errlen)
{
    char ex[PATH_MAX], cfg[PATH_MAX + 16], p[PATH_MAX + 16], cache[PATH_MAX], src[96], *text;
    int r, pfd[2];

    snprintf(ex, sizeof(ex), "%s/exports/%s", s->dir, m->name);
    snprintf(cache, sizeof(cache), "%s/cache/%s", s->dir, m->name);
    if (mkdir(ex, 0700) != 0 || mkdir(cache, 0700) != 0 ||
        (mkdir(m->path, 0755) != 0 && errno != EEXIST)) {
        r = -errno;
        snprintf(err, errlen, "cannot create the folders of export '%s': %s", m->name,
                 strerror(errno));
        return r;
    }
    snprintf(p, sizeof(p), "%s/id_ed25519", ex);
    if ((r = write_file(p, key, keylen)) != 0)
        goto failed;
    snprintf(p, sizeof(p), "%s/known_hosts", ex);
    if ((r = write_file(p, known, strlen(known))) != 0)
        goto failed;
    if (asprintf(&text,
                 "# offload session %s, export %s\n"
                 "Host offload-endpoint\n"
                 "  HostName 127.0.0.1\n"
                 "  Port %u\n"
                 "  User offload\n"
                 "  IdentityFile %s/id_ed25519\n"
                 "  IdentitiesOnly yes\n"
                 "  UserKnownHostsFile %s/known_hosts\n"
                 "  GlobalKnownHostsFile /dev/null\n"
                 "  StrictHostKeyChecking yes\n",
                 s->o->id, m->name, port, ex, ex) < 0)
        return -ENOMEM;
    snprintf(cfg, sizeof(cfg), "%s/ssh_config", ex);
    r = write_file(cfg, text, strlen(text));
    free(text);
    if (r != 0)
        goto failed;

    if (pipe2(pfd, O_CLOEXEC) != 0) {
        r = -errno;
        snprintf(err, errlen, "cannot make a pipe: %s", strerror(errno));
        return r;
    }
    snprintf(src, sizeof(src), "offload-endpoint:/%s", m->name);
    char *argv[] = {(char *)(s->o->offload ? s->o->offload : "/proc/self/exe"), "mount", "-f", "-F",
                    cfg, src, m->path, "--cache-dir", cache,
                    /* a container starts on the mount at once; until the feed's snapshot is
                     * in (a 50k-file folder takes seconds to scan and load) it is served over
                     * SFTP with the TTL, as a standalone mount */
                    "--snapshot-wait", "0",
                    /* read-only: mountd refuses writes, the superblock stays read-write so
                     * that laptop edits still raise inotify events in containers */
                    (m->ro || m->file) ? "-o" : NULL,
                    m->ro && m->file ? "nowrite,follow_replace"
                    : m->ro          ? "nowrite"
                                     : "follow_replace",
                    NULL};
    fs_mount_stats_path(m->path, m->stats, sizeof(m->stats));
    pid_t pid = spawn(s, argv, pfd[1]);
    close(pfd[1]);
    if (pid < 0) {
        close(pfd[0]);
        snprintf(err, errlen, "cannot start the mount: %s", strerror((int)-pid));
        return (int)pid;
    }
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    m->pid = pid;
    m->out_fd = pfd[0];
    slog("mounting '%s' (port %u%s): pid %d", m->name, port, m->ro ? ", read-only" : "", (int)pid);
    return 0;
failed:
    snprintf(err, errlen, "cannot write the keys of export '%s': %s", m->name, strerror(-r));
    return r;
}

/* ---- the requests ---- */

static void do_hello(struct sup *s, char **f)
{
    const char *ours = OFFLOAD_VERSION, *theirs = f[2];
    if (strcmp(f[1], PROTO_VERSION) != 0) {
        reply(s, "ERR version protocol %.16s is not spoken here (offload %s speaks protocol %s)",
              f[1], ours, PROTO_VERSION);
        return;
    }
    if (strlen(theirs) > 64 ||
        strspn(theirs, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.+-~") !=
            strlen(theirs)) {
        reply(s, "ERR - bad version string");
        return;
    }
    /* major.minor: up to the second dot */
    const char *a = strchr(ours, '.'), *b = strchr(theirs, '.');
    size_t la = a && strchr(a + 1, '.') ? (size_t)(strchr(a + 1, '.') - ours) : strlen(ours);
    size_t lb = b && strchr(b + 1, '.') ? (size_t)(strchr(b + 1, '.') - theirs) : strlen(theirs);
    if (la != lb || strncmp(ours, theirs, la) != 0) {
        reply(s,
              "ERR version the laptop runs offload %s and this host offload %s: major.minor "
              "must match (install the same version on both)",
              theirs, ours);
        return;
    }
    s->c.hello = true;
    slog("client says hello (offload %s)", theirs);
    reply(s, "OK %s %s", PROTO_VERSION, ours);
}

static void do_export(struct sup *s, char **f)
{
    char known[KNOWN_MAX + 128], err[1024], *key = NULL, *kh = NULL, *args = NULL, *end;
    size_t keylen = 0, khlen = 0;
    unsigned long port = strtoul(f[2], &end, 10);
    int r;

    if (!sup_valid_name(f[1])) {
        reply(s, "ERR - bad export name (want [A-Za-z0-9_.-]{1,64}, not . or ..)");
        return;
    }
    if (f[2][0] < '1' || f[2][0] > '9' || *end || port > 65535) {
        reply(s, "ERR - bad port '%.8s'", f[2]);
        return;
    }
    if (strcmp(f[3], "ro") != 0 && strcmp(f[3], "rw") != 0 && strcmp(f[3], "ro,file") != 0 &&
        strcmp(f[3], "rw,file") != 0) {
        reply(s, "ERR - bad mode '%.8s' (want ro or rw, maybe with ,file)", f[3]);
        return;
    }
    if ((r = b64_decode(f[4], KEY_MAX, &key, &keylen)) != 0 ||
        strncmp(key, "-----BEGIN ", 11) != 0 || strlen(key) != keylen ||
        strstr(key, "PRIVATE KEY-----") == NULL) {
        reply(s, "ERR - KEY64 is not a base64 private key file");
        goto out;
    }
    if (key[keylen - 1] != '\n') { /* a key file ends with a newline */
        char *k = realloc(key, keylen + 2);
        if (k == NULL) {
            reply(s, "ERR %s out of memory", f[1]);
            goto out;
        }
        key = k;
        key[keylen++] = '\n';
        key[keylen] = '\0';
    }
    if ((r = b64_decode(f[5], KNOWN_MAX, &kh, &khlen)) != 0 || strlen(kh) != khlen ||
        known_line(kh, (unsigned)port, known, sizeof(known)) != 0) {
        reply(s, "ERR - KNOWN64 is not a base64 known_hosts line");
        goto out;
    }
    /* "PORT MODE KEY64 KNOWN64": a repeated EXPORT is recognised */
    if (asprintf(&args, "%s %s %s %s", f[2], f[3], f[4], f[5]) < 0) {
        args = NULL;
        reply(s, "ERR %s out of memory", f[1]);
        goto out;
    }
    struct mnt *m = find_mount(s, f[1]);
    if (m && m->state == M_DEAD) {
        slog("export '%s' again: its mount had ended, starting over", m->name);
        remove_mount(s, m);
        m = NULL;
    }
    if (m) {
        if (strcmp(m->args, args) == 0)
            reply(s, "MOUNTED %s %s", m->name, m->path);
        else
            reply(s, "ERR %s already exported (UNEXPORT it first)", m->name);
        goto out;
    }
    if (s->nm >= MAX_MOUNTS) {
        reply(s, "ERR %s too many exports (at most %d)", f[1], MAX_MOUNTS);
        goto out;
    }
    if ((m = calloc(1, sizeof(*m))) == NULL) {
        reply(s, "ERR %s out of memory", f[1]);
        goto out;
    }
    m->args = args;
    args = NULL;
    snprintf(m->name, sizeof(m->name), "%s", f[1]);
    snprintf(m->path, sizeof(m->path), "%s/mnt/%s", s->dir, m->name);
    m->ro = strncmp(f[3], "ro", 2) == 0;
    m->file = strstr(f[3], ",file") != NULL;
    m->out_fd = -1;
    m->state = M_STARTING;
    s->m[s->nm++] = m;
    if (start_mount(s, m, (unsigned)port, key, keylen, known, err, sizeof(err)) != 0) {
        reply(s, "ERR %s %s", m->name, err);
        remove_mount(s, m);
        goto out;
    }
    m->deadline = now_ms() + MOUNT_WAIT_MS;
    s->pending = m;
    s->pending_gen = s->c.gen;
out:
    free(args);
    free(key);
    free(kh);
}

static void do_unexport(struct sup *s, char **f)
{
    if (!sup_valid_name(f[1])) {
        reply(s, "ERR - bad export name (want [A-Za-z0-9_.-]{1,64}, not . or ..)");
        return;
    }
    struct mnt *m = find_mount(s, f[1]);
    if (m == NULL) {
        reply(s, "ERR %s not exported", f[1]);
        return;
    }
    slog("unexport '%s'", m->name);
    remove_mount(s, m);
    reply(s, "OK");
}

static void status_json(struct sup *s, struct sb *b, bool counters)
{
    char doc[8192];
    sb_printf(b, "{\"id\":");
    sb_json_str(b, s->o->id);
    sb_printf(b, ",\"mounts\":[");
    for (size_t i = 0; i < s->nm; i++) {
        struct mnt *m = s->m[i];
        bool have = m->pid > 0 && fetch_counters(m->stats, doc, sizeof(doc)) == 0;
        bool mounted = m->state == M_MOUNTED && is_mounted(m->path);
        sb_printf(b, "%s{\"name\":", i ? "," : "");
        sb_json_str(b, m->name);
        sb_printf(b, ",\"path\":");
        sb_json_str(b, m->path);
        sb_printf(b, ",\"ro\":%s,\"mounted\":%s,\"live\":%s,\"pid\":%d,\"counters\":%s}",
                  m->ro ? "true" : "false", mounted ? "true" : "false",
                  have && strstr(doc, "\"feed_live\":true") ? "true" : "false", (int)m->pid,
                  have && counters ? doc : "null");
    }
    sb_printf(b, "],\"laptop_attached\":%s,\"version\":\"%s\",\"pid\":%d,\"linger_s\":%d}",
              s->c.fd >= 0 ? "true" : "false", OFFLOAD_VERSION, (int)getpid(),
              s->o->linger_ms / 1000);
}

static void do_status(struct sup *s, char **f)
{
    (void)f;
    struct sb b = {0};
    status_json(s, &b, true);
    if (b.p && (b.len + 2) / 3 * 4 + 8 > SUP_LINE_MAX) { /* too long a line: no counters */
        b.len = 0;
        status_json(s, &b, false);
    }
    char *enc = b.p ? malloc((b.len + 2) / 3 * 4 + 1) : NULL;
    if (enc == NULL) {
        reply(s, "ERR - out of memory");
    } else {
        b64_encode(b.p, b.len, enc);
        reply(s, "STATUS %s", enc);
    }
    free(enc);
    free(b.p);
}

static void do_ping(struct sup *s, char **f)
{
    (void)f;
    reply(s, "PONG");
}

static void end_session(struct sup *s, const char *why, bool answer);

static void do_end(struct sup *s, char **f)
{
    (void)f;
    end_session(s, "END from the client", true);
}

static const struct {
    const char *verb;
    int nfields; /* the verb included */
    bool needs_hello;
    void (*run)(struct sup *s, char **f);
} requests[] = {
    {"HELLO", 3, false, do_hello},      {"EXPORT", 6, true, do_export},
    {"UNEXPORT", 2, true, do_unexport}, {"STATUS", 1, false, do_status},
    {"PING", 1, false, do_ping},        {"END", 1, true, do_end},
};

static void handle_line(struct sup *s, char *line, size_t len)
{
    char *f[MAX_FIELDS];
    int nf = 0;

    for (size_t i = 0; i < len; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f) {
            reply(s, "ERR - malformed request (a control character at byte %zu)", i);
            return;
        }
    for (char *p = line;;) {
        char *sp = strchr(p, ' ');
        if (nf == MAX_FIELDS || (sp ? sp == p : *p == '\0')) {
            reply(s, nf == MAX_FIELDS ? "ERR - malformed request (too many fields)"
                                      : "ERR - malformed request (an empty field: fields are "
                                        "separated by one space)");
            return;
        }
        f[nf++] = p;
        if (!sp)
            break;
        *sp = '\0';
        p = sp + 1;
    }
    for (size_t i = 0; i < sizeof(requests) / sizeof(requests[0]); i++) {
        if (strcmp(f[0], requests[i].verb) != 0)
            continue;
        if (nf != requests[i].nfields)
            reply(s, "ERR - %s takes %d field%s, not %d", f[0], requests[i].nfields - 1,
                  requests[i].nfields == 2 ? "" : "s", nf - 1);
        else if (requests[i].needs_hello && !s->c.hello)
            reply(s, "ERR - say HELLO first");
        else
            requests[i].run(s, f);
        return;
    }
    bool ascii = strlen(f[0]) <= 32; /* echoed only when short and plain */
    for (const char *p = f[0]; *p && ascii; p++)
        ascii = (unsigned char)*p < 0x7f;
    reply(s, "ERR - unknown request%s%s%s", ascii ? " '" : "", ascii ? f[0] : "", ascii ? "'" : "");
}

/* Handle the complete lines received, one at a time, until an EXPORT is outstanding. */
static void process_lines(struct sup *s)
{
    struct client *c = &s->c;
    while (c->fd >= 0 && !s->pending) {
        char *nl = memchr(c->in, '\n', c->inlen);
        if (c->skipping) { /* the rest of a line that was too long */
            c->inlen = nl ? c->inlen - (size_t)(nl + 1 - c->in) : 0;
            if (nl)
                memmove(c->in, nl + 1, c->inlen);
            c->skipping = !nl;
            if (!nl)
                break;
            continue;
        }
        if (!nl) {
            if (c->inlen >= sizeof(c->in)) {
                reply(s, "ERR - line too long (at most %d bytes)", SUP_LINE_MAX);
                c->skipping = true;
                c->inlen = 0;
            }
            break;
        }
        size_t len = (size_t)(nl - c->in);
        *nl = '\0';
        handle_line(s, c->in, len);
        if (c->fd < 0)
            break;
        c->inlen -= len + 1;
        memmove(c->in, nl + 1, c->inlen);
    }
    if (c->fd >= 0 && c->eof && !s->pending && !memchr(c->in, '\n', c->inlen)) {
        if (c->inlen > 0 && !c->skipping)
            slog("client ended inside a line: %zu bytes dropped", c->inlen);
        client_flush(s, 2000);
        client_close(s, "its input ended");
    }
}

static void client_read(struct sup *s)
{
    struct client *c = &s->c;
    if (c->eof || c->inlen == sizeof(c->in))
        return;
    ssize_t n = read(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen);
    if (n > 0)
        c->inlen += (size_t)n;
    else if (n == 0 || (errno != EAGAIN && errno != EINTR))
        c->eof = true;
}

static void client_accept(struct sup *s)
{
    int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0)
        return;
    if (s->c.fd >= 0) {
        slog("a new client replaces the attached one (reattach)");
        close(s->c.fd);
    }
    s->c.fd = fd;
    s->c.gen = ++s->gen;
    s->c.hello = s->c.eof = s->c.skipping = false;
    s->c.inlen = s->c.out.len = 0;
    slog("client attached");
}

/* ---- the session ---- */

/* Unmount and remove everything of the session, then exit. */
static void end_session(struct sup *s, const char *why, bool answer)
{
    slog("ending the session: %s", why);
    close(s->lfd);
    unlink("ctl");
    if (s->nm > 0)
        stop_mounts(s, s->m, s->nm);
    while (s->nm > 0)
        remove_mount(s, s->m[0]);
    if (chdir("/") != 0)
        slog("cannot leave the session folder: %s", strerror(errno));
    /* anything still mounted below the session folder (not ours, or stuck) goes lazily */
    char mnt[DIR_MAX + 8];
    snprintf(mnt, sizeof(mnt), "%s/mnt", s->dir);
    DIR *d = opendir(mnt);
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        char p[DIR_MAX + 8 + 260];
        snprintf(p, sizeof(p), "%s/%s", mnt, e->d_name);
        if (e->d_name[0] != '.' && is_mounted(p))
            unmount_path(s, p);
    }
    if (d)
        closedir(d);
    rm_tree(s->dir);
    slog("session '%s' ended%s", s->o->id,
         access(s->dir, F_OK) == 0 ? ", but its folder could not be removed entirely" : "");
    if (answer) {
        reply(s, "OK");
        client_flush(s, 5000);
    }
    exit(0);
}

/* Create or take over BASE/ID; leaves the process inside it, holding the lock on 'pid'.
 * 1: another supervisor owns the session; 0: ours; <0: failed (message printed). */
static int take_session(struct sup *s)
{
    char path[PATH_MAX], err[PATH_MAX + 128];
    int r;

    if ((r = mkdirs(s->o->base, 0755)) != 0) {
        fprintf(stderr, "offload mountd: cannot create '%s': %s\n", s->o->base, strerror(-r));
        return r;
    }
    if (snprintf(path, sizeof(path), "%s/%s", s->o->base, s->o->id) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    for (int tries = 0; tries < 5; tries++) {
        if (mkdir(path, 0700) != 0 && errno != EEXIST) {
            fprintf(stderr, "offload mountd: cannot create '%s': %s\n", path, strerror(errno));
            return -errno;
        }
        if ((r = sup_check_dir(path, err, sizeof(err))) != 0) {
            fprintf(stderr, "offload mountd: %s\n", err);
            return r;
        }
        char real[PATH_MAX];
        if (realpath(path, real) == NULL || chdir(real) != 0) {
            fprintf(stderr, "offload mountd: cannot enter '%s': %s\n", path, strerror(errno));
            return -errno;
        }
        if (strlen(real) >= sizeof(s->dir)) {
            fprintf(stderr, "offload mountd: cannot use '%s': path too long\n", real);
            return -ENAMETOOLONG;
        }
        memcpy(s->dir, real, strlen(real) + 1);
        for (const char *p = s->dir; *p; p++)
            if ((unsigned char)*p <= ' ' || *p == 0x7f) {
                fprintf(stderr,
                        "offload mountd: cannot use '%s': a space or control character "
                        "in the path\n",
                        s->dir);
                return -EINVAL;
            }
        int fd = open("pid", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) {
            fprintf(stderr, "offload mountd: cannot open '%s/pid': %s\n", s->dir, strerror(errno));
            return -errno;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            close(fd);
            return 1;
        }
        /* the lock is ours; the folder may have been removed by a supervisor ending meanwhile */
        struct stat a, b;
        if (fstat(fd, &a) != 0 || a.st_nlink == 0 || stat(".", &b) != 0 || b.st_nlink == 0) {
            close(fd);
            continue;
        }
        char pid[32];
        int n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
        if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
            fprintf(stderr, "offload mountd: cannot write '%s/pid'\n", s->dir);
            return -EIO;
        }
        return 0; /* fd stays open: the lock lives as long as this process */
    }
    fprintf(stderr, "offload mountd: '%s' keeps disappearing\n", path);
    return -EAGAIN;
}

/* A previous supervisor of this session died: whatever it left is unmounted and removed. */
static void clear_leftovers(struct sup *s)
{
    DIR *d = opendir("mnt");
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        char p[DIR_MAX + 8 + 260];
        snprintf(p, sizeof(p), "%s/mnt/%s", s->dir, e->d_name);
        if (e->d_name[0] != '.' && is_mounted(p)) {
            slog("unmounting '%s', left by a previous supervisor", p);
            unmount_path(s, p);
        }
    }
    if (d)
        closedir(d);
    rm_tree("exports");
    rm_tree("cache");
    rm_tree("mnt");
}

static int listen_ctl(struct sup *s)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX, .sun_path = "ctl"};
    unlink("ctl");
    s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    mode_t old = umask(077);
    int r = s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
                    chmod("ctl", 0600) != 0 || listen(s->lfd, 8) != 0
                ? -errno
                : 0;
    umask(old);
    if (r != 0)
        fprintf(stderr, "offload mountd: cannot listen on '%s/ctl': %s\n", s->dir, strerror(-r));
    return r;
}

static int poll_timeout(struct sup *s)
{
    int64_t now = now_ms(), t = -1;
    if (s->pending)
        t = 50; /* look for the mount in mountinfo */
    if (s->c.fd < 0) {
        int64_t left = s->detached_at + s->o->linger_ms - now;
        t = t < 0 || left < t ? (left < 0 ? 0 : left) : t;
    }
    return t > 600000 ? 600000 : (int)t;
}

int sup_run(const struct sup_opts *o)
{
    static struct sup s; /* large (the client's line buffer): not on the stack */
    struct pollfd pf[3 + MAX_MOUNTS];
    sigset_t mask;
    int r;

    s.o = o;
    s.c.fd = s.lfd = s.sigfd = -1;
    umask(022);
    if ((r = take_session(&s)) != 0)
        return r > 0 ? 0 : 1;
    int logfd = open("log", O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (logfd < 0) {
        fprintf(stderr, "offload mountd: cannot open '%s/log': %s\n", s.dir, strerror(errno));
        return 1;
    }
    clear_leftovers(&s);
    if ((mkdir("exports", 0700) != 0 && errno != EEXIST) ||
        (mkdir("cache", 0700) != 0 && errno != EEXIST) ||
        (mkdir("mnt", 0700) != 0 && errno != EEXIST)) {
        fprintf(stderr, "offload mountd: cannot create folders in '%s': %s\n", s.dir,
                strerror(errno));
        return 1;
    }
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    signal(SIGPIPE, SIG_IGN);
    if (sigprocmask(SIG_BLOCK, &mask, &s.oldmask) != 0 ||
        (s.sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
        fprintf(stderr, "offload mountd: cannot watch signals: %s\n", strerror(errno));
        return 1;
    }
    if (listen_ctl(&s) != 0)
        return 1;
    /* ready: the log takes over stdout and stderr (and closes the starter's pipe) */
    int nul = open("/dev/null", O_RDONLY);
    if (nul >= 0 && nul != 0) {
        dup2(nul, 0);
        close(nul);
    }
    dup2(logfd, 1);
    dup2(logfd, 2);
    close(logfd);
    s.detached_at = now_ms();
    slog("session '%s' started in '%s' (linger %d s, mounts by '%s')", o->id, s.dir,
         o->linger_ms / 1000, o->offload ? o->offload : "this binary");

    for (;;) {
        size_t n = 0;
        pf[n++] = (struct pollfd){.fd = s.lfd, .events = POLLIN};
        pf[n++] = (struct pollfd){.fd = s.sigfd, .events = POLLIN};
        /* a client whose input ended is watched only while replies remain to be written */
        pf[n++] = (struct pollfd){
            .fd = s.c.eof && !s.c.out.len ? -1 : s.c.fd,
            .events = (short)((s.pending ? 0 : POLLIN) | (s.c.out.len ? POLLOUT : 0))};
        for (size_t i = 0; i < s.nm; i++)
            pf[n++] = (struct pollfd){.fd = s.m[i]->out_fd, .events = POLLIN};
        if (poll(pf, (nfds_t)n, poll_timeout(&s)) < 0 && errno != EINTR) {
            slog("poll: %s", strerror(errno));
            sleep(1);
            continue;
        }
        struct signalfd_siginfo si;
        while (read(s.sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
            if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
                end_session(&s, strsignal((int)si.ssi_signo), false);
            else if (si.ssi_signo == SIGCHLD)
                reap(&s);
        }
        for (size_t i = 0; i < s.nm; i++)
            if (s.m[i]->out_fd >= 0)
                mount_output(s.m[i]);
        if (pf[0].revents & POLLIN)
            client_accept(&s);
        else if (s.c.fd >= 0 && pf[2].fd == s.c.fd &&
                 (pf[2].revents & (POLLIN | POLLHUP | POLLERR)))
            client_read(&s);
        if (s.pending && is_mounted(s.pending->path))
            settle(&s, true, NULL);
        else if (s.pending && now_ms() >= s.pending->deadline) {
            char why[ERRTEXT_MAX + 64];
            snprintf(why, sizeof(why), "not mounted after %d s%s%s", MOUNT_WAIT_MS / 1000,
                     s.pending->errtext[0] ? ": " : "", s.pending->errtext);
            settle(&s, false, why);
        }
        process_lines(&s);
        client_flush(&s, 0);
        if (s.c.fd < 0 && now_ms() - s.detached_at >= o->linger_ms)
            end_session(&s, "no client for the linger time", false);
    }
}
