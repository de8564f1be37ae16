/* coldwait.so: for server_instructions.py --cold and conn_counts.py. Preloaded
 * into a server run under callgrind --cache-sim=yes, it switches callgrind's
 * instrumentation off before every wait that may block (epoll_wait/epoll_pwait
 * with a timeout other than 0, io_uring_enter through syscall() with
 * GETEVENTS and a min_complete) and on after it. Callgrind clears its
 * simulated caches at every switch (callgrind/main.c
 * CLG_(set_instrument_state)), so every wake-up starts with empty caches: a
 * request's misses are then the lines it touches (its footprint), what a
 * wake-up after the kernel and the other tasks ran meets at worst. The wait
 * itself is not counted; the wrapper's own few instructions are, the same on
 * every loop. Outside valgrind the client requests do nothing and it only
 * counts (conn_counts.py preloads it into a native server).
 *
 * With COLDWAIT_LOG set, that file holds two counts, one a line: the waits
 * that may block so far, then every call of those kinds (io_uring_enter
 * through syscall(), epoll_wait, epoll_pwait, whatever their arguments). The
 * file is mapped once and both counts are written into the mapping at each
 * wait (a call that cannot block only adds one to the second): no syscall
 * per call, so a tracer of the server (strace -c) sees only the server's
 * own, and a server blocked in a wait has its file up to date, that wait
 * included (the server ends in _exit; the mapping is shared).
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
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <valgrind/callgrind.h>

#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#define ENTER_GETEVENTS 1u
#define LOG_BYTES 42 /* two "%20ld\n" lines */

static long waits, calls;
static char *log_map;
static int log_state; /* 0: not opened yet, 1: mapped, -1: none */

/* called with the instrumentation off */
static void count_wait(void)
{
    calls++;
    waits++;
    if (log_state == 0) {
        log_state = -1;
        const char *path = getenv("COLDWAIT_LOG");
        int fd = path ? open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
        if (fd >= 0 && ftruncate(fd, LOG_BYTES) == 0) {
            void *p = mmap(NULL, LOG_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (p != MAP_FAILED) {
                log_map = p;
                log_state = 1;
            }
        }
        if (fd >= 0)
            close(fd);
    }
    if (log_state == 1) {
        char buf[LOG_BYTES + 1];
        snprintf(buf, sizeof buf, "%20ld\n%20ld\n", waits, calls);
        memcpy(log_map, buf, LOG_BYTES);
    }
}

static int (*real_epoll_wait)(int, struct epoll_event *, int, int);
static int (*real_epoll_pwait)(int, struct epoll_event *, int, int, const sigset_t *);
static long (*real_syscall)(long, ...);

int epoll_wait(int epfd, struct epoll_event *evs, int n, int ms)
{
    if (!real_epoll_wait)
        real_epoll_wait = (int (*)(int, struct epoll_event *, int, int))dlsym(RTLD_NEXT, "epoll_wait");
    if (ms == 0) {
        calls++;
        return real_epoll_wait(epfd, evs, n, ms);
    }
    CALLGRIND_STOP_INSTRUMENTATION;
    count_wait();
    int r = real_epoll_wait(epfd, evs, n, ms);
    CALLGRIND_START_INSTRUMENTATION;
    return r;
}

int epoll_pwait(int epfd, struct epoll_event *evs, int n, int ms, const sigset_t *mask)
{
    if (!real_epoll_pwait)
        real_epoll_pwait = (int (*)(int, struct epoll_event *, int, int, const sigset_t *))dlsym(
            RTLD_NEXT, "epoll_pwait");
    if (ms == 0) {
        calls++;
        return real_epoll_pwait(epfd, evs, n, ms, mask);
    }
    CALLGRIND_STOP_INSTRUMENTATION;
    count_wait();
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
        count_wait();
    } else if (nr == __NR_io_uring_enter) {
        calls++;
    }
    long r = real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (wait)
        CALLGRIND_START_INSTRUMENTATION;
    return r;
}
