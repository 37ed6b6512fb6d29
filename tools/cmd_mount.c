/* cmd_mount.c - offload mount [user@]host[:port]:/path MOUNTPOINT [options] */
#include "offload.h"

#include "mount.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: offload mount [user@]host[:port]:/path MOUNTPOINT [options]\n"
        "\n"
        "Mount a directory of an SSH server (an OpenSSH sshd, or 'offload serve' with its change\n"
        "feed) lazily: metadata and contents are fetched on first use over SFTP, by 64 KiB\n"
        "block, and kept in a block cache that survives remounts. Writes are applied locally\n"
        "and written back in order in the background (fsync waits for them; -o ro or nowrite\n"
        "refuse them). Unmount with 'fusermount3 -u MOUNTPOINT' (or Ctrl-C with -f).\n"
        "\n"
        "options:\n"
        "  -p, --port PORT          ssh port (default: from ssh config, or 22)\n"
        "  -F, --ssh-config FILE    ssh config file (default: ~/.ssh/config)\n"
        "  -i, --identity FILE      identity (private key) file\n"
        "  -o OPT[,OPT...]          mount options: %s\n"
        "      --cache-dir DIR      block cache and index (default: ~/.cache/offload/mounts/<id>)\n"
        "      --cache-size SIZE    cache budget, e.g. 500M, 20G (default: 10G)\n"
        "      --attr-ttl SECS      how long metadata is trusted (default: 20)\n"
        "      --connect-timeout SECS  bound on connecting (default: 10)\n"
        "      --op-timeout SECS    an operation fails with EIO after this long without\n"
        "                           progress on the link (default: 5)\n"
        "      --stats-socket PATH  where counters are served (default: per mountpoint)\n"
        "      --snapshot-wait SECS  with 'offload serve': how long mounting waits for the\n"
        "                           change feed's snapshot (default: 30); 0 mounts at once and\n"
        "                           serves over SFTP with the TTL until the snapshot is in\n"
        "  -f, --foreground         stay in the foreground, log to stderr\n"
        "  -d, --debug              foreground, with FUSE and ssh debug output\n"
        "  -h, --help               this text\n",
        fs_mount_known_opts());
}

static int check_opts(char *list)
{
    char *save = NULL, *copy = strdup(list);
    int ok = 1;

    if (copy == NULL)
        return 0;
    for (char *o = strtok_r(copy, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
        if (!fs_mount_check_opt(o)) {
            fprintf(stderr, "offload mount: unknown mount option '%s' (known: %s)\n", o,
                    fs_mount_known_opts());
            ok = 0;
        }
    }
    free(copy);
    return ok;
}

/* Make p absolute against the working directory (without resolving links); NULL passes. */
static int absolute(const char *p, char out[4096])
{
    char cwd[4096];

    if (p == NULL)
        return 0;
    if (p[0] == '/')
        return snprintf(out, 4096, "%s", p) >= 4096;
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        return 1;
    return snprintf(out, 4096, "%s/%s", cwd, p) >= 4096;
}

int cmd_mount(int argc, char **argv)
{
    enum {
        O_CACHE_DIR = 256,
        O_CACHE_SIZE,
        O_ATTR_TTL,
        O_CONNECT_TIMEOUT,
        O_OP_TIMEOUT,
        O_STATS,
        O_SNAPSHOT_WAIT
    };
    static const struct option lopts[] = {
        {"port", required_argument, 0, 'p'},
        {"ssh-config", required_argument, 0, 'F'},
        {"identity", required_argument, 0, 'i'},
        {"cache-dir", required_argument, 0, O_CACHE_DIR},
        {"cache-size", required_argument, 0, O_CACHE_SIZE},
        {"attr-ttl", required_argument, 0, O_ATTR_TTL},
        {"connect-timeout", required_argument, 0, O_CONNECT_TIMEOUT},
        {"op-timeout", required_argument, 0, O_OP_TIMEOUT},
        {"stats-socket", required_argument, 0, O_STATS},
        {"snapshot-wait", required_argument, 0, O_SNAPSHOT_WAIT},
        {"foreground", no_argument, 0, 'f'},
        {"debug", no_argument, 0, 'd'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    struct fs_mount_opts o;
    char dest[512], fuse_opts[1024] = "";
    int c, foreground = 0, ms;
    uint64_t size;

    memset(&o, 0, sizeof(o));
    o.attr_ttl_ms = -1;
    o.snapshot_wait_ms = -1;
    o.sftp.ssh.connect_timeout_s = 10;
    o.sftp.op_timeout_ms = 5000;
    optind = 1;
    while ((c = getopt_long(argc, argv, "p:F:i:o:fdh", lopts, NULL)) != -1) {
        switch (c) {
        case 'p':
            o.sftp.ssh.port = atoi(optarg);
            if (o.sftp.ssh.port <= 0 || o.sftp.ssh.port > 65535) {
                fprintf(stderr, "offload mount: bad port '%s'\n", optarg);
                return 2;
            }
            break;
        case 'F':
            o.sftp.ssh.ssh_config = optarg;
            break;
        case 'i':
            o.sftp.ssh.identity = optarg;
            break;
        case 'o':
            if (!check_opts(optarg))
                return 2;
            if (strlen(fuse_opts) + strlen(optarg) + 2 > sizeof(fuse_opts)) {
                fprintf(stderr, "offload mount: too many mount options\n");
                return 2;
            }
            if (fuse_opts[0])
                strcat(fuse_opts, ",");
            strcat(fuse_opts, optarg);
            break;
        case O_CACHE_DIR:
            o.cache_dir = optarg;
            break;
        case O_CACHE_SIZE:
            if (parse_size(optarg, &size) != 0 || size < (1 << 20)) {
                fprintf(stderr,
                        "offload mount: bad cache size '%s' (e.g. 500M, 20G; at least 1M)\n",
                        optarg);
                return 2;
            }
            o.cache_size = size;
            break;
        case O_ATTR_TTL:
        case O_CONNECT_TIMEOUT:
        case O_OP_TIMEOUT:
        case O_SNAPSHOT_WAIT:
            if (parse_duration_ms(optarg, &ms) != 0) {
                fprintf(stderr, "offload mount: bad duration '%s' (seconds, or 500ms)\n", optarg);
                return 2;
            }
            if (c == O_ATTR_TTL)
                o.attr_ttl_ms = ms;
            else if (c == O_SNAPSHOT_WAIT)
                o.snapshot_wait_ms = ms;
            else if (c == O_CONNECT_TIMEOUT)
                o.sftp.ssh.connect_timeout_s = ms < 1000 ? 1 : ms / 1000;
            else
                o.sftp.op_timeout_ms = ms < 100 ? 100 : ms;
            break;
        case O_STATS:
            o.stats_socket = optarg;
            break;
        case 'f':
            foreground = 1;
            break;
        case 'd':
            o.debug = 1;
            foreground = 1;
            o.sftp.ssh.verbose = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 2) {
        usage(stderr);
        return 2;
    }
    const char *path = tun_ssh_split_spec(argv[optind], dest, sizeof(dest));
    if (path == NULL) {
        fprintf(stderr, "offload mount: bad source '%s': expected [user@]host:/path\n",
                argv[optind]);
        return 2;
    }
    /* paths are made absolute now: the daemon leaves the working directory */
    static char abs_mp[4096], abs_cache[4096], abs_cfg[4096], abs_id[4096], abs_sock[4096];
    if (absolute(argv[optind + 1], abs_mp) || absolute(o.cache_dir, abs_cache) ||
        absolute(o.sftp.ssh.ssh_config, abs_cfg) || absolute(o.sftp.ssh.identity, abs_id) ||
        absolute(o.stats_socket, abs_sock)) {
        fprintf(stderr, "offload mount: path too long\n");
        return 2;
    }
    argv[optind + 1] = abs_mp;
    o.cache_dir = o.cache_dir ? abs_cache : NULL;
    o.sftp.ssh.ssh_config = o.sftp.ssh.ssh_config ? abs_cfg : NULL;
    o.sftp.ssh.identity = o.sftp.ssh.identity ? abs_id : NULL;
    o.stats_socket = o.stats_socket ? abs_sock : NULL;
    o.sftp.ssh.dest = dest;
    o.remote_path = path;
    o.mountpoint = argv[optind + 1];
    o.fuse_opts = fuse_opts;

    if (foreground)
        return fs_mount_run(&o, -1);

    /* background: the child mounts and reports; the parent returns once the mount is up */
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        perror("offload mount: pipe");
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("offload mount: fork");
        return 1;
    }
    if (pid > 0) {
        char st = '1';
        close(pfd[1]);
        if (read(pfd[0], &st, 1) != 1)
            st = '1';
        return st == '0' ? 0 : 1;
    }
    close(pfd[0]);
    setsid();
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
        dup2(devnull, 0);
        dup2(devnull, 1);
        close(devnull);
    }
    /* stderr stays on the terminal until the mount is up (errors reach the user); mountd
     * moves its log to the cache dir afterwards */
    _exit(fs_mount_run(&o, pfd[1]));
}
