/* ssh_client.h - open an authenticated libssh client session, as OpenSSH's ssh would.
 *
 * The destination is "[user@]host[:port]" (or an alias of ~/.ssh/config). ~/.ssh/config (or the
 * file given) is honoured, then the explicit options override it. The server's host key is
 * checked against known_hosts: an unknown key is refused with its fingerprint and how to accept
 * it; a changed key is refused loudly. Authentication: the ssh agent, then identity files
 * (the given one first), public key only.
 *
 * Threads: a session belongs to one thread at a time (libssh sessions are not thread-safe).
 */
#ifndef OFFLOAD_SSH_CLIENT_H
#define OFFLOAD_SSH_CLIENT_H

#include <stddef.h>
#include <libssh/libssh.h>

struct tun_ssh_opts {
    const char *dest;       /* [user@]host[:port], required */
    int port;               /* 0: from dest, config or 22 */
    const char *ssh_config; /* NULL: ~/.ssh/config */
    const char *identity;   /* NULL: agent and the default identity files */
    int connect_timeout_s;  /* bound on TCP connect and key exchange; 0 means 10 */
    int verbose;            /* libssh log verbosity (0 = none) */
};

/* Connect, verify the host key and authenticate. On success *out is a connected session owned by
 * the caller (ssh_disconnect + ssh_free). On failure a one-line git-style message is written to
 * err and a negative errno returned: -EINVAL (bad destination), -EHOSTUNREACH / -ECONNREFUSED /
 * -ETIMEDOUT (cannot reach), -ENOKEY (unknown host key), -EKEYREJECTED (host key changed),
 * -EACCES (authentication failed), -EIO (other). */
int tun_ssh_connect(const struct tun_ssh_opts *o, ssh_session *out, char *err, size_t errlen);

/* Split "[user@]host[:port]:/path" at the colon that starts the path. Writes the destination
 * part into dest (NUL-terminated) and returns a pointer to the path inside spec, or NULL if spec
 * is not of that form or dest is too small. An IPv6 host is written in brackets: [::1]:/path. */
const char *tun_ssh_split_spec(const char *spec, char *dest, size_t destlen);

#endif
