/*
 * spawn.c — the container's init between clone3() and execve().
 * See include/ipactr_spawn.h for why this is C and for the handshake.
 * Only system calls and stack buffers here: no malloc, no stdio, no locks.
 */
#define _GNU_SOURCE
#include "ipactr_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <sched.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/sysmacros.h>
#include <grp.h>
#include <termios.h>
#include <unistd.h>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* ---- tiny string helpers (the child cannot use snprintf/malloc) ---- */

static char stage_buf[480];

static void stage_set(const char *a, const char *b, const char *c) {
    size_t n = 0;
    const char *parts[3] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        const char *s = parts[i];
        if (!s) continue;
        while (*s && n + 1 < sizeof stage_buf) stage_buf[n++] = *s++;
    }
    stage_buf[n] = 0;
}

static void fmt_int(char *out, long v) {
    char tmp[24];
    int n = 0, neg = v < 0;
    unsigned long u = neg ? (unsigned long)(-v) : (unsigned long)v;
    do { tmp[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    int j = 0;
    if (neg) out[j++] = '-';
    while (n) out[j++] = tmp[--n];
    out[j] = 0;
}

/* ---- reporting ---- */

static int report_fd = -1;

static void send_report(int ready, int err, const char *stage) {
    struct ipactr_report r;
    memset(&r, 0, sizeof r);
    r.ready = ready;
    r.err = err;
    if (stage) {
        size_t n = strlen(stage);
        if (n >= sizeof r.stage) n = sizeof r.stage - 1;
        memcpy(r.stage, stage, n);
    }
    if (report_fd >= 0) {
        ssize_t w;
        do { w = write(report_fd, &r, sizeof r); } while (w < 0 && errno == EINTR);
    }
}

/* Reports the current stage with errno and exits: the parent turns it into
 * "stage: strerror(errno)". */
__attribute__((noreturn)) static void die(void) {
    int e = errno ? errno : EIO;
    send_report(0, e, stage_buf);
    _exit(1);
}

#define TRY(expr, a, b, c) do { stage_set(a, b, c); if ((expr) < 0) die(); } while (0)

/* ---- path resolution inside the rootfs ---- */

/* openat2(RESOLVE_IN_ROOT) makes every symlink and ".." resolve as if `root`
 * were "/", so a mount destination can never land outside the rootfs even if
 * the image (or a racing process) plants a symlink. */
static int open_in_root(int root, const char *path, int flags) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (unsigned long long)(flags | O_CLOEXEC);
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    while (*path == '/') path++;
    if (!*path) path = ".";
    int fd;
    do { fd = (int)syscall(SYS_openat2, root, path, &how, sizeof how); } while (fd < 0 && errno == EAGAIN);
    return fd;
}

/* mkdir -p of `path` inside root; the last component becomes a directory or
 * an empty file. Returns an O_PATH fd of the result. */
static int ensure_in_root(int root, const char *path, int last_is_dir) {
    char prefix[4096];
    size_t len = strlen(path);
    if (len >= sizeof prefix) { errno = ENAMETOOLONG; return -1; }
    int fd = open_in_root(root, path, O_PATH);
    if (fd >= 0 || errno != ENOENT) return fd;
    int parent = open_in_root(root, "/", O_PATH | O_DIRECTORY);
    if (parent < 0) return -1;
    size_t i = 0;
    while (i < len) {
        while (i < len && path[i] == '/') i++;
        if (i >= len) break;
        size_t start = i;
        while (i < len && path[i] != '/') i++;
        memcpy(prefix, path, i);
        prefix[i] = 0;
        int last = i >= len || path[i + strspn(path + i, "/")] == 0;
        int next = open_in_root(root, prefix, O_PATH);
        if (next < 0 && errno == ENOENT) {
            char name[256];
            size_t nl = i - start;
            if (nl >= sizeof name) { close(parent); errno = ENAMETOOLONG; return -1; }
            memcpy(name, path + start, nl);
            name[nl] = 0;
            if (last && !last_is_dir) {
                int f = openat(parent, name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644);
                if (f < 0 && errno != EEXIST) { close(parent); return -1; }
                if (f >= 0) close(f);
            } else if (mkdirat(parent, name, 0755) < 0 && errno != EEXIST) {
                close(parent);
                return -1;
            }
            next = open_in_root(root, prefix, O_PATH);
        }
        close(parent);
        if (next < 0) return -1;
        parent = next;
    }
    return parent;
}

static void fd_path(char *out, int fd) {
    memcpy(out, "/proc/self/fd/", 14);
    fmt_int(out + 14, fd);
}

/* Flags a bind remount must keep: inside a user namespace the kernel locks
 * nosuid/nodev/noexec/atime flags inherited from the host (EPERM if dropped). */
static unsigned long locked_flags(const char *target) {
    struct statvfs sv;
    if (statvfs(target, &sv) < 0) return 0;
    unsigned long keep = ST_NOSUID | ST_NODEV | ST_NOEXEC | ST_NOATIME | ST_NODIRATIME | ST_RELATIME;
    return sv.f_flag & keep; /* ST_* and MS_* share values for these bits */
}

static int remount_bind(const char *target, unsigned long flags) {
    return mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | flags | locked_flags(target), NULL);
}

/* ---- tmpcopyup: the directory's old contents copied into the new tmpfs ---- */

#include <dirent.h>

struct linux_dirent64_hdr {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static int copy_file(int from_dir, int to_dir, const char *name, const struct stat *st) {
    int in = openat(from_dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (in < 0) return -1;
    int out = openat(to_dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, st->st_mode & 07777);
    if (out < 0) { close(in); return -1; }
    char buf[16384];
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { close(in); close(out); return -1; }
        if (n == 0) break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) { close(in); close(out); return -1; }
            off += w;
        }
    }
    close(in);
    int r = fchown(out, st->st_uid, st->st_gid);
    /* fchown clears set-id bits: set the mode again. */
    if (r == 0) r = fchmod(out, st->st_mode & 07777);
    close(out);
    return r;
}

/* Copies the tree under from_dir into to_dir (both O_RDONLY directories):
 * directories, regular files, symlinks (device nodes, fifos and sockets
 * have no place in a tmpfs copy-up and are skipped, as runc's copy does not
 * make them either). Owners and modes are kept. */
static int copy_tree(int from_dir, int to_dir, int depth) {
    if (depth > 64) { errno = ELOOP; return -1; }
    char buf[2048];
    for (;;) {
        long n = syscall(SYS_getdents64, from_dir, buf, sizeof buf);
        if (n < 0) return -1;
        if (n == 0) return 0;
        for (long off = 0; off < n;) {
            struct linux_dirent64_hdr *d = (struct linux_dirent64_hdr *)(buf + off);
            off += d->d_reclen;
            const char *name = d->d_name;
            if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]))) continue;
            struct stat st;
            if (fstatat(from_dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return -1;
            stage_set("tmpcopyup ", name, NULL);
            if (S_ISDIR(st.st_mode)) {
                if (mkdirat(to_dir, name, st.st_mode & 07777) < 0) return -1;
                int a = openat(from_dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (a < 0) return -1;
                int b = openat(to_dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (b < 0) { close(a); return -1; }
                int r = copy_tree(a, b, depth + 1);
                if (r == 0) r = fchown(b, st.st_uid, st.st_gid);
                if (r == 0) r = fchmod(b, st.st_mode & 07777);
                close(a);
                close(b);
                if (r < 0) return -1;
            } else if (S_ISREG(st.st_mode)) {
                if (copy_file(from_dir, to_dir, name, &st) < 0) return -1;
            } else if (S_ISLNK(st.st_mode)) {
                char link[4096];
                ssize_t l = readlinkat(from_dir, name, link, sizeof link - 1);
                if (l < 0) return -1;
                link[l] = 0;
                if (symlinkat(link, to_dir, name) < 0) return -1;
                if (fchownat(to_dir, name, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW) < 0) return -1;
            }
        }
    }
}

/* ---- the steps ---- */

static void do_mount(int root, const struct ipactr_mount *m) {
    int is_dir = m->kind == IPACTR_MOUNT_BIND ? m->source_is_dir : 1;
    stage_set("create mount point ", m->destination, NULL);
    int fd = ensure_in_root(root, m->destination, is_dir);
    if (fd < 0) die();
    char target[40];
    fd_path(target, fd);
    unsigned long flags = m->flags;
    switch (m->kind) {
    case IPACTR_MOUNT_BIND: {
        stage_set("bind mount ", m->source, NULL);
        stage_set(stage_buf, " on ", m->destination);
        if (m->tree_fd > 2) {
            if (move_mount(m->tree_fd, "", fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0) die();
        } else if (mount(m->source, target, NULL, MS_BIND | (m->recursive ? MS_REC : 0), NULL) < 0) die();
        /* The first bind ignores every flag but MS_REC: apply them by remount. */
        unsigned long extra = flags & ~(unsigned long)(MS_BIND | MS_REC);
        if (extra) {
            close(fd);
            fd = open_in_root(root, m->destination, O_PATH);
            if (fd < 0) die();
            fd_path(target, fd);
            stage_set("remount ", m->destination, NULL);
            if (remount_bind(target, extra) < 0) die();
        }
        break;
    }
    case IPACTR_MOUNT_SYSFS:
        stage_set("mount sysfs on ", m->destination, NULL);
        if (mount(m->source, target, "sysfs", flags, m->data) < 0) {
            /* A user namespace without its own network namespace may not mount
             * sysfs; bind the host's read-only instead, as runc does. */
            if (errno != EPERM) die();
            if (mount("/sys", target, NULL, MS_BIND | MS_REC, NULL) < 0) die();
            close(fd);
            fd = open_in_root(root, m->destination, O_PATH);
            if (fd < 0) die();
            fd_path(target, fd);
            if (remount_bind(target, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC) < 0) die();
        }
        break;
    case IPACTR_MOUNT_CGROUP:
        stage_set("mount cgroup2 on ", m->destination, NULL);
        if (mount("cgroup2", target, "cgroup2", flags, NULL) < 0) {
            /* Without a cgroup namespace of our own the kernel refuses a new
             * cgroup2 superblock inside a user namespace: bind the container's
             * own cgroup directory instead. */
            if ((errno != EPERM && errno != EBUSY) || !m->source) die();
            stage_set("bind cgroup ", m->source, NULL);
            if (mount(m->source, target, NULL, MS_BIND | MS_REC, NULL) < 0) die();
            if (flags & ~(unsigned long)MS_REC) {
                close(fd);
                fd = open_in_root(root, m->destination, O_PATH);
                if (fd < 0) die();
                fd_path(target, fd);
                if (remount_bind(target, flags & ~(unsigned long)MS_REC) < 0) die();
            }
        }
        break;
    default: {
        /* tmpcopyup: keep a handle on what the tmpfs will hide, then copy it
         * into the tmpfs (podman's --read-only /tmp, /run, /var/tmp). */
        int old = -1;
        struct stat old_st;
        if (m->tmpcopyup) {
            stage_set("open ", m->destination, " for tmpcopyup");
            old = open_in_root(root, m->destination, O_RDONLY | O_DIRECTORY);
            if (old < 0 || fstat(old, &old_st) < 0) die();
        }
        stage_set("mount ", m->fstype, " on ");
        stage_set(stage_buf, m->destination, NULL);
        if (mount(m->source, target, m->fstype, flags, m->data) < 0) die();
        if (old >= 0) {
            stage_set("open ", m->destination, " for tmpcopyup");
            int fresh = open_in_root(root, m->destination, O_RDONLY | O_DIRECTORY);
            if (fresh < 0) die();
            if (copy_tree(old, fresh, 0) < 0) die();
            /* The tmpfs root takes the hidden directory's mode, as with runc. */
            stage_set("tmpcopyup: chmod ", m->destination, NULL);
            if (fchmod(fresh, old_st.st_mode & 07777) < 0) die();
            close(fresh);
            close(old);
        }
        break;
    }
    }
    if (m->propagation) {
        close(fd);
        fd = open_in_root(root, m->destination, O_PATH);
        if (fd < 0) die();
        fd_path(target, fd);
        stage_set("set propagation of ", m->destination, NULL);
        if (mount(NULL, target, NULL, m->propagation, NULL) < 0) die();
    }
    close(fd);
}

static void make_device(int root, const struct ipactr_device *d, int bind) {
    stage_set("create device ", d->path, NULL);
    if (bind) {
        int fd = ensure_in_root(root, d->path, 0);
        if (fd < 0) die();
        char target[40];
        fd_path(target, fd);
        if (mount(d->path, target, NULL, MS_BIND, NULL) < 0) die();
        close(fd);
        return;
    }
    const char *slash = strrchr(d->path, '/');
    char dir[4096];
    size_t dl = (size_t)(slash - d->path);
    if (dl >= sizeof dir) { errno = ENAMETOOLONG; die(); }
    memcpy(dir, d->path, dl);
    dir[dl] = 0;
    int parent = ensure_in_root(root, dl ? dir : "/", 1);
    if (parent < 0) die();
    /* O_PATH dir fds cannot be used with mknodat: reopen it as a directory. */
    char p[40];
    fd_path(p, parent);
    int dfd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    close(parent);
    if (dfd < 0) die();
    unlinkat(dfd, slash + 1, 0);
    if (mknodat(dfd, slash + 1, d->mode, d->dev) < 0) die();
    if (fchownat(dfd, slash + 1, d->uid, d->gid, AT_SYMLINK_NOFOLLOW) < 0) die();
    close(dfd);
}

static void dev_symlinks(int root) {
    static const char *const links[][2] = {
        {"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"},
        {"/proc/self/fd/2", "stderr"}, {"pts/ptmx", "ptmx"}, {"/proc/kcore", "core"},
    };
    stage_set("open /dev", NULL, NULL);
    int pfd = open_in_root(root, "/dev", O_PATH | O_DIRECTORY);
    if (pfd < 0) die();
    char p[40];
    fd_path(p, pfd);
    int dfd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    close(pfd);
    if (dfd < 0) die();
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        stage_set("symlink /dev/", links[i][1], NULL);
        if (symlinkat(links[i][0], dfd, links[i][1]) < 0 && errno != EEXIST) die();
    }
    close(dfd);
}

static void write_file(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) die();
    size_t n = strlen(value);
    if (write(fd, value, n) != (ssize_t)n) die();
    close(fd);
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Finds argv[0] along PATH inside the container, so a missing binary fails
 * at `create` with a clear message instead of silently at `start`. */
static const char *find_executable(const struct ipactr_plan *p, char *buf, size_t size) {
    const char *name = p->argv[0];
    stage_set("exec ", name, NULL);
    if (!name || !*name) { errno = ENOENT; die(); }
    if (strchr(name, '/')) {
        if (access(name, X_OK) < 0) die();
        return name;
    }
    const char *path = p->path_env ? p->path_env : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    size_t nl = strlen(name);
    int saved = ENOENT;
    while (*path) {
        const char *end = strchr(path, ':');
        size_t dl = end ? (size_t)(end - path) : strlen(path);
        if (dl + nl + 2 < size) {
            memcpy(buf, path, dl);
            buf[dl] = '/';
            memcpy(buf + dl + 1, name, nl + 1);
            if (access(buf, X_OK) == 0 && !is_dir(buf)) return buf;
            if (errno == EACCES) saved = EACCES;
        }
        if (!end) break;
        path = end + 1;
    }
    stage_set("exec ", name, ": executable file not found in $PATH");
    errno = saved;
    die();
}

static void load_seccomp(const struct ipactr_plan *p) {
    if (!p->seccomp_filter) return;
    struct sock_fprog prog = {
        .len = (unsigned short)p->seccomp_len,
        .filter = (struct sock_filter *)p->seccomp_filter,
    };
    TRY(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0), "load seccomp filter", NULL, NULL);
}

static void set_caps(const struct ipactr_plan *p) {
    for (int c = 0; c < 64; c++) {
        if (p->cap_bounding & (1ULL << c)) continue;
        if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL) {
            stage_set("drop bounding capability", NULL, NULL);
            die();
        }
    }
}

static void set_caps_final(const struct ipactr_plan *p) {
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    for (int i = 0; i < 2; i++) {
        data[i].effective = (uint32_t)(p->cap_effective >> (32 * i));
        data[i].permitted = (uint32_t)(p->cap_permitted >> (32 * i));
        data[i].inheritable = (uint32_t)(p->cap_inheritable >> (32 * i));
    }
    TRY(syscall(SYS_capset, &hdr, data), "capset", NULL, NULL);
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    /* The kernel raises an ambient capability only if it is permitted and
     * inheritable; configs (runc's own template) often list ambient caps
     * without inheritable ones. runc skips those, and so do we. */
    for (int c = 0; c < 64; c++) {
        uint64_t bit = 1ULL << c;
        if ((p->cap_ambient & bit) && (p->cap_permitted & bit) && (p->cap_inheritable & bit))
            TRY(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0), "raise ambient capability", NULL, NULL);
    }
}

/* Closes every fd except stdio, the preserved ones and our own. The caller's
 * other fds (Foundation's exit-watch socket, a shim's pipes) must not stay
 * open in an init that may wait for `start` for hours. */
static void close_other_fds(const struct ipactr_plan *p) {
    int keep[128];
    int n = 0;
    int mine[] = {p->sync_fd, p->report_fd, p->fifo_fd, p->console_socket, p->source_fd > 2 ? p->source_fd : -1};
    for (size_t i = 0; i < sizeof mine / sizeof mine[0]; i++)
        if (mine[i] >= 3 + p->preserve_fds) keep[n++] = mine[i];
    if (p->n_create_hooks && p->create_state_fd >= 3 + p->preserve_fds) keep[n++] = p->create_state_fd;
    if (p->n_start_hooks && p->start_state_fd >= 3 + p->preserve_fds) keep[n++] = p->start_state_fd;
    for (int i = 0; i < p->n_join && n < 24; i++)
        if (p->join_fds[i] >= 3 + p->preserve_fds) keep[n++] = p->join_fds[i];
    /* Detached trees (idmapped binds) the mount step attaches; Swift caps
     * their number well below the room left here. */
    for (int i = 0; i < p->n_mounts && n < 128; i++)
        if (p->mounts[i].tree_fd >= 3 + p->preserve_fds) keep[n++] = p->mounts[i].tree_fd;
    for (int i = 1; i < n; i++)  /* insertion sort: n is small */
        for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) { int t = keep[j]; keep[j] = keep[j - 1]; keep[j - 1] = t; }
    unsigned int lo = 3 + (unsigned)p->preserve_fds;
    for (int i = 0; i < n; i++) {
        if ((unsigned)keep[i] > lo) syscall(SYS_close_range, lo, (unsigned)keep[i] - 1, 0);
        if ((unsigned)keep[i] + 1 > lo) lo = (unsigned)keep[i] + 1;
    }
    syscall(SYS_close_range, lo, ~0U, 0);
}

/* runtime-spec: prestart and createRuntime hooks run after the namespaces
 * exist and before pivot_root. Tell the parent, wait for its second "go". */
static void hook_pause(const struct ipactr_plan *p) {
    if (p->hook_pause) {
        send_report(2, 0, NULL);
        char go;
        ssize_t r;
        do { r = read(p->sync_fd, &go, 1); } while (r < 0 && errno == EINTR);
        if (r != 1) _exit(1);
    }
    close(p->sync_fd);
}

/* ---- createContainer / startContainer hooks: run by the init itself ---- */

#include <poll.h>
#include <sys/wait.h>

/* Reports the stage as the whole message (err 0: no errno to add) and exits. */
__attribute__((noreturn)) static void fail_message(void) {
    send_report(0, 0, stage_buf);
    _exit(1);
}

/* Runs one hook in the init's namespaces, as the init's current user, with
 * the state file (rewound) as its stdin and the init's stdout/stderr; kills
 * it after h->timeout seconds. A raw clone3, not fork(): glibc's fork runs
 * atfork handlers and takes locks that other threads of the Swift parent
 * may have held when the init was cloned. */
static void run_hook(const char *kind, const struct ipactr_hook *h, int state_fd) {
    char name[300];
    stage_set(kind, " hook ", h->path);
    size_t nl = strlen(stage_buf);
    if (nl >= sizeof name) nl = sizeof name - 1;
    memcpy(name, stage_buf, nl);
    name[nl] = 0;
    int errp[2];
    if (pipe2(errp, O_CLOEXEC) < 0 || lseek(state_fd, 0, SEEK_SET) < 0) die();
    struct clone_args a;
    memset(&a, 0, sizeof a);
    int pidfd = -1;
    a.flags = CLONE_PIDFD;
    a.pidfd = (unsigned long long)(uintptr_t)&pidfd;
    a.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &a, sizeof a);
    if (pid < 0) die();
    if (pid == 0) {
        /* Never outlive the init (it may be killed by a failing `create`). */
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (dup2(state_fd, 0) >= 0) {
            /* Only stdio reaches the hook; the error pipe closes on exec. */
            syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);
            execve(h->path, (char *const *)h->argv, (char *const *)h->envp);
        }
        int e = errno;
        ssize_t w = write(errp[1], &e, sizeof e);
        (void)w;
        _exit(127);
    }
    close(errp[1]);
    int ms = h->timeout <= 0 ? -1 : h->timeout > 2000000 ? 2000000000 : h->timeout * 1000;
    struct pollfd pf = {.fd = pidfd, .events = POLLIN, .revents = 0};
    int n;
    do { n = poll(&pf, 1, ms); } while (n < 0 && errno == EINTR);
    if (n == 0) syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    int st = 0;
    while (waitpid((pid_t)pid, &st, 0) < 0 && errno == EINTR) {}
    close(pidfd);
    int e = 0;
    ssize_t r;
    do { r = read(errp[0], &e, sizeof e); } while (r < 0 && errno == EINTR);
    close(errp[0]);
    char num[24];
    if (n == 0) {
        fmt_int(num, h->timeout);
        stage_set(name, ": timed out after ", num);
        stage_set(stage_buf, " s", NULL);
        fail_message();
    }
    if (r == (ssize_t)sizeof e) {  /* execve failed: "…hook /x: No such file or directory" */
        stage_set(name, NULL, NULL);
        errno = e;
        die();
    }
    if (WIFSIGNALED(st)) {
        fmt_int(num, WTERMSIG(st));
        stage_set(name, ": killed by signal ", num);
        fail_message();
    }
    if (WEXITSTATUS(st) != 0) {
        fmt_int(num, WEXITSTATUS(st));
        stage_set(name, ": exit status ", num);
        fail_message();
    }
}

/* runtime-spec: createContainer hooks run in the container's namespaces after
 * the mounts and before pivot_root; their path resolves in the runtime's
 * (still visible) root. The first failure fails `create`. */
static void create_container_hooks(const struct ipactr_plan *p) {
    for (int i = 0; i < p->n_create_hooks; i++) run_hook("createContainer", &p->create_hooks[i], p->create_state_fd);
}

/* startContainer hooks, just before execve: their path resolves in the
 * container. `fd` is where the outcome goes: the exec FIFO that `start`
 * opened (ready=1, or the failure, which `start` reports and then stops the
 * container), or for `run` the report pipe (ready was sent already). */
static void start_container_hooks(const struct ipactr_plan *p, int fd) {
    report_fd = fd;
    for (int i = 0; i < p->n_start_hooks; i++) run_hook("startContainer", &p->start_hooks[i], p->start_state_fd);
}

/* runc's console protocol: a pty from the container's own devpts; its
 * master goes to the caller over --console-socket with SCM_RIGHTS (payload:
 * the name), the replica becomes stdio, controlling tty and /dev/console. */
static void setup_console(const struct ipactr_plan *p) {
    int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    stage_set("open /dev/ptmx", NULL, NULL);
    if (master < 0) die();
    int unlock = 0;
    TRY(ioctl(master, TIOCSPTLCK, &unlock), "unlock pty", NULL, NULL);
    int replica = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    stage_set("open pty replica", NULL, NULL);
    if (replica < 0) die();
    if (p->console_rows || p->console_cols) {
        struct winsize ws = {.ws_row = p->console_rows, .ws_col = p->console_cols};
        TRY(ioctl(replica, TIOCSWINSZ, &ws), "set console size", NULL, NULL);
    }
    if (p->console_mount) {
        char path[40];
        fd_path(path, replica);
        int fd = open("/dev/console", O_CREAT | O_WRONLY | O_NOCTTY | O_CLOEXEC, 0600);
        if (fd >= 0) close(fd);
        TRY(mount(path, "/dev/console", NULL, MS_BIND, NULL), "bind pty on /dev/console", NULL, NULL);
    }
    char name[] = "/dev/ptmx";
    struct iovec iov = {.iov_base = name, .iov_len = sizeof name - 1};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    memset(&u, 0, sizeof u);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &master, sizeof(int));
    ssize_t w;
    do { w = sendmsg(p->console_socket, &msg, MSG_NOSIGNAL); } while (w < 0 && errno == EINTR);
    stage_set("send pty master to --console-socket", NULL, NULL);
    if (w < 0) die();
    close(master);
    close(p->console_socket);
    TRY(setsid(), "setsid", NULL, NULL);
    TRY(ioctl(replica, TIOCSCTTY, 0), "set controlling terminal", NULL, NULL);
    for (int i = 0; i < 3; i++) TRY(dup2(replica, i), "dup console", NULL, NULL);
    if (replica > 2) close(replica);
}

__attribute__((noreturn)) static void child(const struct ipactr_plan *p) {
    report_fd = p->report_fd;
    close_other_fds(p);

    /* The Swift parent may block or handle signals; the payload starts clean. */
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < NSIG; s++) {
        if (s == SIGKILL || s == SIGSTOP) continue;
        signal(s, SIG_DFL);
    }
    /* Die with `create` until the container is handed over ("go" + ready). */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);

    /* Wait until the parent has written the id maps and set up the cgroup. */
    char go;
    ssize_t r;
    do { r = read(p->sync_fd, &go, 1); } while (r < 0 && errno == EINTR);
    if (r != 1) _exit(1);

    /* Now root in the new user namespace (if any). Raw system calls for
     * every id change here: glibc's setgroups/setresuid/setresgid signal
     * each thread glibc believes exists (POSIX per-process credentials),
     * and after a raw clone3 from a multi-threaded parent those threads are
     * not in this process: the child waited on a futex forever. */
    if (p->clone_flags & CLONE_NEWUSER) {
        TRY(syscall(SYS_setresgid, 0, 0, 0), "setresgid 0 in the user namespace", NULL, NULL);
        TRY(syscall(SYS_setresuid, 0, 0, 0), "setresuid 0 in the user namespace", NULL, NULL);
    }
    for (int i = 0; i < p->n_join; i++)
        TRY(setns(p->join_fds[i], 0), "join namespace", NULL, NULL);
    /* After CLONE_INTO_CGROUP: the new cgroup namespace is rooted at the
     * container's cgroup (clone3's CLONE_NEWCGROUP would root it at ours). */
    if (p->new_cgroupns)
        TRY(unshare(CLONE_NEWCGROUP), "unshare cgroup namespace", NULL, NULL);

    if (p->hostname) TRY(sethostname(p->hostname, strlen(p->hostname)), "sethostname", NULL, NULL);
    if (p->domainname) TRY(setdomainname(p->domainname, strlen(p->domainname)), "setdomainname", NULL, NULL);

    int host_proc = -1;
    if (p->new_mountns) {
        /* Keep mount events from reaching the host before anything is mounted. */
        TRY(mount(NULL, "/", NULL, p->rootfs_propagation, NULL), "set propagation of /", NULL, NULL);
        /* pivot_root needs the new root to be a mount point. */
        TRY(mount(p->rootfs, p->rootfs, NULL, MS_BIND | MS_REC, NULL), "bind rootfs ", p->rootfs, NULL);
        int root = open(p->rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
        stage_set("open rootfs ", p->rootfs, NULL);
        if (root < 0) die();
        for (int i = 0; i < p->n_mounts; i++) do_mount(root, &p->mounts[i]);
        for (int i = 0; i < p->n_devices; i++) make_device(root, &p->devices[i], p->bind_devices);
        if (p->dev_symlinks) dev_symlinks(root);
        /* The exec FIFO is reopened through the host's /proc, which stays
         * reachable by fd after pivot_root (a container need not mount /proc). */
        if (p->fifo_fd >= 0) {
            host_proc = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
            stage_set("open /proc", NULL, NULL);
            if (host_proc < 0) die();
        }
        hook_pause(p);
        TRY(fchdir(root), "chdir rootfs", NULL, NULL);
        create_container_hooks(p);
        if (p->no_pivot) {
            TRY(mount(".", "/", NULL, MS_MOVE, NULL), "move rootfs to /", NULL, NULL);
            TRY(chroot("."), "chroot", NULL, NULL);
        } else {
            /* pivot_root(".", ".") stacks the old root under the new one;
             * detaching it leaves only the container's tree (runc's trick). */
            TRY(syscall(SYS_pivot_root, ".", "."), "pivot_root", NULL, NULL);
            TRY(mount(NULL, ".", NULL, MS_SLAVE | MS_REC, NULL), "make old root slave", NULL, NULL);
            TRY(umount2(".", MNT_DETACH), "detach old root", NULL, NULL);
        }
        TRY(chdir("/"), "chdir /", NULL, NULL);
        close(root);

        /* sysctls first: readonly_paths usually contains /proc/sys. */
        for (int i = 0; i < p->n_sysctl; i++) {
            char path[512];
            stage_set("/proc/sys/", p->sysctl_keys[i], NULL);
            memcpy(path, stage_buf, strlen(stage_buf) + 1);
            stage_set("write sysctl ", path, NULL);
            write_file(path, p->sysctl_values[i]);
        }
        for (int i = 0; i < p->n_masked; i++) {
            const char *m = p->masked_paths[i];
            stage_set("mask ", m, NULL);
            int rc = is_dir(m) ? mount("tmpfs", m, "tmpfs", MS_RDONLY, NULL)
                               : mount("/dev/null", m, NULL, MS_BIND, NULL);
            if (rc < 0 && errno != ENOENT) die();
        }
        for (int i = 0; i < p->n_readonly; i++) {
            const char *m = p->readonly_paths[i];
            stage_set("make read-only ", m, NULL);
            if (mount(m, m, NULL, MS_BIND | MS_REC, NULL) < 0) {
                if (errno == ENOENT) continue;
                die();
            }
            if (remount_bind(m, MS_RDONLY | MS_REC) < 0) die();
        }
        if (p->readonly_root)
            TRY(remount_bind("/", MS_RDONLY), "remount / read-only", NULL, NULL);
    } else {
        hook_pause(p);
        create_container_hooks(p);
    }

    if (p->console_socket >= 0) setup_console(p);

    char exe_buf[4096];
    const char *exe = find_executable(p, exe_buf, sizeof exe_buf);

    /* Without no_new_privs the kernel wants CAP_SYS_ADMIN to load a filter:
     * load it while we still hold it. */
    if (!p->no_new_privs) load_seccomp(p);

    if (p->set_caps) {
        set_caps(p);
        /* Keep the permitted set across setuid; capset below trims it. */
        TRY(prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "keep capabilities", NULL, NULL);
    }
    /* Raw system calls, not glibc's (see the user namespace step above). */
    TRY(syscall(SYS_setgroups, (size_t)p->n_groups, p->groups), "setgroups", NULL, NULL);
    TRY(syscall(SYS_setresgid, p->gid, p->gid, p->gid), "setgid", NULL, NULL);
    TRY(syscall(SYS_setresuid, p->uid, p->uid, p->uid), "setuid", NULL, NULL);
    if (p->set_caps) set_caps_final(p);
    if (p->umask_value >= 0) umask((mode_t)p->umask_value);
    if (p->cwd) TRY(chdir(p->cwd), "chdir ", p->cwd, NULL);
    if (p->no_new_privs) TRY(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs", NULL, NULL);

    /* fds 3.. stay open across exec only if the caller asked (--preserve-fds). */
    for (int fd = 3; fd < 3 + p->preserve_fds; fd++) {
        int fl = fcntl(fd, F_GETFD);
        if (fl >= 0) fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
    }

    if (p->fifo_fd >= 0) {
        /* Ready: `create` may exit as soon as it reads this, so stop dying
         * with it first; from now on we belong to whoever reaps us. */
        prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0);
        send_report(1, 0, NULL);
        close(report_fd);
        report_fd = -1;
        char path[40];
        memcpy(path, "self/fd/", 8);
        fmt_int(path + 8, p->fifo_fd);
        /* Blocks until `start` opens the FIFO for reading. */
        int w;
        do { w = openat(host_proc, path, O_WRONLY | O_CLOEXEC); } while (w < 0 && errno == EINTR);
        if (w < 0) _exit(127);
        start_container_hooks(p, w);
        send_report(1, 0, NULL);
        close(w);
        report_fd = -1;
        close(host_proc);
        close(p->fifo_fd);
    } else {
        /* `run`/`exec`: exec errors still reach the parent (the report
         * pipe is close-on-exec, so EOF after "ready" means exec worked).
         * A detached process outlives the runtime: no parent-death signal. */
        prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0);
        send_report(1, 0, NULL);
        start_container_hooks(p, report_fd);
    }
    if (p->no_new_privs) load_seccomp(p);
    stage_set("exec ", exe, NULL);
    execve(exe, (char *const *)p->argv, (char *const *)p->envp);
    die();
}

/* The joined-namespace path (see join_userns_fd in the header). Runs in a
 * process forked from the runtime: system calls only. Writes {pid, errno,
 * step} on `out`; the init it clones (CLONE_PARENT) is the runtime's child. */
__attribute__((noreturn)) static void join_and_clone(const struct ipactr_plan *plan, int out) {
    int32_t res[3] = {-1, 0, 0};
    /* Into the container's cgroup first: once in the joined user namespace
     * we no longer may write the host's cgroup.procs. */
    if (plan->cgroup_fd >= 0) {
        res[2] = 1;
        int fd = openat(plan->cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1) goto fail;
        close(fd);
    }
    if (plan->join_userns_fd > 2) {
        res[2] = 2;
        if (setns(plan->join_userns_fd, CLONE_NEWUSER) < 0) goto fail;
        /* Root of the joined namespace (raw calls, see child()). */
        res[2] = 3;
        if (syscall(SYS_setresgid, 0, 0, 0) < 0 || syscall(SYS_setresuid, 0, 0, 0) < 0) goto fail;
    }
    if (plan->join_pidns_fd > 2) {
        res[2] = 4;
        if (setns(plan->join_pidns_fd, CLONE_NEWPID) < 0) goto fail;
    }
    res[2] = 5;
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = (unsigned long long)(unsigned)plan->clone_flags | CLONE_PARENT;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0) goto fail;
    if (pid == 0) child(plan);
    res[0] = (int32_t)pid;
    res[2] = 0;
    if (write(out, res, sizeof res) != sizeof res) _exit(1);
    _exit(0);
fail:
    res[1] = errno;
    if (write(out, res, sizeof res) != sizeof res) _exit(1);
    _exit(1);
}

static const char *const join_steps[] = {
    "clone3", "move into the container's cgroup", "join user namespace",
    "setresuid 0 in the joined user namespace", "join pid namespace", "clone3 in the joined namespaces",
};

const char *ipactr_spawn_join_step(int step) {
    return step >= 0 && step < (int)(sizeof join_steps / sizeof join_steps[0]) ? join_steps[step] : "spawn";
}

static pid_t spawn_joined(const struct ipactr_plan *plan, int *pidfd, int *step) {
    int fds[2];
    *step = 0;
    if (pipe2(fds, O_CLOEXEC) < 0) return -1;
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    long mid = syscall(SYS_clone3, &args, sizeof args);
    if (mid < 0) { int e = errno; close(fds[0]); close(fds[1]); errno = e; return -1; }
    if (mid == 0) { close(fds[0]); join_and_clone(plan, fds[1]); }
    close(fds[1]);
    int32_t res[3] = {-1, EIO, 0};
    ssize_t n;
    do { n = read(fds[0], res, sizeof res); } while (n < 0 && errno == EINTR);
    close(fds[0]);
    while (waitpid((pid_t)mid, NULL, 0) < 0 && errno == EINTR) {}
    if (n != sizeof res || res[0] < 0) { *step = res[2]; errno = res[1] ? res[1] : EIO; return -1; }
    /* The init is our child (CLONE_PARENT): its pid cannot be reused before we reap it. */
    int fd = (int)syscall(SYS_pidfd_open, res[0], 0);
    if (fd < 0) { int e = errno; kill(res[0], SIGKILL); waitpid(res[0], NULL, 0); errno = e; return -1; }
    *pidfd = fd;
    return (pid_t)res[0];
}

pid_t ipactr_spawn_ex(const struct ipactr_plan *plan, int *pidfd, int *step) {
    *step = 0;
    if (plan->join_userns_fd > 2 || plan->join_pidns_fd > 2) return spawn_joined(plan, pidfd, step);
    return ipactr_spawn(plan, pidfd);
}

pid_t ipactr_spawn(const struct ipactr_plan *plan, int *pidfd) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    int fd = -1;
    args.flags = (unsigned long long)(unsigned)plan->clone_flags | CLONE_PIDFD;
    args.pidfd = (unsigned long long)(uintptr_t)&fd;
    args.exit_signal = SIGCHLD;
    if (plan->cgroup_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = (unsigned long long)plan->cgroup_fd;
    }
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0) return -1;
    if (pid == 0) child(plan);
    *pidfd = fd;
    return (pid_t)pid;
}

int ipactr_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int ipactr_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int ipactr_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int ipactr_prlimit(pid_t pid, int resource, uint64_t soft, uint64_t hard) {
    struct rlimit lim = {.rlim_cur = soft, .rlim_max = hard};
    return prlimit(pid, (enum __rlimit_resource)resource, &lim, NULL);
}

int ipactr_memfd(void) { return memfd_create("ipactr-seccomp", MFD_CLOEXEC); }

int ipactr_setns(int fd, int nstype) { return setns(fd, nstype); }
