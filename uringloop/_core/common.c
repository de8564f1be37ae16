/*
 * common.c -- the backend-independent half of the engine.
 *
 * Why this layer exists: the rules that make a completion engine safe do not
 * depend on how the kernel is asked. Writes on one stream must leave in the
 * order they were submitted, so send/write/shutdown on an fd form a queue of
 * which only the head is ever in the kernel (two SENDs in flight on one socket
 * may interleave). close must not race operations in flight, so close_fd first
 * cancels every live op on the fd, waits until each has delivered its final
 * record, and only then calls close(2): a reused fd number can never receive a
 * stale operation, and no buffer is released while the kernel may still write
 * into it. Both backends get these rules from here.
 *
 * Records: during ul_run they go straight into the array Python reads;
 * outside it (a cancel of a queued send, a submit on a closing fd, epoll's
 * speculative completions) they wait in `pend` and lead the next run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define EXPORT __attribute__((visibility("default")))

/* Its address names the calling thread (cheaper than pthread_self()). */
static __thread char this_thread;

/* A submission from a thread other than the one blocked in ul_run would race
 * it on the SQ, the op table and the fd table: refused (one load and a branch
 * when the loop is not in ul_run). Not a lock: it catches the mistake while
 * the loop waits, not every interleaving. */
static int foreign_thread(ul_engine *e)
{
    return __atomic_load_n(&e->in_run, __ATOMIC_ACQUIRE) && e->run_thread != &this_thread;
}

/* ---------------------------------------------------------- allocation */

static int fail_allocs;  /* tests: ul_test_fail_allocs */

EXPORT void ul_test_fail_allocs(int on)
{
    __atomic_store_n(&fail_allocs, on, __ATOMIC_RELAXED);
}

void *ul__realloc(void *p, size_t n)
{
    return __atomic_load_n(&fail_allocs, __ATOMIC_RELAXED) ? NULL : realloc(p, n);
}

/* ------------------------------------------------------------------ ops */

/* The op record for slot, allocating its chunk on first use. */
static struct ul_op *op_alloc(ul_engine *e, uint32_t slot)
{
    uint32_t c = slot >> CHUNK_SHIFT;
    if (slot >= MAX_SLOTS)
        return NULL;
    if (c >= e->nchunks) {
        uint32_t n = e->nchunks ? e->nchunks : 8;
        while (n <= c)
            n *= 2;
        struct ul_op **p = ul__realloc(e->chunks, n * sizeof *p);
        if (!p)
            return NULL;
        memset(p + e->nchunks, 0, (n - e->nchunks) * sizeof *p);
        e->chunks = p;
        e->nchunks = n;
    }
    if (!e->chunks[c]) {
        e->chunks[c] = ul__realloc(NULL, CHUNK_SIZE * sizeof(struct ul_op));
        if (!e->chunks[c])
            return NULL;
        memset(e->chunks[c], 0, CHUNK_SIZE * sizeof(struct ul_op));
    }
    return &e->chunks[c][slot & (CHUNK_SIZE - 1)];
}

/* The op in slot, or NULL when no op was ever submitted there. */
struct ul_op *ul__op_find(ul_engine *e, uint32_t slot)
{
    if ((slot >> CHUNK_SHIFT) >= e->nchunks || !e->chunks[slot >> CHUNK_SHIFT])
        return NULL;
    return &e->chunks[slot >> CHUNK_SHIFT][slot & (CHUNK_SIZE - 1)];
}

static struct ul_op *op_at(ul_engine *e, int32_t slot)
{
    return &e->chunks[(uint32_t)slot >> CHUNK_SHIFT][slot & (CHUNK_SIZE - 1)];
}

static void fd_reset(struct ul_fd *f)
{
    memset(f, 0, sizeof *f);
    f->ops_head = f->oq_head = f->oq_tail = f->close_slot = -1;
    f->rq_head = f->rq_tail = -1;
}

struct ul_fd *ul__fd(ul_engine *e, int fd)
{
    if (fd >= e->nfds) {
        /* up to the next 256 fds, not double: every entry is written (fd_reset),
         * so a doubled table keeps up to twice the entries resident, 60 bytes
         * each (decision 252) */
        int64_t n = ((int64_t)fd / UL_FD_STEP + 1) * UL_FD_STEP;
        if (n > INT32_MAX)
            n = INT32_MAX;  /* above any open fd: fs.nr_open stops at 2^31 - 64 */
        struct ul_fd *p = ul__realloc(e->fds, (size_t)n * sizeof *p);
        if (!p)
            return NULL;
        for (int i = e->nfds; i < (int)n; i++)
            fd_reset(&p[i]);
        e->fds = p;
        if (e->be && e->be->fd_grow && e->be->fd_grow(e, (int)n) < 0)
            return NULL;  /* (the entries past nfds are unused until then) */
        e->nfds = (int)n;
    }
    return &e->fds[fd];
}

/* fd is one of the engine's own (the wake eventfd, the ring fd, the epoll
 * fd): no op may name it (decision 427). Closing the eventfd through
 * close_fd, say, let the next wake write 8 bytes into whatever file took the
 * number. The mark lives in the fd's table entry, so op_begin's test of it
 * shares the `closing` test's load; the table is grown here to hold the fd
 * (the one place that can fail: -1, out of memory). The mark goes when the
 * engine closes the fd itself (a rebuilt ring: uring.c rebuild). */
int ul__fd_own(ul_engine *e, int fd)
{
    struct ul_fd *f = ul__fd(e, fd);
    if (!f)
        return -1;
    f->own = 1;
    return 0;
}

/* ------------------------------------------------------------- records */

/*
 * Allocation never happens where a failure could only drop work. A final
 * record is due for every live op, and a record naming a pool buffer for
 * every buffer, so pend is grown at submission (op_begin, which can say
 * -ENOMEM) to hold that many; the backlog is a list through the ops; the
 * backends reserve what they keep per op the same way. Only records that
 * carry neither (multishot accepts, level polls) can go past that bound,
 * under a sustained overload; pend then grows, and if it cannot, the process
 * stops with a message rather than lose a record silently.
 */
void ul__out_of_memory(const char *what)
{
    fprintf(stderr, "uringloop engine: out of memory (%s); a completion would be lost, "
                    "aborting\n", what);
    abort();
}

static int pend_grow(ul_engine *e, uint32_t n)
{
    ul_record *p = ul__realloc(e->pend, n * sizeof *p);
    if (!p)
        return -ENOMEM;
    e->pend = p;
    e->pend_cap = n;
    return 0;
}

static void pend_push(ul_engine *e, ul_record r)
{
    if (e->npend == e->pend_cap && pend_grow(e, e->pend_cap ? e->pend_cap * 2 : 256) < 0)
        ul__out_of_memory("records past the reserve");
    e->pend[e->npend++] = r;
}

/* Room for the records of ops live ops (and the backend's per-op state),
 * plus one per pool buffer: at submission, so that a failure is this
 * submission's -ENOMEM. */
static int reserve(ul_engine *e, uint32_t ops)
{
    if (ops <= e->reserved)
        return 0;
    uint32_t n = e->reserved ? e->reserved : 64;
    while (n < ops)
        n *= 2;
    uint32_t need = n + e->cfg.buf_count + UL_DGRAM_BUFS;  /* a record per pool buffer */
    if (need > e->pend_cap && pend_grow(e, need) < 0)
        return -ENOMEM;
    if (e->be->reserve && e->be->reserve(e, n) < 0)
        return -ENOMEM;
    e->reserved = n;
    return 0;
}

/* fd may have records in pend (its stamps are of records pend still holds) */
static inline int pend_has(const ul_engine *e, const struct ul_fd *f)
{
    return f->pend_any && (int32_t)(f->pend_hi - e->pend_taken) >= 0;
}

/* where fd's records may start in pend: npend when it has none there. A close
 * looks for them (decisions 498, 526); walking all of pend made each close of
 * a batch that closes many cost as much as the records the batch's earlier
 * cancels and sends left there (decision 827) */
static uint32_t pend_from(const ul_engine *e, const struct ul_fd *f)
{
    if (!pend_has(e, f))
        return e->npend;
    int32_t d = (int32_t)(f->pend_lo - e->pend_taken);
    return d > 0 ? (uint32_t)d : 0;
}

void ul__emit(ul_engine *e, struct ul_op *op, int32_t res, uint16_t flags, uint16_t bid)
{
    ul_record r = {op->ud, res, flags, bid};
    if (e->nreset && res > 0 && (op->kind == K_RECV || op->kind == K_RECV_INTO) &&
        op->fd >= 0 && op->fd < e->nfds && e->fds[op->fd].reset_if_data)
        e->fds[op->fd].reset = 1; /* bytes the closing owner will not read (497) */
    if (e->guard && res == -EFAULT)
        e->st.guard_faults++;  /* a kernel write hit a buffer the engine gave up? */
    if (e->in_run && e->nrec < e->cfg.record_cap && e->npend == 0) {
        e->rec[e->nrec++] = r;
        if (flags & UL_F_BUFFER)
            ul__pool_used(e, bid);
    } else {
        if (op->fd >= 0 && op->fd < e->nfds) {
            struct ul_fd *f = &e->fds[op->fd];
            uint32_t seq = e->pend_taken + e->npend;
            if (!pend_has(e, f))
                f->pend_lo = seq;
            f->pend_hi = seq;
            f->pend_any = 1;
        }
        pend_push(e, r);
    }
}

static void pend_move(ul_engine *e)
{
    uint32_t n = UL_MIN(e->npend, e->cfg.record_cap - e->nrec);
    for (uint32_t i = 0; i < n; i++) {
        e->rec[e->nrec++] = e->pend[i];
        if (e->pend[i].flags & UL_F_BUFFER)
            ul__pool_used(e, e->pend[i].bid);
    }
    memmove(e->pend, e->pend + n, (e->npend - n) * sizeof *e->pend);
    e->npend -= n;
    e->pend_taken += n;
}

/* ---------------------------------------------------------------- pool */

/* Guard mode (UL_OPT_GUARD, or URINGLOOP_GUARD=1 when the engine is made):
 * every pool buffer is a whole number of pages, and is PROT_NONE while no one
 * may touch it: not provided to the kernel (buffer ring, or an op in flight),
 * not named by a record of the last run. A kernel write into a buffer the
 * engine already gave up then fails with -EFAULT (counted in
 * stats.guard_faults, which the tests require to stay 0) and a user-space
 * access faults. Off, it costs one predictable branch per take/put/recycle. */
void ul__guard(ul_engine *e, uint16_t bid, int open)
{
    if (ul__is_dbid(e, bid))
        return;  /* the datagram pool is not guarded (see docs/design.md) */
    if (mprotect(e->pool + (size_t)bid * e->cfg.buf_size, e->cfg.buf_size,
                 open ? PROT_READ | PROT_WRITE : PROT_NONE) < 0)
        abort();  /* guard mode is for tests: a wrong protection must not pass */
}

int ul__pool_take(ul_engine *e)
{
    if (!e->nfree)
        return -1;
    uint16_t bid = e->free_bids[--e->nfree];
    e->st.pool_takes++;
    if (e->guard)
        ul__guard(e, bid, 1);
    ul__pool_touch(e, bid);
    return bid;
}

int ul__dpool_take(ul_engine *e)
{
    return e->ndfree ? e->dfree[--e->ndfree] : -1;
}

void ul__pool_put(ul_engine *e, uint16_t bid)
{
    if (ul__is_dbid(e, bid)) {
        e->dfree[e->ndfree++] = bid;
        return;
    }
    if (e->guard)
        ul__guard(e, bid, 0);
    e->free_bids[e->nfree++] = bid;
}

/*
 * Cold pool pages go back (decision 251). A burst (an accept storm, many
 * connections receiving in one turn) needs many buffers at once, and every
 * buffer the kernel or a record used keeps its pages, although the turns
 * after the burst use a few. The free stack hands out its top first, so the
 * buffers below its top `keep` are the coldest: their pages go back to the
 * kernel (MADV_DONTNEED; the mapping stays, a later use faults in zeroed
 * pages). Only free-stack buffers: nothing the kernel or a record holds.
 * Each buffer's pages go back once per use (resident[]), in runs of
 * contiguous bids: one madvise per run of bids, never one per op.
 */
void ul__pool_release(ul_engine *e, uint32_t keep)
{
    /* (and the buffers the caller marked 3: uring_trim's ring) */
    for (uint32_t i = 0; i + keep < e->nfree; i++)
        if (e->resident[e->free_bids[i]] == 1)
            e->resident[e->free_bids[i]] = 2;  /* to hand back */
    size_t bs = e->cfg.buf_size;
    for (uint32_t b = 0; b < e->cfg.buf_count;) {
        if (e->resident[b] < 2) {
            b++;
            continue;
        }
        /* 2: free, its pages go back and it counts no more; 3: a buffer
         * the stream ring holds (uring_trim): its pages go back, and it
         * stays counted, as the kernel takes it without ul__pool_touch */
        uint32_t start = b, gone = 0;
        for (; b < e->cfg.buf_count && e->resident[b] >= 2; b++) {
            gone += e->resident[b] == 2;
            e->resident[b] = e->resident[b] == 2 ? 0 : 1;
        }
        madvise(e->pool + start * bs, (b - start) * bs, MADV_DONTNEED);
        e->nresident -= gone;
    }
}

/* ul_run, idle since UL_TRIM_IDLE_NS with more than trim_at buffers resident */
static void pool_trim(ul_engine *e)
{
    if (e->be->trim)
        e->be->trim(e);
    else
        ul__pool_release(e, 0);  /* every free buffer: decision 986 */
    /* what stays resident now (the ring, buffers held) is not worth another
     * idle wakeup until as much again is used */
    e->trim_at = e->nresident + UL_POOL_KEEP > 2 * UL_POOL_KEEP ? e->nresident + UL_POOL_KEEP
                                                                 : 2 * UL_POOL_KEEP;
}

/* A datagram receive into the engine-picked buffer bid (no kernel ring for
 * it): the msghdr m (with its one iovec) points into the buffer, in the
 * layout of the kernel's multishot recvmsg, so every path hands Python the
 * same thing. */
void ul__dmsg_prep(ul_engine *e, uint32_t bid, struct msghdr *m, struct iovec *iov)
{
    uint8_t *b = ul__dbuf(e, bid);
    iov->iov_base = b + UL_DGRAM_HDR;
    iov->iov_len = UL_DGRAM_BUF_SIZE - UL_DGRAM_HDR;
    memset(m, 0, sizeof *m);
    m->msg_name = b + 16;
    m->msg_namelen = UL_DGRAM_NAME;
    m->msg_iov = iov;
    m->msg_iovlen = 1;
}

/* That receive returned res >= 0 (MSG_TRUNC: the datagram's real length)
 * with a namelen-byte address: write the header the kernel would have
 * written. Returns the payload length, or -EMSGSIZE when the datagram did
 * not fit. */
int32_t ul__dmsg_fill(ul_engine *e, uint32_t bid, uint32_t namelen, int32_t res)
{
    uint32_t h[4] = {namelen, 0, (uint32_t)res, 0};
    memcpy(ul__dbuf(e, bid), h, sizeof h);
    return res > (int32_t)(UL_DGRAM_BUF_SIZE - UL_DGRAM_HDR) ? -EMSGSIZE : res;
}

/* the same for op's own msghdr and buffer op->bid */
void ul__dmsg_setup(ul_engine *e, struct ul_op *op)
{
    ul__dmsg_prep(e, (uint32_t)op->bid, &op->ax->msg, &op->ax->iov);
}

int32_t ul__dmsg_done(ul_engine *e, struct ul_op *op, int32_t res)
{
    return ul__dmsg_fill(e, (uint32_t)op->bid, op->ax->msg.msg_namelen, res);
}

/* One datagram's outcome in buffer bid (n = payload bytes, or -EMSGSIZE: the
 * buffer goes back and the receive goes on). more: the kernel's op lives on;
 * *rearm: the backend must start the op again (emulated multishot, or the
 * kernel ended it for its own reasons). */
void ul__dgram_result(ul_engine *e, struct ul_op *op, int32_t n, uint16_t bid, int more,
                      int *rearm)
{
    uint16_t fl = UL_F_BUFFER | UL_F_MSG;
    *rearm = 0;
    if (n < 0) {
        ul__pool_used(e, bid);  /* recycled at the next run */
        fl = 0;
        bid = 0;
    }
    if (!op->multishot || (!more && op->cancelled)) {
        ul__finish(e, op, n, fl, bid);
        return;
    }
    ul__emit(e, op, n, UL_F_MORE | fl, bid);
    if (!more) {
        e->st.rearms++;
        *rearm = 1;
    }
}

void ul__pool_used(ul_engine *e, uint16_t bid)
{
    e->used_bids[e->nused++] = bid;
}

/* ------------------------------------------------------------- backlog */

void ul__backlog_push(ul_engine *e, struct ul_op *op)
{
    op->state = S_BACKLOG;
    if (op->on_backlog)
        return;
    int32_t slot = (int32_t)ul__slot(op->ud);
    op->on_backlog = 1;
    op->bl_next = -1;
    if (e->bl_tail >= 0)
        op_at(e, e->bl_tail)->bl_next = slot;
    else
        e->bl_head = slot;
    e->bl_tail = slot;
    e->bl_count++;
}

/* Pops the op at the head of the backlog; its state is still S_BACKLOG. */
int ul__backlog_pop(ul_engine *e, struct ul_op **out)
{
    if (e->bl_head < 0)
        return 0;
    struct ul_op *op = op_at(e, e->bl_head);
    e->bl_head = op->bl_next;
    if (e->bl_head < 0)
        e->bl_tail = -1;
    op->on_backlog = 0;
    e->bl_count--;
    *out = op;
    return 1;
}

/* An op that ends while in the backlog (a cancel) leaves it. Rare: a scan. */
static void backlog_unlink(ul_engine *e, struct ul_op *op)
{
    int32_t slot = (int32_t)ul__slot(op->ud), prev = -1;
    for (int32_t s = e->bl_head; s >= 0; prev = s, s = op_at(e, s)->bl_next) {
        if (s != slot)
            continue;
        if (prev >= 0)
            op_at(e, prev)->bl_next = op->bl_next;
        else
            e->bl_head = op->bl_next;
        if (e->bl_tail == slot)
            e->bl_tail = prev;
        e->bl_count--;
        break;
    }
    op->on_backlog = 0;
}

/* ------------------------------------------------------------ identity */

/*
 * An op names its file by fd number, and the kernel resolves the number
 * again each time the engine goes on with the op by itself: the rest of a
 * short send, a multishot re-arm, a reissue after EAGAIN or a readiness wait,
 * connect's SO_ERROR. User code may have closed the number meanwhile, and a
 * new file may have it now; going on would act on that file (the rest of an
 * old send going out on a new socket, an old accept taking the new
 * listener's connection). So ops that may go on by themselves carry the
 * identity of their file, taken while the number is known to still name it
 * (a socket's SO_COOKIE, unique for the boot; st_dev/st_ino otherwise), and
 * each continuation compares it first: a different file, or none, ends the op
 * with -EBADF. Taking it costs a syscall, so only these ops pay, only once,
 * and only when they did not finish at once (io_uring: after the run that
 * handed them to the kernel, if still in flight; epoll: when they start to
 * wait). On io_uring 6.7+ a multishot receive's is no syscall: a getsockopt
 * SQE next to the receive's has the kernel write it while the same enter
 * consumes both (uring.c take_cookie, ident_cookies; decision 601); the
 * syscall stays for the rest. One-shot receives and accepts (sock_recv's hot path) carry none:
 * theirs is the EAGAIN reissue only, which this kernel does not take; see
 * docs/design.md.
 */
static uint64_t fd_ident(int fd)
{
    uint64_t cookie = 0;
    socklen_t len = sizeof cookie;
    if (getsockopt(fd, SOL_SOCKET, 57 /* SO_COOKIE */, &cookie, &len) == 0 && cookie)
        return cookie;
    if (errno == EBADF)
        return 0;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    /* never equal to a cookie (top bit), never 0 */
    return (1ULL << 63) | (((uint64_t)st.st_dev << 40) ^ (uint64_t)st.st_ino) | 1;
}

int ul__may_continue(const struct ul_op *op)
{
    switch (op->kind) {
    case K_SEND:
    case K_SENDV:
    case K_WRITE:
    case K_CONNECT:
        return 1;
    case K_RECV:
    case K_READ_POOL:
    case K_RECVMSG_POOL:
    case K_ACCEPT:
        return op->multishot;
    default:
        return 0;
    }
}

/* Call only while op->fd is known to name the op's file. */
void ul__ident_capture(ul_engine *e, struct ul_op *op)
{
    if (!op->has_ident) {
        e->st.ident_captures++;
        op->ident = fd_ident(op->fd);
        op->has_ident = op->ident != 0;
    }
}

/* The identity of the file fd names now (one syscall), 0 if none. */
uint64_t ul__ident_now(ul_engine *e, int fd)
{
    e->st.ident_checks++;
    return fd_ident(fd);
}

/* 1 when op carries an identity and its fd no longer names that file. */
int ul__ident_gone(ul_engine *e, struct ul_op *op)
{
    return op->has_ident && ul__ident_now(e, op->fd) != op->ident;
}

/* ---------------------------------------------------------------- wake */

/*
 * The wake protocol. ul_wake() stores wake_pending, then reads sleeping; a run
 * about to block stores sleeping, then takes wake_pending. Both seq_cst, so at
 * least one side sees the other: either the run does not block, or the waker
 * writes the eventfd. wake_pending is consumed ONLY here, and consuming it
 * ends the run (woken), so Python always gets to look at its ready queue: a
 * wake is never absorbed by a run that then goes back to sleep. Every waker
 * that sees the loop asleep writes: no "already sent" flag, whose reset would
 * race with a drain of the eventfd in a non-blocking turn (a lost wakeup that
 * CPython 3.13's timing exposed).
 *
 * Returns 1 when the caller may block; 0 when a wake arrived meanwhile.
 */
int ul__wake_prepare_sleep(ul_engine *e)
{
    atomic_store(&e->sleeping, 1);
    if (atomic_exchange(&e->wake_pending, 0)) {
        atomic_store(&e->sleeping, 0);
        e->woken = 1;
        return 0;
    }
    return 1;
}

void ul__wake_after_sleep(ul_engine *e)
{
    atomic_store(&e->sleeping, 0);
}

void ul__wake_drain(ul_engine *e)
{
    uint64_t v;
    e->woken = 1;
    while (read(e->wake_fd, &v, sizeof v) > 0)
        ;
}

EXPORT void ul_wake(ul_engine *e)
{
    atomic_store(&e->wake_pending, 1);
    if (atomic_load(&e->sleeping)) {
        uint64_t one = 1;
        if (write(e->wake_fd, &one, sizeof one) == sizeof one)
            __atomic_fetch_add(&e->st.wakeups, 1, __ATOMIC_RELAXED);
    }
}

/* ------------------------------------------------------ op life cycle */

static void fd_link(ul_engine *e, struct ul_fd *f, struct ul_op *op)
{
    int32_t slot = (int32_t)ul__slot(op->ud);
    op->fd_prev = -1;
    op->fd_next = f->ops_head;
    if (f->ops_head >= 0)
        op_at(e, f->ops_head)->fd_prev = slot;
    f->ops_head = slot;
    f->nops++;
}

static void fd_unlink(ul_engine *e, struct ul_fd *f, struct ul_op *op)
{
    if (op->fd_prev >= 0)
        op_at(e, op->fd_prev)->fd_next = op->fd_next;
    else
        f->ops_head = op->fd_next;
    if (op->fd_next >= 0)
        op_at(e, op->fd_next)->fd_prev = op->fd_prev;
    f->nops--;
}

static void do_close(ul_engine *e, int fd);

/* ul_fd.advancing: which of the fd's queues a loop below is starting */
#define ADV_OQ 1
#define ADV_RQ 2
static void q_advance(ul_engine *e, int fd, uint8_t which);

static int is_ordered(const struct ul_op *op)
{
    return op->kind == K_SEND || op->kind == K_SENDV || op->kind == K_SHUTDOWN ||
           (op->kind == K_WRITE && op->offset < 0);
}

/* io_uring: a one-shot pool receive (sock_recv, sock_recv_into) takes its
 * turn in its fd's receive queue (rq_head, linked by oq_next): one is in the
 * kernel at a time, so concurrent receives of a stream take its bytes in
 * the order they were asked, not in the order the kernel wakes them
 * (decision 688). epoll's readers of an fd go in order already (its rq). */
static int is_rqueued(const ul_engine *e, const struct ul_op *op)
{
    return e->recv_queue && op->kind == K_RECV && !op->multishot;
}

void ul__finish(ul_engine *e, struct ul_op *op, int32_t res, uint16_t flags, uint16_t bid)
{
    int fd = op->fd;
    uint8_t advance = 0; /* ADV_OQ or ADV_RQ: that queue's next op goes */
    if (op->on_backlog)
        backlog_unlink(e, op);
    ul__emit(e, op, res, flags & ~UL_F_MORE, bid);
    if (op->blk) {  /* the kernel is done with them at the final CQE */
        if (op->blk->batch)
            ul__op_unbatch(op);  /* (a batch ends before its head's final record) */
        ul__iov_block_free(op->blk);
        op->blk = NULL;
    }
    op->ud = 0;
    op->state = S_FREE;
    e->in_flight--;
    if (op->kind == K_CLOSE || op->kind == K_NOP || fd < 0)
        return;
    struct ul_fd *f = &e->fds[fd];
    fd_unlink(e, f, op);
    if (is_ordered(op) && f->oq_head >= 0 && op_at(e, f->oq_head) == op) {
        f->oq_head = op->oq_next;
        if (f->oq_head < 0)
            f->oq_tail = -1;
        advance = ADV_OQ;
    } else if (is_rqueued(e, op) && f->rq_head >= 0 && op_at(e, f->rq_head) == op) {
        f->rq_head = op->oq_next;
        if (f->rq_head < 0)
            f->rq_tail = -1;
        else
            advance = ADV_RQ;  /* another receive waits its turn */
    }
    if (advance)
        q_advance(e, fd, advance);
    f = &e->fds[fd];
    if (f->closing && f->nops == 0 && !f->held)
        do_close(e, fd);
}

/* The op ends early because of err (0: a write that returned 0). A send or
 * write that already put bytes out says how many (UL_F_SHORT, errno in bid):
 * the caller must know what reached the peer. Anything else ends with -err. */
void ul__stop(ul_engine *e, struct ul_op *op, int err)
{
    if (ul__is_send(op) && (op->done > 0 || err == 0))
        ul__finish(e, op, (int32_t)op->done, UL_F_SHORT, (uint16_t)err);
    else
        ul__finish(e, op, -err, 0, 0);
}

/* K_SENDV's cursor: n more bytes went out */
void ul__iov_advance(struct ul_op *op, uint32_t n)
{
    struct ul_iov_block *b = ul__op_iov(op);
    while (b->idx < b->n) {
        struct iovec *v = &b->v[b->idx];
        if (n < v->iov_len) {
            v->iov_base = (char *)v->iov_base + n;
            v->iov_len -= n;
            return;
        }
        n -= (uint32_t)v->iov_len;
        b->idx++;
    }
}

/* A send or ordered write made progress (res >= 0) or failed (res < 0). */
void ul__sent(ul_engine *e, struct ul_op *op, int32_t res)
{
    if (res < 0) {
        ul__stop(e, op, -res);
        return;
    }
    op->done += (uint32_t)res;
    if (op->offset >= 0)
        op->offset += res;
    if (op->kind == K_SENDV)
        ul__iov_advance(op, (uint32_t)res);
    if (op->done >= op->len) {
        ul__finish(e, op, (int32_t)op->done, 0, 0);
    } else if (res == 0) {
        ul__stop(e, op, 0);
    } else if (op->cancelled) {
        ul__stop(e, op, ECANCELED);
    } else if (e->be->submit(e, op) < 0) {
        ul__stop(e, op, EIO);
    }
}

static void start_op(ul_engine *e, struct ul_op *op)
{
    op->state = S_ACTIVE;
    if (op->kind == K_SHUTDOWN) {
        int r = shutdown(op->fd, (int)op->events);
        ul__finish(e, op, r < 0 ? -errno : 0, 0, 0);
        return;
    }
    int r = e->be->submit(e, op);
    if (r < 0)
        ul__finish(e, op, r, 0, 0);
}

/* Start the queued ops of fd's ordered queue (ADV_OQ) or, io_uring, its
 * receive queue (ADV_RQ) until one stays in progress. Iterative on purpose:
 * a long queue of sends that complete at once must not recurse. */
static void q_advance(ul_engine *e, int fd, uint8_t which)
{
    struct ul_fd *f = &e->fds[fd];
    if (f->advancing & which)
        return;  /* the outer call continues the loop */
    f->advancing |= which;
    for (;;) {
        f = &e->fds[fd];
        int32_t head = which == ADV_RQ ? f->rq_head : f->oq_head;
        /* a closing fd starts nothing new: close_fd cancels what is queued */
        if (head < 0 || f->closing)
            break;
        struct ul_op *op = op_at(e, head);
        if (op->state != S_QUEUED)
            break;
        start_op(e, op);
    }
    e->fds[fd].advancing &= (uint8_t)~which;
}

static void do_close(ul_engine *e, int fd)
{
    struct ul_fd *f = &e->fds[fd];
    int32_t slot = f->close_slot;
    f->closing = 0;
    if (f->reset_if_data)
        e->nreset--;
    if (f->reset) {
        struct linger l = {1, 0}; /* close(2) resets the connection (decision 497) */
        (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    if (e->be->before_close)
        e->be->before_close(e, fd);
    int r = close(fd);
    int res = (r < 0 && errno != EINTR) ? -errno : 0;
    uint32_t from = pend_from(e, &e->fds[fd]);
    fd_reset(&e->fds[fd]);
    /* records of this file's ended ops still waiting in pend name the
     * number, which a new file may get before they are delivered: they no
     * longer name it, or its close_fd(reset_if_data) would take them for
     * its own bytes and reset (decision 526). Only from its first one
     * there (decision 827). */
    e->st.pend_walked += e->npend - from;
    for (uint32_t i = from; i < e->npend; i++) {
        struct ul_op *o = ul__op_find(e, ul__slot(e->pend[i].user_data));
        if (o && o->state == S_FREE && o->ud == 0 && o->fd == fd)
            o->fd = -1;
    }
    if (slot >= 0)
        ul__finish(e, op_at(e, slot), res, 0, 0);
}

/* Validates and takes the slot. Returns the op, or NULL with *err set. */
static struct ul_op *op_begin(ul_engine *e, uint64_t ud, int kind, int fd, int *err)
{
    if (e->closed) {
        *err = -EBADF;
        return NULL;
    }
    if (foreign_thread(e)) {
        *err = -EEXIST;
        return NULL;
    }
    if (ud == 0 || (ud & KUD_SPECIAL) || (kind != K_NOP && fd < 0)) {
        *err = -EINVAL;
        return NULL;
    }
    struct ul_op *op = op_alloc(e, ul__slot(ud));
    if (!op) {
        *err = -ENOMEM;
        return NULL;
    }
    if (op->ud != 0) {
        *err = -EBUSY;
        return NULL;
    }
    /* the slot's address block: taken for the kinds that carry an address,
     * given back when the slot is begun for another kind (the op before it
     * is finished and its record was read: Python reuses a slot only then) */
    if (ul__takes_addr(kind) && !op->ax) {
        if (!(op->ax = ul__realloc(NULL, sizeof *op->ax))) {
            *err = -ENOMEM;
            return NULL;
        }
        e->st.addr_blocks++;
    } else if (!ul__takes_addr(kind) && kind != K_ACCEPT && op->ax) {
        free(op->ax);
        op->ax = NULL;
        e->st.addr_blocks--;
    }
    /* records already waiting count too: ops submitted and cancelled over and
     * over between two runs leave one final each */
    if (e->in_flight + e->npend >= e->reserved && reserve(e, e->in_flight + e->npend + 1) < 0) {
        *err = -ENOMEM;
        return NULL;
    }
    /* a number past the fd table that names no open file (a bad fd: at
     * most 2^31 - 1) fails with EBADF, as it would in the kernel, without a
     * table of fd + 1 entries (60 bytes each, written: decision 418) */
    int unopened = kind != K_NOP && fd >= e->nfds && fcntl(fd, F_GETFD) < 0;
    struct ul_fd *f = NULL;
    if (kind != K_NOP && !unopened && !(f = ul__fd(e, fd))) {
        *err = -ENOMEM;
        return NULL;
    }
    memset(op, 0, offsetof(struct ul_op, ax));
    op->ud = ud;
    op->kind = (uint8_t)kind;
    op->fd = kind == K_NOP ? -1 : fd;
    op->fd_prev = op->fd_next = op->oq_next = op->wq_next = op->bl_next = op->bid = -1;
    e->in_flight++;
    if (unopened || (f && (f->closing | f->own))) {
        /* an fd being closed takes no new work; the engine's own fds none
         * at all (decision 427) */
        op->fd = -1;
        ul__finish(e, op, -EBADF, 0, 0);
        return NULL;  /* *err stays 0: accepted, its record will come */
    }
    if (f && kind != K_CLOSE)
        fd_link(e, f, op);
    return op;
}

#define BEGIN(kind, fd)                                  \
    int err_ = 0;                                        \
    struct ul_op *op = op_begin(e, ud, kind, fd, &err_); \
    if (!op)                                             \
        return err_;

static int submit(ul_engine *e, struct ul_op *op)
{
    if (is_ordered(op)) {
        struct ul_fd *f = &e->fds[op->fd];
        int32_t slot = (int32_t)ul__slot(op->ud);
        op->state = S_QUEUED;
        if (f->oq_tail >= 0)
            op_at(e, f->oq_tail)->oq_next = slot;
        else
            f->oq_head = slot;
        f->oq_tail = slot;
        q_advance(e, op->fd, ADV_OQ);
        return 0;
    }
    if (is_rqueued(e, op)) {
        struct ul_fd *f = &e->fds[op->fd];
        int32_t slot = (int32_t)ul__slot(op->ud);
        if (f->rq_tail >= 0) {  /* a receive of fd is in the kernel: wait behind it */
            op->state = S_QUEUED;
            op_at(e, f->rq_tail)->oq_next = slot;
            f->rq_tail = slot;
            return 0;
        }
        f->rq_head = f->rq_tail = slot;
    }
    start_op(e, op);
    return 0;
}

/* ----------------------------------------------------------- operations */

EXPORT int ul_nop(ul_engine *e, uint64_t ud)
{
    BEGIN(K_NOP, -1);
    return submit(e, op);
}

EXPORT int ul_recv(ul_engine *e, uint64_t ud, int fd, int multishot, uint32_t max)
{
    BEGIN(K_RECV, fd);
    op->multishot = (multishot & ~UL_RECV_STREAM) != 0;
    op->stream = (multishot & UL_RECV_STREAM) ? 1 : 0;  /* the caller's word (decision 745) */
    op->len = (max == 0 || max > e->cfg.buf_size) ? e->cfg.buf_size : max;
    return submit(e, op);
}

EXPORT int ul_read_pool(ul_engine *e, uint64_t ud, int fd, int multishot, uint32_t max)
{
    BEGIN(K_READ_POOL, fd);
    op->multishot = (multishot & ~UL_RECV_STREAM) != 0;
    op->len = (max == 0 || max > e->cfg.buf_size) ? e->cfg.buf_size : max;
    return submit(e, op);
}

EXPORT int ul_recv_into(ul_engine *e, uint64_t ud, int fd, char *buf, uint32_t len, int flags)
{
    BEGIN(K_RECV_INTO, fd);
    op->buf = buf;
    op->len = len;
    op->wait_first = (flags & (UL_RECV_WAIT_FIRST | UL_RECV_DRAINED)) != 0;
    op->drained = (flags & UL_RECV_DRAINED) != 0;
    op->msg_flags = flags & ~(UL_RECV_WAIT_FIRST | UL_RECV_DRAINED);
    return submit(e, op);
}

EXPORT int ul_send(ul_engine *e, uint64_t ud, int fd, const char *buf, uint32_t len, int flags)
{
    BEGIN(K_SEND, fd);
    op->buf = (char *)buf;
    op->len = len;
    op->msg_flags = flags | MSG_NOSIGNAL;
    op->offset = -1;
    return submit(e, op);
}

EXPORT int ul_sendv(ul_engine *e, uint64_t ud, int fd, const void *iov, uint32_t niov, int flags)
{
    const struct iovec *v = iov;
    uint64_t total = 0;
    if (niov && !v)
        return -EINVAL;
    for (uint32_t i = 0; i < niov; i++)
        total += v[i].iov_len;
    if (total > INT32_MAX)
        return -EINVAL;  /* a record's res must be able to say it */
    if (niov <= 1)  /* one buffer (or none): a plain send */
        return ul_send(e, ud, fd, niov ? v[0].iov_base : NULL, (uint32_t)total, flags);
    struct ul_iov_block *copy = ul__iov_block_new(niov, 0);
    if (!copy)
        return -ENOMEM;
    memcpy(copy->v, v, niov * sizeof *v);
    int err = 0;
    struct ul_op *op = op_begin(e, ud, K_SENDV, fd, &err);
    if (!op) {
        ul__iov_block_free(copy);
        return err;
    }
    op->blk = copy;
    op->len = (uint32_t)total;
    op->msg_flags = flags | MSG_NOSIGNAL;
    op->offset = -1;
    return submit(e, op);
}

static void msg_setup(struct ul_op *op, char *buf, uint32_t len, int with_name)
{
    struct ul_addr_block *x = op->ax;
    x->iov.iov_base = buf;
    x->iov.iov_len = len;
    memset(&x->msg, 0, sizeof x->msg);
    x->msg.msg_iov = &x->iov;
    x->msg.msg_iovlen = 1;
    if (with_name) {
        x->msg.msg_name = &x->addr;
        x->msg.msg_namelen = x->addrlen;
    }
}

EXPORT int ul_sendmsg(ul_engine *e, uint64_t ud, int fd, const char *buf, uint32_t len,
                      const char *addr, uint32_t addrlen, int flags)
{
    if (addrlen > sizeof(struct sockaddr_storage))
        return -EINVAL;
    BEGIN(K_SENDMSG, fd);
    op->buf = (char *)buf;
    op->len = len;
    op->msg_flags = flags | MSG_NOSIGNAL;
    op->ax->addrlen = addr ? addrlen : 0;
    if (addr)
        memcpy(&op->ax->addr, addr, addrlen);
    msg_setup(op, op->buf, len, addr != NULL);
    return submit(e, op);
}

EXPORT int ul_recvmsg(ul_engine *e, uint64_t ud, int fd, char *buf, uint32_t len, int flags)
{
    BEGIN(K_RECVMSG, fd);
    op->buf = buf;
    op->len = len;
    op->msg_flags = flags;
    op->ax->addrlen = sizeof(struct sockaddr_storage);
    msg_setup(op, buf, len, 1);
    return submit(e, op);
}

EXPORT int ul_recvmsg_pool(ul_engine *e, uint64_t ud, int fd, int multishot)
{
    BEGIN(K_RECVMSG_POOL, fd);
    op->multishot = multishot != 0;
    op->msg_flags = MSG_TRUNC;  /* the real length: a datagram cut is detected */
    return submit(e, op);
}

EXPORT uint8_t *ul_dgram_pool(ul_engine *e, uint32_t *buf_size, uint32_t *count,
                              uint32_t *first_bid)
{
    *buf_size = UL_DGRAM_BUF_SIZE;
    *count = UL_DGRAM_BUFS;
    *first_bid = e->cfg.buf_count;
    return e->dpool;
}

EXPORT int ul_accept(ul_engine *e, uint64_t ud, int fd, int multishot)
{
    BEGIN(K_ACCEPT, fd);
    op->multishot = multishot != 0;
    /* a one-shot accept (sock_accept) takes the peer's address as accept(2)
     * gives it: getpeername() fails once the peer has reset the connection
     * (decision 422). A multishot one (a server's) holds no address block:
     * its connections' addresses are asked for by their transports. Without
     * memory for the block the accept goes on without the address. */
    if (op->multishot && op->ax) {
        free(op->ax);
        op->ax = NULL;
        e->st.addr_blocks--;
    } else if (!op->multishot && !op->ax && (op->ax = ul__realloc(NULL, sizeof *op->ax))) {
        e->st.addr_blocks++;
    }
    return submit(e, op);
}

EXPORT int ul_connect(ul_engine *e, uint64_t ud, int fd, const char *addr, uint32_t addrlen)
{
    if (addrlen > sizeof(struct sockaddr_storage) || addrlen == 0)
        return -EINVAL;
    BEGIN(K_CONNECT, fd);
    memcpy(&op->ax->addr, addr, addrlen);
    op->ax->addrlen = addrlen;
    return submit(e, op);
}

EXPORT int ul_poll(ul_engine *e, uint64_t ud, int fd, uint32_t events, int level)
{
    BEGIN(K_POLL, fd);
    op->events = events;
    op->level = level == UL_POLL_KEPT ? UL_POLL_KEPT : level != 0 && level != UL_POLL_DRAINED;
    op->drained = level == UL_POLL_DRAINED;
    op->multishot = level == UL_POLL_MULTI; /* io_uring: IORING_POLL_ADD_MULTI */
    return submit(e, op);
}

EXPORT int ul_read(ul_engine *e, uint64_t ud, int fd, char *buf, uint32_t len, int64_t offset)
{
    BEGIN(K_READ, fd);
    op->buf = buf;
    op->len = len;
    op->offset = offset < 0 ? -1 : offset;
    return submit(e, op);
}

EXPORT int ul_write(ul_engine *e, uint64_t ud, int fd, const char *buf, uint32_t len,
                    int64_t offset)
{
    BEGIN(K_WRITE, fd);
    op->buf = (char *)buf;
    op->len = len;
    op->offset = offset < 0 ? -1 : offset;
    return submit(e, op);
}

EXPORT int ul_shutdown(ul_engine *e, uint64_t ud, int fd, int how)
{
    BEGIN(K_SHUTDOWN, fd);
    op->events = (uint32_t)how;
    op->offset = -1;
    return submit(e, op);
}

/* ------------------------------------------------------------- cancel */

struct ul_op *ul__op_at(ul_engine *e, int32_t slot) { return op_at(e, slot); }

/* An op waiting behind the head of its fd's ordered queue (nothing of it was
 * sent), or of its receive queue (io_uring), leaves the queue and finishes
 * with res. */
void ul__oq_drop(ul_engine *e, struct ul_op *op, int32_t res)
{
    struct ul_fd *f = &e->fds[op->fd];
    int rq = is_rqueued(e, op);
    int32_t *head = rq ? &f->rq_head : &f->oq_head, *tail = rq ? &f->rq_tail : &f->oq_tail;
    int32_t slot = (int32_t)ul__slot(op->ud), prev = -1;
    for (int32_t s = *head; s >= 0; prev = s, s = op_at(e, s)->oq_next) {
        if (s != slot)
            continue;
        if (prev >= 0)
            op_at(e, prev)->oq_next = op->oq_next;
        else
            *head = op->oq_next;
        if (*tail == slot)
            *tail = prev;
        break;
    }
    ul__finish(e, op, res, 0, 0);
}

/* Returns 1 when a cancel was started (its final record will come). */
static int cancel_op(ul_engine *e, struct ul_op *op)
{
    if (op->cancelled || op->kind == K_CLOSE)
        return 0;
    op->cancelled = 1;
    switch (op->state) {
    case S_QUEUED:
        ul__oq_drop(e, op, -ECANCELED);
        break;
    case S_BACKLOG:
        if (op->bid >= 0) {
            ul__pool_put(e, (uint16_t)op->bid);
            op->bid = -1;
        }
        ul__stop(e, op, ECANCELED);  /* a send resumed after a short one: may have sent */
        break;
    case S_ACTIVE:
        e->be->cancel(e, op);
        break;
    default:
        break;
    }
    return 1;
}

EXPORT int ul_cancel(ul_engine *e, uint64_t target_ud)
{
    if (e->closed || target_ud == 0 || (target_ud & KUD_SPECIAL))
        return -ENOENT;
    if (foreign_thread(e))
        return -EEXIST;
    struct ul_op *op = ul__op_find(e, ul__slot(target_ud));
    if (!op || op->ud != target_ud || op->state == S_FREE)
        return -ENOENT;
    cancel_op(e, op);
    return 0;
}

static int cancel_fd(ul_engine *e, int fd)
{
    if (fd < 0 || fd >= e->nfds)
        return 0;
    int n = 0;
    /* the backend may cancel all of the fd's kernel requests in one go */
    if (e->be->cancel_fd && e->fds[fd].nops > 0 && e->be->cancel_fd(e, fd) >= 0) {
        for (int32_t s = e->fds[fd].ops_head; s >= 0; s = op_at(e, s)->fd_next) {
            struct ul_op *op = op_at(e, s);
            if (!op->cancelled && op->state == S_ACTIVE) {
                op->cancelled = 1;
                n++;
            }
        }
    }
    int32_t s = fd < e->nfds ? e->fds[fd].ops_head : -1;
    while (s >= 0) {
        struct ul_op *op = op_at(e, s);
        s = op->fd_next;  /* op may be finished (unlinked) below */
        n += cancel_op(e, op);
    }
    return n;
}

EXPORT int ul_cancel_fd(ul_engine *e, int fd)
{
    if (e->closed)
        return 0;
    if (foreign_thread(e))
        return -EEXIST;
    return cancel_fd(e, fd);
}

EXPORT int ul_close_fd(ul_engine *e, uint64_t ud, int fd, int flags)
{
    if (foreign_thread(e))
        return -EEXIST;
    if (fd >= 0 && fd < e->nfds && e->fds[fd].closing)
        return -EALREADY;
    BEGIN(K_CLOSE, fd);
    op->state = S_ACTIVE;
    struct ul_fd *f = &e->fds[fd];
    f->closing = 1;
    f->close_slot = (int32_t)ul__slot(ud);
    if (flags & UL_CLOSE_HOLD) {
        f->held = 1;      /* ul_close_release closes (decision 873) */
        e->in_flight--;   /* no kernel op: the loop does not poll for it */
    }
    if (flags & UL_CLOSE_RESET_IF_DATA) {
        f->reset_if_data = 1;
        e->nreset++;
        /* bytes a receive of fd brought before this call that still wait in
         * pend (a receive between shots whose cancel ended it at once, its
         * records made outside a run): the closing caller drops them too
         * (TLS seed 399, decision 498). The record's op is live, or it has
         * ended and its slot is free, still naming its kind and fd. */
        uint32_t from = pend_from(e, f); /* (decision 827) */
        e->st.pend_walked += e->npend - from;
        for (uint32_t i = from; i < e->npend && !f->reset; i++) {
            const ul_record *r = &e->pend[i];
            struct ul_op *o = r->res > 0 ? ul__op_find(e, ul__slot(r->user_data)) : NULL;
            if (o && (o->ud == r->user_data || (o->state == S_FREE && o->ud == 0)) &&
                o->fd == fd && (o->kind == K_RECV || o->kind == K_RECV_INTO))
                f->reset = 1;
        }
    }
    cancel_fd(e, fd);
    f = &e->fds[fd];
    if (f->closing && f->nops == 0 && !f->held)
        do_close(e, fd);
    return 0;
}

static void release_close(ul_engine *e, int fd)
{
    struct ul_fd *f = &e->fds[fd];
    f->held = 0;
    e->in_flight++; /* ul__finish counts the close op out */
    if (f->nops == 0)
        do_close(e, fd);
    else if (e->be->settle && !e->closed && !e->in_run)
        (void)e->be->settle(e); /* its ops' cancels end now: the close with them (875) */
}

EXPORT int ul_close_release(ul_engine *e, uint64_t close_ud, int fd)
{
    if (foreign_thread(e))
        return -EEXIST;
    if (e->closed || fd < 0 || fd >= e->nfds || !e->fds[fd].closing || !e->fds[fd].held)
        return -ENOENT;
    struct ul_fd *f = &e->fds[fd];
    struct ul_op *op = f->close_slot >= 0 ? op_at(e, f->close_slot) : NULL;
    if (op == NULL || op->ud != close_ud)
        return -ENOENT; /* another close of this number: not the caller's */
    release_close(e, fd);
    return 0;
}

EXPORT int ul_close_reset(ul_engine *e, uint64_t close_ud, int fd)
{
    if (foreign_thread(e))
        return -EEXIST;
    if (e->closed || fd < 0 || fd >= e->nfds || !e->fds[fd].closing)
        return -ENOENT;
    struct ul_fd *f = &e->fds[fd];
    struct ul_op *op = f->close_slot >= 0 ? op_at(e, f->close_slot) : NULL;
    if (op == NULL || op->ud != close_ud)
        return -ENOENT; /* another close of this number: not the caller's */
    f->reset = 1;
    return 0;
}

EXPORT int ul_op_addr(ul_engine *e, uint32_t slot, char *out, uint32_t cap)
{
    struct ul_op *op = ul__op_find(e, slot);
    if (!op)
        return -ENOENT;
    if (!op->ax)
        return 0;
    uint32_t n = UL_MIN(op->ax->addrlen, cap);
    memcpy(out, &op->ax->addr, n);
    return (int)n;
}

/* ---------------------------------------------------------------- run */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}


static int run_engine(ul_engine *e, int64_t timeout_ns, int once);

EXPORT int ul_run(ul_engine *e, int64_t timeout_ns) { return run_engine(e, timeout_ns, 0); }

EXPORT int ul_run_turn(ul_engine *e, int64_t timeout_ns) { return run_engine(e, timeout_ns, 1); }

/* once: ul_run_turn, which returns after one wait (decision 632) */
static int run_engine(ul_engine *e, int64_t timeout_ns, int once)
{
    if (e->closed)
        return -EBADF;
    /* A turn that has callbacks ready runs the engine without waiting, once
     * per turn: when there is no buffer to give back, no record waiting and
     * the backend has nothing to submit or reap, that run is a no-op, and
     * skipping its bookkeeping halves the cost of an idle turn. */
    if (timeout_ns == 0 && e->nused == 0 && e->npend == 0 && e->be->quiet != NULL &&
        e->be->quiet(e)) {
        e->nrec = 0;
        return 0;
    }
    for (uint32_t i = 0; i < e->nused; i++)
        e->be->recycle(e, e->used_bids[i]);
    e->nused = 0;
    e->nrec = 0;
    e->run_thread = &this_thread;
    __atomic_store_n(&e->in_run, 1, __ATOMIC_RELEASE);
    pend_move(e);
    /* A blocking run returns with records, on a wake, or at its timeout; a
     * kernel wakeup that produced no record (an edge with nothing to do, a
     * cancel's own CQE) just waits again for the time that is left. */
    int64_t deadline = timeout_ns > 0 ? now_ns() + timeout_ns : 0;
    int64_t t = e->npend ? 0 : timeout_ns;
    /* A wait longer than UL_TRIM_IDLE_NS with more pool buffers resident
     * than trim_at (after a burst) first waits that long; if nothing came,
     * the loop is idle and cold pool pages go back (decision 251): an idle
     * loop makes no other runs. One extra wakeup per burst, none in steady
     * state. */
    int trim = e->nresident > e->trim_at && (t < 0 || t > UL_TRIM_IDLE_NS);
    int r;
    for (;;) {
        r = e->be->run(e, trim ? UL_TRIM_IDLE_NS : t);
        if (e->nrec || e->npend || r < 0 || t == 0 || e->woken)
            break;
        if (trim) {
            trim = 0;
            pool_trim(e);
        }
        /* a signal that came as the wait ended (after the trim's timeout,
         * with an event that made no record) cut no wait short: back to the
         * caller, which runs its handler, before waiting again */
        if (once)
            break;
        if (timeout_ns > 0 && (t = deadline - now_ns()) <= 0)
            break;
    }
    e->woken = 0;
    e->handovers++;  /* what this run took goes to Python now (decision 924) */
    __atomic_store_n(&e->in_run, 0, __ATOMIC_RELEASE);
    e->st.records += e->nrec;
    if (e->nrec > 0 || r >= 0)
        return (int)e->nrec;
    return r;
}

EXPORT int ul_ready(ul_engine *e)
{
    if (e->closed)
        return 0;
    return e->npend > 0 || (e->be->ready != NULL && e->be->ready(e));
}

EXPORT int ul_recv_busy(ul_engine *e, int fd)
{
    return !e->closed && fd >= 0 && fd < e->nfds && e->fds[fd].rq_head >= 0;
}

EXPORT int ul_ended_with(ul_engine *e, int fd, int32_t res)
{
    if (e->closed || fd < 0 || fd >= e->nfds)
        return 0;
    /* a record made outside a run (ul_flush's or ul_park's reap, an op
     * that ended at submission) names a live op of fd or one that ended */
    const struct ul_fd *f = &e->fds[fd];
    for (uint32_t i = pend_from(e, f); i < e->npend; i++) {
        if (e->pend[i].res != res)
            continue;
        const struct ul_op *o = ul__op_find(e, ul__slot(e->pend[i].user_data));
        if (o && o->fd == fd && (o->ud == e->pend[i].user_data || (o->state == S_FREE && o->ud == 0)))
            return 1;
    }
    return e->be->ended_with != NULL && e->be->ended_with(e, fd, res);
}

/* The owner of fd is about to close(2) it (a pipe transport's
 * _call_connection_lost, decision 962): its ops' cancels that wait in the
 * SQ are submitted and what is done reaped (the backend's settle, 875: a
 * cancel ends its target within that enter, 847; the records wait in pend
 * for the next run). Returns the fd's ops still live: 0, none can act on fd
 * any more. Not inside a run, from another thread or on a parked ring: the
 * count as it is (the next run ends them). */
EXPORT int ul_fd_settle(ul_engine *e, int fd)
{
    if (e->closed || fd < 0 || fd >= e->nfds)
        return 0;
    if (foreign_thread(e))
        return -EEXIST;
    if (e->fds[fd].nops > 0 && e->be->settle && !e->in_run)
        (void)e->be->settle(e);
    return (int)e->fds[fd].nops;
}

EXPORT int ul_fd_closing(ul_engine *e, int fd)
{
    if (e->closed || fd < 0 || fd >= e->nfds)
        return 0;
    if (foreign_thread(e))
        return -EEXIST;
    if (e->fds[fd].nops > 0)
        return -EBUSY;
    if (e->be->fd_closing)
        e->be->fd_closing(e, fd);
    return 0;
}

EXPORT int ul_op_known(ul_engine *e, uint64_t ud)
{
    struct ul_op *op = ul__op_find(e, ul__slot(ud));
    if (op && op->ud == ud)
        return 1;  /* live */
    /* ended at once (a bad fd): the record waits in pend until the next run */
    for (uint32_t i = 0; i < e->npend; i++)
        if (e->pend[i].user_data == ud)
            return 1;
    return 0;
}

EXPORT int ul_flush(ul_engine *e)
{
    if (e->closed)
        return -EBADF;
    if (foreign_thread(e))
        return -EEXIST;
    return e->be->flush ? e->be->flush(e) : 0;
}

EXPORT int ul_park(ul_engine *e)
{
    if (e->closed)
        return -EBADF;
    if (e->in_run)
        return -EBUSY;
    return e->be->park ? e->be->park(e) : 0;
}

EXPORT ul_record *ul_records(ul_engine *e) { return e->rec; }
EXPORT uint8_t *ul_pool(ul_engine *e) { return e->pool; }

EXPORT void ul_get_info(ul_engine *e, ul_info *out) { *out = e->info; }

EXPORT void ul_get_stats(ul_engine *e, ul_stats *out)
{
    *out = e->st;
    out->wakeups = __atomic_load_n(&e->st.wakeups, __ATOMIC_RELAXED);
    out->in_flight = e->in_flight;
    out->bufs_free = e->info.buffer_ring ? e->cfg.buf_count - e->nused : e->nfree;
    out->pool_resident = e->nresident;
    out->fd_entries = (uint32_t)e->nfds;
}

/* ------------------------------------------------------- life cycle */

static void config_defaults(ul_config *c)
{
    if (!c->sq_entries)
        c->sq_entries = 1024;
    if (!c->cq_entries)
        c->cq_entries = 16384;
    if (!c->buf_count)
        c->buf_count = 1024;
    if (!c->buf_size)
        c->buf_size = 16384;
    if (!c->record_cap)
        c->record_cap = 4096;
}

/* Frees what the engine allocated, the pool included when unmap_pool. An op
 * still live here is a fork()ed child's copy (ul_forget; ul_free comes here
 * only when none is left): its iovec blocks are plain heap too. */
static void engine_free(ul_engine *e, int unmap_pool)
{
    for (uint32_t i = 0; i < e->nchunks; i++) {
        for (uint32_t j = 0; e->chunks[i] && j < CHUNK_SIZE; j++) {
            struct ul_op *op = &e->chunks[i][j];
            free(op->ax);
            if (op->ud && op->blk) {
                if (op->blk->batch)
                    ul__op_unbatch(op);
                ul__iov_block_free(op->blk);
            }
        }
        free(e->chunks[i]);
    }
    free(e->chunks);
    free(e->fds);
    free(e->rec);
    free(e->pend);
    free(e->free_bids);
    free(e->used_bids);
    free(e->resident);
    free(e->dfree);
    if (e->pool && unmap_pool)
        munmap(e->pool, e->pool_bytes);
    if (e->dpool && unmap_pool)
        munmap(e->dpool, e->dpool_bytes);
    free(e);
}

static void engine_free_memory(ul_engine *e)
{
    engine_free(e, 1);
}

EXPORT ul_engine *ul_new(int backend, const ul_config *cfg, char *err, int errlen)
{
    ul_engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, (size_t)errlen, "out of memory");
        return NULL;
    }
    if (cfg)
        e->cfg = *cfg;
    config_defaults(&e->cfg);
    e->wake_fd = -1;
    e->bl_head = e->bl_tail = -1;
    const char *g = getenv("URINGLOOP_GUARD");
    if (g && strcmp(g, "1") == 0)
        e->cfg.options |= UL_OPT_GUARD;
    if (e->cfg.options & UL_OPT_GUARD) {
        /* page-aligned buffers: the pool mapping is, and the size is rounded up */
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        size_t sz = (e->cfg.buf_size + page - 1) / page * page;
        if (sz <= (1U << 30))
            e->cfg.buf_size = (uint32_t)sz;
        e->guard = 1;
    }
    uint32_t bc = e->cfg.buf_count;
    if ((bc & (bc - 1)) || bc > 32768 || e->cfg.buf_size > (1U << 30) ||
        e->cfg.record_cap > (1U << 20)) {
        snprintf(err, (size_t)errlen,
                 "invalid config: buf_count must be a power of two <= 32768");
        free(e);
        return NULL;
    }
    e->pool_bytes = (size_t)bc * e->cfg.buf_size;
    /* guard mode: every buffer starts free, so inaccessible */
    e->pool = mmap(NULL, e->pool_bytes, e->guard ? PROT_NONE : PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    e->rec = calloc(e->cfg.record_cap, sizeof *e->rec);
    e->free_bids = calloc(bc, sizeof *e->free_bids);
    e->used_bids = calloc(bc + UL_DGRAM_BUFS, sizeof *e->used_bids);
    e->resident = calloc(bc, 1);
    e->trim_at = 2 * UL_POOL_KEEP;
    /* the datagram pool is address space until datagrams arrive: a small
     * datagram touches one page of its buffer */
    e->dpool_bytes = (size_t)UL_DGRAM_BUFS * UL_DGRAM_BUF_SIZE;
    e->dpool = mmap(NULL, e->dpool_bytes, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    e->dfree = calloc(UL_DGRAM_BUFS, sizeof *e->dfree);
    e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->pool == MAP_FAILED || e->dpool == MAP_FAILED || !e->rec || !e->free_bids ||
        !e->used_bids || !e->resident || !e->dfree || e->wake_fd < 0) {
        snprintf(err, (size_t)errlen, "engine allocation failed: %s", strerror(errno));
        if (e->pool == MAP_FAILED)
            e->pool = NULL;
        if (e->dpool == MAP_FAILED)
            e->dpool = NULL;
        if (e->wake_fd >= 0)
            close(e->wake_fd);
        engine_free_memory(e);
        return NULL;
    }
    madvise(e->pool, e->pool_bytes, MADV_DONTFORK);
    madvise(e->dpool, e->dpool_bytes, MADV_DONTFORK);
    for (uint32_t i = 0; i < bc; i++)
        e->free_bids[e->nfree++] = (uint16_t)(bc - 1 - i);
    for (uint32_t i = 0; i < UL_DGRAM_BUFS; i++)
        e->dfree[e->ndfree++] = (uint16_t)(bc + UL_DGRAM_BUFS - 1 - i);

    int rc = -1;
    char why[256] = "";
    if (backend == UL_BACKEND_URING || backend == UL_BACKEND_AUTO) {
        rc = ul__uring_init(e, why, sizeof why);
        if (rc < 0 && backend == UL_BACKEND_URING) {
            snprintf(err, (size_t)errlen, "io_uring cannot run here: %.220s", why);
            close(e->wake_fd);
            engine_free_memory(e);
            return NULL;
        }
    }
    if (rc < 0) {
        char eerr[256];
        if (ul__epoll_init(e, eerr, sizeof eerr) < 0) {
            snprintf(err, (size_t)errlen, "epoll backend failed: %.200s", eerr);
            close(e->wake_fd);
            engine_free_memory(e);
            return NULL;
        }
        if (backend == UL_BACKEND_AUTO)
            snprintf(e->info.reason, sizeof e->info.reason, "io_uring unavailable: %.220s", why);
        else
            snprintf(e->info.reason, sizeof e->info.reason, "epoll requested");
    }
    if (ul__fd_own(e, e->wake_fd) < 0) {
        /* (the backend marked its own fds in its init) */
        snprintf(err, (size_t)errlen, "out of memory");
        e->be->destroy(e);
        close(e->wake_fd);
        engine_free_memory(e);
        return NULL;
    }
    e->info.buf_count = bc;
    e->info.buf_size = e->cfg.buf_size;
    e->info.guard = e->guard;
    e->info.op_bytes = sizeof(struct ul_op);
    e->info.fd_bytes = (uint32_t)sizeof(struct ul_fd) + e->be_fd_bytes;
    return e;
}

EXPORT int ul_free(ul_engine *e, int64_t timeout_ns)
{
    /* closes still held (their transport's _call_connection_lost never
     * ran: the loop closed first) close now, or as their ops end below */
    for (int fd = 0; !e->closed && fd < e->nfds; fd++)
        if (e->fds[fd].closing && e->fds[fd].held)
            release_close(e, fd);
    /* cancel everything still live, then reap until nothing is in flight */
    for (uint32_t c = 0; c < e->nchunks; c++) {
        if (!e->chunks[c])
            continue;
        for (uint32_t i = 0; i < CHUNK_SIZE; i++) {
            struct ul_op *op = &e->chunks[c][i];
            if (op->ud && op->state != S_FREE)
                cancel_op(e, op);
        }
    }
    int64_t deadline = now_ns() + timeout_ns;
    while (e->in_flight > 0) {
        int r = ul_run(e, 10 * 1000000LL);
        if (r < 0 && r != -EINTR && r != -ETIME)
            break;
        if (now_ns() > deadline)
            break;
    }
    int left = (int)e->in_flight;
    e->closed = 1;
    e->be->destroy(e);
    close(e->wake_fd);
    if (left == 0)
        engine_free_memory(e);
    /* else: the kernel may still own buffers in the pool or in ops; leak them */
    return left;
}

EXPORT void ul_forget(ul_engine *e)
{
    /* The child's copy: its ring, buffer ring and pool are not mapped here
     * (MADV_DONTFORK; unmapping their addresses could hit a new mapping), its
     * kernel requests and epoll registrations are the parent's (an
     * EPOLL_CTL_DEL here would change the parent's set, which the child
     * shares). So: close our copies of the engine's own fds, free the heap. */
    if (e->be && e->be->forget)
        e->be->forget(e);
    if (e->wake_fd >= 0)
        close(e->wake_fd);
    engine_free(e, 0);
}
