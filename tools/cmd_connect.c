/* cmd_connect.c - offload connect / status / disconnect (docs/connect.md). Being built. */
#include "offload.h"

#include <stdio.h>

static int unavailable(const char *what)
{
    fprintf(stderr, "offload %s: not available in this build yet (docs/connect.md)\n", what);
    return 1;
}

int cmd_connect(int argc, char **argv)
{
    (void)argc, (void)argv;
    return unavailable("connect");
}

int cmd_status(int argc, char **argv)
{
    (void)argc, (void)argv;
    return unavailable("status");
}

int cmd_disconnect(int argc, char **argv)
{
    (void)argc, (void)argv;
    return unavailable("disconnect");
}
