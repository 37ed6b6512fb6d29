/*
 * posixsuite: the POSIX behaviours a writable mount must keep, checked on the
 * file system that holds DIR.
 *
 *   posixsuite DIR [--only NAME]... [--list]
 *
 * The suite makes DIR/posixsuite.PID, runs every check in a folder of its own
 * below it (mode 0755) and removes it all at the end. Each check prints one
 * line on stdout:
 *
 *   ok NAME
 *   FAIL NAME: expected ..., got ...
 *   skip NAME: why (the file system or the user cannot run it; not a failure)
 *
 * Lines starting with '#' are comments (the file system type, a summary).
 * --only NAME runs just that check (repeatable); --list prints every check's
 * name and what it asserts, and runs nothing.
 *
 * The exit status is the number of failed checks (at most 100), so 0 means
 * every check passed or was skipped; 125 is a usage or setup error.
 *
 * The checks pin down Linux's behaviour on a local file system (ext4, tmpfs)
 * as the reference: a FUSE mount that passes them behaves like a local disk to
 * the programs running on it. The permission check runs only as root (it
 * forks a child that becomes nobody, 65534). umask is set to 022.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* renameat2, fallocate, strerrorname_np; the build passes it too */
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS      16
#define NOBODY       65534
#define EXIT_USAGE   125
#define MAX_FAIL_RC  100
#define MANY_ENTRIES 600 /* readdir_many: several getdents/FUSE readdir pages */

enum result { RES_OK, RES_FAIL, RES_SKIP };

/* One running check: its folder, the descriptors it holds, its verdict. */
struct ck {
    const char *name;
    int dfd;          /* the check's own folder */
    int fds[MAX_FDS]; /* opened by ck_open, closed by the runner if still open */
    int nfds;
    enum result result;
    char msg[1024];
};

struct check {
    const char *name;
    int (*run)(struct ck *c); /* 0 passed, -1 failed or skipped (c->result says which) */
    const char *what;
};

static const char *prog = "posixsuite";

/* --- verdicts --------------------------------------------------------------------------- */

static const char *ename(int e)
{
    const char *s = strerrorname_np(e);

    return s ? s : "an unknown errno";
}

/* "ENOENT (No such file or directory)" in a static buffer. */
static const char *edesc(int e)
{
    static char buf[128];

    snprintf(buf, sizeof(buf), "%s (%s)", ename(e), strerror(e));
    return buf;
}

static int vverdict(struct ck *c, enum result r, const char *fmt, va_list ap)
{
    if (c->result == RES_OK) {
        c->result = r;
        vsnprintf(c->msg, sizeof(c->msg), fmt, ap);
    }
    return -1;
}

/* Records a failure ("expected ..., got ...") unless one is recorded; returns -1. */
__attribute__((format(printf, 2, 3))) static int failf(struct ck *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vverdict(c, RES_FAIL, fmt, ap);
    va_end(ap);
    return -1;
}

/* Records that the check cannot run here; returns -1 (stop the check). */
__attribute__((format(printf, 2, 3))) static int skipf(struct ck *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vverdict(c, RES_SKIP, fmt, ap);
    va_end(ap);
    return -1;
}

/* r is a syscall's result: returns it if it succeeded, else records a failure and returns -1. */
__attribute__((format(printf, 3, 4))) static long want_ok(struct ck *c, long r, const char *fmt,
                                                          ...)
{
    char what[512];
    va_list ap;
    int e = errno;

    if (r >= 0)
        return r;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return failf(c, "expected %s to succeed, got %s", what, edesc(e));
}

/* r is a syscall's result: 0 if it failed with errno err, else records a failure. */
__attribute__((format(printf, 4, 5))) static int want_err(struct ck *c, long r, int err,
                                                          const char *fmt, ...)
{
    char what[512];
    va_list ap;
    int e = errno;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (r >= 0)
        return failf(c, "expected %s to fail with %s, got success", what, ename(err));
    if (e != err)
        return failf(c, "expected %s to fail with %s, got %s", what, ename(err), edesc(e));
    return 0;
}

#define TRY(x)                                                                                     \
    do {                                                                                           \
        if ((x) < 0)                                                                               \
            return -1;                                                                             \
    } while (0)

/* --- descriptors and data --------------------------------------------------------------- */

static int ck_track(struct ck *c, int fd)
{
    if (fd < 0)
        return fd;
    if (c->nfds == MAX_FDS) {
        close(fd);
        return failf(c, "expected at most %d open files per check, got more", MAX_FDS);
    }
    c->fds[c->nfds++] = fd;
    return fd;
}

/* openat in the check's folder; the runner closes the fd if the check does not. */
static int ck_open(struct ck *c, const char *name, int flags, mode_t mode)
{
    int fd = openat(c->dfd, name, flags | O_CLOEXEC, mode);

    if (want_ok(c, fd, "open '%s' (flags 0%o)", name, (unsigned)flags) < 0)
        return -1;
    return ck_track(c, fd);
}

/* close, reporting its error (a FUSE flush can fail there). */
static int ck_close(struct ck *c, int fd)
{
    int i;

    for (i = 0; i < c->nfds; i++) {
        if (c->fds[i] == fd) {
            c->fds[i] = c->fds[--c->nfds];
            break;
        }
    }
    return (int)want_ok(c, close(fd), "close of fd %d", fd);
}

static void fill(unsigned char *buf, size_t n, uint64_t seed)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
    size_t i;

    for (i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        buf[i] = (unsigned char)s;
    }
}

/* pwrite all of buf at off through fd. */
static int put(struct ck *c, int fd, const void *buf, size_t n, off_t off, const char *what)
{
    ssize_t w = pwrite(fd, buf, n, off);

    TRY(want_ok(c, w, "pwrite of %zu bytes at %lld to %s", n, (long long)off, what));
    if ((size_t)w != n)
        return failf(c, "expected pwrite of %zu bytes at %lld to %s to write all, got %zd", n,
                     (long long)off, what, w);
    return 0;
}

/* Creates name (O_EXCL, mode) holding n bytes of buf. */
static int make_file(struct ck *c, const char *name, const void *buf, size_t n, mode_t mode)
{
    int fd = ck_open(c, name, O_WRONLY | O_CREAT | O_EXCL, mode);

    TRY(fd);
    if (n > 0)
        TRY(put(c, fd, buf, n, 0, name));
    return ck_close(c, fd);
}

static int make_str(struct ck *c, const char *name, const char *s)
{
    return make_file(c, name, s, strlen(s), 0644);
}

static int cmp_bytes(struct ck *c, const unsigned char *want, const unsigned char *got, size_t n,
                     off_t base, const char *what)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (want[i] != got[i])
            return failf(c, "expected byte 0x%02x at offset %lld of %s, got 0x%02x", want[i],
                         (long long)base + (long long)i, what, got[i]);
    }
    return 0;
}

/* pread exactly n bytes at off through fd and compare them with want (NULL = zeros). */
static int want_fd_bytes(struct ck *c, int fd, off_t off, const void *want, size_t n,
                         const char *what)
{
    unsigned char *got = malloc(n + 1), *zero = NULL;
    ssize_t r;
    int rc = -1;

    if (!got || (!want && !(zero = calloc(1, n + 1)))) {
        failf(c, "expected memory for %zu bytes, got none", n);
        goto out;
    }
    r = pread(fd, got, n, off);
    if (want_ok(c, r, "pread of %zu bytes at %lld of %s", n, (long long)off, what) < 0)
        goto out;
    if ((size_t)r != n) {
        failf(c, "expected %zu bytes from pread at %lld of %s, got %zd", n, (long long)off, what,
              r);
        goto out;
    }
    rc = cmp_bytes(c, want ? want : zero, got, n, off, what);
out:
    free(got);
    free(zero);
    return rc;
}

/* The whole of name (through a fresh fd) must be exactly the n bytes of want. */
static int want_file(struct ck *c, const char *name, const void *want, size_t n)
{
    int fd = ck_open(c, name, O_RDONLY, 0);
    unsigned char *got = NULL;
    struct stat st;
    size_t have = 0;
    ssize_t r = 0;
    int rc = -1;

    TRY(fd);
    if (want_ok(c, fstat(fd, &st), "fstat of '%s'", name) < 0)
        goto out;
    if (st.st_size != (off_t)n) {
        failf(c, "expected '%s' to be %zu bytes, got %lld", name, n, (long long)st.st_size);
        goto out;
    }
    if (!(got = malloc(n + 4096))) {
        failf(c, "expected memory for %zu bytes, got none", n);
        goto out;
    }
    while (have < n + 4096 && (r = read(fd, got + have, n + 4096 - have)) > 0)
        have += (size_t)r;
    if (want_ok(c, r, "read of '%s'", name) < 0)
        goto out;
    if (have != n) {
        failf(c, "expected read(2) to return %zu bytes of '%s', got %zu", n, name, have);
        goto out;
    }
    char what[300];
    snprintf(what, sizeof(what), "'%s'", name);
    if (cmp_bytes(c, want, got, n, 0, what) < 0)
        goto out;
    rc = ck_close(c, fd);
    fd = -1;
out:
    if (fd >= 0)
        ck_close(c, fd);
    free(got);
    return rc;
}

static int want_str(struct ck *c, const char *name, const char *s)
{
    return want_file(c, name, s, strlen(s));
}

static int want_absent(struct ck *c, const char *name)
{
    struct stat st;

    return want_err(c, fstatat(c->dfd, name, &st, AT_SYMLINK_NOFOLLOW), ENOENT, "lstat of '%s'",
                    name);
}

static int want_stat(struct ck *c, const char *name, struct stat *st)
{
    return (int)want_ok(c, fstatat(c->dfd, name, st, AT_SYMLINK_NOFOLLOW), "lstat of '%s'", name);
}

static int want_size(struct ck *c, const char *name, off_t size)
{
    struct stat st;

    TRY(want_stat(c, name, &st));
    if (st.st_size != size)
        return failf(c, "expected '%s' to be %lld bytes, got %lld", name, (long long)size,
                     (long long)st.st_size);
    return 0;
}

static int want_fsize(struct ck *c, int fd, off_t size, const char *what)
{
    struct stat st;

    TRY(want_ok(c, fstat(fd, &st), "fstat of %s", what));
    if (st.st_size != size)
        return failf(c, "expected %s to be %lld bytes (fstat), got %lld", what, (long long)size,
                     (long long)st.st_size);
    return 0;
}

static int ts_eq(struct timespec a, struct timespec b)
{
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

static int ts_cmp(struct timespec a, struct timespec b)
{
    if (a.tv_sec != b.tv_sec)
        return a.tv_sec < b.tv_sec ? -1 : 1;
    if (a.tv_nsec != b.tv_nsec)
        return a.tv_nsec < b.tv_nsec ? -1 : 1;
    return 0;
}

/*
 * The folder sub (relative to the check's folder) must list exactly the n names of want, each
 * once ("." and ".." aside).
 */
static int want_listing(struct ck *c, const char *sub, const char *const *want, size_t n)
{
    int *seen = calloc(n + 1, sizeof(*seen));
    int fd = openat(c->dfd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct dirent *de;
    DIR *d = NULL;
    size_t i;
    int rc = -1;

    if (!seen) {
        failf(c, "expected memory, got none");
        goto out;
    }
    if (want_ok(c, fd, "open of folder '%s'", sub) < 0)
        goto out;
    if (!(d = fdopendir(fd))) {
        want_ok(c, -1, "fdopendir of '%s'", sub);
        close(fd);
        goto out;
    }
    errno = 0;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        for (i = 0; i < n; i++) {
            if (!strcmp(de->d_name, want[i]))
                break;
        }
        if (i == n) {
            failf(c, "expected only %zu listed names in '%s', got the extra '%s'", n, sub,
                  de->d_name);
            goto out;
        }
        if (seen[i]++) {
            failf(c, "expected '%s' listed once in '%s', got it twice", want[i], sub);
            goto out;
        }
    }
    if (want_ok(c, errno ? -1 : 0, "readdir of '%s'", sub) < 0)
        goto out;
    for (i = 0; i < n; i++) {
        if (!seen[i]) {
            failf(c, "expected '%s' listed in '%s', got it missing", want[i], sub);
            goto out;
        }
    }
    rc = 0;
out:
    if (d)
        closedir(d);
    free(seen);
    return rc;
}

static int set_times(struct ck *c, const char *name, time_t as, long ans, time_t ms, long mns)
{
    struct timespec ts[2] = {{.tv_sec = as, .tv_nsec = ans}, {.tv_sec = ms, .tv_nsec = mns}};

    return (int)want_ok(c, utimensat(c->dfd, name, ts, 0), "utimensat of '%s'", name);
}

/* --- the checks ---------------------------------------------------------------------------- */

static int check_create_excl(struct ck *c)
{
    struct stat st;

    TRY(make_str(c, "f", "x"));
    TRY(want_err(c, openat(c->dfd, "f", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644), EEXIST,
                 "O_CREAT|O_EXCL open of the existing 'f'"));
    TRY(want_str(c, "f", "x"));
    /* Without O_EXCL, O_CREAT opens the existing file and keeps its bytes. */
    TRY(ck_close(c, ck_open(c, "f", O_WRONLY | O_CREAT, 0600)));
    TRY(want_str(c, "f", "x"));
    TRY(want_stat(c, "f", &st));
    if ((st.st_mode & 07777) != 0644)
        return failf(c, "expected O_CREAT of an existing file to keep mode 0644, got 0%o",
                     st.st_mode & 07777);
    /* O_EXCL does not follow a symlink, even a dangling one. */
    TRY(want_ok(c, symlinkat("nowhere", c->dfd, "l"), "symlink 'l' -> 'nowhere'"));
    TRY(want_err(c, openat(c->dfd, "l", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644), EEXIST,
                 "O_CREAT|O_EXCL open of the dangling symlink 'l'"));
    return want_absent(c, "nowhere");
}

static int check_create_mode(struct ck *c)
{
    struct stat st;

    TRY(make_file(c, "f666", "", 0, 0666));
    TRY(want_stat(c, "f666", &st));
    if ((st.st_mode & 07777) != 0644)
        return failf(c, "expected a file created with 0666 under umask 022 to be 0644, got 0%o",
                     st.st_mode & 07777);
    if (!S_ISREG(st.st_mode))
        return failf(c, "expected a regular file, got mode 0%o", st.st_mode);
    TRY(make_file(c, "f600", "", 0, 0600));
    TRY(want_stat(c, "f600", &st));
    if ((st.st_mode & 07777) != 0600)
        return failf(c, "expected a file created with 0600 to be 0600, got 0%o",
                     st.st_mode & 07777);
    TRY(want_ok(c, mkdirat(c->dfd, "d", 0777), "mkdir 'd'"));
    TRY(want_stat(c, "d", &st));
    if (!S_ISDIR(st.st_mode) || (st.st_mode & 07777) != 0755)
        return failf(c, "expected a folder of mode 0755 (0777 under umask 022), got 0%o",
                     st.st_mode);
    return 0;
}

static int check_append_two_fds(struct ck *c)
{
    static const unsigned char want[16] = "AAAABBBB\0\0XXCCCC";
    int a, b, w;
    off_t pos;

    TRY(a = ck_open(c, "f", O_WRONLY | O_CREAT | O_APPEND, 0644));
    TRY(b = ck_open(c, "f", O_WRONLY | O_APPEND, 0));
    TRY(w = ck_open(c, "f", O_RDWR, 0));
    TRY(want_ok(c, write(a, "AAAA", 4), "append write through fd a"));
    TRY(want_ok(c, write(b, "BBBB", 4), "append write through fd b"));
    /* A plain fd extends the file behind the appenders' backs, leaving a hole. */
    TRY(put(c, w, "XX", 2, 10, "'f' (plain fd)"));
    TRY(want_ok(c, lseek(a, 0, SEEK_SET), "lseek of fd a to 0"));
    TRY(want_ok(c, write(a, "CCCC", 4), "append write through fd a after lseek to 0"));
    pos = lseek(a, 0, SEEK_CUR);
    if (pos != 16)
        return failf(c, "expected fd a's offset at the new end (16) after an append, got %lld",
                     (long long)pos);
    TRY(want_fsize(c, w, 16, "'f'"));
    TRY(want_fd_bytes(c, w, 0, want, sizeof(want), "'f'"));
    return want_file(c, "f", want, sizeof(want));
}

static int check_o_trunc(struct ck *c)
{
    unsigned char buf[10000];
    struct stat st;
    int fd, other;

    fill(buf, sizeof(buf), 1);
    TRY(make_file(c, "f", buf, sizeof(buf), 0644));
    TRY(set_times(c, "f", 1000000000, 0, 1000000000, 0));
    TRY(other = ck_open(c, "f", O_RDONLY, 0));
    TRY(fd = ck_open(c, "f", O_WRONLY | O_TRUNC, 0));
    TRY(want_fsize(c, fd, 0, "'f' after O_TRUNC"));
    TRY(want_ok(c, fstat(fd, &st), "fstat of 'f'"));
    if (st.st_mtim.tv_sec == 1000000000)
        return failf(c, "expected O_TRUNC of a non-empty file to update its mtime, got it kept");
    /* Another open fd sees the empty file. */
    char b;
    ssize_t r = pread(other, &b, 1, 0);
    if (r != 0)
        return failf(c,
                     "expected pread at 0 through another fd of the truncated 'f' to return "
                     "0, got %zd",
                     r);
    TRY(want_ok(c, write(fd, "new", 3), "write after O_TRUNC"));
    TRY(ck_close(c, fd));
    TRY(want_str(c, "f", "new"));
    TRY(ck_close(c, ck_open(c, "f", O_RDWR | O_TRUNC, 0)));
    return want_size(c, "f", 0);
}

static int check_write_read_offsets(struct ck *c)
{
    static const struct {
        off_t off;
        size_t len;
    } w[] = {{0, 100}, {4090, 20}, {131060, 40}, {65536, 4096}, {50, 10}, {4095, 1}, {8191, 2}};
    enum { SIZE = 131100 };
    unsigned char *model = calloc(1, SIZE), buf[4096], tail[64];
    size_t i;
    ssize_t r;
    int fd, rc = -1;

    if (!model)
        return failf(c, "expected memory, got none");
    if ((fd = ck_open(c, "f", O_RDWR | O_CREAT, 0644)) < 0)
        goto out;
    for (i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
        fill(buf, w[i].len, 100 + i);
        if (put(c, fd, buf, w[i].len, w[i].off, "'f'") < 0)
            goto out;
        memcpy(model + w[i].off, buf, w[i].len);
    }
    if (want_fsize(c, fd, SIZE, "'f'") < 0 || want_fd_bytes(c, fd, 0, model, SIZE, "'f'") < 0)
        goto out;
    /* read(2) after lseek, at an offset inside a page. */
    if (want_ok(c, lseek(fd, 4000, SEEK_SET), "lseek to 4000") < 0)
        goto out;
    r = read(fd, buf, 200);
    if (want_ok(c, r, "read of 200 bytes at 4000") < 0)
        goto out;
    if (r != 200) {
        failf(c, "expected read of 200 bytes at 4000 to return 200, got %zd", r);
        goto out;
    }
    if (cmp_bytes(c, model + 4000, buf, 200, 4000, "'f' (read(2))") < 0)
        goto out;
    /* At and across the end. */
    r = pread(fd, tail, sizeof(tail), SIZE);
    if (r != 0) {
        failf(c, "expected pread at the end of 'f' to return 0, got %zd", r);
        goto out;
    }
    r = pread(fd, tail, sizeof(tail), SIZE - 10);
    if (r != 10) {
        failf(c, "expected pread of 64 bytes 10 before the end to return 10, got %zd", r);
        goto out;
    }
    if (cmp_bytes(c, model + SIZE - 10, tail, 10, SIZE - 10, "'f'") < 0)
        goto out;
    if (ck_close(c, fd) < 0)
        goto out;
    rc = want_file(c, "f", model, SIZE);
out:
    free(model);
    return rc;
}

static int check_sparse_write(struct ck *c)
{
    const off_t far = (10 << 20) + 123;
    int fd;

    TRY(fd = ck_open(c, "f", O_RDWR | O_CREAT, 0644));
    TRY(put(c, fd, "Z", 1, far, "'f'"));
    TRY(want_fsize(c, fd, far + 1, "'f'"));
    TRY(want_size(c, "f", far + 1));
    for (off_t off = 0; off < far; off += 1 << 20) {
        size_t n = (size_t)(far - off < (1 << 20) ? far - off : (1 << 20));

        TRY(want_fd_bytes(c, fd, off, NULL, n, "the hole of 'f'"));
    }
    TRY(want_fd_bytes(c, fd, far, "Z", 1, "'f'"));
    TRY(ck_close(c, fd));
    /* Data before the hole survives. */
    TRY(make_str(c, "g", "head"));
    TRY(fd = ck_open(c, "g", O_WRONLY, 0));
    TRY(put(c, fd, "tail", 4, 1 << 20, "'g'"));
    TRY(ck_close(c, fd));
    TRY(fd = ck_open(c, "g", O_RDONLY, 0));
    TRY(want_fd_bytes(c, fd, 0, "head", 4, "'g'"));
    TRY(want_fd_bytes(c, fd, 4, NULL, (1 << 20) - 4, "the hole of 'g'"));
    TRY(want_fd_bytes(c, fd, 1 << 20, "tail", 4, "'g'"));
    return want_fsize(c, fd, (1 << 20) + 4, "'g'");
}

static int check_truncate_up(struct ck *c)
{
    unsigned char want[10000] = "hello";
    int fd;

    TRY(make_str(c, "f", "hello"));
    TRY(fd = ck_open(c, "f", O_RDONLY, 0));
    TRY(want_ok(c, truncate("f", sizeof(want)), "truncate of 'f' to %zu", sizeof(want)));
    TRY(want_size(c, "f", sizeof(want)));
    TRY(want_fsize(c, fd, sizeof(want), "'f' (fd open before the truncate)"));
    TRY(want_fd_bytes(c, fd, 0, want, sizeof(want), "'f' (fd open before the truncate)"));
    return want_file(c, "f", want, sizeof(want));
}

static int check_truncate_down(struct ck *c)
{
    unsigned char buf[10000], want[10000];
    int fd;
    ssize_t r;

    fill(buf, sizeof(buf), 2);
    TRY(make_file(c, "f", buf, sizeof(buf), 0644));
    TRY(fd = ck_open(c, "f", O_RDONLY, 0));
    TRY(want_fd_bytes(c, fd, 0, buf, sizeof(buf), "'f'")); /* cached before the truncate */
    TRY(want_ok(c, truncate("f", 3000), "truncate of 'f' to 3000"));
    TRY(want_size(c, "f", 3000));
    TRY(want_fsize(c, fd, 3000, "'f' (fd open before the truncate)"));
    r = pread(fd, want, 100, 3000);
    if (r != 0)
        return failf(c, "expected pread at the new end (3000) to return 0, got %zd", r);
    TRY(want_file(c, "f", buf, 3000));
    /* Growing again must show zeros, never the cut bytes. */
    TRY(want_ok(c, truncate("f", sizeof(want)), "truncate of 'f' back to %zu", sizeof(want)));
    memcpy(want, buf, 3000);
    memset(want + 3000, 0, sizeof(want) - 3000);
    TRY(want_fd_bytes(c, fd, 0, want, sizeof(want), "'f' grown again"));
    return want_file(c, "f", want, sizeof(want));
}

static int check_ftruncate_open_fd(struct ck *c)
{
    unsigned char buf[8000];
    int fd, ro;
    struct stat st;

    fill(buf, sizeof(buf), 3);
    TRY(fd = ck_open(c, "f", O_RDWR | O_CREAT, 0644));
    TRY(put(c, fd, buf, sizeof(buf), 0, "'f'"));
    TRY(want_ok(c, lseek(fd, sizeof(buf), SEEK_SET), "lseek to 8000"));
    TRY(want_ok(c, ftruncate(fd, 100), "ftruncate of 'f' to 100"));
    TRY(want_fsize(c, fd, 100, "'f' after ftruncate"));
    TRY(want_size(c, "f", 100));
    /* The file offset stays at 8000: a write there leaves a hole from 100. */
    TRY(want_ok(c, write(fd, "END", 3), "write at offset 8000 after ftruncate"));
    TRY(want_fsize(c, fd, 8003, "'f'"));
    TRY(want_fd_bytes(c, fd, 0, buf, 100, "'f'"));
    TRY(want_fd_bytes(c, fd, 100, NULL, 7900, "'f' between 100 and 8000"));
    TRY(want_fd_bytes(c, fd, 8000, "END", 3, "'f'"));
    TRY(ro = ck_open(c, "f", O_RDONLY, 0));
    int r = ftruncate(ro, 0);
    int e = errno;
    if (r == 0 || (e != EINVAL && e != EBADF))
        return failf(c, "expected ftruncate of a read-only fd to fail with EINVAL or EBADF, got %s",
                     r == 0 ? "success" : edesc(e));
    TRY(want_ok(c, fstat(fd, &st), "fstat"));
    if (st.st_size != 8003)
        return failf(c, "expected a refused ftruncate to keep the size 8003, got %lld",
                     (long long)st.st_size);
    return 0;
}

static int want_times(struct ck *c, const char *name, struct timespec at, struct timespec mt)
{
    struct stat st;

    TRY(want_stat(c, name, &st));
    if (!ts_eq(st.st_atim, at))
        return failf(c, "expected atime %lld.%09ld on '%s', got %lld.%09ld", (long long)at.tv_sec,
                     at.tv_nsec, name, (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec);
    if (!ts_eq(st.st_mtim, mt))
        return failf(c, "expected mtime %lld.%09ld on '%s', got %lld.%09ld", (long long)mt.tv_sec,
                     mt.tv_nsec, name, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    return 0;
}

static int check_utimens_ns(struct ck *c)
{
    struct timespec at = {1500000000, 123456789}, mt = {1600000000, 987654321};
    struct timespec ts[2];
    int fd;

    TRY(make_str(c, "f", "x"));
    TRY(set_times(c, "f", at.tv_sec, at.tv_nsec, mt.tv_sec, mt.tv_nsec));
    TRY(want_times(c, "f", at, mt));
    TRY(want_ok(c, mkdirat(c->dfd, "d", 0755), "mkdir 'd'"));
    TRY(set_times(c, "d", 1400000000, 1, 1300000000, 999999999));
    TRY(want_times(c, "d", (struct timespec){1400000000, 1},
                   (struct timespec){1300000000, 999999999}));
    /* futimens on an open fd, then the times seen through the path. */
    TRY(fd = ck_open(c, "f", O_RDWR, 0));
    ts[0] = (struct timespec){1234567890, 500};
    ts[1] = (struct timespec){1234567891, 600000};
    TRY(want_ok(c, futimens(fd, ts), "futimens of 'f'"));
    TRY(ck_close(c, fd));
    return want_times(c, "f", ts[0], ts[1]);
}

static int check_utimens_omit_now(struct ck *c)
{
    struct timespec at = {1500000000, 111111111}, mt = {1600000000, 222222222};
    struct timespec ts[2], before, after;
    struct stat st;

    TRY(make_str(c, "f", "x"));
    TRY(set_times(c, "f", at.tv_sec, at.tv_nsec, mt.tv_sec, mt.tv_nsec));
    ts[0] = (struct timespec){0, UTIME_OMIT};
    ts[1] = (struct timespec){1700000000, 333};
    TRY(want_ok(c, utimensat(c->dfd, "f", ts, 0), "utimensat (atime UTIME_OMIT)"));
    TRY(want_times(c, "f", at, ts[1]));
    mt = ts[1];
    ts[0] = (struct timespec){0, UTIME_NOW};
    ts[1] = (struct timespec){0, UTIME_OMIT};
    clock_gettime(CLOCK_REALTIME, &before);
    TRY(want_ok(c, utimensat(c->dfd, "f", ts, 0), "utimensat (UTIME_NOW, UTIME_OMIT)"));
    clock_gettime(CLOCK_REALTIME, &after);
    TRY(want_stat(c, "f", &st));
    if (!ts_eq(st.st_mtim, mt))
        return failf(c, "expected UTIME_OMIT to keep mtime %lld.%09ld, got %lld.%09ld",
                     (long long)mt.tv_sec, mt.tv_nsec, (long long)st.st_mtim.tv_sec,
                     st.st_mtim.tv_nsec);
    /* The kernel's coarse clock may lag the caller's by a tick; allow 2 s either way. */
    if (st.st_atim.tv_sec < before.tv_sec - 2 || st.st_atim.tv_sec > after.tv_sec + 2)
        return failf(c, "expected UTIME_NOW to set atime near %lld, got %lld.%09ld",
                     (long long)before.tv_sec, (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec);
    /* NULL times: both now. */
    TRY(want_ok(c, utimensat(c->dfd, "f", NULL, 0), "utimensat (NULL: both now)"));
    TRY(want_stat(c, "f", &st));
    if (st.st_mtim.tv_sec < before.tv_sec - 2)
        return failf(c, "expected utimensat(NULL) to set mtime near %lld, got %lld",
                     (long long)before.tv_sec, (long long)st.st_mtim.tv_sec);
    return 0;
}

static int check_write_updates_mtime_ctime(struct ck *c)
{
    const struct timespec pause = {0, 30 * 1000 * 1000};
    struct stat st0, st;
    int fd;

    TRY(make_str(c, "f", "data"));
    TRY(set_times(c, "f", 1000000000, 0, 1000000000, 0));
    TRY(want_stat(c, "f", &st0));
    nanosleep(&pause, NULL); /* ctime ticks coarsely: let it move */
    TRY(fd = ck_open(c, "f", O_WRONLY, 0));
    TRY(put(c, fd, "more", 4, 2, "'f'"));
    TRY(want_stat(c, "f", &st));
    if (st.st_mtim.tv_sec == 1000000000)
        return failf(c, "expected a write to update the mtime of 'f', got it still 1000000000");
    if (ts_cmp(st.st_ctim, st0.st_ctim) <= 0)
        return failf(c, "expected a write to move the ctime of 'f' past %lld.%09ld, got %lld.%09ld",
                     (long long)st0.st_ctim.tv_sec, st0.st_ctim.tv_nsec,
                     (long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
    /* ftruncate to another size updates the mtime too. */
    TRY(set_times(c, "f", 1000000000, 0, 1000000000, 0));
    TRY(want_ok(c, ftruncate(fd, 3), "ftruncate of 'f' to 3"));
    TRY(want_stat(c, "f", &st));
    if (st.st_mtim.tv_sec == 1000000000)
        return failf(c, "expected ftruncate to update the mtime of 'f', got it still 1000000000");
    return 0;
}

static int check_chmod_mode_bits(struct ck *c)
{
    static const mode_t modes[] = {0600, 0640, 0755, 0444, 0000, 0777, 0711, 01755};
    struct stat st;
    size_t i;
    int fd;

    TRY(make_str(c, "f", "x"));
    TRY(want_ok(c, mkdirat(c->dfd, "d", 0755), "mkdir 'd'"));
    for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        const char *name = modes[i] & 01000 ? "d" : "f"; /* sticky on a folder only */

        TRY(want_ok(c, fchmodat(c->dfd, name, modes[i], 0), "chmod 0%o of '%s'", modes[i], name));
        TRY(want_stat(c, name, &st));
        if ((st.st_mode & 07777) != modes[i])
            return failf(c, "expected mode 0%o on '%s' after chmod, got 0%o", modes[i], name,
                         st.st_mode & 07777);
    }
    TRY(want_ok(c, fchmodat(c->dfd, "f", 0600, 0), "chmod 0600 of 'f'"));
    TRY(fd = ck_open(c, "f", O_RDONLY, 0));
    TRY(want_ok(c, fchmod(fd, 0604), "fchmod 0604 of 'f'"));
    TRY(want_stat(c, "f", &st));
    if ((st.st_mode & 07777) != 0604)
        return failf(c, "expected mode 0604 on 'f' after fchmod, got 0%o", st.st_mode & 07777);
    if (!S_ISREG(st.st_mode))
        return failf(c, "expected chmod to keep 'f' a regular file, got mode 0%o", st.st_mode);
    return 0;
}

/* Runs in the child that became nobody: "" on success, else the failure. */
static void perm_child(int dfd, char *msg, size_t sz)
{
    char b[8];
    int fd;

    if (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0) {
        snprintf(msg, sz, "expected to become uid %d, got %s", NOBODY, edesc(errno));
        return;
    }
    fd = openat(dfd, "secret", O_RDONLY);
    if (fd >= 0 || errno != EACCES) {
        snprintf(msg, sz,
                 "expected nobody's open of the root-owned 0600 'secret' to fail with "
                 "EACCES, got %s",
                 fd >= 0 ? "success" : edesc(errno));
        return;
    }
    fd = openat(dfd, "public", O_RDONLY);
    if (fd < 0) {
        snprintf(msg, sz, "expected nobody to open the 0644 'public' for reading, got %s",
                 edesc(errno));
        return;
    }
    ssize_t r = read(fd, b, sizeof(b));
    if (r != 3 || memcmp(b, "pub", 3) != 0) {
        snprintf(msg, sz, "expected nobody to read 'pub' from 'public', got %zd bytes (%s)", r,
                 r < 0 ? edesc(errno) : "other bytes");
        return;
    }
    close(fd);
    fd = openat(dfd, "public", O_WRONLY);
    if (fd >= 0 || errno != EACCES) {
        snprintf(msg, sz,
                 "expected nobody's open of the 0644 'public' for writing to fail with "
                 "EACCES, got %s",
                 fd >= 0 ? "success" : edesc(errno));
        return;
    }
    fd = openat(dfd, "new", O_WRONLY | O_CREAT, 0644);
    if (fd >= 0 || errno != EACCES) {
        snprintf(msg, sz,
                 "expected nobody's create in a root-owned 0755 folder to fail with "
                 "EACCES, got %s",
                 fd >= 0 ? "success" : edesc(errno));
        return;
    }
    int u = unlinkat(dfd, "public", 0);
    if (u == 0 || errno != EACCES) {
        snprintf(msg, sz,
                 "expected nobody's unlink in a root-owned 0755 folder to fail with "
                 "EACCES, got %s",
                 u == 0 ? "success" : edesc(errno));
        return;
    }
    msg[0] = '\0';
}

static int check_perm_default_permissions(struct ck *c)
{
    char msg[512] = "";
    int p[2], status;
    ssize_t n = 0, r;
    pid_t pid;

    if (geteuid() != 0)
        return skipf(c, "needs root to switch to nobody, running as uid %u", (unsigned)geteuid());
    TRY(make_file(c, "secret", "sec", 3, 0600));
    TRY(make_file(c, "public", "pub", 3, 0644));
    TRY(want_ok(c, fchmodat(c->dfd, ".", 0755, 0), "chmod 0755 of the check's folder"));
    TRY(want_ok(c, pipe2(p, O_CLOEXEC), "pipe"));
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        close(p[0]);
        perm_child(c->dfd, msg, sizeof(msg));
        if (write(p[1], msg, strlen(msg)) < 0)
            _exit(2);
        _exit(0);
    }
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        return want_ok(c, -1, "fork");
    }
    while ((r = read(p[0], msg + n, sizeof(msg) - 1 - (size_t)n)) > 0)
        n += r;
    msg[n] = '\0';
    close(p[0]);
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return failf(c, "expected the nobody child to exit 0, got status 0x%x", status);
    if (msg[0])
        return failf(c, "%s", msg);
    /* Root (CAP_DAC_OVERRIDE) still reads the 0600 file. */
    return want_file(c, "secret", "sec", 3);
}

static int check_rename_file_over_file(struct ck *c)
{
    struct stat sa, sb;
    int old;
    static const char *const only_b[] = {"b"};

    TRY(make_str(c, "a", "new contents"));
    TRY(make_str(c, "b", "old"));
    TRY(want_stat(c, "a", &sa));
    TRY(old = ck_open(c, "b", O_RDONLY, 0));
    TRY(want_ok(c, renameat(c->dfd, "a", c->dfd, "b"), "rename 'a' over 'b'"));
    TRY(want_absent(c, "a"));
    TRY(want_str(c, "b", "new contents"));
    TRY(want_stat(c, "b", &sb));
    if (sb.st_ino != sa.st_ino)
        return failf(c, "expected 'b' to be the inode %llu of 'a' after the rename, got %llu",
                     (unsigned long long)sa.st_ino, (unsigned long long)sb.st_ino);
    /* The replaced file lives on for the fd opened before the rename. */
    TRY(want_fd_bytes(c, old, 0, "old", 3, "the replaced 'b' (fd open before the rename)"));
    TRY(want_listing(c, ".", only_b, 1));
    TRY(ck_close(c, old));
    return want_listing(c, ".", only_b, 1);
}

static int check_rename_dir_over_empty_dir(struct ck *c)
{
    static const char *const only_d2[] = {"d2"};
    static const char *const inner[] = {"inner"};

    TRY(want_ok(c, mkdirat(c->dfd, "d1", 0755), "mkdir 'd1'"));
    TRY(want_ok(c, mkdirat(c->dfd, "d2", 0755), "mkdir 'd2'"));
    TRY(make_str(c, "d1/inner", "in"));
    TRY(want_ok(c, renameat(c->dfd, "d1", c->dfd, "d2"), "rename 'd1' over the empty 'd2'"));
    TRY(want_absent(c, "d1"));
    TRY(want_str(c, "d2/inner", "in"));
    TRY(want_listing(c, "d2", inner, 1));
    return want_listing(c, ".", only_d2, 1);
}

static int check_rename_dir_over_nonempty_dir(struct ck *c)
{
    int r, e;

    TRY(want_ok(c, mkdirat(c->dfd, "d1", 0755), "mkdir 'd1'"));
    TRY(want_ok(c, mkdirat(c->dfd, "d2", 0755), "mkdir 'd2'"));
    TRY(make_str(c, "d1/one", "1"));
    TRY(make_str(c, "d2/two", "2"));
    r = renameat(c->dfd, "d1", c->dfd, "d2");
    e = errno;
    if (r == 0 || (e != ENOTEMPTY && e != EEXIST))
        return failf(c,
                     "expected rename of 'd1' over the non-empty 'd2' to fail with ENOTEMPTY "
                     "or EEXIST, got %s",
                     r == 0 ? "success" : edesc(e));
    TRY(want_str(c, "d1/one", "1"));
    TRY(want_str(c, "d2/two", "2"));
    return want_absent(c, "d2/one");
}

static int check_rename_noreplace(struct ck *c)
{
    TRY(make_str(c, "a", "A"));
    TRY(make_str(c, "b", "B"));
    TRY(want_err(c, renameat2(c->dfd, "a", c->dfd, "b", RENAME_NOREPLACE), EEXIST,
                 "rename 'a' to the existing 'b' with RENAME_NOREPLACE"));
    TRY(want_str(c, "a", "A"));
    TRY(want_str(c, "b", "B"));
    TRY(want_ok(c, renameat2(c->dfd, "a", c->dfd, "c", RENAME_NOREPLACE),
                "rename 'a' to the free 'c' with RENAME_NOREPLACE"));
    TRY(want_absent(c, "a"));
    return want_str(c, "c", "A");
}

static int check_rename_exchange(struct ck *c)
{
    struct stat sa, sb, st;

    TRY(make_str(c, "a", "first"));
    TRY(want_ok(c, mkdirat(c->dfd, "b", 0755), "mkdir 'b'"));
    TRY(make_str(c, "b/in", "inside"));
    TRY(want_stat(c, "a", &sa));
    TRY(want_stat(c, "b", &sb));
    if (renameat2(c->dfd, "a", c->dfd, "b", RENAME_EXCHANGE) != 0) {
        if (errno == EINVAL)
            return skipf(c, "RENAME_EXCHANGE refused with %s", edesc(errno));
        return want_ok(c, -1, "RENAME_EXCHANGE of the file 'a' and the folder 'b'");
    }
    TRY(want_str(c, "b", "first"));
    TRY(want_str(c, "a/in", "inside"));
    TRY(want_stat(c, "a", &st));
    if (st.st_ino != sb.st_ino || !S_ISDIR(st.st_mode))
        return failf(c,
                     "expected 'a' to be the folder (inode %llu) after the exchange, got "
                     "inode %llu mode 0%o",
                     (unsigned long long)sb.st_ino, (unsigned long long)st.st_ino, st.st_mode);
    TRY(want_stat(c, "b", &st));
    if (st.st_ino != sa.st_ino || !S_ISREG(st.st_mode))
        return failf(c,
                     "expected 'b' to be the file (inode %llu) after the exchange, got "
                     "inode %llu mode 0%o",
                     (unsigned long long)sa.st_ino, (unsigned long long)st.st_ino, st.st_mode);
    /* Two files: the contents swap. */
    TRY(make_str(c, "x", "xx"));
    TRY(make_str(c, "y", "yyy"));
    TRY(want_ok(c, renameat2(c->dfd, "x", c->dfd, "y", RENAME_EXCHANGE), "exchange 'x' 'y'"));
    TRY(want_str(c, "x", "yyy"));
    TRY(want_str(c, "y", "xx"));
    return want_err(c, renameat2(c->dfd, "x", c->dfd, "missing", RENAME_EXCHANGE), ENOENT,
                    "RENAME_EXCHANGE with a missing target");
}

static int check_rename_into_own_subdir(struct ck *c)
{
    TRY(want_ok(c, mkdirat(c->dfd, "a", 0755), "mkdir 'a'"));
    TRY(want_ok(c, mkdirat(c->dfd, "a/b", 0755), "mkdir 'a/b'"));
    TRY(want_err(c, renameat(c->dfd, "a", c->dfd, "a/b/c"), EINVAL,
                 "rename of 'a' into its own subfolder 'a/b/c'"));
    TRY(want_err(c, renameat(c->dfd, "a", c->dfd, "a/c"), EINVAL,
                 "rename of 'a' into itself as 'a/c'"));
    struct stat st;
    TRY(want_stat(c, "a/b", &st));
    return want_absent(c, "a/b/c");
}

static int check_rename_kind_mismatch(struct ck *c)
{
    TRY(make_str(c, "f", "file"));
    TRY(want_ok(c, mkdirat(c->dfd, "d", 0755), "mkdir 'd'"));
    TRY(want_err(c, renameat(c->dfd, "f", c->dfd, "d"), EISDIR,
                 "rename of the file 'f' over the folder 'd'"));
    TRY(want_err(c, renameat(c->dfd, "d", c->dfd, "f"), ENOTDIR,
                 "rename of the folder 'd' over the file 'f'"));
    TRY(want_str(c, "f", "file"));
    TRY(want_ok(c, renameat(c->dfd, "f", c->dfd, "f"), "rename of 'f' onto itself"));
    TRY(want_str(c, "f", "file"));
    return want_err(c, renameat(c->dfd, "missing", c->dfd, "g"), ENOENT,
                    "rename of the missing 'missing'");
}

static int check_unlink_open_file(struct ck *c)
{
    unsigned char buf[3000];
    int fd;

    fill(buf, sizeof(buf), 4);
    TRY(fd = ck_open(c, "f", O_RDWR | O_CREAT, 0644));
    TRY(put(c, fd, buf, 1000, 0, "'f'"));
    TRY(want_ok(c, unlinkat(c->dfd, "f", 0), "unlink of the open 'f'"));
    TRY(want_absent(c, "f"));
    TRY(want_err(c, openat(c->dfd, "f", O_RDONLY | O_CLOEXEC), ENOENT, "open of the unlinked 'f'"));
    TRY(want_fd_bytes(c, fd, 0, buf, 1000, "the unlinked 'f'"));
    TRY(put(c, fd, buf + 1000, 2000, 1000, "the unlinked 'f'"));
    TRY(want_fd_bytes(c, fd, 0, buf, sizeof(buf), "the unlinked 'f'"));
    TRY(want_ok(c, ftruncate(fd, 1500), "ftruncate of the unlinked 'f'"));
    TRY(want_fsize(c, fd, 1500, "the unlinked 'f'"));
    TRY(want_ok(c, fsync(fd), "fsync of the unlinked 'f'"));
    /* A new file of the same name is another file. */
    TRY(make_str(c, "f", "fresh"));
    TRY(want_fd_bytes(c, fd, 0, buf, 1500, "the unlinked 'f'"));
    TRY(ck_close(c, fd));
    return want_str(c, "f", "fresh");
}

static int check_unlink_open_no_leftover(struct ck *c)
{
    static const char *const keep[] = {"keep"};
    struct stat st;
    int fd;

    TRY(make_str(c, "keep", "k"));
    TRY(fd = ck_open(c, "f", O_RDWR | O_CREAT, 0644));
    TRY(put(c, fd, "data", 4, 0, "'f'"));
    TRY(want_ok(c, unlinkat(c->dfd, "f", 0), "unlink of the open 'f'"));
    TRY(want_listing(c, ".", keep, 1)); /* no .fuse_hidden* or .nfs* stand-in */
    TRY(want_ok(c, fstat(fd, &st), "fstat of the unlinked 'f'"));
    if (st.st_nlink != 0)
        return failf(c, "expected st_nlink 0 on the open, unlinked 'f', got %lu",
                     (unsigned long)st.st_nlink);
    TRY(ck_close(c, fd));
    TRY(want_listing(c, ".", keep, 1));
    /* The folder of the unlinked file can go while nothing holds it. */
    TRY(want_ok(c, unlinkat(c->dfd, "keep", 0), "unlink of 'keep'"));
    return want_listing(c, ".", NULL, 0);
}

static int check_hard_link(struct ck *c)
{
    struct stat sa, sb;
    int fd;

    TRY(make_str(c, "a", "shared"));
    TRY(want_ok(c, linkat(c->dfd, "a", c->dfd, "b", 0), "link 'a' -> 'b'"));
    TRY(want_stat(c, "a", &sa));
    TRY(want_stat(c, "b", &sb));
    if (sa.st_ino != sb.st_ino)
        return failf(c, "expected 'a' and 'b' to share an inode, got %llu and %llu",
                     (unsigned long long)sa.st_ino, (unsigned long long)sb.st_ino);
    if (sa.st_nlink != 2 || sb.st_nlink != 2)
        return failf(c, "expected st_nlink 2 on both links, got %lu and %lu",
                     (unsigned long)sa.st_nlink, (unsigned long)sb.st_nlink);
    TRY(fd = ck_open(c, "a", O_WRONLY, 0));
    TRY(put(c, fd, "SH", 2, 0, "'a'"));
    TRY(ck_close(c, fd));
    TRY(want_str(c, "b", "SHared"));
    TRY(want_err(c, linkat(c->dfd, "a", c->dfd, "b", 0), EEXIST, "link onto the existing 'b'"));
    TRY(want_ok(c, unlinkat(c->dfd, "a", 0), "unlink of 'a'"));
    TRY(want_str(c, "b", "SHared"));
    TRY(want_stat(c, "b", &sb));
    if (sb.st_nlink != 1)
        return failf(c, "expected st_nlink 1 on 'b' after unlinking 'a', got %lu",
                     (unsigned long)sb.st_nlink);
    return 0;
}

static int check_symlink(struct ck *c)
{
    static const char target[] = "sub dir/../real file";
    char buf[256];
    struct stat st;
    ssize_t n;

    TRY(want_ok(c, mkdirat(c->dfd, "sub dir", 0755), "mkdir 'sub dir'"));
    TRY(make_str(c, "real file", "through the link"));
    TRY(want_ok(c, symlinkat(target, c->dfd, "l"), "symlink 'l'"));
    n = readlinkat(c->dfd, "l", buf, sizeof(buf));
    TRY(want_ok(c, n, "readlink of 'l'"));
    if ((size_t)n != strlen(target) || memcmp(buf, target, strlen(target)) != 0)
        return failf(c, "expected readlink of 'l' to be '%s', got '%.*s'", target, (int)n, buf);
    TRY(want_stat(c, "l", &st));
    if (!S_ISLNK(st.st_mode))
        return failf(c, "expected lstat of 'l' to be a symlink, got mode 0%o", st.st_mode);
    if (st.st_size != (off_t)strlen(target))
        return failf(c, "expected lstat size %zu (the target's length), got %lld", strlen(target),
                     (long long)st.st_size);
    TRY(want_ok(c, fstatat(c->dfd, "l", &st, 0), "stat through 'l'"));
    if (!S_ISREG(st.st_mode) || st.st_size != 16)
        return failf(c,
                     "expected stat through 'l' to see the 16-byte file, got mode 0%o size "
                     "%lld",
                     st.st_mode, (long long)st.st_size);
    TRY(want_str(c, "l", "through the link"));
    TRY(want_ok(c, symlinkat("/an/absolute/target", c->dfd, "abs"), "symlink 'abs'"));
    n = readlinkat(c->dfd, "abs", buf, sizeof(buf));
    if (n != 19 || memcmp(buf, "/an/absolute/target", 19) != 0)
        return failf(c, "expected readlink of 'abs' to be '/an/absolute/target', got '%.*s'",
                     n < 0 ? 0 : (int)n, buf);
    TRY(want_err(c, symlinkat("x", c->dfd, "l"), EEXIST, "symlink onto the existing 'l'"));
    TRY(want_err(c, readlinkat(c->dfd, "real file", buf, sizeof(buf)), EINVAL,
                 "readlink of a regular file"));
    return 0;
}

static int check_symlink_dangling(struct ck *c)
{
    struct stat st;
    char buf[64];
    ssize_t n;

    TRY(want_ok(c, symlinkat("does/not/exist", c->dfd, "l"), "symlink 'l' -> 'does/not/exist'"));
    TRY(want_stat(c, "l", &st));
    if (!S_ISLNK(st.st_mode))
        return failf(c, "expected lstat of the dangling 'l' to be a symlink, got mode 0%o",
                     st.st_mode);
    TRY(want_err(c, fstatat(c->dfd, "l", &st, 0), ENOENT, "stat through the dangling 'l'"));
    n = readlinkat(c->dfd, "l", buf, sizeof(buf));
    if (n != 14 || memcmp(buf, "does/not/exist", 14) != 0)
        return failf(c, "expected readlink 'does/not/exist', got '%.*s'", n < 0 ? 0 : (int)n, buf);
    /* The link can be removed without touching its (missing) target. */
    TRY(want_ok(c, unlinkat(c->dfd, "l", 0), "unlink of the dangling 'l'"));
    return want_absent(c, "l");
}

static int check_mkdir_rmdir(struct ck *c)
{
    struct stat st;

    TRY(want_ok(c, mkdirat(c->dfd, "d", 0755), "mkdir 'd'"));
    TRY(want_err(c, mkdirat(c->dfd, "d", 0755), EEXIST, "mkdir of the existing 'd'"));
    TRY(make_str(c, "d/f", "x"));
    TRY(want_err(c, unlinkat(c->dfd, "d", AT_REMOVEDIR), ENOTEMPTY, "rmdir of the non-empty 'd'"));
    TRY(want_str(c, "d/f", "x"));
    TRY(want_ok(c, mkdirat(c->dfd, "d/sub", 0755), "mkdir 'd/sub'"));
    TRY(want_stat(c, "d", &st));
    /* 2 + subfolders, or 1 for "not counted" (btrfs; find(1) then reads every entry) */
    if (st.st_nlink != 3 && st.st_nlink != 1)
        return failf(c,
                     "expected st_nlink 3 (2 + one subfolder) or 1 (not counted) on 'd', got %lu",
                     (unsigned long)st.st_nlink);
    TRY(want_ok(c, unlinkat(c->dfd, "d/sub", AT_REMOVEDIR), "rmdir 'd/sub'"));
    TRY(want_ok(c, unlinkat(c->dfd, "d/f", 0), "unlink 'd/f'"));
    TRY(want_ok(c, unlinkat(c->dfd, "d", AT_REMOVEDIR), "rmdir of the empty 'd'"));
    TRY(want_absent(c, "d"));
    TRY(want_err(c, unlinkat(c->dfd, "d", AT_REMOVEDIR), ENOENT, "rmdir of the missing 'd'"));
    TRY(want_err(c, mkdirat(c->dfd, "missing/d", 0755), ENOENT, "mkdir in a missing folder"));
    return 0;
}

static int check_unlink_rmdir_kind(struct ck *c)
{
    TRY(make_str(c, "f", "x"));
    TRY(want_ok(c, mkdirat(c->dfd, "d", 0755), "mkdir 'd'"));
    TRY(want_err(c, unlinkat(c->dfd, "d", 0), EISDIR, "unlink of the folder 'd'"));
    TRY(want_err(c, unlinkat(c->dfd, "f", AT_REMOVEDIR), ENOTDIR, "rmdir of the file 'f'"));
    TRY(want_err(c, unlinkat(c->dfd, "missing", 0), ENOENT, "unlink of the missing 'missing'"));
    TRY(want_str(c, "f", "x"));
    struct stat st;
    return want_stat(c, "d", &st);
}

static int check_readdir_many(struct ck *c)
{
    char(*names)[64] = calloc(MANY_ENTRIES, sizeof(*names));
    const char **ptrs = calloc(MANY_ENTRIES, sizeof(*ptrs));
    size_t i, n = 0;
    int rc = -1;

    if (!names || !ptrs) {
        failf(c, "expected memory, got none");
        goto out;
    }
    if (want_ok(c, mkdirat(c->dfd, "d", 0755), "mkdir 'd'") < 0)
        goto out;
    for (i = 0; i < MANY_ENTRIES; i++) {
        char path[80];

        snprintf(names[i], sizeof(names[i]), "entry-%04zu-padding-so-pages-fill-sooner", i);
        snprintf(path, sizeof(path), "d/%s", names[i]);
        if (i % 10 == 9) {
            if (want_ok(c, mkdirat(c->dfd, path, 0755), "mkdir '%s'", path) < 0)
                goto out;
        } else if (make_file(c, path, "", 0, 0644) < 0) {
            goto out;
        }
        ptrs[i] = names[i];
    }
    if (want_listing(c, "d", ptrs, MANY_ENTRIES) < 0)
        goto out;
    /* Remove every third entry: the listing follows. */
    for (i = 0; i < MANY_ENTRIES; i++) {
        char path[80];

        snprintf(path, sizeof(path), "d/%s", names[i]);
        if (i % 3 == 0) {
            if (want_ok(c, unlinkat(c->dfd, path, i % 10 == 9 ? AT_REMOVEDIR : 0),
                        "removal of '%s'", path) < 0)
                goto out;
        } else {
            ptrs[n++] = names[i];
        }
    }
    rc = want_listing(c, "d", ptrs, n);
out:
    free(names);
    free(ptrs);
    return rc;
}

static int check_fsync_fdatasync(struct ck *c)
{
    unsigned char buf[70000];
    int fd, ro, dfd;

    fill(buf, sizeof(buf), 5);
    TRY(fd = ck_open(c, "f", O_RDWR | O_CREAT, 0644));
    TRY(put(c, fd, buf, sizeof(buf), 0, "'f'"));
    TRY(want_ok(c, fsync(fd), "fsync of 'f'"));
    TRY(put(c, fd, buf, 100, 5000, "'f'"));
    TRY(want_ok(c, fdatasync(fd), "fdatasync of 'f'"));
    TRY(ro = ck_open(c, "f", O_RDONLY, 0));
    TRY(want_ok(c, fsync(ro), "fsync of a read-only fd of 'f'"));
    TRY(dfd = ck_open(c, ".", O_RDONLY | O_DIRECTORY, 0));
    TRY(want_ok(c, fsync(dfd), "fsync of the check's folder"));
    TRY(ck_close(c, fd));
    memcpy(buf + 5000, buf, 100);
    return want_file(c, "f", buf, sizeof(buf));
}

static int check_fallocate(struct ck *c)
{
    int fd;

    TRY(fd = ck_open(c, "f", O_RDWR | O_CREAT, 0644));
    if (fallocate(fd, 0, 0, 1 << 20) != 0) {
        if (errno == EOPNOTSUPP)
            return skipf(c, "fallocate refused with %s", edesc(errno));
        return want_ok(c, -1, "fallocate of 1 MiB");
    }
    TRY(want_fsize(c, fd, 1 << 20, "'f' after fallocate"));
    TRY(want_fd_bytes(c, fd, 0, NULL, 1 << 20, "the allocated 'f'"));
    TRY(put(c, fd, "data", 4, 100, "'f'"));
    /* Allocating over data keeps it. */
    TRY(want_ok(c, fallocate(fd, 0, 0, 8192), "fallocate over data"));
    TRY(want_fd_bytes(c, fd, 100, "data", 4, "'f'"));
    if (fallocate(fd, FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20) != 0 && errno != EOPNOTSUPP)
        return want_ok(c, -1, "fallocate with FALLOC_FL_KEEP_SIZE");
    TRY(want_fsize(c, fd, 1 << 20, "'f' after a FALLOC_FL_KEEP_SIZE fallocate"));
    return want_size(c, "f", 1 << 20);
}

static int check_o_directory_enotdir(struct ck *c)
{
    TRY(make_str(c, "f", "x"));
    TRY(want_ok(c, mkdirat(c->dfd, "d", 0755), "mkdir 'd'"));
    TRY(want_err(c, openat(c->dfd, "f", O_RDONLY | O_DIRECTORY | O_CLOEXEC), ENOTDIR,
                 "O_DIRECTORY open of the file 'f'"));
    TRY(want_err(c, openat(c->dfd, "f/x", O_RDONLY | O_CLOEXEC), ENOTDIR, "open of 'f/x'"));
    TRY(want_err(c, openat(c->dfd, "f/x", O_WRONLY | O_CREAT | O_CLOEXEC, 0644), ENOTDIR,
                 "create of 'f/x'"));
    TRY(want_err(c, mkdirat(c->dfd, "f/d", 0755), ENOTDIR, "mkdir of 'f/d'"));
    TRY(want_err(c, openat(c->dfd, "missing", O_RDONLY | O_DIRECTORY | O_CLOEXEC), ENOENT,
                 "O_DIRECTORY open of a missing name"));
    TRY(want_err(c, openat(c->dfd, "d", O_WRONLY | O_CLOEXEC), EISDIR,
                 "open of the folder 'd' for writing"));
    return ck_close(c, ck_open(c, "d", O_RDONLY | O_DIRECTORY, 0));
}

static int check_long_names(struct ck *c)
{
    char n255[256], m255[256], n256[257];
    struct stat st;
    const char *list[2];

    memset(n255, 'a', 255);
    n255[255] = '\0';
    memset(m255, 'b', 255);
    m255[255] = '\0';
    memset(n256, 'c', 256);
    n256[256] = '\0';
    TRY(make_str(c, n255, "long"));
    TRY(want_str(c, n255, "long"));
    TRY(want_ok(c, mkdirat(c->dfd, m255, 0755), "mkdir of a 255-byte name"));
    list[0] = n255;
    list[1] = m255;
    TRY(want_listing(c, ".", list, 2));
    TRY(want_err(c, openat(c->dfd, n256, O_WRONLY | O_CREAT | O_CLOEXEC, 0644), ENAMETOOLONG,
                 "create of a 256-byte name"));
    TRY(want_err(c, fstatat(c->dfd, n256, &st, 0), ENAMETOOLONG, "stat of a 256-byte name"));
    TRY(want_err(c, mkdirat(c->dfd, n256, 0755), ENAMETOOLONG, "mkdir of a 256-byte name"));
    TRY(want_err(c, symlinkat("x", c->dfd, n256), ENAMETOOLONG, "symlink named with 256 bytes"));
    TRY(want_err(c, renameat(c->dfd, n255, c->dfd, n256), ENAMETOOLONG,
                 "rename to a 256-byte name"));
    TRY(want_str(c, n255, "long"));
    return want_listing(c, ".", list, 2);
}

static int check_mmap_write_read(struct ck *c)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t size = (size_t)pg * 3 + 100;
    unsigned char *want = malloc(size), *map;
    int fd, other, rc = -1;

    if (!want)
        return failf(c, "expected memory, got none");
    fill(want, size, 6);
    if (make_file(c, "f", want, size, 0644) < 0 || (fd = ck_open(c, "f", O_RDWR, 0)) < 0 ||
        (other = ck_open(c, "f", O_RDONLY, 0)) < 0)
        goto out;
    map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        want_ok(c, -1, "mmap MAP_SHARED of 'f'");
        goto out;
    }
    if (cmp_bytes(c, want, map, size, 0, "'f' (mmap)") < 0)
        goto unmap;
    /* Stores across page boundaries and into the partial last page. */
    fill(want + pg - 10, 20, 7);
    fill(want + 2 * pg, 50, 8);
    fill(want + size - 30, 30, 9);
    memcpy(map + pg - 10, want + pg - 10, 20);
    memcpy(map + 2 * pg, want + 2 * pg, 50);
    memcpy(map + size - 30, want + size - 30, 30);
    if (want_ok(c, msync(map, size, MS_SYNC), "msync of 'f'") < 0)
        goto unmap;
    if (want_fd_bytes(c, other, 0, want, size, "'f' (read(2) while mapped)") < 0)
        goto unmap;
    /* And the other way: write(2) shows through the map. */
    if (put(c, fd, "WRIT", 4, pg + 7, "'f'") < 0)
        goto unmap;
    memcpy(want + pg + 7, "WRIT", 4);
    if (cmp_bytes(c, want, map, size, 0, "'f' (mmap after pwrite)") < 0)
        goto unmap;
    rc = 0;
unmap:
    munmap(map, size);
    if (rc == 0) {
        rc = -1;
        if (ck_close(c, fd) == 0 && want_fsize(c, other, (off_t)size, "'f'") == 0)
            rc = want_file(c, "f", want, size);
    }
out:
    free(want);
    return rc;
}

static const struct check checks[] = {
    {"create_excl", check_create_excl,
     "O_CREAT|O_EXCL gives EEXIST on a file and a dangling symlink; O_CREAT alone keeps bytes"},
    {"create_mode", check_create_mode, "new files and folders get the asked mode minus umask"},
    {"append_two_fds", check_append_two_fds,
     "O_APPEND writes land at the end, through two fds and after lseek"},
    {"o_trunc", check_o_trunc, "O_TRUNC empties the file, updates mtime, other fds see it"},
    {"write_read_offsets", check_write_read_offsets,
     "pwrite/pread at offsets across pages; short read at EOF"},
    {"sparse_write", check_sparse_write,
     "a write 10 MiB past EOF: size right, the hole reads zeros"},
    {"truncate_up", check_truncate_up, "truncate to a larger size: size right, zeros after"},
    {"truncate_down", check_truncate_down,
     "truncate to a smaller size keeps the prefix; growing again gives zeros, not old bytes"},
    {"ftruncate_open_fd", check_ftruncate_open_fd,
     "ftruncate on an open fd; a write at the old offset leaves a hole; read-only fd refused"},
    {"utimens_ns", check_utimens_ns, "utimensat/futimens times read back to the nanosecond"},
    {"utimens_omit_now", check_utimens_omit_now, "UTIME_OMIT keeps a time, UTIME_NOW sets now"},
    {"write_updates_mtime_ctime", check_write_updates_mtime_ctime,
     "write and ftruncate update mtime and ctime"},
    {"chmod_mode_bits", check_chmod_mode_bits, "chmod/fchmod mode bits read back exactly"},
    {"perm_default_permissions", check_perm_default_permissions,
     "as nobody: EACCES on a root 0600 file and on writes, reading a 0644 file works"},
    {"rename_file_over_file", check_rename_file_over_file,
     "rename replaces the target atomically; an fd on the old target still reads it"},
    {"rename_dir_over_empty_dir", check_rename_dir_over_empty_dir,
     "a folder renamed over an empty folder replaces it, contents follow"},
    {"rename_dir_over_nonempty_dir", check_rename_dir_over_nonempty_dir,
     "a folder renamed over a non-empty folder: ENOTEMPTY or EEXIST, nothing moves"},
    {"rename_noreplace", check_rename_noreplace, "RENAME_NOREPLACE: EEXIST on an existing target"},
    {"rename_exchange", check_rename_exchange,
     "RENAME_EXCHANGE swaps a file and a folder, and two files"},
    {"rename_into_own_subdir", check_rename_into_own_subdir,
     "renaming a folder into its own subfolder gives EINVAL"},
    {"rename_kind_mismatch", check_rename_kind_mismatch,
     "file over folder EISDIR, folder over file ENOTDIR, onto itself a no-op"},
    {"unlink_open_file", check_unlink_open_file,
     "an unlinked open file keeps working through its fd; the name is gone"},
    {"unlink_open_no_leftover", check_unlink_open_no_leftover,
     "unlinking an open file leaves no stand-in name (.fuse_hidden*) and st_nlink 0"},
    {"hard_link", check_hard_link, "a hard link shares inode and bytes; nlink 2 then 1"},
    {"symlink", check_symlink,
     "readlink exact, lstat a symlink of the target's length, stat follows"},
    {"symlink_dangling", check_symlink_dangling,
     "a dangling symlink: lstat works, stat ENOENT, unlink works"},
    {"mkdir_rmdir", check_mkdir_rmdir,
     "mkdir EEXIST, rmdir ENOTEMPTY, folder nlink 2+subfolders (or 1), rmdir of the empty"},
    {"unlink_rmdir_kind", check_unlink_rmdir_kind,
     "unlink of a folder EISDIR, rmdir of a file ENOTDIR"},
    {"readdir_many", check_readdir_many,
     "600 entries each listed exactly once, and again after removing a third"},
    {"fsync_fdatasync", check_fsync_fdatasync, "fsync/fdatasync of files and a folder succeed"},
    {"fallocate", check_fallocate,
     "fallocate extends with zeros, keeps data, KEEP_SIZE keeps size"},
    {"o_directory_enotdir", check_o_directory_enotdir,
     "O_DIRECTORY on a file and a file as a path prefix give ENOTDIR; a folder for writing EISDIR"},
    {"long_names", check_long_names, "255-byte names work, 256-byte names give ENAMETOOLONG"},
    {"mmap_write_read", check_mmap_write_read,
     "MAP_SHARED stores + msync show in read(2), and pwrite shows in the map"},
};

#define NCHECKS (sizeof(checks) / sizeof(checks[0]))

/* --- runner -------------------------------------------------------------------------------- */

/* Removes name (in the folder at) and everything below it; 0 or -errno of the first failure. */
static int rm_tree(int at, const char *name)
{
    struct dirent *de;
    struct stat st;
    DIR *d;
    int fd, r = 0;

    if (fstatat(at, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISDIR(st.st_mode))
        return unlinkat(at, name, 0) == 0 ? 0 : -errno;
    fchmodat(at, name, 0755, 0);
    if ((fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)) < 0)
        return -errno;
    if (!(d = fdopendir(fd))) {
        close(fd);
        return -errno;
    }
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        int e = rm_tree(dirfd(d), de->d_name);
        if (e && !r)
            r = e;
    }
    closedir(d);
    if (unlinkat(at, name, AT_REMOVEDIR) != 0 && !r)
        r = -errno;
    return r;
}

static enum result run_one(int sfd, const struct check *k)
{
    struct ck c = {.name = k->name, .result = RES_OK};
    int i, r;

    if (mkdirat(sfd, k->name, 0755) != 0 ||
        (c.dfd = openat(sfd, k->name, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        failf(&c, "expected to create the check's folder, got %s", edesc(errno));
    } else {
        if (fchdir(c.dfd) != 0) /* for the few path-based calls (truncate) */
            failf(&c, "expected to enter the check's folder, got %s", edesc(errno));
        else if (k->run(&c) != 0 && c.result == RES_OK)
            failf(&c, "expected a verdict from the failed check, got none");
        for (i = 0; i < c.nfds; i++)
            close(c.fds[i]);
        close(c.dfd);
        if ((r = rm_tree(sfd, k->name)) != 0)
            failf(&c, "expected to remove the check's folder, got %s", edesc(-r));
    }
    switch (c.result) {
    case RES_OK:
        printf("ok %s\n", k->name);
        break;
    case RES_FAIL:
        printf("FAIL %s: %s\n", k->name, c.msg);
        break;
    case RES_SKIP:
        printf("skip %s: %s\n", k->name, c.msg);
        break;
    }
    fflush(stdout);
    return c.result;
}

static const char *fs_name(long type)
{
    switch (type) {
    case 0xEF53:
        return "ext2/3/4";
    case 0x01021994:
        return "tmpfs";
    case 0x65735546:
        return "fuse";
    case 0x9123683E:
        return "btrfs";
    case 0x58465342:
        return "xfs";
    case 0x794c7630:
        return "overlayfs";
    default:
        return "other";
    }
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s DIR [--only NAME]... [--list]\n", prog);
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *only[NCHECKS];
    size_t nonly = 0, i, j;
    int list = 0, nfail = 0, nskip = 0, nok = 0, sfd, dfd, r;
    char scratch[64];
    struct statfs sf;

    for (i = 1; i < (size_t)argc; i++) {
        if (!strcmp(argv[i], "--list")) {
            list = 1;
        } else if (!strcmp(argv[i], "--only") && i + 1 < (size_t)argc) {
            for (j = 0; j < NCHECKS && strcmp(checks[j].name, argv[i + 1]); j++)
                ;
            if (j == NCHECKS) {
                fprintf(stderr, "%s: no check named '%s' (see --list)\n", prog, argv[i + 1]);
                return EXIT_USAGE;
            }
            if (nonly < NCHECKS)
                only[nonly++] = argv[++i];
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-' || dir) {
            usage(stderr);
            return EXIT_USAGE;
        } else {
            dir = argv[i];
        }
    }
    if (list) {
        for (i = 0; i < NCHECKS; i++)
            printf("%-30s %s\n", checks[i].name, checks[i].what);
        return 0;
    }
    if (!dir) {
        usage(stderr);
        return EXIT_USAGE;
    }
    umask(022);
    if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        fprintf(stderr, "%s: cannot open '%s': %s\n", prog, dir, strerror(errno));
        return EXIT_USAGE;
    }
    snprintf(scratch, sizeof(scratch), "posixsuite.%ld", (long)getpid());
    if (mkdirat(dfd, scratch, 0755) != 0 ||
        (sfd = openat(dfd, scratch, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        fprintf(stderr, "%s: cannot create '%s/%s': %s\n", prog, dir, scratch, strerror(errno));
        return EXIT_USAGE;
    }
    if (fstatfs(sfd, &sf) == 0)
        printf("# posixsuite on '%s' (%s, f_type 0x%lx, uid %u)\n", dir, fs_name((long)sf.f_type),
               (unsigned long)sf.f_type, (unsigned)geteuid());
    for (i = 0; i < NCHECKS; i++) {
        for (j = 0; j < nonly && strcmp(only[j], checks[i].name); j++)
            ;
        if (nonly && j == nonly)
            continue;
        switch (run_one(sfd, &checks[i])) {
        case RES_OK:
            nok++;
            break;
        case RES_FAIL:
            nfail++;
            break;
        case RES_SKIP:
            nskip++;
            break;
        }
    }
    r = fchdir(dfd) != 0 ? -errno : rm_tree(dfd, scratch);
    if (r != 0) {
        printf("FAIL cleanup: expected to remove '%s/%s', got %s\n", dir, scratch, edesc(-r));
        nfail++;
    }
    close(sfd);
    close(dfd);
    printf("# %d ok, %d failed, %d skipped\n", nok, nfail, nskip);
    return nfail > MAX_FAIL_RC ? MAX_FAIL_RC : nfail;
}
