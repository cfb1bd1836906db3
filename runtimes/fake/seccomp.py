"""The seccomp filter of every sandbox, as the `linux.seccomp` section of an OCI config.

It has the effect of Docker's default profile for a container with Docker's default
capabilities: every system call a normal program makes is allowed, and what only a
privileged one needs fails with EPERM: mounting and namespaces (`mount`, `setns`, `unshare`,
`clone` with namespace flags), kernel modules, BPF and perf events, keyrings, clock and host
name changes, reboot, swap, accounting, `open_by_handle_at`, NUMA policy, userfaultfd.
`clone3` fails with ENOSYS, so that C libraries fall back to `clone`, whose flags the filter
can see. One deliberate difference: `io_uring` is refused too, as newer Docker releases do.
runc compiles the profile with libseccomp; names this kernel's libseccomp does not know are
skipped by runc.
"""

from __future__ import annotations

import platform
from typing import Any

EPERM = 1
ENOSYS = 38
AF_VSOCK = 40
# clone(2) flags that make a namespace: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
# NEWNET. A clone whose flags hold none of them is an ordinary fork or thread.
CLONE_NAMESPACE_FLAGS = 0x7E020000
# personality(2) values a program may set: the default, UNAME26, READ_IMPLIES_EXEC… (Linux
# personalities that change nothing a sandbox relies on), and the query 0xffffffff.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

FILES = """
access chdir chmod chown chown32 close close_range copy_file_range creat dup dup2 dup3
faccessat faccessat2 fadvise64 fadvise64_64 fallocate fchdir fchmod fchmodat fchown fchown32
fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fremovexattr fsetxattr fstat
fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futimesat getcwd getdents
getdents64 getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch lchown
lchown32 lgetxattr link linkat listxattr llistxattr _llseek lremovexattr lseek lsetxattr
lstat lstat64 mkdir mkdirat mknod mknodat name_to_handle_at newfstatat open openat openat2
pread64 preadv preadv2 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv
removexattr rename renameat renameat2 rmdir setxattr splice stat stat64 statfs statfs64 statx
symlink symlinkat sync sync_file_range syncfs tee truncate truncate64 umask unlink unlinkat
utime utimensat utimensat_time64 utimes vmsplice write writev fanotify_mark sendfile
sendfile64
"""
MEMORY = """
brk madvise membarrier memfd_create memfd_secret mincore mlock mlock2 mlockall mmap mmap2
mprotect mremap msync munlock munlockall munmap pkey_alloc pkey_free pkey_mprotect
remap_file_pages
"""
PROCESSES = """
capget capset execve execveat exit exit_group fork getcpu getegid getegid32 geteuid
geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpgid getpgrp getpid getppid
getpriority getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage
getsid get_thread_area gettid getuid getuid32 ioprio_get ioprio_set kill pidfd_open
pidfd_send_signal prctl prlimit64 process_mrelease restart_syscall rseq rt_sigaction
rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp setfsgid setfsgid32 setfsuid setfsuid32 setgid
setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid
setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid
set_thread_area set_tid_address setuid setuid32 sigaltstack signalfd signalfd4 sigprocmask
sigreturn tgkill tkill ugetrlimit uname vfork wait4 waitid waitpid sysinfo times
landlock_add_rule landlock_create_ruleset landlock_restrict_self chroot ptrace
process_vm_readv process_vm_writev
"""
TIME = """
adjtimex alarm clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
clock_gettime64 clock_nanosleep clock_nanosleep_time64 gettimeofday nanosleep pause time
timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64
"""
WAITING = """
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 futex futex_time64 futex_waitv _newselect pipe pipe2 poll
ppoll ppoll_time64 pselect6 pselect6_time64 select io_cancel io_destroy io_getevents
io_pgetevents io_pgetevents_time64 io_setup io_submit
"""
NETWORK_AND_IPC = """
accept accept4 bind connect getpeername getsockname getsockopt listen recv recvfrom recvmmsg
recvmmsg_time64 recvmsg send sendmmsg sendmsg sendto setsockopt shutdown socketcall
socketpair ipc mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64
mq_timedsend mq_timedsend_time64 mq_unlink msgctl msgget msgrcv msgsnd semctl semget semop
semtimedop semtimedop_time64 shmat shmctl shmdt shmget ioctl getrandom
"""
PER_ARCHITECTURE = {
    "x86_64": "arch_prctl modify_ldt",
    "aarch64": "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush "
               "set_tls",
}
ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def allowed_syscalls(machine: str | None = None) -> list[str]:
    machine = machine or platform.machine()
    names = " ".join((FILES, MEMORY, PROCESSES, TIME, WAITING, NETWORK_AND_IPC,
                      PER_ARCHITECTURE.get(machine, "")))
    return sorted(set(names.split()))


def profile(machine: str | None = None) -> dict[str, Any]:
    """The OCI `linux.seccomp` object."""
    machine = machine or platform.machine()
    clone_flags_argument = 1 if machine.startswith("s390") else 0
    rules: list[dict[str, Any]] = [
        {"names": allowed_syscalls(machine), "action": "SCMP_ACT_ALLOW"},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}]},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": clone_flags_argument, "value": CLONE_NAMESPACE_FLAGS,
                   "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    for value in PERSONALITIES:
        rules.append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]})
    section: dict[str, Any] = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": EPERM,
                               "syscalls": rules}
    if machine in ARCHITECTURES:
        section["architectures"] = ARCHITECTURES[machine]
    return section
