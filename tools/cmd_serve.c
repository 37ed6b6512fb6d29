/* cmd_serve.c - offload serve ROOT[:ro]... [--listen ADDR:PORT] [--details DIR]
 *
 * The export endpoint on the developer machine: serves the given folders, and nothing else, over
 * SSH (SFTP and the change feed) to the holder of a per-session key.
 */
#include "offload.h"

#include "confine.h"
#include "endpoint.h"
#include "feed_agent.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_ROOTS 64

static void usage(FILE *f)
{
    fprintf(f,
            "usage: offload serve ROOT[:ro]... [options]\n"
            "\n"
            "Export folders of this machine over SSH (SFTP and the change feed), confined to\n"
            "them: each ROOT is served as /NAME (its base name), read-only with ':ro'. A fresh\n"
            "host key and client key are made for the session; the client key, a known_hosts\n"
            "line and an ssh_config for the alias 'offload-endpoint' are written to the details\n"
            "folder, so that\n"
            "  offload mount -F DIR/ssh_config offload-endpoint:/NAME MOUNTPOINT\n"
            "(or sftp -F DIR/ssh_config offload-endpoint) connects. Runs until interrupted;\n"
            "the details folder is removed on exit.\n"
            "\n"
            "options:\n"
            "  -l, --listen ADDR:PORT  where to listen (default: 127.0.0.1:0, any free port)\n"
            "  -D, --details DIR       the details folder (default: /run/offload/serve-<pid>\n"
            "                          as root, else $XDG_RUNTIME_DIR or /tmp)\n"
            "      --no-feed           serve SFTP only (mounts then use time-based caching)\n"
            "  -v, --verbose           log sessions, channels and feed batches to stderr\n"
            "  -h, --help              this text\n");
}

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig)
{
    stop_signal = sig;
}

static int parse_listen(const char *s, char *addr, size_t addrlen, uint16_t *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon)
        return -EINVAL;
    size_t n = (size_t)(colon - s);
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        s++;
        n -= 2;
    }
    if (n == 0 || n >= addrlen)
        return -EINVAL;
    memcpy(addr, s, n);
    addr[n] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535 || end == colon + 1)
        return -EINVAL;
    *port = (uint16_t)p;
    return 0;
}

static void remove_details(const char *dir)
{
    char p[PATH_MAX];
    static const char *const files[] = {"ssh_config", "known_hosts", "id_ed25519",
                                        "id_ed25519.pub"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

int cmd_serve(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'}, {"details", required_argument, NULL, 'D'},
        {"no-feed", no_argument, NULL, 'N'},      {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    char addr[64] = "127.0.0.1", details[PATH_MAX] = "", err[1024];
    char names[MAX_ROOTS][NAME_MAX + 1];
    char paths[MAX_ROOTS][PATH_MAX];
    struct sfs_root roots[MAX_ROOTS];
    struct fa_root froots[MAX_ROOTS];
    uint16_t port = 0;
    int verbose = 0, feed = 1, c, rc = 1;
    size_t nroots = 0;
    tun_ep_t *ep = NULL;
    fa_t *fa = NULL;

    while ((c = getopt_long(argc, argv, "l:D:vh", longopts, NULL)) != -1) {
        switch (c) {
        case 'l':
            if (parse_listen(optarg, addr, sizeof(addr), &port) != 0) {
                fprintf(stderr, "offload serve: bad --listen '%s' (want ADDR:PORT)\n", optarg);
                return 2;
            }
            break;
        case 'D':
            snprintf(details, sizeof(details), "%s", optarg);
            break;
        case 'N':
            feed = 0;
            break;
        case 'v':
            verbose = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    if (argc - optind > MAX_ROOTS) {
        fprintf(stderr, "offload serve: at most %d roots\n", MAX_ROOTS);
        return 2;
    }
    for (int i = optind; i < argc; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s", argv[i]);
        size_t n = strlen(path);
        bool ro = n > 3 && strcmp(path + n - 3, ":ro") == 0;
        if (ro)
            path[n - 3] = '\0';
        else if (n > 3 && strcmp(path + n - 3, ":rw") == 0)
            path[n - 3] = '\0';
        while ((n = strlen(path)) > 1 && path[n - 1] == '/')
            path[n - 1] = '\0';
        cf_root_t *root;
        int r = cf_open_root(path, ro, &root);
        if (r != 0) {
            fprintf(stderr, "offload serve: cannot export '%s': %s\n", path, strerror(-r));
            goto out;
        }
        const char *base = strrchr(path, '/');
        base = base && base[1] ? base + 1 : (strcmp(path, "/") == 0 ? "root" : path);
        if (strlen(base) > NAME_MAX - 8) {
            fprintf(stderr, "offload serve: cannot export '%s': name too long\n", path);
            cf_close_root(root);
            goto out;
        }
        snprintf(names[nroots], sizeof(names[nroots]), "%.*s", NAME_MAX - 8, base);
        for (size_t k = 0, dup = 2; k < nroots; k++)
            if (strcmp(names[k], names[nroots]) == 0) {
                snprintf(names[nroots], sizeof(names[nroots]), "%.240s-%zu", base, dup++);
                k = (size_t)-1; /* check the new name against all again */
            }
        roots[nroots].name = names[nroots];
        roots[nroots].root = root;
        if (!realpath(path, paths[nroots]))
            snprintf(paths[nroots], sizeof(paths[nroots]), "%s", path);
        froots[nroots] = (struct fa_root){names[nroots], paths[nroots], root};
        nroots++;
        printf("exporting '%s' as /%s%s\n", path, names[nroots - 1], ro ? " (read-only)" : "");
    }

    /* every open SFTP handle is a descriptor: a mount keeps up to ~1100 of them (read handles of
     * recently read files, write handles), and several mounts may share the endpoint */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (!*details) {
        const char *run = getenv("XDG_RUNTIME_DIR");
        if (geteuid() == 0) {
            mkdir("/run/offload", 0700);
            snprintf(details, sizeof(details), "/run/offload/serve-%d", (int)getpid());
        } else if (run && *run) {
            snprintf(details, sizeof(details), "%s/offload-serve-%d", run, (int)getpid());
        } else {
            snprintf(details, sizeof(details), "/tmp/offload-serve-%d-%d", (int)getuid(),
                     (int)getpid());
        }
    }

    if (mkdir(details, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "offload serve: cannot create '%s': %s\n", details, strerror(errno));
        goto out;
    }
    struct tun_ep_subsys sub;
    struct tun_ep_opts o = {
        .bind_addr = addr, .port = port, .roots = roots, .nroots = nroots, .verbose = verbose};
    if (feed) {
        if (fa_new(froots, nroots, details, verbose, &fa, err, sizeof(err)) != 0) {
            fprintf(stderr, "offload serve: %s\n", err);
            goto out;
        }
        fa_subsys(fa, &sub);
        o.subsys = &sub;
        o.nsubsys = 1;
        o.on_change = fa_note_change;
        o.change_arg = fa;
    }
    if (tun_ep_start(&o, &ep, err, sizeof(err)) != 0) {
        fprintf(stderr, "offload serve: %s\n", err);
        goto out;
    }
    if (tun_ep_write_details(ep, details, "offload-endpoint", err, sizeof(err)) != 0) {
        fprintf(stderr, "offload serve: %s\n", err);
        goto out;
    }
    printf("listening on %s:%u, host key %s\n", addr, tun_ep_port(ep), tun_ep_fingerprint(ep));
    printf("connection details in '%s'; mount with:\n  offload mount -F %s/ssh_config "
           "offload-endpoint:/%s MOUNTPOINT\n",
           details, details, roots[0].name);
    fflush(stdout);

    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    while (!stop_signal)
        pause();
    if (verbose)
        fprintf(stderr, "offload serve: %s, stopping\n", strsignal(stop_signal));
    rc = 0;
out:
    tun_ep_stop(ep);
    fa_free(fa);
    if (*details)
        remove_details(details);
    for (size_t i = 0; i < nroots; i++)
        cf_close_root(roots[i].root);
    return rc;
}
