/* offload.h - the subcommands of the offload binary, one file each (tools/cmd_*.c). */
#ifndef OFFLOAD_TOOLS_H
#define OFFLOAD_TOOLS_H

#include <stdint.h>

int cmd_mount(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_connect(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_disconnect(int argc, char **argv);
int cmd_mountd(int argc, char **argv);

/* The version string (`offload --version`); major.minor must match across a session's ends. */
#define OFFLOAD_VERSION "0.3.0"

/* Parse "123", "64k", "10M", "2G", "1T" (powers of 1024). 0 or -EINVAL. */
int parse_size(const char *s, uint64_t *out);
/* Parse seconds, maybe fractional ("2.5") or with a unit ("500ms", "3s", "2m"), into ms. */
int parse_duration_ms(const char *s, int *out);

#endif
