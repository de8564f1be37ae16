/* LD_PRELOAD shim for tests/test_transport_send.py: counts sendmsg() calls;
 * sendmsg_calls() (via ctypes) reads the count. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>

static long count;

long sendmsg_calls(void) { return count; }

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    static ssize_t (*real)(int, const struct msghdr *, int);
    if (!real)
        real = (ssize_t (*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT, "sendmsg");
    count++;
    return real(fd, msg, flags);
}
