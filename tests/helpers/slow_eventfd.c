/* LD_PRELOAD shim for tests/test_engine_native.py (the wake vs close race):
 * an 8-byte write() to an eventfd sleeps SLOW_EVENTFD_MS first (default 400),
 * standing for a waker thread descheduled inside ul_wake, and creates the
 * file $SLOW_EVENTFD_MARK so the test knows the window was really open. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

ssize_t write(int fd, const void *buf, size_t n)
{
    static ssize_t (*real)(int, const void *, size_t);
    if (!real)
        real = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (n == 8) {
        char path[64], link[64] = "";
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t k = readlink(path, link, sizeof link - 1);
        if (k > 0) {
            link[k] = 0;
            if (strstr(link, "eventfd")) {
                const char *mark = getenv("SLOW_EVENTFD_MARK");
                const char *ms = getenv("SLOW_EVENTFD_MS");
                if (mark) {
                    int m = open(mark, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
                    if (m >= 0)
                        close(m);
                }
                usleep((useconds_t)(ms ? atoi(ms) : 400) * 1000);
            }
        }
    }
    return real(fd, buf, n);
}
