/* watch.h - a recursive inotify watcher of one directory tree that reports changes in coalesced,
 * de-duplicated batches (fw_*), for the agent that exports a tree to a live change feed.
 *
 * fw_open() adds an inotify watch on every directory below the root; a directory that appears
 * later (created, moved in, found in a listing) is watched and then listed at once, recursively,
 * so entries made in it before its watch existed are reported too. Symlinks are never followed: a
 * symlink, to a directory or not, is an entry like a file. Directories are opened beneath the root
 * through confine.h and watched through their descriptor, so a path racing with a rename into a
 * symlink is not followed out of the tree either.
 *
 * Batches. fw_process() reads what the kernel has queued and folds it into the pending batch; the
 * batch is handed to the caller, once, when no event came for quiet_ms, when it is max_ms old,
 * when it holds max_pending / 2 paths, or when the root went away. A batch is an array of events
 * in this order:
 *   1. FW_RENAMED(from, path) for every rename inside the tree of something that existed before
 *      the batch, in the order they happened; 'from' is the path after the renames before it.
 *      The consumer moves its entry (and everything below it) from 'from' to 'path', replacing
 *      what it had at 'path'. A rename is not reported as such when its source was created or
 *      replaced in the same batch, or its source or destination lies in a directory created or
 *      replaced in the batch: it is then FW_REMOVED of the old path (or nothing, if the
 *      consumer never had it) and FW_CHANGED of the new path and of everything below it. An
 *      editor's save (write a temporary file, rename it over the original) is therefore one
 *      FW_CHANGED of the original's path.
 *   2. FW_CHANGED / FW_REMOVED / FW_RESCAN at final paths (after all renames of the batch), a
 *      directory before anything below it. Each path appears at most once among these, except
 *      that a directory the consumer had which was removed and replaced in the batch appears as
 *      FW_REMOVED immediately followed by FW_CHANGED (so its old children go). A path may also
 *      appear in step 1: a file renamed and then written is FW_RENAMED(a, b) then FW_CHANGED(b).
 * Meaning of each kind for the consumer:
 *   FW_CHANGED  the entry at 'path' was created or changed (content, size, mode, times, type):
 *               lstat it. For a directory this is about the directory itself; entries below a
 *               new directory are reported one by one. If lstat finds nothing, a later event
 *               accounts for it.
 *   FW_REMOVED  nothing is at 'path' any more: drop it and everything below it. A directory
 *               removed with its content in one batch is one FW_REMOVED of the directory; the
 *               removals of its children are not reported separately.
 *   FW_RESCAN   events were lost for 'path' and below ("" for the whole tree): compare that subtree
 *               with the disk. Sent after the kernel queue overflowed (the watch set is then
 *               re-synchronised first: directories that appeared meanwhile get watches, vanished
 *               ones lose theirs) or a filesystem below the root was unmounted; when the pending
 *               batch grew past max_pending paths (the batch becomes one FW_RESCAN of ""); when
 *               memory ran out; and for a directory that could not be watched (e.g. ENOSPC, the
 *               fs.inotify.max_user_watches limit): changes below such a directory are not seen
 *               until the next overflow re-synchronisation.
 * De-duplication: a path changed any number of times in a batch is one FW_CHANGED; a path created
 * and removed within one batch is not reported at all; removed and re-created is FW_CHANGED.
 * is_dir is the type of the entry as last seen (for FW_REMOVED: of what was removed).
 *
 * The root: FW_CHANGED of "" when its own attributes change. When the root is removed or moved
 * away, the batch holding FW_REMOVED of "" is the last one: later calls return -ESTALE. The
 * watcher holds no descriptor of the root between listings, but the kernel reports a removed
 * directory only once nothing holds it (a shell whose working directory it is delays that).
 *
 * Limits: memory is bounded by the number of directories watched plus max_pending paths; the
 * kernel's queue (fs.inotify.max_queued_events) bounds what is read at once. A directory visible
 * at two places in the tree (bind mount) is watched, and reported, at one of them. Mounting a
 * filesystem over a directory inside the tree produces no inotify event and is not seen
 * (unmounting a watched one is: FW_RESCAN). Watches are added through /proc/self/fd, so /proc
 * must be mounted.
 *
 * Threads: a fw_t belongs to one thread: every function on it must be called from the thread
 * that owns it (not necessarily the one that opened it), never concurrently. Nothing is logged.
 */
#ifndef OFFLOAD_WATCH_H
#define OFFLOAD_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fw fw_t;

enum fw_kind { FW_CHANGED, FW_REMOVED, FW_RENAMED, FW_RESCAN };

struct fw_event {
    enum fw_kind kind;
    const char *path; /* relative to the root, no leading '/', "" for the root; FW_RENAMED: new */
    const char *from; /* FW_RENAMED: the old path; NULL for the other kinds */
    bool is_dir;
};

struct fw_config {
    unsigned quiet_ms;  /* a batch is complete after this long without an event (default 50) */
    unsigned max_ms;    /* ... or once it is this old, however busy the tree (default 1000) */
    size_t max_pending; /* ... or once it holds half this many paths; more than this many (one
                           listing of a big directory moved in): the batch becomes FW_RESCAN ""
                           (default 100000) */
    const char *only;   /* NULL, or the one entry of the root that is watched and reported (a
                           single-file share: the folder's other entries, and what is below
                           them, are neither listed nor watched) */
    bool transient;     /* also report FW_REMOVED for a path whose object was made and removed
                           within the batch: the consumer may know it from elsewhere (the SFTP
                           client that made it) */
};

struct fw_stats {
    uint64_t events;    /* inotify events read */
    uint64_t batches;   /* batches handed to the caller */
    uint64_t overflows; /* kernel queue overflows */
    uint64_t watches;   /* watches held now */
    uint64_t rescans;   /* FW_RESCAN events handed to the caller */
};

/* Called by fw_process with one whole batch: 'n' >= 1 events. The events and their strings are
 * valid only during the call. Return 0, or a negative errno that fw_process passes back. */
typedef int (*fw_batch_fn)(void *arg, const struct fw_event *ev, size_t n);

/* Watch the directory 'root' (followed if it is a symlink itself) and every directory below it.
 * 'cfg' may be NULL, and zero fields mean the defaults. What exists when fw_open returns is not
 * reported: the caller scans the tree itself after fw_open, and so misses nothing. On success
 * *out owns the watcher (free with fw_close) and returns 0; else -ENOENT, -ENOTDIR, -EACCES,
 * -EMFILE, -ENOSPC (no watch for the root), -ENOMEM, with *out untouched. Any thread; the thread
 * that then uses the watcher owns it. */
int fw_open(const char *root, const struct fw_config *cfg, fw_t **out);

/* The descriptor to poll for reading (the inotify descriptor, non-blocking). Owner thread. */
int fw_fd(const fw_t *w);

/* How long, in milliseconds, the caller may wait for fw_fd() to become readable before calling
 * fw_process() anyway (a pending batch is due): -1 when nothing is pending, 0 when it is due now.
 * Owner thread. */
int fw_timeout_ms(const fw_t *w);

/* Read what is queued without blocking, fold it into the pending batch and, when the batch is
 * complete, call each(arg, events, n) once with it. Call it when fw_fd() is readable or when
 * fw_timeout_ms() has passed. The batch is consumed whatever each() returns. Returns 0, the
 * non-zero value each() returned, -ESTALE once the root is gone, or another negative errno from
 * reading the inotify descriptor. Owner thread; each() must not call fw_* on the same watcher. */
int fw_process(fw_t *w, fw_batch_fn each, void *arg);

/* Remove every watch, close the descriptor and free the watcher; a pending batch is dropped.
 * NULL is accepted. Owner thread. */
void fw_close(fw_t *w);

/* Copy the counters into *st. Owner thread. */
void fw_get_stats(const fw_t *w, struct fw_stats *st);

#endif
