/*
 * ipactr_fs.h — file-system calls Swift cannot reach directly.
 */
#ifndef IPACTR_FS_H
#define IPACTR_FS_H

/* Brought in for Swift: Glibc's module map lacks the xattr calls. */
#include <sys/xattr.h>

/* openat2() has no glibc wrapper (glibc 2.36) and syscall() is variadic.
 * resolve takes the RESOLVE_* flags below (those of <linux/openat2.h>).
 * Returns an fd, or -1 with errno set. */
int ipactr_openat2(int dirfd, const char *path, int flags, unsigned mode, unsigned long long resolve);

/* syncfs() is declared only under _GNU_SOURCE, which Swift does not define. */
int ipactr_syncfs(int fd);

#define IPACTR_RESOLVE_NO_XDEV 0x01ULL
#define IPACTR_RESOLVE_NO_MAGICLINKS 0x02ULL
#define IPACTR_RESOLVE_NO_SYMLINKS 0x04ULL
#define IPACTR_RESOLVE_BENEATH 0x08ULL

#endif
