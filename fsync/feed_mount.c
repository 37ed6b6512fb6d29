/* feed_mount.c - mountd's side of the change feed (docs/feed.md): subscribe, load the snapshot
 * into the index, apply each batch (metadata, carried-over and pushed blocks), invalidate the
 * kernel's caches, acknowledge; fall back to TTL caching and resubscribe when the feed breaks.
 *
 * Threads: one feed thread owns its own SSH session (the SFTP client's session belongs to the
 * SFTP owner thread) and does all applying. fm_hold may be called from any thread: it only queues
 * a frame under fm->lock, which the feed thread sends.
 */
#include "mountd_int.h"

#include "deadline.h"
#include "feed_codec.h"
#include "ssh_client.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libssh/libssh.h>

#define FEED_SUBSYS        "offload-feed@offload"
#define FIRST_SNAP_WAIT_MS 30000 /* by default, mount waits this long for the first snapshot */
#define RX_CHUNK           (256u << 10)

/* A file whose content changed in the batch being applied. Its new version starts with no cached
 * block; the cached blocks of the old version are carried over when the file's HASHES are all in
 * (at the next frame about another file, or at BATCH_END), minus those the HASHES say changed
 * (blocks not listed are unchanged, docs/feed.md). What we hold of the old version is what the
 * agent hashed for it: fetches store only bytes of the row's own inode (fetch_ident_done), and the
 * agent hashes the inode it announced. So a reader never sees a carried block that is stale. */
struct pending {
    int64_t id;          /* 0: none */
    struct idx_file now; /* the new version's row */
    struct idx_file old; /* the old version's row (its cache file stays until the carry) */
    struct idx_block *v; /* the old version's cached blocks, by blkno */
    bool *drop;          /* v[i] changed: not carried */
    size_t n, cap;
    int in; /* the old version's cache file, opened before its row can go; -1 */
};

struct fm {
    struct mountd *m;
    pthread_t thread;
    char root[NAME_MAX + 2]; /* "/name": the exported root subscribed to */

    pthread_mutex_t lock; /* protects everything up to 'snap_cond' */
    pthread_cond_t snap_cond;
    pthread_cond_t pend_cond; /* broadcast when pend_id goes back to 0 */
    int64_t pend_id;          /* the file whose change is being applied, 0 for none */
    bool stop;
    bool first_done; /* the first snapshot was applied, or the feed gave up */
    struct feed_enc enc;
    struct buf out; /* frames waiting to be sent */
    int64_t *held;  /* ids of files whose blocks mountd caches: open addressing, 0 = free */
    size_t held_cap, held_n;

    /* feed thread only */
    ssh_session s;
    ssh_channel ch;
    struct feed_dec dec;
    struct buf rx;
    bool in_batch, in_snap, snap_seen;
    bool tags;              /* the agent tags our own changes (HELLO flag; we sent CLIENT) */
    bool own_next;          /* an OWN frame came: the next frame is our own change */
    bool own;               /* the frame being applied is (an ENTRY, REMOVE or RENAME after OWN) */
    char echo_of[PATH_MAX]; /* the last ENTRY taken for an echo: its HASHES and DATA are too */
    int64_t stamp;
    struct pending pend; /* the file whose content changed last: blocks to carry over */
    int64_t hfile;       /* the file of the last HASHES frame, and its hashes, for DATA checks */
    uint64_t hfirst;
    uint32_t hn;
    uint8_t *hh;
    uint64_t batches, applied;
    struct md_reflection *rq; /* reflections of the open batch, made after its commit */
    size_t n_rq, cap_rq;
    int64_t *keep; /* rows written back lately: a snapshot must not prune them */
    size_t n_keep;
    int64_t *grown; /* folders that got new names in the open batch: their listings go after it */
    size_t n_grown, cap_grown;
};

/* --- held set and outgoing frames (any thread) --------------------------------------------- */

static bool held_add(struct fm *fm, int64_t id)
{
    if ((fm->held_n + 1) * 2 > fm->held_cap) {
        size_t cap = fm->held_cap ? fm->held_cap * 2 : 256;
        int64_t *n = calloc(cap, sizeof(*n));
        if (!n)
            return false;
        for (size_t i = 0; i < fm->held_cap; i++)
            if (fm->held[i]) {
                size_t j = (uint64_t)fm->held[i] * 0x9E3779B97F4A7C15ull & (cap - 1);
                while (n[j])
                    j = (j + 1) & (cap - 1);
                n[j] = fm->held[i];
            }
        free(fm->held);
        fm->held = n;
        fm->held_cap = cap;
    }
    size_t j = (uint64_t)id * 0x9E3779B97F4A7C15ull & (fm->held_cap - 1);
    while (fm->held[j]) {
        if (fm->held[j] == id)
            return false;
        j = (j + 1) & (fm->held_cap - 1);
    }
    fm->held[j] = id;
    fm->held_n++;
    return true;
}

/* The feed path of row id: its server path without the root. */
static int feed_path(struct mountd *m, int64_t id, char *out, size_t len)
{
    char p[PATH_MAX];
    int r = md_node_path(m, id, p, sizeof(p));
    if (r < 0)
        return r;
    size_t n = strlen(m->fm->root);
    if (strncmp(p, m->fm->root, n) != 0 || (p[n] && p[n] != '/'))
        return -EINVAL;
    snprintf(out, len, "%s", p[n] ? p + n + 1 : "");
    return 0;
}

void fm_hold(struct mountd *m, int64_t id)
{
    struct fm *fm = m->fm;
    char path[PATH_MAX];
    pthread_mutex_lock(&fm->lock);
    bool added = held_add(fm, id);
    pthread_mutex_unlock(&fm->lock);
    if (!added || feed_path(m, id, path, sizeof(path)) < 0 || !*path)
        return;
    pthread_mutex_lock(&fm->lock);
    feed_put_path(&fm->enc, &fm->out, FEED_HOLD, path);
    pthread_mutex_unlock(&fm->lock);
}

/* --- applying ------------------------------------------------------------------------------ */

/* Reflections go through the mount, which may wait for locks held by processes that in turn wait
 * for the index (an fsync waits for the write-back, which cannot scan the journal while a batch
 * is open): so they are made after the batch's commit, never inside it. */
static void reflect_later(struct fm *fm, const struct md_reflection *rf)
{
    if (fm->n_rq == fm->cap_rq) {
        size_t cap = fm->cap_rq ? fm->cap_rq * 2 : 64;
        struct md_reflection *v = realloc(fm->rq, cap * sizeof(*v));
        if (!v)
            return; /* an event fewer for the watchers; the data is right */
        fm->rq = v;
        fm->cap_rq = cap;
    }
    struct md_reflection *q = &fm->rq[fm->n_rq];
    *q = *rf;
    q->path = strdup(rf->path);
    q->path2 = rf->path2 ? strdup(rf->path2) : NULL;
    q->hide_name = rf->hide_name ? strdup(rf->hide_name) : NULL;
    if (!q->path || (rf->path2 && !q->path2) || (rf->hide_name && !q->hide_name)) {
        free((char *)q->path);
        free((char *)q->path2);
        free((char *)q->hide_name);
        return;
    }
    fm->n_rq++;
}

static void reflect_queued(struct fm *fm, bool run)
{
    for (size_t i = 0; i < fm->n_rq; i++) {
        if (run)
            md_reflect(fm->m, &fm->rq[i]);
        free((char *)fm->rq[i].path);
        free((char *)fm->rq[i].path2);
        free((char *)fm->rq[i].hide_name);
    }
    fm->n_rq = 0;
}

static void split(const char *path, char *dir, size_t len, const char **base)
{
    const char *s = strrchr(path, '/');
    size_t n = s ? (size_t)(s - path) : 0;
    if (n >= len)
        n = len - 1;
    memcpy(dir, path, n);
    dir[n] = '\0';
    *base = s ? s + 1 : path;
}

static int collect_cached(void *arg, const struct idx_block *b)
{
    struct pending *p = arg;
    if (!b->cached)
        return 0;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        struct idx_block *v = realloc(p->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        p->v = v;
        p->cap = cap;
    }
    p->v[p->n++] = *b;
    return 0;
}

static struct idx_block *pending_find(struct pending *p, uint64_t blk, size_t *i)
{
    size_t lo = 0, hi = p->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->v[mid].blkno == blk) {
            *i = mid;
            return &p->v[mid];
        }
        if (p->v[mid].blkno < blk)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Copy the old version's cached blocks that the new one keeps into the new cache file and record
 * them; then the old cache file goes. */
static void pending_finish(struct fm *fm)
{
    struct mountd *m = fm->m;
    struct pending *p = &fm->pend;
    if (!p->id)
        return;
    const struct idx_file *f = &p->now;
    uint64_t nb = (f->size + FS_BLOCK_SIZE - 1) / FS_BLOCK_SIZE;
    int in = p->in;
    int out = p->n && in >= 0 ? fs_cache_open(m->cache_dir, f->id, f->version, f->size) : -1;
    for (size_t i = 0; in >= 0 && out >= 0 && i < p->n; i++) {
        const struct idx_block *b = &p->v[i];
        uint64_t want = b->blkno + 1 < nb ? FS_BLOCK_SIZE : f->size - b->blkno * FS_BLOCK_SIZE;
        if ((p->drop && p->drop[i]) || b->blkno >= nb || b->len != want)
            continue;
        struct idx_block cur;
        if (idx_block_get(m->idx, f->id, b->blkno, &cur) == 0 && cur.cached &&
            cur.version == f->version)
            continue; /* pushed (DATA) or fetched meanwhile */
        loff_t oi = (loff_t)(b->blkno * FS_BLOCK_SIZE), oo = oi;
        size_t left = b->len;
        while (left > 0) {
            ssize_t k = copy_file_range(in, &oi, out, &oo, left, 0);
            if (k <= 0)
                break;
            left -= (size_t)k;
        }
        if (left)
            continue;
        struct idx_block nbk = *b;
        nbk.version = f->version;
        if (idx_block_put(m->idx, &nbk) == 0)
            md_block_cached(m, f->id, f->version, nbk.blkno, nbk.hash);
    }
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    fs_cache_remove(m->cache_dir, p->old.id, p->old.version);
    free(p->v);
    free(p->drop);
    memset(p, 0, sizeof(*p));
    p->in = -1;
    pthread_mutex_lock(&fm->lock);
    fm->pend_id = 0;
    pthread_cond_broadcast(&fm->pend_cond);
    pthread_mutex_unlock(&fm->lock);
}

void fm_wait_file(struct mountd *m, int64_t id)
{
    struct fm *fm = m->fm;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 2;
    pthread_mutex_lock(&fm->lock);
    while (fm->pend_id == id && !fm->stop)
        if (pthread_cond_timedwait(&fm->pend_cond, &fm->lock, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&fm->lock);
}

/* What a change reported by the feed is about, for echo(). */
enum echo_kind {
    EK_CONTENT, /* an ENTRY of a regular file */
    EK_NAME,    /* a REMOVE, either name of a RENAME */
    EK_OTHER,   /* an ENTRY of a folder (whose times every change inside moves) or a symlink */
};

/* Is the change the feed reports for 'rel' our own (its echo), to be left alone?
 * - With an agent that tags: what it tagged OWN (the path still looks as one of our SFTP
 *   client's changes left it, or our client removed or renamed that name, however late the agent
 *   reports it), and any change to a file whose own changes are still journaled here (they
 *   land after it: the local copy wins). A regular file's content and a name that still exists
 *   here are foreign otherwise: a laptop edit, rm or mv right after a container's change to
 *   the same file is applied at once. A name that is gone here (removed or renamed away, not
 *   yet on the laptop) is judged by the window below: a late report of its earlier state must
 *   not bring it back.
 * - Folders and symlinks, and everything with an older agent: also any path changed through
 *   the mount in the last ECHO_WINDOW_NS. The agent may report a burst of our changes late,
 *   against names that changed again since here: replaying those on the newer state would
 *   undo it. */
/* The source path of 'rel' (relative to the export), as the journal names it. */
static void src_path(const struct fm *fm, const char *rel, char *out, size_t len)
{
    snprintf(out, len, "%s%s%s", fm->root, *rel ? "/" : "", rel);
}

static bool echo(struct fm *fm, const char *rel, enum echo_kind kind)
{
    char p[PATH_MAX + NAME_MAX + 2];
    struct idx_file f;
    uint64_t n = 0;
    if (!fm->m->writable)
        return false;
    if (fm->tags) {
        int found = *rel ? idx_resolve(fm->m->idx, rel, &f) : -ENOENT;
        if (fm->own ||
            (found == 0 && idx_journal_count(fm->m->idx, f.id, INT64_MAX, &n) == 0 && n > 0))
            return true;
        if (kind != EK_OTHER && found == 0)
            return false;
    }
    src_path(fm, rel, p, sizeof(p));
    return md_recent_local(fm->m, p);
}

/* Is RENAME from -> to the echo of a rename we made ourselves in the echo window? The names
 * alone cannot tell once the old name is used again here (a new file 'from' made right after
 * the rename): applied as a laptop change, the echo would move that new file away. */
static bool echo_rename(struct fm *fm, const char *from, const char *to)
{
    char a[PATH_MAX + NAME_MAX + 2], b[PATH_MAX + NAME_MAX + 2];
    if (!fm->m->writable)
        return false;
    src_path(fm, from, a, sizeof(a));
    src_path(fm, to, b, sizeof(b));
    return md_recent_rename(fm->m, a, b);
}

/* Are the HASHES or DATA for 'rel' those of an ENTRY taken for an echo? */
static bool echo_content(struct fm *fm, const char *rel)
{
    return (fm->tags && strcmp(rel, fm->echo_of) == 0) || echo(fm, rel, EK_CONTENT);
}

static bool grow_grown(struct fm *fm)
{
    size_t cap = fm->cap_grown ? fm->cap_grown * 2 : 64;
    int64_t *v = realloc(fm->grown, cap * sizeof(*v));
    if (!v)
        return false;
    fm->grown = v;
    fm->cap_grown = cap;
    return true;
}

static int apply_entry(struct fm *fm, const struct feed_entry *e)
{
    struct mountd *m = fm->m;
    struct idx_file parent, old, f;
    char dir[PATH_MAX];
    const char *base;
    int r;

    memset(&f, 0, sizeof(f));
    if (!fm->in_snap && echo(fm, e->path, S_ISREG(e->mode) ? EK_CONTENT : EK_OTHER)) {
        snprintf(fm->echo_of, sizeof(fm->echo_of), "%s", e->path);
        FS_STAT_ADD(&m->st, feed_echoes, 1);
        /* The echo of our own change: content and version stay ours. Its times are the source's
         * though (a write-back's writes set the laptop's mtime when they land, seconds after the
         * write here): take them when they differ by a second or more, so that both sides show
         * the same mtime (a difference below a second is the ns an SFTP v3 SETSTAT drops). */
        if (*e->path && idx_resolve(m->idx, e->path, &old) == 0 && S_ISREG(old.mode) &&
            S_ISREG(e->mode) && old.size == e->size &&
            old.mtime_ns / 1000000000 != e->mtime_ns / 1000000000) {
            old.mtime_ns = e->mtime_ns;
            old.atime_ns = e->atime_ns;
            old.ctime_ns = e->ctime_ns;
            if (idx_put_keep_version(m->idx, &old) == 0)
                md_queue_inval(m, (fuse_ino_t)old.id);
        }
        return 0;
    }
    if (*e->path) {
        split(e->path, dir, sizeof(dir), &base);
        if ((r = idx_resolve(m->idx, dir, &parent)) < 0)
            return r == -ENOENT ? -EPROTO : r; /* parents come before children */
        if (!S_ISDIR(parent.mode))
            return -EPROTO;
        f.parent = parent.id;
        snprintf(f.name, sizeof(f.name), "%s", base);
        r = idx_lookup(m->idx, parent.id, base, &old);
    } else {
        base = "";
        parent.id = 0;
        r = idx_get(m->idx, IDX_ROOT_ID, &old);
    }
    if (r < 0 && r != -ENOENT)
        return r;
    bool known = r == 0;
    if (known && (old.mode & S_IFMT) != (e->mode & S_IFMT) && *e->path) {
        if ((r = idx_delete(m->idx, old.row, md_gone_cb, m)) < 0)
            return r;
        md_queue_inval_entry(m, (fuse_ino_t)parent.id, base);
        known = false;
    }
    pending_finish(fm); /* a frame about another file: the last one's HASHES are all in */
    struct pending next = {.in = -1};
    if (known && S_ISREG(old.mode) && !fm->in_snap &&
        idx_blocks(m->idx, old.id, old.version, collect_cached, &next) < 0)
        next.n = 0;
    bool dirty = false;
    for (size_t i = 0; i < next.n; i++)
        dirty |= next.v[i].dirty;
    if (next.n)
        next.in = fs_cache_open_ro(m->cache_dir, old.id, old.version);
    /* Another file under the same name (the laptop's inode changed: an editor's atomic save, a
     * copy over it) is another file here too: the old row goes and a new one (a new inode number)
     * takes the name, as on a local disk. A process that had the old file open keeps reading the
     * old content, never a page-by-page mix of the two; blocks the HASHES show unchanged are
     * still carried over. (Local writes not yet written back keep the row: idx_put refuses.)
     * With -o follow_replace the row is kept instead (a new version), so that a container's
     * bind of that one file, which holds the inode, follows the name: single-file binds stay
     * live across an editor's atomic save, at the price of the page mix described in
     * docs/architecture.md for a read that races the save. */
    bool replaced = known && S_ISREG(old.mode) && S_ISREG(e->mode) && *e->path && old.ino != 0 &&
                    (old.ino != e->ino || old.dev != e->dev) && !dirty && !m->follow_replace;
    if (replaced) {
        if ((r = idx_delete(m->idx, old.row, md_gone_cb, m)) < 0) {
            if (next.in >= 0)
                close(next.in);
            free(next.v);
            return r;
        }
        md_queue_inval_entry(m, (fuse_ino_t)parent.id, base);
        known = false;
        if (fm->snap_seen && !fm->in_snap) {
            struct md_reflection rf = {.kind = MD_RF_DELETE, .path = e->path, .ghost = old};
            reflect_later(fm, &rf);
        }
    }

    f.mode = e->mode;
    f.uid = e->uid;
    f.gid = e->gid;
    f.nlink = e->nlink;
    f.size = e->size;
    f.atime_ns = e->atime_ns;
    f.mtime_ns = e->mtime_ns;
    f.ctime_ns = e->ctime_ns;
    f.dev = e->dev;
    f.ino = e->ino;
    f.attr_time_ns = fm->stamp;
    /* A snapshot sends a folder before its children: the folder is known whole only at the
     * snapshot's end (SNAP_END marks them all). Until then a reader of a mount served during
     * the snapshot (--snapshot-wait, a resubscribe) is answered by the last listing, or by the
     * source, never by a folder half applied. 0 keeps the row's listing time. */
    f.list_time_ns = S_ISDIR(e->mode) && !fm->in_snap ? fm->stamp : 0;
    int changed = idx_put(m->idx, &f);
    if (changed == -EBUSY) {
        /* written through the mount and not yet written back: the local copy wins until it is
         * (the source sends the file again once it changes there) */
        if (next.in >= 0)
            close(next.in);
        free(next.v);
        return 0;
    }
    if (changed < 0) {
        if (next.in >= 0)
            close(next.in);
        free(next.v);
        return changed;
    }
    if (replaced)
        changed = 1; /* a new row: what it can take from the old one is carried over below */
    if (S_ISLNK(e->mode))
        idx_set_link(m->idx, f.id, e->link);
    if (changed == 1 && next.n && (next.drop = calloc(next.n, sizeof(bool)))) {
        next.id = f.id;
        next.now = f;
        next.old = old;
        fm->pend = next; /* carried over once its HASHES are in */
        pthread_mutex_lock(&fm->lock);
        fm->pend_id = f.id;
        pthread_mutex_unlock(&fm->lock);
    } else {
        if (changed == 1)
            fs_cache_remove(m->cache_dir, old.id, old.version);
        if (next.in >= 0)
            close(next.in);
        free(next.v);
    }
    if (changed == 1)
        fm->hfile = 0;
    bool meta = !known || changed == 1 || old.mode != f.mode || old.uid != f.uid ||
                old.gid != f.gid || old.size != f.size || old.mtime_ns != f.mtime_ns ||
                old.ctime_ns != f.ctime_ns || old.nlink != f.nlink;
    if (changed == 1)
        md_file_changed(m, f.id, f.version); /* before the invalidation: see op_read */
    if (known && meta)
        md_queue_inval(m, (fuse_ino_t)f.id);
    /* the mount was served before this batch (a live feed, or one that was lost, or a mount
     * made before its first snapshot: --snapshot-wait) */
    bool served = fm->snap_seen || atomic_load(&m->mounted);
    if (!known && *e->path && served) {
        md_queue_inval_entry(m, (fuse_ino_t)parent.id, base); /* a negative dentry */
        if ((fm->n_grown == 0 || fm->grown[fm->n_grown - 1] != parent.id) &&
            (fm->n_grown < fm->cap_grown || grow_grown(fm)))
            fm->grown[fm->n_grown++] = parent.id;
        if (m->o.debug)
            md_log(m, "feed: new entry '%s'", e->path);
    }
    fm->applied++;
    if (m->o.debug && fm->snap_seen && !fm->in_snap && known && meta)
        md_log(m, "feed: changed entry '%s'%s", e->path, changed == 1 ? " (content)" : "");
    if (fm->snap_seen && !fm->in_snap && *e->path && (!known || meta)) {
        struct md_reflection rf = {.path = e->path, .mode = f.mode, .mtime_ns = f.mtime_ns};
        rf.kind = !known ? MD_RF_CREATE : changed == 1 ? MD_RF_MODIFY : MD_RF_ATTRIB;
        rf.hide_parent = parent.id;
        rf.hide_name = base;
        reflect_later(fm, &rf);
    }
    return 0;
}

static int apply_remove(struct fm *fm, const char *path)
{
    struct mountd *m = fm->m;
    struct idx_file f;
    int r;
    if (!*path)
        return -EPROTO;
    pending_finish(fm);
    if (echo(fm, path, EK_NAME)) {
        FS_STAT_ADD(&m->st, feed_echoes, 1);
        return 0;
    }
    if ((r = idx_resolve(m->idx, path, &f)) < 0)
        return r == -ENOENT ? 0 : r; /* already gone */
    if ((r = idx_delete(m->idx, f.row, md_gone_cb, m)) < 0)
        return r;
    md_queue_inval_entry(m, (fuse_ino_t)f.parent, f.name);
    md_queue_inval(m, (fuse_ino_t)f.id); /* another name of it may stay: its link count */
    fm->applied++;
    if (fm->snap_seen && !fm->in_snap) {
        struct md_reflection rf = {.kind = MD_RF_DELETE, .path = path, .ghost = f};
        reflect_later(fm, &rf);
    }
    return 0;
}

static int apply_rename(struct fm *fm, const char *from, const char *to)
{
    struct mountd *m = fm->m;
    struct idx_file f, dst;
    char dir[PATH_MAX];
    const char *base;
    int r;
    if (!*from || !*to)
        return -EPROTO;
    pending_finish(fm);
    if (echo_rename(fm, from, to) || echo(fm, from, EK_NAME) || echo(fm, to, EK_NAME)) {
        FS_STAT_ADD(&m->st, feed_echoes, 1);
        return 0;
    }
    split(to, dir, sizeof(dir), &base);
    if ((r = idx_resolve(m->idx, from, &f)) < 0 || (r = idx_resolve(m->idx, dir, &dst)) < 0)
        return r == -ENOENT ? -EPROTO : r;
    if ((r = idx_rename(m->idx, f.row, dst.id, base, md_gone_cb, m)) < 0)
        return r == -ENOENT || r == -EINVAL || r == -ENOTDIR ? -EPROTO : r;
    md_queue_inval_entry(m, (fuse_ino_t)f.parent, f.name);
    md_queue_inval_entry(m, (fuse_ino_t)dst.id, base);
    md_queue_inval(m, (fuse_ino_t)f.id);
    fm->applied++;
    if (fm->snap_seen && !fm->in_snap) {
        struct md_reflection rf = {.kind = MD_RF_RENAME,
                                   .path = from,
                                   .path2 = to,
                                   .hide_parent = dst.id,
                                   .hide_name = base,
                                   .ghost = f};
        reflect_later(fm, &rf);
    }
    return 0;
}

static int apply_hashes(struct fm *fm, const struct feed_msg *msg)
{
    struct mountd *m = fm->m;
    struct idx_file f;
    struct idx_block b;
    int r;
    if (echo_content(fm, msg->u.hashes.path)) {
        fm->hfile = -1; /* its DATA frames are skipped too */
        return 0;
    }
    if ((r = idx_resolve(m->idx, msg->u.hashes.path, &f)) < 0 || !S_ISREG(f.mode))
        return -EPROTO;
    uint32_t n = msg->u.hashes.n;
    uint8_t *hh = realloc(fm->hh, (size_t)n * FEED_HASH_LEN + 1);
    if (!hh)
        return -ENOMEM;
    fm->hh = hh;
    memcpy(hh, msg->u.hashes.hashes, (size_t)n * FEED_HASH_LEN);
    fm->hfile = f.id;
    fm->hfirst = msg->u.hashes.first;
    fm->hn = n;
    if (fm->pend.id != f.id)
        pending_finish(fm);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t blk = msg->u.hashes.first + i;
        const uint8_t *h = hh + (size_t)i * FEED_HASH_LEN;
        size_t k;
        struct idx_block *pb = fm->pend.id == f.id ? pending_find(&fm->pend, blk, &k) : NULL;
        if (pb) {
            /* what we hold may already be the new content: keep it then */
            if (memcmp(pb->hash, h, FEED_HASH_LEN) != 0)
                fm->pend.drop[k] = true;
        } else if (idx_block_get(m->idx, f.id, blk, &b) == 0 && b.cached &&
                   memcmp(b.hash, h, FEED_HASH_LEN) != 0) {
            /* a block of the current version, fetched after the ENTRY: only uncache it (no
             * hole is punched under a reader; the next fetch rewrites it) */
            idx_block_uncache(m->idx, f.id, blk);
            md_block_changed(m, f.id, f.version, blk);
        }
    }
    return 0;
}

static int apply_data(struct fm *fm, const struct feed_msg *msg)
{
    struct mountd *m = fm->m;
    struct idx_file f;
    int r;
    if (fm->hfile == -1)
        return 0; /* the DATA of a change whose HASHES were taken for our own (decided there:
                   * whether it is still an echo may have changed since, once written back) */
    if ((r = idx_resolve(m->idx, msg->u.data.path, &f)) < 0 || !S_ISREG(f.mode) ||
        f.id != fm->hfile)
        return -EPROTO;
    uint64_t blk = msg->u.data.block;
    if (blk < fm->hfirst || blk - fm->hfirst >= fm->hn)
        return -EPROTO;
    uint64_t nb = (f.size + FS_BLOCK_SIZE - 1) / FS_BLOCK_SIZE;
    uint64_t want = blk + 1 < nb ? FS_BLOCK_SIZE : f.size - blk * FS_BLOCK_SIZE;
    if (blk >= nb || msg->u.data.len != want)
        return -EPROTO;
    uint8_t digest[FEED_HASH_LEN];
    fs_cache_hash(msg->u.data.bytes, msg->u.data.len, digest);
    if (memcmp(digest, fm->hh + (blk - fm->hfirst) * FEED_HASH_LEN, FEED_HASH_LEN) != 0)
        return -EPROTO; /* bytes that are not the announced block: never stored */
    struct idx_block cur;
    if (idx_block_get(m->idx, f.id, blk, &cur) == 0 && cur.dirty)
        return 0; /* written here and not yet written back: the local bytes win */
    int fd = fs_cache_open(m->cache_dir, f.id, f.version, f.size);
    if (fd < 0)
        return 0; /* the cache cannot take it (full disk): it is fetched lazily instead */
    ssize_t w = pwrite(fd, msg->u.data.bytes, msg->u.data.len, (off_t)(blk * FS_BLOCK_SIZE));
    close(fd);
    if (w != (ssize_t)msg->u.data.len)
        return 0;
    struct idx_block b = {
        .file = f.id, .blkno = blk, .version = f.version, .len = msg->u.data.len, .cached = true};
    memcpy(b.hash, digest, FEED_HASH_LEN);
    if (idx_block_put(m->idx, &b) == 0)
        md_block_cached(m, f.id, f.version, blk, b.hash);
    FS_STAT_ADD(&m->st, feed_data_blocks, 1);
    return 0;
}

struct prune_ctx {
    struct mountd *m;
    int64_t stamp;
};

static int prune_each(void *arg, const struct idx_file *f)
{
    struct prune_ctx *p = arg;
    if (!S_ISDIR(f->mode))
        return 0;
    idx_prune_children(p->m->idx, f->id, p->stamp, md_gone_cb, p->m);
    return idx_children(p->m->idx, f->id, 0, prune_each, p);
}

/* Queue the invalidation of every name the index knows (the feed broke: long kernel timeouts
 * may no longer be trusted). */
static int inval_each(void *arg, const struct idx_file *f)
{
    struct mountd *m = arg;
    md_queue_inval_entry(m, (fuse_ino_t)f->parent, f->name);
    md_queue_inval(m, (fuse_ino_t)f->id);
    return S_ISDIR(f->mode) ? idx_children(m->idx, f->id, 0, inval_each, m) : 0;
}

static int send_out(struct fm *fm)
{
    static __thread uint8_t chunk[64 << 10];
    for (;;) {
        pthread_mutex_lock(&fm->lock);
        size_t n = buf_avail(&fm->out);
        if (n > sizeof(chunk))
            n = sizeof(chunk);
        memcpy(chunk, buf_ptr(&fm->out) ? buf_ptr(&fm->out) : chunk, n);
        buf_consume(&fm->out, n);
        pthread_mutex_unlock(&fm->lock);
        if (n == 0)
            return 0;
        if (ssh_channel_write(fm->ch, chunk, (uint32_t)n) != (int)n)
            return -EPIPE;
    }
}

/* Rows written back lately may not be in the source's snapshot yet (it may have been taken
 * before they landed there, and their echo is left alone, so nothing else would bring them):
 * remember them, to keep them from the snapshot's pruning. Rows not yet written back are kept by
 * the index itself (idx_prune_children spares files with journal rows). */
static void collect_written_back(struct fm *fm)
{
    free(fm->keep);
    fm->n_keep = md_written_back_since(fm->m, md_wall_ns() - ECHO_WINDOW_NS * 6, &fm->keep);
}

static int on_frame(struct fm *fm, const struct feed_msg *msg, uint64_t *ack)
{
    struct mountd *m = fm->m;
    int r = 0;
    bool names = msg->type == FEED_ENTRY || msg->type == FEED_REMOVE || msg->type == FEED_RENAME;
    fm->own = fm->own_next && names;
    fm->own_next = false;
    if (names)
        fm->echo_of[0] = '\0'; /* apply_entry sets it again when this one is an echo */
    if (msg->type == FEED_SNAP_BEGIN)
        collect_written_back(fm);
    if (!fm->in_batch && msg->type != FEED_BATCH_END && msg->type != FEED_HELLO &&
        msg->type != FEED_ERROR) {
        idx_begin(m->idx);
        fm->in_batch = true;
        fm->n_grown = 0;
        fm->stamp = md_wall_ns();
    }
    switch (msg->type) {
    case FEED_HELLO:
        if (msg->u.hello.block_size != FS_BLOCK_SIZE)
            return -EPROTO;
        if (msg->u.hello.flags & FEED_HELLO_OWN) {
            /* name our SFTP client: the agent then tags the changes it made as ours */
            pthread_mutex_lock(&fm->lock);
            r = feed_put_u64msg(&fm->enc, &fm->out, FEED_CLIENT, m->o.sftp.client_id);
            pthread_mutex_unlock(&fm->lock);
            fm->tags = r == 0;
        }
        return r;
    case FEED_OWN:
        if (!fm->tags)
            return -EPROTO;
        fm->own_next = true;
        return 0;
    case FEED_SNAP_BEGIN:
        fm->in_snap = true;
        return 0;
    case FEED_ENTRY:
        return apply_entry(fm, &msg->u.entry);
    case FEED_SNAP_END:
        if (!fm->in_snap)
            return -EPROTO;
        {
            struct prune_ctx p = {m, fm->stamp};
            for (size_t i = 0; i < fm->n_keep; i++)
                idx_touch_attr(m->idx, fm->keep[i], fm->stamp); /* not on the source yet */
            idx_prune_children(m->idx, IDX_ROOT_ID, fm->stamp, md_gone_cb, m);
            r = idx_children(m->idx, IDX_ROOT_ID, 0, prune_each, &p);
            if (r >= 0)
                r = idx_set_listed_all(m->idx, fm->stamp); /* every folder is whole now */
        }
        return r;
    case FEED_REMOVE:
        return apply_remove(fm, msg->u.path.path);
    case FEED_RENAME:
        return apply_rename(fm, msg->u.rename.from, msg->u.rename.to);
    case FEED_HASHES:
        return apply_hashes(fm, msg);
    case FEED_DATA:
        return apply_data(fm, msg);
    case FEED_BATCH_END:
        pending_finish(fm);
        if (fm->in_batch && (r = idx_commit(m->idx)) < 0)
            return r;
        fm->in_batch = false;
        /* A folder's listing the kernel cached while the batch was applied (a snapshot sends a
         * folder before its children) may lack the names added after it, and a name never
         * looked up has no dentry whose invalidation would drop that listing: drop the
         * listings of the folders that got new names now, with all of them in. */
        for (size_t i = 0; i < fm->n_grown; i++)
            md_queue_inval(m, (fuse_ino_t)fm->grown[i]);
        fm->n_grown = 0;
        reflect_queued(fm, true);
        fm->batches++;
        FS_STAT_ADD(&m->st, feed_batches, 1);
        *ack = msg->u.generation;
        if (fm->in_snap) {
            fm->in_snap = false;
            fm->snap_seen = true;
            atomic_store(&m->feed_epoch_ns, fm->stamp);
            atomic_store(&m->feed_live, true);
            md_log(m, "change feed live for '%s' (%" PRIu64 " entries in the snapshot)", fm->root,
                   fm->applied);
            pthread_mutex_lock(&fm->lock);
            fm->first_done = true;
            pthread_cond_broadcast(&fm->snap_cond);
            pthread_mutex_unlock(&fm->lock);
        }
        return 0;
    case FEED_ERROR:
        md_log(m, "the agent ended the feed: %s", msg->u.error.message);
        return -ECONNABORTED;
    default:
        return -EPROTO;
    }
}

static void feed_close(struct fm *fm)
{
    if (fm->pend.id && fm->pend.in >= 0)
        close(fm->pend.in);
    free(fm->pend.v);
    free(fm->pend.drop);
    memset(&fm->pend, 0, sizeof(fm->pend));
    pthread_mutex_lock(&fm->lock);
    fm->pend_id = 0;
    pthread_cond_broadcast(&fm->pend_cond);
    pthread_mutex_unlock(&fm->lock);
    reflect_queued(fm, false);
    if (fm->in_batch) {
        /* not a rollback: the batch may hold other threads' changes (journal rows); what was
         * applied of the broken batch is made right by the next snapshot */
        idx_commit(fm->m->idx);
        fm->in_batch = false;
    }
    if (fm->ch) {
        ssh_channel_close(fm->ch);
        ssh_channel_free(fm->ch);
        fm->ch = NULL;
    }
    if (fm->s) {
        ssh_disconnect(fm->s);
        ssh_free(fm->s);
        fm->s = NULL;
    }
    feed_dec_free(&fm->dec);
    buf_free(&fm->rx);
    fm->in_snap = false;
}

/* Connect and subscribe. -EOPNOTSUPP when the server has no feed for this root. */
static int feed_open(struct fm *fm, char *err, size_t errlen)
{
    struct mountd *m = fm->m;
    int r;
    if ((r = tun_ssh_connect(&m->o.sftp.ssh, &fm->s, err, errlen)) < 0)
        return r;
    if (!(fm->ch = ssh_channel_new(fm->s)) || ssh_channel_open_session(fm->ch) != SSH_OK) {
        snprintf(err, errlen, "cannot open a channel: %s", ssh_get_error(fm->s));
        return -EIO;
    }
    if (ssh_channel_request_subsystem(fm->ch, FEED_SUBSYS) != SSH_OK) {
        snprintf(err, errlen, "the server offers no change feed");
        return -EOPNOTSUPP;
    }
    if (feed_dec_init(&fm->dec, FS_BLOCK_SIZE) != 0)
        return -ENOMEM;
    fm->tags = fm->own = fm->own_next = false;
    buf_init(&fm->rx, FEED_FRAME_MAX * 2 + RX_CHUNK);
    pthread_mutex_lock(&fm->lock);
    feed_enc_init(&fm->enc);
    buf_reset(&fm->out);
    r = feed_put_hello(&fm->enc, &fm->out, FS_BLOCK_SIZE, 0, fm->root, "offload mountd");
    /* what we hold: the agent pushes changed blocks of those files */
    for (size_t i = 0; r == 0 && i < fm->held_cap; i++) {
        char path[PATH_MAX];
        int64_t id = fm->held[i];
        pthread_mutex_unlock(&fm->lock);
        bool ok = id && feed_path(m, id, path, sizeof(path)) == 0 && *path;
        pthread_mutex_lock(&fm->lock);
        if (ok)
            feed_put_path(&fm->enc, &fm->out, FEED_HOLD, path);
    }
    pthread_mutex_unlock(&fm->lock);
    return r < 0 ? r : send_out(fm);
}

static int feed_run(struct fm *fm)
{
    struct mountd *m = fm->m;
    for (;;) {
        pthread_mutex_lock(&fm->lock);
        bool stop = fm->stop;
        pthread_mutex_unlock(&fm->lock);
        if (stop)
            return 0;
        uint8_t *where;
        if (buf_reserve(&fm->rx, RX_CHUNK, &where) != 0)
            return -ENOBUFS;
        int n = ssh_channel_read_timeout(fm->ch, where, RX_CHUNK, 0, 200);
        if (n == SSH_ERROR)
            return -EPIPE;
        if (n == 0 && (ssh_channel_is_eof(fm->ch) || !ssh_channel_is_open(fm->ch)))
            return -EPIPE;
        buf_commit(&fm->rx, (size_t)n);
        struct feed_msg msg;
        int r;
        uint64_t ack = 0;
        bool acked = false;
        while ((r = feed_get(&fm->dec, &fm->rx, &msg)) == 0) {
            uint64_t a = 0;
            if ((r = on_frame(fm, &msg, &a)) < 0) {
                md_log(m, "cannot apply the feed's %s frame: %s; resubscribing",
                       feed_type_name(msg.type), strerror(-r));
                return r;
            }
            if (msg.type == FEED_BATCH_END) {
                ack = a;
                acked = true;
            }
        }
        if (r != -EAGAIN) {
            md_log(m, "bad frame from the agent (%s); resubscribing", strerror(-r));
            return r;
        }
        if (acked) {
            pthread_mutex_lock(&fm->lock);
            feed_put_u64msg(&fm->enc, &fm->out, FEED_ACK, ack);
            pthread_mutex_unlock(&fm->lock);
        }
        if (send_out(fm) < 0)
            return -EPIPE;
    }
}

static void *fm_main(void *arg)
{
    struct fm *fm = arg;
    struct mountd *m = fm->m;
    char err[1024];
    int backoff_ms = 200;
    for (;;) {
        pthread_mutex_lock(&fm->lock);
        bool stop = fm->stop;
        pthread_mutex_unlock(&fm->lock);
        if (stop)
            break;
        int r = feed_open(fm, err, sizeof(err));
        if (r == -EOPNOTSUPP) {
            md_log(m, "%s; metadata is cached for the TTL instead", err);
            feed_close(fm);
            break;
        }
        if (r == 0) {
            backoff_ms = 200;
            r = feed_run(fm);
            snprintf(err, sizeof(err), "%s", strerror(-r));
        }
        feed_close(fm);
        pthread_mutex_lock(&fm->lock);
        bool stopping = fm->stop;
        pthread_mutex_unlock(&fm->lock);
        if (atomic_exchange(&m->feed_live, false) && !stopping) {
            md_log(m, "change feed lost (%s); caching for the TTL until it is back", err);
            idx_children(m->idx, IDX_ROOT_ID, 0, inval_each, m);
        }
        pthread_mutex_lock(&fm->lock);
        if (!fm->stop) {
            struct timespec ts = deadline_ms(CLOCK_REALTIME, backoff_ms);
            pthread_cond_timedwait(&fm->snap_cond, &fm->lock, &ts);
        }
        pthread_mutex_unlock(&fm->lock);
        backoff_ms = backoff_ms * 2 > 5000 ? 5000 : backoff_ms * 2;
    }
    pthread_mutex_lock(&fm->lock);
    fm->first_done = true;
    pthread_cond_broadcast(&fm->snap_cond);
    pthread_mutex_unlock(&fm->lock);
    return NULL;
}

int fm_start(struct mountd *m)
{
    /* the feed serves exported roots: "/name" */
    const char *r = m->root;
    if (r[0] != '/' || !r[1] || strchr(r + 1, '/') || strlen(r) > NAME_MAX + 1)
        return 0;
    struct fm *fm = calloc(1, sizeof(*fm));
    if (!fm)
        return -ENOMEM;
    fm->m = m;
    memcpy(fm->root, r, strlen(r) + 1); /* checked above: it fits */
    pthread_mutex_init(&fm->lock, NULL);
    pthread_cond_init(&fm->snap_cond, NULL);
    pthread_cond_init(&fm->pend_cond, NULL);
    buf_init(&fm->out, SIZE_MAX / 2);
    m->fm = fm;
    if (pthread_create(&fm->thread, NULL, fm_main, fm) != 0) {
        m->fm = NULL;
        free(fm);
        return -EAGAIN;
    }
    /* the first snapshot makes the first walk free of round trips: wait for it, bounded (or
     * not at all: until it is in, the mount works as a standalone one, over SFTP with the TTL) */
    int wait_ms = m->o.snapshot_wait_ms < 0 ? FIRST_SNAP_WAIT_MS : m->o.snapshot_wait_ms;
    struct timespec ts = deadline_ms(CLOCK_REALTIME, wait_ms);
    pthread_mutex_lock(&fm->lock);
    while (!fm->first_done && wait_ms > 0)
        if (pthread_cond_timedwait(&fm->snap_cond, &fm->lock, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&fm->lock);
    return 0;
}

void fm_stop(struct mountd *m)
{
    struct fm *fm = m->fm;
    if (!fm)
        return;
    pthread_mutex_lock(&fm->lock);
    fm->stop = true;
    pthread_cond_broadcast(&fm->snap_cond);
    pthread_mutex_unlock(&fm->lock);
    pthread_join(fm->thread, NULL);
    atomic_store(&m->feed_live, false);
    m->fm = NULL;
    buf_free(&fm->out);
    free(fm->rq);
    free(fm->keep);
    free(fm->grown);
    free(fm->held);
    free(fm->hh);
    pthread_cond_destroy(&fm->snap_cond);
    pthread_cond_destroy(&fm->pend_cond);
    pthread_mutex_destroy(&fm->lock);
    free(fm);
}
