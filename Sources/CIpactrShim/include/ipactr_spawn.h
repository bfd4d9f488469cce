/*
 * ipactr_spawn.h — the container's child side, in C.
 *
 * Why C: the runtime is a Swift process that may have several threads (the
 * Swift runtime, Dispatch). After clone() only one thread exists in the child
 * and any lock another thread held stays locked forever, so the child must not
 * allocate, take locks or enter the Swift runtime. Swift therefore prepares a
 * flat, fully allocated `ipactr_plan` (crun's design rather than runc's
 * re-exec: no second start of the Swift binary, which saves ~4-7 ms per
 * container), and the code here does only system calls until execve().
 *
 * Handshake (runc/nspawn style):
 *   parent: clone3(new namespaces, CLONE_INTO_CGROUP)      child: read(sync) ...
 *   parent: writes uid_map/gid_map, rlimits, cgroup owner, then "go"
 *   child : joins/unshares namespaces, mounts, pivot_root, hostname, user,
 *           caps, then reports stage 0 ("ready") on the report pipe
 *           (createContainer hooks run just before pivot_root)
 *   child : blocks opening the exec FIFO for writing (`start` opens it for
 *           reading), runs the startContainer hooks, writes its report into
 *           the FIFO, then loads seccomp and execve()s process.args.
 * Every failure is reported as (stage text, errno) on the close-on-exec report
 * pipe, so the caller sees "mount proc on /proc: Operation not permitted".
 */
#ifndef IPACTR_SPAWN_H
#define IPACTR_SPAWN_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

/* Swift's Glibc module hides the _GNU_SOURCE names; the kernel ABI values. */
#define IPACTR_CLONE_NEWTIME   0x00000080
#define IPACTR_CLONE_NEWNS     0x00020000
#define IPACTR_CLONE_NEWCGROUP 0x02000000
#define IPACTR_CLONE_NEWUTS    0x04000000
#define IPACTR_CLONE_NEWIPC    0x08000000
#define IPACTR_CLONE_NEWUSER   0x10000000
#define IPACTR_CLONE_NEWPID    0x20000000
#define IPACTR_CLONE_NEWNET    0x40000000
#define IPACTR_O_PATH          010000000

/* makedev() is a macro Swift cannot call. */
static inline dev_t ipactr_makedev(unsigned int major, unsigned int minor) {
    return ((dev_t)(major & 0xfffff000u) << 32) | ((dev_t)(major & 0xfffu) << 8) |
           ((dev_t)(minor & 0xffffff00u) << 12) | (dev_t)(minor & 0xffu);
}

enum ipactr_mount_kind {
    IPACTR_MOUNT_FS = 0,      /* mount(source, target, fstype, flags, data) */
    IPACTR_MOUNT_BIND = 1,    /* bind (recursive when `recursive`) */
    IPACTR_MOUNT_CGROUP = 2,  /* cgroup2; bind of the container's cgroup if the kernel refuses */
    IPACTR_MOUNT_SYSFS = 3,   /* sysfs; rbind of /sys if the kernel refuses (userns without netns) */
};

/** One entry of config.json's `mounts`, already parsed into flags. */
struct ipactr_mount {
    int kind;                  /* enum ipactr_mount_kind */
    const char *source;        /* host path for binds, fs source otherwise */
    const char *destination;   /* absolute path inside the rootfs */
    const char *fstype;
    unsigned long flags;       /* MS_* flags without propagation */
    unsigned long propagation; /* MS_SHARED/MS_SLAVE/... | MS_REC, or 0 */
    const char *data;          /* comma-separated fs options, or NULL */
    int tree_fd;               /* > 2, binds only: a detached copy of the source (open_tree
                                  OPEN_TREE_CLONE in the runtime) attached with move_mount:
                                  for sources the container's user cannot reach by path
                                  (an O_PATH fd would not do: its mount is in the runtime's
                                  mount namespace, and binding it fails with EINVAL) */
    int recursive;             /* rbind */
    int source_is_dir;         /* what to create at the destination if missing */
    int tmpcopyup;             /* FS mounts (tmpfs): copy what the mount hides into it */
};

/** A device node to create (or bind from the host inside a user namespace). */
struct ipactr_device {
    const char *path;          /* absolute path inside the rootfs */
    mode_t mode;               /* S_IFCHR/S_IFBLK | permission bits */
    dev_t dev;
    uid_t uid;
    gid_t gid;
};

/** A createContainer or startContainer hook: run by the init itself (inside
 *  the container's namespaces), with a state JSON file as its stdin. */
struct ipactr_hook {
    const char *path;
    const char *const *argv;   /* NULL-terminated; at least { path } */
    const char *const *envp;   /* NULL-terminated, may be empty */
    int timeout;               /* seconds; <= 0: none */
};

/** Everything the child does, flat and preallocated by Swift. */
struct ipactr_plan {
    /* namespaces */
    int clone_flags;           /* CLONE_NEW* created by clone3 (never CLONE_NEWCGROUP, see cgroupns) */
    int new_cgroupns;          /* unshare(CLONE_NEWCGROUP) once inside the container's cgroup */
    const int *join_fds;       /* namespaces joined by path: fds opened by the parent */
    int n_join;
    int cgroup_fd;             /* cgroup2 directory for CLONE_INTO_CGROUP, or -1 */

    /* filesystem */
    int new_mountns;
    const char *rootfs;        /* absolute host path */
    unsigned long rootfs_propagation; /* for "/" before anything is mounted */
    int readonly_root;
    int no_pivot;
    const struct ipactr_mount *mounts;
    int n_mounts;
    const struct ipactr_device *devices;
    int n_devices;
    int bind_devices;          /* in a user namespace mknod is refused: bind the host's nodes */
    int dev_symlinks;          /* /dev/fd, /dev/std{in,out,err}, /dev/ptmx, /dev/core */
    const char *const *masked_paths;
    int n_masked;
    const char *const *readonly_paths;
    int n_readonly;
    const char *const *sysctl_keys;   /* relative to /proc/sys, dots already turned to '/' */
    const char *const *sysctl_values;
    int n_sysctl;
    const char *hostname;      /* NULL: leave alone */
    const char *domainname;

    /* process */
    const char *const *argv;
    const char *const *envp;
    const char *path_env;      /* PATH used to find argv[0], or NULL */
    const char *cwd;
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    int n_groups;
    int umask_value;           /* -1: leave alone */
    int no_new_privs;
    int set_caps;
    uint64_t cap_bounding, cap_effective, cap_permitted, cap_inheritable, cap_ambient;
    const void *seccomp_filter; /* struct sock_filter[], from seccomp_export_bpf in the parent */
    size_t seccomp_len;         /* number of sock_filter entries */
    int preserve_fds;           /* fds 3 .. 3+n-1 stay open across execve */
    int console_socket;         /* connected --console-socket: the init opens a pty in its own
                                   devpts, sends the master here (SCM_RIGHTS), and makes the
                                   replica its stdio and controlling tty; -1: no terminal */
    int console_mount;          /* also bind the replica on /dev/console (create, not exec) */
    unsigned short console_rows, console_cols;

    /* hooks run by the init (runtime-spec "POSIX-platform Hooks") */
    const struct ipactr_hook *create_hooks; /* createContainer: after the mounts and the
                                               createRuntime pause, before pivot_root, cwd = rootfs */
    int n_create_hooks;
    int create_state_fd;       /* memfd with the state JSON ("creating"), written by the parent
                                  before "go" (it knows the pid only after clone3) */
    const struct ipactr_hook *start_hooks;  /* startContainer: after `start` opened the exec
                                               FIFO (or at once for `run`), just before execve,
                                               with the process's user and capabilities, as runc */
    int n_start_hooks;
    int start_state_fd;        /* memfd with the state JSON ("created") */

    /* handshake */
    int sync_fd;               /* child reads the parent's "go" byte here */
    int hook_pause;            /* stop before pivot_root (report ready=2) until a second "go":
                                  prestart/createRuntime hooks run then, in the runtime's namespace */
    int report_fd;             /* child writes struct ipactr_report here (CLOEXEC) */
    int fifo_fd;               /* O_PATH fd of the exec FIFO, or -1 to exec at once (`run`) */
    int source_fd;             /* > 2: a mount's tree_fd, kept open in the child until its
                                  mounts are done (the notify socket's directory, under a
                                  --root that a user-namespaced root cannot search) */

    /* Joined user / pid namespaces (linux.namespaces[].path), > 2 when set.
     * Both must be in place before the init is cloned: the new namespaces
     * must be owned by the joined user namespace, and setns(CLONE_NEWPID)
     * only affects children. A single-threaded intermediate (forked from the
     * runtime) joins them, moves itself into the container's cgroup, and
     * clones the init with CLONE_PARENT so the init is still our child. */
    int join_userns_fd;
    int join_pidns_fd;
};

/** What the child writes on the report pipe: ready=1 "ready", ready=2 "hooks may run", ready=0 failed
 *  (err 0: `stage` is the whole message, e.g. a hook's exit status). The init also writes one into the
 *  exec FIFO once `start` opened it: ready=1 after the startContainer hooks, or their failure. */
struct ipactr_report {
    int32_t ready;
    int32_t err;
    char stage[480];
};

/**
 * clone3()s the container's init and runs `plan` in it. Returns the child's
 * pid (and its pidfd in *pidfd) in the parent, or -1 with errno set. The
 * child never returns.
 */
pid_t ipactr_spawn(const struct ipactr_plan *plan, int *pidfd);

/**
 * ipactr_spawn(), or the joined-namespace path when the plan joins a user
 * or pid namespace. On failure *step names the step that failed
 * (ipactr_spawn_join_step(*step)), errno its error.
 */
pid_t ipactr_spawn_ex(const struct ipactr_plan *plan, int *pidfd, int *step);
const char *ipactr_spawn_join_step(int step);

/* Parent-side helpers: syscall() is variadic and glibc hides pipe2/prlimit
 * behind _GNU_SOURCE, so Swift cannot reach them directly. */
int ipactr_pidfd_open(pid_t pid);
int ipactr_pidfd_send_signal(int pidfd, int sig);
int ipactr_pipe_cloexec(int fds[2]);
int ipactr_prlimit(pid_t pid, int resource, uint64_t soft, uint64_t hard);
/* setns() is hidden behind _GNU_SOURCE. The parent uses it for CLONE_NEWPID
 * only: that changes the pid namespace of the calling thread's future
 * children, so `exec`'s process is born inside the container's pid namespace
 * (and stays our child, so we can wait for it). */
int ipactr_setns(int fd, int nstype);
/* An anonymous file for seccomp_export_bpf() to write into. */
int ipactr_memfd(void);

#endif
