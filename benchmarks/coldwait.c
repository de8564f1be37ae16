/* coldwait.so: for server_instructions.py --cold. Preloaded into a server run
 * under callgrind --cache-sim=yes, it switches callgrind's instrumentation off
 * before every wait that may block (epoll_wait/epoll_pwait with a timeout
 * other than 0, io_uring_enter through syscall() with GETEVENTS and a
 * min_complete) and on after it. Callgrind clears its simulated caches at
 * every switch (callgrind/main.c CLG_(set_instrument_state)), so every wake-up
 * starts with empty caches: a request's misses are then the lines it touches
 * (its footprint), what a wake-up after the kernel and the other tasks ran
 * meets at worst. The wait itself is not counted; the wrapper's own few
 * instructions are, the same on every loop. With COLDWAIT_LOG set, the
 * number of waits it emptied the caches at so far is kept in that file
 * (rewritten at each, while nothing is counted: the server ends in _exit).
 *
 *     cc -O2 -shared -fPIC -o coldwait.so coldwait.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <valgrind/callgrind.h>

#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#define ENTER_GETEVENTS 1u

static long flushes;
static int log_fd = -2;

/* called with the instrumentation off */
static void count_flush(void)
{
    flushes++;
    if (log_fd == -2) {
        const char *path = getenv("COLDWAIT_LOG");
        log_fd = path ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
    }
    if (log_fd >= 0) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%20ld\n", flushes);
        if (pwrite(log_fd, buf, (size_t)n, 0) < 0)
            log_fd = -1;
    }
}

static int (*real_epoll_wait)(int, struct epoll_event *, int, int);
static int (*real_epoll_pwait)(int, struct epoll_event *, int, int, const sigset_t *);
static long (*real_syscall)(long, ...);

int epoll_wait(int epfd, struct epoll_event *evs, int n, int ms)
{
    if (!real_epoll_wait)
        real_epoll_wait = (int (*)(int, struct epoll_event *, int, int))dlsym(RTLD_NEXT, "epoll_wait");
    if (ms == 0)
        return real_epoll_wait(epfd, evs, n, ms);
    CALLGRIND_STOP_INSTRUMENTATION;
    count_flush();
    int r = real_epoll_wait(epfd, evs, n, ms);
    CALLGRIND_START_INSTRUMENTATION;
    return r;
}

int epoll_pwait(int epfd, struct epoll_event *evs, int n, int ms, const sigset_t *mask)
{
    if (!real_epoll_pwait)
        real_epoll_pwait = (int (*)(int, struct epoll_event *, int, int, const sigset_t *))dlsym(
            RTLD_NEXT, "epoll_pwait");
    if (ms == 0)
        return real_epoll_pwait(epfd, evs, n, ms, mask);
    CALLGRIND_STOP_INSTRUMENTATION;
    count_flush();
    int r = real_epoll_pwait(epfd, evs, n, ms, mask);
    CALLGRIND_START_INSTRUMENTATION;
    return r;
}

long syscall(long nr, ...)
{
    va_list ap;
    long a[6];
    va_start(ap, nr);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (!real_syscall)
        real_syscall = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    /* min_complete and flags are unsigned ints: a variadic int's upper half
     * in its 64-bit register is not defined */
    int wait = nr == __NR_io_uring_enter && ((unsigned)a[3] & ENTER_GETEVENTS) &&
               (unsigned)a[2] > 0;
    if (wait) {
        CALLGRIND_STOP_INSTRUMENTATION;
        count_flush();
    }
    long r = real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (wait)
        CALLGRIND_START_INSTRUMENTATION;
    return r;
}
