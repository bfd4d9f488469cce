/*
 * ipactr_sys.h — libc calls under our own names, for the ones Swift cannot
 * see: <sys/xattr.h> is not in Swift's Glibc module (and Foundation's private
 * C modules claim it), and the Linux-only calls below need _GNU_SOURCE, which
 * Swift's Glibc module is not built with. Plain inline forwarders.
 */
#ifndef IPACTR_SYS_H
#define IPACTR_SYS_H
#include <sys/types.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/xattr.h>

static inline ssize_t ipactr_lgetxattr(const char *path, const char *name, void *value, size_t size) {
    return lgetxattr(path, name, value, size);
}
static inline int ipactr_lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags) {
    return lsetxattr(path, name, value, size, flags);
}
static inline ssize_t ipactr_llistxattr(const char *path, char *list, size_t size) {
    return llistxattr(path, list, size);
}
static inline int ipactr_fsetxattr(int fd, const char *name, const void *value, size_t size, int flags) {
    return fsetxattr(fd, name, value, size, flags);
}

/* Defined in sys.c, which is compiled with _GNU_SOURCE. */
int ipactr_pipe2(int fds[2], int flags);
/* ipactr_setns: in ipactr_spawn.h. */
int ipactr_accept4(int fd, int flags);

/* Namespace flags: IPACTR_CLONE_* in ipactr_spawn.h. */
#endif
