/*
 * fsx: a seeded random exerciser of a file system's data path, in the spirit
 * of fsx (Avadis Tevanian's, as kept in xfstests): random operations on a few
 * files, every byte read back checked against an in-memory model.
 *
 *   fsx [--seed N] [--ops N] [--size MAX] [--check-dir DIR] [--check-timeout S]
 *       [--verbose] [--corrupt-at N] FILE...
 *
 * FILE... (1 to 16 paths, usually 3 names in one folder) are created empty,
 * then --ops operations (default 5000) are drawn from a splitmix64 seeded with
 * --seed (default: from the clock; always printed):
 *
 *   write      pwrite or lseek+write of random bytes at a random offset
 *   mapwrite   the same through a MAP_SHARED mapping, then msync(MS_SYNC);
 *              extends the file with ftruncate first when needed
 *   truncate   ftruncate or truncate(2) to a random size, up or down
 *   read       pread or lseek+read at a random offset, also across and past EOF
 *   mapread    read through a MAP_SHARED mapping; bytes past EOF in the last
 *              page must be zero
 *   rename     one name over another (the model follows; the replaced file,
 *              if open, must still read back through its fd) or of a missing
 *              name (must fail with ENOENT)
 *   reopen     close (its error counts) and open again
 *   fsync      fsync or fdatasync
 *   stat       stat and fstat sizes against the model
 *
 * Files stay within --size bytes (default 262144); an operation moves at most
 * 64 KiB. A name renamed away is missing until an operation recreates it
 * (O_CREAT|O_EXCL). At the end every name is compared byte for byte with the
 * model (missing ones must be missing). With --check-dir, the file of the same
 * base name in DIR (the laptop side of a mount) must then equal the model too,
 * polled until --check-timeout seconds (default 10) have passed.
 *
 * The same seed, ops and size give the same operations on any file system
 * that behaves. On a mismatch fsx prints the op number, the first differing
 * offset with the expected and found bytes (and which op last set that byte),
 * the last 20 operations and the command to rerun, and exits 1. Usage errors
 * exit 2; 0 means every check passed. --verbose prints every operation.
 * --corrupt-at N is for testing fsx itself: after op N it flips one byte of a
 * file behind the model's back, which a later read or the final check must
 * report (unless a later write or truncate happens to replace that byte).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_FILES   16
#define MAX_OPLEN   (64 * 1024)
#define LOG_OPS     20
#define LOG_LINE    200
#define EXIT_FAIL   1
#define EXIT_USAGE  2
#define DEFAULT_OPS 5000
#define DEFAULT_MAX (256 * 1024)

enum op {
    OP_WRITE,
    OP_MAPWRITE,
    OP_TRUNCATE,
    OP_READ,
    OP_MAPREAD,
    OP_RENAME,
    OP_REOPEN,
    OP_FSYNC,
    OP_STAT,
    NOPS
};

static const struct {
    const char *name;
    unsigned weight;
} ops[NOPS] = {
    [OP_WRITE] = {"write", 20},  [OP_MAPWRITE] = {"mapwrite", 8}, [OP_TRUNCATE] = {"truncate", 8},
    [OP_READ] = {"read", 20},    [OP_MAPREAD] = {"mapread", 8},   [OP_RENAME] = {"rename", 5},
    [OP_REOPEN] = {"reopen", 8}, [OP_FSYNC] = {"fsync", 4},       [OP_STAT] = {"stat", 6},
};

/* The model of one name: whether it exists and, if so, its bytes. */
struct file {
    const char *path; /* as given */
    const char *base; /* its last component, looked up in --check-dir */
    int exists;
    int fd; /* -1 when closed (reopened lazily) */
    size_t size;
    unsigned char *data; /* --size bytes; zero from size on */
    long *setter;        /* per byte: the op that last set it (0 = never) */
};

struct fsx {
    uint64_t seed, rng;
    long nops, opno, corrupt_at;
    size_t maxsize, maxlen, pagesize;
    double check_timeout;
    const char *check_dir;
    int verbose;
    int final; /* the operations are done: the final comparisons run */
    int nfiles;
    struct file files[MAX_FILES];
    unsigned char *buf; /* --size + 1 bytes of scratch */
    char log[LOG_OPS][LOG_LINE];
    char cur[LOG_LINE]; /* the operation running now */
};

static const char *prog = "fsx";

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, n); n > 0. */
static size_t rnd(struct fsx *x, size_t n)
{
    return (size_t)(splitmix64(&x->rng) % n);
}

static void print_rerun(struct fsx *x)
{
    int i;

    fprintf(stderr, "rerun: %s --seed %" PRIu64 " --ops %ld --size %zu", prog, x->seed, x->nops,
            x->maxsize);
    for (i = 0; i < x->nfiles; i++)
        fprintf(stderr, " %s", x->files[i].path);
    fputc('\n', stderr);
}

/* Reports a failure of the running operation with its context, and exits 1. */
__attribute__((format(printf, 2, 3))) _Noreturn static void fail(struct fsx *x, const char *fmt,
                                                                 ...)
{
    va_list ap;
    long i, first;

    fflush(stdout);
    if (x->final)
        fprintf(stderr, "%s: FAIL after all %ld ops, in the %s: ", prog, x->nops, x->cur);
    else
        fprintf(stderr, "%s: FAIL at op %ld of %ld (%s): ", prog, x->opno, x->nops, x->cur);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    first = x->opno - LOG_OPS + 1 > 1 ? x->opno - LOG_OPS + 1 : 1;
    if (x->opno >= 1) {
        fprintf(stderr, "last %ld operations:\n", x->opno - first + 1);
        for (i = first; i <= x->opno && i <= x->nops; i++)
            fprintf(stderr, "  %s\n", x->log[i % LOG_OPS]);
    }
    fprintf(stderr, "seed %" PRIu64 "\n", x->seed);
    print_rerun(x);
    exit(EXIT_FAIL);
}

/* A syscall failed in the running operation. */
_Noreturn static void fail_sys(struct fsx *x, const char *what, const char *path)
{
    int e = errno;

    fail(x, "cannot %s '%s': %s (%s)", what, path, strerror(e), strerrorname_np(e));
}

/* Records the running operation: its log line, and on --verbose prints it. */
__attribute__((format(printf, 2, 3))) static void note(struct fsx *x, const char *fmt, ...)
{
    va_list ap;
    int n;

    n = snprintf(x->cur, sizeof(x->cur), "#%ld ", x->opno);
    va_start(ap, fmt);
    vsnprintf(x->cur + n, sizeof(x->cur) - (size_t)n, fmt, ap);
    va_end(ap);
    memcpy(x->log[x->opno % LOG_OPS], x->cur, sizeof(x->cur));
    if (x->verbose)
        printf("%s\n", x->cur);
}

/* Appends to the running operation's log line (what it found or did besides). */
__attribute__((format(printf, 2, 3))) static void note_more(struct fsx *x, const char *fmt, ...)
{
    size_t n = strlen(x->cur);
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(x->cur + n, sizeof(x->cur) - n, fmt, ap);
    va_end(ap);
    memcpy(x->log[x->opno % LOG_OPS], x->cur, sizeof(x->cur));
}

/*
 * Compares got (n bytes read at off of f) with the model; on a difference
 * writes the report into msg and returns 1, else 0.
 */
static int diff_model(const struct file *f, size_t off, const unsigned char *got, size_t n,
                      char *msg, size_t msgsz)
{
    size_t i, j, end;
    char who[40];
    int len;

    for (i = 0; i < n && got[i] == f->data[off + i]; i++)
        ;
    if (i == n)
        return 0;
    if (f->setter[off + i])
        snprintf(who, sizeof(who), "last set by op %ld", f->setter[off + i]);
    else
        snprintf(who, sizeof(who), "never written");
    len = snprintf(msg, msgsz,
                   "first difference at offset %zu: expected 0x%02x (%s), got 0x%02x; from there "
                   "expected/got:",
                   off + i, f->data[off + i], who, got[i]);
    end = i + 16 < n ? i + 16 : n;
    for (j = i; j < end && len > 0 && (size_t)len < msgsz; j++)
        len += snprintf(msg + len, msgsz - (size_t)len, " %02x/%02x", f->data[off + j], got[j]);
    return 1;
}

static void check_bytes(struct fsx *x, const struct file *f, size_t off, const unsigned char *got,
                        size_t n, const char *how)
{
    char msg[512];

    if (diff_model(f, off, got, n, msg, sizeof(msg)))
        fail(x, "%s of '%s': %s", how, f->path, msg);
}

/* Opens f (which exists) if it is closed. */
static void need_fd(struct fsx *x, struct file *f)
{
    if (f->fd >= 0)
        return;
    if ((f->fd = open(f->path, O_RDWR | O_CLOEXEC)) < 0)
        fail_sys(x, "open", f->path);
}

/* Creates the missing f (O_EXCL: nothing may be there), empty. */
static void create(struct fsx *x, struct file *f)
{
    if ((f->fd = open(f->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0)
        fail_sys(x, "create (O_EXCL)", f->path);
    f->exists = 1;
    f->size = 0;
    note_more(x, " [created]");
}

static void close_fd(struct fsx *x, struct file *f)
{
    int fd = f->fd;

    f->fd = -1;
    if (fd >= 0 && close(fd) != 0)
        fail_sys(x, "close", f->path);
}

/* A name the model says is missing must be missing on disk too. */
static void want_missing(struct fsx *x, const struct file *f)
{
    struct stat st;

    if (lstat(f->path, &st) == 0)
        fail(x, "expected '%s' missing (renamed away), got a file of %lld bytes", f->path,
             (long long)st.st_size);
    if (errno != ENOENT)
        fail_sys(x, "lstat", f->path);
}

/* Sets the model's size; bytes cut off are zeroed (so a later extension reads zeros). */
static void model_resize(struct fsx *x, struct file *f, size_t size)
{
    size_t i;

    for (i = size; i < f->size; i++) {
        f->data[i] = 0;
        f->setter[i] = x->opno;
    }
    f->size = size;
}

static void model_write(struct fsx *x, struct file *f, size_t off, const unsigned char *src,
                        size_t len)
{
    size_t i;

    memcpy(f->data + off, src, len);
    for (i = off; i < off + len; i++)
        f->setter[i] = x->opno;
    if (off + len > f->size)
        f->size = off + len;
}

static void fill_random(struct fsx *x, unsigned char *buf, size_t len)
{
    uint64_t s = splitmix64(&x->rng), v = 0;
    size_t i;

    for (i = 0; i < len; i++) {
        if (i % 8 == 0)
            v = splitmix64(&s);
        buf[i] = (unsigned char)v;
        v >>= 8;
    }
}

static void pick_range(struct fsx *x, size_t *off, size_t *len)
{
    size_t room;

    *off = rnd(x, x->maxsize);
    room = x->maxsize - *off;
    *len = 1 + rnd(x, room < x->maxlen ? room : x->maxlen);
}

static void do_write(struct fsx *x, struct file *f)
{
    size_t off, len, done = 0;
    int how;

    pick_range(x, &off, &len);
    how = (int)rnd(x, 2);
    fill_random(x, x->buf, len);
    note(x, "write '%s' off %zu len %zu (%s) size %zu->%zu", f->path, off, len,
         how ? "pwrite" : "lseek+write", f->size, off + len > f->size ? off + len : f->size);
    if (!f->exists)
        create(x, f);
    need_fd(x, f);
    if (how == 0 && lseek(f->fd, (off_t)off, SEEK_SET) != (off_t)off)
        fail_sys(x, "lseek", f->path);
    while (done < len) {
        ssize_t n = how ? pwrite(f->fd, x->buf + done, len - done, (off_t)(off + done))
                        : write(f->fd, x->buf + done, len - done);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail_sys(x, "write", f->path);
        if (n == 0)
            fail(x, "write to '%s' at %zu returned 0", f->path, off + done);
        done += (size_t)n;
    }
    model_write(x, f, off, x->buf, len);
}

/* Maps [off, off + len) of f's fd (page-aligned start); returns the address of off. */
static unsigned char *map_range(struct fsx *x, struct file *f, size_t off, size_t len, int prot,
                                void **base, size_t *maplen)
{
    size_t pg = off - off % x->pagesize;

    *maplen = off + len - pg;
    *base = mmap(NULL, *maplen, prot, MAP_SHARED, f->fd, (off_t)pg);
    if (*base == MAP_FAILED)
        fail_sys(x, "mmap", f->path);
    return (unsigned char *)*base + (off - pg);
}

static void do_mapwrite(struct fsx *x, struct file *f)
{
    size_t off, len, maplen;
    unsigned char *p;
    void *base;

    pick_range(x, &off, &len);
    fill_random(x, x->buf, len);
    note(x, "mapwrite '%s' off %zu len %zu size %zu->%zu", f->path, off, len, f->size,
         off + len > f->size ? off + len : f->size);
    if (!f->exists)
        create(x, f);
    need_fd(x, f);
    if (off + len > f->size) {
        if (ftruncate(f->fd, (off_t)(off + len)) != 0)
            fail_sys(x, "ftruncate (to extend for mapwrite)", f->path);
        model_resize(x, f, off + len);
    }
    p = map_range(x, f, off, len, PROT_READ | PROT_WRITE, &base, &maplen);
    memcpy(p, x->buf, len);
    if (msync(base, maplen, MS_SYNC) != 0)
        fail_sys(x, "msync", f->path);
    if (munmap(base, maplen) != 0)
        fail_sys(x, "munmap", f->path);
    model_write(x, f, off, x->buf, len);
}

static void do_truncate(struct fsx *x, struct file *f)
{
    size_t size = rnd(x, x->maxsize + 1);
    int how = (int)rnd(x, 2);

    note(x, "truncate '%s' (%s) size %zu->%zu", f->path, how ? "ftruncate" : "truncate", f->size,
         size);
    if (!f->exists)
        create(x, f);
    if (how) {
        need_fd(x, f);
        if (ftruncate(f->fd, (off_t)size) != 0)
            fail_sys(x, "ftruncate", f->path);
    } else if (truncate(f->path, (off_t)size) != 0) {
        fail_sys(x, "truncate", f->path);
    }
    model_resize(x, f, size);
}

static void do_read(struct fsx *x, struct file *f)
{
    size_t off = rnd(x, f->size + 1024), len = 1 + rnd(x, x->maxlen), want, got = 0;
    int how = (int)rnd(x, 2);

    note(x, "read '%s' off %zu len %zu (%s) size %zu", f->path, off, len,
         how ? "pread" : "lseek+read", f->size);
    if (!f->exists) {
        want_missing(x, f);
        return;
    }
    need_fd(x, f);
    want = off >= f->size ? 0 : (f->size - off < len ? f->size - off : len);
    if (how == 0 && lseek(f->fd, (off_t)off, SEEK_SET) != (off_t)off)
        fail_sys(x, "lseek", f->path);
    while (got < len) {
        ssize_t n = how ? pread(f->fd, x->buf + got, len - got, (off_t)(off + got))
                        : read(f->fd, x->buf + got, len - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail_sys(x, "read", f->path);
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (got != want)
        fail(x, "expected %zu bytes from a read of %zu at %zu of '%s' (size %zu), got %zu", want,
             len, off, f->path, f->size, got);
    check_bytes(x, f, off, x->buf, got, "read");
}

static void do_mapread(struct fsx *x, struct file *f)
{
    size_t off, len, maplen, i, pgend;
    unsigned char *p;
    void *base;

    if (!f->exists || f->size == 0) {
        note(x, "mapread '%s' (%s)", f->path, f->exists ? "empty: stat only" : "missing");
        if (!f->exists)
            want_missing(x, f);
        else
            need_fd(x, f);
        return;
    }
    off = rnd(x, f->size);
    len = 1 + rnd(x, f->size - off < x->maxlen ? f->size - off : x->maxlen);
    note(x, "mapread '%s' off %zu len %zu size %zu", f->path, off, len, f->size);
    need_fd(x, f);
    /* When the range ends at EOF, map the rest of the last page: it must read as zeros. */
    pgend = off + len;
    if (pgend == f->size && pgend % x->pagesize)
        pgend += x->pagesize - pgend % x->pagesize;
    p = map_range(x, f, off, pgend - off, PROT_READ, &base, &maplen);
    check_bytes(x, f, off, p, len, "mapread");
    for (i = off + len; i < pgend; i++) {
        if (p[i - off] != 0)
            fail(x,
                 "expected zeros after EOF (%zu) in the last mapped page of '%s', got 0x%02x "
                 "at %zu",
                 f->size, f->path, p[i - off], i);
    }
    if (munmap(base, maplen) != 0)
        fail_sys(x, "munmap", f->path);
}

static void do_stat(struct fsx *x, struct file *f)
{
    struct stat st;

    note(x, "stat '%s' size %zu", f->path, f->size);
    if (!f->exists) {
        want_missing(x, f);
        return;
    }
    if (stat(f->path, &st) != 0)
        fail_sys(x, "stat", f->path);
    if (!S_ISREG(st.st_mode) || (size_t)st.st_size != f->size)
        fail(x, "expected '%s' a regular file of %zu bytes (stat), got mode 0%o size %lld", f->path,
             f->size, st.st_mode, (long long)st.st_size);
    if (f->fd >= 0) {
        if (fstat(f->fd, &st) != 0)
            fail_sys(x, "fstat", f->path);
        if ((size_t)st.st_size != f->size)
            fail(x, "expected '%s' of %zu bytes (fstat), got %lld", f->path, f->size,
                 (long long)st.st_size);
    }
}

static void do_rename(struct fsx *x, struct file *from)
{
    struct file *to = &x->files[rnd(x, (size_t)x->nfiles)];
    struct file t;
    char msg[512];
    ssize_t n;

    if (to == from)
        to = &x->files[(from - x->files + 1) % x->nfiles];
    if (to == from) { /* a single file: nothing to rename to */
        do_stat(x, from);
        return;
    }
    note(x, "rename '%s' -> '%s'%s", from->path, to->path,
         !from->exists ? " (source missing)"
         : to->exists  ? " (replaces)"
                       : "");
    if (!from->exists) {
        if (rename(from->path, to->path) == 0)
            fail(x, "expected rename of the missing '%s' to fail with ENOENT, got success",
                 from->path);
        if (errno != ENOENT)
            fail_sys(x, "rename (expected ENOENT)", from->path);
        return;
    }
    if (rename(from->path, to->path) != 0)
        fail_sys(x, "rename", from->path);
    if (to->exists && to->fd >= 0) {
        /* The replaced file is unlinked but open: it still holds its bytes. */
        n = pread(to->fd, x->buf, to->size + 1, 0);
        if (n < 0)
            fail_sys(x, "pread the replaced (unlinked, open)", to->path);
        if ((size_t)n != to->size)
            fail(x, "expected %zu bytes from the replaced '%s' through its open fd, got %zd",
                 to->size, to->path, n);
        if (diff_model(to, 0, x->buf, to->size, msg, sizeof(msg)))
            fail(x, "the replaced '%s' read through its open fd: %s", to->path, msg);
    }
    close_fd(x, to);
    /* The model follows: to takes from's bytes and fd, from goes missing. */
    t = *to;
    to->exists = 1;
    to->fd = from->fd;
    to->size = from->size;
    to->data = from->data;
    to->setter = from->setter;
    from->data = t.data;
    from->setter = t.setter;
    from->fd = -1;
    from->exists = 0;
    from->size = 0;
    memset(from->data, 0, x->maxsize);
    memset(from->setter, 0, x->maxsize * sizeof(*from->setter));
}

static void do_reopen(struct fsx *x, struct file *f)
{
    int keep_closed = (int)rnd(x, 3) == 0;

    note(x, "reopen '%s'%s", f->path, keep_closed ? " (close only)" : "");
    if (!f->exists) {
        if (open(f->path, O_RDWR | O_CLOEXEC) >= 0)
            fail(x, "expected open of the missing '%s' to fail with ENOENT, got success", f->path);
        if (errno != ENOENT)
            fail_sys(x, "open (expected ENOENT)", f->path);
        return;
    }
    close_fd(x, f);
    if (!keep_closed)
        need_fd(x, f);
}

static void do_fsync(struct fsx *x, struct file *f)
{
    int data_only = (int)rnd(x, 2);

    note(x, "%s '%s'", data_only ? "fdatasync" : "fsync", f->path);
    if (!f->exists)
        return;
    need_fd(x, f);
    if ((data_only ? fdatasync(f->fd) : fsync(f->fd)) != 0)
        fail_sys(x, data_only ? "fdatasync" : "fsync", f->path);
}

/* --corrupt-at: flips a byte in the middle of the first non-empty file, behind the model. */
static int corrupt(struct fsx *x)
{
    unsigned char b;
    int i, fd;

    for (i = 0; i < x->nfiles; i++) {
        struct file *f = &x->files[i];
        off_t off = (off_t)(f->size / 2);

        if (!f->exists || f->size == 0)
            continue;
        if ((fd = open(f->path, O_RDWR | O_CLOEXEC)) < 0 || pread(fd, &b, 1, off) != 1)
            fail_sys(x, "open and read for --corrupt-at", f->path);
        b = (unsigned char)~b;
        if (pwrite(fd, &b, 1, off) != 1 || close(fd) != 0)
            fail_sys(x, "corrupt", f->path);
        fprintf(stderr, "%s: --corrupt-at: after op %ld flipped the byte at offset %lld of '%s'\n",
                prog, x->opno, (long long)off, f->path);
        return 1;
    }
    return 0;
}

/*
 * Compares the file at path with f's model: 0 if equal (or both missing), else 1 with the
 * difference in msg.
 */
static int compare_path(struct fsx *x, const char *path, const struct file *f, char *msg,
                        size_t msgsz)
{
    struct stat st;
    size_t got = 0;
    ssize_t n;
    int fd, r;

    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        if (errno == ENOENT && !f->exists)
            return 0;
        snprintf(msg, msgsz, "expected %s, got open failing: %s",
                 f->exists ? "a file" : "it missing", strerror(errno));
        return 1;
    }
    if (!f->exists) {
        close(fd);
        snprintf(msg, msgsz, "expected it missing (renamed away), got a file");
        return 1;
    }
    if (fstat(fd, &st) != 0 || (size_t)st.st_size != f->size) {
        snprintf(msg, msgsz, "expected %zu bytes, got %lld", f->size, (long long)st.st_size);
        close(fd);
        return 1;
    }
    while (got <= x->maxsize && (n = read(fd, x->buf + got, x->maxsize + 1 - got)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(msg, msgsz, "expected to read it, got %s", strerror(errno));
            close(fd);
            return 1;
        }
        got += (size_t)n;
    }
    close(fd);
    if (got != f->size) {
        snprintf(msg, msgsz, "expected read(2) to return %zu bytes, got %zu", f->size, got);
        return 1;
    }
    r = diff_model(f, 0, x->buf, got, msg, msgsz);
    return r;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void final_checks(struct fsx *x)
{
    const struct timespec pause = {0, 100 * 1000 * 1000};
    char msg[600], path[PATH_MAX];
    double deadline;
    int i;

    x->opno = x->nops;
    x->final = 1;
    snprintf(x->cur, sizeof(x->cur), "final check");
    for (i = 0; i < x->nfiles; i++)
        close_fd(x, &x->files[i]);
    for (i = 0; i < x->nfiles; i++) {
        if (compare_path(x, x->files[i].path, &x->files[i], msg, sizeof(msg)))
            fail(x, "'%s': %s", x->files[i].path, msg);
    }
    if (!x->check_dir)
        return;
    snprintf(x->cur, sizeof(x->cur), "check of --check-dir");
    for (i = 0; i < x->nfiles; i++) {
        snprintf(path, sizeof(path), "%s/%s", x->check_dir, x->files[i].base);
        deadline = now_s() + x->check_timeout;
        while (compare_path(x, path, &x->files[i], msg, sizeof(msg))) {
            if (now_s() >= deadline)
                fail(x, "'%s' after %.1f s: %s", path, x->check_timeout, msg);
            nanosleep(&pause, NULL);
        }
    }
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: %s [--seed N] [--ops N] [--size MAX] [--check-dir DIR] [--check-timeout S]\n"
            "           [--verbose] [--corrupt-at N] FILE...\n",
            prog);
}

static int parse_num(const char *s, const char *opt, unsigned long long max,
                     unsigned long long *out)
{
    char *end;

    errno = 0;
    *out = strtoull(s, &end, 0);
    if (errno || end == s || *end || *s == '-' || *out > max) {
        fprintf(stderr, "%s: bad value for %s: '%s'\n", prog, opt, s);
        return -1;
    }
    return 0;
}

static int parse_args(struct fsx *x, int argc, char **argv)
{
    unsigned long long v;
    int i, j, seeded = 0;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

        if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
            x->verbose = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (a[0] != '-') {
            if (x->nfiles == MAX_FILES) {
                fprintf(stderr, "%s: at most %d files\n", prog, MAX_FILES);
                return -1;
            }
            x->files[x->nfiles].path = a;
            x->files[x->nfiles].base = strrchr(a, '/') ? strrchr(a, '/') + 1 : a;
            x->nfiles++;
            continue;
        }
        if (!val) {
            usage(stderr);
            return -1;
        }
        i++;
        if (!strcmp(a, "--seed")) {
            if (parse_num(val, a, UINT64_MAX, &v) < 0)
                return -1;
            x->seed = v;
            seeded = 1;
        } else if (!strcmp(a, "--ops")) {
            if (parse_num(val, a, LONG_MAX / 2, &v) < 0)
                return -1;
            x->nops = (long)v;
        } else if (!strcmp(a, "--size")) {
            if (parse_num(val, a, 1ULL << 30, &v) < 0 || v == 0)
                return -1;
            x->maxsize = (size_t)v;
        } else if (!strcmp(a, "--corrupt-at")) {
            if (parse_num(val, a, LONG_MAX / 2, &v) < 0)
                return -1;
            x->corrupt_at = (long)v;
        } else if (!strcmp(a, "--check-dir")) {
            x->check_dir = val;
        } else if (!strcmp(a, "--check-timeout")) {
            char *end;

            x->check_timeout = strtod(val, &end);
            if (end == val || *end || x->check_timeout < 0) {
                fprintf(stderr, "%s: bad value for --check-timeout: '%s'\n", prog, val);
                return -1;
            }
        } else {
            usage(stderr);
            return -1;
        }
    }
    if (x->nfiles == 0) {
        usage(stderr);
        return -1;
    }
    for (i = 0; i < x->nfiles; i++) {
        for (j = 0; j < i; j++) {
            if (!strcmp(x->files[i].path, x->files[j].path) ||
                (x->check_dir && !strcmp(x->files[i].base, x->files[j].base))) {
                fprintf(stderr, "%s: '%s' given twice\n", prog, x->files[i].base);
                return -1;
            }
        }
    }
    if (!seeded) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        x->seed = (uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid();
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct fsx x = {
        .nops = DEFAULT_OPS, .maxsize = DEFAULT_MAX, .check_timeout = 10, .corrupt_at = -1};
    unsigned total = 0;
    int i, corrupt_pending;

    if (parse_args(&x, argc, argv) < 0)
        return EXIT_USAGE;
    x.rng = x.seed;
    x.pagesize = (size_t)sysconf(_SC_PAGESIZE);
    x.maxlen = x.maxsize < MAX_OPLEN ? x.maxsize : MAX_OPLEN;
    if (!(x.buf = malloc(x.maxsize + 1))) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return EXIT_USAGE;
    }
    for (i = 0; i < x.nfiles; i++) {
        struct file *f = &x.files[i];

        f->data = calloc(1, x.maxsize);
        f->setter = calloc(x.maxsize, sizeof(*f->setter));
        if (!f->data || !f->setter) {
            fprintf(stderr, "%s: out of memory\n", prog);
            return EXIT_USAGE;
        }
        if ((f->fd = open(f->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
            fprintf(stderr, "%s: cannot create '%s': %s\n", prog, f->path, strerror(errno));
            return EXIT_USAGE;
        }
        f->exists = 1;
    }
    printf("%s: seed %" PRIu64 ", %ld ops, max size %zu, %d files\n", prog, x.seed, x.nops,
           x.maxsize, x.nfiles);
    fflush(stdout);
    for (i = 0; i < NOPS; i++)
        total += ops[i].weight;
    corrupt_pending = x.corrupt_at >= 0;
    for (x.opno = 1; x.opno <= x.nops; x.opno++) {
        size_t r = rnd(&x, total);
        struct file *f = &x.files[rnd(&x, (size_t)x.nfiles)];
        enum op op;

        for (op = 0; r >= ops[op].weight; op++)
            r -= ops[op].weight;
        switch (op) {
        case OP_WRITE:
            do_write(&x, f);
            break;
        case OP_MAPWRITE:
            do_mapwrite(&x, f);
            break;
        case OP_TRUNCATE:
            do_truncate(&x, f);
            break;
        case OP_READ:
            do_read(&x, f);
            break;
        case OP_MAPREAD:
            do_mapread(&x, f);
            break;
        case OP_RENAME:
            do_rename(&x, f);
            break;
        case OP_REOPEN:
            do_reopen(&x, f);
            break;
        case OP_FSYNC:
            do_fsync(&x, f);
            break;
        case OP_STAT:
        case NOPS:
            do_stat(&x, f);
            break;
        }
        if (corrupt_pending && x.opno >= x.corrupt_at && corrupt(&x))
            corrupt_pending = 0;
    }
    x.opno = x.nops;
    final_checks(&x);
    printf("%s: %ld ops passed on %d files, final contents equal the model%s (seed %" PRIu64 ")\n",
           prog, x.nops, x.nfiles, x.check_dir ? ", in the check dir too" : "", x.seed);
    for (i = 0; i < x.nfiles; i++) {
        free(x.files[i].data);
        free(x.files[i].setter);
    }
    free(x.buf);
    return 0;
}
