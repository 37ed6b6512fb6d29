/*
 * editlat: edit-to-visible latency and edit arrival, for tools/bench/run.
 *
 *   editlat write FILE N INTERVAL_MS TAG
 *       N edits of FILE, INTERVAL_MS apart (an absolute schedule): each truncates FILE and writes
 *       "TAG i\n" and a fixed filler (i = 1..N) in one write(2). Prints "i NS" per edit, NS being
 *       CLOCK_REALTIME just before the open.
 *   editlat watch FILE N TAG READY_FILE TIMEOUT_MS POLL_US
 *       Waits (up to TIMEOUT_MS) until FILE reads as edit 0 of TAG, then creates READY_FILE and
 *       polls FILE (open, read, close, sleep POLL_US) until it reads as edit N or TIMEOUT_MS have
 *       passed since it was ready. Prints "i NS" the first time it reads edit i (CLOCK_REALTIME),
 *       flushed at once. Exit 0 if edit N was seen, 1 if not, 2 on a usage error.
 *   editlat init FILE TAG
 *       Writes edit 0 of TAG (the state the watcher waits for).
 *   editlat waitbytes FILE OFFSET EXPECTED TIMEOUT_MS POLL_US
 *       Polls FILE (open, pread, close, sleep POLL_US) until the bytes at OFFSET equal the whole
 *       content of the file EXPECTED. Prints "NS POLLS" when they do (exit 0); exit 1 on timeout.
 *   editlat now
 *       Prints CLOCK_REALTIME in ns.
 *
 * Both sides of the benchmark run in network namespaces of one machine, which share
 * CLOCK_REALTIME: the writer's and the watcher's stamps are comparable. A reader that sees a
 * partial write (after the truncate, before the write) does not match any edit: the content must
 * be exactly "TAG i\n" + filler.
 *
 * Built by the bench script with `cc -O2`; no dependencies beyond libc.
 */
#define _POSIX_C_SOURCE   200809L
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FILLER                                                                                     \
    "// a small source file, edited by tools/bench/run: the line above changes on every save\n"
#define MAXC 4096

static int64_t now_ns(clockid_t c)
{
    struct timespec ts;

    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long num(const char *s, const char *what)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < 0) {
        fprintf(stderr, "editlat: bad %s '%s'\n", what, s);
        exit(2);
    }
    return v;
}

static size_t content(char *buf, size_t len, const char *tag, long i)
{
    int n = snprintf(buf, len, "%s %ld\n" FILLER, tag, i);

    if (n < 0 || (size_t)n >= len) {
        fprintf(stderr, "editlat: tag too long\n");
        exit(2);
    }
    return (size_t)n;
}

static int write_edit(const char *path, const char *tag, long i)
{
    char buf[MAXC];
    size_t n = content(buf, sizeof(buf), tag, i);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

    if (fd < 0) {
        fprintf(stderr, "editlat: cannot open '%s': %s\n", path, strerror(errno));
        return -1;
    }
    if (write(fd, buf, n) != (ssize_t)n) {
        fprintf(stderr, "editlat: cannot write '%s': %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    return close(fd);
}

/* The edit FILE holds now: its number, or -1 (not an edit of TAG, unreadable, partial). */
static long read_edit(const char *path, const char *tag)
{
    char buf[MAXC + 1], want[MAXC];
    size_t taglen = strlen(tag);
    ssize_t got;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -1;
    got = read(fd, buf, MAXC);
    close(fd);
    if (got <= 0 || (size_t)got <= taglen + 1)
        return -1;
    buf[got] = '\0';
    if (memcmp(buf, tag, taglen) != 0 || buf[taglen] != ' ')
        return -1;
    char *end;
    errno = 0;
    long i = strtol(buf + taglen + 1, &end, 10);
    if (errno || end == buf + taglen + 1 || *end != '\n' || i < 0)
        return -1;
    size_t n = content(want, sizeof(want), tag, i);
    if ((size_t)got != n || memcmp(buf, want, n) != 0)
        return -1;
    return i;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int cmd_write(char **a)
{
    const char *path = a[0], *tag = a[3];
    long n = (long)num(a[1], "count"), interval = (long)num(a[2], "interval");
    struct timespec next;

    clock_gettime(CLOCK_MONOTONIC, &next);
    for (long i = 1; i <= n; i++) {
        int64_t t = now_ns(CLOCK_REALTIME);
        if (write_edit(path, tag, i) != 0)
            return 1;
        printf("%ld %lld\n", i, (long long)t);
        fflush(stdout);
        if (i == n)
            break;
        next.tv_nsec += interval * 1000000L;
        next.tv_sec += next.tv_nsec / 1000000000L;
        next.tv_nsec %= 1000000000L;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
    }
    return 0;
}

static int cmd_watch(char **a)
{
    const char *path = a[0], *tag = a[2], *ready = a[3];
    long n = (long)num(a[1], "count");
    int64_t timeout = num(a[4], "timeout") * 1000000LL;
    long poll_us = (long)num(a[5], "poll interval");
    int64_t t0 = now_ns(CLOCK_MONOTONIC);
    long last = -1;

    while (read_edit(path, tag) != 0) {
        if (now_ns(CLOCK_MONOTONIC) - t0 > timeout) {
            fprintf(stderr, "editlat: '%s' never read as edit 0 of '%s'\n", path, tag);
            return 1;
        }
        sleep_us(poll_us > 1000 ? poll_us : 1000);
    }
    int fd = open(ready, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "editlat: cannot create '%s': %s\n", ready, strerror(errno));
        return 2;
    }
    close(fd);
    t0 = now_ns(CLOCK_MONOTONIC);
    last = 0;
    while (last < n) {
        long i = read_edit(path, tag);
        int64_t t = now_ns(CLOCK_REALTIME);
        if (i > last) {
            printf("%ld %lld\n", i, (long long)t);
            fflush(stdout);
            last = i;
            continue;
        }
        if (now_ns(CLOCK_MONOTONIC) - t0 > timeout)
            return 1;
        sleep_us(poll_us);
    }
    return 0;
}

static int cmd_waitbytes(char **a)
{
    const char *path = a[0], *expected = a[2];
    off_t off = (off_t)num(a[1], "offset");
    int64_t timeout = num(a[3], "timeout") * 1000000LL;
    long poll_us = (long)num(a[4], "poll interval");
    static char want[1 << 20], got[1 << 20];
    ssize_t n;
    long polls = 0;
    int fd = open(expected, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || (n = read(fd, want, sizeof(want))) <= 0) {
        fprintf(stderr, "editlat: cannot read '%s'\n", expected);
        return 2;
    }
    close(fd);
    int64_t t0 = now_ns(CLOCK_MONOTONIC);
    for (;;) {
        polls++;
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t r = pread(fd, got, (size_t)n, off);
            close(fd);
            if (r == n && memcmp(got, want, (size_t)n) == 0) {
                printf("%lld %ld\n", (long long)now_ns(CLOCK_REALTIME), polls);
                return 0;
            }
        }
        if (now_ns(CLOCK_MONOTONIC) - t0 > timeout)
            return 1;
        sleep_us(poll_us);
    }
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";

    if (!strcmp(cmd, "write") && argc == 6)
        return cmd_write(argv + 2);
    if (!strcmp(cmd, "watch") && argc == 8)
        return cmd_watch(argv + 2);
    if (!strcmp(cmd, "init") && argc == 4)
        return write_edit(argv[2], argv[3], 0) ? 1 : 0;
    if (!strcmp(cmd, "waitbytes") && argc == 7)
        return cmd_waitbytes(argv + 2);
    if (!strcmp(cmd, "now") && argc == 2) {
        printf("%lld\n", (long long)now_ns(CLOCK_REALTIME));
        return 0;
    }
    fprintf(stderr, "usage: editlat write FILE N INTERVAL_MS TAG\n"
                    "       editlat watch FILE N TAG READY_FILE TIMEOUT_MS POLL_US\n"
                    "       editlat init FILE TAG\n"
                    "       editlat waitbytes FILE OFFSET EXPECTED TIMEOUT_MS POLL_US\n"
                    "       editlat now\n");
    return 2;
}
