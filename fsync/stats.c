/* stats.c - counters served as JSON over a unix socket; see stats.h. */
#include "stats.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct fs_stats_server {
    int fd;
    int stop_pipe[2];
    pthread_t thread;
    char path[108];
    struct fs_stats *st;
    fs_stats_extra_fn extra;
    void *arg;
};

#define LOAD(f) __atomic_load_n(&st->f, __ATOMIC_RELAXED)

void fs_stats_format(const struct fs_stats *st, char *out, size_t len)
{
    snprintf(out, len,
             "\"requests\":%llu,\"cache_hits\":%llu,\"cache_misses\":%llu,"
             "\"bytes_fetched\":%llu,\"blocks_fetched\":%llu,\"readahead_blocks\":%llu,"
             "\"verify_failures\":%llu,\"changed_underneath\":%llu,\"meta_fetches\":%llu,"
             "\"stale_served\":%llu,\"prefetched_files\":%llu,\"feed_batches\":%llu,"
             "\"feed_data_blocks\":%llu,\"reflected\":%llu,\"local_changes\":%llu,"
             "\"written_back\":%llu,\"bytes_written_back\":%llu,\"write_back_errors\":%llu,"
             "\"source_fsyncs\":%llu,\"feed_echoes\":%llu,\"late_invalidations\":%llu,\"attr_"
             "refreshes\":%llu",
             (unsigned long long)LOAD(requests), (unsigned long long)LOAD(cache_hits),
             (unsigned long long)LOAD(cache_misses), (unsigned long long)LOAD(bytes_fetched),
             (unsigned long long)LOAD(blocks_fetched), (unsigned long long)LOAD(readahead_blocks),
             (unsigned long long)LOAD(verify_failures),
             (unsigned long long)LOAD(changed_underneath), (unsigned long long)LOAD(meta_fetches),
             (unsigned long long)LOAD(stale_served), (unsigned long long)LOAD(prefetched_files),
             (unsigned long long)LOAD(feed_batches), (unsigned long long)LOAD(feed_data_blocks),
             (unsigned long long)LOAD(reflected), (unsigned long long)LOAD(local_changes),
             (unsigned long long)LOAD(written_back), (unsigned long long)LOAD(bytes_written_back),
             (unsigned long long)LOAD(write_back_errors), (unsigned long long)LOAD(source_fsyncs),
             (unsigned long long)LOAD(feed_echoes), (unsigned long long)LOAD(late_invalidations),
             (unsigned long long)LOAD(attr_refreshes));
}

static void *serve_main(void *arg)
{
    fs_stats_server_t *srv = arg;
    char doc[4096];

    for (;;) {
        struct pollfd pf[2] = {{.fd = srv->fd, .events = POLLIN},
                               {.fd = srv->stop_pipe[0], .events = POLLIN}};
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pf[1].revents)
            break;
        int c = accept4(srv->fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        size_t n;
        doc[0] = '{';
        fs_stats_format(srv->st, doc + 1, sizeof(doc) - 1);
        n = strlen(doc);
        if (srv->extra)
            srv->extra(srv->arg, doc + n, sizeof(doc) - n - 3);
        n = strlen(doc);
        snprintf(doc + n, sizeof(doc) - n, "}\n");
        n = strlen(doc);
        for (size_t off = 0; off < n;) {
            ssize_t w = send(c, doc + off, n - off, MSG_NOSIGNAL);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        close(c);
    }
    return NULL;
}

int fs_stats_serve(const char *path, struct fs_stats *st, fs_stats_extra_fn extra, void *arg,
                   fs_stats_server_t **out)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    fs_stats_server_t *srv;
    int r;

    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    if ((srv = calloc(1, sizeof(*srv))) == NULL)
        return -ENOMEM;
    snprintf(srv->path, sizeof(srv->path), "%s", path);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    srv->st = st;
    srv->extra = extra;
    srv->arg = arg;
    srv->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (srv->fd < 0 || pipe2(srv->stop_pipe, O_CLOEXEC) != 0) {
        r = -errno;
        goto fail;
    }
    unlink(path);
    mode_t old = umask(077);
    r = bind(srv->fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (r != 0 || listen(srv->fd, 16) != 0) {
        r = -errno;
        goto fail;
    }
    if ((r = -pthread_create(&srv->thread, NULL, serve_main, srv)) != 0)
        goto fail;
    *out = srv;
    return 0;
fail:
    if (srv->fd >= 0)
        close(srv->fd);
    free(srv);
    return r;
}

void fs_stats_stop(fs_stats_server_t *srv)
{
    if (srv == NULL)
        return;
    ssize_t w = write(srv->stop_pipe[1], "x", 1);
    (void)w;
    pthread_join(srv->thread, NULL);
    close(srv->fd);
    close(srv->stop_pipe[0]);
    close(srv->stop_pipe[1]);
    unlink(srv->path);
    free(srv);
}

int fs_stats_fetch(const char *path, char *out, size_t len)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t got = 0;
    int fd, r = 0;

    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        r = -errno;
        goto out;
    }
    while (got + 1 < len) {
        ssize_t n = read(fd, out + got, len - got - 1);
        if (n < 0) {
            r = -errno;
            goto out;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    out[got] = '\0';
out:
    close(fd);
    return r;
}
