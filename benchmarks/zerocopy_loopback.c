/* zerocopy_loopback: what MSG_ZEROCOPY does to a TCP send over loopback.
 *
 * One process, two threads pinned together by the caller (taskset -c 0):
 * the sender writes COUNT messages of SIZE bytes to a loopback TCP
 * connection with send() or, with MODE 1, send(MSG_ZEROCOPY) on a socket
 * with SO_ZEROCOPY, reading the completion notifications off the error
 * queue as it goes; the reader thread receives every byte. Prints the
 * sending thread's CPU per message, the whole process's (both ends) per
 * message, and how many notifications came and how many of them say the
 * kernel copied the data after all (SO_EE_CODE_ZEROCOPY_COPIED).
 *
 * Usage: cc -O2 -pthread -o zerocopy_loopback zerocopy_loopback.c &&
 *        taskset -c 0 ./zerocopy_loopback SIZE COUNT MODE
 * (design.md decision 413)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif

static size_t size;
static long count;

static double cpu(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void *reader(void *arg)
{
    int fd = *(int *)arg;
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    long long left = (long long)size * count;
    while (left > 0) {
        ssize_t n = recv(fd, buf, cap, 0);
        if (n <= 0)
            break;
        left -= n;
    }
    free(buf);
    return NULL;
}

/* read the error queue dry; count notifications and copied ones */
static void notes(int fd, long *all, long *copied)
{
    char ctl[128];
    for (;;) {
        struct msghdr m = {0};
        m.msg_control = ctl;
        m.msg_controllen = sizeof ctl;
        if (recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
            return;
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        if (c == NULL)
            continue;
        struct sock_extended_err *e = (void *)CMSG_DATA(c);
        if (e->ee_origin != SO_EE_ORIGIN_ZEROCOPY)
            continue;
        (*all)++;
        if (e->ee_code & SO_EE_CODE_ZEROCOPY_COPIED)
            (*copied)++;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SIZE COUNT MODE(0 send, 1 MSG_ZEROCOPY)\n", argv[0]);
        return 2;
    }
    size = (size_t)atol(argv[1]);
    count = atol(argv[2]);
    int zc = atoi(argv[3]), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (void *)&a, sizeof a) || getsockname(l, (void *)&a, &alen) || listen(l, 1)) {
        perror("listen");
        return 1;
    }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (void *)&a, sizeof a)) {
        perror("connect");
        return 1;
    }
    int r = accept(l, NULL, NULL);
    if (r < 0 || (zc && setsockopt(s, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof one))) {
        perror("accept/SO_ZEROCOPY");
        return 1;
    }
    pthread_t t;
    pthread_create(&t, NULL, reader, &r);
    char *buf = malloc(size);
    memset(buf, 'x', size);
    long all = 0, copied = 0;
    double p0 = cpu(CLOCK_PROCESS_CPUTIME_ID), t0 = cpu(CLOCK_THREAD_CPUTIME_ID);
    for (long i = 0; i < count; i++) {
        size_t off = 0;
        while (off < size) {
            ssize_t n = send(s, buf + off, size - off, zc ? MSG_ZEROCOPY : 0);
            if (n < 0 && errno == ENOBUFS) { /* too many pages pinned: reap */
                notes(s, &all, &copied);
                continue;
            }
            if (n < 0) {
                perror("send");
                return 1;
            }
            off += (size_t)n;
        }
        if (zc)
            notes(s, &all, &copied);
    }
    double t1 = cpu(CLOCK_THREAD_CPUTIME_ID);
    pthread_join(t, NULL);
    double p1 = cpu(CLOCK_PROCESS_CPUTIME_ID);
    printf("%-12s size %zu: sender %.2f us/msg, both ends %.2f us/msg, notifications %ld (copied %ld)\n",
           zc ? "MSG_ZEROCOPY" : "send", size, (t1 - t0) / count * 1e6, (p1 - p0) / count * 1e6, all,
           copied);
    return 0;
}
