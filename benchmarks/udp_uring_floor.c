/* udp_uring_floor: udp_floor.c's round trip through io_uring, no event loop.
 *
 * The same two sockets in one thread (a server bound to 127.0.0.1, a client
 * connected to it), one ring, each socket with a receive always armed, and
 * the loop's order of work: a send, then one io_uring_enter that waits for
 * the peer's receive completion (entered only when the CQ is empty), then
 * the answer. What changes between variants is the kernel path:
 *
 *   recv  ms    multishot RECVMSG on a provided-buffer ring (the engine's)
 *         os    one-shot RECVMSG into a fixed buffer, re-armed per datagram
 *         osp   the same with IORING_RECVSEND_POLL_FIRST (no first attempt)
 *   send  sys   send(2)/sendto(2), the engine's datagram send
 *         sqe   a SEND SQE (sendto through addr2 for the server) with
 *               IOSQE_CQE_SKIP_SUCCESS, submitted by the enter that waits
 *   tw    defer IORING_SETUP_DEFER_TASKRUN|SINGLE_ISSUER (the engine's)
 *         coop  IORING_SETUP_COOP_TASKRUN
 *   (every ring has TASKRUN_FLAG; the CQ is read before entering, and an
 *   enter is made with nothing to submit only when SQ_TASKRUN says there is
 *   deferred work or the CQ is empty)
 *
 * Prints, per variant: wall and process CPU time per round trip, the
 * kernel's share, and the syscalls per round trip this program made.
 * Usage: cc -O2 -o udp_uring_floor udp_uring_floor.c
 *        ./udp_uring_floor N SIZE REPS [recv,send,tw ...]   (default: all)
 * With no variants named, every combination runs, interleaved per rep; the
 * blocking floor (udp_floor.c's loop) runs beside them as "block".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NBUF 64
#define BUFSZ 2048
#define BGID 0
#define T_SRV 1
#define T_CLI 2
#define T_SEND 3

struct ring {
    int fd;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array, *sq_flags;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    unsigned tail, pending;
    struct io_uring_buf_ring *br;
    char *bufs;
    unsigned short br_tail;
    long syscalls;
};

struct variant {
    const char *recv, *send, *tw;
};

static int srv, cli;
static struct sockaddr_in srv_addr;
static char msg[65536];

static int enter(struct ring *r, unsigned sub, unsigned min, unsigned flags)
{
    r->syscalls++;
    return (int)syscall(__NR_io_uring_enter, r->fd, sub, min, flags, NULL, 0);
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void ring_init(struct ring *r, const char *tw)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    memset(r, 0, sizeof *r);
    p.flags = IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL;
    p.flags |= strcmp(tw, "defer") == 0 ? IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SINGLE_ISSUER
                                         : IORING_SETUP_COOP_TASKRUN;
    r->fd = (int)syscall(__NR_io_uring_setup, 256, &p);
    if (r->fd < 0)
        die("io_uring_setup");
    size_t sqlen = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cqlen = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t len = sqlen > cqlen ? sqlen : cqlen;
    char *sq = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                    IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED)
        die("mmap sq");
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->sq_flags = (unsigned *)(sq + p.sq_off.flags);
    r->cq_head = (unsigned *)(sq + p.cq_off.head);
    r->cq_tail = (unsigned *)(sq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(sq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(sq + p.cq_off.cqes);
    r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        die("mmap sqes");
    for (unsigned i = 0; i < p.sq_entries; i++)
        r->sq_array[i] = i;
    r->tail = *r->sq_tail;
    r->br = mmap(NULL, NBUF * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    r->bufs = aligned_alloc(4096, NBUF * BUFSZ);
    struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)r->br,
                                   .ring_entries = NBUF, .bgid = BGID};
    if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0)
        die("register pbuf ring");
    for (int i = 0; i < NBUF; i++) {
        struct io_uring_buf *b = &r->br->bufs[i];
        b->addr = (uint64_t)(uintptr_t)(r->bufs + i * BUFSZ);
        b->len = BUFSZ;
        b->bid = (unsigned short)i;
    }
    r->br_tail = NBUF;
    __atomic_store_n(&r->br->tail, r->br_tail, __ATOMIC_RELEASE);
}

static void ring_free(struct ring *r)
{
    close(r->fd);
    free(r->bufs);
    munmap(r->br, NBUF * sizeof(struct io_uring_buf));
}

static void recycle(struct ring *r, unsigned bid)
{
    struct io_uring_buf *b = &r->br->bufs[r->br_tail & (NBUF - 1)];
    b->addr = (uint64_t)(uintptr_t)(r->bufs + bid * BUFSZ);
    b->len = BUFSZ;
    b->bid = (unsigned short)bid;
    r->br_tail++;
    __atomic_store_n(&r->br->tail, r->br_tail, __ATOMIC_RELEASE);
}

static struct io_uring_sqe *sqe(struct ring *r)
{
    struct io_uring_sqe *s = &r->sqes[r->tail & *r->sq_mask];
    memset(s, 0, sizeof *s);
    r->tail++;
    r->pending++;
    return s;
}

/* per socket: the one-shot receive's msghdr and buffers */
struct rx {
    struct msghdr mh;
    struct iovec iov;
    struct sockaddr_in from;
    char buf[65536];
};
static struct rx rx_srv, rx_cli;
static struct msghdr ms_hdr; /* multishot: only msg_namelen matters */

static void arm_recv(struct ring *r, const struct variant *v, int fd, struct rx *x, uint64_t tag)
{
    struct io_uring_sqe *s = sqe(r);
    s->opcode = IORING_OP_RECVMSG;
    s->fd = fd;
    s->user_data = tag;
    if (strcmp(v->recv, "ms") == 0) {
        ms_hdr.msg_namelen = sizeof(struct sockaddr_in);
        s->addr = (uint64_t)(uintptr_t)&ms_hdr;
        s->flags = IOSQE_BUFFER_SELECT;
        s->buf_group = BGID;
        s->ioprio = IORING_RECV_MULTISHOT;
    } else {
        memset(&x->mh, 0, sizeof x->mh);
        x->iov.iov_base = x->buf;
        x->iov.iov_len = sizeof x->buf;
        x->mh.msg_iov = &x->iov;
        x->mh.msg_iovlen = 1;
        x->mh.msg_name = &x->from;
        x->mh.msg_namelen = sizeof x->from;
        s->addr = (uint64_t)(uintptr_t)&x->mh;
        if (strcmp(v->recv, "osp") == 0)
            s->ioprio = IORING_RECVSEND_POLL_FIRST;
    }
}

static void do_send(struct ring *r, const struct variant *v, int fd, const void *buf, size_t len,
                    const struct sockaddr_in *to)
{
    if (strcmp(v->send, "sys") == 0) {
        r->syscalls++;
        ssize_t n = to ? sendto(fd, buf, len, 0, (const struct sockaddr *)to, sizeof *to)
                       : send(fd, buf, len, 0);
        if (n != (ssize_t)len)
            die("send");
        return;
    }
    struct io_uring_sqe *s = sqe(r);
    s->opcode = IORING_OP_SEND;
    s->fd = fd;
    s->addr = (uint64_t)(uintptr_t)buf;
    s->len = (unsigned)len;
    s->flags = IOSQE_CQE_SKIP_SUCCESS;
    s->user_data = T_SEND;
    if (to) {
        s->addr2 = (uint64_t)(uintptr_t)to;
        s->addr_len = sizeof *to;
    }
}

/* wait for the receive completion tagged `tag`; returns payload and sender */
static const char *wait_recv(struct ring *r, const struct variant *v, uint64_t tag, int *len,
                             struct sockaddr_in *from, unsigned *bid)
{
    for (;;) {
        unsigned head = *r->cq_head;
        while (head != __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE)) {
            struct io_uring_cqe *c = &r->cqes[head & *r->cq_mask];
            head++;
            __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
            if (c->user_data == T_SEND) {
                errno = -c->res;
                die("send sqe");
            }
            if (c->res < 0) {
                errno = -c->res;
                die("recv cqe");
            }
            if (c->user_data != tag) {
                fprintf(stderr, "unexpected cqe %llu\n", (unsigned long long)c->user_data);
                exit(1);
            }
            if (strcmp(v->recv, "ms") == 0) {
                if (!(c->flags & IORING_CQE_F_MORE)) {
                    fprintf(stderr, "multishot ended\n");
                    exit(1);
                }
                *bid = c->flags >> IORING_CQE_BUFFER_SHIFT;
                char *b = r->bufs + *bid * BUFSZ;
                struct io_uring_recvmsg_out *o = (struct io_uring_recvmsg_out *)b;
                memcpy(from, b + sizeof *o, sizeof *from);
                *len = (int)o->payloadlen;
                return b + sizeof *o + sizeof(struct sockaddr_in);
            }
            struct rx *x = tag == T_SRV ? &rx_srv : &rx_cli;
            *from = x->from;
            *len = c->res;
            *bid = ~0u;
            return x->buf;
        }
        __atomic_store_n(r->sq_tail, r->tail, __ATOMIC_RELEASE);
        unsigned sub = r->pending;
        r->pending = 0;
        if (enter(r, sub, 1, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR)
            die("io_uring_enter");
    }
}

static double us(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) * 1e6 + (double)(b->tv_nsec - a->tv_nsec) / 1e3;
}

struct result {
    double wall, cpu, sys, calls;
};

/* fresh sockets per run: a closed ring's receives may outlive close(2) for
 * a moment (the ring is torn down asynchronously) and take a datagram */
static void open_sockets(int block)
{
    int nb = block ? 0 : SOCK_NONBLOCK;
    srv = socket(AF_INET, SOCK_DGRAM | nb, 0);
    cli = socket(AF_INET, SOCK_DGRAM | nb, 0);
    memset(&srv_addr, 0, sizeof srv_addr);
    srv_addr.sin_family = AF_INET;
    srv_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof srv_addr;
    if (srv < 0 || cli < 0 || bind(srv, (struct sockaddr *)&srv_addr, sizeof srv_addr) < 0 ||
        getsockname(srv, (struct sockaddr *)&srv_addr, &alen) < 0 ||
        connect(cli, (struct sockaddr *)&srv_addr, sizeof srv_addr) < 0)
        die("sockets");
}

static struct result run(const struct variant *v, int n, int size)
{
    struct ring r;
    int block = strcmp(v->recv, "block") == 0;
    open_sockets(block);
    if (!block) {
        ring_init(&r, v->tw);
        arm_recv(&r, v, srv, &rx_srv, T_SRV);
        arm_recv(&r, v, cli, &rx_cli, T_CLI);
    } else {
        memset(&r, 0, sizeof r);
    }
    int ms = !block && strcmp(v->recv, "ms") == 0;
    struct timespec w0, w1, c0, c1;
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    clock_gettime(CLOCK_MONOTONIC, &w0);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    static char buf[65536];
    for (int i = 0; i < n; i++) {
        struct sockaddr_in from;
        int len;
        unsigned bid;
        if (block) {
            socklen_t flen = sizeof from;
            r.syscalls += 4;
            if (send(cli, msg, (size_t)size, 0) != size)
                die("send");
            ssize_t k = recvfrom(srv, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen);
            if (k != size || sendto(srv, buf, (size_t)k, 0, (struct sockaddr *)&from, flen) != k)
                die("server");
            if (recv(cli, buf, sizeof buf, 0) != size)
                die("recv");
            continue;
        }
        do_send(&r, v, cli, msg, (size_t)size, NULL);
        const char *p = wait_recv(&r, v, T_SRV, &len, &from, &bid);
        if (len != size)
            die("srv len");
        /* the answer goes out of the received buffer, as an echo server's
         * would (a SEND SQE reads it at submit, so the buffer may go back
         * to the ring only after that: copy it here for simplicity) */
        memcpy(buf, p, (size_t)len);
        if (ms)
            recycle(&r, bid);
        else
            arm_recv(&r, v, srv, &rx_srv, T_SRV);
        static struct sockaddr_in to;
        to = from;
        do_send(&r, v, srv, buf, (size_t)len, &to);
        p = wait_recv(&r, v, T_CLI, &len, &from, &bid);
        if (len != size)
            die("cli len");
        if (ms)
            recycle(&r, bid);
        else
            arm_recv(&r, v, cli, &rx_cli, T_CLI);
    }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    clock_gettime(CLOCK_MONOTONIC, &w1);
    getrusage(RUSAGE_SELF, &r1);
    struct result res;
    res.wall = us(&w0, &w1) / n;
    res.cpu = us(&c0, &c1) / n;
    res.sys = ((double)(r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) * 1e6 +
               (double)(r1.ru_stime.tv_usec - r0.ru_stime.tv_usec)) /
              n;
    res.calls = (double)r.syscalls / n;
    if (!block)
        ring_free(&r); /* closing the ring cancels the receives */
    close(srv);
    close(cli);
    return res;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: udp_uring_floor N SIZE REPS [recv,send,tw ...]\n");
        return 1;
    }
    int n = atoi(argv[1]), size = atoi(argv[2]), reps = atoi(argv[3]);
    if (n <= 0 || size <= 0 || size > BUFSZ - 64 || reps <= 0 || reps > 64) {
        fprintf(stderr, "udp_uring_floor: N > 0, 0 < SIZE <= %d, 0 < REPS <= 64\n", BUFSZ - 64);
        return 1;
    }
    static struct variant vs[64];
    int nv = 0;
    vs[nv++] = (struct variant){"block", "-", "-"};
    if (argc > 4) {
        for (int i = 4; i < argc && nv < 64; i++) {
            char *a = strdup(argv[i]), *s1 = strchr(a, ','), *s2 = s1 ? strchr(s1 + 1, ',') : NULL;
            if (!s1 || !s2) {
                fprintf(stderr, "variant: recv,send,tw\n");
                return 1;
            }
            *s1 = *s2 = 0;
            vs[nv++] = (struct variant){a, s1 + 1, s2 + 1};
        }
    } else {
        const char *rs[] = {"ms", "os", "osp"}, *ss[] = {"sys", "sqe"}, *ts[] = {"defer", "coop"};
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 2; b++)
                for (int c = 0; c < 2; c++)
                    vs[nv++] = (struct variant){rs[a], ss[b], ts[c]};
    }
    memset(msg, 7, (size_t)size);
    static struct result res[64][64];
    for (int k = 0; k < reps; k++)
        for (int j = 0; j < nv; j++) {
            int i = (j + k) % nv; /* rotate the order per rep */
            res[i][k] = run(&vs[i], n, size);
        }
    printf("%d B round trips, %d per rep, median of %d reps\n", size, n, reps);
    printf("%-16s %8s %8s %7s %9s\n", "recv,send,tw", "wall us", "CPU us", "kernel", "syscalls");
    for (int i = 0; i < nv; i++) {
        double w[64], c[64], s[64];
        for (int k = 0; k < reps; k++) {
            w[k] = res[i][k].wall;
            c[k] = res[i][k].cpu;
            s[k] = res[i][k].sys / res[i][k].cpu * 100;
        }
        qsort(w, (size_t)reps, sizeof(double), cmpd);
        qsort(c, (size_t)reps, sizeof(double), cmpd);
        qsort(s, (size_t)reps, sizeof(double), cmpd);
        char name[64];
        snprintf(name, sizeof name, "%s,%s,%s", vs[i].recv, vs[i].send, vs[i].tw);
        printf("%-16s %8.2f %8.2f %6.0f%% %9.2f\n", name, w[reps / 2], c[reps / 2], s[reps / 2],
               res[i][0].calls);
    }
    return 0;
}
