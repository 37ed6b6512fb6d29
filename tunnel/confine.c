/* confine.c - resolving client paths beneath an export root (see confine.h). */
#include "confine.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_SYMLINKS   40 /* like the kernel's MAXSYMLINKS */
#define EAGAIN_RETRIES 64 /* openat2 RESOLVE_BENEATH gives EAGAIN when a rename races a ".." */

/* O_TMPFILE shares its O_DIRECTORY bit with plain directory opens: test it whole */
#define IS_TMPFILE(fl) (((fl)&O_TMPFILE) == O_TMPFILE)
#define IS_WRITE(fl)   (((fl) & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND)) || IS_TMPFILE(fl))
#define TAKES_MODE(fl) (((fl)&O_CREAT) || IS_TMPFILE(fl))

struct cf_root {
    int fd;            /* O_PATH | O_DIRECTORY descriptor of the root, opened once */
    dev_t dev;         /* identity of the root when opened */
    ino_t ino;         /*   "   */
    bool readonly;     /* set once at open */
    bool has_openat2;  /* the kernel answered the probe; set once at open */
    atomic_bool walk;  /* resolve by the O_NOFOLLOW walk (no openat2, or forced) */
    atomic_bool stale; /* the path no longer names the root; latched */
    char *only;        /* a single-file root: the one name visible in the folder, or NULL */
    char path[];       /* absolute path given at open, checked against dev/ino */
};

/* A name resolved to the descriptor of its parent and its last component. */
struct at {
    int dfd;   /* parent directory, O_PATH */
    bool own;  /* dfd is ours to close (it is not the root's) */
    bool root; /* the path is the root itself ("."); name is "." */
    char name[NAME_MAX + 1];
};

/* ---- cleaning ---- */

int cf_clean_n(const char *in, size_t len, char *out, size_t outlen)
{
    size_t i = 0, o = 0;
    int r = 0;

    if (outlen)
        out[0] = '\0';
    if (len && memchr(in, '\0', len))
        return -EINVAL;
    if (len >= PATH_MAX)
        return -ENAMETOOLONG;
    while (i < len) {
        size_t start, n;

        while (i < len && in[i] == '/')
            i++;
        start = i;
        while (i < len && in[i] != '/')
            i++;
        n = i - start;
        if (n == 0 || (n == 1 && in[start] == '.'))
            continue;
        if (n > NAME_MAX) {
            r = -ENAMETOOLONG;
            goto out;
        }
        if (n == 2 && in[start] == '.' && in[start + 1] == '.') {
            if (o == 0) {
                r = -EPERM;
                goto out;
            }
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--; /* the '/' before the dropped component */
            continue;
        }
        if (o + (o > 0) + n + 1 > outlen) {
            r = -ERANGE;
            goto out;
        }
        if (o > 0)
            out[o++] = '/';
        memcpy(out + o, in + start, n);
        o += n;
    }
    if (o == 0) {
        if (outlen < 2) {
            r = -ERANGE;
            goto out;
        }
        out[o++] = '.';
    }
    out[o] = '\0';
out:
    if (r != 0 && outlen)
        out[0] = '\0';
    return r;
}

int cf_clean(const char *in, char *out, size_t outlen)
{
    size_t len = strnlen(in, PATH_MAX);

    if (len >= PATH_MAX) {
        if (outlen)
            out[0] = '\0';
        return -ENAMETOOLONG;
    }
    return cf_clean_n(in, len, out, outlen);
}

/* ---- the root ---- */

static long sys_openat2(int dfd, const char *path, struct open_how *how)
{
    return syscall(SYS_openat2, dfd, path, how, sizeof(*how));
}

static bool probe_openat2(int rootfd)
{
    struct open_how how = {
        .flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };
    long fd = sys_openat2(rootfd, ".", &how);

    if (fd >= 0) {
        close((int)fd);
        return true;
    }
    /* ENOSYS: no such syscall; EPERM: a seccomp filter that does not know it; EINVAL/E2BIG: a
     * kernel without these resolve flags or this struct size */
    return !(errno == ENOSYS || errno == EPERM || errno == EINVAL || errno == E2BIG);
}

int cf_open_root(const char *dir, bool readonly, cf_root_t **out)
{
    char cwd[PATH_MAX];
    size_t plen = 0, dlen = strlen(dir);
    struct stat st;
    cf_root_t *r;
    int fd;

    if (dlen == 0)
        return -ENOENT;
    if (dir[0] != '/') {
        if (!getcwd(cwd, sizeof(cwd)))
            return -errno;
        plen = strlen(cwd);
    }
    if (plen + 1 + dlen + 1 > PATH_MAX)
        return -ENAMETOOLONG;
    fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    r = calloc(1, sizeof(*r) + plen + 1 + dlen + 1);
    if (!r) {
        close(fd);
        return -ENOMEM;
    }
    if (plen) {
        memcpy(r->path, cwd, plen);
        r->path[plen++] = '/';
    }
    memcpy(r->path + plen, dir, dlen + 1);
    r->fd = fd;
    r->dev = st.st_dev;
    r->ino = st.st_ino;
    r->readonly = readonly;
    r->has_openat2 = probe_openat2(fd);
    atomic_init(&r->walk, !r->has_openat2);
    atomic_init(&r->stale, false);
    *out = r;
    return 0;
}

int cf_open_root_file(const char *file, bool readonly, cf_root_t **out)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(file, '/');
    const char *base = slash ? slash + 1 : file;
    int r;

    if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
        return -EINVAL;
    if (strlen(base) > NAME_MAX)
        return -ENAMETOOLONG;
    if ((size_t)snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - file) : 1,
                         slash ? (slash == file ? "/" : file) : ".") >= sizeof(dir))
        return -ENAMETOOLONG;
    cf_root_t *root;
    if ((r = cf_open_root(dir, readonly, &root)) != 0)
        return r;
    if (!(root->only = strdup(base))) {
        cf_close_root(root);
        return -ENOMEM;
    }
    *out = root;
    return 0;
}

const char *cf_root_only(const cf_root_t *r)
{
    return r->only;
}

bool cf_visible(const cf_root_t *r, const char *dir, const char *name)
{
    if (!r->only || (*dir && strcmp(dir, ".") != 0 && strcmp(dir, "/") != 0))
        return true;
    return strcmp(name, r->only) == 0 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0;
}

/* A single-file root: only the root itself and its one name resolve (the file has no children);
 * the name is never followed as a symlink, so it cannot lead to a sibling. */
static int only_check(const cf_root_t *r, const char *clean, int *flags)
{
    if (!r->only || strcmp(clean, ".") == 0)
        return 0;
    size_t n = strlen(r->only);
    if (strncmp(clean, r->only, n) != 0 || (clean[n] != '\0' && clean[n] != '/'))
        return -ENOENT;
    if (clean[n] == '/')
        return -ENOTDIR;
    if (flags)
        *flags |= O_NOFOLLOW;
    return 0;
}

void cf_close_root(cf_root_t *r)
{
    if (!r)
        return;
    close(r->fd);
    free(r->only);
    free(r);
}

bool cf_root_readonly(const cf_root_t *r)
{
    return r->readonly;
}

bool cf_uses_openat2(const cf_root_t *r)
{
    return !atomic_load(&r->walk);
}

void cf_force_walk(cf_root_t *r, bool on)
{
    atomic_store(&r->walk, on || !r->has_openat2);
}

/* 0 while the root path still names the directory that was opened; -ESTALE from the first time
 * it does not, for good. */
static int root_check(cf_root_t *r)
{
    struct stat st;

    if (atomic_load(&r->stale))
        return -ESTALE;
    if (stat(r->path, &st) != 0) {
        if (errno != ENOENT && errno != ENOTDIR)
            return -errno;
    } else if (st.st_dev == r->dev && st.st_ino == r->ino) {
        return 0;
    }
    atomic_store(&r->stale, true);
    return -ESTALE;
}

/* Errors that mean "this leads outside the root" (or loops) are reported as -EPERM. */
static int confined_errno(int e)
{
    return (e == EXDEV || e == ELOOP) ? -EPERM : -e;
}

/* ---- resolution ---- */

static int open_openat2(cf_root_t *r, const char *path, int flags, mode_t mode)
{
    struct open_how how = {
        .flags = (unsigned)(flags | O_CLOEXEC),
        .mode = TAKES_MODE(flags) ? mode : 0,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };

    for (int tries = 0;; tries++) {
        long fd = sys_openat2(r->fd, path, &how);

        if (fd >= 0)
            return (int)fd;
        if (errno == EAGAIN && tries < EAGAIN_RETRIES)
            continue;
        return -errno;
    }
}

/* Replace the component at [comp, comp + clen) of 'path' by the symlink text 'target' (relative)
 * and clean the result into 'path' again. -EXDEV when it climbs out of the root. */
static int splice_link(char *path, size_t comp, size_t clen, const char *target)
{
    char joined[PATH_MAX];
    const char *rest = path + comp + clen;
    int n, r;

    if (*rest == '/')
        rest++;
    n = snprintf(joined, sizeof(joined), "%.*s%s%s%s", (int)comp, path, target, *rest ? "/" : "",
                 rest);
    if (n < 0 || (size_t)n >= sizeof(joined))
        return -ENAMETOOLONG;
    r = cf_clean(joined, path, PATH_MAX);
    return r == -EPERM ? -EXDEV : r;
}

/* Read the symlink held by the O_PATH | O_NOFOLLOW descriptor 'fd' into target (PATH_MAX bytes).
 * -EXDEV for an absolute target: RESOLVE_BENEATH refuses those too. */
static int read_link_fd(int fd, char *target)
{
    ssize_t n = readlinkat(fd, "", target, PATH_MAX);

    if (n < 0)
        return -errno;
    if (n >= PATH_MAX)
        return -ENAMETOOLONG;
    target[n] = '\0';
    if (n == 0)
        return -ENOENT;
    return target[0] == '/' ? -EXDEV : 0;
}

/* The fallback: walk 'clean' (a cf_clean result) from the root one component at a time, each
 * opened with O_NOFOLLOW from the descriptor of its parent. A symlink on the way (or as last
 * component when it is to be followed) is read through its own O_PATH descriptor, spliced into the
 * path by name, and the walk starts again from the root. Returns a descriptor or a negative errno
 * (-EXDEV out of the root, -ELOOP too many links). */
static int open_walk(cf_root_t *r, const char *clean, int flags, mode_t mode)
{
    char path[PATH_MAX], target[PATH_MAX], name[NAME_MAX + 1];
    bool follow_last = !(flags & (O_NOFOLLOW | O_CREAT));
    int links = 0, dfd, fd, res;

    if (!TAKES_MODE(flags))
        mode = 0;
    snprintf(path, sizeof(path), "%s", clean);
restart:
    dfd = r->fd;
    if (strcmp(path, ".") == 0) {
        fd = openat(r->fd, ".", flags | O_CLOEXEC, mode);
        return fd >= 0 ? fd : -errno;
    }
    for (size_t pos = 0;;) {
        size_t len = strcspn(path + pos, "/");
        bool last = path[pos + len] == '\0';
        struct stat st;

        memcpy(name, path + pos, len);
        name[len] = '\0';
        if (!last || follow_last) {
            fd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
            if (fd < 0) {
                res = -errno;
                goto out;
            }
            if (fstat(fd, &st) != 0) {
                res = -errno;
                close(fd);
                goto out;
            }
            if (S_ISLNK(st.st_mode)) {
                res = read_link_fd(fd, target);
                close(fd);
                if (res == 0 && ++links > MAX_SYMLINKS)
                    res = -ELOOP;
                if (res == 0)
                    res = splice_link(path, pos, len, target);
                if (res != 0)
                    goto out;
                if (dfd != r->fd)
                    close(dfd);
                goto restart;
            }
            if (!last) {
                if (!S_ISDIR(st.st_mode)) {
                    close(fd);
                    res = -ENOTDIR;
                    goto out;
                }
                if (dfd != r->fd)
                    close(dfd);
                dfd = fd;
                pos += len + 1;
                continue;
            }
            close(fd);
        }
        /* the last component, never followed by the kernel */
        fd = openat(dfd, name, flags | O_NOFOLLOW | O_CLOEXEC, mode);
        if (fd < 0 && errno == ELOOP && follow_last && ++links <= MAX_SYMLINKS) {
            /* it became a symlink since we looked: look again */
            if (dfd != r->fd)
                close(dfd);
            goto restart;
        }
        res = fd >= 0 ? fd : -errno;
        goto out;
    }
out:
    if (dfd != r->fd)
        close(dfd);
    return res;
}

/* Open the cleaned path beneath the root by whichever resolver the root uses. */
static int open_beneath(cf_root_t *r, const char *clean, int flags, mode_t mode)
{
    int fd;

    if ((fd = only_check(r, clean, &flags)) != 0)
        return fd;

    if (!atomic_load(&r->walk)) {
        fd = open_openat2(r, clean, flags, mode);
        if (fd != -ENOSYS)
            return fd;
    }
    return open_walk(r, clean, flags, mode);
}

/* Resolve the parent of 'rel' beneath the root and split off its last component. */
static int at_resolve(cf_root_t *r, const char *rel, struct at *a)
{
    char clean[PATH_MAX];
    char *slash, *last;
    size_t len;
    int res;

    a->dfd = r->fd;
    a->own = false;
    a->root = false;
    if ((res = cf_clean(rel, clean, sizeof(clean))) != 0)
        return res;
    slash = strrchr(clean, '/');
    last = slash ? slash + 1 : clean;
    len = strlen(last);
    if (len >= sizeof(a->name)) /* cf_clean refused longer names already */
        return -ENAMETOOLONG;
    memcpy(a->name, last, len + 1);
    if ((res = only_check(r, clean, NULL)) != 0)
        return res;
    if (!slash) {
        a->root = strcmp(clean, ".") == 0;
        return 0;
    }
    *slash = '\0';
    res = open_beneath(r, clean, O_PATH | O_DIRECTORY, 0);
    if (res < 0)
        return confined_errno(-res);
    a->dfd = res;
    a->own = true;
    return 0;
}

static void at_release(struct at *a)
{
    if (a->own)
        close(a->dfd);
    a->own = false;
}

/* ---- reading ---- */

int cf_openat(cf_root_t *r, const char *rel, int flags, mode_t mode, int *fd_out)
{
    char clean[PATH_MAX];
    struct stat st;
    int fd, res;

    if (r->readonly && IS_WRITE(flags))
        return -EROFS;
    if ((res = root_check(r)) != 0 || (res = cf_clean(rel, clean, sizeof(clean))) != 0)
        return res;
    if (flags & O_CREAT)
        flags |= O_NOFOLLOW;
    if (flags & O_PATH) {
        fd = open_beneath(r, clean, flags, mode);
        if (fd < 0)
            return confined_errno(-fd);
        *fd_out = fd;
        return 0;
    }
    fd = open_beneath(r, clean, flags | O_NONBLOCK | O_NOCTTY, mode);
    if (fd < 0)
        return (fd == -ENXIO || fd == -ENODEV) ? -EPERM : confined_errno(-fd);
    if (fstat(fd, &st) != 0) {
        res = -errno;
        goto fail;
    }
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
        res = -EPERM;
        goto fail;
    }
    if (!(flags & O_NONBLOCK)) {
        int fl = fcntl(fd, F_GETFL);

        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
            res = -errno;
            goto fail;
        }
    }
    *fd_out = fd;
    return 0;
fail:
    close(fd);
    return res;
}

int cf_lstat(cf_root_t *r, const char *rel, struct stat *st)
{
    struct at a;
    int res;

    if ((res = root_check(r)) != 0 || (res = at_resolve(r, rel, &a)) != 0)
        return res;
    res = fstatat(a.dfd, a.name, st, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
    at_release(&a);
    return res;
}

int cf_readlink(cf_root_t *r, const char *rel, char *buf, size_t len)
{
    struct at a;
    ssize_t n;
    int res;

    if ((res = root_check(r)) != 0 || (res = at_resolve(r, rel, &a)) != 0)
        return res;
    n = readlinkat(a.dfd, a.name, buf, len);
    if (n < 0)
        res = -errno;
    else if ((size_t)n >= len || n > INT_MAX)
        res = -ERANGE;
    else {
        buf[n] = '\0';
        res = (int)n;
    }
    at_release(&a);
    return res;
}

int cf_opendir(cf_root_t *r, const char *rel, DIR **dir)
{
    DIR *d;
    int fd, res;

    if ((res = cf_openat(r, rel, O_RDONLY | O_DIRECTORY, 0, &fd)) != 0)
        return res;
    d = fdopendir(fd);
    if (!d) {
        res = -errno;
        close(fd);
        return res;
    }
    *dir = d;
    return 0;
}

/* ---- writing ---- */

/* The common start of every write call: refuse on a read-only root, check the root, resolve. */
static int write_start(cf_root_t *r, const char *rel, struct at *a)
{
    int res;

    if (r->readonly)
        return -EROFS;
    if ((res = root_check(r)) != 0)
        return res;
    return at_resolve(r, rel, a);
}

static int at_result(struct at *a, int rc)
{
    int res = rc == 0 ? 0 : -errno;

    at_release(a);
    return res;
}

int cf_mkdir(cf_root_t *r, const char *rel, mode_t mode)
{
    struct at a;
    int res;

    if ((res = write_start(r, rel, &a)) != 0)
        return res;
    if (a.root) {
        at_release(&a);
        return -EEXIST;
    }
    return at_result(&a, mkdirat(a.dfd, a.name, mode));
}

int cf_unlink(cf_root_t *r, const char *rel)
{
    struct at a;
    int res;

    if ((res = write_start(r, rel, &a)) != 0)
        return res;
    if (a.root) {
        at_release(&a);
        return -EBUSY;
    }
    return at_result(&a, unlinkat(a.dfd, a.name, 0));
}

int cf_rmdir(cf_root_t *r, const char *rel)
{
    struct at a;
    int res;

    if ((res = write_start(r, rel, &a)) != 0)
        return res;
    if (a.root) {
        at_release(&a);
        return -EBUSY;
    }
    return at_result(&a, unlinkat(a.dfd, a.name, AT_REMOVEDIR));
}

int cf_rename(cf_root_t *r, const char *from, const char *to, unsigned flags)
{
    struct at a, b;
    int res;

    if (r->readonly)
        return -EROFS;
    if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE))
        return -EINVAL;
    if ((res = write_start(r, from, &a)) != 0)
        return res;
    if ((res = at_resolve(r, to, &b)) != 0) {
        at_release(&a);
        return res;
    }
    if (a.root || b.root)
        res = -EBUSY;
    else if (renameat2(a.dfd, a.name, b.dfd, b.name, flags) != 0)
        res = -errno;
    at_release(&b);
    at_release(&a);
    return res;
}

int cf_symlink(cf_root_t *r, const char *target, const char *linkpath)
{
    struct at a;
    int res;

    if ((res = write_start(r, linkpath, &a)) != 0)
        return res;
    if (a.root) {
        at_release(&a);
        return -EBUSY;
    }
    return at_result(&a, symlinkat(target, a.dfd, a.name));
}

int cf_link(cf_root_t *r, const char *from, const char *to)
{
    struct at a, b;
    int res;

    if ((res = write_start(r, from, &a)) != 0)
        return res;
    if ((res = at_resolve(r, to, &b)) != 0) {
        at_release(&a);
        return res;
    }
    if (b.root)
        res = -EBUSY;
    else if (a.root)
        res = -EPERM; /* a directory */
    else if (linkat(a.dfd, a.name, b.dfd, b.name, 0) != 0)
        res = -errno;
    at_release(&b);
    at_release(&a);
    return res;
}

int cf_chmod(cf_root_t *r, const char *rel, mode_t mode)
{
    struct stat st;
    struct at a;
    int res;

    if ((res = write_start(r, rel, &a)) != 0)
        return res;
    /* glibc (or fchmodat2 on newer ones) refuses a symlink with EOPNOTSUPP and otherwise changes
     * the very inode it looked at, through its own O_PATH descriptor */
    if (fchmodat(a.dfd, a.name, mode, AT_SYMLINK_NOFOLLOW) == 0) {
        res = 0;
    } else {
        res = -errno;
        if (res == -EOPNOTSUPP && fstatat(a.dfd, a.name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISLNK(st.st_mode))
            res = -EPERM;
    }
    at_release(&a);
    return res;
}

int cf_truncate(cf_root_t *r, const char *rel, off_t size)
{
    struct stat st;
    struct at a;
    int fd, res;

    if (r->readonly)
        return -EROFS;
    if (size < 0)
        return -EINVAL;
    if ((res = write_start(r, rel, &a)) != 0)
        return res;
    /* look first, so a device's driver is not even opened in the common case; then open without
     * following and without blocking, and check again on the descriptor */
    if (fstatat(a.dfd, a.name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        res = -errno;
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        res = -EISDIR;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        res = -EPERM;
        goto out;
    }
    fd = openat(a.dfd, a.name, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        res = (errno == ENXIO || errno == ENODEV) ? -EPERM : confined_errno(errno);
        goto out;
    }
    if (fstat(fd, &st) != 0)
        res = -errno;
    else if (!S_ISREG(st.st_mode))
        res = S_ISDIR(st.st_mode) ? -EISDIR : -EPERM;
    else if (ftruncate(fd, size) != 0)
        res = -errno;
    close(fd);
out:
    at_release(&a);
    return res;
}

int cf_utimens(cf_root_t *r, const char *rel, const struct timespec ts[2])
{
    struct at a;
    int res;

    if ((res = write_start(r, rel, &a)) != 0)
        return res;
    return at_result(&a, utimensat(a.dfd, a.name, ts, AT_SYMLINK_NOFOLLOW));
}
