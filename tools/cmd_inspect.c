/* cmd_inspect.c - offload inspect [--json] MOUNTPOINT: the counters of a running mount. */
#include "offload.h"

#include "mount.h"
#include "stats.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

int cmd_inspect(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"json", no_argument, 0, 'j'},
        {"socket", required_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *sock = NULL;
    char path[4096], doc[8192];
    int c, json = 0, r;

    optind = 1;
    while ((c = getopt_long(argc, argv, "js:h", lopts, NULL)) != -1) {
        switch (c) {
        case 'j':
            json = 1;
            break;
        case 's':
            sock = optarg;
            break;
        case 'h':
            printf("usage: offload inspect [--json] MOUNTPOINT | --socket PATH\n");
            return 0;
        default:
            return 2;
        }
    }
    if (sock == NULL) {
        if (argc - optind != 1) {
            fprintf(stderr, "usage: offload inspect [--json] MOUNTPOINT | --socket PATH\n");
            return 2;
        }
        fs_mount_stats_path(argv[optind], path, sizeof(path));
        sock = path;
    }
    if ((r = fs_stats_fetch(sock, doc, sizeof(doc))) != 0) {
        if (sock == path && (r == -ENOENT || r == -ECONNREFUSED))
            fprintf(stderr,
                    "offload inspect: '%s' is not a running offload mount (no counters at "
                    "'%s')\n",
                    argv[optind], sock);
        else
            fprintf(stderr, "offload inspect: cannot reach the counters at '%s': %s\n", sock,
                    strerror(-r));
        return 1;
    }
    if (json) {
        fputs(doc, stdout);
        return 0;
    }
    /* one "name: value" per line, from the flat JSON object */
    for (char *p = doc; *p; p++) {
        if (*p == '{' || *p == '}' || *p == '"')
            continue;
        if (*p == ',')
            putchar('\n');
        else if (*p == ':')
            fputs(": ", stdout);
        else
            putchar(*p);
    }
    return 0;
}
