/* loadgen: a closed-loop echo load generator for benchmarks/net_bench.py.
 *
 * N connections, each with exactly one message of a fixed size in flight: send
 * it, read the same number of bytes back, (optionally) compare them with what
 * was sent, then send the next. One thread, level-triggered epoll, TCP or Unix
 * sockets, optionally TLS (OpenSSL; built without it when -DLOADGEN_NO_TLS).
 *
 * Protocol with the driver (stdout, line by line, flushed):
 *   START             the warm-up is over, the measured window begins
 *   {...json...}      the window is over: requests, rps, p50_us, p99_us, ...
 * With --idle the connections are only opened (each does one round trip so
 * the server certainly holds it), then "READY n" is printed and the program
 * waits until stdin closes, then exits (closing with RST, no TIME_WAIT).
 *
 * Usage: loadgen (--tcp HOST:PORT | --unix PATH) [-c CONNS] [-s SIZE]
 *                [-d SECONDS] [-w WARMUP_SECONDS] [--verify] [--tls] [--idle]
 * Exit status: 0 on success, 1 on a usage/connect error, 2 when a byte
 * differed under --verify or a connection closed early.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef LOADGEN_NO_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

/* latency histogram: 1 µs buckets up to 1 s, the last bucket takes the rest */
#define HIST_MAX 1000000

typedef struct {
    int fd;
    uint64_t seq;       /* message number: the payload pattern depends on it */
    size_t sent;        /* bytes of the current message written */
    size_t got;         /* bytes of its echo read */
    uint64_t t0;        /* send time of the current message, ns */
    int want_out;       /* EPOLLOUT currently armed */
#ifndef LOADGEN_NO_TLS
    SSL *ssl;
#endif
} Conn;

static size_t msg_size = 1024;
static int verify = 0, use_tls = 0;
static unsigned char *rbuf;
static uint32_t *hist;
static uint64_t measured, errors_verify, completed; /* completed: warm-up included */
static int measuring;
#ifndef LOADGEN_NO_TLS
static SSL_CTX *ssl_ctx;
#endif

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* byte i of message seq: changes with both, so a reordered or stale echo shows */
static inline unsigned char pattern(uint64_t seq, size_t i)
{
    return (unsigned char)((seq * 131u + i * 7u + (i >> 8)) & 0xff);
}

static void fill(unsigned char *buf, uint64_t seq)
{
    for (size_t i = 0; i < msg_size; i++)
        buf[i] = pattern(seq, i);
}

static int open_conn(const char *tcp_host, const char *tcp_port, const char *unix_path)
{
    int fd;
    if (unix_path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(unix_path) >= sizeof sa.sun_path) {
            errno = ENAMETOOLONG;
            die("unix path");
        }
        strcpy(sa.sun_path, unix_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket");
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            die("connect");
    } else {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
        int rc = getaddrinfo(tcp_host, tcp_port, &hints, &ai);
        if (rc != 0) {
            fprintf(stderr, "loadgen: getaddrinfo: %s\n", gai_strerror(rc));
            exit(1);
        }
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket");
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0)
            die("connect");
        freeaddrinfo(ai);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

/* I/O that hides TLS: >0 bytes, 0 = peer closed, -1 = would block, -2 = error */
static ssize_t io_write(Conn *c, const void *buf, size_t n)
{
#ifndef LOADGEN_NO_TLS
    if (c->ssl) {
        int r = SSL_write(c->ssl, buf, (int)n);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        return (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) ? -1 : -2;
    }
#endif
    ssize_t r = send(c->fd, buf, n, MSG_NOSIGNAL);
    if (r < 0)
        return (errno == EAGAIN || errno == EINTR) ? -1 : -2;
    return r;
}

static ssize_t io_read(Conn *c, void *buf, size_t n)
{
#ifndef LOADGEN_NO_TLS
    if (c->ssl) {
        int r = SSL_read(c->ssl, buf, (int)n);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN)
            return 0;
        return (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) ? -1 : -2;
    }
#endif
    ssize_t r = recv(c->fd, buf, n, 0);
    if (r < 0)
        return (errno == EAGAIN || errno == EINTR) ? -1 : -2;
    return r;
}

static void set_out(int ep, Conn *c, int on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->want_out = on;
}

/* write as much of the current message as the socket takes */
static void pump_write(int ep, Conn *c, unsigned char *sbuf)
{
    while (c->sent < msg_size) {
        ssize_t r = io_write(c, sbuf + c->sent, msg_size - c->sent);
        if (r == -1) {
            set_out(ep, c, 1);
            return;
        }
        if (r < 0) {
            fprintf(stderr, "loadgen: send failed: %s\n", strerror(errno));
            exit(2);
        }
        c->sent += (size_t)r;
    }
    set_out(ep, c, 0);
}

static void start_msg(int ep, Conn *c, unsigned char *sbuf)
{
    c->seq++;
    c->sent = c->got = 0;
    if (verify)
        fill(sbuf, c->seq);
    c->t0 = now_ns();
    pump_write(ep, c, sbuf);
}

static void record(uint64_t ns)
{
    completed++;
    if (!measuring)
        return;
    uint64_t us = ns / 1000;
    hist[us < HIST_MAX ? us : HIST_MAX - 1]++;
    measured++;
}

static double percentile(double p)
{
    uint64_t want = (uint64_t)(p * (double)measured), seen = 0;
    if (want >= measured && measured > 0)
        want = measured - 1;
    for (uint64_t i = 0; i < HIST_MAX; i++) {
        seen += hist[i];
        if (seen > want)
            return (double)i + 0.5;
    }
    return (double)HIST_MAX;
}

#ifndef LOADGEN_NO_TLS
static void tls_attach(Conn *c)
{
    c->ssl = SSL_new(ssl_ctx);
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_connect(c->ssl) != 1) { /* the socket is still blocking here */
        ERR_print_errors_fp(stderr);
        fprintf(stderr, "loadgen: TLS handshake failed\n");
        exit(1);
    }
}
#endif

int main(int argc, char **argv)
{
    const char *tcp = NULL, *unix_path = NULL;
    int conns = 1, idle = 0;
    double duration = 5.0, warmup = 1.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--tcp") && v) tcp = v, i++;
        else if (!strcmp(a, "--unix") && v) unix_path = v, i++;
        else if (!strcmp(a, "-c") && v) conns = atoi(v), i++;
        else if (!strcmp(a, "-s") && v) msg_size = (size_t)atol(v), i++;
        else if (!strcmp(a, "-d") && v) duration = atof(v), i++;
        else if (!strcmp(a, "-w") && v) warmup = atof(v), i++;
        else if (!strcmp(a, "--verify")) verify = 1;
        else if (!strcmp(a, "--tls")) use_tls = 1;
        else if (!strcmp(a, "--idle")) idle = 1;
        else {
            fprintf(stderr, "usage: loadgen (--tcp HOST:PORT | --unix PATH) [-c N] [-s SIZE] "
                            "[-d SEC] [-w SEC] [--verify] [--tls] [--idle]\n");
            return 1;
        }
    }
    if ((!tcp) == (!unix_path) || conns < 1 || msg_size < 1) {
        fprintf(stderr, "loadgen: give exactly one of --tcp/--unix, -c >= 1, -s >= 1\n");
        return 1;
    }
#ifdef LOADGEN_NO_TLS
    if (use_tls) {
        fprintf(stderr, "loadgen: built without OpenSSL (LOADGEN_NO_TLS)\n");
        return 1;
    }
#else
    if (use_tls) {
        ssl_ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_NONE, NULL); /* loopback, our own test cert */
        SSL_CTX_set_mode(ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
#endif
    char host[256] = "", port[32] = "";
    if (tcp) {
        const char *colon = strrchr(tcp, ':');
        if (!colon || (size_t)(colon - tcp) >= sizeof host) {
            fprintf(stderr, "loadgen: --tcp wants HOST:PORT\n");
            return 1;
        }
        memcpy(host, tcp, (size_t)(colon - tcp));
        snprintf(port, sizeof port, "%s", colon + 1);
    }

    Conn *cs = calloc((size_t)conns, sizeof *cs);
    /* one send buffer per connection only when verifying (the pattern differs
     * per message); otherwise all share one constant buffer */
    unsigned char *sbufs = malloc(verify ? msg_size * (size_t)conns : msg_size);
    unsigned char *exp = malloc(msg_size);
    rbuf = malloc(msg_size > 65536 ? msg_size : 65536);
    hist = calloc(HIST_MAX, sizeof *hist);
    if (!cs || !sbufs || !exp || !rbuf || !hist)
        die("malloc");
    if (!verify)
        memset(sbufs, 'x', msg_size);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    for (int i = 0; i < conns; i++) {
        Conn *c = &cs[i];
        c->fd = open_conn(host, port, unix_path);
#ifndef LOADGEN_NO_TLS
        if (use_tls)
            tls_attach(c);
#endif
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die("epoll_ctl");
    }

    uint64_t t_start = now_ns();
    uint64_t t_measure = t_start + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_measure + (uint64_t)(duration * 1e9);
    uint64_t t_real_start = 0;
    if (idle) /* one round trip each, then hold */
        t_measure = t_end = UINT64_MAX;
    int done_idle = 0;

    for (int i = 0; i < conns; i++)
        start_msg(ep, &cs[i], verify ? sbufs + msg_size * (size_t)i : sbufs);

    struct epoll_event evs[256];
    for (;;) {
        uint64_t t = now_ns();
        if (!measuring && t >= t_measure) {
            measuring = 1;
            t_real_start = t;
            printf("START\n");
            fflush(stdout);
        }
        if (t >= t_end)
            break;
        int n = epoll_wait(ep, evs, 256, 50);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            Conn *c = evs[k].data.ptr;
            unsigned char *sbuf = verify ? sbufs + msg_size * (size_t)(c - cs) : sbufs;
            if ((evs[k].events & EPOLLOUT) && c->sent < msg_size)
                pump_write(ep, c, sbuf);
            if (!(evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                continue;
            for (;;) { /* TLS may hold decrypted bytes past one read: drain */
                size_t room = msg_size - c->got;
                if (room == 0)
                    break;
                ssize_t r = io_read(c, rbuf, room);
                if (r == -1)
                    break;
                if (r <= 0) {
                    fprintf(stderr, "loadgen: connection %d closed by the server (%s)\n",
                            (int)(c - cs), r == 0 ? "EOF" : strerror(errno));
                    return 2;
                }
                if (verify) {
                    for (size_t j = 0; j < (size_t)r; j++) {
                        if (rbuf[j] != pattern(c->seq, c->got + j)) {
                            errors_verify++;
                            break;
                        }
                    }
                }
                c->got += (size_t)r;
                if (c->got == msg_size) {
                    uint64_t t1 = now_ns();
                    record(t1 - c->t0);
                    if (idle) {
                        if (++done_idle == conns) {
                            printf("READY %d\n", conns);
                            fflush(stdout);
                            char b[64];
                            while (read(0, b, sizeof b) > 0)
                                ;
                            struct linger lg = {1, 0};
                            for (int j = 0; j < conns; j++)
                                setsockopt(cs[j].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
                            return 0;
                        }
                        break;
                    }
                    if (c->sent < msg_size) {
                        fprintf(stderr, "loadgen: echo arrived before the send finished\n");
                        return 2;
                    }
                    start_msg(ep, c, sbuf);
                    break;
                }
            }
        }
    }
    double secs = (double)(now_ns() - t_real_start) / 1e9;
    printf("{\"requests\": %llu, \"seconds\": %.6f, \"rps\": %.1f, \"p50_us\": %.1f, "
           "\"p99_us\": %.1f, \"conns\": %d, \"size\": %zu, \"verified\": %s, "
           "\"verify_errors\": %llu, \"completed\": %llu}\n",
           (unsigned long long)measured, secs, (double)measured / secs, percentile(0.50),
           percentile(0.99), conns, msg_size, verify ? "true" : "false",
           (unsigned long long)errors_verify, (unsigned long long)completed);
    fflush(stdout);
    return errors_verify ? 2 : 0;
}
