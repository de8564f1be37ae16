/* LD_PRELOAD shim for tests/test_engine_native.py: counts fcntl(F_GETFL)
 * and fcntl(F_SETFL) calls; fcntl_count() (via ctypes) reads the count. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>

static long count;

long fcntl_count(void) { return count; }

int fcntl(int fd, int cmd, ...)
{
    static int (*real)(int, int, ...);
    if (!real)
        real = (int (*)(int, int, ...))dlsym(RTLD_NEXT, "fcntl");
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (cmd == F_GETFL || cmd == F_SETFL)
        count++;
    return real(fd, cmd, arg);
}
