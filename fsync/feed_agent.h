/* feed_agent.h - the developer machine's side of the change feed (fa_*): for each exported root,
 * a recursive inotify watcher (watch.h), the laptop-side index (index.h: identity, stat, version
 * and block hashes, reused while the stat is unchanged, like git's index) and the delta producer,
 * serving every mountd that subscribes through the endpoint's feed subsystem (docs/feed.md).
 *
 * A root is scanned and watched from its first subscription on; each subscriber gets the
 * metadata snapshot, then every coalesced batch of changes: metadata, the hashes of changed
 * blocks, and the lz4-compressed bytes of changed blocks of files it holds (and of small files).
 *
 * Threads: one agent thread does all scanning, hashing and sending. The subsystem hooks (fa_subsys)
 * run on the endpoint's session threads and only decode what mountd sends (HELLO, ACK, HOLD, DROP)
 * and hand it over under the agent's lock; they never wait for the agent thread.
 */
#ifndef OFFLOAD_FEED_AGENT_H
#define OFFLOAD_FEED_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "confine.h"
#include "endpoint.h"

#define FA_SUBSYS "offload-feed@offload"

typedef struct fa fa_t;

struct fa_root {
    const char *name; /* as served by the SFTP server: "/name" */
    const char *path; /* absolute path on this machine (for the watcher) */
    cf_root_t *root;  /* the confined root the SFTP server uses too */
};

/* Create the agent for 'roots' (the array and what it points to must outlive the agent) and start
 * its thread. 'state_dir' (an existing private directory) holds the per-root index databases.
 * Returns 0 and *out, or a negative errno with a message in err. */
int fa_new(const struct fa_root *roots, size_t nroots, const char *state_dir, int verbose,
           fa_t **out, char *err, size_t errlen);

/* Fill *sub with the feed subsystem's hooks, for tun_ep_opts.subsys. */
void fa_subsys(fa_t *fa, struct tun_ep_subsys *sub);

/* The endpoint's change hook (tun_ep_opts.on_change, arg the agent; root indexes as in the array
 * given to fa_new): an SFTP client that named itself changed 'rel', leaving 'st' (NULL: nothing).
 * The agent then sends a change it finds there, while it looks as one of that client's changes
 * left it, tagged OWN to that client's own subscription (docs/feed.md); every other subscriber
 * gets it as any change. */
void fa_note_change(void *fa, uint64_t client, enum sfs_phase phase, size_t root, const char *rel,
                    const struct stat *st);

/* Counters, for logs and tests. Any thread. */
struct fa_stats {
    uint64_t batches, entries, removes, renames, hashes, data_blocks, data_bytes, bytes_sent;
    uint64_t rescans, subscribers;
    uint64_t own_tags; /* changes sent to the subscriber that made them, tagged OWN */
};
void fa_get_stats(fa_t *fa, struct fa_stats *st);

/* Stop the agent thread and free everything. Call after tun_ep_stop() (no hook may run any more).
 * NULL is accepted. */
void fa_free(fa_t *fa);

#endif
