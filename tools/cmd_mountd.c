/* cmd_mountd.c - offload mountd --session ID: the cloud side of a session (docs/connect.md).
 *
 * Run over ssh by `offload connect`, it relays between its stdin/stdout and the control socket
 * BASE/ID/ctl of the session supervisor (session_sup.h), which it starts when none runs there.
 * The supervisor is this binary again (`offload mountd --supervise ...`), a daemon of its own.
 */
#include "offload.h"

#include "session_sup.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define START_WAIT_MS   60000 /* the supervisor's start (it may clear what a dead one left) */
#define CONNECT_WAIT_MS 5000

static void usage(FILE *f)
{
    fprintf(f,
            "usage: offload mountd --session ID [options]\n"
            "\n"
            "The cloud side of an 'offload connect' session, run by it over ssh: relays the\n"
            "session's control protocol between stdin/stdout and the session supervisor (a\n"
            "daemon that owns BASE/ID and the session's mounts, started when not running).\n"
            "\n"
            "options:\n"
            "      --session ID      the session ([A-Za-z0-9_-], at most 64)\n"
            "      --base DIR        where sessions live (default: /run/offload/sessions as root,\n"
            "                        else $XDG_RUNTIME_DIR/offload/sessions or\n"
            "                        /tmp/offload-UID/sessions)\n"
            "      --linger SECS     end the session after this long without a laptop\n"
            "                        (default: 600)\n"
            "      --offload PATH    the offload binary that mounts (default: this one)\n"
            "  -h, --help            this text\n");
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Connect to DIR/ctl. 0 with *out set; -ENOENT or -ECONNREFUSED when no supervisor listens;
 * another negative errno (with a message printed) when DIR must not be used. */
static int ctl_connect(const char *dir, int *out)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char err[PATH_MAX + 128];
    int r = sup_check_dir(dir, err, sizeof(err));

    if (r != 0) {
        if (r != -ENOENT)
            fprintf(stderr, "offload mountd: %s\n", err);
        return r;
    }
    /* through the folder's descriptor: BASE/ID/ctl may be longer than a socket address */
    int dfd = open(dir, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/ctl", dfd);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    r = fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ? -errno : 0;
    close(dfd);
    if (r != 0) {
        if (fd >= 0)
            close(fd);
        if (r != -ENOENT && r != -ECONNREFUSED)
            fprintf(stderr, "offload mountd: cannot connect to '%s/ctl': %s\n", dir, strerror(-r));
        return r;
    }
    *out = fd;
    return 0;
}

/* Start the supervisor as a daemon (setsid, detached from this process) and wait until it
 * listens or fails. 0, or -1 with its message printed. */
static int start_supervisor(const char *base, const char *id, int linger_ms, const char *offload)
{
    char linger[32], text[4096];
    size_t got = 0;
    int pfd[2], st;

    if (pipe2(pfd, O_CLOEXEC) != 0) {
        perror("offload mountd: pipe");
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("offload mountd: fork");
        return -1;
    }
    if (pid == 0) {
        setsid();
        if (fork() != 0) /* the daemon is no child of the relay */
            _exit(0);
        int nul = open("/dev/null", O_RDWR);
        if (nul < 0 || dup2(nul, 0) < 0 || dup2(nul, 1) < 0 || dup2(pfd[1], 2) < 0)
            _exit(127);
        snprintf(linger, sizeof(linger), "%dms", linger_ms);
        char *argv[] = {
            "offload",       "mountd",     "--supervise", "--session", (char *)id,
            "--base",        (char *)base, "--linger",    linger,      offload ? "--offload" : NULL,
            (char *)offload, NULL};
        execv("/proc/self/exe", argv);
        fprintf(stderr, "offload mountd: cannot start the supervisor: %s\n", strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    waitpid(pid, &st, 0);
    /* its stderr until it listens: silence means it runs (or another one did already) */
    int64_t until = now_ms() + START_WAIT_MS;
    for (;;) {
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        int64_t left = until - now_ms();
        if (left <= 0) {
            snprintf(text + got, sizeof(text) - got,
                     "offload mountd: the session supervisor "
                     "did not start within %d s\n",
                     START_WAIT_MS / 1000);
            got = strlen(text);
            break;
        }
        if (poll(&p, 1, (int)left) < 0 && errno != EINTR)
            break;
        ssize_t n = read(pfd[0], text + got, sizeof(text) - 1 - got);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
            break;
        if (n > 0)
            got += (size_t)n;
        if (got == sizeof(text) - 1)
            break;
    }
    close(pfd[0]);
    text[got] = '\0';
    if (got > 0) {
        fputs(text, stderr);
        return -1;
    }
    return 0;
}

/* Copy stdin to the socket and the socket to stdout until the socket ends; at the end of stdin
 * the socket's sending side is shut, so that replies still on their way are delivered. */
static int relay(int sock)
{
    static char up[65536], down[65536];
    size_t uplen = 0, downlen = 0;
    bool in_eof = false, sock_eof = false, shut = false;

    fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK);
    for (;;) {
        struct pollfd p[3] = {
            {.fd = in_eof || uplen == sizeof(up) ? -1 : 0, .events = POLLIN},
            {.fd = sock,
             .events = (short)((sock_eof || downlen == sizeof(down) ? 0 : POLLIN) |
                               (uplen ? POLLOUT : 0))},
            {.fd = downlen ? 1 : -1, .events = POLLOUT},
        };
        if (poll(p, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("offload mountd: poll");
            return 1;
        }
        if (p[0].revents) {
            ssize_t n = read(0, up + uplen, sizeof(up) - uplen);
            if (n > 0)
                uplen += (size_t)n;
            else if (n == 0 || (errno != EINTR && errno != EAGAIN))
                in_eof = true;
        }
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR) && !sock_eof) {
            ssize_t n = read(sock, down + downlen, sizeof(down) - downlen);
            if (n > 0)
                downlen += (size_t)n;
            else if (n == 0 || (errno != EINTR && errno != EAGAIN))
                sock_eof = true;
        }
        if (uplen && p[1].revents & (POLLOUT | POLLERR)) {
            ssize_t n = send(sock, up, uplen, MSG_NOSIGNAL);
            if (n > 0) {
                memmove(up, up + n, uplen - (size_t)n);
                uplen -= (size_t)n;
            } else if (n < 0 && errno != EINTR && errno != EAGAIN) {
                uplen = 0; /* the supervisor is gone: what it did not read is moot */
                in_eof = true;
            }
        }
        if (downlen && p[2].revents) {
            ssize_t n = write(1, down, downlen);
            if (n > 0) {
                memmove(down, down + n, downlen - (size_t)n);
                downlen -= (size_t)n;
            } else if (n < 0 && errno != EINTR && errno != EAGAIN) {
                return 1; /* the link is gone; the supervisor notices the socket closing */
            }
        }
        if (in_eof && uplen == 0 && !shut) {
            shutdown(sock, SHUT_WR);
            shut = true;
        }
        if (sock_eof && downlen == 0)
            return 0;
    }
}

int cmd_mountd(int argc, char **argv)
{
    enum { O_SESSION = 256, O_BASE, O_LINGER, O_OFFLOAD, O_SUPERVISE };
    static const struct option lopts[] = {
        {"session", required_argument, 0, O_SESSION},
        {"base", required_argument, 0, O_BASE},
        {"linger", required_argument, 0, O_LINGER},
        {"offload", required_argument, 0, O_OFFLOAD},
        {"supervise", no_argument, 0, O_SUPERVISE},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    static char base[PATH_MAX], offload[PATH_MAX], dir[PATH_MAX];
    const char *id = NULL, *base_arg = NULL, *offload_arg = NULL;
    int c, linger_ms = 600000, supervise = 0, sock = -1;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
        switch (c) {
        case O_SESSION:
            id = optarg;
            break;
        case O_BASE:
            base_arg = optarg;
            break;
        case O_LINGER:
            if (parse_duration_ms(optarg, &linger_ms) != 0) {
                fprintf(stderr, "offload mountd: bad --linger '%s' (seconds, or 10m)\n", optarg);
                return 2;
            }
            break;
        case O_OFFLOAD:
            offload_arg = optarg;
            break;
        case O_SUPERVISE:
            supervise = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || id == NULL) {
        usage(stderr);
        return 2;
    }
    if (!sup_valid_id(id)) {
        fprintf(stderr, "offload mountd: bad session id '%.80s' (want [A-Za-z0-9_-]{1,64})\n", id);
        return 2;
    }
    if (base_arg == NULL) {
        const char *rt = getenv("XDG_RUNTIME_DIR");
        if (geteuid() == 0)
            base_arg = "/run/offload/sessions";
        else if (rt && *rt)
            snprintf(base, sizeof(base), "%s/offload/sessions", rt);
        else
            snprintf(base, sizeof(base), "/tmp/offload-%d/sessions", (int)getuid());
        if (base_arg)
            snprintf(base, sizeof(base), "%s", base_arg);
    } else {
        /* absolute now: the daemon runs elsewhere */
        char cwd[PATH_MAX];
        if (base_arg[0] != '/' && getcwd(cwd, sizeof(cwd)) == NULL) {
            perror("offload mountd: getcwd");
            return 1;
        }
        if (snprintf(base, sizeof(base), "%s%s%s", base_arg[0] == '/' ? "" : cwd,
                     base_arg[0] == '/' ? "" : "/", base_arg) >= (int)sizeof(base)) {
            fprintf(stderr, "offload mountd: --base too long\n");
            return 2;
        }
    }
    if (offload_arg) { /* a path is made absolute; a bare name is looked up in PATH */
        char cwd[PATH_MAX];
        int n = strchr(offload_arg, '/') && offload_arg[0] != '/' && getcwd(cwd, sizeof(cwd))
                    ? snprintf(offload, sizeof(offload), "%s/%s", cwd, offload_arg)
                    : snprintf(offload, sizeof(offload), "%s", offload_arg);
        if (n < 0 || n >= (int)sizeof(offload)) {
            fprintf(stderr, "offload mountd: --offload too long\n");
            return 2;
        }
    }
    if (supervise) {
        struct sup_opts o = {.base = base,
                             .id = id,
                             .linger_ms = linger_ms,
                             .offload = offload_arg ? offload : NULL};
        return sup_run(&o);
    }

    signal(SIGPIPE, SIG_IGN);
    if (snprintf(dir, sizeof(dir), "%s/%s", base, id) >= (int)sizeof(dir)) {
        fprintf(stderr, "offload mountd: --base too long\n");
        return 2;
    }
    int r = ctl_connect(dir, &sock);
    for (int starts = 0; r == -ENOENT || r == -ECONNREFUSED; starts++) {
        if (starts == 3) {
            fprintf(stderr, "offload mountd: no session supervisor answers on '%s/ctl'\n", dir);
            return 1;
        }
        if (start_supervisor(base, id, linger_ms, offload_arg ? offload : NULL) != 0)
            return 1;
        for (int64_t until = now_ms() + CONNECT_WAIT_MS; now_ms() < until;) {
            if ((r = ctl_connect(dir, &sock)) != -ENOENT && r != -ECONNREFUSED)
                break;
            usleep(50000);
        }
    }
    if (r != 0)
        return 1;
    return relay(sock);
}
