/* watch.c - the recursive inotify watcher (see watch.h).
 *
 * A tree of 'struct node' mirrors what the watcher knows: every directory below the root has a
 * node holding its watch descriptor, and any other path has one only while something about it is
 * pending. A node's path is found by walking up to the root, so renaming a directory moves one
 * node and the paths of everything below it follow. Two hash tables find nodes: by (parent, name)
 * and by watch descriptor.
 *
 * The pending batch is the state kept on the nodes (listed in 'dirty' order) plus a log of the
 * renames to report. The flags of a node's state describe its path as the consumer will see it
 * once it has applied the renames of the batch:
 *   born      the object now at this path was put there in this batch (created, moved in, found
 *             by listing a new directory): the consumer does not have it
 *   fresh     the consumer has nothing at this path: if the object goes, nothing is reported
 *   gone      the consumer's object at this path was removed or replaced in this batch
 *   gone_dir  ... and it was a directory, so FW_REMOVED comes before FW_CHANGED
 * A rename is logged as FW_RENAMED only when the consumer can apply it to what it has: neither the
 * moved object nor any directory above its old or new path is born or gone ("settled").
 * Otherwise it is a removal at the old path and an arrival at the new one, whose content is
 * listed.
 *
 * Nodes that are dropped while a call runs are unlinked at once but freed only at the end of the
 * public call (the graveyard), so a pointer held across a step never dangles.
 */
#include "watch.h"

#include "buf.h"
#include "confine.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define WATCH_MASK                                                                                 \
    (IN_CREATE | IN_DELETE | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM |              \
     IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK)

#define RBUF_SIZE      (64 * 1024)
#define EVENT_MAX      (sizeof(struct inotify_event) + NAME_MAX + 1)
#define READS_PER_CALL 64           /* then return, so a flood cannot hold fw_process for ever */
#define NAMES_MAX      (256u << 20) /* bytes of path text in one batch */
#define TABLE_MIN      64

#define DEFAULT_QUIET_MS    50
#define DEFAULT_MAX_MS      1000
#define DEFAULT_MAX_PENDING 100000

enum state { ST_NONE, ST_CHANGED, ST_REMOVED, ST_RESCAN };

/* What is pending about one path; all zero when nothing is. */
struct pend {
    unsigned char state; /* enum state */
    bool is_dir;         /* type to report */
    bool born, fresh, gone, gone_dir;
};

struct node {
    struct node *parent;
    struct node *child, *prev, *next; /* first child; siblings (next: graveyard when dead) */
    struct node *hnext;               /* chain in w->by_name */
    struct node *wnext;               /* chain in w->by_wd */
    struct node *dprev, *dnext;       /* w->dirty list, while pend.state != ST_NONE */
    char *name;                       /* "" for the root */
    size_t namelen;
    uint64_t hash; /* of (parent, name) */
    int wd;        /* -1 when not watched */
    unsigned gen;  /* the listing that last saw it (scan) */
    bool dir;      /* a directory the watcher tracks: kept when nothing is pending */
    bool dead;     /* unlinked, in the graveyard */
    struct pend pend;
};

struct table {
    struct node **b;
    size_t nb, n;
};

struct rename_rec {
    size_t from, to; /* offsets of the paths in w->names */
    bool is_dir;
};

/* One event copied out of the read buffer. */
struct raw {
    int wd;
    uint32_t mask, cookie;
    char name[NAME_MAX + 1];
};

struct fw {
    int ifd;
    char *root_path; /* absolute, symlinks resolved at fw_open */
    dev_t root_dev;  /* identity of the root at fw_open */
    ino_t root_ino;
    cf_root_t *cf; /* open only while scan() runs: a held root would not report its removal */
    struct fw_config cfg;
    struct node *root;
    struct table by_name, by_wd;
    struct node *dirty_head, *dirty_tail;
    size_t ndirty;
    struct rename_rec *renames;
    size_t nrenames, renames_cap;
    struct buf names;       /* path text of the batch */
    struct node *graveyard; /* dropped nodes, freed by bury() */
    unsigned gen;           /* listing generation */
    bool rescan_all;        /* the batch is one FW_RESCAN of "" */
    bool want_degrade;      /* make it so at the next safe point */
    bool need_resync;       /* the node tree may have missed directories: list everything */
    bool root_gone;         /* report FW_REMOVED of "" and stop */
    bool dead;              /* ... reported */
    bool drained;           /* the last read found the queue empty */
    int64_t t_first;        /* ms: when the pending batch began; -1 when none */
    int64_t t_last;         /* ms: the last event read */
    struct fw_stats st;
    size_t rstart, rend; /* unread events in rbuf */
    _Alignas(struct inotify_event) char rbuf[RBUF_SIZE];
};

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- hash tables ---- */

static uint64_t name_hash(const struct node *parent, const char *name, size_t len)
{
    return XXH3_64bits_withSeed(name, len, (uint64_t)(uintptr_t)parent);
}

static uint64_t wd_hash(int wd)
{
    return (uint64_t)(unsigned)wd * 0x9E3779B97F4A7C15ull;
}

static uint64_t hash_of(const struct node *n, bool by_wd)
{
    return by_wd ? wd_hash(n->wd) : n->hash;
}

static struct node **link_of(struct node *n, bool by_wd)
{
    return by_wd ? &n->wnext : &n->hnext;
}

static int table_init(struct table *t)
{
    t->b = calloc(TABLE_MIN, sizeof(*t->b));
    t->nb = TABLE_MIN;
    t->n = 0;
    return t->b ? 0 : -ENOMEM;
}

/* Double the buckets; without memory keep the old ones (longer chains, still correct). */
static void table_grow(struct table *t, bool by_wd)
{
    size_t nb = t->nb * 2, i;
    struct node **b = calloc(nb, sizeof(*b));
    struct node *n, *next;

    if (b == NULL)
        return;
    for (i = 0; i < t->nb; i++) {
        for (n = t->b[i]; n; n = next) {
            size_t k = hash_of(n, by_wd) & (nb - 1);

            next = *link_of(n, by_wd);
            *link_of(n, by_wd) = b[k];
            b[k] = n;
        }
    }
    free(t->b);
    t->b = b;
    t->nb = nb;
}

static void table_add(struct table *t, struct node *n, bool by_wd)
{
    size_t k;

    if (t->n >= t->nb)
        table_grow(t, by_wd);
    k = hash_of(n, by_wd) & (t->nb - 1);
    *link_of(n, by_wd) = t->b[k];
    t->b[k] = n;
    t->n++;
}

static void table_del(struct table *t, struct node *n, bool by_wd)
{
    struct node **p = &t->b[hash_of(n, by_wd) & (t->nb - 1)];

    while (*p != n)
        p = link_of(*p, by_wd);
    *p = *link_of(n, by_wd);
    t->n--;
}

static struct node *child_find(fw_t *w, struct node *parent, const char *name)
{
    size_t len = strlen(name);
    uint64_t h = name_hash(parent, name, len);
    struct node *n;

    for (n = w->by_name.b[h & (w->by_name.nb - 1)]; n; n = n->hnext)
        if (n->hash == h && n->parent == parent && n->namelen == len &&
            memcmp(n->name, name, len) == 0)
            return n;
    return NULL;
}

static struct node *wd_find(fw_t *w, int wd)
{
    struct node *n;

    for (n = w->by_wd.b[wd_hash(wd) & (w->by_wd.nb - 1)]; n; n = n->wnext)
        if (n->wd == wd)
            return n;
    return NULL;
}

/* ---- nodes ---- */

static struct node *node_new(const char *name)
{
    struct node *n = calloc(1, sizeof(*n));

    if (n == NULL || (n->name = strdup(name)) == NULL) {
        free(n);
        return NULL;
    }
    n->namelen = strlen(name);
    n->wd = -1;
    return n;
}

static void attach(fw_t *w, struct node *n, struct node *parent)
{
    n->parent = parent;
    n->hash = name_hash(parent, n->name, n->namelen);
    n->prev = NULL;
    n->next = parent->child;
    if (parent->child)
        parent->child->prev = n;
    parent->child = n;
    table_add(&w->by_name, n, false);
}

static void detach(fw_t *w, struct node *n)
{
    table_del(&w->by_name, n, false);
    if (n->prev)
        n->prev->next = n->next;
    else
        n->parent->child = n->next;
    if (n->next)
        n->next->prev = n->prev;
    n->parent = n->prev = n->next = NULL;
}

static int set_name(struct node *n, const char *name)
{
    char *s;

    if (strcmp(n->name, name) == 0)
        return 0;
    if ((s = strdup(name)) == NULL)
        return -ENOMEM;
    free(n->name);
    n->name = s;
    n->namelen = strlen(s);
    return 0;
}

/* A new node for (parent, name), or NULL (out of memory: the batch degrades, the watch set is
 * re-synchronised at the next call). */
static struct node *child_new(fw_t *w, struct node *parent, const char *name)
{
    struct node *n = node_new(name);

    if (n == NULL) {
        w->want_degrade = w->need_resync = true;
        return NULL;
    }
    attach(w, n, parent);
    return n;
}

static struct node *child_get(fw_t *w, struct node *parent, const char *name)
{
    struct node *n = child_find(w, parent, name);

    return n ? n : child_new(w, parent, name);
}

static bool is_above(const struct node *a, const struct node *n)
{
    for (; n; n = n->parent)
        if (n == a)
            return true;
    return false;
}

static void watch_set(fw_t *w, struct node *n, int wd)
{
    n->wd = wd;
    table_add(&w->by_wd, n, true);
    w->st.watches++;
}

/* Forget n's watch; 'rm' also asks the kernel to remove it (not needed once IN_IGNORED came). */
static void watch_drop(fw_t *w, struct node *n, bool rm)
{
    if (n->wd < 0)
        return;
    table_del(&w->by_wd, n, true);
    if (rm)
        inotify_rm_watch(w->ifd, n->wd);
    n->wd = -1;
    w->st.watches--;
}

/* ---- pending state ---- */

static bool marking(const fw_t *w)
{
    return !w->rescan_all;
}

static bool pending(const fw_t *w)
{
    return w->ndirty || w->nrenames || w->rescan_all || w->root_gone;
}

static void state_set(fw_t *w, struct node *n, enum state s)
{
    if (n->pend.state == ST_NONE) {
        n->dprev = w->dirty_tail;
        n->dnext = NULL;
        if (w->dirty_tail)
            w->dirty_tail->dnext = n;
        else
            w->dirty_head = n;
        w->dirty_tail = n;
        w->ndirty++;
    }
    n->pend.state = (unsigned char)s;
}

static void state_clear(fw_t *w, struct node *n)
{
    if (n->pend.state != ST_NONE) {
        if (n->dprev)
            n->dprev->dnext = n->dnext;
        else
            w->dirty_head = n->dnext;
        if (n->dnext)
            n->dnext->dprev = n->dprev;
        else
            w->dirty_tail = n->dprev;
        w->ndirty--;
    }
    memset(&n->pend, 0, sizeof(n->pend));
}

static void kill_one(fw_t *w, struct node *n)
{
    watch_drop(w, n, true);
    state_clear(w, n);
    if (n->parent)
        detach(w, n);
    n->dead = true;
    n->next = w->graveyard;
    w->graveyard = n;
}

/* Drop every node below n, watches and pending state included. */
static void kill_below(fw_t *w, struct node *n)
{
    struct node *c = n->child, *up;

    while (c) {
        if (c->child) {
            c = c->child;
            continue;
        }
        up = c->parent;
        kill_one(w, c);
        c = up == n ? n->child : up;
    }
}

static void kill_tree(fw_t *w, struct node *n)
{
    kill_below(w, n);
    kill_one(w, n);
}

/* Drop n if it carries nothing: no state, not a directory, no children. */
static void gc(fw_t *w, struct node *n)
{
    if (n != w->root && !n->dead && n->pend.state == ST_NONE && !n->dir && n->child == NULL)
        kill_one(w, n);
}

static void bury(fw_t *w)
{
    struct node *n;

    while ((n = w->graveyard) != NULL) {
        w->graveyard = n->next;
        free(n->name);
        free(n);
    }
}

/* The next node after n in a pre-order walk of top's subtree, skipping n's children. */
static struct node *next_skip(struct node *n, const struct node *top)
{
    for (; n != top; n = n->parent)
        if (n->next)
            return n->next;
    return NULL;
}

/* Forget what is pending below n (its content is about to be listed afresh). */
static void clear_below(fw_t *w, struct node *top)
{
    struct node *n = top->child, *next;

    while (n) {
        next = n->child ? n->child : next_skip(n, top);
        state_clear(w, n);
        gc(w, n);
        n = next;
    }
}

/* The batch becomes one FW_RESCAN of "": drop everything pending. */
static void degrade(fw_t *w)
{
    struct node *n;

    w->want_degrade = false;
    if (w->rescan_all)
        return;
    w->rescan_all = true;
    while ((n = w->dirty_head) != NULL) {
        state_clear(w, n);
        gc(w, n);
    }
    w->nrenames = 0;
    buf_reset(&w->names);
}

/* A safe point: no caller holds a pointer to a node degrade() may drop. */
static void check_bound(fw_t *w)
{
    if (w->want_degrade || w->ndirty + w->nrenames > w->cfg.max_pending)
        degrade(w);
}

/* The object at n was created or written to. A node nothing was known about is new, unless it
 * is a tracked directory. */
static void touch_node(fw_t *w, struct node *n, bool is_dir, bool created)
{
    if (!marking(w))
        return;
    if (n->pend.state == ST_NONE) {
        if (created) {
            n->pend.born = true;
            n->pend.fresh = !n->dir; /* a node just made for this event */
        }
    } else if (n->pend.state == ST_REMOVED) {
        n->pend.born = true;
    }
    n->pend.is_dir = is_dir;
    if (n->pend.state != ST_RESCAN)
        state_set(w, n, ST_CHANGED);
}

static struct node *touch(fw_t *w, struct node *p, const char *name, bool is_dir, bool created)
{
    struct node *n = child_get(w, p, name);

    if (n == NULL)
        return NULL;
    touch_node(w, n, is_dir, created);
    if (is_dir && created)
        n->dir = true;
    return n;
}

static void mark_removed(fw_t *w, struct node *n, bool is_dir)
{
    if (n->pend.fresh && !w->cfg.transient) {
        state_clear(w, n);
        return;
    }
    if (!n->pend.born && !n->pend.gone)
        n->pend.gone_dir = is_dir;
    n->pend.gone = true;
    n->pend.born = false;
    n->pend.is_dir = is_dir;
    state_set(w, n, ST_REMOVED);
}

static void mark_rescan(fw_t *w, struct node *n)
{
    if (!marking(w))
        return;
    n->pend.is_dir = true;
    state_set(w, n, ST_RESCAN);
}

/* ---- paths ---- */

/* Length of the path of n, or of n's child 'name' when name is not NULL. */
static size_t path_len(const struct node *n, const char *name)
{
    size_t len = name ? strlen(name) + 1 : 0;

    for (; n->parent; n = n->parent)
        len += n->namelen + 1;
    return len ? len - 1 : 0;
}

/* Write that path and a NUL into out[0..len]. */
static void path_write(const struct node *n, const char *name, char *out, size_t len)
{
    char *e = out + len;

    *e = '\0';
    if (name) {
        size_t l = strlen(name);

        e -= l;
        memcpy(e, name, l);
        if (e > out)
            *--e = '/';
    }
    for (; n->parent; n = n->parent) {
        e -= n->namelen;
        memcpy(e, n->name, n->namelen);
        if (e > out)
            *--e = '/';
    }
}

/* Append the path to w->names; *off is where it starts. */
static int put_path(fw_t *w, const struct node *n, const char *name, size_t *off)
{
    size_t len = path_len(n, name);
    uint8_t *p;
    int r;

    if ((r = buf_reserve(&w->names, len + 1, &p)) != 0)
        return r;
    path_write(n, name, (char *)p, len);
    *off = w->names.len;
    buf_commit(&w->names, len + 1);
    return 0;
}

/* The path of n for confine.h: "." for the root. */
static int rel_path(const struct node *n, char *out)
{
    size_t len = path_len(n, NULL);

    if (len >= PATH_MAX)
        return -ENAMETOOLONG;
    if (len == 0)
        strcpy(out, ".");
    else
        path_write(n, NULL, out, len);
    return 0;
}

/* ---- watching and listing ---- */

struct queue {
    struct node **v;
    size_t n, cap, head;
};

static int queue_push(struct queue *q, struct node *n)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        struct node **v = realloc(q->v, cap * sizeof(*v));

        if (v == NULL)
            return -ENOMEM;
        q->v = v;
        q->cap = cap;
    }
    q->v[q->n++] = n;
    return 0;
}

/* The directory at d is now watched with wd. If the same directory is already known at another
 * node m (it was moved there by events not read yet, or never queued because its new parent was
 * not watched yet), d takes over m's watch and the nodes below it. Returns false when d cannot be
 * watched separately (m is above or below d: a bind mount shows a directory inside itself). */
static bool adopt_watch(fw_t *w, struct node *d, int wd)
{
    struct node *m, *c;

    if (d->wd == wd)
        return true;
    m = wd_find(w, wd);
    if (m && (is_above(m, d) || is_above(d, m)))
        return false;
    if (d->wd >= 0) { /* d's name now holds another directory */
        kill_below(w, d);
        watch_drop(w, d, true);
    }
    if (m == NULL) {
        watch_set(w, d, wd);
        return true;
    }
    kill_below(w, d);
    table_del(&w->by_wd, m, true);
    m->wd = -1;
    d->wd = wd;
    table_add(&w->by_wd, d, true);
    while ((c = m->child) != NULL) {
        detach(w, c);
        attach(w, c, d);
    }
    m->dir = false;
    gc(w, m);
    return true;
}

/* Watch and list the directory d. Entries are marked born when 'mark'; directories found are
 * queued. With 'sweep' (a re-synchronisation), directory nodes below d that the listing did not
 * show are dropped. Returns 0 or the error that kept d from being watched. */
static int list_dir(fw_t *w, struct node *d, unsigned gen, bool mark, bool sweep, struct queue *q)
{
    char rel[PATH_MAX], proc[64];
    struct dirent *e;
    struct node *c, *next;
    DIR *dir;
    int fd, wd, r;

    if ((r = rel_path(d, rel)) == 0)
        r = cf_openat(w->cf, rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0, &fd);
    if (r == -ESTALE || (d == w->root && (r == -ENOENT || r == -ENOTDIR))) {
        w->root_gone = true;
        return r;
    }
    if (r == -ENOENT || r == -ENOTDIR || r == -EPERM || r == -ELOOP) {
        /* gone or replaced by a non-directory: its events follow, unless they were lost */
        if (sweep)
            kill_tree(w, d);
        return r;
    }
    if (r < 0) {
        mark_rescan(w, d);
        return r;
    }
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    if ((wd = inotify_add_watch(w->ifd, proc, WATCH_MASK)) < 0) {
        r = -errno;
        close(fd);
        mark_rescan(w, d);
        return r;
    }
    if (!adopt_watch(w, d, wd)) {
        close(fd);
        return 0;
    }
    if ((dir = fdopendir(fd)) == NULL) {
        r = -errno;
        close(fd);
        mark_rescan(w, d);
        return r;
    }
    d->gen = gen;
    while ((e = readdir(dir)) != NULL) {
        bool is_dir = e->d_type == DT_DIR;
        struct stat st;

        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
            (d == w->root && w->cfg.only && strcmp(e->d_name, w->cfg.only) != 0))
            continue;
        if (e->d_type == DT_UNKNOWN)
            is_dir = fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                     S_ISDIR(st.st_mode);
        if (mark)
            c = touch(w, d, e->d_name, is_dir, true);
        else
            c = is_dir ? child_get(w, d, e->d_name) : NULL;
        if (c && is_dir) {
            c->dir = true;
            c->gen = gen;
            if (queue_push(q, c) != 0)
                w->want_degrade = w->need_resync = true;
        }
        check_bound(w);
    }
    closedir(dir);
    if (sweep) {
        for (c = d->child; c; c = next) {
            next = c->next;
            if (c->dir && c->gen != gen)
                kill_tree(w, c);
        }
    }
    return 0;
}

/* Open the root for confine.h, checking it is still the directory fw_open found. */
static int root_open(fw_t *w)
{
    struct stat st;
    int r;

    if ((r = cf_open_root(w->root_path, true, &w->cf)) != 0)
        return r;
    if (w->root_ino == 0) /* fw_open is finding it */
        return 0;
    if ((r = cf_lstat(w->cf, ".", &st)) == 0 &&
        (st.st_dev != w->root_dev || st.st_ino != w->root_ino))
        r = -ESTALE;
    if (r != 0) {
        cf_close_root(w->cf);
        w->cf = NULL;
    }
    return r;
}

/* Watch and list top and every directory below it; see list_dir. Returns list_dir's result for
 * top itself. */
static int scan(fw_t *w, struct node *top, bool sweep)
{
    struct queue q = {0};
    unsigned gen = ++w->gen;
    bool mark = !sweep && marking(w);
    int r;

    if ((r = root_open(w)) != 0) {
        if (r == -ESTALE || r == -ENOENT || r == -ENOTDIR)
            w->root_gone = true;
        else
            mark_rescan(w, top);
        return r;
    }
    r = list_dir(w, top, gen, mark, sweep, &q);
    while (q.head < q.n && !w->root_gone) {
        struct node *d = q.v[q.head++];

        if (!d->dead)
            list_dir(w, d, gen, mark && marking(w), sweep, &q);
    }
    free(q.v);
    cf_close_root(w->cf);
    w->cf = NULL;
    return r;
}

/* After lost events: the batch is FW_RESCAN "", and the node tree is made to match the disk. */
static void resync(fw_t *w)
{
    degrade(w);
    w->need_resync = false;
    scan(w, w->root, true);
}

/* ---- events ---- */

static bool settled(const struct node *n)
{
    for (; n; n = n->parent)
        if (n->pend.born || n->pend.gone)
            return false;
    return true;
}

/* Deleted, or moved out of the tree. */
static void removed(fw_t *w, struct node *p, const char *name, bool is_dir)
{
    struct node *n = child_find(w, p, name);

    if (n) {
        kill_below(w, n);
        watch_drop(w, n, true);
        n->dir = false;
    }
    if (!marking(w)) {
        if (n) {
            state_clear(w, n);
            gc(w, n);
        }
        return;
    }
    if (n == NULL && (n = child_new(w, p, name)) == NULL)
        return;
    mark_removed(w, n, is_dir);
    gc(w, n);
}

/* Something arrived at (p, name) by a move not reported as a rename: moved in from outside, or
 * the second half of a rename the consumer cannot apply. 'x' is the node moving with it, or NULL.
 * Returns the node now at (p, name), or NULL. */
static struct node *arrive(fw_t *w, struct node *p, const char *name, bool is_dir, struct node *x)
{
    struct node *t = child_find(w, p, name);
    struct pend f = {0};

    if (t) {
        f.fresh = t->pend.fresh;
        f.gone = t->pend.gone;
        f.gone_dir = t->pend.gone_dir;
        if (!t->pend.born && !t->pend.gone) { /* replaces what the consumer has */
            f.gone = true;
            f.gone_dir = t->dir || t->pend.is_dir;
        }
        kill_tree(w, t);
    }
    if (x) {
        if (set_name(x, name) != 0) {
            kill_tree(w, x);
            w->want_degrade = w->need_resync = true;
            return NULL;
        }
        attach(w, x, p);
    } else if ((x = child_new(w, p, name)) == NULL) {
        return NULL;
    }
    if (is_dir)
        x->dir = true;
    if (marking(w)) {
        state_clear(w, x);
        x->pend = f;
        x->pend.born = true;
        x->pend.is_dir = is_dir;
        state_set(w, x, ST_CHANGED);
    }
    return x;
}

static int log_rename(fw_t *w, struct node *p1, const char *n1, struct node *p2, const char *n2,
                      bool is_dir)
{
    struct rename_rec rec = {.is_dir = is_dir};
    int r;

    if (w->nrenames == w->renames_cap) {
        size_t cap = w->renames_cap ? w->renames_cap * 2 : 16;
        struct rename_rec *v = realloc(w->renames, cap * sizeof(*v));

        if (v == NULL)
            return -ENOMEM;
        w->renames = v;
        w->renames_cap = cap;
    }
    if ((r = put_path(w, p1, n1, &rec.from)) != 0 || (r = put_path(w, p2, n2, &rec.to)) != 0)
        return r;
    w->renames[w->nrenames++] = rec;
    return 0;
}

/* (p1, n1) was renamed to (p2, n2), both inside the tree. */
static void moved(fw_t *w, struct node *p1, const char *n1, struct node *p2, const char *n2,
                  bool is_dir)
{
    struct node *x = child_find(w, p1, n1), *t, *s;

    if (marking(w) && settled(x ? x : p1) && settled(p2)) {
        if (log_rename(w, p1, n1, p2, n2, is_dir) == 0) {
            t = child_find(w, p2, n2);
            if (t && t != x)
                kill_tree(w, t);
            if (x) {
                detach(w, x);
                if (set_name(x, n2) != 0) {
                    kill_tree(w, x);
                    w->want_degrade = w->need_resync = true;
                    return;
                }
                attach(w, x, p2);
            }
            return;
        }
        degrade(w); /* no room to record it: the structure still follows below */
        x = child_find(w, p1, n1);
    }
    if (x && x->dir) {
        struct pend f = x->pend;
        bool listed = x->wd >= 0;

        state_clear(w, x);
        detach(w, x);
        if (marking(w) && !f.fresh && (s = child_new(w, p1, n1)) != NULL) {
            s->pend.born = f.born;
            s->pend.gone = f.gone;
            s->pend.gone_dir = f.gone_dir;
            mark_removed(w, s, is_dir);
        }
        if ((x = arrive(w, p2, n2, true, x)) == NULL)
            return;
        if (marking(w) || !listed) {
            clear_below(w, x);
            scan(w, x, false);
        }
        return;
    }
    removed(w, p1, n1, is_dir);
    x = arrive(w, p2, n2, is_dir, NULL);
    if (x && is_dir && x->wd < 0)
        scan(w, x, false);
}

static void dispatch(fw_t *w, const struct raw *e)
{
    bool is_dir = (e->mask & IN_ISDIR) != 0;
    struct node *p, *n;

    if (e->mask & IN_Q_OVERFLOW) {
        w->st.overflows++;
        resync(w);
        return;
    }
    if ((p = wd_find(w, e->wd)) == NULL)
        return; /* a watch already dropped */
    if (e->mask & IN_IGNORED) {
        watch_drop(w, p, false);
        if (p == w->root)
            w->root_gone = true;
        return;
    }
    if (e->mask & IN_UNMOUNT) {
        w->need_resync = true;
        return;
    }
    if (e->name[0] == '\0') { /* about the directory itself: its parent reports it, but the root */
        if (p != w->root)
            return;
        if (e->mask & (IN_DELETE_SELF | IN_MOVE_SELF))
            w->root_gone = true;
        else if (e->mask & (IN_ATTRIB | IN_MODIFY))
            touch_node(w, p, true, false);
        return;
    }
    if (e->mask & IN_CREATE) {
        n = touch(w, p, e->name, is_dir, true);
        if (n && is_dir && n->wd < 0)
            scan(w, n, false);
    } else if (e->mask & (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE)) {
        touch(w, p, e->name, is_dir, false);
    } else if (e->mask & (IN_DELETE | IN_MOVED_FROM)) {
        removed(w, p, e->name, is_dir);
    } else if (e->mask & IN_MOVED_TO) {
        n = arrive(w, p, e->name, is_dir, NULL);
        if (n && is_dir && n->wd < 0)
            scan(w, n, false);
    }
}

/* ---- reading ---- */

/* Read more events behind the unread ones. Returns 1 if some came, 0 if none (queue empty, or
 * no room), or a negative errno. */
static int fill(fw_t *w)
{
    ssize_t n;

    if (w->rstart > 0) {
        memmove(w->rbuf, w->rbuf + w->rstart, w->rend - w->rstart);
        w->rend -= w->rstart;
        w->rstart = 0;
    }
    if (RBUF_SIZE - w->rend < EVENT_MAX)
        return 0;
    do
        n = read(w->ifd, w->rbuf + w->rend, RBUF_SIZE - w->rend);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN) {
            w->drained = true;
            return 0;
        }
        return -errno;
    }
    w->drained = false;
    w->rend += (size_t)n;
    return n > 0;
}

/* Copy the event at 'off' into e; returns its size in the buffer. */
static size_t copy_event(const fw_t *w, size_t off, struct raw *e)
{
    struct inotify_event h;
    size_t nl;

    memcpy(&h, w->rbuf + off, sizeof(h));
    e->wd = h.wd;
    e->mask = h.mask;
    e->cookie = h.cookie;
    nl = strnlen(w->rbuf + off + sizeof(h), h.len);
    if (nl > NAME_MAX)
        nl = NAME_MAX;
    memcpy(e->name, w->rbuf + off + sizeof(h), nl);
    e->name[nl] = '\0';
    return sizeof(h) + h.len;
}

/* Find, among the unread events (reading more if needed), the IN_MOVED_TO that pairs with the
 * IN_MOVED_FROM just taken, copy it into 'to' and mark it consumed. The kernel queues both halves
 * of a rename together; only events of unrelated names can come between them. */
static bool find_to(fw_t *w, uint32_t cookie, struct raw *to)
{
    size_t off = w->rstart, seen;

    for (;;) {
        while (off < w->rend) {
            struct inotify_event h;

            memcpy(&h, w->rbuf + off, sizeof(h));
            if ((h.mask & IN_MOVED_TO) && h.cookie == cookie) {
                copy_event(w, off, to);
                h.mask = 0;
                memcpy(w->rbuf + off, &h, sizeof(h));
                w->st.events++;
                return true;
            }
            off += sizeof(h) + h.len;
        }
        seen = off - w->rstart;
        if (fill(w) <= 0)
            return false;
        off = w->rstart + seen;
    }
}

/* Read and fold in what is queued, up to READS_PER_CALL reads. */
static int drain(fw_t *w)
{
    struct raw e, to;
    int reads = 0, r;

    while (!w->root_gone) {
        if (w->rstart == w->rend) {
            if (reads++ >= READS_PER_CALL)
                return 0;
            if ((r = fill(w)) <= 0)
                return r;
        }
        w->rstart += copy_event(w, w->rstart, &e);
        if (e.mask == 0)
            continue; /* a IN_MOVED_TO already paired */
        w->st.events++;
        w->t_last = now_ms();
        if ((e.mask & IN_MOVED_FROM) && find_to(w, e.cookie, &to)) {
            struct node *p1 = wd_find(w, e.wd), *p2 = wd_find(w, to.wd);

            if (p1 && p2)
                moved(w, p1, e.name, p2, to.name, (e.mask & IN_ISDIR) != 0);
            else if (p1)
                dispatch(w, &e);
            else if (p2)
                dispatch(w, &to);
        } else {
            dispatch(w, &e);
        }
        check_bound(w);
        if (w->need_resync)
            resync(w);
    }
    return 0;
}

/* ---- delivery ---- */

struct item {
    struct node *n;
    size_t depth, seq;
};

static int item_cmp(const void *a, const void *b)
{
    const struct item *x = a, *y = b;

    if (x->depth != y->depth)
        return x->depth < y->depth ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static const enum fw_kind kind_of[] = {
    [ST_CHANGED] = FW_CHANGED,
    [ST_REMOVED] = FW_REMOVED,
    [ST_RESCAN] = FW_RESCAN,
};

/* The pending batch as events (renames, then the rest by depth); *evp is the caller's to free. */
static int build(fw_t *w, struct fw_event **evp, size_t *np)
{
    struct item *items = calloc(w->ndirty ? w->ndirty : 1, sizeof(*items));
    struct fw_event *ev = calloc(w->nrenames + 2 * w->ndirty + 1, sizeof(*ev));
    size_t *offs = calloc(w->nrenames + 2 * w->ndirty + 1, sizeof(*offs));
    size_t *froms = calloc(w->nrenames + 1, sizeof(*froms));
    size_t n = 0, i, k;
    struct node *d;
    int r = -ENOMEM;

    if (items == NULL || ev == NULL || offs == NULL || froms == NULL)
        goto out;
    for (i = 0; i < w->nrenames; i++, n++) {
        ev[n].kind = FW_RENAMED;
        ev[n].is_dir = w->renames[i].is_dir;
        offs[n] = w->renames[i].to;
        froms[i] = w->renames[i].from;
    }
    for (d = w->dirty_head, k = 0; d; d = d->dnext, k++) {
        const struct node *a;

        items[k].n = d;
        items[k].seq = k;
        for (a = d; a->parent; a = a->parent)
            items[k].depth++;
    }
    qsort(items, w->ndirty, sizeof(*items), item_cmp);
    for (k = 0; k < w->ndirty; k++) {
        const struct node *x = items[k].n;
        size_t off;

        if ((r = put_path(w, x, NULL, &off)) != 0)
            goto out;
        if (x->pend.state == ST_CHANGED && x->pend.gone_dir) {
            ev[n].kind = FW_REMOVED;
            ev[n].is_dir = true;
            offs[n++] = off;
        }
        ev[n].kind = kind_of[x->pend.state];
        ev[n].is_dir = x->pend.is_dir;
        offs[n++] = off;
    }
    for (i = 0; i < n; i++) {
        ev[i].path = (const char *)w->names.data + offs[i];
        if (i < w->nrenames)
            ev[i].from = (const char *)w->names.data + froms[i];
    }
    *evp = ev;
    *np = n;
    ev = NULL;
    r = 0;
out:
    free(items);
    free(ev);
    free(offs);
    free(froms);
    return r;
}

static int deliver(fw_t *w, fw_batch_fn each, void *arg)
{
    struct fw_event one = {.kind = FW_RESCAN, .path = "", .is_dir = true}, *ev = NULL;
    struct node *n;
    size_t cnt = 0, i;
    int r;

    if (w->root_gone) {
        one.kind = FW_REMOVED;
        w->dead = true;
    } else if (!w->rescan_all && build(w, &ev, &cnt) != 0) {
        degrade(w);
    }
    if (ev == NULL) {
        ev = &one;
        cnt = 1;
    }
    for (i = 0; i < cnt; i++)
        if (ev[i].kind == FW_RESCAN)
            w->st.rescans++;
    w->st.batches++;
    r = each(arg, ev, cnt);
    if (ev != &one)
        free(ev);
    while ((n = w->dirty_head) != NULL) {
        state_clear(w, n);
        gc(w, n);
    }
    w->nrenames = 0;
    buf_reset(&w->names);
    w->rescan_all = false;
    w->t_first = -1;
    return r;
}

/* ---- public ---- */

static void free_tree(struct node *root)
{
    struct node *n = root, *up;

    while (n) {
        if (n->child) {
            n = n->child;
            continue;
        }
        up = n->parent;
        if (up)
            up->child = n->next;
        free(n->name);
        free(n);
        n = up;
    }
}

void fw_close(fw_t *w)
{
    if (w == NULL)
        return;
    if (w->ifd >= 0)
        close(w->ifd);
    free_tree(w->root);
    bury(w);
    free(w->by_name.b);
    free(w->by_wd.b);
    free(w->renames);
    buf_free(&w->names);
    cf_close_root(w->cf);
    free(w->root_path);
    free(w);
}

int fw_open(const char *root, const struct fw_config *cfg, fw_t **out)
{
    fw_t *w = calloc(1, sizeof(*w));
    struct stat st;
    int r;

    if (w == NULL)
        return -ENOMEM;
    w->ifd = -1;
    if (cfg)
        w->cfg = *cfg;
    if (w->cfg.quiet_ms == 0)
        w->cfg.quiet_ms = DEFAULT_QUIET_MS;
    if (w->cfg.max_ms == 0)
        w->cfg.max_ms = DEFAULT_MAX_MS;
    if (w->cfg.max_pending == 0)
        w->cfg.max_pending = DEFAULT_MAX_PENDING;
    buf_init(&w->names, NAMES_MAX);
    w->t_first = -1;
    w->t_last = now_ms();
    w->drained = true;
    if ((w->root_path = realpath(root, NULL)) == NULL) {
        r = -errno;
        goto fail;
    }
    if ((r = root_open(w)) != 0 || (r = cf_lstat(w->cf, ".", &st)) != 0)
        goto fail;
    w->root_dev = st.st_dev;
    w->root_ino = st.st_ino;
    cf_close_root(w->cf);
    w->cf = NULL;
    if ((w->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) < 0) {
        r = -errno;
        goto fail;
    }
    if ((r = table_init(&w->by_name)) != 0 || (r = table_init(&w->by_wd)) != 0)
        goto fail;
    if ((w->root = node_new("")) == NULL) {
        r = -ENOMEM;
        goto fail;
    }
    w->root->dir = true;
    if ((r = scan(w, w->root, true)) != 0)
        goto fail;
    if (w->root_gone) {
        r = -ENOENT;
        goto fail;
    }
    if (w->want_degrade)
        degrade(w);
    if (pending(w))
        w->t_first = w->t_last;
    bury(w);
    *out = w;
    return 0;
fail:
    fw_close(w);
    return r;
}

int fw_fd(const fw_t *w)
{
    return w->ifd;
}

int fw_timeout_ms(const fw_t *w)
{
    int64_t due, now;

    if (w->dead)
        return -1;
    if (w->need_resync || w->root_gone || !w->drained)
        return 0;
    if (!pending(w))
        return -1;
    due = w->t_last + w->cfg.quiet_ms;
    if (w->t_first >= 0 && w->t_first + (int64_t)w->cfg.max_ms < due)
        due = w->t_first + w->cfg.max_ms;
    now = now_ms();
    if (due <= now)
        return 0;
    return due - now > INT_MAX ? INT_MAX : (int)(due - now);
}

int fw_process(fw_t *w, fw_batch_fn each, void *arg)
{
    int64_t now;
    int r = 0, rd;

    if (w->dead)
        return -ESTALE;
    if (w->need_resync)
        resync(w);
    rd = drain(w);
    check_bound(w);
    now = now_ms();
    if (pending(w) && w->t_first < 0)
        w->t_first = now;
    if (pending(w) &&
        (w->root_gone || (w->drained && now - w->t_last >= w->cfg.quiet_ms) ||
         now - w->t_first >= w->cfg.max_ms || w->ndirty + w->nrenames >= w->cfg.max_pending / 2))
        r = deliver(w, each, arg);
    bury(w);
    return rd < 0 ? rd : r;
}

void fw_get_stats(const fw_t *w, struct fw_stats *st)
{
    *st = w->st;
}
