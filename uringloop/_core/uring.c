/*
 * uring.c -- the io_uring backend, on raw syscalls (no liburing).
 *
 * Shape of a loop turn (uring_run):
 *   1. restart what waits in the backlog (ops that found the SQ full, multishot
 *      ops the kernel ended for its own reasons, level polls to re-arm);
 *   2. one io_uring_enter that both submits and, when nothing is ready, waits
 *      (EXT_ARG timeout) -- skipped entirely when there is nothing to submit,
 *      no reason to wait, and the SQ flags say no deferred work is pending;
 *   3. reap the mapped CQ in C and turn CQEs into records.
 *
 * The ring is created R_DISABLED and enabled by the thread that first runs
 * it: with SINGLE_ISSUER only that thread may submit, and Python often makes a
 * loop in one thread and runs it in another. Until then SQEs just accumulate.
 * When the loop stops running, ul_park takes every request out of the kernel
 * and a later run from another thread gets a ring of its own (see "park").
 *
 * EAGAIN: sockets stay O_NONBLOCK (asyncio requires it), and on some kernels
 * an op on such a socket completes with -EAGAIN instead of waiting. We never
 * surface that: the op waits on an internal one-shot POLL_ADD (user_data
 * ud | KUD_POLL) and is reissued when it fires.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "uapi.h"

#define EXPORT __attribute__((visibility("default")))
/* Pool buffers the stream ring holds at first (ring_top_up) and after an idle
 * trim (or the size its last whole window ended at, if smaller: decision 797);
 * it doubles whenever the ring runs dry, and halves, down to
 * UL_RING_WANT_MIN, after UL_RING_WINDOW runs in a row in which none took more
 * than a third of it (decision 759): the kernel takes the ring's entries first
 * in, first out, so every buffer the ring holds is in the rotation, and one
 * connection's receives walk them all. Not smaller at first: a ring of 4 cut
 * a 100 KiB message already waiting into two data_received calls where the
 * stock loop makes one (decision 748) */
#define UL_RING_WANT0 64
#define UL_RING_WANT_MIN 16
#define UL_RING_WINDOW 256
/* A stream receive with the kernel's byte limit takes at most this many ring
 * buffers in one bundle (decision 925): epoll's RECV_IOV */
#define UL_RECV_BUNDLE_BUFS 8
#define UL_IOV_MAX 1024   /* UIO_MAXIOV: more iovecs go out in the next SENDMSG */
/* Pieces of deferred completion work one no-wait enter may run (decision 767):
 * the kernel runs max(20, min_complete) of them per GETEVENTS enter
 * (IO_LOCAL_TW_DEFAULT_MAX), so a busy ring paid an enter per 20 records */
#define UL_TW_BATCH 64
#define UL_TW_KERNEL 20

struct uring {
    int ring_fd, enter_fd;
    uint32_t enter_flags;
    uint32_t setup_flags, features;
    int enabled, wake_armed;
    int tw_busy;                /* the last no-wait enter for deferred work took as many
                                   pieces as the kernel runs in one (decision 767) */
    int parked;                 /* ul_park: no request of ours in the kernel; ops wait in
                                   the backlog, the ring fd is not registered */
    const void *owner;
    unsigned reg_countdown;     /* runs after an unpark before the ring fd is
                                   registered again (see unpark) */
    unsigned *sq_khead, *sq_ktail, *sq_kflags;
    unsigned sq_mask, sq_entries, sqe_tail;
    struct ul_sqe *sqes;
    unsigned *cq_khead, *cq_ktail, cq_mask;
    struct ul_cqe *cqes;
    void *ring_ptr;
    size_t ring_sz, sqes_sz;
    struct ul_buf *br;
    size_t br_sz;
    uint16_t br_tail;
    unsigned br_mask;
    unsigned br_avail;          /* buffers in the ring the kernel has not reported yet */
    unsigned br_want;           /* how many the ring should hold: see ring_top_up */
    int br_dry;                 /* a receive found the ring empty since the last top-up */
    unsigned br_took;           /* ring buffers the kernel took since the last top-up */
    unsigned br_peak;           /* the most of them between two top-ups, this window */
    unsigned br_runs;           /* top-ups in this window (see ring_top_up) */
    unsigned br_home;           /* br_want at the end of the last whole window
                                   (0: none yet): an idle trim starts the ring
                                   again there, at most UL_RING_WANT0 (797) */
    uint16_t *br_pos;           /* the ring index each stream-pool bid was last pushed at */
    int bundle;                 /* multishot recv takes several ring buffers per CQE */
    uint32_t recv_limit;        /* a stream's multishot recv ends after this many bytes
                                   (sqe->optlen, 6.16+; 0: none): its re-arm waits in
                                   the backlog for the next run (decision 924) */
    unsigned limit_bufs;        /* with recv_limit: the most ring buffers one bundle of a
                                   stream's receive maps (its sqe->len; 0 without it) */
    int recv_capped;            /* a limited receive's bundle filled its sqe->len in this
                                   reap: its continuation is deferred work (925) */
    struct ul_buf *dr;          /* the datagram pool's ring (buffer group 1) */
    size_t dr_sz;
    uint16_t dr_tail;
    int ms_recv, ms_accept, bufring, cancel_fd;
    int ring_cookie;            /* a multishot recv's identity comes from the ring
                                   (take_cookie; 6.7's SOCKET_URING_OP_GETSOCKOPT) */
    int ms_read;                /* READ_MULTISHOT (6.7+) on the buffer ring */
    int dring;                  /* datagrams: multishot RECVMSG on group 1 */
    uint64_t *cancels;          /* cancel requests that found no SQE */
    uint32_t ncancels, cancels_cap;
    struct { uint32_t slot; uint64_t ud; } *fresh;  /* issued, may continue, no identity */
    uint32_t nfresh, fresh_cap;
    int sends_queued;           /* a send from Python waits in the backlog for the run
                                   (uring_ready; decision 340) */
    int try_first;              /* a cancel or a stream's first receive from Python waits
                                   in the SQ: the turn submits it without a wait
                                   (uring_ready; decisions 847, 848) */
    uint8_t skip;               /* UL_SQE_CQE_SKIP_SUCCESS where the kernel has it (5.17),
                                   else 0: for the SQEs whose success nobody reads
                                   (decision 846) */
};

static __thread char tls_marker;

static int sys_setup(unsigned entries, struct ul_uring_params *p)
{
    return (int)syscall(UL_NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned to_submit, unsigned min, unsigned flags, void *arg,
                     size_t argsz)
{
    return (int)syscall(UL_NR_io_uring_enter, fd, to_submit, min, flags, arg, argsz);
}

static int sys_register(int fd, unsigned op, void *arg, unsigned nr)
{
    return (int)syscall(UL_NR_io_uring_register, fd, op, arg, nr);
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ------------------------------------------------------------- probe */

static ul_probe g_probe;
static pthread_once_t g_probe_once = PTHREAD_ONCE_INIT;

static const struct { int op; const char *name; } required_ops[] = {
    {UL_OP_NOP, "NOP"}, {UL_OP_POLL_ADD, "POLL_ADD"}, {UL_OP_SENDMSG, "SENDMSG"},
    {UL_OP_RECVMSG, "RECVMSG"}, {UL_OP_ACCEPT, "ACCEPT"}, {UL_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
    {UL_OP_CONNECT, "CONNECT"}, {UL_OP_READ, "READ"}, {UL_OP_WRITE, "WRITE"},
    {UL_OP_SEND, "SEND"}, {UL_OP_RECV, "RECV"},
};

/* Some sandboxes filter io_uring_enter separately from io_uring_setup: the
 * probe submits a NOP through the ring and reaps it. Returns 0, or the errno
 * that refused it. Then, in the same ring, whether a multishot RECV takes a
 * total byte limit (sqe->optlen, which shares file_index's slot; Linux 6.16):
 * a RECV on fd -1 asking for one fails its prep with -EINVAL where the kernel
 * has no such limit (a nonzero file_index, or the multishot flag itself
 * before 6.0), and passes it where it has, to fail on the file: -EBADF
 * (decision 924). *recv_limit says which. */
static int probe_enter(int fd, const struct ul_uring_params *p, int *recv_limit)
{
    size_t sz = p->sq_off.array + p->sq_entries * sizeof(unsigned);
    size_t cq_sz = p->cq_off.cqes + p->cq_entries * sizeof(struct ul_cqe);
    if (cq_sz > sz)
        sz = cq_sz;
    char *r = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   UL_OFF_SQ_RING);
    size_t sqes_sz = p->sq_entries * sizeof(struct ul_sqe);
    struct ul_sqe *sqes = mmap(NULL, sqes_sz, PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_POPULATE, fd, UL_OFF_SQES);
    int err = 0;
    *recv_limit = 0;
    if (r == MAP_FAILED || sqes == MAP_FAILED) {
        err = errno;
    } else {
        unsigned mask = *(unsigned *)(r + p->sq_off.ring_mask);
        unsigned cmask = *(unsigned *)(r + p->cq_off.ring_mask);
        struct ul_cqe *cqes = (struct ul_cqe *)(r + p->cq_off.cqes);
        for (int step = 0; step < 2 && !err; step++) {
            unsigned tail = *(unsigned *)(r + p->sq_off.tail);
            unsigned idx = tail & mask;
            ((unsigned *)(r + p->sq_off.array))[idx] = idx;
            memset(&sqes[idx], 0, sizeof sqes[idx]);
            sqes[idx].user_data = 1;
            if (step == 0) {
                sqes[idx].opcode = UL_OP_NOP;
                sqes[idx].fd = -1;
            } else {
                sqes[idx].opcode = UL_OP_RECV;
                sqes[idx].fd = -1;
                sqes[idx].flags = UL_SQE_BUFFER_SELECT;
                sqes[idx].ioprio = UL_RECV_MULTISHOT;
                sqes[idx].file_index = UL_RECV_TURN_BYTES;  /* optlen */
            }
            unsigned head = *(unsigned *)(r + p->cq_off.head);
            __atomic_store_n((unsigned *)(r + p->sq_off.tail), tail + 1, __ATOMIC_RELEASE);
            int n;
            do
                n = sys_enter(fd, 1, 1, UL_ENTER_GETEVENTS, NULL, 0);
            while (n < 0 && errno == EINTR);
            if (n < 0) {
                if (step == 0)
                    err = errno;
                break;
            }
            if (__atomic_load_n((unsigned *)(r + p->cq_off.tail), __ATOMIC_ACQUIRE) == head) {
                if (step == 0)
                    err = EIO;  /* entered, yet the NOP never completed */
                break;
            }
            if (step == 1)
                *recv_limit = cqes[head & cmask].res == -EBADF;
            __atomic_store_n((unsigned *)(r + p->cq_off.head), head + 1, __ATOMIC_RELEASE);
        }
    }
    if (r != MAP_FAILED)
        munmap(r, sz);
    if (sqes != MAP_FAILED)
        munmap(sqes, sqes_sz);
    return err;
}

static void probe_once(void)
{
    ul_probe *p = &g_probe;
    struct ul_uring_params params;
    memset(p, 0, sizeof *p);
    memset(&params, 0, sizeof params);
    p->last_op = -1;
    int fd = sys_setup(8, &params);
    if (fd < 0) {
        p->err = errno;
        if (errno == EPERM) {
            char v[16] = "?";
            FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "r");
            if (f) {
                if (!fgets(v, sizeof v, f))
                    strcpy(v, "?");
                v[strcspn(v, "\n")] = 0;
                fclose(f);
            }
            snprintf(p->reason, sizeof p->reason,
                     "io_uring_setup failed with EPERM (kernel.io_uring_disabled=%s; "
                     "a seccomp profile such as Docker's default also refuses it)", v);
        } else if (errno == ENOSYS) {
            snprintf(p->reason, sizeof p->reason,
                     "io_uring_setup failed with ENOSYS (kernel without io_uring, or a "
                     "sandbox that hides it)");
        } else {
            snprintf(p->reason, sizeof p->reason, "io_uring_setup failed: %s (errno %d)",
                     strerror(errno), errno);
        }
        return;
    }
    p->features = params.features;
    uint32_t need = UL_FEAT_SINGLE_MMAP | UL_FEAT_NODROP | UL_FEAT_SUBMIT_STABLE |
                    UL_FEAT_FAST_POLL | UL_FEAT_EXT_ARG;
    struct ul_uring_probe *pr = calloc(1, sizeof *pr);
    if (pr && sys_register(fd, UL_REGISTER_PROBE, pr, 256) == 0) {
        p->last_op = pr->last_op;
        for (int i = 0; i < pr->ops_len && i < 256; i++)
            if (pr->ops[i].flags & UL_PROBE_OP_SUPPORTED)
                p->ops[pr->ops[i].op] = 1;
    }
    free(pr);
    int enter_err = (p->features & UL_FEAT_SINGLE_MMAP) ? probe_enter(fd, &params, &p->recv_limit)
                                                        : 0;
    close(fd);
    if (enter_err) {
        p->err = enter_err;
        snprintf(p->reason, sizeof p->reason,
                 "io_uring_enter failed with %s (%s; a sandbox that allows io_uring_setup "
                 "but filters io_uring_enter)",
                 enter_err == EPERM ? "EPERM" : enter_err == ENOSYS ? "ENOSYS" : "an error",
                 strerror(enter_err));
        return;
    }
    if ((p->features & need) != need) {
        p->err = ENOTSUP;
        snprintf(p->reason, sizeof p->reason,
                 "kernel io_uring lacks required features (have 0x%x, need 0x%x: "
                 "NODROP, SUBMIT_STABLE, FAST_POLL, EXT_ARG; Linux 5.11+)", p->features, need);
        return;
    }
    for (size_t i = 0; i < sizeof required_ops / sizeof required_ops[0]; i++) {
        if (!p->ops[required_ops[i].op]) {
            p->err = ENOTSUP;
            snprintf(p->reason, sizeof p->reason, "kernel io_uring lacks opcode %s",
                     required_ops[i].name);
            return;
        }
    }
    p->available = 1;
}

EXPORT int ul_probe_uring(ul_probe *out)
{
    pthread_once(&g_probe_once, probe_once);
    *out = g_probe;
    return g_probe.available ? 0 : -g_probe.err;
}

/* --------------------------------------------------------- submission */

static int flush(ul_engine *e, struct uring *u)
{
    __atomic_store_n(u->sq_ktail, u->sqe_tail, __ATOMIC_RELEASE);
    unsigned n = u->sqe_tail - __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE);
    if (!n)
        return 0;
    int r = sys_enter(u->enter_fd, n, 0, u->enter_flags, NULL, 0);
    e->st.enters++;
    return r < 0 ? -errno : r;
}

static struct ul_sqe *get_sqe(ul_engine *e, struct uring *u)
{
    unsigned head = __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE);
    if (u->sqe_tail - head >= u->sq_entries) {
        if (!u->enabled || u->owner != &tls_marker || flush(e, u) < 0)
            return NULL;
        head = __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE);
        if (u->sqe_tail - head >= u->sq_entries)
            return NULL;
    }
    struct ul_sqe *s = &u->sqes[u->sqe_tail & u->sq_mask];
    u->sqe_tail++;
    memset(s, 0, sizeof *s);
    e->st.submitted++;
    return s;
}

static void arm_wake(ul_engine *e, struct uring *u)
{
    struct ul_sqe *s = get_sqe(e, u);
    if (!s) {
        u->wake_armed = 0;
        return;
    }
    s->opcode = UL_OP_POLL_ADD;
    s->fd = e->wake_fd;
    s->op_flags = POLLIN;
    s->len = UL_POLL_ADD_MULTI;
    s->user_data = KUD_WAKE;
    u->wake_armed = 1;
}

static int wants_write(const struct ul_op *op)
{
    return op->kind == K_SEND || op->kind == K_SENDV || op->kind == K_SENDMSG ||
           op->kind == K_WRITE || op->kind == K_CONNECT;
}

/* An op that may go on by itself and has no identity yet: note it, so the
 * run that hands it to the kernel takes its file's identity (see common.c). */
static void note_fresh(struct uring *u, struct ul_op *op)
{
    if (op->has_ident || !ul__may_continue(op))
        return;
    if (u->nfresh == u->fresh_cap) {
        uint32_t n = u->fresh_cap ? u->fresh_cap * 2 : 64;
        void *p = realloc(u->fresh, n * sizeof *u->fresh);
        if (!p)
            return;  /* it goes on unchecked, as before identities existed */
        u->fresh = p;
        u->fresh_cap = n;
    }
    u->fresh[u->nfresh].slot = ul__slot(op->ud);
    u->fresh[u->nfresh].ud = op->ud;
    u->nfresh++;
}

/*
 * A multishot receive's identity from the ring (decision 601): a getsockopt
 * (SOL_SOCKET, SO_COOKIE) URING_CMD SQE right behind the receive's, so the
 * enter that hands the receive to the kernel resolves the fd number for both
 * (SUBMIT_ALL: one enter consumes every SQE queued; no flush comes between
 * the two, for there must be room for this one without one), and the kernel
 * writes the cookie into op->ident while it consumes the SQE (the command
 * runs inline, before the enter returns). capture_fresh then takes it with
 * no syscall; 0 there (not written: refused, or not consumed) takes the
 * syscall as before. The op's memory outlives the write: an op ends only
 * through its final CQE, which comes after the enter that consumed both,
 * or through cancel_unsubmitted, which turns this SQE into a NOP too.
 */
static void take_cookie(ul_engine *e, struct uring *u, struct ul_op *op)
{
    unsigned head = __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE);
    if (u->sqe_tail - head >= u->sq_entries)
        return;
    struct ul_sqe *s = get_sqe(e, u);
    if (!s)
        return;
    op->ident = 0;
    op->ring_ident = 1;
    s->opcode = UL_OP_URING_CMD;
    s->fd = op->fd;
    s->off = 2;                                     /* cmd_op: SOCKET_URING_OP_GETSOCKOPT */
    s->addr = (uint64_t)SOL_SOCKET | (57ULL << 32); /* level; optname SO_COOKIE */
    s->file_index = sizeof op->ident;               /* optlen */
    s->addr3 = (uint64_t)(uintptr_t)&op->ident;     /* optval */
    s->flags = u->skip;  /* its success is the cookie written, not a CQE (846) */
    s->user_data = KUD_COOKIE;
}

/* After the enter that consumed them (no user code ran since): identities of
 * the noted ops still in flight. Ops noted during this run's reap were not
 * consumed yet, but no user code ran since their first request was, so their
 * fd still names their file too. */
static void capture_fresh(ul_engine *e, struct uring *u)
{
    for (uint32_t i = 0; i < u->nfresh; i++) {
        struct ul_op *op = ul__op_find(e, u->fresh[i].slot);
        if (!op || op->ud != u->fresh[i].ud || op->state == S_FREE)
            continue;
        if (op->ring_ident) {  /* the enter ran take_cookie's SQE too */
            op->ring_ident = 0;
            if (!op->has_ident && op->ident) {
                op->has_ident = 1;
                e->st.ident_cookies++;
                continue;
            }
        }
        ul__ident_capture(e, op);
    }
    u->nfresh = 0;
}

/* A continuation (reissue, re-arm, rest of a send) of an op whose fd no
 * longer names the file it was asked for ends here, with EBADF (a send
 * that already put bytes out says how many: ul__stop). */
static int gone(ul_engine *e, struct ul_op *op)
{
    if (!ul__ident_gone(e, op))
        return 0;
    if ((ul__is_pool_read(op) || op->kind == K_RECVMSG_POOL) && op->bid >= 0) {
        ul__pool_put(e, (uint16_t)op->bid);
        op->bid = -1;
    }
    ul__stop(e, op, EBADF);
    return 1;
}

/* Wait for readiness of op's fd before (re)issuing it. */
static void issue_poll(ul_engine *e, struct uring *u, struct ul_op *op)
{
    if (!u->parked && gone(e, op))
        return;
    struct ul_sqe *s = u->parked ? NULL : get_sqe(e, u);
    if (!s) {
        ul__backlog_push(e, op);
        return;
    }
    s->opcode = UL_OP_POLL_ADD;
    s->fd = op->fd;
    s->op_flags = wants_write(op) ? POLLOUT : POLLIN;
    s->user_data = op->kud = op->ud | KUD_POLL;
    op->sqe_idx = u->sqe_tail - 1;
    op->state = S_ACTIVE;
    op->parked = 0;
    note_fresh(u, op);
}

/*
 * Batching of ordered sends (D6). Sends queued on one fd in one turn leave in
 * one SENDMSG: the head of the fd's ordered queue carries the iovecs of the
 * sends queued behind it (its "riders") in one array, with MSG_WAITALL. A
 * send submitted from Python therefore waits for the run (the backlog)
 * instead of taking an SQE at once, so the whole turn's sends are queued by
 * the time the head is issued. Riders are S_ACTIVE with their head's kernel
 * user_data, so cancelling one cancels the SENDMSG; at its completion the
 * bytes are handed out in queue order: whole sends finish, the first one
 * short goes on as the new head (or stops: cancelled, error), and the riders
 * after it go back to the queue untouched (a cancelled one ends there).
 */
#define MAX_BATCH_IOV UL_IOV_MAX

static int batchable(const struct ul_op *h, const struct ul_op *x)
{
    return x->state == S_QUEUED && (x->kind == K_SEND || x->kind == K_SENDV) &&
           x->msg_flags == h->msg_flags && !x->cancelled;
}

static uint32_t op_iovs(const struct ul_op *x)
{
    if (x->kind == K_SEND)
        return x->len > x->done ? 1 : 0;
    const struct ul_iov_block *c = ul__op_iov(x);
    return c->n - c->idx;
}

/* the iovecs of x's unsent bytes, appended at v */
static uint32_t put_iovs(struct ul_op *x, struct iovec *v)
{
    if (x->kind == K_SEND) {
        if (x->len <= x->done)
            return 0;
        v->iov_base = x->buf + x->done;
        v->iov_len = x->len - x->done;
        return 1;
    }
    const struct ul_iov_block *c = ul__op_iov(x);
    uint32_t n = c->n - c->idx;
    memcpy(v, c->v + c->idx, n * sizeof *v);
    return n;
}

/* Gathers h's riders; returns the iovec count of the batch, 0 for none. */
static uint32_t batch_gather(ul_engine *e, struct ul_op *h)
{
    uint32_t niov = op_iovs(h), nops = 1;
    uint64_t bytes = h->len - h->done;
    int32_t s = h->oq_next;
    for (; s >= 0; s = ul__op_at(e, s)->oq_next) {
        struct ul_op *x = ul__op_at(e, s);
        /* at most MAX_BATCH_IOV ops too: an empty send adds no iovec, and
         * batch_done/batch_release keep the slots on the stack (416) */
        if (!batchable(h, x) || nops >= MAX_BATCH_IOV || niov + op_iovs(x) > MAX_BATCH_IOV ||
            bytes + (x->len - x->done) > INT32_MAX)
            break;
        niov += op_iovs(x);
        bytes += x->len - x->done;
        nops++;
    }
    if (nops == 1 || niov == 0)
        return 0;
    struct ul_iov_block *b = ul__iov_block_new(niov, 1);
    if (!b)
        return 0;  /* no batch: the head goes alone */
    struct iovec *v = b->v;
    uint32_t at = put_iovs(h, v);
    s = h->oq_next;
    for (uint32_t i = 1; i < nops; i++, s = ul__op_at(e, s)->oq_next) {
        struct ul_op *x = ul__op_at(e, s);
        at += put_iovs(x, v + at);
        x->rider = 1;
        x->state = S_ACTIVE;
    }
    b->n = nops;       /* (ops, not iovecs: the SENDMSG's count is at) */
    b->under = h->blk; /* a K_SENDV head's own block, for its cursor */
    h->blk = b;
    return at;
}

/* The batch ends without a result for the riders (h goes on alone or waits):
 * they go back to the queue, a cancelled one finishes there. */
static void batch_release(ul_engine *e, struct ul_op *h)
{
    int32_t slots[MAX_BATCH_IOV];
    uint32_t n = h->blk->n;
    int32_t s = h->oq_next;
    for (uint32_t i = 1; i < n; i++, s = ul__op_at(e, s)->oq_next)
        slots[i] = s;
    ul__op_unbatch(h);
    for (uint32_t i = 1; i < n; i++) {
        struct ul_op *x = ul__op_at(e, slots[i]);
        x->rider = 0;
        x->state = S_QUEUED;
    }
    for (uint32_t i = 1; i < n; i++) {
        struct ul_op *x = ul__op_at(e, slots[i]);
        if (x->cancelled)
            ul__oq_drop(e, x, -ECANCELED);
    }
}

static void issue(ul_engine *e, struct uring *u, struct ul_op *op);

static void batch_done(ul_engine *e, struct uring *u, struct ul_op *h, int32_t res)
{
    int32_t slots[MAX_BATCH_IOV];
    uint32_t n = h->blk->n, left = res > 0 ? (uint32_t)res : 0, cut = n;
    int32_t s = (int32_t)ul__slot(h->ud);
    for (uint32_t i = 0; i < n; i++, s = ul__op_at(e, s)->oq_next)
        slots[i] = s;
    ul__op_unbatch(h);
    for (uint32_t i = 0; i < n; i++) {  /* the bytes, in queue order */
        struct ul_op *x = ul__op_at(e, slots[i]);
        uint32_t take = UL_MIN(left, x->len - x->done);
        x->done += take;
        if (x->kind == K_SENDV)
            ul__iov_advance(x, take);
        left -= take;
        if (x->done < x->len && cut == n)
            cut = i;
    }
    for (uint32_t i = cut + 1; i < n; i++) {  /* untouched: back to the queue */
        struct ul_op *x = ul__op_at(e, slots[i]);
        x->rider = 0;
        x->state = S_QUEUED;
    }
    for (uint32_t i = cut + 1; i < n; i++) {
        struct ul_op *x = ul__op_at(e, slots[i]);
        if (x->cancelled)
            ul__oq_drop(e, x, -ECANCELED);
    }
    for (uint32_t i = 0; i < cut && i < n; i++) {  /* whole: done, in order */
        struct ul_op *x = ul__op_at(e, slots[i]);
        x->rider = 0;
        ul__finish(e, x, (int32_t)x->len, 0, 0);
    }
    if (cut < n) {  /* the first short one is the head now */
        struct ul_op *x = ul__op_at(e, slots[cut]);
        x->rider = 0;
        if (res == -ECANCELED && !x->cancelled)
            issue(e, u, x);  /* a rider's cancel ended the SENDMSG, not x's (416) */
        else if (res < 0)
            ul__stop(e, x, -res);
        else if (x->cancelled)
            ul__stop(e, x, ECANCELED);
        else if (res == 0)
            ul__stop(e, x, 0);
        else
            issue(e, u, x);
    }
}

/* UL_OPT_TEST_EAGAIN: an accept on a socket that does not listen fails at
 * once (EINVAL) and never becomes readable, so it gets no stand-in; every
 * other stand-in's readiness wait ends on data, room, or an error/hangup. */
static int listening(int fd)
{
    int on = 0;
    socklen_t len = sizeof on;
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on;
}

/* UL_OPT_TEST_EAGAIN stands in only where a non-blocking call could say
 * EAGAIN: the fd is not ready for the op now (a send on a writable socket,
 * a receive with data waiting, would not). */
static int would_block(const struct ul_op *op)
{
    int out = op->kind == K_SEND || op->kind == K_SENDV || op->kind == K_SENDMSG;
    if (op->kind == K_READ_POOL && (fcntl(op->fd, F_GETFL) & O_ACCMODE) == O_WRONLY)
        return 0;  /* read(2) says EBADF at once: never readable, never EAGAIN */
    struct pollfd p = {.fd = op->fd, .events = out ? POLLOUT : POLLIN};
    return poll(&p, 1, 0) == 0;
}

/* ul_op.forced bits (UL_OPT_TEST_EAGAIN) */
#define FORCED_DONE 1        /* the op was issued once: never force it again */
#define FORCED_NOP 2         /* a NOP stands in for the op's first issue */
#define FORCED_INPROGRESS 4  /* the first connect result becomes EINPROGRESS */

static void issue(ul_engine *e, struct uring *u, struct ul_op *op)
{
    if (u->parked) {  /* the next run issues it, from whichever thread runs */
        ul__backlog_push(e, op);
        return;
    }
    if (op->has_ident && gone(e, op))
        return;
    if (ul__is_pool_read(op) && !u->bufring && op->bid < 0) {
        int bid = ul__pool_take(e);
        if (bid < 0) {  /* pool exhausted: retry after the next recycle */
            ul__backlog_push(e, op);
            return;
        }
        op->bid = bid;
    }
    if (op->kind == K_RECVMSG_POOL && !u->dring && op->bid < 0) {
        int bid = ul__dpool_take(e);
        if (bid < 0) {  /* pool exhausted: retry after the next recycle */
            ul__backlog_push(e, op);
            return;
        }
        op->bid = bid;
        ul__dmsg_setup(e, op);
    }
    struct ul_sqe *s = get_sqe(e, u);
    if (!s) {
        ul__backlog_push(e, op);
        return;
    }
    op->state = S_ACTIVE;
    op->sqe_idx = u->sqe_tail - 1;
    note_fresh(u, op);
    s->fd = op->fd;
    s->user_data = op->kud = op->ud;
    op->parked = 0;
    op->forced &= FORCED_DONE;  /* a stand-in taken out by ul_park is not reissued as one */
    if ((e->cfg.options & UL_OPT_TEST_EAGAIN) && !(op->forced & FORCED_DONE)) {
        op->forced |= FORCED_DONE;
        if (op->kind == K_CONNECT) {
            op->forced |= FORCED_INPROGRESS;  /* on_cqe turns its success into EINPROGRESS */
        } else if ((ul__is_pool_read(op) || op->kind == K_RECV_INTO || op->kind == K_RECVMSG ||
                    op->kind == K_SEND || op->kind == K_SENDV || op->kind == K_SENDMSG ||
                    (op->kind == K_ACCEPT && listening(op->fd))) &&
                   would_block(op)) {
            op->forced |= FORCED_NOP;  /* a NOP stands in; on_cqe says -EAGAIN */
            s->opcode = UL_OP_NOP;
            s->fd = -1;
            return;
        }
    }
    switch (op->kind) {
    case K_NOP:
        s->opcode = UL_OP_NOP;
        s->fd = -1;
        break;
    case K_RECV:
        /* a stream's receive from Python (a connection's first, a resume):
         * its data is often there already, and the enter that submits it
         * then brings its record; the turn tries that enter without a
         * wait first, as epoll tries the read at submission (848) */
        if (op->multishot && !e->in_run)
            u->try_first = 1;
        s->opcode = UL_OP_RECV;
        if (u->bufring) {
            s->flags = UL_SQE_BUFFER_SELECT;
            s->buf_group = 0;
            if (op->multishot && u->ms_recv) {
                s->ioprio = UL_RECV_MULTISHOT | (u->bundle ? UL_RECVSEND_BUNDLE : 0);
                /* at most stock's one recv(max_size) between two hand-overs:
                 * the kernel ends the receive there (a record without
                 * F_MORE), and the re-arm waits in the backlog for the next
                 * run, which comes after Python has had these records */
                s->file_index = u->recv_limit;  /* optlen */
                s->len = u->limit_bufs * e->cfg.buf_size;  /* a bundle's most (925) */
                if (u->ring_cookie && !op->has_ident)
                    take_cookie(e, u, op);
            } else {
                s->len = op->len;
                /* a one-shot receive (sock_recv) is asked for before its
                 * data comes: the kernel arms its poll without a receive
                 * that would fail first (decision 357; 5.19, as the ring) */
                if (!op->multishot)
                    s->ioprio = UL_RECVSEND_POLL_FIRST;
            }
        } else {
            s->addr = (uint64_t)(uintptr_t)(e->pool + (size_t)op->bid * e->cfg.buf_size);
            s->len = op->len;
        }
        break;
    case K_READ_POOL:
        /* offset -1: the file's position, as read(2) (pipes have none) */
        s->off = (uint64_t)-1;
        if (u->bufring) {
            s->flags = UL_SQE_BUFFER_SELECT;
            s->buf_group = 0;
            if (op->multishot && u->ms_read && !op->no_ms) {
                s->opcode = UL_OP_READ_MULTISHOT;  /* len 0: the whole buffer */
            } else {
                s->opcode = UL_OP_READ;
                s->len = op->len;
            }
        } else {
            s->opcode = UL_OP_READ;
            s->addr = (uint64_t)(uintptr_t)(e->pool + (size_t)op->bid * e->cfg.buf_size);
            s->len = op->len;
        }
        break;
    case K_RECV_INTO:
        s->opcode = UL_OP_RECV;
        s->addr = (uint64_t)(uintptr_t)op->buf;
        s->len = op->len;
        s->op_flags = (uint32_t)op->msg_flags;
        /* a read of the socket just came short: poll before the receive,
         * as decision 357's one-shot pool receive (5.19, as the ring) */
        if (op->wait_first && u->bufring)
            s->ioprio = UL_RECVSEND_POLL_FIRST;
        break;
    case K_SEND:
    case K_SENDV: {
        /* MSG_DONTWAIT (474): a full socket buffer completes the send with
         * what went out, or -EAGAIN, which our own POLL_ADD waits out; a
         * send the kernel polled for itself could be handed to an io-wq
         * worker and block there, where no cancel takes it out (465).
         * MSG_WAITALL: a SENDMSG's partial progress is reported as a short
         * send, which the engine continues */
        uint32_t nb = ul__op_batch(op) ? 0 : batch_gather(e, op);
        if (nb == 0 && op->kind == K_SEND) {
            s->opcode = UL_OP_SEND;
            s->addr = (uint64_t)(uintptr_t)(op->buf + op->done);
            s->len = op->len - op->done;
            s->op_flags = (uint32_t)(op->msg_flags | MSG_DONTWAIT);
            break;
        }
        /* a batch, or a K_SENDV alone: the msghdr heads its iovec block */
        s->opcode = UL_OP_SENDMSG;
        struct ul_iov_block *b = nb ? op->blk : ul__op_iov(op);  /* the batch's, or the K_SENDV's */
        struct msghdr *m = &b->msg;
        memset(m, 0, sizeof *m);
        if (nb) {
            m->msg_iov = b->v;
            m->msg_iovlen = nb;
            int32_t r = op->oq_next;
            for (uint32_t i = 1; i < b->n; i++, r = ul__op_at(e, r)->oq_next)
                ul__op_at(e, r)->kud = op->ud;  /* a rider's cancel cancels the batch */
        } else {
            m->msg_iov = b->v + b->idx;
            m->msg_iovlen = UL_MIN(b->n - b->idx, (uint32_t)UL_IOV_MAX);
        }
        s->addr = (uint64_t)(uintptr_t)m;
        s->op_flags = (uint32_t)(op->msg_flags | MSG_WAITALL | MSG_DONTWAIT);
        break;
    }
    case K_WRITE:
    case K_READ:
        s->opcode = op->kind == K_WRITE ? UL_OP_WRITE : UL_OP_READ;
        s->addr = (uint64_t)(uintptr_t)(op->buf + (op->kind == K_WRITE ? op->done : 0));
        s->len = op->len - (op->kind == K_WRITE ? op->done : 0);
        s->off = op->offset < 0 ? (uint64_t)-1 : (uint64_t)op->offset;
        break;
    case K_SENDMSG:
    case K_RECVMSG:
        s->opcode = op->kind == K_SENDMSG ? UL_OP_SENDMSG : UL_OP_RECVMSG;
        if (op->kind == K_RECVMSG)
            op->ax->msg.msg_namelen = sizeof(struct sockaddr_storage);
        s->addr = (uint64_t)(uintptr_t)&op->ax->msg;
        /* a datagram send carries MSG_DONTWAIT too (decision 529): a Unix
         * datagram sendmsg copies its bytes before it finds the receiver
         * full and says EAGAIN; the kernel's own retries of that request
         * go on from the spent iterator, and the one that finds room sends
         * an empty datagram and says 0. Each of our issues starts afresh */
        s->op_flags = (uint32_t)(op->msg_flags | (op->kind == K_SENDMSG ? MSG_DONTWAIT : 0));
        break;
    case K_RECVMSG_POOL:
        s->opcode = UL_OP_RECVMSG;
        s->addr = (uint64_t)(uintptr_t)&op->ax->msg;
        s->op_flags = (uint32_t)op->msg_flags;
        if (u->dring) {
            /* the kernel lays out header, address and payload in a group-1
             * buffer (io_uring_recvmsg_out); the msghdr only says how much
             * room the address gets */
            struct ul_addr_block *x = op->ax;
            memset(&x->msg, 0, sizeof x->msg);
            x->msg.msg_namelen = UL_DGRAM_NAME;
            s->flags = UL_SQE_BUFFER_SELECT;
            s->buf_group = 1;
            if (op->multishot) {
                s->ioprio = UL_RECV_MULTISHOT;
            } else {
                /* one-shot: the payload lands at the buffer's start and the
                 * address in the op; the completion lays them out as above */
                x->msg.msg_name = &x->addr;
                x->iov.iov_base = NULL;
                x->iov.iov_len = UL_DGRAM_BUF_SIZE;
                x->msg.msg_iov = &x->iov;
                x->msg.msg_iovlen = 1;
            }
        } else {
            op->ax->msg.msg_namelen = UL_DGRAM_NAME;  /* the kernel wrote the last one's */
        }
        break;
    case K_ACCEPT:
        s->opcode = UL_OP_ACCEPT;
        s->op_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
        if (op->multishot && u->ms_accept)
            s->ioprio = UL_ACCEPT_MULTISHOT;
        if (!op->multishot && op->ax) {  /* the peer's address (decision 422) */
            op->ax->addrlen = sizeof op->ax->addr;
            s->addr = (uint64_t)(uintptr_t)&op->ax->addr;
            s->off = (uint64_t)(uintptr_t)&op->ax->addrlen;
        }
        break;
    case K_CONNECT:
        s->opcode = UL_OP_CONNECT;
        s->addr = (uint64_t)(uintptr_t)&op->ax->addr;
        s->off = op->ax->addrlen;
        break;
    case K_POLL:
        s->opcode = UL_OP_POLL_ADD;
        s->op_flags = op->events;
        if (op->multishot)  /* UL_POLL_MULTI (decision 765) */
            s->len = UL_POLL_ADD_MULTI;
        break;
    default:
        s->opcode = UL_OP_NOP;
        s->fd = -1;
        break;
    }
}

static int uring_submit(ul_engine *e, struct ul_op *op)
{
    /* a send from Python waits for the run: the turn's later sends on the fd
     * can then ride with it (see batching above) */
    if ((op->kind == K_SEND || op->kind == K_SENDV) && !e->in_run && op->done == 0) {
        ul__backlog_push(e, op);
        ((struct uring *)e->bs)->sends_queued = 1;
        return 0;
    }
    issue(e, e->bs, op);
    return 0;
}

static void prep_cancel(const struct uring *u, struct ul_sqe *s, uint64_t kud)
{
    s->opcode = UL_OP_ASYNC_CANCEL;
    s->fd = -1;
    s->addr = kud;
    s->flags = u->skip;  /* its target's final CQE is what tells (846) */
    s->user_data = KUD_IGNORE;
}

/* Does a stored cancel still name a request of a live op? */
static int cancel_live(ul_engine *e, uint64_t kud)
{
    uint64_t ud = kud & ~KUD_POLL;
    struct ul_op *op = ul__op_find(e, ul__slot(ud));
    return op && op->ud == ud && op->state == S_ACTIVE && op->kud == kud;
}

static void cancel_kud(ul_engine *e, struct uring *u, uint64_t kud)
{
    if (!e->in_run)
        u->try_first = 1;  /* the turn enters without waiting (847) */
    struct ul_sqe *s = get_sqe(e, u);
    if (s) {
        prep_cancel(u, s, kud);
        return;
    }
    if (u->ncancels == u->cancels_cap) {
        /* room for one per live op is reserved at submission: drop the
         * entries of ops that ended meanwhile */
        uint32_t n = 0;
        for (uint32_t i = 0; i < u->ncancels; i++)
            if (cancel_live(e, u->cancels[i]))
                u->cancels[n++] = u->cancels[i];
        u->ncancels = n;
    }
    if (u->ncancels == u->cancels_cap) {
        uint32_t n = u->cancels_cap ? u->cancels_cap * 2 : 64;
        uint64_t *p = ul__realloc(u->cancels, n * sizeof *p);
        if (!p)
            ul__out_of_memory("io_uring cancels");
        u->cancels = p;
        u->cancels_cap = n;
    }
    u->cancels[u->ncancels++] = kud;
}

static int uring_reserve(ul_engine *e, uint32_t ops)
{
    struct uring *u = e->bs;
    if (ops <= u->cancels_cap)
        return 0;
    uint64_t *p = ul__realloc(u->cancels, ops * sizeof *p);
    if (!p)
        return -ENOMEM;
    u->cancels = p;
    u->cancels_cap = ops;
    return 0;
}

/*
 * Cancel before the kernel has seen the request: the kernel resolves an SQE's
 * fd number only when io_uring_enter consumes it, and we are the only ones
 * who enter (no SQPOLL). An op whose latest SQE is still between the kernel's
 * head and our tail has not touched any file yet, and if the user closed its
 * fd and the number was reused meanwhile, that SQE would act on the new file
 * (a receive swallowing the new socket's bytes, the rest of a send going out
 * on it). So such an SQE becomes a NOP and the op ends now, with -ECANCELED.
 * The window covers every op issued since the last enter: fresh submissions,
 * short-send continuations, multishot re-arms and EAGAIN reissues alike.
 */
/* an unsubmitted SQE turned into a NOP whose completion is ignored */
static void sqe_ignored_nop(const struct uring *u, struct ul_sqe *s)
{
    memset(s, 0, sizeof *s);
    s->opcode = UL_OP_NOP;
    s->fd = -1;
    s->flags = u->skip;
    s->user_data = KUD_IGNORE;
}

static int cancel_unsubmitted(ul_engine *e, struct uring *u, struct ul_op *op)
{
    /* a batch of sends (a head and its riders) ends through its completion;
     * batches are issued and submitted within one run, so they are hardly
     * ever found unsubmitted */
    if (op->rider || ul__op_batch(op))
        return 0;
    unsigned head = __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE);
    if (op->sqe_idx - head >= u->sqe_tail - head)
        return 0;
    struct ul_sqe *s = &u->sqes[op->sqe_idx & u->sq_mask];
    if (s->user_data != op->kud)
        return 0;
    sqe_ignored_nop(u, s);
    uint32_t next = op->sqe_idx + 1;
    struct ul_sqe *c = &u->sqes[next & u->sq_mask];
    if (op->ring_ident && next - head < u->sqe_tail - head && c->user_data == KUD_COOKIE &&
        c->addr3 == (uint64_t)(uintptr_t)&op->ident) {
        /* its take_cookie SQE: the kernel must not write into the op's
         * slot once the op has ended */
        sqe_ignored_nop(u, c);
    }
    op->ring_ident = 0;
    if ((ul__is_pool_read(op) || op->kind == K_RECVMSG_POOL) && op->bid >= 0) {
        /* engine-picked buffer, unused */
        ul__pool_put(e, (uint16_t)op->bid);
        op->bid = -1;
    }
    ul__stop(e, op, ECANCELED);  /* a send's earlier bytes are reported */
    return 1;
}

static void uring_cancel(ul_engine *e, struct ul_op *op)
{
    struct uring *u = e->bs;
    if (!cancel_unsubmitted(e, u, op))
        cancel_kud(e, u, op->kud);
}

static int uring_cancel_fd(ul_engine *e, int fd)
{
    struct uring *u = e->bs;
    if (!u->cancel_fd || u->parked)
        return -1;  /* parked: the fd's ops wait in the backlog, cancelled one by one */
    struct ul_sqe *s = get_sqe(e, u);
    if (!s)
        return -1;
    s->opcode = UL_OP_ASYNC_CANCEL;
    s->fd = fd;
    s->op_flags = UL_ASYNC_CANCEL_FD | UL_ASYNC_CANCEL_ALL;
    s->flags = u->skip;
    s->user_data = KUD_IGNORE;
    if (!e->in_run)
        u->try_first = 1;  /* the turn enters without waiting (847) */
    return 0;
}

static void ring_push(ul_engine *e, struct uring *u, uint16_t bid)
{
    if (e->guard)
        ul__guard(e, bid, 1);  /* the kernel may write into it from now on */
    ul__pool_touch(e, bid);
    struct ul_buf *b = &u->br[u->br_tail & u->br_mask];
    u->br_pos[bid] = u->br_tail;  /* where a bundle that starts here goes on (ring_bid) */
    b->addr = (uint64_t)(uintptr_t)(e->pool + (size_t)bid * e->cfg.buf_size);
    b->len = e->cfg.buf_size;
    b->bid = bid;
    u->br_tail++;
    u->br_avail++;
    /* entry 0's resv field is the ring's tail */
    __atomic_store_n((uint16_t *)((char *)u->br + 14), u->br_tail, __ATOMIC_RELEASE);
}

static void uring_recycle(ul_engine *e, uint16_t bid)
{
    struct uring *u = e->bs;
    if (ul__is_dbid(e, bid)) {
        if (!u->dring) {
            ul__pool_put(e, bid);
            return;
        }
        struct ul_buf *b = &u->dr[u->dr_tail & (UL_DGRAM_BUFS - 1)];
        b->addr = (uint64_t)(uintptr_t)ul__dbuf(e, bid);
        b->len = UL_DGRAM_BUF_SIZE;
        b->bid = bid;  /* the engine-wide bid: a CQE names its pool by itself */
        u->dr_tail++;
        __atomic_store_n((uint16_t *)((char *)u->dr + 14), u->dr_tail, __ATOMIC_RELEASE);
        return;
    }
    if (!u->bufring || u->br_avail >= u->br_want) {
        ul__pool_put(e, bid);  /* the free stack: its top is handed out first */
        return;
    }
    ring_push(e, u, bid);
}

/* Give the kernel buffers from the top of the free stack (the most recently
 * used, so still in cache and faulted in) until the ring holds br_want.
 * Why not every buffer: the kernel takes ring entries first in, first out, so
 * a ring holding the whole pool walks all of it (16 MiB) before it uses a
 * buffer again, and every receive lands in memory that is cold in the cache
 * and, the first time round, not even mapped. br_want starts small and
 * doubles at the next run after a receive found the ring empty (-ENOBUFS:
 * the engine re-arms it then, after this top-up), up to the whole pool.
 * It also shrinks (decision 759): the ring is walked whole whatever a run
 * takes of it, so a ring of 64 under 10 connections put each receive in a
 * buffer last written 64 receives before (64 pages, 16 KiB apart), where
 * epoll's free stack reuses the same few. After UL_RING_WINDOW top-ups in a
 * row with no receive finding the ring empty, br_want halves while half of
 * it still holds one and a half times the most any run took in that window
 * (br_peak), down to UL_RING_WANT_MIN. A ring that holds more than br_want
 * after a halving drains to it: a recycled buffer goes to the free stack
 * while the ring holds br_want or more (uring_recycle). */
static void ring_top_up(ul_engine *e, struct uring *u)
{
    if (u->br_took > u->br_peak)
        u->br_peak = u->br_took;
    u->br_took = 0;
    if (u->br_dry) {
        if (u->br_want < e->cfg.buf_count)
            u->br_want *= 2;  /* once per run, however many receives found it dry */
        u->br_runs = u->br_peak = 0;
    } else if (++u->br_runs >= UL_RING_WINDOW) {
        unsigned half = u->br_want / 2;
        if (half >= UL_RING_WANT_MIN && half >= u->br_peak + u->br_peak / 2)
            u->br_want = half;
        u->br_home = u->br_want;  /* a whole window without running dry held it */
        u->br_runs = u->br_peak = 0;
    }
    u->br_dry = 0;
    e->st.ring_want = u->br_want;
    while (u->br_avail < u->br_want) {
        int bid = ul__pool_take(e);
        if (bid < 0)
            break;
        ring_push(e, u, (uint16_t)bid);
    }
}

/* Does a live op (one with a ud) satisfy pred? The scan stops after the
 * last live op. */
static int any_live_op(ul_engine *e, int (*pred)(const struct ul_op *op))
{
    uint32_t live = e->in_flight;
    for (uint32_t c = 0; c < e->nchunks && live; c++) {
        if (!e->chunks[c])
            continue;
        for (uint32_t i = 0; i < CHUNK_SIZE && live; i++) {
            const struct ul_op *op = &e->chunks[c][i];
            if (!op->ud)
                continue;
            live--;
            if (pred(op))
                return 1;
        }
    }
    return 0;
}

/* An op an io-wq worker may run, taking a ring buffer at any time, outside
 * our io_uring_enter: a READ on a file without non-blocking reads, and a
 * one-shot receive, which the kernel hands to io-wq after its poll woke it
 * spuriously too often (APOLL_MAX_RETRY, 128 on 6.x; at once on 5.x): the
 * worker takes a ring buffer and blocks in recv(2), its record not posted
 * until the bytes come. A multishot receive stays on its poll (and
 * OPT_NO_MULTISHOT's re-issued ones were seen to, 200 wake-ups). (Decision
 * 1014: with such a worker, the trim gave its buffer to the free stack and
 * the ring again, and another socket's bytes were read as this one's.) */
static int is_pool_read(const struct ul_op *op)
{
    return op->kind == K_READ_POOL || (op->kind == K_RECV && !op->multishot);
}

/*
 * Idle after a burst (ul_run's trim, decision 251). br_want halves only
 * after a whole quiet window (759), and the kernel walks every buffer the
 * ring holds, so after a burst the ring keeps the burst's buffers
 * resident, and a ring's entries cannot be taken back one by one. So the
 * ring itself is taken back: unregistered, the
 * buffers the kernel had not taken are ours again. Every one it took was
 * reported: the CQ is empty and nothing overflowed; with DEFER_TASKRUN the
 * kernel takes ring buffers only inside our io_uring_enter (a receive's
 * task work runs there, never in io_uring_register), and no io-wq worker can
 * be holding one (no pool read is live). The ring is registered again,
 * empty, and topped up from the free stack's top to its first size, or to
 * the size its last whole window ended at if that is smaller (br_home: the
 * size decision 759's halvings had reached, decision 797), and the rest of
 * the stack's pages go back. Two register calls per burst, never any
 * per op. On the rungs without DEFER_TASKRUN only the free stack is trimmed.
 */
static void uring_trim(ul_engine *e)
{
    struct uring *u = e->bs;
    if (!u->bufring) {
        ul__pool_release(e, 0);  /* every free buffer: decision 986 */
        return;
    }
    uint32_t want0 = UL_MIN(UL_RING_WANT0, e->cfg.buf_count);
    if (u->br_home && u->br_home < want0)
        want0 = u->br_home;
    int quiet = (u->setup_flags & UL_SETUP_DEFER_TASKRUN) && u->enabled && !u->parked &&
                u->owner == &tls_marker &&
                __atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE) == *u->cq_khead &&
                !(__atomic_load_n(u->sq_kflags, __ATOMIC_ACQUIRE) & UL_SQ_CQ_OVERFLOW) &&
                !any_live_op(e, is_pool_read);
    if (quiet && u->br_avail > want0) {
        struct ul_buf_reg reg;
        memset(&reg, 0, sizeof reg);
        reg.bgid = 0;
        if (sys_register(u->ring_fd, UL_UNREGISTER_PBUF_RING, &reg, 1) == 0) {
            /* oldest first, so the most recently given sit on the stack's top */
            for (uint16_t p = (uint16_t)(u->br_tail - u->br_avail); p != u->br_tail; p++)
                ul__pool_put(e, u->br[p & u->br_mask].bid);
            u->br_tail = 0;
            u->br_avail = 0;
            __atomic_store_n((uint16_t *)((char *)u->br + 14), 0, __ATOMIC_RELEASE);
            reg.ring_addr = (uint64_t)(uintptr_t)u->br;
            reg.ring_entries = u->br_mask + 1;
            if (sys_register(u->ring_fd, UL_REGISTER_PBUF_RING, &reg, 1) < 0)
                ul__out_of_memory("the buffer ring, registered again");
            u->br_want = want0;
            u->br_dry = 0;
            u->br_took = u->br_runs = u->br_peak = 0;
            ring_top_up(e, u);
        }
    }
    if (quiet) {
        /* The ring's buffers hold nothing anyone will read: the kernel
         * fills one only inside our io_uring_enter (DEFER_TASKRUN) and
         * every one it filled was reported (the CQ is empty). Their pages
         * go back too; the kernel's next receive into one faults in a
         * zeroed page (decision 986). Before, the ring's 64 kept theirs:
         * 256 KiB after any burst, for good. */
        for (uint16_t p = (uint16_t)(u->br_tail - u->br_avail); p != u->br_tail; p++) {
            uint16_t bid = u->br[p & u->br_mask].bid;
            if (e->resident[bid] == 1)
                e->resident[bid] = 3; /* (ul__pool_release: still counted) */
        }
    }
    ul__pool_release(e, 0);
}

/* ------------------------------------------------------------ completion */

/* Receive bundles (decision 270): one CQE of a multishot recv names the first
 * stream-ring buffer it filled and res counts all its bytes; the kernel took
 * consecutive ring entries from that one on, each filled whole but the last
 * (every entry is buf_size long). So a CQE covers ceil(res / buf_size)
 * buffers (1 for any other op: a single buffer never holds more), and the
 * k-th is the bid we pushed k entries after the first. */
static unsigned cqe_nbufs(const ul_engine *e, int32_t res)
{
    uint32_t bs = e->cfg.buf_size;
    return res > (int32_t)bs ? ((uint32_t)res + bs - 1) / bs : 1;
}

static uint16_t ring_bid(const struct uring *u, uint16_t first, unsigned k)
{
    return u->br[(uint16_t)(u->br_pos[first] + k) & u->br_mask].bid;
}

/* a stream-ring CQE's buffers go back unread (to the ring or free stack next run) */
static void cqe_bufs_used(ul_engine *e, struct uring *u, uint16_t first, int32_t res)
{
    unsigned nb = u->bufring ? cqe_nbufs(e, res) : 1;
    for (unsigned k = 0; k < nb; k++)
        ul__pool_used(e, k ? ring_bid(u, first, k) : first);
}

static void on_cqe(ul_engine *e, struct uring *u, uint64_t kud, int32_t res, uint32_t cflags)
{
    if ((cflags & UL_CQE_F_BUFFER) && u->bufring &&
        !ul__is_dbid(e, (uint16_t)(cflags >> UL_CQE_BUFFER_SHIFT))) {
        unsigned nb = cqe_nbufs(e, res);
        u->br_avail -= nb;  /* the kernel took them from the stream ring */
        u->br_took += nb;
    }
    if ((kud & KUD_SPECIAL) == KUD_SPECIAL) {  /* one test for an op's CQE (decision 723) */
        if (kud == KUD_WAKE) {
            ul__wake_drain(e);
            if (!(cflags & UL_CQE_F_MORE))
                arm_wake(e, u);
            return;
        }
        if (kud == KUD_IGNORE)
            return;
        if (kud == KUD_COOKIE) {
            /* take_cookie's getsockopt: refused as such (an older kernel, an
             * LSM), it is not asked again; the identity was taken anyway */
            if (res == -EOPNOTSUPP || res == -EINVAL || res == -EACCES || res == -EPERM)
                u->ring_cookie = 0;
            return;
        }
    }
    uint64_t ud = kud & ~KUD_POLL;
    struct ul_op *op = ul__op_find(e, ul__slot(ud));
    int kmore = (cflags & UL_CQE_F_MORE) != 0;
    if (!op || op->ud != ud || op->state != S_ACTIVE || op->kud != kud) {
        /* stale: cannot happen while the rules hold; never leak a buffer */
        if (cflags & UL_CQE_F_BUFFER) {
            uint16_t bid = (uint16_t)(cflags >> UL_CQE_BUFFER_SHIFT);
            if (ul__is_dbid(e, bid))
                ul__pool_used(e, bid);
            else
                cqe_bufs_used(e, u, bid, res);
        }
        return;
    }
    /* the common CQE (a receive's data, a send's count) is none of the cases
     * below until the switch: each of them wants a negative result, a
     * readiness wait, a test option or a test stand-in (decision 723) */
    if (res >= 0 && !(kud & KUD_POLL) && !(op->forced & (FORCED_NOP | FORCED_INPROGRESS)) &&
        !(e->cfg.options & UL_OPT_TEST_NOBUF))
        goto dispatch;
    if (op->parked && !op->cancelled && !kmore && (res == -ECANCELED || res == -EINTR)) {
        /* ul_park took it out of the kernel: it waits for the next run. (A
         * connect issued again is what Linux expects: on a TCP socket whose
         * handshake went on meanwhile it says 0, EALREADY or the error.) */
        op->parked = 0;
        if (ul__op_batch(op))
            batch_release(e, op);  /* its riders go back to the queue */
        ul__backlog_push(e, op);
        return;
    }
    if (res == -EINTR)
        res = op->cancelled ? -ECANCELED : -EAGAIN;
    if (op->forced & (FORCED_NOP | FORCED_INPROGRESS) && !(kud & KUD_POLL)) {
        /* UL_OPT_TEST_EAGAIN: the stand-in NOP did nothing, so a cancel that
         * reached it cancelled the op; a connect that went through already
         * reports it the way a non-blocking connect would */
        if (op->forced & FORCED_NOP) {
            res = op->cancelled ? -ECANCELED : -EAGAIN;
            cflags = 0;
        } else if (res == 0 && !op->cancelled) {
            res = -EINPROGRESS;
        }
        op->forced &= (uint8_t)~(FORCED_NOP | FORCED_INPROGRESS);
    }

    if (kud & KUD_POLL) {  /* readiness wait after EAGAIN */
        if (op->cancelled || res < 0) {
            ul__stop(e, op, op->cancelled ? ECANCELED : -res);  /* a send says what it sent */
        } else if (op->kind == K_CONNECT) {
            if (gone(e, op))
                return;
            int err = 0;
            socklen_t len = sizeof err;
            if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
            ul__finish(e, op, -err, 0, 0);
        } else {
            issue(e, u, op);
        }
        return;
    }
    if (!op->cancelled && op->kind != K_NOP && op->kind != K_POLL &&
        (res == -EAGAIN || (op->kind == K_CONNECT && (res == -EINPROGRESS || res == -EALREADY)))) {
        if (ul__op_batch(op))
            batch_release(e, op);  /* the head waits alone; the riders queue again */
        if (((ul__is_pool_read(op) && !u->bufring) || (op->kind == K_RECVMSG_POOL && !u->dring)) &&
            op->bid >= 0) {
            ul__pool_put(e, (uint16_t)op->bid);
            op->bid = -1;
        }
        e->st.eagain_retries++;
        issue_poll(e, u, op);
        return;
    }
    if (res == -EAGAIN && op->cancelled)
        res = -ECANCELED;  /* EAGAIN is never surfaced, not even for a cancelled op */
    if (res == -ENOBUFS && op->cancelled && !kmore &&
        (ul__is_pool_read(op) || op->kind == K_RECVMSG_POOL))
        res = -ECANCELED;  /* nor is a dry ring, which re-arms an op not cancelled (415) */

    if ((e->cfg.options & UL_OPT_TEST_NOBUF) && op->kind == K_RECV && res > 0) {
        /* test only: data with no buffer; the buffer goes back unread */
        if (cflags & UL_CQE_F_BUFFER)
            cqe_bufs_used(e, u, (uint16_t)(cflags >> UL_CQE_BUFFER_SHIFT), res);
        else if (op->bid >= 0)
            ul__pool_put(e, (uint16_t)op->bid);
        cflags &= ~(uint32_t)UL_CQE_F_BUFFER;
        op->bid = -1;
    }
    if (op->kind == K_READ_POOL && res == -EBADFD && !kmore && !op->cancelled && !op->no_ms &&
        op->multishot && u->ms_read) {
        /* READ_MULTISHOT wants a pollable file (a character device may not
         * be): this op goes on with one-shot reads */
        op->no_ms = 1;
        issue(e, u, op);
        return;
    }

dispatch:
    switch (op->kind) {
    case K_READ_POOL:
    case K_RECV: {
        int has_buf = 0;
        uint16_t bid = 0;
        if (cflags & UL_CQE_F_BUFFER) {
            has_buf = 1;
            bid = (uint16_t)(cflags >> UL_CQE_BUFFER_SHIFT);
        } else if (op->bid >= 0) {
            bid = (uint16_t)op->bid;
            op->bid = -1;
            if (res > 0)
                has_buf = 1;
            else
                ul__pool_put(e, bid);
        }
        if (has_buf && res <= 0) {  /* a buffer with no data: give it back */
            ul__pool_used(e, bid);
            has_buf = 0;
        }
        if (res > 0 && !has_buf) {
            /* data with no buffer: the kernel broke the buffer-select contract.
             * Never name a buffer we do not hold (bid 0 would be provided twice). */
            ul__finish(e, op, -EIO, 0, 0);
        } else if (res > 0) {
            if (op->multishot && u->recv_limit && op->kind == K_RECV) {
                /* a bundle that filled its length (sqe->len): the kernel
                 * goes on with the socket's rest as deferred work, which
                 * this run takes too (uring_run), so that the records handed
                 * over hold what one recv(max_size) would have (925) */
                if (kmore && (uint32_t)res >= u->limit_bufs * e->cfg.buf_size)
                    u->recv_capped = 1;
            }
            if ((cflags & UL_CQE_F_BUFFER) && res > (int32_t)e->cfg.buf_size) {
                /* a bundle: a record per buffer, in order; the last one is
                 * this CQE's record as for a single buffer */
                uint16_t first = bid;
                unsigned k = 0;
                for (; res > (int32_t)e->cfg.buf_size; k++, res -= (int32_t)e->cfg.buf_size)
                    ul__emit(e, op, (int32_t)e->cfg.buf_size, UL_F_MORE | UL_F_BUFFER,
                             k ? ring_bid(u, first, k) : first);
                bid = ring_bid(u, first, k);
            }
            if (!op->multishot || (!kmore && op->cancelled)) {
                ul__finish(e, op, res, UL_F_BUFFER, bid);
            } else {
                ul__emit(e, op, res, UL_F_MORE | UL_F_BUFFER, bid);
                if (!kmore) {  /* kernel ended it (its byte limit too: the re-arm
                                  waits for the next run, decision 924), or
                                  one-shot emulation: go again */
                    e->st.rearms++;
                    if (op->kind == K_RECV ? u->ms_recv : (u->ms_read && !op->no_ms))
                        ul__backlog_push(e, op);
                    else if (op->kind == K_RECV && ul__turn_full(e, op, (uint32_t)res))
                        ul__backlog_push(e, op);  /* emulated: the rest next run (924) */
                    else
                        issue(e, u, op);
                }
            }
        } else if (res == -ENOBUFS && !op->cancelled && !kmore) {
            e->st.rearms++;
            u->br_dry = 1;  /* the ring ran dry: hold more (ring_top_up) */
            ul__backlog_push(e, op);  /* after the next top-up */
        } else if (!kmore) {
            ul__finish(e, op, res, 0, 0);
        }
        break;
    }
    case K_RECVMSG_POOL: {
        int has_buf = 0, rearm = 0;
        uint16_t bid = 0;
        if (cflags & UL_CQE_F_BUFFER) {
            has_buf = 1;
            bid = (uint16_t)(cflags >> UL_CQE_BUFFER_SHIFT);  /* engine-wide (recycle) */
        } else if (op->bid >= 0) {
            has_buf = 1;
            bid = (uint16_t)op->bid;
            op->bid = -1;
        }
        if (res < 0) {
            if (has_buf)
                ul__pool_used(e, bid);  /* back to its ring (or free list) next run */
            if (res == -ENOBUFS && !op->cancelled && !kmore) {
                e->st.rearms++;
                ul__backlog_push(e, op);  /* after the next recycle */
            } else if (!kmore) {
                ul__finish(e, op, res, 0, 0);
            } else {
                ul__emit(e, op, res, UL_F_MORE, 0);
            }
            break;
        }
        if (!has_buf || !ul__is_dbid(e, bid) ||
            bid >= e->cfg.buf_count + UL_DGRAM_BUFS) {
            if (!kmore)
                ul__finish(e, op, -EIO, 0, 0);
            break;
        }
        int32_t n;
        if ((cflags & UL_CQE_F_BUFFER) && !op->multishot) {
            uint8_t *b = ul__dbuf(e, bid);
            uint32_t h[4] = {op->ax->msg.msg_namelen, 0, (uint32_t)res, 0};
            n = res > (int32_t)(UL_DGRAM_BUF_SIZE - UL_DGRAM_HDR) ? -EMSGSIZE : res;
            if (n >= 0) {
                memmove(b + UL_DGRAM_HDR, b, (size_t)n);
                memcpy(b, h, sizeof h);
                memcpy(b + 16, &op->ax->addr, UL_DGRAM_NAME);
            }
        } else if (cflags & UL_CQE_F_BUFFER) {
            /* res counts header + address room + payload put in the buffer */
            uint32_t h[4];
            memcpy(h, ul__dbuf(e, bid), sizeof h);
            n = res - UL_DGRAM_HDR;
            if (n < 0)
                n = -EIO;
            else if ((h[3] & MSG_TRUNC) || h[2] > (uint32_t)n)
                n = -EMSGSIZE;
        } else {
            op->bid = bid;  /* for ul__dmsg_done */
            n = ul__dmsg_done(e, op, res);
            op->bid = -1;
        }
        ul__dgram_result(e, op, n, bid, kmore, &rearm);
        if (rearm) {
            if (u->dring)
                ul__backlog_push(e, op);
            else
                issue(e, u, op);
        }
        break;
    }
    case K_ACCEPT:
        if (res >= 0) {
            if (!op->multishot || (!kmore && op->cancelled)) {
                ul__finish(e, op, res, !op->multishot && op->ax ? UL_F_ADDR : 0, 0);
            } else {
                ul__emit(e, op, res, UL_F_MORE, 0);
                if (!kmore) {
                    e->st.rearms++;
                    if (u->ms_accept)
                        ul__backlog_push(e, op);
                    else
                        issue(e, u, op);
                }
            }
        } else if (!kmore) {
            int gave_up = res == -ECONNABORTED || res == -EPROTO;
            if (gave_up && !op->cancelled)
                issue(e, u, op);  /* the peer gave up before we took it */
            else  /* hidden from a live accept, so a cancelled one ends as
                     cancelled, as a dry ring does (415; decision 429) */
                ul__finish(e, op, gave_up ? -ECANCELED : res, 0, 0);
        }
        break;
    case K_SEND:
    case K_SENDV:
    case K_WRITE:
        if (ul__op_batch(op))
            batch_done(e, u, op, res);
        else
            ul__sent(e, op, res);
        break;
    case K_POLL:
        if (op->multishot) {  /* UL_POLL_MULTI (decision 765), as a multishot accept */
            if (res >= 0 && !op->cancelled) {
                ul__emit(e, op, res, UL_F_MORE, 0);
                if (!kmore) {  /* the kernel ended it by itself: again next run */
                    e->st.rearms++;
                    ul__backlog_push(e, op);
                }
            } else if (!kmore) {
                ul__finish(e, op, res, 0, 0);
            }  /* else a record after the cancel was asked: its final CQE follows */
        } else if (res >= 0 && op->level && !op->cancelled) {
            ul__emit(e, op, res, UL_F_MORE, 0);
            e->st.rearms++;
            ul__backlog_push(e, op);  /* level-triggered: re-arm next run */
        } else {
            ul__finish(e, op, res, 0, 0);
        }
        break;
    case K_RECVMSG:
        if (res >= 0)
            op->ax->addrlen = op->ax->msg.msg_namelen;
        ul__finish(e, op, res, res >= 0 ? UL_F_ADDR : 0, 0);
        break;
    default:
        ul__finish(e, op, res, 0, 0);
        break;
    }
}

static void reap(ul_engine *e, struct uring *u)
{
    unsigned head = *u->cq_khead;
    unsigned tail = __atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE);
    /* in a run, stop when records no longer fit the array (the rest stays in
     * the CQ, where the kernel keeps it, instead of piling up in pend);
     * outside one (ul_park) every record waits in pend */
    while (head != tail && (!e->in_run || (e->nrec < e->cfg.record_cap && e->npend == 0))) {
        struct ul_cqe *c = &u->cqes[head & u->cq_mask];
        uint64_t kud = c->user_data;
        int32_t res = c->res;
        uint32_t flags = c->flags;
        head++;
        __atomic_store_n(u->cq_khead, head, __ATOMIC_RELEASE);
        e->st.cqes++;
        on_cqe(e, u, kud, res, flags);
        if (head == tail)
            tail = __atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE);
    }
}

/* ----------------------------------------------------------------- run */

/* submit what is in the SQ and reap, without waiting */
static int flush_reap(ul_engine *e, struct uring *u)
{
    __atomic_store_n(u->sq_ktail, u->sqe_tail, __ATOMIC_RELEASE);
    unsigned n = u->sqe_tail - __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE);
    int r = sys_enter(u->enter_fd, n, 0, u->enter_flags | UL_ENTER_GETEVENTS, NULL, 0);
    e->st.enters++;
    if (r < 0 && errno != EBUSY && errno != EAGAIN && errno != EINTR)
        return -errno;
    reap(e, u);
    return 0;
}

/* The registration is the calling thread's (a per-task table). */
static void register_ring_fd(ul_engine *e, struct uring *u)
{
    struct ul_rsrc_update up = {.offset = (uint32_t)-1, .data = (uint64_t)u->ring_fd};
    if (sys_register(u->ring_fd, UL_REGISTER_RING_FDS, &up, 1) == 1) {
        u->enter_fd = (int)up.offset;
        u->enter_flags = UL_ENTER_REGISTERED_RING;
        e->info.registered_ring = 1;
    }
}

static void unregister_ring_fd(struct uring *u)
{
    if (!(u->enter_flags & UL_ENTER_REGISTERED_RING) || u->owner != &tls_marker)
        return;
    struct ul_rsrc_update up = {.offset = (uint32_t)u->enter_fd};
    sys_register(u->ring_fd, UL_UNREGISTER_RING_FDS, &up, 1);
    u->enter_fd = u->ring_fd;
    u->enter_flags = 0;
}

static int enable(ul_engine *e, struct uring *u)
{
    if ((u->setup_flags & UL_SETUP_R_DISABLED) &&
        sys_register(u->ring_fd, UL_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
        return -errno;
    u->enabled = 1;
    u->owner = &tls_marker;
    register_ring_fd(e, u);
    return 0;
}

static int unpark(ul_engine *e, struct uring *u);

static int uring_run(ul_engine *e, int64_t timeout_ns)
{
    struct uring *u = e->bs;
    int err = 0;
    if (u->parked) {
        int r = unpark(e, u);
        if (r < 0)
            return r;
    }
    if (!u->enabled) {
        int r = enable(e, u);
        if (r < 0)
            return r;
    } else if (u->owner != &tls_marker) {
        return -EEXIST;  /* the engine belongs to the thread that first ran it */
    } else if (u->reg_countdown && --u->reg_countdown == 0 &&
               !(u->enter_flags & UL_ENTER_REGISTERED_RING)) {
        register_ring_fd(e, u);
    }
    if (!u->wake_armed)
        arm_wake(e, u);
    struct ul_sqe *s;
    while (u->ncancels && (s = get_sqe(e, u)))  /* cancels that found no SQE before */
        prep_cancel(u, s, u->cancels[--u->ncancels]);
    if (u->bufring)
        ring_top_up(e, u);
    struct ul_op *op;
    for (uint32_t n = e->bl_count; n-- && ul__backlog_pop(e, &op);)
        issue(e, u, op);
    u->sends_queued = 0;
    u->try_first = 0;

    __atomic_store_n(u->sq_ktail, u->sqe_tail, __ATOMIC_RELEASE);
    unsigned to_submit = u->sqe_tail - __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE);
    unsigned ready = __atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE) - *u->cq_khead;
    unsigned sqflags = __atomic_load_n(u->sq_kflags, __ATOMIC_ACQUIRE);
    int wait = timeout_ns != 0 && e->nrec == 0 && ready == 0, tw = 0;
    int need = to_submit || wait || (sqflags & (UL_SQ_CQ_OVERFLOW | UL_SQ_TASKRUN)) ||
               !(u->setup_flags & UL_SETUP_TASKRUN_FLAG);
    if (need) {
        struct ul_getevents_arg arg;
        struct ul_kernel_timespec ts;
        unsigned flags = u->enter_flags | UL_ENTER_GETEVENTS;
        unsigned min = 0;
        if (wait && !ul__wake_prepare_sleep(e))
            wait = 0;
        if (wait) {
            memset(&arg, 0, sizeof arg);
            if (timeout_ns > 0) {
                ts.tv_sec = timeout_ns / 1000000000LL;
                ts.tv_nsec = timeout_ns % 1000000000LL;
                arg.ts = (uint64_t)(uintptr_t)&ts;
            }
            flags |= UL_ENTER_EXT_ARG;
            min = 1;
        }
        /* A no-wait enter with deferred work flagged asks for up to
         * UL_TW_BATCH pieces of it, not the kernel's 20 (decision 767): it
         * enters with min_complete = lag after moving the published CQ head
         * back by lag over CQEs already reaped, so the CQ holds lag events
         * before any new one and the kernel, having run up to lag pieces of
         * work (or all there is), finds min_complete met and returns without
         * waiting. The head goes back where it was once the enter returns;
         * only this thread enters or moves the head (SINGLE_ISSUER), and the
         * kernel reads the head only for the CQ's free room, which the lag
         * keeps above half the ring. Only while the last such enter took 20
         * or more (tw_busy): a ring that is not behind enters as before. */
        unsigned lag = 0, head = 0;
        tw = !wait && (sqflags & UL_SQ_TASKRUN) && (u->setup_flags & UL_SETUP_DEFER_TASKRUN);
        if (tw && u->tw_busy && !(sqflags & UL_SQ_CQ_OVERFLOW)) {
            unsigned room = e->nrec < e->cfg.record_cap ? e->cfg.record_cap - e->nrec : 0;
            lag = UL_MIN(UL_MIN((unsigned)UL_TW_BATCH, (u->cq_mask + 1) / 4), room);
            if (lag <= UL_TW_KERNEL || ready + lag > (u->cq_mask + 1) / 2)
                lag = 0;  /* no more than the kernel runs anyway, or no room to spare */
        }
        if (lag) {
            head = *u->cq_khead;
            __atomic_store_n(u->cq_khead, head - lag, __ATOMIC_RELEASE);
            min = lag;
            /* and a zero timeout: should a kernel count the CQ otherwise, the
             * enter still cannot sleep for more than a timer's expiry */
            memset(&arg, 0, sizeof arg);
            ts.tv_sec = ts.tv_nsec = 0;
            arg.ts = (uint64_t)(uintptr_t)&ts;
            flags |= UL_ENTER_EXT_ARG;
        }
        /* a timed wait that also submits: when it ends, see below */
        int64_t until = wait && to_submit > 0 && timeout_ns > 0 ? mono_ns() + timeout_ns : 0;
        int r = sys_enter(u->enter_fd, to_submit, min, flags, wait || lag ? &arg : NULL,
                          wait || lag ? sizeof arg : 0);
        int saved = errno;
        if (lag)
            __atomic_store_n(u->cq_khead, head, __ATOMIC_RELEASE);
        if (wait) {
            ul__wake_after_sleep(e);
            e->st.waits++;
        }
        e->st.enters++;
        if (r < 0 && saved != ETIME && saved != EBUSY && saved != EAGAIN)
            err = -saved;
        /* A wait cut short by a signal returns the count submitted, not EINTR,
         * when the same call submitted: an empty CQ after a successful wait
         * for one CQE means that, or, for a timed wait, that its time ran out
         * (the kernel drops ETIME as it drops EINTR). Say EINTR, so the
         * caller runs the signal handlers before waiting again, unless the
         * time is up: a timed-out run says 0, as one that submitted nothing
         * does (decision 331). The kernel's timer starts after our clock
         * read, so a timeout is never taken for a signal. */
        if (wait && r >= 0 && to_submit > 0 &&
            __atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE) == *u->cq_khead &&
            (until == 0 || mono_ns() < until))
            err = -EINTR;
    }
    unsigned sent_tail = u->sqe_tail;
    uint64_t cqes0 = e->st.cqes;
    reap(e, u);
    if (tw)  /* the kernel ran as many pieces as it would: more may wait (767) */
        u->tw_busy = e->st.cqes - cqes0 >= ready + UL_TW_KERNEL;
    /* Reaping can start work: the next queued send of an fd (ordered queue),
     * the rest of a short send, an EAGAIN readiness wait. Hand it to the
     * kernel in this run rather than the next turn's, so N queued sends take
     * one turn, not N (a few passes at most: each needs a completion). */
    /* So can a limited receive whose bundle filled its length: the kernel
     * goes on with it as deferred work, which a GETEVENTS enter runs (925) */
    for (int pass = 0; pass < 16 && (u->sqe_tail != sent_tail || u->recv_capped) &&
                       e->nrec < e->cfg.record_cap;
         pass++) {
        sent_tail = u->sqe_tail;
        u->recv_capped = 0;
        if (flush_reap(e, u) < 0)
            break;
    }
    u->recv_capped = 0;
    /* What the last pass produced (a busy socket re-arms an emulated
     * multishot receive on every pass) goes to the kernel now: left in the SQ
     * it would be submitted by the next run, after user code may have closed
     * the number and opened another file on it. */
    if (u->sqe_tail != sent_tail)
        flush(e, u);
    if (u->nfresh)  /* after every pass: what they handed over is consumed */
        capture_fresh(e, u);
    while ((__atomic_load_n(u->sq_kflags, __ATOMIC_ACQUIRE) & UL_SQ_CQ_OVERFLOW) &&
           e->nrec < e->cfg.record_cap && e->npend == 0) {
        /* NODROP kept the CQEs that did not fit: flush them into the CQ */
        e->st.cq_overflows++;
        e->st.enters++;
        if (sys_enter(u->enter_fd, 0, 0, u->enter_flags | UL_ENTER_GETEVENTS, NULL, 0) < 0 &&
            errno != EBUSY && errno != EAGAIN && errno != EINTR)
            break;
        reap(e, u);
    }
    return err;
}

/* uring_run(e, 0) would do nothing: the ring is enabled and ours, nothing
 * waits to be issued or submitted, ring_top_up has nothing to give, the CQ is
 * empty and the kernel holds no deferred work for us (TASKRUN_FLAG tells;
 * without it every run enters) */
static int uring_quiet(ul_engine *e)
{
    struct uring *u = e->bs;
    if (!u->enabled || u->parked || u->owner != &tls_marker || !u->wake_armed ||
        u->ncancels || u->nfresh || u->reg_countdown || e->bl_count ||
        !(u->setup_flags & UL_SETUP_TASKRUN_FLAG))
        return 0;
    if (u->bufring && (u->br_dry || (u->br_avail < u->br_want && e->nfree)))
        return 0;  /* ring_top_up has buffers to give */
    if (u->sqe_tail != __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE) ||
        __atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE) != *u->cq_khead)
        return 0;
    return !(__atomic_load_n(u->sq_kflags, __ATOMIC_ACQUIRE) &
             (UL_SQ_CQ_OVERFLOW | UL_SQ_TASKRUN));
}

/* a GETEVENTS enter would find a CQE without sleeping: the CQ holds entries,
 * or the kernel flags deferred task work (a completion waiting to be posted)
 * or an overflow. Or a send from Python waits to be submitted: a send to a
 * socket with room completes within the enter that submits it (and a peer's
 * receive on this ring with it, as deferred work the same enter runs), so the
 * turn submits it without a wait (decision 340). So does a cancel from Python
 * (close(), a receive stopped): its target ends within the enter that
 * submits it (a request waiting on its poll: the cancel queues its final
 * completion as task work, which that enter runs), so a wait would take
 * only that completion and return at once (decision 847), and a stream's
 * receive from Python, whose data is often there already (848): should
 * that run find nothing, the turn's waiting run follows. Only on the
 * ring's own thread, enabled and not parked. */
static int uring_ready(ul_engine *e)
{
    struct uring *u = e->bs;
    if (!u->enabled || u->parked || u->owner != &tls_marker)
        return 0;
    if (u->sends_queued || u->try_first ||
        __atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE) != *u->cq_khead)
        return 1;
    return (u->setup_flags & UL_SETUP_TASKRUN_FLAG) &&
           (__atomic_load_n(u->sq_kflags, __ATOMIC_ACQUIRE) & (UL_SQ_CQ_OVERFLOW | UL_SQ_TASKRUN));
}

/* ul_ended_with's look at the CQ: a CQE of a live op on fd with res, not
 * reaped yet (nothing consumed; the next reap takes it as before). A ring
 * without DEFER_TASKRUN posts a receive's -ECONNRESET when the task work
 * runs, at the return of any syscall of this thread, the peer's close(2)
 * of a socketpair or loopback connection included (decision 839). */
static int uring_ended_with(ul_engine *e, int fd, int32_t res)
{
    struct uring *u = e->bs;
    if (!u->enabled || u->owner != &tls_marker)
        return 0;
    unsigned tail = __atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE);
    for (unsigned head = *u->cq_khead; head != tail; head++) {
        const struct ul_cqe *c = &u->cqes[head & u->cq_mask];
        if (c->res != res || (c->user_data & KUD_SPECIAL) == KUD_SPECIAL)
            continue;
        struct ul_op *op = ul__op_find(e, ul__slot(c->user_data & ~KUD_POLL));
        if (op && op->kud == c->user_data && op->state == S_ACTIVE && op->fd == fd)
            return 1;
    }
    return 0;
}

/* A held close was released (the transport's _call_connection_lost,
 * decision 875) while its fd's cancels wait in the SQ: the enter that
 * submits them ends their targets (847), whose final completions this reap
 * takes (into pend, as a reap outside a run does), so the close(2) is made
 * now, where the stock loop closes, not at the next run. */
static int uring_settle(ul_engine *e)
{
    struct uring *u = e->bs;
    if (!u->enabled || u->owner != &tls_marker || u->parked)
        return 0;  /* the next run submits them */
    return flush_reap(e, u);
}

static int uring_flush(ul_engine *e)
{
    struct uring *u = e->bs;
    if (!u->enabled || u->owner != &tls_marker || u->parked)
        return 0;  /* the next run submits it */
    struct ul_op *op;  /* sends wait in the backlog for the run: now is now */
    for (uint32_t n = e->bl_count; n-- && ul__backlog_pop(e, &op);)
        issue(e, u, op);
    int r = flush(e, u);
    return r < 0 ? r : 0;
}

/* The backend's plain heap, which both destroy and forget (a fork()ed child)
 * give back: one list, so the two cannot drift apart (forget once left
 * `fresh` behind, decision 330). */
static void free_heap(ul_engine *e)
{
    struct uring *u = e->bs;
    free(u->cancels);
    free(u->fresh);
    free(u->br_pos);
    free(u);
    e->bs = NULL;
}

static void uring_destroy(ul_engine *e)
{
    struct uring *u = e->bs;
    if (!u)
        return;
    unregister_ring_fd(u);
    if (u->sqes)
        munmap(u->sqes, u->sqes_sz);
    if (u->ring_ptr)
        munmap(u->ring_ptr, u->ring_sz);
    close(u->ring_fd);
    if (u->br && e->in_flight == 0)
        munmap(u->br, u->br_sz);
    if (u->dr && e->in_flight == 0)
        munmap(u->dr, u->dr_sz);
    free_heap(e);
}

static int uring_park(ul_engine *e);

/* fork child: the rings are not mapped here and the requests are the parent's */
static void uring_forget(ul_engine *e)
{
    struct uring *u = e->bs;
    if (!u)
        return;
    close(u->ring_fd);
    free_heap(e);
}

const struct ul_backend ul_uring_backend = {
    .submit = uring_submit,
    .cancel = uring_cancel,
    .cancel_fd = uring_cancel_fd,
    .run = uring_run,
    .flush = uring_flush,
    .recycle = uring_recycle,
    .before_close = NULL,
    .fd_closing = NULL,
    .destroy = uring_destroy,
    .forget = uring_forget,
    .park = uring_park,
    .reserve = uring_reserve,
    .quiet = uring_quiet,
    .settle = uring_settle,
    .ready = uring_ready,
    .trim = uring_trim,
    .ended_with = uring_ended_with,
};

/* ---------------------------------------------------------------- init */

static int setup_ring(ul_engine *e, struct uring *u, char *err, int errlen)
{
    static const uint32_t ladder[] = {
        UL_SETUP_SINGLE_ISSUER | UL_SETUP_DEFER_TASKRUN | UL_SETUP_TASKRUN_FLAG |
            UL_SETUP_SUBMIT_ALL | UL_SETUP_NO_SQARRAY,
        UL_SETUP_SINGLE_ISSUER | UL_SETUP_DEFER_TASKRUN | UL_SETUP_TASKRUN_FLAG |
            UL_SETUP_SUBMIT_ALL,
        UL_SETUP_COOP_TASKRUN | UL_SETUP_TASKRUN_FLAG | UL_SETUP_SUBMIT_ALL,
        UL_SETUP_SUBMIT_ALL,
        0,
    };
    struct ul_uring_params p;
    int fd = -1;
    unsigned sq = e->cfg.sq_entries;
    unsigned cq = e->cfg.cq_entries < sq ? sq : e->cfg.cq_entries;
    for (size_t i = 0; i < sizeof ladder / sizeof ladder[0]; i++) {
        if ((e->cfg.options & UL_OPT_NO_DEFER) && (ladder[i] & UL_SETUP_DEFER_TASKRUN))
            continue;
        memset(&p, 0, sizeof p);
        p.flags = ladder[i] | UL_SETUP_CQSIZE | UL_SETUP_CLAMP | UL_SETUP_R_DISABLED;
        p.cq_entries = cq;
        fd = sys_setup(sq, &p);
        if (fd >= 0 || errno != EINVAL)
            break;
    }
    if (fd < 0) {
        snprintf(err, (size_t)errlen, "io_uring_setup: %s", strerror(errno));
        return -1;
    }
    u->ring_fd = u->enter_fd = fd;
    u->setup_flags = p.flags;
    u->features = p.features;
    u->sq_entries = p.sq_entries;

    u->ring_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct ul_cqe);
    if (cq_sz > u->ring_sz)
        u->ring_sz = cq_sz;
    u->ring_ptr = mmap(NULL, u->ring_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                       UL_OFF_SQ_RING);
    u->sqes_sz = p.sq_entries * sizeof(struct ul_sqe);
    u->sqes = mmap(NULL, u->sqes_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   UL_OFF_SQES);
    if (u->ring_ptr == MAP_FAILED || u->sqes == MAP_FAILED) {
        snprintf(err, (size_t)errlen, "mmap of the rings failed: %s", strerror(errno));
        if (u->ring_ptr == MAP_FAILED)
            u->ring_ptr = NULL;
        if (u->sqes == MAP_FAILED)
            u->sqes = NULL;
        return -1;
    }
    madvise(u->ring_ptr, u->ring_sz, MADV_DONTFORK);
    madvise(u->sqes, u->sqes_sz, MADV_DONTFORK);
    char *r = u->ring_ptr;
    u->sq_khead = (unsigned *)(r + p.sq_off.head);
    u->sq_ktail = (unsigned *)(r + p.sq_off.tail);
    u->sq_kflags = (unsigned *)(r + p.sq_off.flags);
    u->sq_mask = *(unsigned *)(r + p.sq_off.ring_mask);
    u->sqe_tail = *u->sq_ktail;
    if (!(p.flags & UL_SETUP_NO_SQARRAY)) {
        unsigned *array = (unsigned *)(r + p.sq_off.array);
        for (unsigned i = 0; i < p.sq_entries; i++)
            array[i] = i;  /* identity map, set once */
    }
    u->cq_khead = (unsigned *)(r + p.cq_off.head);
    u->cq_ktail = (unsigned *)(r + p.cq_off.tail);
    u->cq_mask = *(unsigned *)(r + p.cq_off.ring_mask);
    u->cqes = (struct ul_cqe *)(r + p.cq_off.cqes);
    e->info.sq_entries = p.sq_entries;
    e->info.cq_entries = p.cq_entries;
    return 0;
}

/* Map a provided-buffer ring of n entries and register it as group bgid;
 * its size goes to *sz. NULL when the memory or the kernel refuses it. */
static struct ul_buf *map_pbuf_ring(struct uring *u, unsigned n, uint16_t bgid, size_t *sz)
{
    *sz = (size_t)n * sizeof(struct ul_buf);
    void *ring = mmap(NULL, *sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ring == MAP_FAILED)
        return NULL;
    madvise(ring, *sz, MADV_DONTFORK);  /* the kernel reads it: the parent's */
    struct ul_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)ring;
    reg.ring_entries = n;
    reg.bgid = bgid;
    if (sys_register(u->ring_fd, UL_REGISTER_PBUF_RING, &reg, 1) < 0) {
        munmap(ring, *sz);
        return NULL;
    }
    return ring;
}

/* Register a buffer ring and give it every pool buffer not marked in held
 * (NULL: none is). Returns 0, or -1 when the kernel refuses it. */
static int setup_bufring(ul_engine *e, struct uring *u, const uint8_t *held)
{
    unsigned n = e->cfg.buf_count;
    if (!u->br_pos && !(u->br_pos = calloc(n, sizeof *u->br_pos)))
        return -1;
    u->br = map_pbuf_ring(u, n, 0, &u->br_sz);
    if (!u->br)
        return -1;
    u->bufring = 1;
    u->br_mask = n - 1;
    u->br_tail = 0;
    u->br_avail = 0;
    if (!u->br_want)
        u->br_want = UL_MIN(UL_RING_WANT0, n);
    /* every pool buffer not held by a record: the ring takes what it wants
     * (the lowest bids), the free stack the rest, bid 0 nearest its top */
    e->nfree = 0;
    for (unsigned i = n; i-- > 0;)
        if (!held || !held[i])
            ul__pool_put(e, (uint16_t)i);
    ring_top_up(e, u);
    return 0;
}

/* ---------------------------------------------------------------- park */

/*
 * Why park. An io_uring request belongs to the task that issued it: with
 * SINGLE_ISSUER|DEFER_TASKRUN only that thread may submit or reap, and even on
 * the other rungs its completion work runs in that thread. asyncio lets a loop
 * be run by one thread and later by another, so when the loop stops running
 * (ul_park, called at the end of run_forever) every request of ours leaves the
 * kernel: each is cancelled and reaped, and its op waits in the backlog (a
 * result that won the race becomes a record, as for any cancel). The next run
 * issues them again. If it comes from another thread, nothing of ours is in the
 * old ring any more, so the ring is rebuilt for that thread: closed and made
 * again, with the free pool buffers given to a new buffer ring. Ops never see
 * any of this.
 */

/* A request of ours in the kernel (or in the SQ on its way there)? A close
 * waiting for its fd's ops has no request; a shutdown never waits. */
static int in_kernel(const struct ul_op *op)
{
    return op->state == S_ACTIVE && op->kind != K_CLOSE;
}

/* park's cancels. The first pass marks each op in the kernel parked and
 * cancels it; a later pass (again) cancels every one still there (decision
 * 483), the ones the user had cancelled before the park too: that cancel
 * can meet the same window, and the request then sleeps in io-wq as well
 * (decision 527). The scan stops after the last of the in_flight live ops,
 * not at the table's end (1,024 ops a chunk): live ops gather in low slots,
 * since the slot table hands out the lowest free slots first */
static void park_cancel(ul_engine *e, struct uring *u, int again)
{
    uint32_t live = e->in_flight;
    for (uint32_t c = 0; c < e->nchunks && live; c++) {
        if (!e->chunks[c])
            continue;
        for (uint32_t i = 0; i < CHUNK_SIZE && live; i++) {
            struct ul_op *op = &e->chunks[c][i];
            if (!op->ud)
                continue;
            live--;
            if (!in_kernel(op) || op->rider)  /* a rider leaves with its batch's head */
                continue;
            if (!again && op->cancelled)
                continue;  /* its cancel is on its way; asked again later */
            if (!again) {
                op->parked = 1;
                /* the next run issues it again by number, after user code
                 * ran: remember which file it is for (see common.c) */
                ul__ident_capture(e, op);
            }
            cancel_kud(e, u, op->kud);
        }
    }
}

static int uring_park(ul_engine *e)
{
    struct uring *u = e->bs;
    if (!u->enabled || u->parked)
        return 0;  /* never ran: nothing reached the kernel, nothing is bound */
    if (u->owner != &tls_marker)
        return -EEXIST;
    u->parked = 1;  /* from here on, issue() sends ops to the backlog */
    park_cancel(e, u, 0);
    /* A request that does not let go in time (a read blocked in an io-wq
     * worker) leaves the engine bound to this thread; the next run here
     * carries on as if nothing happened. */
    int64_t now = mono_ns(), deadline = now + 2000000000LL, again = now + 10000000LL;
    for (;;) {
        reap(e, u);
        if (!any_live_op(e, in_kernel))
            break;
        now = mono_ns();
        if (now > deadline)
            return -ETIME;
        if (now > again) {
            /* a cancel that found nothing (the request was between two of
             * the kernel's own poll retries) is asked again: the request may
             * have gone to an io-wq worker since, where a cancel interrupts
             * it (decision 483) */
            park_cancel(e, u, 1);
            again = now + 10000000LL;
        }
        struct ul_sqe *s;
        while (u->ncancels && (s = get_sqe(e, u)))
            prep_cancel(u, s, u->cancels[--u->ncancels]);
        __atomic_store_n(u->sq_ktail, u->sqe_tail, __ATOMIC_RELEASE);
        unsigned to_submit = u->sqe_tail - __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE);
        struct ul_kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 10000000};
        struct ul_getevents_arg arg;
        memset(&arg, 0, sizeof arg);
        arg.ts = (uint64_t)(uintptr_t)&ts;
        sys_enter(u->enter_fd, to_submit, 1,
                  u->enter_flags | UL_ENTER_GETEVENTS | UL_ENTER_EXT_ARG, &arg, sizeof arg);
        e->st.enters++;
    }
    /* the registration pins the ring in this thread's table: let it go */
    unregister_ring_fd(u);
    return 0;
}

/* The datagram pool's ring (group 1), for multishot RECVMSG: only where
 * multishot receives run (a ring's buffers cannot also be engine-picked).
 * Every datagram buffer not marked in held (indexed by bid) goes to it. */
static int setup_dring(ul_engine *e, struct uring *u, const uint8_t *held)
{
    u->dr = map_pbuf_ring(u, UL_DGRAM_BUFS, 1, &u->dr_sz);
    if (!u->dr)
        return -1;
    u->dring = 1;
    u->dr_tail = 0;
    e->ndfree = 0;
    for (unsigned i = 0; i < UL_DGRAM_BUFS; i++)
        if (!held || !held[e->cfg.buf_count + i])
            uring_recycle(e, (uint16_t)(e->cfg.buf_count + i));
    return 0;
}

/* A new ring for the calling thread, replacing one with no request of ours. */
static int rebuild(ul_engine *e, struct uring *u)
{
    struct uring old = *u;
    char why[256];
    uint8_t *held = NULL;
    u->ring_fd = -1;
    u->ring_ptr = NULL;
    u->sqes = NULL;
    u->br = NULL;
    u->dr = NULL;
    if (setup_ring(e, u, why, sizeof why) < 0)
        goto fail;
    if (!ul__fd(e, u->ring_fd))
        goto fail;  /* its table entry, marked below (decision 427) */
    if (old.bufring || old.dring) {
        /* buffers named by records not yet recycled stay out of the new rings */
        held = calloc(e->cfg.buf_count + UL_DGRAM_BUFS, 1);
        if (!held)
            goto fail;
        for (uint32_t i = 0; i < e->nused; i++)
            held[e->used_bids[i]] = 1;
        for (uint32_t i = 0; i < e->npend; i++)
            if (e->pend[i].flags & UL_F_BUFFER)
                held[e->pend[i].bid] = 1;
        if (old.bufring && setup_bufring(e, u, held) < 0)
            goto fail;
        if (old.dring && setup_dring(e, u, held) < 0)
            goto fail;
        free(held);
    }
    /* the old ring holds nothing of ours (parked): close it */
    munmap(old.sqes, old.sqes_sz);
    munmap(old.ring_ptr, old.ring_sz);
    close(old.ring_fd);
    e->fds[old.ring_fd].own = 0;  /* the number may now name a file of the user's */
    e->fds[u->ring_fd].own = 1;
    if (old.br)
        munmap(old.br, old.br_sz);
    if (old.dr)
        munmap(old.dr, old.dr_sz);
    u->enabled = 0;
    u->wake_armed = 0;
    u->ncancels = 0;  /* they named requests of the old ring */
    u->enter_fd = u->ring_fd;
    u->enter_flags = 0;
    e->info.ring_flags = u->setup_flags;
    return 0;
fail:
    free(held);
    if (u->sqes)
        munmap(u->sqes, u->sqes_sz);
    if (u->ring_ptr)
        munmap(u->ring_ptr, u->ring_sz);
    if (u->ring_fd >= 0)
        close(u->ring_fd);
    if (u->br)
        munmap(u->br, u->br_sz);
    if (u->dr)
        munmap(u->dr, u->dr_sz);
    *u = old;
    return -ENOMEM;
}

static int unpark(ul_engine *e, struct uring *u)
{
    if (u->owner == &tls_marker) {
        /* The same thread again. Registering the ring fd costs a syscall here
         * and another at the next park; it saves only a little per entry. A
         * run_forever that lasts a few turns (run_until_complete over and
         * over) is better off without it: register once the loop has run a
         * while (64 runs) */
        if (!(u->enter_flags & UL_ENTER_REGISTERED_RING))
            u->reg_countdown = 64;
    } else {
        if (any_live_op(e, in_kernel))
            return -EEXIST;  /* a park that timed out: still bound to its thread */
        int r = rebuild(e, u);
        if (r < 0)
            return r;
    }
    u->parked = 0;
    return 0;
}

int ul__uring_init(ul_engine *e, char *err, int errlen)
{
    ul_probe pr;
    if (ul_probe_uring(&pr) < 0) {
        snprintf(err, (size_t)errlen, "%s", pr.reason);
        return -1;
    }
    struct uring *u = calloc(1, sizeof *u);
    if (!u) {
        snprintf(err, (size_t)errlen, "out of memory");
        return -1;
    }
    u->ring_fd = -1;
    e->bs = u;
    e->be = &ul_uring_backend;
    if (setup_ring(e, u, err, errlen) < 0) {
        uring_destroy(e);
        return -1;
    }
    if (ul__fd_own(e, u->ring_fd) < 0) {  /* no op may name it (decision 427) */
        snprintf(err, (size_t)errlen, "out of memory");
        uring_destroy(e);
        return -1;
    }
    /* opcode proxies for what the probe cannot show: SOCKET => 5.19 (multishot
     * accept, CANCEL_FD|ALL, buffer rings); SEND_ZC => 6.0 (multishot recv) */
    int k519 = pr.ops[UL_OP_SOCKET], k60 = pr.ops[UL_OP_SEND_ZC];
    uint32_t opt = e->cfg.options;
    if (k519 && !(opt & UL_OPT_NO_BUFRING))
        setup_bufring(e, u, NULL);
    u->ms_recv = u->bufring && k60 && !(opt & UL_OPT_NO_MULTISHOT);
    u->bundle = u->ms_recv && (u->features & UL_FEAT_RECVSEND_BUNDLE) &&
                !(opt & UL_OPT_NO_BUNDLE);
    u->ms_accept = k519 && !(opt & UL_OPT_NO_MULTISHOT);
    /* asked for only (decision 945): on by default it cost the 100 KiB echo a
     * second copy and made a fresh connection's second big message come split */
    u->recv_limit = u->ms_recv && pr.recv_limit && (opt & UL_OPT_RECV_LIMIT)
                        ? UL_RECV_TURN_BYTES : 0;
    /* a limited receive's bundle maps buffers for all the limit has left
     * (the kernel's max_len), and one that maps the ring's last ends the
     * receive: its own length (sqe->len, the kernel's per-invocation cap)
     * keeps a bundle to UL_RECV_BUNDLE_BUFS buffers (decision 925) */
    u->limit_bufs = u->recv_limit ? UL_MIN(UL_RECV_BUNDLE_BUFS,
                                           u->recv_limit / e->cfg.buf_size + 1) : 0;
    /* SOCKET_URING_OP_GETSOCKOPT came with 6.7, as READ_MULTISHOT */
    u->ring_cookie = u->ms_recv && pr.ops[UL_OP_READ_MULTISHOT] && pr.ops[UL_OP_URING_CMD] &&
                     !(opt & UL_OPT_TEST_EAGAIN);
    if (u->ms_recv)
        setup_dring(e, u, NULL);  /* else datagram buffers are engine-picked */
    u->ms_read = u->bufring && pr.ops[UL_OP_READ_MULTISHOT] && !(opt & UL_OPT_NO_MULTISHOT);
    u->cancel_fd = k519 && !(opt & UL_OPT_NO_CANCEL_FD);
    u->skip = (u->features & UL_FEAT_CQE_SKIP) ? UL_SQE_CQE_SKIP_SUCCESS : 0;
    arm_wake(e, u);

    e->recv_queue = 1;  /* one-shot pool receives of an fd in order (decision 688) */
    e->info.backend = UL_BACKEND_URING;
    e->info.ring_flags = u->setup_flags;
    e->info.features = u->features;
    e->info.multishot_recv = u->ms_recv;
    e->info.multishot_accept = u->ms_accept;
    e->info.multishot_read = u->ms_read;
    e->info.recv_bundle = u->bundle;
    e->info.recv_limit = u->recv_limit;
    e->info.buffer_ring = u->bufring;
    e->info.cancel_fd = u->cancel_fd;
    e->info.reason[0] = 0;
    return 0;
}
