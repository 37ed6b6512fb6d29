/* sftp_server.c - a confined SFTP v3 server over byte buffers; see sftp_server.h. */
#include "sftp_server.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "sftp_codec.h"

#define SFTP_VERSION 3
#define HANDLE_LEN   8                /* u32 slot index, u32 generation */
#define LONGNAME_MAX (NAME_MAX + 128) /* "ls -l" line: mode, links, ids, size, date, name */
#define ALL_ATTRS                                                                                  \
    (TUN_SFTP_ATTR_SIZE | TUN_SFTP_ATTR_UIDGID | TUN_SFTP_ATTR_PERMISSIONS |                       \
     TUN_SFTP_ATTR_ACMODTIME)
#define STATVFS_RDONLY 0x1 /* statvfs@openssh.com f_flag bits */
#define STATVFS_NOSUID 0x2

/* the largest READDIR reply: header, count, then entries of name, long name and attributes */
_Static_assert(4 + 1 + 4 + 4 + SFS_READDIR_BATCH * (4 + NAME_MAX + 4 + LONGNAME_MAX + 4 + 28) <=
                   SFS_REPLY_MAX,
               "a READDIR batch must fit one reply");
_Static_assert(4 + 1 + 4 + 4 + SFS_READ_MAX <= SFS_REPLY_MAX, "a READ must fit one reply");
_Static_assert(1 + 4 + 4 + HANDLE_LEN + 8 + 4 + SFS_READ_MAX <= SFS_PACKET_MAX,
               "a WRITE of SFS_READ_MAX bytes must fit one request");

enum hkind { H_FREE, H_FILE, H_DIR, H_TOP };

struct handle {
    enum hkind kind;
    uint32_t gen; /* bumped at each use of the slot: a handle string names one use */
    size_t root;  /* H_FILE, H_DIR: index into roots */
    char *path;   /* H_FILE, H_DIR: cleaned path beneath the root */
    int fd;       /* H_FILE */
    DIR *dir;     /* H_DIR */
    size_t next;  /* H_TOP: the next root to list */
};

struct sfs {
    struct sfs_root *roots; /* names owned */
    size_t nroots;
    sfs_change_fn change;
    void *change_arg;
    uint64_t client; /* client-id@offload: who this client is, for the change hook; 0 = unknown */
    bool inited;     /* INIT was answered */
    int dead;        /* 0, or the error every later sfs_process returns */
    time_t started;  /* times of the virtual top */
    size_t hint;     /* where the search for a free slot starts */
    struct handle handles[SFS_HANDLES_MAX];
};

/* What a client path names. */
enum vkind {
    V_TOP,    /* the virtual top "/" */
    V_ROOT,   /* a root itself: rel is "." */
    V_IN,     /* rel beneath a root */
    V_NOROOT, /* a first component that is no root's name */
};

struct vpath {
    enum vkind kind;
    size_t root;    /* V_ROOT, V_IN */
    bool top_level; /* V_NOROOT: nothing follows the unknown name */
    char rel[PATH_MAX];
};

/* One request being carried out. */
struct req {
    sfs_t *s;
    uint32_t id;
    struct buf *in; /* the fields after the id */
    struct buf *tx;
};

typedef int (*req_fn)(struct req *q);

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Tell the change hook what a change left at 'rel': the file open as 'fd' when it is >= 0 (a
 * handle's path may be stale: the file may have been renamed since it was opened), else what
 * the path names now (nothing: NULL). */
static void changed_at(sfs_t *s, size_t root, const char *rel, int fd)
{
    struct stat st;
    if (!s->change)
        return;
    bool have = fd >= 0 ? fstat(fd, &st) == 0 : cf_lstat(s->roots[root].root, rel, &st) == 0;
    s->change(s->change_arg, s->client, SFS_CHANGED, root, rel, have ? &st : NULL);
}

static void changed(sfs_t *s, size_t root, const char *rel)
{
    changed_at(s, root, rel, -1);
}

static cf_root_t *root_of(const sfs_t *s, size_t i)
{
    return s->roots[i].root;
}

/* ---- paths ---- */

/* Split the client path p[0..n) into the top, a root, or a path beneath a root. */
static int vpath_parse(const sfs_t *s, const uint8_t *p, size_t n, struct vpath *v)
{
    size_t i = 0, start, len;
    int r;

    if (n && memchr(p, '\0', n))
        return -EINVAL;
    if (n >= PATH_MAX)
        return -ENAMETOOLONG;
    for (;;) { /* the first component other than "" and "." */
        while (i < n && p[i] == '/')
            i++;
        start = i;
        while (i < n && p[i] != '/')
            i++;
        len = i - start;
        if (len == 0) {
            v->kind = V_TOP;
            strcpy(v->rel, ".");
            return 0;
        }
        if (!(len == 1 && p[start] == '.'))
            break;
    }
    if (len == 2 && p[start] == '.' && p[start + 1] == '.')
        return -EPERM; /* above the top */
    if (len > NAME_MAX)
        return -ENAMETOOLONG;
    v->kind = V_NOROOT;
    for (size_t k = 0; k < s->nroots; k++) {
        if (strlen(s->roots[k].name) == len && memcmp(s->roots[k].name, p + start, len) == 0) {
            v->kind = V_IN;
            v->root = k;
            break;
        }
    }
    /* the rest is cleaned on its own, so that ".." cannot leave the root it names */
    if ((r = cf_clean_n((const char *)p + i, n - i, v->rel, sizeof(v->rel))) != 0)
        return r;
    if (v->kind == V_NOROOT)
        v->top_level = strcmp(v->rel, ".") == 0;
    else if (strcmp(v->rel, ".") == 0)
        v->kind = V_ROOT;
    return 0;
}

static int get_path(struct req *q, struct vpath *v)
{
    const uint8_t *p;
    uint32_t n;
    int r;

    if ((r = buf_get_string(q->in, &p, &n)) != 0)
        return r;
    return vpath_parse(q->s, p, n, v);
}

/* For a call that reads an existing name beneath a root: the top and unknown names refused. */
static int need_root(const struct vpath *v, int top_err)
{
    if (v->kind == V_TOP)
        return top_err;
    if (v->kind == V_NOROOT)
        return -ENOENT;
    return 0;
}

/* For a call that creates, removes or renames the name 'v' itself: only names beneath a root. An
 * unknown name at the top would be created there: refused like every change of the top. */
static int need_inside(const struct vpath *v)
{
    if (v->kind == V_NOROOT)
        return v->top_level ? -EACCES : -ENOENT;
    return v->kind == V_IN ? 0 : -EACCES;
}

/* Both names of a rename or link: beneath the same root. */
static int get_path_pair(struct req *q, struct vpath *from, struct vpath *to)
{
    const uint8_t *p1, *p2;
    uint32_t n1, n2;
    int r;

    if ((r = buf_get_string(q->in, &p1, &n1)) != 0 || (r = buf_get_string(q->in, &p2, &n2)) != 0)
        return r;
    if ((r = vpath_parse(q->s, p1, n1, from)) != 0 || (r = vpath_parse(q->s, p2, n2, to)) != 0)
        return r;
    if (from->kind == V_NOROOT)
        return -ENOENT;
    if (from->kind != V_IN)
        return -EACCES;
    if ((r = need_inside(to)) != 0)
        return r;
    return from->root == to->root ? 0 : -EXDEV;
}

/* ---- attributes ---- */

static void attr_of(const struct stat *st, struct tun_sftp_attr *a)
{
    memset(a, 0, sizeof(*a));
    a->flags = ALL_ATTRS;
    a->size = st->st_size < 0 ? 0 : (uint64_t)st->st_size;
    a->uid = st->st_uid;
    a->gid = st->st_gid;
    a->perm = st->st_mode;
    a->atime = (uint32_t)st->st_atim.tv_sec;
    a->mtime = (uint32_t)st->st_mtim.tv_sec;
}

static void top_stat(const sfs_t *s, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_mode = S_IFDIR | 0555;
    st->st_nlink = 2 + s->nroots;
    st->st_uid = getuid();
    st->st_gid = getgid();
    st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = s->started;
}

/* What READDIR of the top shows for root i: its directory, or a bare 0555 directory when the
 * root cannot be looked at (it went stale). */
static void root_stat(const sfs_t *s, size_t i, struct stat *st)
{
    if (cf_lstat(root_of(s, i), ".", st) != 0)
        top_stat(s, st);
}

/* An "ls -l" line as OpenSSH's ls_file writes it, with numeric owner and group. */
static void longname(char *out, size_t len, const char *name, const struct stat *st)
{
    static const char types[] = "?pc?d?b?-?l?s???"; /* by (mode & S_IFMT) >> 12 */
    mode_t m = st->st_mode;
    char mode[11], when[20];
    time_t now = time(NULL), t = st->st_mtim.tv_sec;
    struct tm tm;

    mode[0] = types[(m & S_IFMT) >> 12];
    mode[1] = m & S_IRUSR ? 'r' : '-';
    mode[2] = m & S_IWUSR ? 'w' : '-';
    mode[3] = m & S_ISUID ? (m & S_IXUSR ? 's' : 'S') : (m & S_IXUSR ? 'x' : '-');
    mode[4] = m & S_IRGRP ? 'r' : '-';
    mode[5] = m & S_IWGRP ? 'w' : '-';
    mode[6] = m & S_ISGID ? (m & S_IXGRP ? 's' : 'S') : (m & S_IXGRP ? 'x' : '-');
    mode[7] = m & S_IROTH ? 'r' : '-';
    mode[8] = m & S_IWOTH ? 'w' : '-';
    mode[9] = m & S_ISVTX ? (m & S_IXOTH ? 't' : 'T') : (m & S_IXOTH ? 'x' : '-');
    mode[10] = '\0';
    if (!localtime_r(&t, &tm) ||
        strftime(when, sizeof(when),
                 t > now - 182 * 86400L && t < now + 182 * 86400L ? "%b %e %H:%M" : "%b %e  %Y",
                 &tm) == 0)
        strcpy(when, "?");
    snprintf(out, len, "%s %3lu %-8lu %-8lu %8llu %s %s", mode, (unsigned long)st->st_nlink,
             (unsigned long)st->st_uid, (unsigned long)st->st_gid,
             (unsigned long long)(st->st_size < 0 ? 0 : st->st_size), when, name);
}

/* ---- replies ---- */

static int reply_attrs(struct req *q, const struct stat *st)
{
    struct tun_sftp_attr a;
    size_t mark;
    int r;

    attr_of(st, &a);
    if ((r = sfc_put_begin(q->tx, SFC_ATTRS, q->id, &mark)) != 0)
        return r;
    if ((r = sfc_put_attr(q->tx, &a)) != 0)
        return r;
    sfc_put_end(q->tx, mark);
    return 0;
}

/* A NAME reply of one entry whose long name is the name, without attributes (REALPATH,
 * READLINK). */
static int reply_one_name(struct req *q, const char *name)
{
    struct tun_sftp_attr none = {0};
    size_t mark;
    int r;

    if ((r = sfc_put_begin(q->tx, SFC_NAME, q->id, &mark)) != 0)
        return r;
    if ((r = buf_put_u32(q->tx, 1)) != 0 || (r = sfc_put_name(q->tx, name, name, &none)) != 0)
        return r;
    sfc_put_end(q->tx, mark);
    return 0;
}

static uint32_t status_of(int err)
{
    switch (-err) {
    case 0:
        return SFC_OK;
    case ENODATA:
        return SFC_EOF;
    case ENOENT:
        return SFC_NO_SUCH_FILE;
    case EACCES:
    case EPERM:
    case EROFS:
        return SFC_PERMISSION_DENIED;
    case EBADMSG:
        return SFC_BAD_MESSAGE;
    case EOPNOTSUPP:
        return SFC_OP_UNSUPPORTED;
    default:
        return SFC_FAILURE;
    }
}

static int reply_status(struct req *q, int err)
{
    char text[128];
    const char *msg;

    if (err == 0)
        msg = "success";
    else if (err == -ENODATA)
        msg = "end of file";
    else if (err == -EOPNOTSUPP)
        msg = "operation unsupported";
    else
        msg = strerror_r(-err, text, sizeof(text)); /* GNU: may return a static string */
    if (msg != text)
        snprintf(text, sizeof(text), "%s", msg);
    if (text[0] >= 'A' && text[0] <= 'Z')
        text[0] = (char)(text[0] - 'A' + 'a');
    return sfc_put_status(q->tx, q->id, status_of(err), text);
}

/* ---- handles ---- */

static int handle_slot(sfs_t *s, struct handle **h)
{
    for (size_t k = 0; k < SFS_HANDLES_MAX; k++) {
        size_t i = (s->hint + k) % SFS_HANDLES_MAX;

        if (s->handles[i].kind == H_FREE) {
            *h = &s->handles[i];
            return 0;
        }
    }
    return -EMFILE;
}

/* Make the free slot h a handle of 'kind' and reply with its string. 'path' (may be NULL for the
 * top) is copied. On failure the slot stays free and nothing is owned by it. */
static int handle_open(struct req *q, struct handle *h, enum hkind kind, size_t root,
                       const char *path)
{
    uint8_t wire[HANDLE_LEN];
    uint32_t idx = (uint32_t)(h - q->s->handles);
    size_t mark;
    int r;

    h->path = NULL;
    if (path && !(h->path = strdup(path)))
        return -ENOMEM;
    h->gen++;
    for (int i = 0; i < 4; i++) {
        wire[i] = (uint8_t)(idx >> (24 - 8 * i));
        wire[4 + i] = (uint8_t)(h->gen >> (24 - 8 * i));
    }
    if ((r = sfc_put_begin(q->tx, SFC_HANDLE, q->id, &mark)) != 0 ||
        (r = buf_put_string(q->tx, wire, sizeof(wire))) != 0) {
        free(h->path);
        h->path = NULL;
        return r;
    }
    sfc_put_end(q->tx, mark);
    q->s->hint = idx + 1;
    h->kind = kind;
    h->root = root;
    h->next = 0;
    return 0;
}

static int handle_close(struct handle *h)
{
    int r = 0;

    if (h->kind == H_FILE && close(h->fd) != 0)
        r = -errno;
    else if (h->kind == H_DIR && closedir(h->dir) != 0)
        r = -errno;
    free(h->path);
    h->path = NULL;
    h->dir = NULL;
    h->fd = -1;
    h->kind = H_FREE;
    return r;
}

/* The handle a request names, of a kind in the mask (1 << H_FILE ...); -EBADF for anything else. */
static int get_handle(struct req *q, unsigned kinds, struct handle **h)
{
    const uint8_t *p;
    uint32_t n, idx;
    struct handle *x;
    int r;

    if ((r = buf_get_string(q->in, &p, &n)) != 0)
        return r;
    if (n != HANDLE_LEN)
        return -EBADF;
    idx = be32(p);
    if (idx >= SFS_HANDLES_MAX)
        return -EBADF;
    x = &q->s->handles[idx];
    if (x->kind == H_FREE || x->gen != be32(p + 4) || !(kinds & (1u << x->kind)))
        return -EBADF;
    *h = x;
    return 0;
}

#define ANY_HANDLE ((1u << H_FILE) | (1u << H_DIR) | (1u << H_TOP))

/* The descriptor of a file or directory handle. */
static int handle_fd(const struct handle *h)
{
    return h->kind == H_FILE ? h->fd : dirfd(h->dir);
}

/* ---- requests ---- */

static int open_flags(uint32_t pflags)
{
    int fl;

    if ((pflags & SFC_FXF_READ) && (pflags & SFC_FXF_WRITE))
        fl = O_RDWR;
    else if (pflags & SFC_FXF_WRITE)
        fl = O_WRONLY;
    else
        fl = O_RDONLY;
    if (pflags & SFC_FXF_APPEND)
        fl |= O_APPEND;
    if (pflags & SFC_FXF_CREAT)
        fl |= O_CREAT;
    if (pflags & SFC_FXF_TRUNC)
        fl |= O_TRUNC;
    if (pflags & SFC_FXF_EXCL)
        fl |= O_EXCL;
    return fl;
}

static int do_open(struct req *q)
{
    const uint8_t *p;
    uint32_t n, pflags;
    struct tun_sftp_attr a;
    struct handle *h;
    struct vpath v;
    mode_t mode;
    int fl, fd, r;

    if ((r = buf_get_string(q->in, &p, &n)) != 0 || (r = buf_get_u32(q->in, &pflags)) != 0 ||
        (r = sfc_get_attr(q->in, &a)) != 0)
        return r;
    fl = open_flags(pflags);
    if ((r = vpath_parse(q->s, p, n, &v)) != 0)
        return r;
    if (v.kind == V_TOP)
        return fl == O_RDONLY ? -EISDIR : -EACCES;
    if (v.kind == V_NOROOT)
        return (fl & O_CREAT) && v.top_level ? -EACCES : -ENOENT;
    if ((r = handle_slot(q->s, &h)) != 0) /* before opening: a full table creates nothing */
        return r;
    mode = (a.flags & TUN_SFTP_ATTR_PERMISSIONS) ? (a.perm & 07777) : 0666;
    if ((r = cf_openat(root_of(q->s, v.root), v.rel, fl, mode, &fd)) != 0)
        return r;
    if (fl & (O_CREAT | O_TRUNC))
        changed_at(q->s, v.root, v.rel, fd);
    h->fd = fd;
    if ((r = handle_open(q, h, H_FILE, v.root, v.rel)) != 0) {
        close(fd);
        h->fd = -1;
    }
    return r;
}

static int do_close(struct req *q)
{
    struct handle *h;
    int r;

    if ((r = get_handle(q, ANY_HANDLE, &h)) != 0)
        return r;
    return reply_status(q, handle_close(h));
}

static int do_read(struct req *q)
{
    struct handle *h;
    uint64_t off;
    uint32_t len;
    uint8_t *w;
    ssize_t n;
    int r;

    if ((r = get_handle(q, 1u << H_FILE, &h)) != 0 || (r = buf_get_u64(q->in, &off)) != 0 ||
        (r = buf_get_u32(q->in, &len)) != 0)
        return r;
    if (len > SFS_READ_MAX)
        len = SFS_READ_MAX;
    if (off >= (uint64_t)INT64_MAX)
        return -ENODATA; /* no file holds a byte there */
    if (len > (uint64_t)INT64_MAX - off)
        len = (uint32_t)((uint64_t)INT64_MAX - off);
    /* read straight into tx, behind the header written below */
    if ((r = buf_reserve(q->tx, 13 + (size_t)len, &w)) != 0)
        return r;
    n = pread(h->fd, w + 13, len, (off_t)off);
    if (n < 0)
        return -errno;
    if (n == 0)
        return -ENODATA; /* as OpenSSH, also for a READ of length 0 */
    for (int i = 0; i < 4; i++) {
        w[i] = (uint8_t)((9 + (uint32_t)n) >> (24 - 8 * i));
        w[5 + i] = (uint8_t)(q->id >> (24 - 8 * i));
        w[9 + i] = (uint8_t)((uint32_t)n >> (24 - 8 * i));
    }
    w[4] = SFC_DATA;
    buf_commit(q->tx, 13 + (size_t)n);
    return 0;
}

static int do_write(struct req *q)
{
    const uint8_t *p;
    struct handle *h;
    uint32_t n, done;
    uint64_t off;
    int r;

    if ((r = get_handle(q, 1u << H_FILE, &h)) != 0 || (r = buf_get_u64(q->in, &off)) != 0 ||
        (r = buf_get_string(q->in, &p, &n)) != 0)
        return r;
    if (cf_root_readonly(root_of(q->s, h->root)))
        return -EROFS;
    if (off > (uint64_t)INT64_MAX || n > (uint64_t)INT64_MAX - off)
        return -EFBIG;
    for (done = 0; done < n && r == 0;) {
        ssize_t w = pwrite(h->fd, p + done, n - done, (off_t)(off + done));

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            r = w < 0 ? -errno : -EIO;
        else
            done += (uint32_t)w;
    }
    if (done > 0)
        changed_at(q->s, h->root, h->path,
                   handle_fd(h)); /* a failed write may have written a part */
    if (r != 0)
        return r;
    return reply_status(q, 0);
}

static int stat_common(struct req *q, bool follow)
{
    struct vpath v;
    struct stat st;
    cf_root_t *root;
    int fd, r;

    if ((r = get_path(q, &v)) != 0)
        return r;
    if (v.kind == V_TOP) {
        top_stat(q->s, &st);
        return reply_attrs(q, &st);
    }
    if ((r = need_root(&v, 0)) != 0)
        return r;
    root = root_of(q->s, v.root);
    if (!follow) {
        r = cf_lstat(root, v.rel, &st);
    } else if ((r = cf_openat(root, v.rel, O_PATH, 0, &fd)) == 0) {
        r = fstat(fd, &st) == 0 ? 0 : -errno;
        close(fd);
    }
    return r != 0 ? r : reply_attrs(q, &st);
}

static int do_lstat(struct req *q)
{
    return stat_common(q, false);
}

static int do_stat(struct req *q)
{
    return stat_common(q, true);
}

static int do_fstat(struct req *q)
{
    struct handle *h;
    struct stat st;
    int r;

    if ((r = get_handle(q, ANY_HANDLE, &h)) != 0)
        return r;
    if (h->kind == H_TOP)
        top_stat(q->s, &st);
    else if (fstat(handle_fd(h), &st) != 0)
        return -errno;
    return reply_attrs(q, &st);
}

static struct timespec ts_of(uint32_t t)
{
    struct timespec ts = {.tv_sec = (time_t)t, .tv_nsec = 0};
    return ts;
}

/* The attributes of a SETSTAT that this server refuses whole, before changing anything. Owner
 * policy: uid and gid are accepted when they are the file's own (a no-op, as `cp -a` and sshfs
 * send them), and any real change of owner is refused (-EPERM): a client never gives laptop files
 * away. 'cur' is the file as it is now (NULL when it cannot be known: then any owner is refused).
 */
static int attrs_check(const struct tun_sftp_attr *a, const struct stat *cur)
{
    if ((a->flags & TUN_SFTP_ATTR_UIDGID) &&
        (!cur || a->uid != (uint32_t)cur->st_uid || a->gid != (uint32_t)cur->st_gid))
        return -EPERM;
    if ((a->flags & TUN_SFTP_ATTR_SIZE) && a->size > (uint64_t)INT64_MAX)
        return -EFBIG;
    return 0;
}

/* Apply size, permissions and times to 'rel' in that order, stopping at the first failure; counts
 * in *done those applied. */
static int apply_path(cf_root_t *root, const char *rel, const struct tun_sftp_attr *a, int *done)
{
    struct timespec ts[2] = {ts_of(a->atime), ts_of(a->mtime)};
    int r = 0;

    if ((a->flags & TUN_SFTP_ATTR_SIZE) && (r = cf_truncate(root, rel, (off_t)a->size)) == 0)
        (*done)++;
    if (r == 0 && (a->flags & TUN_SFTP_ATTR_PERMISSIONS) &&
        (r = cf_chmod(root, rel, a->perm & 07777)) == 0)
        (*done)++;
    if (r == 0 && (a->flags & TUN_SFTP_ATTR_ACMODTIME) && (r = cf_utimens(root, rel, ts)) == 0)
        (*done)++;
    return r;
}

/* The same on the descriptor of a file or directory handle. */
static int apply_fd(const struct handle *h, const struct tun_sftp_attr *a, int *done)
{
    struct timespec ts[2] = {ts_of(a->atime), ts_of(a->mtime)};
    int fd = handle_fd(h);

    if (a->flags & TUN_SFTP_ATTR_SIZE) {
        if (h->kind == H_DIR)
            return -EISDIR;
        if (ftruncate(fd, (off_t)a->size) != 0)
            return -errno;
        (*done)++;
    }
    if (a->flags & TUN_SFTP_ATTR_PERMISSIONS) {
        if (fchmod(fd, a->perm & 07777) != 0)
            return -errno;
        (*done)++;
    }
    if (a->flags & TUN_SFTP_ATTR_ACMODTIME) {
        if (futimens(fd, ts) != 0)
            return -errno;
        (*done)++;
    }
    return 0;
}

static int setstat_common(struct req *q)
{
    struct tun_sftp_attr a;
    struct vpath v;
    cf_root_t *root;
    int r, done = 0;

    if ((r = get_path(q, &v)) != 0 || (r = sfc_get_attr(q->in, &a)) != 0)
        return r;
    if ((r = need_root(&v, -EACCES)) != 0)
        return r;
    root = root_of(q->s, v.root);
    if (cf_root_readonly(root))
        return -EROFS;
    struct stat cur;
    bool have = !(a.flags & TUN_SFTP_ATTR_UIDGID) || cf_lstat(root, v.rel, &cur) == 0;
    if ((r = attrs_check(&a, have && (a.flags & TUN_SFTP_ATTR_UIDGID) ? &cur : NULL)) != 0)
        return r;
    r = apply_path(root, v.rel, &a, &done);
    if (done > 0)
        changed(q->s, v.root, v.rel);
    return r != 0 ? r : reply_status(q, 0);
}

static int do_setstat(struct req *q)
{
    return setstat_common(q);
}

static int do_fsetstat(struct req *q)
{
    struct tun_sftp_attr a;
    struct handle *h;
    int r, done = 0;

    if ((r = get_handle(q, ANY_HANDLE, &h)) != 0 || (r = sfc_get_attr(q->in, &a)) != 0)
        return r;
    if (h->kind == H_TOP)
        return -EACCES;
    if (cf_root_readonly(root_of(q->s, h->root)))
        return -EROFS;
    struct stat cur;
    bool have = (a.flags & TUN_SFTP_ATTR_UIDGID) && fstat(handle_fd(h), &cur) == 0;
    if ((r = attrs_check(&a, have ? &cur : NULL)) != 0)
        return r;
    r = apply_fd(h, &a, &done);
    if (done > 0)
        changed_at(q->s, h->root, h->path, handle_fd(h));
    return r != 0 ? r : reply_status(q, 0);
}

static int do_opendir(struct req *q)
{
    struct handle *h;
    struct vpath v;
    DIR *d;
    int r;

    if ((r = get_path(q, &v)) != 0)
        return r;
    if (v.kind == V_NOROOT)
        return -ENOENT;
    if ((r = handle_slot(q->s, &h)) != 0)
        return r;
    if (v.kind == V_TOP)
        return handle_open(q, h, H_TOP, 0, NULL);
    if ((r = cf_opendir(root_of(q->s, v.root), v.rel, &d)) != 0)
        return r;
    h->dir = d;
    if ((r = handle_open(q, h, H_DIR, v.root, v.rel)) != 0) {
        closedir(d);
        h->dir = NULL;
    }
    return r;
}

static int put_entry(struct buf *tx, const char *name, const struct stat *st)
{
    char ln[LONGNAME_MAX];
    struct tun_sftp_attr a;

    attr_of(st, &a);
    longname(ln, sizeof(ln), name, st);
    return sfc_put_name(tx, name, ln, &a);
}

/* Up to SFS_READDIR_BATCH entries of h after the count at count_mark; returns how many. Each is
 * described without following it: fstatat on the stream's own descriptor, one name beneath it. */
static int list_dir(const cf_root_t *root, struct handle *h, struct buf *tx, uint32_t *count)
{
    struct dirent *de;
    struct stat st;
    int r;

    while (*count < SFS_READDIR_BATCH) {
        errno = 0;
        if (!(de = readdir(h->dir)))
            return *count == 0 ? -errno : 0; /* 0 at the end: EOF */
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
            !cf_visible(root, h->path, de->d_name))
            continue;
        if (fstatat(dirfd(h->dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT)
                continue; /* removed since it was listed */
            memset(&st, 0, sizeof(st));
        }
        if ((r = put_entry(tx, de->d_name, &st)) != 0)
            return r;
        (*count)++;
    }
    return 0;
}

static int list_top(sfs_t *s, struct handle *h, struct buf *tx, uint32_t *count)
{
    struct stat st;
    int r;

    for (; h->next < s->nroots && *count < SFS_READDIR_BATCH; h->next++) {
        root_stat(s, h->next, &st);
        if ((r = put_entry(tx, s->roots[h->next].name, &st)) != 0)
            return r;
        (*count)++;
    }
    return 0;
}

static int do_readdir(struct req *q)
{
    struct handle *h;
    uint32_t count = 0;
    size_t mark, count_mark;
    int r;

    if ((r = get_handle(q, (1u << H_DIR) | (1u << H_TOP), &h)) != 0)
        return r;
    if ((r = sfc_put_begin(q->tx, SFC_NAME, q->id, &mark)) != 0)
        return r;
    count_mark = buf_avail(q->tx);
    if ((r = buf_put_u32(q->tx, 0)) != 0)
        return r;
    r = h->kind == H_TOP ? list_top(q->s, h, q->tx, &count)
                         : list_dir(root_of(q->s, h->root), h, q->tx, &count);
    if (r != 0)
        return r;
    if (count == 0)
        return -ENODATA;
    buf_poke_u32(q->tx, q->tx->off + count_mark, count);
    sfc_put_end(q->tx, mark);
    return 0;
}

/* REMOVE and RMDIR: one path, removed beneath its root by 'rm'. */
static int remove_path(struct req *q, int (*rm)(cf_root_t *, const char *))
{
    struct vpath v;
    int r;

    if ((r = get_path(q, &v)) != 0)
        return r;
    if (v.kind == V_NOROOT)
        return -ENOENT;
    if ((r = need_inside(&v)) != 0 || (r = rm(root_of(q->s, v.root), v.rel)) != 0)
        return r;
    changed(q->s, v.root, v.rel);
    return reply_status(q, 0);
}

static int do_remove(struct req *q)
{
    return remove_path(q, cf_unlink);
}

static int do_mkdir(struct req *q)
{
    struct tun_sftp_attr a;
    struct vpath v;
    mode_t mode;
    int r;

    if ((r = get_path(q, &v)) != 0 || (r = sfc_get_attr(q->in, &a)) != 0)
        return r;
    if (v.kind == V_ROOT)
        return cf_root_readonly(root_of(q->s, v.root)) ? -EROFS : -EEXIST;
    if ((r = need_inside(&v)) != 0)
        return r;
    mode = (a.flags & TUN_SFTP_ATTR_PERMISSIONS) ? (a.perm & 07777) : 0777;
    if ((r = cf_mkdir(root_of(q->s, v.root), v.rel, mode)) != 0)
        return r;
    changed(q->s, v.root, v.rel);
    return reply_status(q, 0);
}

static int do_rmdir(struct req *q)
{
    return remove_path(q, cf_rmdir);
}

static int do_realpath(struct req *q)
{
    char out[PATH_MAX + NAME_MAX + 2];
    struct vpath v;
    int r;

    if ((r = get_path(q, &v)) != 0)
        return r;
    if (v.kind == V_NOROOT)
        return -ENOENT;
    if (v.kind == V_TOP)
        strcpy(out, "/");
    else if (v.kind == V_ROOT)
        snprintf(out, sizeof(out), "/%s", q->s->roots[v.root].name);
    else
        snprintf(out, sizeof(out), "/%s/%s", q->s->roots[v.root].name, v.rel);
    return reply_one_name(q, out);
}

static int rename_common(struct req *q, unsigned flags)
{
    struct vpath from, to;
    int r;

    if ((r = get_path_pair(q, &from, &to)) != 0 ||
        (r = cf_rename(root_of(q->s, from.root), from.rel, to.rel, flags)) != 0)
        return r;
    changed(q->s, from.root, from.rel);
    changed(q->s, to.root, to.rel);
    return reply_status(q, 0);
}

static int do_rename(struct req *q)
{
    return rename_common(q, RENAME_NOREPLACE);
}

static int do_readlink(struct req *q)
{
    char target[PATH_MAX];
    struct vpath v;
    int r;

    if ((r = get_path(q, &v)) != 0)
        return r;
    if ((r = need_root(&v, -EINVAL)) != 0)
        return r;
    if ((r = cf_readlink(root_of(q->s, v.root), v.rel, target, sizeof(target))) < 0)
        return r;
    return reply_one_name(q, target);
}

static int do_symlink(struct req *q)
{
    char target[PATH_MAX];
    const uint8_t *p;
    struct vpath v;
    uint32_t n;
    int r;

    /* OpenSSH's order, the reverse of the draft's: the target, then the new link */
    if ((r = buf_get_string(q->in, &p, &n)) != 0 || (r = get_path(q, &v)) != 0)
        return r;
    if (n >= sizeof(target))
        return -ENAMETOOLONG;
    if (memchr(p, '\0', n))
        return -EINVAL;
    memcpy(target, p, n);
    target[n] = '\0';
    if ((r = need_inside(&v)) != 0 || (r = cf_symlink(root_of(q->s, v.root), target, v.rel)) != 0)
        return r;
    changed(q->s, v.root, v.rel);
    return reply_status(q, 0);
}

/* ---- extensions ---- */

/* An EXTENDED_REPLY of n u64 values (statvfs, limits, fstat-id). */
static int reply_u64s(struct req *q, const uint64_t *v, size_t n)
{
    size_t mark;
    int r;

    if ((r = sfc_put_begin(q->tx, SFC_EXTENDED_REPLY, q->id, &mark)) != 0)
        return r;
    for (size_t i = 0; i < n; i++)
        if ((r = buf_put_u64(q->tx, v[i])) != 0)
            return r;
    sfc_put_end(q->tx, mark);
    return 0;
}

static int put_statvfs(struct req *q, int fd, cf_root_t *root)
{
    struct statvfs sv;
    uint64_t flag;

    if (fstatvfs(fd, &sv) != 0)
        return -errno;
    flag = (sv.f_flag & ST_RDONLY) || cf_root_readonly(root) ? STATVFS_RDONLY : 0;
    flag |= (sv.f_flag & ST_NOSUID) ? STATVFS_NOSUID : 0;
    uint64_t v[] = {sv.f_bsize, sv.f_frsize, sv.f_blocks, sv.f_bfree, sv.f_bavail, sv.f_files,
                    sv.f_ffree, sv.f_favail, sv.f_fsid,   flag,       sv.f_namemax};
    return reply_u64s(q, v, sizeof(v) / sizeof(v[0]));
}

static int ext_statvfs(struct req *q)
{
    struct vpath v;
    cf_root_t *root;
    int fd, r;

    if ((r = get_path(q, &v)) != 0 || (r = need_root(&v, 0)) != 0)
        return r;
    if (v.kind == V_TOP)
        v.root = 0; /* the top reports the first root's file system */
    root = root_of(q->s, v.root);
    if ((r = cf_openat(root, v.rel, O_PATH, 0, &fd)) != 0)
        return r;
    r = put_statvfs(q, fd, root);
    close(fd);
    return r;
}

static int ext_fstatvfs(struct req *q)
{
    struct handle *h;
    cf_root_t *root;
    int fd, r;

    if ((r = get_handle(q, ANY_HANDLE, &h)) != 0)
        return r;
    if (h->kind != H_TOP)
        return put_statvfs(q, handle_fd(h), root_of(q->s, h->root));
    root = root_of(q->s, 0);
    if ((r = cf_openat(root, ".", O_PATH, 0, &fd)) != 0)
        return r;
    r = put_statvfs(q, fd, root);
    close(fd);
    return r;
}

static int ext_posix_rename(struct req *q)
{
    return rename_common(q, 0);
}

static int ext_hardlink(struct req *q)
{
    struct vpath from, to;
    int r;

    if ((r = get_path_pair(q, &from, &to)) != 0 ||
        (r = cf_link(root_of(q->s, from.root), from.rel, to.rel)) != 0)
        return r;
    changed(q->s, to.root, to.rel);
    return reply_status(q, 0);
}

static int ext_fsync(struct req *q)
{
    struct handle *h;
    int r;

    if ((r = get_handle(q, (1u << H_FILE) | (1u << H_DIR), &h)) != 0)
        return r;
    return reply_status(q, fsync(handle_fd(h)) == 0 ? 0 : -errno);
}

static int ext_limits(struct req *q)
{
    const uint64_t v[] = {SFS_PACKET_MAX, SFS_READ_MAX, SFS_READ_MAX, SFS_HANDLES_MAX};

    return reply_u64s(q, v, sizeof(v) / sizeof(v[0]));
}

static int ext_lsetstat(struct req *q)
{
    return setstat_common(q);
}

/* fstat-id@offload: the identity of an open file, which SFTP v3 attributes cannot tell (no inode,
 * whole seconds): u64 dev, u64 ino, u64 size, u64 mtime in ns. A mount checks a fetch with it:
 * bytes read from another file than the one its index row describes are never stored. */
static int ext_fstat_id(struct req *q)
{
    struct handle *h;
    struct stat st;
    int r;

    if ((r = get_handle(q, 1u << H_FILE, &h)) != 0)
        return r;
    if (fstat(handle_fd(h), &st) != 0)
        return -errno;
    uint64_t v[] = {st.st_dev, st.st_ino, (uint64_t)st.st_size,
                    (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec};
    return reply_u64s(q, v, sizeof(v) / sizeof(v[0]));
}

/* client-id@offload: u64 id. The client names itself (a random id of its own) so that the
 * change hook can tell which client made a change: a change feed then tells that client's mount
 * its own writes from everyone else's (docs/feed.md). 0 is refused. */
static int ext_client_id(struct req *q)
{
    uint64_t id;
    int r;

    if ((r = buf_get_u64(q->in, &id)) != 0)
        return r;
    if (id == 0)
        return -EINVAL;
    q->s->client = id;
    return reply_status(q, 0);
}

/* Announced in VERSION in this order, and looked up by name for EXTENDED. */
static const struct extension {
    const char *name, *version;
    req_fn fn;
} extensions[] = {
    {"posix-rename@openssh.com", "1", ext_posix_rename},
    {"statvfs@openssh.com", "2", ext_statvfs},
    {"fstatvfs@openssh.com", "2", ext_fstatvfs},
    {"hardlink@openssh.com", "1", ext_hardlink},
    {"fsync@openssh.com", "1", ext_fsync},
    {"limits@openssh.com", "1", ext_limits},
    {"lsetstat@openssh.com", "1", ext_lsetstat},
    {"fstat-id@offload", "1", ext_fstat_id},
    {"client-id@offload", "1", ext_client_id},
};

static int do_extended(struct req *q)
{
    const uint8_t *p;
    uint32_t n;
    int r;

    if ((r = buf_get_string(q->in, &p, &n)) != 0)
        return r;
    for (size_t i = 0; i < sizeof(extensions) / sizeof(extensions[0]); i++)
        if (strlen(extensions[i].name) == n && memcmp(extensions[i].name, p, n) == 0)
            return extensions[i].fn(q);
    return -EOPNOTSUPP;
}

/* Request handlers by packet type; a type without one is OP_UNSUPPORTED. */
static const req_fn handlers[256] = {
    [SFC_OPEN] = do_open,         [SFC_CLOSE] = do_close,       [SFC_READ] = do_read,
    [SFC_WRITE] = do_write,       [SFC_LSTAT] = do_lstat,       [SFC_FSTAT] = do_fstat,
    [SFC_SETSTAT] = do_setstat,   [SFC_FSETSTAT] = do_fsetstat, [SFC_OPENDIR] = do_opendir,
    [SFC_READDIR] = do_readdir,   [SFC_REMOVE] = do_remove,     [SFC_MKDIR] = do_mkdir,
    [SFC_RMDIR] = do_rmdir,       [SFC_REALPATH] = do_realpath, [SFC_STAT] = do_stat,
    [SFC_RENAME] = do_rename,     [SFC_READLINK] = do_readlink, [SFC_SYMLINK] = do_symlink,
    [SFC_EXTENDED] = do_extended,
};

/* Carry out one request and queue its reply: the handler's own, or a STATUS for what it
 * returned. Only a failure to queue any reply at all is returned. */
static int dispatch(sfs_t *s, uint8_t type, uint32_t id, struct buf *payload, struct buf *tx)
{
    struct req q = {.s = s, .id = id, .in = payload, .tx = tx};
    size_t mark = buf_avail(tx);
    int r;
    /* the requests that may change something: the hook hears of them before they start, so
     * that it can tell a change it has not been told of yet is on the way */
    bool may_change = s->change && (type == SFC_OPEN || type == SFC_WRITE || type == SFC_SETSTAT ||
                                    type == SFC_FSETSTAT || type == SFC_REMOVE ||
                                    type == SFC_MKDIR || type == SFC_RMDIR || type == SFC_RENAME ||
                                    type == SFC_SYMLINK || type == SFC_EXTENDED);

    uint64_t client = s->client; /* END pairs with BEGIN, also when the request names us */

    if (may_change)
        s->change(s->change_arg, client, SFS_BEGIN, 0, NULL, NULL);
    r = handlers[type] ? handlers[type](&q) : -EOPNOTSUPP;
    if (may_change)
        s->change(s->change_arg, client, SFS_END, 0, NULL, NULL);
    if (r == 0)
        return 0;
    sfc_put_cancel(tx, mark); /* whatever the handler had begun */
    return reply_status(&q, r);
}

static int reply_version(struct buf *tx)
{
    size_t mark;
    int r;

    if ((r = sfc_put_begin(tx, SFC_VERSION, 0, &mark)) != 0 ||
        (r = buf_put_u32(tx, SFTP_VERSION)) != 0)
        return r;
    for (size_t i = 0; i < sizeof(extensions) / sizeof(extensions[0]); i++)
        if ((r = buf_put_cstring(tx, extensions[i].name)) != 0 ||
            (r = buf_put_cstring(tx, extensions[i].version)) != 0) {
            sfc_put_cancel(tx, mark);
            return r;
        }
    sfc_put_end(tx, mark);
    return 0;
}

int sfs_process(sfs_t *s, struct buf *rx, struct buf *tx)
{
    struct buf payload;
    uint8_t type;
    uint32_t id;
    int r;

    if (s->dead)
        return s->dead;
    if (tx->max < SFS_REPLY_MAX)
        return -EINVAL;
    for (;;) {
        if (tx->max - buf_avail(tx) < SFS_REPLY_MAX)
            return 0; /* the caller sends tx first */
        r = sfc_get_packet(rx, SFS_PACKET_MAX, &type, &id, &payload);
        if (r == -EAGAIN)
            return 0;
        if (r != 0)
            break;
        if (!s->inited) {
            if (type != SFC_INIT) {
                r = -EBADMSG;
                break;
            }
            /* INIT has no request id: what sfc_get_packet took for one is the client's version;
             * whatever it is, we offer 3 and the client decides */
            if ((r = reply_version(tx)) != 0)
                break;
            s->inited = true;
            continue;
        }
        if (type == SFC_INIT || type == SFC_VERSION) {
            r = -EBADMSG;
            break;
        }
        if ((r = dispatch(s, type, id, &payload, tx)) != 0)
            break;
    }
    s->dead = r == -EBADMSG ? -EBADMSG : -ENOMEM;
    return s->dead;
}

/* ---- life ---- */

static bool name_ok(const char *n)
{
    size_t len = n ? strnlen(n, NAME_MAX + 1) : 0;

    return len > 0 && len <= NAME_MAX && !strchr(n, '/') && strcmp(n, ".") != 0 &&
           strcmp(n, "..") != 0;
}

int sfs_new(const struct sfs_root *roots, size_t nroots, sfs_t **out)
{
    sfs_t *s;

    if (nroots == 0)
        return -EINVAL;
    for (size_t i = 0; i < nroots; i++) {
        if (!roots[i].root || !name_ok(roots[i].name))
            return -EINVAL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(roots[i].name, roots[j].name) == 0)
                return -EINVAL;
    }
    if (!(s = calloc(1, sizeof(*s))) || !(s->roots = calloc(nroots, sizeof(*s->roots)))) {
        free(s);
        return -ENOMEM;
    }
    for (size_t i = 0; i < nroots; i++) {
        s->roots[i].root = roots[i].root;
        if (!(s->roots[i].name = strdup(roots[i].name))) {
            s->nroots = i;
            sfs_free(s);
            return -ENOMEM;
        }
    }
    s->nroots = nroots;
    s->started = time(NULL);
    for (size_t i = 0; i < SFS_HANDLES_MAX; i++)
        s->handles[i].fd = -1;
    *out = s;
    return 0;
}

void sfs_set_change_hook(sfs_t *s, sfs_change_fn fn, void *arg)
{
    s->change = fn;
    s->change_arg = arg;
}

void sfs_free(sfs_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < SFS_HANDLES_MAX; i++)
        if (s->handles[i].kind != H_FREE)
            handle_close(&s->handles[i]);
    for (size_t i = 0; i < s->nroots; i++)
        free((char *)s->roots[i].name);
    free(s->roots);
    free(s);
}
