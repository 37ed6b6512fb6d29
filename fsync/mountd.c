/* mountd.c - the lazy read-only FUSE filesystem over SFTP; see mount.h and docs/architecture.md.
 *
 * Threads: libfuse's workers run the request handlers; the SFTP owner thread runs the fetch
 * completions (fetch_read_done, fetch_attr_done); the flusher thread writes block rows to the
 * index in batches and evicts; the invalidation thread tells the kernel about changed inodes.
 *
 * Lock order: m->of_lock, then of->lock, then the index's own mutex. Callbacks run under the
 * index mutex (idx_children, idx_delete's gone) never call the index.
 */
#include "mount.h"
#include "mountd_int.h"

#include "blockcache.h"
#include "deadline.h"
#include "index.h"
#include "stats.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int64_t md_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void md_log(struct mountd *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void md_log(struct mountd *m, const char *fmt, ...)
{
    va_list ap;
    (void)m;
    va_start(ap, fmt);
    fputs("offload mountd: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- background queues ---- */

void md_queue_inval(struct mountd *m, fuse_ino_t ino)
{
    pthread_mutex_lock(&m->bg_lock);
    if (m->n_inval == m->cap_inval) {
        size_t cap = m->cap_inval ? m->cap_inval * 2 : 64;
        fuse_ino_t *n = realloc(m->inval, cap * sizeof(*n));
        if (n == NULL) {
            pthread_mutex_unlock(&m->bg_lock);
            return;
        }
        m->inval = n;
        m->cap_inval = cap;
    }
    m->inval[m->n_inval++] = ino;
    if (m->n_inval == 1 && m->n_inval_ent == 0)
        pthread_cond_signal(&m->inval_cond); /* else it is awake already, draining */
    pthread_mutex_unlock(&m->bg_lock);
}

void md_queue_inval_entry(struct mountd *m, fuse_ino_t parent, const char *name)
{
    pthread_mutex_lock(&m->bg_lock);
    if (m->n_inval_ent == m->cap_inval_ent) {
        size_t cap = m->cap_inval_ent ? m->cap_inval_ent * 2 : 64;
        struct inval_ent *n = realloc(m->inval_ent, cap * sizeof(*n));
        if (n == NULL) {
            pthread_mutex_unlock(&m->bg_lock);
            return;
        }
        m->inval_ent = n;
        m->cap_inval_ent = cap;
    }
    m->inval_ent[m->n_inval_ent].parent = parent;
    snprintf(m->inval_ent[m->n_inval_ent].name, sizeof(m->inval_ent[0].name), "%s", name);
    m->n_inval_ent++;
    if (m->n_inval_ent == 1 && m->n_inval == 0)
        pthread_cond_signal(&m->inval_cond);
    pthread_mutex_unlock(&m->bg_lock);
}

static void queue_touch(struct mountd *m, int64_t id)
{
    pthread_mutex_lock(&m->bg_lock);
    if (m->n_touch == m->cap_touch) {
        size_t cap = m->cap_touch ? m->cap_touch * 2 : 64;
        int64_t *n = realloc(m->touch, cap * sizeof(*n));
        if (n == NULL) {
            pthread_mutex_unlock(&m->bg_lock);
            return; /* LRU order is a hint; losing one touch is harmless */
        }
        m->touch = n;
        m->cap_touch = cap;
    }
    m->touch[m->n_touch++] = id;
    pthread_mutex_unlock(&m->bg_lock);
}

static void queue_block(struct mountd *m, const struct idx_block *b)
{
    pthread_mutex_lock(&m->bg_lock);
    if (m->n_pend == m->cap_pend) {
        size_t cap = m->cap_pend ? m->cap_pend * 2 : 256;
        struct idx_block *n = realloc(m->pend, cap * sizeof(*n));
        if (n == NULL) {
            pthread_mutex_unlock(&m->bg_lock);
            return; /* the block stays uncached in the index: refetched later, never wrong */
        }
        m->pend = n;
        m->cap_pend = cap;
    }
    m->pend[m->n_pend++] = *b;
    pthread_mutex_unlock(&m->bg_lock);
}

static void evicted_cb(void *arg, const struct idx_block *b)
{
    struct mountd *m = arg;
    fs_cache_punch(m->cache_dir, b->file, b->version, b->blkno * FS_BLOCK_SIZE, FS_BLOCK_SIZE);
}

static void flush_blocks(struct mountd *m)
{
    struct idx_block *p;
    size_t n;

    int64_t *t;
    size_t nt;

    pthread_mutex_lock(&m->bg_lock);
    p = m->pend;
    n = m->n_pend;
    m->pend = NULL;
    m->n_pend = m->cap_pend = 0;
    t = m->touch;
    nt = m->n_touch;
    m->touch = NULL;
    m->n_touch = m->cap_touch = 0;
    pthread_mutex_unlock(&m->bg_lock);
    if (n || nt) {
        idx_begin(m->idx);
        for (size_t i = 0; i < n; i++)
            /* -ESTALE: the file moved on, drop the row */
            if (idx_block_put(m->idx, &p[i]) == 0 && m->fm &&
                (i == 0 || p[i].file != p[i - 1].file))
                fm_hold(m, p[i].file);
        for (size_t i = 0; i < nt; i++)
            if (i == 0 || t[i] != t[i - 1])
                idx_blocks_touch(m->idx, t[i]);
        idx_commit(m->idx);
    }
    free(p);
    free(t);
    if (idx_cached_bytes(m->idx) > m->budget)
        idx_evict(m->idx, m->budget / 10 * 9, evicted_cb, m);
}

static void *flusher_main(void *arg)
{
    struct mountd *m = arg;
    bool stop = false;

    while (!stop) {
        struct timespec ts = deadline_ms(CLOCK_REALTIME, 200);
        pthread_mutex_lock(&m->bg_lock);
        if (!m->stopping)
            pthread_cond_timedwait(&m->bg_cond, &m->bg_lock, &ts);
        stop = m->stopping;
        pthread_mutex_unlock(&m->bg_lock);
        flush_blocks(m);
    }
    return NULL;
}

static void *invalidator_main(void *arg)
{
    struct mountd *m = arg;

    pthread_mutex_lock(&m->bg_lock);
    while (!m->stopping) {
        if (m->n_inval_ent) {
            /* names first, in the order they were queued */
            struct inval_ent e = m->inval_ent[0];
            memmove(m->inval_ent, m->inval_ent + 1, --m->n_inval_ent * sizeof(e));
            pthread_mutex_unlock(&m->bg_lock);
            if (m->se)
                fuse_lowlevel_notify_inval_entry(m->se, e.parent, e.name, strlen(e.name));
            pthread_mutex_lock(&m->bg_lock);
            continue;
        }
        if (m->n_inval == 0) {
            pthread_cond_wait(&m->inval_cond, &m->bg_lock);
            continue;
        }
        fuse_ino_t ino = m->inval[--m->n_inval];
        pthread_mutex_unlock(&m->bg_lock);
        if (m->se)
            fuse_lowlevel_notify_inval_inode(m->se, ino, 0, 0);
        pthread_mutex_lock(&m->bg_lock);
    }
    pthread_mutex_unlock(&m->bg_lock);
    return NULL;
}

/* ---- metadata ---- */

void md_gone_cb(void *arg, int64_t id, uint64_t version)
{
    struct mountd *m = arg;
    fs_cache_remove(m->cache_dir, id, version);
}

/* The server path of row id, or -ENOENT if a row on the way is gone. */
int md_node_path(struct mountd *m, int64_t id, char *out, size_t len)
{
    char rel[PATH_MAX];
    int r = idx_path(m->idx, id, rel, sizeof(rel));
    if (r != 0)
        return r;
    if (strcmp(m->root, "/") == 0)
        r = snprintf(out, len, "%s", rel[0] ? rel : "/");
    else
        r = snprintf(out, len, "%s%s", m->root, rel);
    return (size_t)r >= len ? -ENAMETOOLONG : 0;
}

static void attr_to_file(const struct tun_sftp_attr *a, int64_t now, struct idx_file *f)
{
    f->mode = a->perm;
    f->uid = a->uid;
    f->gid = a->gid;
    f->size = a->size;
    f->atime_ns = (int64_t)a->atime * 1000000000;
    f->mtime_ns = (int64_t)a->mtime * 1000000000;
    f->ctime_ns = f->mtime_ns;
    f->nlink = S_ISDIR(a->perm) ? 2 : 1;
    f->dev = 0;
    f->ino = 0;
    f->attr_time_ns = now;
    f->list_time_ns = 0;
}

/* Record fresh metadata; when the content identity changed, drop the cached bytes of the old
 * version and have the kernel forget its pages. */
static int meta_put(struct mountd *m, struct idx_file *f)
{
    struct idx_file old;
    bool had = idx_lookup(m->idx, f->parent, f->name, &old) == 0;
    if (had && old.attr_time_ns > f->attr_time_ns) {
        /* confirmed since this was observed (the feed's snapshot, a newer listing): the newer
         * word stands. Taking the older one would also set the row's confirmation time back
         * below a snapshot's stamp, and the snapshot's end prunes what it did not confirm
         * since its start: a listing begun before a snapshot and recorded after the snapshot
         * had sent a folder deleted that folder here, for good with a live feed. */
        *f = old;
        return 0;
    }
    /* SFTP v3 times are whole seconds: a row that knows the nanoseconds (written here) keeps
     * them, and with them its version and cached bytes, when the second and size agree */
    bool same = had && (old.mode & S_IFMT) == (f->mode & S_IFMT) && old.size == f->size;
    if (same && f->mtime_ns % 1000000000 == 0 &&
        old.mtime_ns / 1000000000 == f->mtime_ns / 1000000000)
        f->mtime_ns = old.mtime_ns;
    /* a file written back from here: the server's mtime is when our bytes landed, which may be
     * a second or two after ours; within that, the content is still ours and so is the version */
    if (same && S_ISREG(old.mode) && f->mtime_ns != old.mtime_ns) {
        int64_t wb = md_written_back_at(m, old.id); /* a ring scan: only when the mtime moved */
        if (wb && llabs(f->mtime_ns - wb) <= 2000000000LL)
            return idx_put_keep_version(m->idx, f);
    }
    int r = idx_put(m->idx, f);

    if (r == 1) {
        if (had)
            fs_cache_remove(m->cache_dir, old.id, old.version);
        md_queue_inval(m, (fuse_ino_t)f->id);
        r = 0;
    }
    return r;
}

/* Metadata confirmed by the server during this mount, less than the TTL ago. What earlier
 * mounts saw is kept (served when the server cannot be asked) but never fresh. */
static bool fresh(struct mountd *m, int64_t t)
{
    if (atomic_load(&m->feed_live) && t >= atomic_load(&m->feed_epoch_ns))
        return true; /* applied from the live feed: every later change arrives the same way */
    return t >= m->epoch_ns && md_wall_ns() - t < m->ttl_ns;
}

/* A failure to ask the server (not an answer from it): expired metadata may then be served. */
static bool link_error(int r)
{
    return r == -EIO || r == -ESTALE || r == -ESHUTDOWN || r == -ETIMEDOUT || r == -EPROTO;
}

static int refresh_dir(struct mountd *m, int64_t dir, int depth);

/* Ask the server for (parent, name) and record it. -ENOENT removes the row. */
static int fetch_entry(struct mountd *m, int64_t parent, const char *name, struct idx_file *out)
{
    char path[PATH_MAX];
    struct tun_sftp_attr a;
    struct idx_file f;
    int r;

    /* A parent listed before, now expired: one listing refreshes every sibling (a walk then
     * pays a round trip per folder, not per entry); only a never-listed parent is asked about
     * the one name. */
    struct idx_file p;
    if (idx_get(m->idx, parent, &p) == 0 && p.list_time_ns != 0 && !fresh(m, p.list_time_ns) &&
        refresh_dir(m, parent, PF_DEPTH + 1) == 0 && idx_get(m->idx, parent, &p) == 0 &&
        fresh(m, p.list_time_ns))
        return idx_lookup(m->idx, parent, name, out);
    if ((r = md_node_path(m, parent, path, sizeof(path))) != 0)
        return r;
    if (strlen(path) + strlen(name) + 2 > sizeof(path))
        return -ENAMETOOLONG;
    if (strcmp(path, "/") != 0)
        strcat(path, "/");
    strcat(path, name);
    FS_STAT_ADD(&m->st, meta_fetches, 1);
    r = tun_sftp_lstat(m->sftp, path, &a);
    if (r == -ENOENT) {
        if (idx_lookup(m->idx, parent, name, &f) == 0)
            idx_delete(m->idx, f.row, md_gone_cb, m);
        return -ENOENT;
    }
    if (r != 0)
        return r;
    memset(&f, 0, sizeof(f));
    f.parent = parent;
    snprintf(f.name, sizeof(f.name), "%s", name);
    attr_to_file(&a, md_wall_ns(), &f);
    if ((r = meta_put(m, &f)) != 0)
        return r;
    *out = f;
    return 0;
}

/* Current metadata of row id, asking the server if the cached copy is older than the TTL. */
static int get_fresh(struct mountd *m, int64_t id, struct idx_file *out)
{
    struct idx_file f;
    int r;

    if ((r = idx_get(m->idx, id, &f)) != 0)
        return r;
    if (fresh(m, f.attr_time_ns) || !tun_sftp_connected(m->sftp)) {
        /* without a link, what the index knows is the best answer (cached files stay
         * readable); the kernel is told to ask again soon */
        if (!fresh(m, f.attr_time_ns))
            FS_STAT_ADD(&m->st, stale_served, 1);
        *out = f;
        return 0;
    }
    if (id == IDX_ROOT_ID) {
        struct tun_sftp_attr a;
        FS_STAT_ADD(&m->st, meta_fetches, 1);
        if ((r = tun_sftp_stat(m->sftp, m->root, &a)) == 0) {
            attr_to_file(&a, md_wall_ns(), &f);
            r = meta_put(m, &f);
        }
    } else {
        struct idx_file cached = f;
        r = fetch_entry(m, f.parent, f.name, &f);
        if (r != 0)
            f = cached;
    }
    if (link_error(r)) {
        FS_STAT_ADD(&m->st, stale_served, 1);
        r = 0;
    }
    if (r == 0)
        *out = f;
    return r;
}

static void file_to_stat(const struct idx_file *f, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_ino = (ino_t)f->id;
    st->st_mode = f->mode;
    st->st_nlink = f->nlink ? f->nlink : 1;
    st->st_uid = f->uid;
    st->st_gid = f->gid;
    st->st_size = (off_t)f->size;
    st->st_blksize = FS_BLOCK_SIZE;
    st->st_blocks = (blkcnt_t)((f->size + 511) / 512);
    st->st_atim.tv_sec = f->atime_ns / 1000000000;
    st->st_atim.tv_nsec = f->atime_ns % 1000000000;
    st->st_mtim.tv_sec = f->mtime_ns / 1000000000;
    st->st_mtim.tv_nsec = f->mtime_ns % 1000000000;
    st->st_ctim.tv_sec = f->ctime_ns / 1000000000;
    st->st_ctim.tv_nsec = f->ctime_ns % 1000000000;
}

/* How long the kernel may keep entries and attributes: long while the feed is live (changes are
 * pushed and invalidated explicitly), the metadata TTL otherwise. */
static double kernel_ttl(struct mountd *m)
{
    return atomic_load(&m->feed_live) ? FEED_KERNEL_TTL : m->ttl_s;
}

static void fill_entry(struct mountd *m, const struct idx_file *f, struct fuse_entry_param *e)
{
    memset(e, 0, sizeof(*e));
    e->ino = (fuse_ino_t)f->id;
    e->generation = 1;
    file_to_stat(f, &e->attr);
    e->attr_timeout = kernel_ttl(m);
    e->entry_timeout = kernel_ttl(m);
}

static int reply_err(fuse_req_t req, int negerr)
{
    /* every network failure reaches the caller as EIO; the rest as themselves */
    int e = -negerr;
    if (e == ESTALE || e == ESHUTDOWN || e == ETIMEDOUT || e == EPROTO || e == EBADMSG)
        e = EIO;
    return fuse_reply_err(req, e);
}

/* Refresh the listing of directory 'dir' from the server if it is older than the TTL. The
 * entries are gathered in memory first, so the index's write lock is not held across round
 * trips, then recorded in one batch. */
struct list_ctx {
    int64_t dir, start;
    struct idx_file *v;
    size_t n, cap;
};

static int list_each(void *arg, const char *name, const struct tun_sftp_attr *a)
{
    struct list_ctx *c = arg;
    struct idx_file *f;

    if (strlen(name) > IDX_NAME_MAX || strchr(name, '/') != NULL)
        return 0; /* not representable: skip, never fail the listing */
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        struct idx_file *v = realloc(c->v, cap * sizeof(*v));
        if (v == NULL)
            return -ENOMEM;
        c->v = v;
        c->cap = cap;
    }
    f = &c->v[c->n++];
    memset(f, 0, sizeof(*f));
    f->parent = c->dir;
    snprintf(f->name, sizeof(f->name), "%s", name);
    attr_to_file(a, c->start, f);
    return 0;
}

static void queue_prefetch(struct mountd *m, const struct list_ctx *c, int depth)
{
    if (depth <= 0)
        return;
    pthread_mutex_lock(&m->bg_lock);
    for (size_t i = 0; i < c->n && m->n_pf < PF_QUEUE_MAX; i++) {
        if (!S_ISDIR(c->v[i].mode) || c->v[i].id == 0)
            continue;
        if (m->n_pf == m->cap_pf) {
            size_t cap = m->cap_pf ? m->cap_pf * 2 : 256;
            struct pf_item *n = realloc(m->pf, cap * sizeof(*n));
            if (n == NULL)
                break;
            m->pf = n;
            m->cap_pf = cap;
        }
        m->pf[m->n_pf].dir = c->v[i].id;
        m->pf[m->n_pf].depth = depth;
        m->n_pf++;
    }
    pthread_cond_broadcast(&m->pf_cond);
    pthread_mutex_unlock(&m->bg_lock);
}

static int refresh_dir_once(struct mountd *m, int64_t dir, int depth);

/* Refresh a listing, never twice at once: a second caller waits for the first. */
static int refresh_dir(struct mountd *m, int64_t dir, int depth)
{
    int r, i;

    pthread_mutex_lock(&m->bg_lock);
    for (;;) {
        for (i = 0; i < m->n_listing; i++)
            if (m->listing[i] == dir)
                break;
        if (i == m->n_listing && m->n_listing < (int)(sizeof(m->listing) / sizeof(m->listing[0])))
            break;
        pthread_cond_wait(&m->list_cond, &m->bg_lock);
    }
    m->listing[m->n_listing++] = dir;
    pthread_mutex_unlock(&m->bg_lock);

    r = refresh_dir_once(m, dir, depth);

    pthread_mutex_lock(&m->bg_lock);
    for (i = 0; i < m->n_listing; i++)
        if (m->listing[i] == dir) {
            m->listing[i] = m->listing[--m->n_listing];
            break;
        }
    pthread_cond_broadcast(&m->list_cond);
    pthread_mutex_unlock(&m->bg_lock);
    return r;
}

static void prefetch_file(struct mountd *m, int64_t id);

static void *prefetch_main(void *arg)
{
    struct mountd *m = arg;

    pthread_mutex_lock(&m->bg_lock);
    while (!m->stopping) {
        if (m->pf_head < m->n_pf_files) {
            /* files first: a reader is in their folder right now */
            int64_t id = m->pf_files[m->pf_head++];
            if (m->pf_head == m->n_pf_files)
                m->pf_head = m->n_pf_files = 0;
            pthread_mutex_unlock(&m->bg_lock);
            if (tun_sftp_connected(m->sftp))
                prefetch_file(m, id);
            pthread_mutex_lock(&m->bg_lock);
            continue;
        }
        if (m->n_pf == 0) {
            pthread_cond_wait(&m->pf_cond, &m->bg_lock);
            continue;
        }
        struct pf_item it = m->pf[--m->n_pf]; /* newest first: near what was just read */
        pthread_mutex_unlock(&m->bg_lock);
        if (tun_sftp_connected(m->sftp))
            refresh_dir(m, it.dir, it.depth);
        pthread_mutex_lock(&m->bg_lock);
    }
    pthread_mutex_unlock(&m->bg_lock);
    return NULL;
}

/* Children of 'dir' written back since 'since' may be missing from a listing taken while their
 * write-back was on the way: mark them seen at 'stamp' so the prune keeps them. (Children still
 * journaled are kept by the index itself.) */
static void keep_written_back(struct mountd *m, int64_t dir, int64_t since, int64_t stamp)
{
    int64_t *ids;
    struct idx_file f;
    size_t n = md_written_back_since(m, since, &ids);
    for (size_t i = 0; i < n; i++)
        if (idx_get(m->idx, ids[i], &f) == 0 && f.parent == dir && f.attr_time_ns < stamp)
            idx_touch_attr(m->idx, f.id, stamp);
    free(ids);
}

static int refresh_dir_once(struct mountd *m, int64_t dir, int depth)
{
    char path[PATH_MAX];
    struct idx_file f;
    struct list_ctx c = {.dir = dir};
    int r;

    if ((r = idx_get(m->idx, dir, &f)) != 0)
        return r;
    if (!S_ISDIR(f.mode))
        return -ENOTDIR;
    if (fresh(m, f.list_time_ns))
        return 0;
    if (f.list_time_ns != 0 && !tun_sftp_connected(m->sftp)) {
        FS_STAT_ADD(&m->st, stale_served, 1);
        return 0; /* an older listing is the best answer without a link */
    }
    if ((r = md_node_path(m, dir, path, sizeof(path))) != 0)
        return r;
    c.start = md_wall_ns();
    FS_STAT_ADD(&m->st, meta_fetches, 1);
    r = tun_sftp_listdir(m->sftp, path, list_each, &c);
    if (r == 0) {
        idx_begin(m->idx);
        for (size_t i = 0; i < c.n && r == 0; i++)
            r = meta_put(m, &c.v[i]);
        if (r == 0) {
            keep_written_back(m, dir, c.start - ECHO_WINDOW_NS, c.start);
            r = idx_prune_children(m->idx, dir, c.start, md_gone_cb, m);
        }
        if (r == 0)
            r = idx_set_listed(m->idx, dir, c.start);
        /* never a rollback: the batch belongs to the index connection, and other threads'
         * changes (journal rows among them) may be in it; what was recorded is true anyway */
        int c2 = idx_commit(m->idx);
        if (r == 0)
            r = c2;
        if (r == 0)
            queue_prefetch(m, &c, depth - 1);
    }
    free(c.v);
    if (link_error(r) && f.list_time_ns != 0) {
        FS_STAT_ADD(&m->st, stale_served, 1);
        return 0;
    }
    return r;
}

/* ---- FUSE: metadata ops ---- */

static struct mountd *M(fuse_req_t req)
{
    struct mountd *m = fuse_req_userdata(req);
    FS_STAT_ADD(&m->st, requests, 1);
    return m;
}

/* ---- reflection: laptop changes replayed through the mount, so inotify watchers see them ----
 *
 * Kernel invalidation raises no inotify event (DESIGN invariant 5). After the feed applied a
 * change to the index, the feed thread performs the matching syscall on the mount itself
 * (md_reflect): mknod/mkdir/symlink for a new name, unlink/rmdir, rename, and utimensat plus an
 * open-for-write and close for changed content or metadata. The kernel then emits IN_CREATE,
 * IN_DELETE, IN_MOVED_FROM/TO, IN_ATTRIB and IN_CLOSE_WRITE as for any local change. The handlers
 * recognise the feed thread by the caller's thread id and only acknowledge (the change is
 * already in the index); for everyone else the mount stays read-only (EROFS). An overlay makes
 * the feed thread's own lookups see the name as it was before the change: a created name is
 * hidden (or the kernel would answer EEXIST without asking), a removed or renamed-away name is
 * still there (a ghost of the row), so the syscall reaches mountd. */

static bool from_reflector(struct mountd *m, fuse_req_t req)
{
    pid_t t = atomic_load(&m->rf_tid);
    return t != 0 && fuse_req_ctx(req)->pid == t;
}

/* The overlay's answer for (parent, name): 1 hidden, 2 a ghost in *f, 0 none. */
static int overlay(struct mountd *m, int64_t parent, const char *name, struct idx_file *f)
{
    int r = 0;
    pthread_mutex_lock(&m->rf_lock);
    for (int i = 0; i < m->rf_n && !r; i++)
        if (m->rf_ov[i].parent == parent && strcmp(m->rf_ov[i].name, name) == 0) {
            r = m->rf_ov[i].hide ? 1 : 2;
            *f = m->rf_ov[i].f;
        }
    pthread_mutex_unlock(&m->rf_lock);
    return r;
}

static void ov_set(struct mountd *m, int64_t parent, const char *name, bool hide,
                   const struct idx_file *f)
{
    pthread_mutex_lock(&m->rf_lock);
    if (m->rf_n < 2) {
        struct rf_overlay *o = &m->rf_ov[m->rf_n++];
        o->parent = parent;
        snprintf(o->name, sizeof(o->name), "%s", name);
        o->hide = hide;
        if (f)
            o->f = *f;
    }
    pthread_mutex_unlock(&m->rf_lock);
}

void md_reflect(struct mountd *m, const struct md_reflection *rf)
{
    char p[PATH_MAX * 2], q[PATH_MAX * 2];
    if (!m->reflect || !atomic_load(&m->mounted))
        return;
    atomic_store(&m->rf_tid, gettid());
    snprintf(p, sizeof(p), "%s/%s", m->mountpoint, rf->path);
    snprintf(q, sizeof(q), "%s/%s", m->mountpoint, rf->path2 ? rf->path2 : "");
    if (rf->kind == MD_RF_CREATE || rf->kind == MD_RF_RENAME)
        ov_set(m, rf->hide_parent, rf->hide_name, true, NULL);
    if (rf->kind == MD_RF_DELETE || rf->kind == MD_RF_RENAME)
        ov_set(m, rf->ghost.parent, rf->ghost.name, false, &rf->ghost);
    int r = 0;
    switch (rf->kind) {
    case MD_RF_CREATE:
        if (S_ISDIR(rf->mode))
            r = mkdir(p, 0755);
        else if (S_ISLNK(rf->mode))
            r = symlink(".", p);
        else
            r = mknod(p, S_IFREG | 0644, 0);
        break;
    case MD_RF_DELETE:
        r = S_ISDIR(rf->ghost.mode) ? rmdir(p) : unlink(p);
        break;
    case MD_RF_RENAME:
        r = rename(p, q);
        break;
    case MD_RF_MODIFY:
    case MD_RF_ATTRIB: {
        /* both times omitted would be a no-op without an event: set the mtime it already has */
        struct timespec ts[2] = {
            {.tv_nsec = UTIME_OMIT},
            {.tv_sec = rf->mtime_ns / 1000000000, .tv_nsec = rf->mtime_ns % 1000000000}};
        r = utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW);
        if (rf->kind == MD_RF_MODIFY && S_ISREG(rf->mode)) {
            int fd = open(p, O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
            if (fd >= 0)
                close(fd); /* IN_CLOSE_WRITE, what editors' watchers wait for */
        }
        break;
    }
    }
    if (r != 0 && m->o.debug)
        md_log(m, "reflecting a change of '%s' through the mount: %s", rf->path, strerror(errno));
    pthread_mutex_lock(&m->rf_lock);
    m->rf_n = 0;
    pthread_mutex_unlock(&m->rf_lock);
    FS_STAT_ADD(&m->st, reflected, 1);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct mountd *m = M(req);
    struct fuse_entry_param e;
    struct idx_file p, f;
    int r;

    if (strlen(name) > IDX_NAME_MAX) {
        fuse_reply_err(req, ENAMETOOLONG);
        return;
    }
    if (from_reflector(m, req) && (r = overlay(m, (int64_t)parent, name, &f)) != 0) {
        memset(&e, 0, sizeof(e));
        if (r == 2)
            fill_entry(m, &f, &e);
        e.attr_timeout = e.entry_timeout = 0;
        fuse_reply_entry(req, &e);
        return;
    }
    if ((r = idx_get(m->idx, (int64_t)parent, &p)) != 0) {
        reply_err(req, r == -ENOENT ? -ESTALE : r);
        return;
    }
    r = idx_lookup(m->idx, (int64_t)parent, name, &f);
    if (fresh(m, p.list_time_ns)) {
        /* the listing is fresh: a missing row is a negative answer, no round trip */
        if (r == -ENOENT) {
            memset(&e, 0, sizeof(e));
            e.entry_timeout = kernel_ttl(m);
            fuse_reply_entry(req, &e);
            return;
        }
    }
    if (r == 0 && !fresh(m, f.attr_time_ns) && tun_sftp_connected(m->sftp)) {
        struct idx_file cached = f;
        r = fetch_entry(m, (int64_t)parent, name, &f);
        if (link_error(r)) {
            FS_STAT_ADD(&m->st, stale_served, 1);
            f = cached;
            r = 0;
        }
    } else if (r != 0) {
        /* not in the index: only the server can say; without a link that is an error, not
         * a "no such file" the server never said */
        r = fetch_entry(m, (int64_t)parent, name, &f);
    }
    if (r == -ENOENT) {
        memset(&e, 0, sizeof(e));
        e.entry_timeout = kernel_ttl(m);
        fuse_reply_entry(req, &e);
        return;
    }
    if (r != 0) {
        reply_err(req, r);
        return;
    }
    fill_entry(m, &f, &e);
    fuse_reply_entry(req, &e);
}

static void of_put(struct mountd *m, struct ofile *of);
static struct ofile *of_find_loaded(struct mountd *m, int64_t id);

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    struct idx_file f;
    struct stat st;
    int r;

    (void)fi;
    if ((r = get_fresh(m, (int64_t)ino, &f)) != 0) {
        struct ofile *of = r == -ENOENT ? of_find_loaded(m, (int64_t)ino) : NULL;
        if (of) { /* removed while open: an fstat still works, with no link left */
            pthread_mutex_lock(&of->lock);
            f = of->want;
            f.id = of->id;
            f.size = of->size;
            f.nlink = 0;
            pthread_mutex_unlock(&of->lock);
            of_put(m, of);
            file_to_stat(&f, &st);
            st.st_nlink = 0;
            fuse_reply_attr(req, &st, 0);
            return;
        }
        reply_err(req, r == -ENOENT && ino != FUSE_ROOT_ID ? -ENOENT : r);
        return;
    }
    file_to_stat(&f, &st);
    fuse_reply_attr(req, &st, kernel_ttl(m));
}

static void do_readlink(fuse_req_t req, fuse_ino_t ino)
{
    struct mountd *m = M(req);
    char path[PATH_MAX], target[PATH_MAX];
    struct idx_file f;
    int r;

    if ((r = get_fresh(m, (int64_t)ino, &f)) != 0) {
        reply_err(req, r);
        return;
    }
    if (!S_ISLNK(f.mode)) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    if (idx_get_link(m->idx, f.id, target, sizeof(target)) == 0 && target[0]) {
        fuse_reply_readlink(req, target);
        return;
    }
    if ((r = md_node_path(m, f.id, path, sizeof(path))) != 0 ||
        (FS_STAT_ADD(&m->st, meta_fetches, 1),
         (r = tun_sftp_readlink(m->sftp, path, target, sizeof(target))) != 0)) {
        reply_err(req, r);
        return;
    }
    idx_set_link(m->idx, f.id, target);
    fuse_reply_readlink(req, target);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
    struct mountd *m = M(req);
    do_readlink(req, ino);
    ar_note(m, ino); /* the kernel now marks the link's atime stale */
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    int r;

    if (m->no_opendir) {
        /* "success, and no more opendir/releasedir": the kernel then caches listings itself
         * (FOPEN_CACHE_DIR) until the directory's mtime changes; the listing is refreshed at
         * the first readdir instead */
        fuse_reply_err(req, ENOSYS);
        return;
    }
    r = refresh_dir(m, (int64_t)ino, PF_DEPTH + 1);

    if (r == -ENOENT && ino != FUSE_ROOT_ID)
        r = -ESTALE;
    if (r != 0) {
        reply_err(req, r);
        return;
    }
    fi->cache_readdir = 1;
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
}

struct dir_fill {
    struct mountd *m;
    fuse_req_t req;
    char *buf;
    size_t size, pos;
    bool plus;
};

static bool dir_add(struct dir_fill *d, const char *name, const struct idx_file *f, off_t next)
{
    size_t n;
    if (d->plus) {
        struct fuse_entry_param e;
        fill_entry(d->m, f, &e);
        n = fuse_add_direntry_plus(d->req, d->buf + d->pos, d->size - d->pos, name, &e, next);
    } else {
        struct stat st;
        file_to_stat(f, &st);
        n = fuse_add_direntry(d->req, d->buf + d->pos, d->size - d->pos, name, &st, next);
    }
    if (n > d->size - d->pos)
        return false;
    d->pos += n;
    return true;
}

static int dir_each(void *arg, const struct idx_file *f)
{
    struct dir_fill *d = arg;
    return dir_add(d, f->name, f, (off_t)f->row + 2) ? 0 : 1;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
    struct mountd *m = M(req);
    struct dir_fill d = {.m = m, .req = req, .size = size, .plus = plus};
    struct idx_file self, parent;
    int r;

    if (off == 0 && m->no_opendir && (r = refresh_dir(m, (int64_t)ino, PF_DEPTH + 1)) != 0) {
        reply_err(req, r == -ENOENT && ino != FUSE_ROOT_ID ? -ESTALE : r);
        return;
    }
    if ((r = idx_get(m->idx, (int64_t)ino, &self)) != 0) {
        reply_err(req, r);
        return;
    }
    if ((d.buf = malloc(size)) == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    if (off < 1 && !dir_add(&d, ".", &self, 1))
        goto done;
    if (off < 2) {
        if (self.parent == 0 || idx_get(m->idx, self.parent, &parent) != 0)
            parent = self;
        if (!dir_add(&d, "..", &parent, 2))
            goto done;
    }
    r = idx_children(m->idx, (int64_t)ino, off > 2 ? (int64_t)off - 2 : 0, dir_each, &d);
    if (r < 0) {
        free(d.buf);
        reply_err(req, r);
        return;
    }
done:
    fuse_reply_buf(req, d.buf, d.pos);
    free(d.buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    (void)fi;
    do_readdir(req, ino, size, off, false);
    ar_note(m, ino); /* the kernel now marks the folder's atime stale */
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    (void)fi;
    do_readdir(req, ino, size, off, true);
    ar_note(m, ino);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino, (void)fi;
    M(req);
    fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    struct mountd *m = M(req);
    struct statvfs sv;

    (void)ino;
    if (tun_sftp_has_ext(m->sftp, "statvfs@openssh.com") &&
        tun_sftp_statvfs(m->sftp, m->root, &sv) == 0) {
        sv.f_flag = 0;
        fuse_reply_statfs(req, &sv);
        return;
    }
    memset(&sv, 0, sizeof(sv));
    sv.f_bsize = sv.f_frsize = 4096;
    sv.f_namemax = IDX_NAME_MAX;
    fuse_reply_statfs(req, &sv);
}

/* ---- open files ---- */

/* Load (or reset to) the version in f: state from the index, a cache file of that version. */
struct load_ctx {
    struct ofile *of;
};

static int load_block(void *arg, const struct idx_block *b)
{
    struct ofile *of = arg;
    if (b->cached && b->blkno < of->nblocks) {
        of->state[b->blkno] = B_CACHED;
        memcpy(of->hash[b->blkno], b->hash, 16);
    }
    return 0;
}

/* Called with of->lock held (or before the ofile is shared). */
static int of_load(struct mountd *m, struct ofile *of, const struct idx_file *f)
{
    uint64_t nb = (f->size + FS_BLOCK_SIZE - 1) / FS_BLOCK_SIZE;
    uint8_t *state = calloc(nb ? nb : 1, 1);
    uint8_t(*hash)[16] = calloc(nb ? nb : 1, 16);
    int fd;

    if (state == NULL || hash == NULL) {
        free(state);
        free(hash);
        return -ENOMEM;
    }
    if ((fd = fs_cache_open(m->cache_dir, f->id, f->version, f->size)) < 0) {
        free(state);
        free(hash);
        return fd;
    }
    if (of->fd >= 0) {
        if (of->n_retired < (int)(sizeof(of->retired) / sizeof(of->retired[0])))
            of->retired[of->n_retired++] = of->fd;
        else
            close(of->fd); /* ultra-rare: more than 8 versions during one open */
    }
    free(of->state);
    free(of->hash);
    of->state = state;
    of->hash = hash;
    of->fd = fd;
    of->nblocks = nb;
    of->version = f->version;
    of->size = f->size;
    of->mtime_ns = f->mtime_ns;
    of->dev = f->dev;
    of->ino = f->ino;
    of->loaded = true;
    of->changed = false;
    of->err = 0;
    of->next_seq = 0;
    of->ra = 0;
    of->ra_next = 0;
    if (nb > 0) /* an empty file (a new one, say) has no blocks to ask the index for */
        idx_blocks(m->idx, f->id, f->version, load_block, of);
    return 0;
}

/* The ofile of f (found, or created unloaded), with one more reference for the caller. In
 * no-open mode the table keeps up to OF_KEEP_MAX of them between reads, least recently used
 * going first. */
static struct ofile *of_get(struct mountd *m, const struct idx_file *f, int *err)
{
    struct ofile *of, *victim = NULL;
    size_t bucket = (uint64_t)f->id % OF_BUCKETS;

    pthread_mutex_lock(&m->of_lock);
    for (of = m->of_hash[bucket]; of; of = of->next)
        if (of->id == f->id)
            break;
    if (of) {
        of->refs++;
        of->last_use = ++m->of_tick;
        pthread_mutex_unlock(&m->of_lock);
        pthread_mutex_lock(&of->lock);
        *err = 0;
        if (of->loaded && of->version != f->version)
            *err = of_load(m, of, f);
        else if (!of->loaded)
            of->want = *f;
        pthread_mutex_unlock(&of->lock);
        return of;
    }
    of = calloc(1, sizeof(*of));
    if (of == NULL) {
        pthread_mutex_unlock(&m->of_lock);
        *err = -ENOMEM;
        return NULL;
    }
    of->id = f->id;
    of->fd = -1;
    of->refs = 1;
    of->last_use = ++m->of_tick;
    pthread_mutex_init(&of->lock, NULL);
    pthread_cond_init(&of->cond, NULL);
    idx_pin(m->idx, f->id);
    of->want = *f; /* loaded at the first read: a file served from the page cache never is */
    *err = 0;
    of->next = m->of_hash[bucket];
    m->of_hash[bucket] = of;
    if (m->no_open) {
        of->kept = true;
        of->refs++;
        if (++m->n_kept > OF_KEEP_MAX) {
            /* about the least recently used: the oldest of the first few idle ones after a
             * clock hand, not a walk of the whole table at every new file */
            size_t k, seen = 0;
            for (k = 0; k < OF_BUCKETS && seen < OF_EVICT_SAMPLE; k++)
                for (struct ofile *o = m->of_hash[(m->of_hand + k) % OF_BUCKETS]; o; o = o->next) {
                    if (!o->kept || o->refs != 1)
                        continue;
                    seen++;
                    if (!victim || o->last_use < victim->last_use)
                        victim = o;
                }
            m->of_hand = (m->of_hand + k) % OF_BUCKETS;
            if (victim) {
                victim->kept = false;
                m->n_kept--;
            }
        }
    }
    pthread_mutex_unlock(&m->of_lock);
    if (victim)
        of_put(m, victim); /* the table's reference */
    return of;
}

/* The loaded open file of 'id', with a reference, or NULL. After the file's row is gone (removed
 * or replaced while open), this is what still serves the processes that have it open: what is
 * cached stays readable and writable, as on a local disk; its data is no longer anybody's. */
static struct ofile *of_find_loaded(struct mountd *m, int64_t id)
{
    pthread_mutex_lock(&m->of_lock);
    struct ofile *of = m->of_hash[(uint64_t)id % OF_BUCKETS];
    while (of && of->id != id)
        of = of->next;
    if (of)
        of->refs++;
    pthread_mutex_unlock(&m->of_lock);
    if (of && !of->loaded) {
        of_put(m, of);
        of = NULL;
    }
    return of;
}

void md_block_cached(struct mountd *m, int64_t id, uint64_t version, uint64_t blk,
                     const uint8_t hash[16])
{
    struct ofile *of = of_find_loaded(m, id); /* the loaded open file, if any */
    if (!of)
        return;
    pthread_mutex_lock(&of->lock);
    if (of->loaded && of->version == version && blk < of->nblocks && of->state[blk] == B_MISSING) {
        of->state[blk] = B_CACHED; /* verified against its hash at first use, as any cached block */
        memcpy(of->hash[blk], hash, 16);
        pthread_cond_broadcast(&of->cond);
    }
    pthread_mutex_unlock(&of->lock);
    of_put(m, of);
}

void md_block_changed(struct mountd *m, int64_t id, uint64_t version, uint64_t blk)
{
    struct ofile *of = of_find_loaded(m, id); /* the loaded open file, if any */
    if (!of)
        return;
    pthread_mutex_lock(&of->lock);
    if (of->loaded && of->version == version && blk < of->nblocks && of->state[blk] != B_FETCHING)
        of->state[blk] = B_MISSING;
    pthread_mutex_unlock(&of->lock);
    of_put(m, of);
}

void md_file_changed(struct mountd *m, int64_t id, uint64_t version)
{
    struct ofile *of = of_find_loaded(m, id);
    if (!of)
        return;
    pthread_mutex_lock(&of->lock);
    if (of->loaded && of->version != version)
        of->changed = true;
    pthread_mutex_unlock(&of->lock);
    of_put(m, of);
}

static void of_put(struct mountd *m, struct ofile *of)
{
    struct ofile **pp;

    pthread_mutex_lock(&m->of_lock);
    if (--of->refs > 0) {
        pthread_mutex_unlock(&m->of_lock);
        return;
    }
    for (pp = &m->of_hash[(uint64_t)of->id % OF_BUCKETS]; *pp; pp = &(*pp)->next)
        if (*pp == of) {
            *pp = of->next;
            break;
        }
    pthread_mutex_unlock(&m->of_lock);
    if (of->have_handle && m->sftp)
        tun_sftp_close_async(m->sftp, &of->h);
    queue_touch(m, of->id);
    idx_unpin(m->idx, of->id);
    if (of->fd >= 0)
        close(of->fd);
    for (int i = 0; i < of->n_retired; i++)
        close(of->retired[i]);
    free(of->state);
    free(of->hash);
    pthread_mutex_destroy(&of->lock);
    pthread_cond_destroy(&of->cond);
    free(of);
}

/* Drop every reference the table keeps (shutdown). */
static void of_drop_kept(struct mountd *m)
{
    for (;;) {
        struct ofile *victim = NULL;
        pthread_mutex_lock(&m->of_lock);
        for (size_t i = 0; i < OF_BUCKETS && !victim; i++)
            for (struct ofile *o = m->of_hash[i]; o && !victim; o = o->next)
                if (o->kept)
                    victim = o;
        if (victim) {
            victim->kept = false;
            m->n_kept--;
        }
        pthread_mutex_unlock(&m->of_lock);
        if (!victim)
            return;
        of_put(m, victim);
    }
}

/* Make sure of has a server handle. Called without of->lock. */
static int of_handle(struct mountd *m, struct ofile *of)
{
    char path[PATH_MAX];
    struct tun_sftp_handle h;
    int r;

    pthread_mutex_lock(&of->lock);
    while (of->opening)
        pthread_cond_wait(&of->cond, &of->lock);
    if (of->have_handle) {
        pthread_mutex_unlock(&of->lock);
        return 0;
    }
    of->opening = true;
    pthread_mutex_unlock(&of->lock);

    r = md_node_path(m, of->id, path, sizeof(path));
    if (r == 0)
        r = tun_sftp_open(m->sftp, path, &h);

    pthread_mutex_lock(&of->lock);
    of->opening = false;
    if (r == 0) {
        of->h = h;
        of->have_handle = true;
    }
    pthread_cond_broadcast(&of->cond);
    pthread_mutex_unlock(&of->lock);
    return r;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    struct idx_file f;
    struct ofile *of;
    int r;

    if ((fi->flags & O_ACCMODE) != O_RDONLY && !m->writable && !from_reflector(m, req)) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (m->no_open) {
        /* "success, and no more open/release": the kernel keeps pages (FOPEN_KEEP_CACHE) and
         * reads find their file by inode; changed versions are invalidated explicitly */
        fuse_reply_err(req, ENOSYS);
        return;
    }
    if ((r = get_fresh(m, (int64_t)ino, &f)) != 0) {
        reply_err(req, r);
        return;
    }
    if (!S_ISREG(f.mode)) {
        fuse_reply_err(req, S_ISDIR(f.mode) ? EISDIR : EINVAL);
        return;
    }
    if ((of = of_get(m, &f, &r)) == NULL || r != 0) {
        if (of)
            of_put(m, of);
        md_log(m, "cannot open the cache of '%s': %s", f.name, strerror(-r));
        reply_err(req, r);
        return;
    }
    fi->fh = (uint64_t)(uintptr_t)of;
    fi->keep_cache = 1; /* changed versions are invalidated explicitly (md_queue_inval) */
    fuse_reply_open(req, fi);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    (void)ino;
    if (fi->fh)
        of_put(m, (struct ofile *)(uintptr_t)fi->fh);
    fuse_reply_err(req, 0);
}

/* ---- fetching ---- */

#define CHANGED (-EAGAIN) /* the file changed on the server during a fetch */

struct batch;
struct slot {
    struct batch *b;
    uint32_t i;
};

struct batch {
    struct batch *next; /* in the writer's queue */
    bool demand;        /* a reader waits for it: finished on the owner thread, no hand-off */
    struct mountd *m;
    struct ofile *of; /* holds a reference */
    uint64_t first;
    uint32_t n;
    uint64_t version, expect_size, expect_dev, expect_ino;
    int64_t expect_mtime_ns;
    int pending; /* replies outstanding; atomic */
    int err;
    uint8_t *data;
    uint32_t got[BATCH_MAX];
    struct slot slots[BATCH_MAX];
};

static void batch_finish(struct batch *b)
{
    struct mountd *m = b->m;
    struct ofile *of = b->of;

    pthread_mutex_lock(&of->lock);
    if (of->version == b->version) {
        for (uint32_t i = 0; i < b->n; i++) {
            uint64_t blk = b->first + i;
            uint64_t off = blk * FS_BLOCK_SIZE;
            uint32_t want =
                (uint32_t)(of->size - off < FS_BLOCK_SIZE ? of->size - off : FS_BLOCK_SIZE);
            int err = b->err;
            if (err == 0 && b->got[i] != want)
                err = CHANGED; /* short: the file shrank under us */
            if (err == 0 && pwrite(of->fd, b->data + (size_t)i * FS_BLOCK_SIZE, want, (off_t)off) !=
                                (ssize_t)want)
                err = -EIO;
            if (err != 0) {
                of->state[blk] = B_MISSING;
                of->err = err;
                if (err == CHANGED)
                    of->changed = true;
                if (err == -ESTALE)
                    of->have_handle = false;
                continue;
            }
            struct idx_block row = {
                .file = of->id, .blkno = blk, .version = of->version, .len = want, .cached = true};
            fs_cache_hash(b->data + (size_t)i * FS_BLOCK_SIZE, want, row.hash);
            memcpy(of->hash[blk], row.hash, 16);
            of->state[blk] = B_VERIFIED;
            FS_STAT_ADD(&m->st, bytes_fetched, want);
            FS_STAT_ADD(&m->st, blocks_fetched, 1);
            queue_block(m, &row);
        }
        if (b->err == CHANGED)
            FS_STAT_ADD(&m->st, changed_underneath, 1);
    }
    pthread_cond_broadcast(&of->cond);
    pthread_mutex_unlock(&of->lock);
    of_put(m, of);
    free(b->data);
    free(b);
}

/* Completed batches go to the writer thread: the owner thread only decrypts and copies, the
 * writer does the disk write and the hash, so the two overlap. */
static void batch_done(struct batch *b)
{
    struct mountd *m = b->m;

    if (b->demand) {
        batch_finish(b);
        return;
    }
    pthread_mutex_lock(&m->bg_lock);
    b->next = NULL;
    if (m->done_tail)
        m->done_tail->next = b;
    else
        m->done_head = b;
    m->done_tail = b;
    pthread_cond_broadcast(&m->done_cond);
    pthread_mutex_unlock(&m->bg_lock);
}

static void *writer_main(void *arg)
{
    struct mountd *m = arg;

    pthread_mutex_lock(&m->bg_lock);
    for (;;) {
        struct batch *b = m->done_head;
        if (b == NULL) {
            if (m->writer_stop)
                break;
            pthread_cond_wait(&m->done_cond, &m->bg_lock);
            continue;
        }
        m->done_head = b->next;
        if (m->done_head == NULL)
            m->done_tail = NULL;
        pthread_mutex_unlock(&m->bg_lock);
        batch_finish(b);
        pthread_mutex_lock(&m->bg_lock);
    }
    pthread_mutex_unlock(&m->bg_lock);
    return NULL;
}

static void fetch_read_done(void *arg, int err, const uint8_t *data, uint32_t n)
{
    struct slot *s = arg;
    struct batch *b = s->b;

    if (err != 0 && b->err == 0)
        b->err = err;
    if (err == 0) {
        if (n > FS_BLOCK_SIZE)
            n = FS_BLOCK_SIZE;
        memcpy(b->data + (size_t)s->i * FS_BLOCK_SIZE, data, n);
        b->got[s->i] = n;
    }
    if (__atomic_sub_fetch(&b->pending, 1, __ATOMIC_ACQ_REL) == 0)
        batch_done(b);
}

/* With an endpoint that tells (offload serve), the identity: the same inode and size, and the
 * same mtime second (a write-back sets times through SFTP v3, in whole seconds), or the bytes
 * belong to another file than this version's (a same-second replacement v3 attributes miss). */
static void fetch_ident_done(void *arg, int err, const struct tun_sftp_ident *id)
{
    struct batch *b = arg;

    if (err != 0 && b->err == 0)
        b->err = err;
    if (err == 0 && b->err == 0 &&
        (id->size != b->expect_size ||
         id->mtime_ns / 1000000000 != b->expect_mtime_ns / 1000000000 || id->ino != b->expect_ino ||
         id->dev != b->expect_dev))
        b->err = CHANGED;
    if (__atomic_sub_fetch(&b->pending, 1, __ATOMIC_ACQ_REL) == 0)
        batch_done(b);
}

static void fetch_attr_done(void *arg, int err, const struct tun_sftp_attr *a)
{
    struct batch *b = arg;

    if (err != 0 && b->err == 0)
        b->err = err;
    /* SFTP v3 carries whole seconds; the feed knows nanoseconds: compare the seconds */
    if (err == 0 && b->err == 0 &&
        (a->size != b->expect_size || (int64_t)a->mtime != b->expect_mtime_ns / 1000000000))
        b->err = CHANGED;
    if (__atomic_sub_fetch(&b->pending, 1, __ATOMIC_ACQ_REL) == 0)
        batch_done(b);
}

/* Send one batch for blocks [first, first+n), all marked B_FETCHING by the caller.
 * Called without of->lock. On failure the blocks are put back to B_MISSING. */
static int send_batch(struct mountd *m, struct ofile *of, uint64_t first, uint32_t n, bool demand)
{
    struct batch *b = calloc(1, sizeof(*b));
    struct tun_sftp_handle h;
    int r = -ENOMEM;

    if (b == NULL || (b->data = malloc((size_t)n * FS_BLOCK_SIZE)) == NULL)
        goto fail;
    b->m = m;
    b->demand = demand;
    b->of = of;
    b->first = first;
    b->n = n;
    pthread_mutex_lock(&of->lock); /* the handle and the version it is checked against, together */
    h = of->h;
    b->version = of->version;
    b->expect_size = of->size;
    b->expect_mtime_ns = of->mtime_ns;
    b->expect_dev = of->dev;
    b->expect_ino = of->ino;
    pthread_mutex_unlock(&of->lock);
    pthread_mutex_lock(&m->of_lock);
    of->refs++;
    pthread_mutex_unlock(&m->of_lock);
    /* count every reply before the first can arrive */
    b->pending = (int)n + 1;
    for (uint32_t i = 0; i < n; i++) {
        b->slots[i].b = b;
        b->slots[i].i = i;
    }
    for (uint32_t i = 0; i < n; i++) {
        r = tun_sftp_read_async(m->sftp, &h, (first + i) * FS_BLOCK_SIZE, FS_BLOCK_SIZE,
                                fetch_read_done, &b->slots[i]);
        if (r != 0) {
            /* the owner thread may already be completing earlier slots: account for the
             * unsent ones through the same path */
            for (uint32_t j = i; j < n; j++)
                fetch_read_done(&b->slots[j], r, NULL, 0);
            fetch_attr_done(b, r, NULL);
            return r;
        }
    }
    r = b->expect_ino ? tun_sftp_fstat_id_async(m->sftp, &h, fetch_ident_done, b) : -EOPNOTSUPP;
    if (r == -EOPNOTSUPP)
        r = tun_sftp_fstat_async(m->sftp, &h, fetch_attr_done, b);
    if (r != 0)
        fetch_attr_done(b, r, NULL);
    return r;
fail:
    if (b)
        free(b->data);
    free(b);
    pthread_mutex_lock(&of->lock);
    for (uint32_t i = 0; i < n; i++)
        of->state[first + i] = B_MISSING;
    pthread_cond_broadcast(&of->cond);
    pthread_mutex_unlock(&of->lock);
    return r;
}

/* Send batches for the runs of blocks in list[0..n) (sorted). */
static int send_runs(struct mountd *m, struct ofile *of, const uint64_t *list, size_t n,
                     bool demand)
{
    size_t i = 0;
    int r = 0;

    while (i < n) {
        size_t j = i + 1;
        while (j < n && list[j] == list[j - 1] + 1 && j - i < BATCH_MAX)
            j++;
        int e = send_batch(m, of, list[i], (uint32_t)(j - i), demand);
        if (e != 0 && r == 0)
            r = e;
        i = j;
    }
    return r;
}

/* The server copy changed: learn the new version (one round trip), reset the ofile to it. */
static int of_revalidate(struct mountd *m, struct ofile *of)
{
    struct idx_file f, cur;
    int r;

    if ((r = idx_get(m->idx, of->id, &f)) != 0)
        return r;
    /* under a live feed the new version is on its way: wait for it (bounded) rather than ask
     * the server, whose SFTP attributes are coarser than the feed's */
    for (int i = 0; i < 100 && atomic_load(&m->feed_live) && f.version == of->version; i++) {
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
        if ((r = idx_get(m->idx, of->id, &f)) != 0)
            return r;
    }
    if (f.version != of->version && atomic_load(&m->feed_live))
        cur = f;
    else if ((r = fetch_entry(m, f.parent, f.name, &cur)) != 0)
        return r;
    pthread_mutex_lock(&of->lock);
    if (of->version != cur.version) {
        r = of_load(m, of, &cur);
    } else {
        /* same identity: the change was only a touch of the mtime within one version */
        of->changed = false;
    }
    /* reopen: a handle follows the old inode after a replace */
    struct tun_sftp_handle old = of->h;
    bool had = of->have_handle;
    of->have_handle = false;
    pthread_mutex_unlock(&of->lock);
    if (had)
        tun_sftp_close_async(m->sftp, &old);
    md_queue_inval(m, (fuse_ino_t)of->id);
    return r;
}

/* Bytes [off, off+n) of block blk are in the cache file and match their hash? Called with
 * of->lock held. Verifies B_CACHED blocks once; a mismatch makes them B_MISSING. */
static void verify_block(struct mountd *m, struct ofile *of, uint64_t blk)
{
    uint8_t *tmp, h[16];
    uint64_t off = blk * FS_BLOCK_SIZE;
    size_t want = (size_t)(of->size - off < FS_BLOCK_SIZE ? of->size - off : FS_BLOCK_SIZE);

    if ((tmp = malloc(FS_BLOCK_SIZE)) == NULL) {
        of->state[blk] = B_MISSING;
        return;
    }
    if (pread(of->fd, tmp, want, (off_t)off) == (ssize_t)want) {
        fs_cache_hash(tmp, want, h);
        if (memcmp(h, of->hash[blk], 16) == 0) {
            of->state[blk] = B_VERIFIED;
            free(tmp);
            return;
        }
    }
    free(tmp);
    FS_STAT_ADD(&m->st, verify_failures, 1);
    md_log(m, "cached block %" PRIu64 " of file %" PRId64 " failed its hash: refetching", blk,
           of->id);
    of->state[blk] = B_MISSING;
}

/* Make bytes [off, off+size) of an open file readable from its cache file: verify cached
 * blocks, fetch missing ones (a demand reader also starts read-ahead), wait for them. Returns
 * 0 with the cache fd and the end of the valid range, 1 at end of file, or a negative errno.
 * *missed tells whether any block had to be fetched. */
static int of_fetch(struct mountd *m, struct ofile *of, uint64_t off, size_t size, bool demand,
                    int *fd_out, uint64_t *end_out, uint64_t *version_out, bool *missed)
{
    uint64_t *need = NULL, *ra = NULL;
    int r = 0, tries = 0;
    int64_t limit = (int64_t)m->o.sftp.op_timeout_ms * 1000000 * 4;

    *missed = false;
    need = malloc((size / FS_BLOCK_SIZE + 2 + RA_MAX) * sizeof(*need));
    ra = need ? need + size / FS_BLOCK_SIZE + 2 : NULL;
    if (need == NULL)
        return -ENOMEM;
again:
    pthread_mutex_lock(&of->lock);
    if (!of->loaded && (r = of_load(m, of, &of->want)) != 0) {
        pthread_mutex_unlock(&of->lock);
        md_log(m, "cannot open the cache of '%s': %s", of->want.name, strerror(-r));
        goto fail;
    }
    if (of->changed) {
        pthread_mutex_unlock(&of->lock);
        if (++tries > FETCH_TRIES || (r = of_revalidate(m, of)) != 0)
            goto fail;
        goto again;
    }
    if (off >= of->size || size == 0) {
        pthread_mutex_unlock(&of->lock);
        free(need);
        return 1;
    }
    uint64_t end = off + size > of->size ? of->size : off + size;
    uint64_t b0 = off / FS_BLOCK_SIZE, b1 = (end - 1) / FS_BLOCK_SIZE;
    size_t n_need = 0, n_ra = 0;
    for (uint64_t b = b0; b <= b1; b++) {
        if (of->state[b] == B_CACHED)
            verify_block(m, of, b);
        if (of->state[b] == B_MISSING) {
            of->state[b] = B_FETCHING;
            need[n_need++] = b;
        }
    }
    if (tries == 0 && n_need > 0)
        *missed = true;
    if (tries == 0 && demand) {
        FS_STAT_ADD(&m->st, cache_misses, n_need);
        FS_STAT_ADD(&m->st, cache_hits, (b1 - b0 + 1) - n_need);
        /* sequential reader: grow a read-ahead window past the requested blocks */
        if (b0 > 0 && (b0 == of->next_seq || b0 + 1 == of->next_seq))
            of->ra = of->ra ? (of->ra * 2 > RA_MAX ? RA_MAX : of->ra * 2) : RA_START;
        else if (b0 != 0)
            of->ra = 0;
        else
            of->ra = of->ra ? of->ra : 0;
        of->next_seq = b1 + 1;
        if (of->ra) {
            uint64_t from = of->ra_next > b1 + 1 ? of->ra_next : b1 + 1;
            uint64_t to = b1 + of->ra < of->nblocks ? b1 + of->ra : of->nblocks - 1;
            for (uint64_t b = from; b <= to && n_ra < RA_MAX; b++) {
                if (of->state[b] == B_CACHED)
                    continue; /* verified when read */
                if (of->state[b] == B_MISSING) {
                    of->state[b] = B_FETCHING;
                    ra[n_ra++] = b;
                }
            }
            if (to + 1 > of->ra_next)
                of->ra_next = to + 1;
        }
    }
    pthread_mutex_unlock(&of->lock);

    if (n_need + n_ra > 0) {
        r = of_handle(m, of);
        if (r != 0) {
            pthread_mutex_lock(&of->lock);
            for (size_t i = 0; i < n_need; i++)
                of->state[need[i]] = B_MISSING;
            for (size_t i = 0; i < n_ra; i++)
                of->state[ra[i]] = B_MISSING;
            pthread_cond_broadcast(&of->cond);
            pthread_mutex_unlock(&of->lock);
            goto fail;
        }
        send_runs(m, of, need, n_need, demand);
        FS_STAT_ADD(&m->st, readahead_blocks, n_ra);
        send_runs(m, of, ra, n_ra, false);
    }

    /* wait until every block of the range is settled */
    int64_t t0 = md_wall_ns();
    pthread_mutex_lock(&of->lock);
    for (;;) {
        bool busy = false, missing = false;
        for (uint64_t b = b0; b <= b1; b++) {
            if (of->state[b] == B_FETCHING)
                busy = true;
            else if (of->state[b] == B_MISSING)
                missing = true;
        }
        if (!busy && !missing)
            break;
        if (!busy && missing) {
            int err = of->err;
            pthread_mutex_unlock(&of->lock);
            if (++tries > FETCH_TRIES) {
                r = err ? err : -EIO;
                goto fail;
            }
            goto again;
        }
        if (md_wall_ns() - t0 > limit) {
            pthread_mutex_unlock(&of->lock);
            r = -EIO;
            goto fail;
        }
        struct timespec ts = deadline_ms(CLOCK_REALTIME, 50);
        pthread_cond_timedwait(&of->cond, &of->lock, &ts);
    }
    *fd_out = of->fd;
    *end_out = end;
    if (version_out)
        *version_out = of->version;
    pthread_mutex_unlock(&of->lock);
    free(need);
    return 0;
fail:
    free(need);
    return r == CHANGED ? -EIO : r;
}

struct sib_ctx {
    int64_t self;
    int64_t ids[PF_FILES_PER_DIR];
    size_t n;
};

static int sib_each(void *arg, const struct idx_file *f)
{
    struct sib_ctx *c = arg;
    if (S_ISREG(f->mode) && f->size > 0 && f->size <= PF_FILE_MAX && f->id != c->self)
        c->ids[c->n++] = f->id;
    return c->n == PF_FILES_PER_DIR;
}

/* The first cold read in a folder queues the folder's other small files for the prefetchers
 * (once per folder and mount): tar, cp -r, a compiler and a test runner read folders whole. */
static void queue_siblings(struct mountd *m, struct ofile *of)
{
    struct sib_ctx *c;
    int64_t dir;

    pthread_mutex_lock(&of->lock);
    dir = of->want.parent;
    pthread_mutex_unlock(&of->lock);
    pthread_mutex_lock(&m->bg_lock);
    for (size_t i = 0; i < m->n_pf_dirs_done; i++)
        if (m->pf_dirs_done[i] == dir) {
            pthread_mutex_unlock(&m->bg_lock);
            return;
        }
    m->pf_dirs_done[m->n_pf_dirs_done++ % PF_DIRS_SEEN] = dir;
    if (m->n_pf_dirs_done >= PF_DIRS_SEEN)
        m->n_pf_dirs_done = PF_DIRS_SEEN; /* a ring: the oldest folder is forgotten */
    pthread_mutex_unlock(&m->bg_lock);
    if (idx_cached_bytes(m->idx) > m->budget / 10 * 9 || (c = calloc(1, sizeof(*c))) == NULL)
        return;
    c->self = of->id;
    idx_children(m->idx, dir, 0, sib_each, c);
    pthread_mutex_lock(&m->bg_lock);
    for (size_t i = 0; i < c->n && m->n_pf_files - m->pf_head < PF_QUEUE_MAX; i++) {
        if (m->n_pf_files == m->cap_pf_files) {
            size_t cap = m->cap_pf_files ? m->cap_pf_files * 2 : 512;
            int64_t *n = realloc(m->pf_files, cap * sizeof(*n));
            if (n == NULL)
                break;
            m->pf_files = n;
            m->cap_pf_files = cap;
        }
        m->pf_files[m->n_pf_files++] = c->ids[i];
    }
    pthread_cond_broadcast(&m->pf_cond);
    pthread_mutex_unlock(&m->bg_lock);
    free(c);
}

/* Under a live feed the whole tree is in the index, so a cold read can queue what a reader
 * walking the tree reads next: the small files after this one in its folder, in the folders
 * below it, then in the folders after it, up to the root, in listing order (the order tar, cp
 * -r and find follow), at most PF_AHEAD files. Before, only the folder's own files were queued,
 * so the first file of every folder cost the reader two round trips of its own: with ~6 files a
 * folder in a node_modules tree, that was most of a cold read of everything. */
struct ahead_ctx {
    struct mountd *m;
    int64_t ids[PF_AHEAD];
    size_t n;
    int depth;
};

static int ahead_each(void *arg, const struct idx_file *f)
{
    struct ahead_ctx *c = arg;
    if (S_ISREG(f->mode) && f->size > 0 && f->size <= PF_FILE_MAX)
        c->ids[c->n++] = f->id;
    else if (S_ISDIR(f->mode) && c->depth < 64) {
        c->depth++;
        idx_children(c->m->idx, f->id, 0, ahead_each, c);
        c->depth--;
    }
    return c->n >= PF_AHEAD;
}

static void queue_ahead(struct mountd *m, struct ofile *of)
{
    struct ahead_ctx *c;
    struct idx_file cur, parent;

    if (idx_cached_bytes(m->idx) > m->budget / 10 * 9 || (c = calloc(1, sizeof(*c))) == NULL)
        return;
    c->m = m;
    pthread_mutex_lock(&of->lock);
    cur = of->want;
    pthread_mutex_unlock(&of->lock);
    /* from this file on, then each folder's following entries on the way up */
    while (c->n < PF_AHEAD && cur.parent != 0 && idx_get(m->idx, cur.parent, &parent) == 0) {
        idx_children(m->idx, parent.id, cur.row, ahead_each, c);
        cur = parent;
    }
    pthread_mutex_lock(&m->bg_lock);
    /* the reader has moved on: what was queued for an earlier position and not started yet
     * goes, the new run takes its place */
    m->pf_head = m->n_pf_files = 0;
    if (m->cap_pf_files < c->n) {
        int64_t *n = realloc(m->pf_files, PF_AHEAD * sizeof(*n));
        if (n) {
            m->pf_files = n;
            m->cap_pf_files = PF_AHEAD;
        }
    }
    for (size_t i = 0; i < c->n && i < m->cap_pf_files; i++)
        m->pf_files[m->n_pf_files++] = c->ids[i];
    pthread_cond_broadcast(&m->pf_cond);
    pthread_mutex_unlock(&m->bg_lock);
    free(c);
}

static void prefetch_file(struct mountd *m, int64_t id)
{
    struct idx_file f;
    struct ofile *of;
    uint64_t end;
    bool missed;
    int fd, r;

    if (idx_get(m->idx, id, &f) != 0 || !S_ISREG(f.mode) || !fresh(m, f.attr_time_ns))
        return;
    if ((of = of_get(m, &f, &r)) == NULL)
        return;
    if (r == 0 && of_fetch(m, of, 0, (size_t)f.size, false, &fd, &end, NULL, &missed) == 0 &&
        missed)
        FS_STAT_ADD(&m->st, prefetched_files, 1);
    of_put(m, of);
}

static void do_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    struct ofile *of = (struct ofile *)(uintptr_t)fi->fh;
    uint64_t end;
    bool missed;
    int fd, r;

    if (m->fm)
        fm_wait_file(m, (int64_t)ino); /* a change being applied: its blocks are on their way */
    if (of == NULL) {
        /* no-open mode: the file is found by inode, at its current version */
        struct idx_file f;
        if ((r = idx_get(m->idx, (int64_t)ino, &f)) == -ENOENT &&
            (of = of_find_loaded(m, (int64_t)ino)) != NULL) {
            r = 0; /* removed while open: served from what is here */
        } else if (r != 0 || !S_ISREG(f.mode)) {
            reply_err(req, r ? r : -EINVAL);
            return;
        } else if ((of = of_get(m, &f, &r)) == NULL || r != 0) {
            if (of)
                of_put(m, of);
            reply_err(req, r);
            return;
        }
    } else {
        pthread_mutex_lock(&m->of_lock);
        of->refs++;
        pthread_mutex_unlock(&m->of_lock);
    }
    uint64_t served = 0;
    r = of_fetch(m, of, (uint64_t)off, size, true, &fd, &end, &served, &missed);
    if (r == 1) {
        fuse_reply_buf(req, NULL, 0);
    } else if (r < 0) {
        md_log(m, "cannot read file %" PRId64 " at %lld: %s", of->id, (long long)off, strerror(-r));
        reply_err(req, r);
    } else {
        bool ahead = missed && off == 0 && atomic_load(&m->feed_live);
        if (missed && off == 0 && !ahead)
            queue_siblings(m, of); /* a folder's files tend to be read together */
        struct fuse_bufvec bv = FUSE_BUFVEC_INIT(end - (uint64_t)off);
        bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
        bv.buf[0].fd = fd;
        bv.buf[0].pos = off;
        fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
        /* The kernel has put these bytes in its page cache. If the file got a new version while
         * they were on their way, the feed's invalidation may have run before they landed:
         * invalidate again, now that they have, or they would stay stale until the next change.
         * (The feed marks the ofile before it queues its own invalidation, so one of the two
         * always comes after the pages.) */
        pthread_mutex_lock(&of->lock);
        bool stale = of->changed || of->version != served;
        pthread_mutex_unlock(&of->lock);
        if (stale) {
            FS_STAT_ADD(&m->st, late_invalidations, 1);
            md_queue_inval(m, ino);
        }
        if (ahead)
            queue_ahead(m, of); /* after the reply: a reader walking the tree reads these next */
    }
    of_put(m, of); /* after the reply: the fd stays open while the kernel reads it */
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    do_read(req, ino, size, off, fi);
    ar_note(m, ino); /* the kernel now marks the file's atime stale */
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    (void)ino, (void)nlookup;
    fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    (void)count, (void)forgets;
    fuse_reply_none(req);
}

/* ---- mutating operations (docs/writeback.md) ----
 *
 * For the feed thread's reflections they only acknowledge (the change is in the index already).
 * Otherwise, on a writable mount, each applies the change to the index and the block cache and
 * appends a journal row in the same index batch, then replies: no network on this path. The
 * write-back thread (writeback.c) sends the rows to the source in order. A file is made wholly
 * local (its missing blocks fetched) before its first local change of content, so that no fetch
 * ever races with a local write. */

#define SETID_BITS (S_ISUID | S_ISGID)

static int child_path(struct mountd *m, int64_t parent, const char *name, char *out, size_t len)
{
    char dir[PATH_MAX];
    int r = md_node_path(m, parent, dir, sizeof(dir));
    if (r != 0)
        return r;
    size_t n = strlen(dir), k = strlen(name);
    bool slash = strcmp(dir, "/") != 0;
    if (n + slash + k + 1 > len)
        return -ENAMETOOLONG;
    memcpy(out, dir, n);
    if (slash)
        out[n++] = '/';
    memcpy(out + n, name, k + 1);
    return 0;
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

/* 0 marks a never-used slot of the recent-path table */
static uint64_t path_hash(const char *p)
{
    uint64_t h = fnv1a(p);
    return h ? h : 1;
}

/* The recent-path table: open addressing with linear probing; a slot is free when never used or
 * when its time is older than the echo window, so entries expire instead of being evicted. */
#define RECENT_PROBE 256

void md_note_local(struct mountd *m, const char *path)
{
    uint64_t h = path_hash(path);
    size_t n = sizeof(m->recent) / sizeof(m->recent[0]);
    int64_t now = md_wall_ns();
    struct recent_path *slot = NULL, *oldest = NULL;
    pthread_mutex_lock(&m->recent_lock);
    for (size_t i = 0; i < RECENT_PROBE; i++) {
        struct recent_path *r = &m->recent[(h + i) % n];
        if (r->hash == h) {
            slot = r;
            break;
        }
        if (!slot && (r->hash == 0 || now - r->t >= ECHO_WINDOW_NS))
            slot = r; /* keep probing: the path may sit further on */
        if (!oldest || r->t < oldest->t)
            oldest = r;
    }
    if (!slot)
        slot = oldest; /* 256 live neighbours: give up the oldest (at worst an echo is applied) */
    slot->hash = h;
    slot->t = now;
    pthread_mutex_unlock(&m->recent_lock);
}

void md_note_written_back(struct mountd *m, int64_t file)
{
    size_t n = sizeof(m->wback) / sizeof(m->wback[0]);
    pthread_mutex_lock(&m->recent_lock);
    m->wback[m->n_wback++ % n] = (struct written_back){file, md_wall_ns()};
    pthread_mutex_unlock(&m->recent_lock);
}

int64_t md_written_back_at(struct mountd *m, int64_t file)
{
    size_t n = sizeof(m->wback) / sizeof(m->wback[0]);
    int64_t t = 0;
    pthread_mutex_lock(&m->recent_lock);
    size_t first = m->n_wback > n ? m->n_wback - n : 0;
    for (size_t i = m->n_wback; i > first && t == 0; i--)
        if (m->wback[(i - 1) % n].file == file)
            t = m->wback[(i - 1) % n].t;
    pthread_mutex_unlock(&m->recent_lock);
    return t;
}

size_t md_written_back_since(struct mountd *m, int64_t since, int64_t **out)
{
    size_t n = sizeof(m->wback) / sizeof(m->wback[0]), k = 0;
    if (!(*out = malloc(n * sizeof(**out))))
        return 0; /* at worst a row written back lately is fetched again */
    pthread_mutex_lock(&m->recent_lock);
    size_t first = m->n_wback > n ? m->n_wback - n : 0;
    for (size_t i = first; i < m->n_wback; i++)
        if (m->wback[i % n].t >= since && m->wback[i % n].file)
            (*out)[k++] = m->wback[i % n].file;
    pthread_mutex_unlock(&m->recent_lock);
    return k;
}

bool md_recent_local(struct mountd *m, const char *path)
{
    uint64_t h = path_hash(path);
    size_t n = sizeof(m->recent) / sizeof(m->recent[0]);
    int64_t now = md_wall_ns();
    bool recent = false;
    pthread_mutex_lock(&m->recent_lock);
    for (size_t i = 0; i < RECENT_PROBE; i++) {
        struct recent_path *r = &m->recent[(h + i) % n];
        if (r->hash == 0)
            break;
        if (r->hash == h) {
            recent = now - r->t < ECHO_WINDOW_NS;
            break;
        }
    }
    pthread_mutex_unlock(&m->recent_lock);
    return recent;
}

/* A rename's key in the table of recent paths: "FROM//TO" ('//' is in no source path). */
static void rename_key(const char *from, const char *to, char *out, size_t len)
{
    snprintf(out, len, "%s//%s", from, to);
}

void md_note_rename(struct mountd *m, const char *from, const char *to)
{
    char key[2 * IDX_PATH_MAX + 2];
    rename_key(from, to, key, sizeof(key));
    md_note_local(m, key);
}

bool md_recent_rename(struct mountd *m, const char *from, const char *to)
{
    char key[2 * IDX_PATH_MAX + 2];
    rename_key(from, to, key, sizeof(key));
    return md_recent_local(m, key);
}

/* Append one journal row (inside the caller's batch). */
static int journal(struct mountd *m, enum idx_jkind kind, int64_t file, const char *path,
                   const char *path2, uint32_t mode, uint32_t flags, uint32_t valid,
                   const struct idx_file *f, uint64_t off, uint64_t len)
{
    struct idx_jentry *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->kind = kind;
    e->file = file;
    snprintf(e->path, sizeof(e->path), "%s", path);
    snprintf(e->path2, sizeof(e->path2), "%s", path2 ? path2 : "");
    e->mode = mode;
    e->flags = flags;
    e->valid = valid;
    if (f) {
        e->size = f->size;
        e->atime_ns = f->atime_ns;
        e->mtime_ns = f->mtime_ns;
    }
    e->off = off;
    e->len = len;
    int r = idx_journal_add(m->idx, e);
    free(e);
    if (kind == IDX_J_FSYNC)
        return r; /* changes nothing on the source */
    md_note_local(m, path);
    if (path2 && (kind == IDX_J_RENAME || kind == IDX_J_LINK))
        md_note_local(m, path2);
    if (path2 && kind == IDX_J_RENAME)
        md_note_rename(m, path, path2);
    return r;
}

/* End a batch. Never a rollback, even after a failure: the batch belongs to the index connection
 * and may hold other threads' changes (journal rows, the feed's batch); every step before the
 * failure was complete and true on its own. */
static int end_batch(struct mountd *m, int r)
{
    int c = idx_commit(m->idx);
    if (r == 0 && (r = c) == 0)
        wb_kick(m);
    return r;
}

/* The folder's own times move with every change of its entries; its link count with its
 * subfolders ('subdirs' more or fewer). */
static void touch_dir(struct mountd *m, int64_t dir, int64_t now, int subdirs)
{
    idx_dir_changed(m->idx, dir, now, subdirs);
    /* no invalidation: the kernel drops a folder's attributes itself when a change through the
     * mount (create, unlink, rename, link) touches it */
}

static void new_entry(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      const char *link, struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    struct fuse_entry_param e;
    struct idx_file f, p;
    char path[PATH_MAX];
    int r;

    if (from_reflector(m, req)) {
        if (idx_lookup(m->idx, (int64_t)parent, name, &f) != 0) {
            fuse_reply_err(req, ENOENT);
            return;
        }
        fill_entry(m, &f, &e);
        fi ? fuse_reply_create(req, &e, fi) : fuse_reply_entry(req, &e);
        return;
    }
    if (!m->writable) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (!S_ISREG(mode) && !S_ISDIR(mode) && !S_ISLNK(mode)) {
        fuse_reply_err(req, EPERM); /* device nodes, FIFOs and sockets are refused by rule */
        return;
    }
    if (strlen(name) > IDX_NAME_MAX) {
        fuse_reply_err(req, ENAMETOOLONG);
        return;
    }
    if (idx_get(m->idx, (int64_t)parent, &p) != 0 || !S_ISDIR(p.mode)) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (idx_lookup(m->idx, (int64_t)parent, name, &f) == 0) {
        fuse_reply_err(req, EEXIST);
        return;
    }
    if ((r = child_path(m, (int64_t)parent, name, path, sizeof(path))) != 0) {
        reply_err(req, r);
        return;
    }
    int64_t now = md_wall_ns();
    memset(&f, 0, sizeof(f));
    f.parent = (int64_t)parent;
    snprintf(f.name, sizeof(f.name), "%s", name);
    f.mode = S_ISLNK(mode) ? (S_IFLNK | 0777) : (mode & ~SETID_BITS);
    f.uid = ctx->uid;
    f.gid = ctx->gid;
    f.nlink = S_ISDIR(mode) ? 2 : 1;
    f.size = link ? strlen(link) : 0;
    f.atime_ns = f.mtime_ns = f.ctime_ns = now;
    f.attr_time_ns = now;
    f.list_time_ns = S_ISDIR(mode) ? now : 0; /* an empty folder, known whole */
    idx_begin(m->idx);
    r = idx_put_keep_version(m->idx, &f);
    if (r == 0 && link)
        r = idx_set_link(m->idx, f.id, link);
    if (r == 0) {
        enum idx_jkind k = S_ISDIR(mode)   ? IDX_J_MKDIR
                           : S_ISLNK(mode) ? IDX_J_SYMLINK
                                           : IDX_J_CREATE;
        r = journal(m, k, f.id, path, link, f.mode, 0, 0, &f, 0, 0);
    }
    if (r == 0)
        touch_dir(m, (int64_t)parent, now, S_ISDIR(mode) ? 1 : 0);
    if ((r = end_batch(m, r)) != 0) {
        reply_err(req, r);
        return;
    }
    FS_STAT_ADD(&m->st, local_changes, 1);
    fill_entry(m, &f, &e);
    if (fi) {
        fi->fh = 0; /* reads and writes find the file by inode */
        fuse_reply_create(req, &e, fi);
    } else {
        fuse_reply_entry(req, &e);
    }
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    (void)rdev;
    new_entry(req, parent, name, mode, NULL, NULL);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    new_entry(req, parent, name, S_IFREG | (mode & 07777), NULL, fi);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    new_entry(req, parent, name, S_IFDIR | (mode & 07777), NULL, NULL);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    new_entry(req, parent, name, S_IFLNK | 0777, link, NULL);
}

static int has_child(void *arg, const struct idx_file *f)
{
    if (arg)
        snprintf(arg, NAME_MAX + 1, "%s", f->name);
    return 1;
}

static void remove_entry(fuse_req_t req, fuse_ino_t parent, const char *name, bool dir)
{
    struct mountd *m = M(req);
    struct idx_file f;
    char path[PATH_MAX];
    int r;

    if (from_reflector(m, req)) {
        fuse_reply_err(req, 0);
        return;
    }
    if (!m->writable) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (idx_lookup(m->idx, (int64_t)parent, name, &f) != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (dir != S_ISDIR(f.mode)) {
        fuse_reply_err(req, dir ? ENOTDIR : EISDIR);
        return;
    }
    char child[NAME_MAX + 1];
    if (dir && idx_children(m->idx, f.id, 0, has_child, child) == 1) {
        if (m->o.debug)
            md_log(m, "cannot remove folder '%s': it holds '%s'", f.name, child);
        fuse_reply_err(req, ENOTEMPTY);
        return;
    }
    if ((r = child_path(m, (int64_t)parent, name, path, sizeof(path))) != 0) {
        reply_err(req, r);
        return;
    }
    idx_begin(m->idx);
    r = idx_delete(m->idx, f.row, md_gone_cb, m);
    if (r == 0)
        r = journal(m, dir ? IDX_J_RMDIR : IDX_J_UNLINK, f.id, path, NULL, 0, 0, 0, NULL, 0, 0);
    if (r == 0)
        touch_dir(m, (int64_t)parent, md_wall_ns(), dir ? -1 : 0);
    if ((r = end_batch(m, r)) == 0)
        FS_STAT_ADD(&m->st, local_changes, 1);
    fuse_reply_err(req, -r);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    remove_entry(req, parent, name, false);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    remove_entry(req, parent, name, true);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    struct mountd *m = M(req);
    struct idx_file src, dst;
    char from[PATH_MAX], to[PATH_MAX];
    int r;

    if (from_reflector(m, req)) {
        fuse_reply_err(req, 0);
        return;
    }
    if (!m->writable) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (flags & ~RENAME_NOREPLACE) {
        fuse_reply_err(req, EINVAL); /* RENAME_EXCHANGE: SFTP cannot do it atomically */
        return;
    }
    if (strlen(newname) > IDX_NAME_MAX) {
        fuse_reply_err(req, ENAMETOOLONG);
        return;
    }
    if (idx_lookup(m->idx, (int64_t)parent, name, &src) != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (idx_lookup(m->idx, (int64_t)newparent, newname, &dst) == 0) {
        if (dst.id == src.id) {
            fuse_reply_err(req, 0);
            return;
        }
        if (flags & RENAME_NOREPLACE) {
            fuse_reply_err(req, EEXIST);
            return;
        }
        if (S_ISDIR(src.mode) != S_ISDIR(dst.mode)) {
            fuse_reply_err(req, S_ISDIR(src.mode) ? ENOTDIR : EISDIR);
            return;
        }
        if (S_ISDIR(dst.mode) && idx_children(m->idx, dst.id, 0, has_child, NULL) == 1) {
            fuse_reply_err(req, ENOTEMPTY);
            return;
        }
    }
    if ((r = child_path(m, (int64_t)parent, name, from, sizeof(from))) != 0 ||
        (r = child_path(m, (int64_t)newparent, newname, to, sizeof(to))) != 0) {
        reply_err(req, r);
        return;
    }
    int64_t now = md_wall_ns();
    idx_begin(m->idx);
    r = idx_rename(m->idx, src.row, (int64_t)newparent, newname, md_gone_cb, m);
    if (r == 0)
        r = journal(m, IDX_J_RENAME, src.id, from, to, 0, flags & RENAME_NOREPLACE, 0, NULL, 0, 0);
    if (r == 0) {
        bool moved_dir = S_ISDIR(src.mode) && parent != newparent;
        touch_dir(m, (int64_t)parent, now, moved_dir ? -1 : 0);
        touch_dir(m, (int64_t)newparent, now, moved_dir ? 1 : 0);
    }
    if ((r = end_batch(m, r)) == 0)
        FS_STAT_ADD(&m->st, local_changes, 1);
    fuse_reply_err(req, -r);
}

/* Bring every block of the file into the cache (a file written locally must be whole here). */
static int make_local(struct mountd *m, struct ofile *of)
{
    pthread_mutex_lock(&of->lock);
    if (!of->loaded) {
        int r = of_load(m, of, &of->want);
        if (r != 0) {
            pthread_mutex_unlock(&of->lock);
            return r;
        }
    }
    uint64_t size = of->size;
    bool whole = true;
    for (uint64_t b = 0; b < of->nblocks && whole; b++)
        whole = of->state[b] == B_VERIFIED || of->state[b] == B_CACHED;
    pthread_mutex_unlock(&of->lock);
    if (whole || size == 0)
        return 0;
    int fd;
    uint64_t end;
    bool missed;
    int r = of_fetch(m, of, 0, size, true, &fd, &end, NULL, &missed);
    return r == 1 ? 0 : r;
}

/* Resize the loaded file's cache and state to 'size' (of->lock held). */
static int of_resize(struct mountd *m, struct ofile *of, uint64_t size)
{
    uint64_t nb = (size + FS_BLOCK_SIZE - 1) / FS_BLOCK_SIZE;
    if (ftruncate(of->fd, (off_t)size) != 0)
        return -errno;
    if (nb > of->nblocks) {
        uint8_t *state = realloc(of->state, nb);
        if (!state)
            return -ENOMEM;
        of->state = state;
        uint8_t(*hash)[16] = realloc(of->hash, nb * 16);
        if (!hash)
            return -ENOMEM;
        of->hash = hash;
        memset(of->state + of->nblocks, B_MISSING, nb - of->nblocks);
    } else if (nb < of->nblocks) {
        int r = idx_blocks_truncate(m->idx, of->id, nb);
        if (r != 0)
            return r;
    }
    of->nblocks = nb;
    of->size = size;
    return 0;
}

/* Blocks b0..b1 of 'of' were changed here: hash them as the cache file has them now and record
 * them dirty (of->lock held). A block the write 'data' (size bytes at 'woff'; NULL for a
 * truncate) covers whole is hashed from the write's own bytes, without reading it back. */
static int mark_dirty(struct mountd *m, struct ofile *of, uint64_t b0, uint64_t b1,
                      const char *data, uint64_t woff, size_t size)
{
    uint8_t *buf = malloc(FS_BLOCK_SIZE);
    if (!buf)
        return -ENOMEM;
    int r = 0;
    for (uint64_t b = b0; b <= b1 && b < of->nblocks && r == 0; b++) {
        uint64_t off = b * FS_BLOCK_SIZE;
        uint32_t len = (uint32_t)(of->size - off < FS_BLOCK_SIZE ? of->size - off : FS_BLOCK_SIZE);
        const uint8_t *bytes = buf;
        if (data && off >= woff && off + len <= woff + size)
            bytes = (const uint8_t *)data + (off - woff);
        else if (pread(of->fd, buf, len, (off_t)off) != (ssize_t)len) {
            r = -EIO;
            break;
        }
        struct idx_block row = {.file = of->id,
                                .blkno = b,
                                .version = of->version,
                                .len = len,
                                .cached = true,
                                .dirty = true};
        fs_cache_hash(bytes, len, row.hash);
        if ((r = idx_block_put(m->idx, &row)) == 0) {
            memcpy(of->hash[b], row.hash, 16);
            of->state[b] = B_VERIFIED;
        }
    }
    free(buf);
    return r;
}

/* Wait until no block of [b0, b1] is being fetched (of->lock held). */
static void wait_fetches(struct ofile *of, uint64_t b0, uint64_t b1)
{
    for (;;) {
        bool busy = false;
        for (uint64_t b = b0; b <= b1 && b < of->nblocks && !busy; b++)
            busy = of->state[b] == B_FETCHING;
        if (!busy)
            return;
        pthread_cond_wait(&of->cond, &of->lock);
    }
}

/* Write (data != NULL) or truncate (data == NULL, size = new length) a file locally and journal
 * it. Returns 0 or a negative errno. */
/* An open file whose row is gone (removed while open) set to 'size' bytes in its cache file: the
 * bytes are the file's only copy now. Called with of->lock held. */
static int orphan_resize(struct ofile *of, uint64_t size)
{
    if (ftruncate(of->fd, (off_t)size) != 0)
        return -errno;
    uint64_t nb = (size + FS_BLOCK_SIZE - 1) / FS_BLOCK_SIZE;
    if (nb > of->nblocks) {
        uint8_t *st = realloc(of->state, nb);
        if (st)
            of->state = st;
        uint8_t(*h)[16] = st ? realloc(of->hash, nb * 16) : NULL;
        if (!st || !h)
            return -ENOMEM;
        of->hash = h;
        memset(of->state + of->nblocks, B_VERIFIED, nb - of->nblocks);
    }
    of->nblocks = nb;
    of->size = size;
    return 0;
}

static int local_content(struct mountd *m, int64_t id, const char *data, size_t size, off_t off)
{
    struct idx_file f;
    char path[PATH_MAX];
    int r;
    if ((r = idx_get(m->idx, id, &f)) == -ENOENT) {
        struct ofile *of = of_find_loaded(m, id);
        if (!of)
            return r;
        /* removed while open: the writer goes on in the cache file nobody else sees; without
         * data, a truncation to 'size' */
        pthread_mutex_lock(&of->lock);
        uint64_t end = data ? (uint64_t)off + size : size;
        r = !data || end > of->size ? orphan_resize(of, end) : 0;
        if (r == 0 && data && pwrite(of->fd, data, size, off) != (ssize_t)size)
            r = -EIO;
        for (uint64_t b = (uint64_t)off / FS_BLOCK_SIZE;
             data && r == 0 && b < of->nblocks && b * FS_BLOCK_SIZE < end; b++)
            of->state[b] = B_VERIFIED; /* the local bytes are the file's only copy now */
        pthread_mutex_unlock(&of->lock);
        of_put(m, of);
        return r;
    }
    if (r != 0)
        return r;
    if (!S_ISREG(f.mode))
        return S_ISDIR(f.mode) ? -EISDIR : -EINVAL;
    if ((r = md_node_path(m, id, path, sizeof(path))) != 0)
        return r;
    struct ofile *of = of_get(m, &f, &r);
    if (!of || r != 0) {
        if (of)
            of_put(m, of);
        return r ? r : -ENOMEM;
    }
    if ((r = make_local(m, of)) != 0) {
        md_log(m, "cannot bring '%s' whole into the cache before changing it: %s", path,
               strerror(-r));
        of_put(m, of);
        return r;
    }
    idx_begin(m->idx);
    pthread_mutex_lock(&of->lock);
    uint64_t old = of->size, from = 0, to = 0;
    if (data) {
        uint64_t end = (uint64_t)off + size;
        wait_fetches(of, (uint64_t)off / FS_BLOCK_SIZE, end / FS_BLOCK_SIZE);
        if (end > old && (r = of_resize(m, of, end)) != 0)
            goto unlock;
        if (pwrite(of->fd, data, size, off) != (ssize_t)size) {
            r = -EIO;
            goto unlock;
        }
        from = (uint64_t)off < old ? (uint64_t)off : old; /* a gap past the old end is zeros */
        to = end;
    } else {
        uint64_t len = size;
        wait_fetches(of, 0, of->nblocks);
        if ((r = of_resize(m, of, len)) != 0)
            goto unlock;
        from = len < old ? len / FS_BLOCK_SIZE * FS_BLOCK_SIZE : old; /* the new last block */
        to = len;
    }
    if (to > from)
        r = mark_dirty(m, of, from / FS_BLOCK_SIZE, (to - 1) / FS_BLOCK_SIZE, data, (uint64_t)off,
                       size);
unlock:
    pthread_mutex_unlock(&of->lock);
    int64_t now = md_wall_ns();
    f.size = of->size;
    f.mtime_ns = f.ctime_ns = now;
    /* removed since it was looked up: its bytes stay in the cache file, as for any file
     * removed while open, and its journal rows find no row to send */
    if (r == 0 && (r = idx_file_written(m->idx, id, f.size, now)) == -ENOENT)
        r = 0;
    if (r == 0 && !data)
        r = journal(m, IDX_J_SETATTR, id, path, NULL, 0, 0, IDX_J_SET_SIZE, &f, 0, 0);
    if (r == 0 && to > from)
        r = journal(m, IDX_J_WRITE, id, path, NULL, 0, 0, 0, NULL, from, to - from);
    r = end_batch(m, r);
    of_put(m, of);
    if (r == 0)
        FS_STAT_ADD(&m->st, local_changes, 1);
    return r;
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    (void)fi;
    if (!m->writable || from_reflector(m, req)) {
        fuse_reply_err(req, EROFS);
        return;
    }
    int r = local_content(m, (int64_t)ino, buf, size, off);
    if (r != 0) {
        md_log(m, "cannot write %zu bytes at %lld of file %" PRIu64 ": %s", size, (long long)off,
               (uint64_t)ino, strerror(-r));
        reply_err(req, r);
    } else
        fuse_reply_write(req, size);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    struct idx_file f;
    struct stat st;
    char path[PATH_MAX];
    uint32_t valid = 0;
    int r;
    (void)fi;

    if (idx_get(m->idx, (int64_t)ino, &f) != 0) {
        struct ofile *of = m->writable ? of_find_loaded(m, (int64_t)ino) : NULL;
        if (!of) {
            fuse_reply_err(req, ENOENT);
            return;
        }
        /* removed while open: the change stays in the cache file nobody else sees */
        r = (to_set & FUSE_SET_ATTR_SIZE)
                ? local_content(m, (int64_t)ino, NULL, (size_t)attr->st_size, 0)
                : 0;
        pthread_mutex_lock(&of->lock);
        if (to_set & FUSE_SET_ATTR_MODE)
            of->want.mode = (of->want.mode & S_IFMT) | (attr->st_mode & 07777 & ~SETID_BITS);
        if (to_set & FUSE_SET_ATTR_MTIME)
            of->want.mtime_ns = (int64_t)attr->st_mtim.tv_sec * 1000000000 + attr->st_mtim.tv_nsec;
        if (to_set & FUSE_SET_ATTR_MTIME_NOW)
            of->want.mtime_ns = md_wall_ns();
        f = of->want;
        f.id = of->id;
        f.size = of->size;
        pthread_mutex_unlock(&of->lock);
        of_put(m, of);
        if (r != 0) {
            reply_err(req, r);
            return;
        }
        file_to_stat(&f, &st);
        st.st_nlink = 0;
        fuse_reply_attr(req, &st, 0);
        return;
    }
    if (from_reflector(m, req)) {
        file_to_stat(&f, &st);
        fuse_reply_attr(req, &st, kernel_ttl(m));
        return;
    }
    if (!m->writable) {
        fuse_reply_err(req, EROFS);
        return;
    }
    /* owner policy: files belong to the source's user; only a change that changes nothing */
    if (((to_set & FUSE_SET_ATTR_UID) && attr->st_uid != f.uid) ||
        ((to_set & FUSE_SET_ATTR_GID) && attr->st_gid != f.gid)) {
        fuse_reply_err(req, EPERM);
        return;
    }
    if ((r = md_node_path(m, f.id, path, sizeof(path))) != 0) {
        reply_err(req, r);
        return;
    }
    if (to_set & FUSE_SET_ATTR_SIZE) {
        if ((r = local_content(m, f.id, NULL, (size_t)attr->st_size, 0)) != 0) {
            reply_err(req, r);
            return;
        }
        idx_get(m->idx, f.id, &f);
    }
    int64_t now = md_wall_ns();
    if (to_set & FUSE_SET_ATTR_MODE) {
        f.mode = (f.mode & S_IFMT) | (attr->st_mode & 07777 & ~SETID_BITS);
        valid |= IDX_J_SET_MODE;
    }
    if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_ATIME_NOW)) {
        f.atime_ns = (to_set & FUSE_SET_ATTR_ATIME_NOW)
                         ? now
                         : (int64_t)attr->st_atim.tv_sec * 1000000000 + attr->st_atim.tv_nsec;
        valid |= IDX_J_SET_ATIME;
    }
    if (to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) {
        f.mtime_ns = (to_set & FUSE_SET_ATTR_MTIME_NOW)
                         ? now
                         : (int64_t)attr->st_mtim.tv_sec * 1000000000 + attr->st_mtim.tv_nsec;
        valid |= IDX_J_SET_MTIME;
    }
    if (valid) {
        if (valid & (IDX_J_SET_ATIME | IDX_J_SET_MTIME))
            valid |= IDX_J_SET_ATIME | IDX_J_SET_MTIME; /* SFTP v3 sets both */
        f.ctime_ns = now;
        idx_begin(m->idx);
        r = idx_put_keep_version(m->idx, &f);
        if (r == 0)
            r = journal(m, IDX_J_SETATTR, f.id, path, NULL, f.mode, 0, valid, &f, 0, 0);
        if ((r = end_batch(m, r)) != 0) {
            reply_err(req, r);
            return;
        }
        FS_STAT_ADD(&m->st, local_changes, 1);
    }
    file_to_stat(&f, &st);
    fuse_reply_attr(req, &st, kernel_ttl(m));
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    (void)fi;
    if (!m->writable) {
        /* nothing is ever written back, so a close has nothing to report: ENOSYS tells the
         * kernel to stop sending FLUSH at all (one round trip into mountd per close saved) */
        fuse_reply_err(req, ENOSYS);
        return;
    }
    /* close does not wait (unless flush_on_close); an error already known is reported */
    int r = wb_wait(m, (int64_t)ino, m->flush_on_close ? WB_FSYNC_TIMEOUT_MS : 0);
    fuse_reply_err(req, -r);
}

/* Ask the source to sync a file or folder to its disk, after everything journaled so far (a row
 * of the journal: sent on the same stream as the file's writes and the folder's entries, behind
 * them). */
static int journal_fsync(struct mountd *m, int64_t id)
{
    struct idx_file f;
    char path[PATH_MAX];
    int r;
    if (!m->writable || idx_get(m->idx, id, &f) != 0 || !(S_ISREG(f.mode) || S_ISDIR(f.mode)))
        return 0; /* nothing written back, or removed here: nothing on the source to sync */
    if ((r = md_node_path(m, id, path, sizeof(path))) != 0)
        return r;
    idx_begin(m->idx);
    r = journal(m, IDX_J_FSYNC, id, path, NULL, 0, 0, 0, NULL, 0, 0);
    return end_batch(m, r);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    (void)datasync, (void)fi;
    int r = journal_fsync(m, (int64_t)ino);
    if (r == 0)
        r = wb_wait(m, (int64_t)ino, WB_FSYNC_TIMEOUT_MS);
    if (r)
        md_log(m, "fsync of file %" PRIu64 ": %s", (uint64_t)ino, strerror(-r));
    fuse_reply_err(req, -r);
}

/* A folder's entries are durable on the source once every row before its sync row is answered:
 * so wait for all of them (a rename out of the folder may be behind a write elsewhere). */
static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    struct mountd *m = M(req);
    (void)datasync, (void)fi;
    int r = journal_fsync(m, (int64_t)ino);
    if (r == 0)
        r = wb_wait(m, 0, WB_FSYNC_TIMEOUT_MS);
    if (r)
        md_log(m, "fsync of folder %" PRIu64 ": %s", (uint64_t)ino, strerror(-r));
    fuse_reply_err(req, -r);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
    struct mountd *m = M(req);
    struct fuse_entry_param e;
    struct idx_file f;
    char from[PATH_MAX], to[PATH_MAX];
    int r;

    if (from_reflector(m, req)) {
        if (idx_get(m->idx, (int64_t)ino, &f) != 0) {
            fuse_reply_err(req, ENOENT);
            return;
        }
        fill_entry(m, &f, &e);
        fuse_reply_entry(req, &e);
        return;
    }
    if (!m->writable) {
        fuse_reply_err(req, EROFS);
        return;
    }
    /* the laptop makes the same link (hardlink@openssh.com): a server without it cannot */
    if (!tun_sftp_has_ext(m->sftp, "hardlink@openssh.com")) {
        fuse_reply_err(req, EPERM);
        return;
    }
    if (strlen(newname) > IDX_NAME_MAX) {
        fuse_reply_err(req, ENAMETOOLONG);
        return;
    }
    if ((r = md_node_path(m, (int64_t)ino, from, sizeof(from))) != 0 ||
        (r = child_path(m, (int64_t)newparent, newname, to, sizeof(to))) != 0) {
        reply_err(req, r);
        return;
    }
    int64_t now = md_wall_ns();
    idx_begin(m->idx);
    r = idx_link(m->idx, (int64_t)ino, (int64_t)newparent, newname, now, &f);
    if (r == 0)
        r = journal(m, IDX_J_LINK, f.id, from, to, 0, 0, 0, NULL, 0, 0);
    if (r == 0)
        touch_dir(m, (int64_t)newparent, now, 0);
    if ((r = end_batch(m, r)) != 0) {
        reply_err(req, r);
        return;
    }
    FS_STAT_ADD(&m->st, local_changes, 1);
    md_queue_inval(m, (fuse_ino_t)f.id); /* the link count and ctime, for cached attributes */
    fill_entry(m, &f, &e);
    fuse_reply_entry(req, &e);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    struct mountd *m = userdata;

    m->no_opendir = (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) != 0;
    m->no_open = (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) != 0;
    if (conn->capable & FUSE_CAP_SPLICE_WRITE)
        conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
    if (conn->capable & FUSE_CAP_READDIRPLUS)
        conn->want |= FUSE_CAP_READDIRPLUS;
    conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
        conn->want |= FUSE_CAP_CACHE_SYMLINKS;
    conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
    /* O_TRUNC must reach mountd as a SETATTR: in no-open mode there is no OPEN to carry it */
    conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
}

static const struct fuse_lowlevel_ops ops = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .readlink = op_readlink,
    .open = op_open,
    .read = op_read,
    .release = op_release,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
    .releasedir = op_releasedir,
    .statfs = op_statfs,
    .mknod = op_mknod,
    .create = op_create,
    .mkdir = op_mkdir,
    .symlink = op_symlink,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .rename = op_rename,
    .setattr = op_setattr,
    .write = op_write,
    .flush = op_flush,
    .fsync = op_fsync,
    .fsyncdir = op_fsyncdir,
    .link = op_link,
};

/* ---- options, paths, startup ---- */

static const char *const known_opts[] = {
    "ro",
    "allow_other",
    "allow_root",
    "default_permissions",
    "nosuid",
    "nodev",
    "noexec",
    "noatime",
    "relatime",
    "auto_unmount",
    "reconnect",
    "flush_on_close",
    "follow_replace",
    "nowrite",
    NULL,
};

int fs_mount_check_opt(const char *opt)
{
    for (int i = 0; known_opts[i]; i++)
        if (strcmp(opt, known_opts[i]) == 0)
            return 1;
    return 0;
}

const char *fs_mount_known_opts(void)
{
    return "ro, allow_other, allow_root, default_permissions, nosuid, nodev, noexec, noatime, "
           "relatime, auto_unmount, reconnect, flush_on_close, follow_replace, nowrite";
}

int fs_mount_stats_path(const char *mountpoint, char *out, size_t len)
{
    char real[PATH_MAX];
    const char *base;
    const char *rt = getenv("XDG_RUNTIME_DIR");

    if (realpath(mountpoint, real) == NULL)
        snprintf(real, sizeof(real), "%s", mountpoint);
    if (geteuid() == 0)
        base = "/run/offload";
    else if (rt && *rt)
        base = rt;
    else
        base = "/tmp";
    int n = snprintf(out, len, "%s/%smnt-%016" PRIx64 ".sock", base,
                     geteuid() == 0 || (rt && *rt) ? "" : "offload-", fnv1a(real));
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int mkdirs(const char *path, mode_t mode)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, mode) != 0 && errno != EEXIST)
                return -errno;
            *p = '/';
        }
    }
    if (mkdir(tmp, mode) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static bool is_mountpoint(const char *real)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[8192];
    bool yes = false;

    if (f == NULL)
        return false;
    while (!yes && fgets(line, sizeof(line), f)) {
        char mp[PATH_MAX];
        if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1) {
            /* mountinfo escapes spaces as \040 */
            char un[PATH_MAX], *o = un;
            for (char *p = mp; *p && o < un + sizeof(un) - 1; p++) {
                if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] && p[3]) {
                    *o++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
                    p += 3;
                } else {
                    *o++ = *p;
                }
            }
            *o = '\0';
            yes = strcmp(un, real) == 0;
        }
    }
    fclose(f);
    return yes;
}

static void stats_extra(void *arg, char *out, size_t len)
{
    struct mountd *m = arg;
    struct tun_sftp_stats s;
    long rss = 0, hwm = 0;
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");

    while (f && fgets(line, sizeof(line), f)) {
        sscanf(line, "VmRSS: %ld", &rss);
        sscanf(line, "VmHWM: %ld", &hwm);
    }
    if (f)
        fclose(f);
    tun_sftp_get_stats(m->sftp, &s);
    snprintf(out, len,
             ",\"round_trips\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,\"reconnects\":%llu,"
             "\"timeouts\":%llu,\"connected\":%s,\"cached_bytes\":%llu,\"cache_budget\":%llu,"
             "\"pid\":%d,\"rss_kb\":%ld,\"peak_rss_kb\":%ld,\"server\":\"%s\",\"root\":\"%s\","
             "\"cache_dir\":\"%s\",\"feed_live\":%s",
             (unsigned long long)s.requests, (unsigned long long)s.bytes_in,
             (unsigned long long)s.bytes_out, (unsigned long long)s.reconnects,
             (unsigned long long)s.timeouts, s.connected ? "true" : "false",
             (unsigned long long)idx_cached_bytes(m->idx), (unsigned long long)m->budget,
             (int)getpid(), rss, hwm, m->o.sftp.ssh.dest, m->root, m->cache_dir,
             atomic_load(&m->feed_live) ? "true" : "false");
}

static void report(int fd, char c)
{
    if (fd >= 0) {
        ssize_t w = write(fd, &c, 1);
        (void)w;
        close(fd);
    }
}

static int open_cache(struct mountd *m)
{
    char dbpath[PATH_MAX + 16], owner[PATH_MAX + 600], want[PATH_MAX + 600];
    int r;

    snprintf(want, sizeof(want), "%s:%s", m->o.sftp.ssh.dest, m->root);
    if (m->o.cache_dir) {
        snprintf(m->cache_dir, sizeof(m->cache_dir), "%s", m->o.cache_dir);
    } else {
        const char *home = getenv("HOME");
        snprintf(m->cache_dir, sizeof(m->cache_dir), "%s/.cache/offload/mounts/%016" PRIx64,
                 home && *home ? home : "/tmp", fnv1a(want));
    }
    snprintf(dbpath, sizeof(dbpath), "%s/data", m->cache_dir);
    if ((r = mkdirs(dbpath, 0700)) != 0) {
        fprintf(stderr, "offload: cannot create cache dir '%s': %s\n", m->cache_dir, strerror(-r));
        return r;
    }
    snprintf(dbpath, sizeof(dbpath), "%s/index.db", m->cache_dir);
    if ((r = idx_open(dbpath, &m->idx)) != 0) {
        fprintf(stderr, "offload: cannot open the block index '%s': %s\n", dbpath, strerror(-r));
        return r;
    }
    idx_set_exclusive(m->idx); /* mountd is the index's only user while mounted */
    if ((r = idx_set_group_commit(m->idx, GROUP_COMMIT_MS)) != 0)
        fprintf(stderr, "offload: index changes are committed one by one: %s\n", strerror(-r));
    if (idx_meta_get(m->idx, "remote", owner, sizeof(owner)) == 0 && strcmp(owner, want) != 0) {
        fprintf(stderr,
                "offload: cache dir '%s' belongs to '%s', not '%s': give another "
                "--cache-dir or remove it\n",
                m->cache_dir, owner, want);
        return -EEXIST;
    }
    return idx_meta_set(m->idx, "remote", want);
}

/* Is 'name' one of the comma-separated options in 'list'? */
static bool opt_listed(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

int fs_mount_run(const struct fs_mount_opts *o, int ready_fd)
{
    struct mountd *m = calloc(1, sizeof(*m));
    char err[1024], real_mp[PATH_MAX], sock[PATH_MAX], fsname[PATH_MAX + 600],
        mopts[PATH_MAX * 2 + 4096];
    struct tun_sftp_attr ra;
    struct idx_file root;
    struct stat st;
    int r, status = 1;
    bool mounted = false, signals = false;

    if (m == NULL) {
        report(ready_fd, '1');
        return 1;
    }
    m->o = *o;
    m->ttl_ns = (int64_t)(o->attr_ttl_ms < 0 ? 20000 : o->attr_ttl_ms) * 1000000;
    m->ttl_s = (double)m->ttl_ns / 1e9;
    m->epoch_ns = md_wall_ns();
    m->budget = o->cache_size ? o->cache_size : 10ULL << 30;
    pthread_mutex_init(&m->of_lock, NULL);
    pthread_mutex_init(&m->rf_lock, NULL);
    pthread_mutex_init(&m->recent_lock, NULL);
    pthread_mutex_init(&m->bg_lock, NULL);
    pthread_cond_init(&m->bg_cond, NULL);
    pthread_cond_init(&m->inval_cond, NULL);
    pthread_cond_init(&m->pf_cond, NULL);
    pthread_cond_init(&m->done_cond, NULL);
    pthread_cond_init(&m->list_cond, NULL);

    /* the mountpoint first: the cheapest check */
    if (realpath(o->mountpoint, real_mp) == NULL || stat(real_mp, &st) != 0) {
        fprintf(stderr, "offload: cannot mount on '%s': %s\n", o->mountpoint, strerror(errno));
        goto out;
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "offload: cannot mount on '%s': not a directory\n", o->mountpoint);
        goto out;
    }
    if (is_mountpoint(real_mp)) {
        fprintf(stderr, "offload: cannot mount on '%s': mountpoint is busy (already a mount)\n",
                o->mountpoint);
        goto out;
    }

    /* our name to `offload serve` (client-id@offload): its feed tells our own changes apart */
    if (getrandom(&m->o.sftp.client_id, sizeof(m->o.sftp.client_id), 0) !=
            sizeof(m->o.sftp.client_id) ||
        m->o.sftp.client_id == 0)
        m->o.sftp.client_id = ((uint64_t)getpid() << 32 | (uint64_t)time(NULL)) | 1;
    if ((r = tun_sftp_start(&m->o.sftp, &m->sftp, err, sizeof(err))) != 0) {
        fprintf(stderr, "offload: %s\n", err);
        goto out;
    }
    if ((r = tun_sftp_realpath(m->sftp, o->remote_path[0] ? o->remote_path : ".", m->root,
                               sizeof(m->root))) != 0 ||
        (r = tun_sftp_stat(m->sftp, m->root, &ra)) != 0) {
        fprintf(stderr, "offload: cannot mount '%s:%s': %s\n", o->sftp.ssh.dest, o->remote_path,
                strerror(r == -ENODATA ? ENOENT : -r));
        goto out;
    }
    if (!S_ISDIR(ra.perm)) {
        fprintf(stderr, "offload: cannot mount '%s:%s': not a directory\n", o->sftp.ssh.dest,
                o->remote_path);
        goto out;
    }
    if (open_cache(m) != 0)
        goto out;
    memset(&root, 0, sizeof(root));
    root.parent = 0;
    attr_to_file(&ra, md_wall_ns(), &root);
    root.list_time_ns = 0;
    /* keep the root's version: a folder's version means nothing, and a change of identity is
     * refused while files below hold local writes not yet written back */
    if ((r = idx_put_keep_version(m->idx, &root)) != 0 || root.id != IDX_ROOT_ID) {
        fprintf(stderr, "offload: cannot record the root in the index (%d)\n", r);
        goto out;
    }
    /* the change feed, when the server offers one: the first snapshot fills the index */
    if ((r = fm_start(m)) != 0)
        md_log(m, "cannot start the change feed: %s (going on without)", strerror(-r));
    if (o->stats_socket)
        snprintf(sock, sizeof(sock), "%s", o->stats_socket);
    else
        fs_mount_stats_path(real_mp, sock, sizeof(sock));
    {
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", sock);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            mkdirs(dir, 0755);
        }
    }
    if ((r = fs_stats_serve(sock, &m->st, stats_extra, m, &m->srv)) != 0)
        fprintf(stderr, "offload: cannot serve counters on '%s': %s (going on)\n", sock,
                strerror(-r));

    snprintf(fsname, sizeof(fsname), "fsname=offload:%s:%s,subtype=offload", o->sftp.ssh.dest,
             m->root);
    /* commas in fsname would split the option list */
    for (char *p = fsname + 7; *p && strncmp(p, ",subtype", 8) != 0; p++)
        if (*p == ',')
            *p = '_';
    /* under a live feed the mount is read-write at the VFS level so that reflected changes
     * reach inotify watchers; every write from anyone else is refused with EROFS by mountd.
     * An explicit -o ro keeps the superblock read-only and turns reflection off: no inotify
     * events for laptop changes, but no GETATTR per directory after a readdir either (the
     * kernel invalidates a directory's atime after readdir on a writable superblock only). */
    /* -o nowrite: mountd refuses every write (EROFS) but the superblock stays read-write, so
     * that the feed's changes still raise inotify events in the mount (a docker :ro bind) */
    bool vfs_rw = !opt_listed(o->fuse_opts, "ro");
    m->writable = vfs_rw && !opt_listed(o->fuse_opts, "nowrite");
    /* the feed may go live after the mount appears (--snapshot-wait): replays are on as soon as
     * there is a feed client at all, since only a live feed has changes to replay */
    m->reflect = m->fm != NULL && vfs_rw;
    m->flush_on_close = opt_listed(o->fuse_opts, "flush_on_close");
    m->follow_replace = opt_listed(o->fuse_opts, "follow_replace");
    char fopts[2048] = "";
    for (const char *p = o->fuse_opts; p && *p;) { /* our own options are not FUSE's */
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (!(len == 14 && strncmp(p, "flush_on_close", 14) == 0) &&
            !(len == 14 && strncmp(p, "follow_replace", 14) == 0) &&
            !(len == 7 && strncmp(p, "nowrite", 7) == 0) && strlen(fopts) + len + 2 < sizeof(fopts))
            snprintf(fopts + strlen(fopts), sizeof(fopts) - strlen(fopts), ",%.*s", (int)len, p);
        p = e ? e + 1 : NULL;
    }
    snprintf(mopts, sizeof(mopts), "%s,%s,default_permissions,nosuid,nodev%s%s", fsname,
             vfs_rw ? "rw" : "ro", geteuid() == 0 ? ",allow_other" : "", fopts);
    char *argv[] = {"offload", "-o", mopts, o->debug ? "-d" : NULL, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(o->debug ? 4 : 3, argv);
    m->se = fuse_session_new(&args, &ops, sizeof(ops), m);
    fuse_opt_free_args(&args);
    if (m->se == NULL) {
        fprintf(stderr, "offload: cannot create the FUSE session (options '%s')\n", mopts);
        goto out;
    }
    if (fuse_set_signal_handlers(m->se) != 0)
        goto out;
    signals = true;
    if (fuse_session_mount(m->se, real_mp) != 0) {
        fprintf(stderr,
                "offload: cannot mount on '%s' (is /dev/fuse there? as a user, is "
                "user_allow_other set when needed?)\n",
                o->mountpoint);
        goto out;
    }
    mounted = true;
    if (m->writable && (r = wb_start(m)) != 0) {
        fprintf(stderr, "offload: cannot start the write-back thread: %s\n", strerror(-r));
        goto out;
    }
    snprintf(m->mountpoint, sizeof(m->mountpoint), "%s", real_mp);
    atomic_store(&m->mounted, true);
    pthread_create(&m->flusher, NULL, flusher_main, m);
    pthread_create(&m->invalidator, NULL, invalidator_main, m);
    pthread_create(&m->writer, NULL, writer_main, m);
    for (int i = 0; i < PF_THREADS; i++)
        pthread_create(&m->prefetchers[i], NULL, prefetch_main, m);
    if (vfs_rw && m->fm && ar_start(m) != 0)
        md_log(m, "cannot start the attribute refresher: stats after a listing will be slower");
    if (ready_fd >= 0) {
        /* detached: from now on the log goes to the cache dir, the terminal is released */
        char logpath[PATH_MAX + 16];
        snprintf(logpath, sizeof(logpath), "%s/mountd.log", m->cache_dir);
        int lfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        report(ready_fd, '0');
        ready_fd = -1;
        if (chdir("/") != 0)
            md_log(m, "cannot leave the working directory: %s", strerror(errno));
        if (lfd >= 0) {
            dup2(lfd, 2);
            close(lfd);
        }
    }
    md_log(m, "mounted '%s:%s' on '%s' (cache '%s', counters '%s')", o->sftp.ssh.dest, m->root,
           real_mp, m->cache_dir, sock);

    struct fuse_loop_config cfg = {.clone_fd = 0, .max_idle_threads = 16};
    r = fuse_session_loop_mt(m->se, &cfg);
    status = r == 0 ? 0 : 1;
    atomic_store(&m->mounted, false);
    ar_stop(m);

    pthread_mutex_lock(&m->bg_lock);
    m->stopping = true;
    pthread_cond_broadcast(&m->bg_cond);
    pthread_cond_broadcast(&m->inval_cond);
    pthread_cond_broadcast(&m->pf_cond);
    pthread_mutex_unlock(&m->bg_lock);
    pthread_join(m->flusher, NULL);
    pthread_join(m->invalidator, NULL);
    fm_stop(m);
    wb_stop(m); /* rows not acknowledged stay in the journal for the next mount */
    for (int i = 0; i < PF_THREADS; i++)
        pthread_join(m->prefetchers[i], NULL);
    /* the writer drains what the network already delivered; what is still in flight is
     * completed (with an error) when the sftp client stops, after the writer is gone, so
     * stop the client first (and the counters, which read it) */
    fs_stats_stop(m->srv);
    m->srv = NULL;
    tun_sftp_stop(m->sftp);
    m->sftp = NULL;
    pthread_mutex_lock(&m->bg_lock);
    m->writer_stop = true;
    pthread_cond_broadcast(&m->done_cond);
    pthread_mutex_unlock(&m->bg_lock);
    pthread_join(m->writer, NULL);
    of_drop_kept(m);
    flush_blocks(m);
    md_log(m, "unmounted '%s'", real_mp);
out:
    report(ready_fd, status == 0 ? '0' : '1');
    if (mounted)
        fuse_session_unmount(m->se);
    if (signals)
        fuse_remove_signal_handlers(m->se);
    ar_join(m); /* after the unmount: a stat it had in flight has ended with the connection */
    if (m->se)
        fuse_session_destroy(m->se);
    fs_stats_stop(m->srv);
    fm_stop(m);
    wb_stop(m);
    if (m->sftp)
        tun_sftp_stop(m->sftp);
    if (m->idx)
        idx_close(m->idx);
    free(m->pend);
    free(m->touch);
    free(m->pf);
    free(m->pf_files);
    free(m->inval);
    free(m->inval_ent);
    free(m);
    return status;
}
