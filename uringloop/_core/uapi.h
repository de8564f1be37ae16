/*
 * uapi.h -- the io_uring kernel ABI that uringloop uses, defined here.
 *
 * We do not include <linux/io_uring.h>: the build machine's kernel headers may
 * be older than the kernel we run on (Debian 12 ships 6.1 headers), and we
 * link no liburing. Values are the kernel's UAPI (include/uapi/linux/io_uring.h);
 * names carry a UL_ prefix so they never clash with system headers.
 * Little-endian layout is assumed for poll32_events (x86-64, arm64).
 */
#ifndef UL_UAPI_H
#define UL_UAPI_H
#include <stdint.h>

#define UL_NR_io_uring_setup 425
#define UL_NR_io_uring_enter 426
#define UL_NR_io_uring_register 427

/* setup flags */
#define UL_SETUP_CQSIZE (1U << 3)
#define UL_SETUP_CLAMP (1U << 4)
#define UL_SETUP_R_DISABLED (1U << 6)
#define UL_SETUP_SUBMIT_ALL (1U << 7)
#define UL_SETUP_COOP_TASKRUN (1U << 8)
#define UL_SETUP_TASKRUN_FLAG (1U << 9)
#define UL_SETUP_SINGLE_ISSUER (1U << 12)
#define UL_SETUP_DEFER_TASKRUN (1U << 13)
#define UL_SETUP_NO_SQARRAY (1U << 16)

/* features */
#define UL_FEAT_SINGLE_MMAP (1U << 0)
#define UL_FEAT_NODROP (1U << 1)
#define UL_FEAT_SUBMIT_STABLE (1U << 2)
#define UL_FEAT_FAST_POLL (1U << 5)
#define UL_FEAT_EXT_ARG (1U << 8)
#define UL_FEAT_CQE_SKIP (1U << 11)
#define UL_FEAT_RECVSEND_BUNDLE (1U << 14)

/* opcodes */
enum {
    UL_OP_NOP = 0, UL_OP_POLL_ADD = 6, UL_OP_SENDMSG = 9, UL_OP_RECVMSG = 10,
    UL_OP_ACCEPT = 13, UL_OP_ASYNC_CANCEL = 14, UL_OP_CONNECT = 16,
    UL_OP_READ = 22, UL_OP_WRITE = 23, UL_OP_SEND = 26, UL_OP_RECV = 27,
    UL_OP_SHUTDOWN = 34, UL_OP_SOCKET = 45, UL_OP_URING_CMD = 46, UL_OP_SEND_ZC = 47, UL_OP_READ_MULTISHOT = 49,
};

/* sqe flags */
#define UL_SQE_BUFFER_SELECT (1U << 5)
#define UL_SQE_CQE_SKIP_SUCCESS (1U << 6)

/* cqe flags */
#define UL_CQE_F_BUFFER (1U << 0)
#define UL_CQE_F_MORE (1U << 1)
#define UL_CQE_BUFFER_SHIFT 16

/* sq ring flags */
#define UL_SQ_NEED_WAKEUP (1U << 0)
#define UL_SQ_CQ_OVERFLOW (1U << 1)
#define UL_SQ_TASKRUN (1U << 2)

/* enter flags */
#define UL_ENTER_GETEVENTS (1U << 0)
#define UL_ENTER_EXT_ARG (1U << 3)
#define UL_ENTER_REGISTERED_RING (1U << 4)

/* mmap offsets */
#define UL_OFF_SQ_RING 0ULL
#define UL_OFF_CQ_RING 0x8000000ULL
#define UL_OFF_SQES 0x10000000ULL

/* register opcodes */
#define UL_REGISTER_PROBE 8
#define UL_REGISTER_ENABLE_RINGS 12
#define UL_REGISTER_RING_FDS 20
#define UL_UNREGISTER_RING_FDS 21
#define UL_REGISTER_PBUF_RING 22
#define UL_UNREGISTER_PBUF_RING 23

/* op-specific flags */
#define UL_POLL_ADD_MULTI (1U << 0)        /* sqe->len of POLL_ADD */
#define UL_RECVSEND_POLL_FIRST (1U << 0)   /* sqe->ioprio of RECV: wait before trying */
#define UL_RECV_MULTISHOT (1U << 1)        /* sqe->ioprio of RECV */
#define UL_RECVSEND_BUNDLE (1U << 4)       /* sqe->ioprio of RECV: several ring buffers */
#define UL_ACCEPT_MULTISHOT (1U << 0)      /* sqe->ioprio of ACCEPT */
#define UL_ASYNC_CANCEL_ALL (1U << 0)
#define UL_ASYNC_CANCEL_FD (1U << 1)
#define UL_PROBE_OP_SUPPORTED (1U << 0)

struct ul_sqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
    uint64_t user_addr;
};

struct ul_cqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
    uint64_t user_addr;
};

struct ul_uring_params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features;
    uint32_t wq_fd, resv[3];
    struct ul_sqring_offsets sq_off;
    struct ul_cqring_offsets cq_off;
};

struct ul_sqe {
    uint8_t opcode;
    uint8_t flags;
    uint16_t ioprio;
    int32_t fd;
    uint64_t off;          /* off / addr2 */
    uint64_t addr;
    uint32_t len;
    uint32_t op_flags;     /* msg_flags, poll32_events, accept_flags, cancel_flags ... */
    uint64_t user_data;
    uint16_t buf_group;
    uint16_t personality;
    uint32_t file_index;
    uint64_t addr3;
    uint64_t pad2;
};

struct ul_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};

struct ul_getevents_arg {
    uint64_t sigmask;
    uint32_t sigmask_sz;
    uint32_t min_wait_usec;
    uint64_t ts;
};

struct ul_kernel_timespec {
    int64_t tv_sec;
    long long tv_nsec;
};

struct ul_probe_op {
    uint8_t op, resv;
    uint16_t flags;
    uint32_t resv2;
};

struct ul_uring_probe {
    uint8_t last_op, ops_len;
    uint16_t resv;
    uint32_t resv2[3];
    struct ul_probe_op ops[256];
};

struct ul_buf {
    uint64_t addr;
    uint32_t len;
    uint16_t bid;
    uint16_t resv;         /* entry 0's resv is the ring tail */
};

struct ul_buf_reg {
    uint64_t ring_addr;
    uint32_t ring_entries;
    uint16_t bgid;
    uint16_t flags;
    uint64_t resv[3];
};

struct ul_rsrc_update {
    uint32_t offset, resv;
    uint64_t data;
};

_Static_assert(sizeof(struct ul_sqe) == 64, "sqe layout");
_Static_assert(sizeof(struct ul_cqe) == 16, "cqe layout");
_Static_assert(sizeof(struct ul_uring_params) == 120, "params layout");

#endif
