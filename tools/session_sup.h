/* session_sup.h - the session supervisor of `offload mountd` (docs/connect.md, "Session
 * directory" and "The control protocol").
 *
 * The supervisor is a daemon, one per session: it owns BASE/ID (mode 0700) and every mount in it,
 * serves the line protocol on BASE/ID/ctl to one client at a time (a new client replaces the old
 * one: that is how a laptop reattaches), keeps its mounts while no client is attached and ends
 * the session (unmount, remove BASE/ID) on END, SIGTERM/SIGINT, or after linger_s seconds
 * without a client. Each mount is an `offload mount -f` child process, so the supervisor knows
 * at once when one dies. Single-threaded: one poll loop.
 */
#ifndef OFFLOAD_SESSION_SUP_H
#define OFFLOAD_SESSION_SUP_H

#include <stdbool.h>
#include <stddef.h>

/* The longest protocol line, its '\n' included. */
#define SUP_LINE_MAX 65536

struct sup_opts {
    const char *base;    /* the sessions folder (absolute); created 0755 when missing */
    const char *id;      /* the session id; sup_valid_id() must hold */
    int linger_ms;       /* end the session after this long without a client */
    const char *offload; /* the binary run as `offload mount`; NULL: this one (/proc/self/exe) */
};

/* Run the supervisor of session o->id in this process until the session ends (it never returns
 * then: the process exits 0). Until the control socket listens, errors go to stderr (the relay
 * that started the daemon reads it until EOF); from then on stdin is /dev/null and stdout and
 * stderr go to BASE/ID/log, which ends with the session. If another supervisor already owns the
 * session, returns 0 at once without touching anything; 1 when it cannot start. */
int sup_run(const struct sup_opts *o);

/* Is 'id' a session id ([A-Za-z0-9_-]{1,64})? */
bool sup_valid_id(const char *id);
/* Is 'name' an export name ([A-Za-z0-9_.-]{1,64}, not "." or "..")? */
bool sup_valid_name(const char *name);

/* Check that 'dir' (a session directory) is safe to use: a real directory (not a symlink),
 * owned by this user, with no access for group or others. 0, or -ENOTDIR / -EPERM / a negative
 * errno from lstat, with a message in err. */
int sup_check_dir(const char *dir, char *err, size_t errlen);

#endif
