/* deadline.h - "now + ms" on a clock, as the struct timespec that pthread_cond_timedwait and
 * pthread_rwlock_timedwrlock take (CLOCK_REALTIME unless the condition variable was set to
 * another clock): the one place that carries nanoseconds into seconds. */
#ifndef OFFLOAD_DEADLINE_H
#define OFFLOAD_DEADLINE_H

#include <stdint.h>
#include <time.h>

/* ms >= 0 */
static inline struct timespec deadline_ms(clockid_t clock, int64_t ms)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + ms % 1000 * 1000000;
    ts.tv_sec += (time_t)(ms / 1000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    return ts;
}

#endif
