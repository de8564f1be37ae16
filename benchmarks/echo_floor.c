/* echo_floor: the echo server that costs the least, for the 100 KiB echo
 * rows' ceiling (decision 1034).
 *
 * No loop, no Python: one thread, level-triggered epoll, and for each
 * readable connection one recv() of up to 256 KiB (uvloop's read size)
 * into one static buffer and one blocking send() of what came. Per request
 * on a 100 KiB echo: one receive and one send, the two copies of the bytes
 * that any server makes, and a wait only when nothing is readable. The
 * requests/s that loadgen reaches against it, and loadgen's own CPU per
 * request then, are what the client allows any server on this host.
 *
 * Usage: cc -O2 -o echo_floor echo_floor.c && ./echo_floor PATH [CPU]
 * (PATH: a Unix socket path to listen on, as net_server.py --unix; CPU:
 * pin to it, as net_server.py --cpu.) Prints "READY PATH", then serves
 * until killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024)

static char buf[READ_SIZE];

static void die(const char *what)
{
    perror(what);
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH [CPU]\n", argv[0]);
        return 2;
    }
    if (argc > 2) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[2]), &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            die("sched_setaffinity");
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof sa.sun_path) {
        fprintf(stderr, "path too long\n");
        return 2;
    }
    strcpy(sa.sun_path, argv[1]);
    unlink(argv[1]);
    int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 128) < 0)
        die("listen");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) < 0)
        die("epoll");
    printf("READY %s\n", argv[1]);
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            int fd = evs[k].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, 0)) >= 0) {
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce) < 0)
                        die("epoll_ctl");
                }
                continue;
            }
            ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) {
                close(fd); /* EOF or an error: epoll forgets the fd */
                continue;
            }
            for (ssize_t off = 0; off < r;) { /* blocking socket: all of it */
                ssize_t w = send(fd, buf + off, (size_t)(r - off), MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EINTR)
                        continue;
                    close(fd);
                    break;
                }
                off += w;
            }
        }
    }
}
