/* offload.c - the offload binary: git-style subcommands. */
#include "offload.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    int (*run)(int, char **);
    const char *help;
} cmds[] = {
    {"mount", cmd_mount, "lazily mount [user@]host:/path on a directory (standalone, over SFTP)"},
    {"inspect", cmd_inspect, "show what a mount is doing (counters as JSON)"},
    {"serve", cmd_serve, "export folders of this machine (SFTP and the change feed, confined)"},
    {"connect", cmd_connect, "connect to a cloud docker host: docker -v serves this machine's files"},
    {"status", cmd_status, "show the connected session (offload connect)"},
    {"disconnect", cmd_disconnect, "end the connected session"},
    {"mountd", cmd_mountd, "the cloud side of a session (run by offload connect over ssh)"},
};

int parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -EINVAL;
    switch (*end) {
    case 'k':
    case 'K':
        v <<= 10;
        end++;
        break;
    case 'm':
    case 'M':
        v <<= 20;
        end++;
        break;
    case 'g':
    case 'G':
        v <<= 30;
        end++;
        break;
    case 't':
    case 'T':
        v <<= 40;
        end++;
        break;
    default:
        break;
    }
    if (*end == 'i' || *end == 'B')
        end++;
    if (*end == 'B')
        end++;
    if (*end != '\0')
        return -EINVAL;
    *out = v;
    return 0;
}

int parse_duration_ms(const char *s, int *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -EINVAL;
    if (strcmp(end, "ms") == 0)
        ;
    else if (*end == '\0' || strcmp(end, "s") == 0)
        v *= 1000;
    else if (strcmp(end, "m") == 0)
        v *= 60000;
    else
        return -EINVAL;
    if (v > 86400000.0)
        return -EINVAL;
    *out = (int)v;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: offload <command> [<args>]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        fprintf(f, "   %-9s %s\n", cmds[i].name, cmds[i].help);
    fprintf(f, "\n'offload <command> --help' tells more about one command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("offload %s\n", OFFLOAD_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        if (strcmp(argv[1], cmds[i].name) == 0)
            return cmds[i].run(argc - 1, argv + 1);
    fprintf(stderr, "offload: '%s' is not an offload command. See 'offload --help'.\n", argv[1]);
    return 2;
}
