/* dproxy.c - drive the docker API proxy (tunnel/dockerproxy.h) against a local dockerd, for the
 * tests: bind sources under a laptop prefix are mapped to a cloud prefix.
 *
 *   dproxy --listen SOCK --upstream DOCKER_SOCK --map LAPTOP_PREFIX=CLOUD_PREFIX [--map ...] [-v]
 *
 * Listens on SOCK (a unix socket, 0600) and relays every client connection to a new unix
 * connection to DOCKER_SOCK. A bind source is cleaned lexically ("." and ".." resolved, slashes
 * folded) and mapped by the first --map whose LAPTOP_PREFIX holds it; a source outside every
 * prefix is refused (403). A --mount (HostConfig.Mounts) source missing on this machine gets
 * dockerd's own error (400); a missing -v source is mapped and left to dockerd, which creates it.
 * Prints "dproxy: listening on SOCK" once ready; SIGUSR1 prints the counters
 * ("requests=N rewrites=N errors=N conns=N active=N"); SIGINT or SIGTERM print them and stop.
 */
#include "dockerproxy.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAPS_MAX 16

struct map {
    char laptop[PATH_MAX];
    char cloud[PATH_MAX];
};

static struct map maps[MAPS_MAX];
static int nmaps;
static const char *upstream;

static void usage(void)
{
    fprintf(stderr, "usage: dproxy --listen SOCK --upstream DOCKER_SOCK "
                    "--map LAPTOP_PREFIX=CLOUD_PREFIX [--map ...] [-v]\n");
    exit(2);
}

/* Clean an absolute path lexically into out: no ".", "..", empty components or trailing slash. */
static int clean_path(const char *in, char *out, size_t outlen)
{
    size_t len = 0;

    if (in[0] != '/' || outlen < 2)
        return -EINVAL;
    out[0] = '\0';
    for (const char *p = in; *p;) {
        while (*p == '/')
            p++;
        size_t n = strcspn(p, "/");
        if (n == 0 || (n == 1 && p[0] == '.')) {
            /* nothing */
        } else if (n == 2 && p[0] == '.' && p[1] == '.') {
            while (len > 0 && out[len - 1] != '/')
                len--;
            len = len > 0 ? len - 1 : 0;
        } else {
            if (len + 1 + n >= outlen)
                return -ENAMETOOLONG;
            out[len++] = '/';
            memcpy(out + len, p, n);
            len += n;
        }
        out[len] = '\0';
        p += n;
    }
    if (len == 0)
        strcpy(out, "/");
    return 0;
}

static int rewrite(void *arg, const char *src, bool ro, bool mount_api, char *out, size_t outlen,
                   char *msg, size_t msglen)
{
    char clean[PATH_MAX];
    struct stat st;

    (void)arg, (void)ro;
    if (clean_path(src, clean, sizeof(clean)) < 0) {
        snprintf(msg, msglen, "invalid bind source '%s'", src);
        return -EINVAL;
    }
    for (int i = 0; i < nmaps; i++) {
        size_t n = strlen(maps[i].laptop);
        if (strncmp(clean, maps[i].laptop, n) != 0 || (clean[n] != '/' && clean[n] != '\0'))
            continue;
        if (mount_api && lstat(clean, &st) != 0) {
            snprintf(msg, msglen,
                     "invalid mount config for type \"bind\": bind source path does not exist: %s",
                     src);
            return -ENOENT;
        }
        if ((size_t)snprintf(out, outlen, "%s%s", maps[i].cloud, clean + n) >= outlen) {
            snprintf(msg, msglen, "bind source '%s' is too long once mapped", src);
            return -ENAMETOOLONG;
        }
        return 0;
    }
    snprintf(msg, msglen, "bind source '%s' is outside the folders offload shares", src);
    return -EACCES;
}

static int connect_upstream(void *arg, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd, r;

    (void)arg;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", upstream);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        r = -errno;
        snprintf(err, errlen, "cannot connect to '%s': %s", upstream, strerror(-r));
        if (fd >= 0)
            close(fd);
        return r;
    }
    return fd;
}

static void print_stats(struct dp_proxy *dp)
{
    struct dp_stats s;

    dp_get_stats(dp, &s);
    printf("requests=%llu rewrites=%llu errors=%llu conns=%llu active=%u\n",
           (unsigned long long)s.requests, (unsigned long long)s.rewrites,
           (unsigned long long)s.errors, (unsigned long long)s.conns, dp_active(dp));
    fflush(stdout);
}

int main(int argc, char **argv)
{
    struct dp_config cfg = {.connect_upstream = connect_upstream, .rewrite_bind = rewrite};
    char err[512];
    sigset_t set;
    int sig;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            cfg.listen_path = argv[++i];
        } else if (strcmp(argv[i], "--upstream") == 0 && i + 1 < argc) {
            upstream = argv[++i];
        } else if (strcmp(argv[i], "--map") == 0 && i + 1 < argc && nmaps < MAPS_MAX) {
            char *eq = strchr(argv[++i], '=');
            if (eq == NULL)
                usage();
            *eq = '\0';
            if (clean_path(argv[i], maps[nmaps].laptop, PATH_MAX) < 0 ||
                clean_path(eq + 1, maps[nmaps].cloud, PATH_MAX) < 0)
                usage();
            if (strcmp(maps[nmaps].laptop, "/") == 0)
                maps[nmaps].laptop[0] = '\0'; /* "/" holds every path: no doubled slash */
            if (strcmp(maps[nmaps].cloud, "/") == 0)
                maps[nmaps].cloud[0] = '\0';
            nmaps++;
        } else if (strcmp(argv[i], "-v") == 0) {
            cfg.verbose = true;
        } else {
            usage();
        }
    }
    if (cfg.listen_path == NULL || upstream == NULL || nmaps == 0)
        usage();

    /* Block the signals before any proxy thread exists, so that only sigwait sees them. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    struct dp_proxy *dp = dp_start(&cfg, err, sizeof(err));
    if (dp == NULL) {
        fprintf(stderr, "dproxy: %s\n", err);
        return 1;
    }
    printf("dproxy: listening on %s\n", cfg.listen_path);
    fflush(stdout);
    while (sigwait(&set, &sig) == 0 && sig == SIGUSR1)
        print_stats(dp);
    print_stats(dp);
    dp_stop(dp);
    return 0;
}
