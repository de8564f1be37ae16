/*
 * deny_uring -- run a command where io_uring_setup(2) is refused.
 *
 *   deny_uring [--errno=EPERM|ENOSYS] [--only-enter] CMD [ARGS...]
 *
 * Sets PR_SET_NO_NEW_PRIVS, installs a seccomp BPF filter that makes
 * io_uring_setup fail with EPERM (default) or ENOSYS and allows every other
 * system call, then execvp()s CMD. With --only-enter, io_uring_setup is
 * allowed and io_uring_enter is refused instead (some sandboxes filter the
 * two separately). The filter is inherited by every child, so
 * the whole process tree sees a kernel that refuses io_uring, as a container
 * runtime's default seccomp profile would. Used by tests/test_refused_uring.py
 * to check the engine's fallback to epoll.
 *
 * Only x86_64 (native and x32 numbering) and aarch64 are filtered; on any
 * other architecture the filter allows everything (the syscall number could
 * mean something else there).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif

#ifndef AUDIT_ARCH_AARCH64
#define AUDIT_ARCH_AARCH64 (EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE)
#endif

/* x86_64's x32 ABI numbers its syscalls with this bit set. */
#define X32_SYSCALL_BIT 0x40000000u

/* io_uring_setup is 425 and io_uring_enter 426 on x86_64 and aarch64 alike
 * (the unified table). */
#define IO_URING_SETUP_NR 425u
#define IO_URING_ENTER_NR 426u

static void usage(void)
{
    fprintf(stderr,
            "usage: deny_uring [--errno=EPERM|ENOSYS] [--only-enter] CMD [ARGS...]\n"
            "  runs CMD with io_uring_setup(2) failing (default errno EPERM),\n"
            "  or with --only-enter io_uring_enter(2) failing instead\n");
}

static int install_filter(unsigned int err, unsigned int nr)
{
    struct sock_filter prog[] = {
        /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 3), /* -> 2 : 5 */
        /* 2 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        /* 3 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, ~X32_SYSCALL_BIT),
        /* 4 */ BPF_JUMP(BPF_JMP | BPF_JA, 2, 0, 0), /* -> 7 */
        /* 5 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_AARCH64, 0, 3), /* -> 6 : 9 */
        /* 6 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        /* 7 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1), /* -> 8 : 9 */
        /* 8 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
        /* 9 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog fprog = {
        .len = (unsigned short)(sizeof(prog) / sizeof(prog[0])),
        .filter = prog,
    };

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        perror("deny_uring: prctl(PR_SET_NO_NEW_PRIVS)");
        return -1;
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog, 0, 0) != 0) {
        perror("deny_uring: prctl(PR_SET_SECCOMP)");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    unsigned int err = EPERM;
    unsigned int nr = IO_URING_SETUP_NR;
    int i = 1;

    while (i < argc && strncmp(argv[i], "--", 2) == 0) {
        const char *opt = argv[i];
        if (strcmp(opt, "--") == 0) {
            i++;
            break;
        } else if (strcmp(opt, "--errno=EPERM") == 0) {
            err = EPERM;
        } else if (strcmp(opt, "--errno=ENOSYS") == 0) {
            err = ENOSYS;
        } else if (strcmp(opt, "--only-enter") == 0) {
            nr = IO_URING_ENTER_NR;
        } else if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
            usage();
            return 0;
        } else {
            fprintf(stderr, "deny_uring: unknown option %s\n", opt);
            usage();
            return 2;
        }
        i++;
    }
    if (i >= argc) {
        usage();
        return 2;
    }
    if (install_filter(err, nr) != 0)
        return 1;
    execvp(argv[i], &argv[i]);
    fprintf(stderr, "deny_uring: cannot run %s: %s\n", argv[i], strerror(errno));
    return 127;
}
