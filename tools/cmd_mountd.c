/* cmd_mountd.c - offload mountd: the cloud side of a session (docs/connect.md). Being built. */
#include "offload.h"

#include <stdio.h>

int cmd_mountd(int argc, char **argv)
{
    (void)argc, (void)argv;
    fprintf(stderr, "offload mountd: not available in this build yet (docs/connect.md)\n");
    return 1;
}
