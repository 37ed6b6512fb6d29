/* dockerproxy.h - the docker API proxy: a unix socket on the laptop that relays the docker API to
 * a remote dockerd and rewrites the bind mount sources of container creation (dp_*).
 *
 * Every request passes through as the client sent it, except POST [/vN.NN]/containers/create,
 * whose JSON body is parsed (jansson) and whose absolute HostConfig.Binds sources and
 * HostConfig.Mounts sources of Type "bind" are replaced by what the rewrite callback returns;
 * that request is forwarded with a fresh Content-Length. Responses are never looked at: the
 * daemon->client direction is a plain byte copy, so streaming answers (logs -f, events, wait,
 * stats, build output) flow as they come. A request with an Upgrade (http_parser's "upgrade"),
 * to /containers/{id}/attach, or to /exec/{id}/start without "Detach": true, hijacks the
 * connection: after it, both directions are raw byte copies, and a half-close on one side is
 * passed on (shutdown(SHUT_WR)), as `docker run -i` and `docker exec -i` need.
 *
 * The module knows nothing of SSH: the upstream is whatever stream the connect_upstream
 * callback returns (a unix connect to dockerd in tests; a socketpair bridged to an SSH
 * direct-streamlocal channel in the agent).
 *
 * Threads: one accept thread; per client connection, one thread parsing client->daemon and one
 * copying daemon->client. Callbacks run on connection threads, concurrently for different
 * connections: they must be thread-safe.
 *
 * Limits and their answers (JSON {"message": ...}, as dockerd answers): more than
 * DP_MAX_CONNS open connections -> 503 at accept; an upstream that cannot be reached -> 502; a
 * buffered request body over DP_MAX_BODY -> 413; malformed HTTP -> 400. Each of these closes
 * the connection and is logged. A rewrite refused by the callback answers the request with the
 * callback's message and keeps the connection open. Known limit: such a local answer is written
 * at once; a client pipelining requests behind unanswered ones (no docker client does) could see
 * it before earlier answers.
 */
#ifndef OFFLOAD_DOCKERPROXY_H
#define OFFLOAD_DOCKERPROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define DP_MAX_CONNS 256        /* client connections open at once */
#define DP_MAX_BODY  (8u << 20) /* request body bytes the proxy buffers (create, exec start) */

/* Rewrite one laptop bind source. 'laptop_src' is an absolute path as the client sent it;
 * 'readonly' is set for Binds with an "ro" option and Mounts with "ReadOnly": true;
 * 'is_mount_api' tells a HostConfig.Mounts entry (--mount) from a Binds entry (-v), since
 * dockerd answers a missing source differently for the two. Return 0 with the cloud-side path
 * (absolute, NUL-terminated, no ':') in out[outlen], or a negative errno with a one-line message
 * for the client in msg[msglen]: -ENOENT and -EINVAL answer 400, -EACCES and -EPERM 403, others
 * 500. Runs on a connection thread. */
typedef int (*dp_rewrite_fn)(void *arg, const char *laptop_src, bool readonly, bool is_mount_api,
                             char *out, size_t outlen, char *msg, size_t msglen);

/* Open a new stream to the daemon: return a connected stream socket (the proxy owns and closes
 * it) or a negative errno with a message in err. Runs on a connection thread, once per client
 * connection. */
typedef int (*dp_connect_fn)(void *arg, char *err, size_t errlen);

/* One log line (no newline, lower case, git-style). Runs on any proxy thread. */
typedef void (*dp_log_fn)(void *arg, const char *line);

struct dp_config {
    const char *listen_path; /* unix socket made here, mode 0600; copied by dp_start */
    dp_connect_fn connect_upstream;
    void *connect_arg;
    dp_rewrite_fn rewrite_bind;
    void *rewrite_arg;
    dp_log_fn log; /* NULL: lines go to stderr, prefixed "offload dockerproxy: " */
    void *log_arg;
    bool verbose; /* also log every request (method, path) and every rewrite */
};

struct dp_stats {
    uint64_t requests; /* requests read from clients */
    uint64_t rewrites; /* bind sources rewritten */
    uint64_t errors;   /* requests or connections answered or closed by the proxy on error */
    uint64_t conns;    /* client connections accepted */
};

struct dp_proxy;

/* Make the listening socket at cfg->listen_path and start accepting. An existing socket there
 * that still accepts connections is refused (-EADDRINUSE); a stale one is replaced; anything else
 * at the path is refused (-EEXIST). The socket is bound under a temporary name, set to 0600, then
 * renamed into place, so it is never reachable with other modes. The callbacks and their args
 * must stay valid until dp_stop(). Returns the proxy, or NULL with a one-line message in err.
 * Any thread. */
struct dp_proxy *dp_start(const struct dp_config *cfg, char *err, size_t errlen);

/* Stop accepting, close every client and upstream connection, join every thread, remove the
 * socket (if it is still the one dp_start made) and free the proxy. NULL is a no-op. Not from a
 * callback. */
void dp_stop(struct dp_proxy *dp);

/* CLOCK_MONOTONIC seconds of the last request a client sent (of dp_start when none yet), for the
 * idle timeout. Any thread. */
time_t dp_last_activity(struct dp_proxy *dp);

/* Client connections open now (hijacked streams included). Any thread. */
unsigned dp_active(struct dp_proxy *dp);

/* A snapshot of the counters. Any thread. */
void dp_get_stats(struct dp_proxy *dp, struct dp_stats *out);

/* The create-body rewriter, a pure function (exposed for tests). Parse the JSON body[len] of a
 * container create request, pass each absolute HostConfig.Binds source and each
 * HostConfig.Mounts Source of Type "bind" through 'fn', and return the number of sources
 * rewritten (>= 0) with the new body in *out (malloc'd, the caller frees; NUL-terminated, length
 * in *outlen). With nothing to rewrite, *out is a copy of the body as it was, byte for byte.
 * Keys are matched without regard to case, as dockerd's JSON decoder does. On error returns a
 * negative errno, *out NULL, the HTTP status to answer in *status and a message in msg:
 * invalid JSON, duplicate keys or ill-typed Binds/Mounts give -EINVAL and 400; a callback error
 * gives its errno, status as dp_rewrite_fn says and its message. */
int dp_rewrite_create(const char *body, size_t len, dp_rewrite_fn fn, void *arg, char **out,
                      size_t *outlen, int *status, char *msg, size_t msglen);

#endif
