/*
 * ipactr_sys.h — xattr calls under our own names. Swift's Glibc module does
 * not carry <sys/xattr.h>, and Foundation's private C modules claim it, so
 * the declarations cannot simply be re-exported; these inline forwarders can.
 */
#ifndef IPACTR_SYS_H
#define IPACTR_SYS_H
#include <sys/types.h>
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
#endif
