/*
 * ipactr_sys.h — Linux calls Swift cannot see: they are declared only under
 * _GNU_SOURCE, which Swift's Glibc module is not built with. Defined in
 * sys.c. (xattr calls come from <sys/xattr.h> through ipactr_fs.h; setns and
 * the IPACTR_CLONE_* flags are in ipactr_spawn.h.)
 */
#ifndef IPACTR_SYS_H
#define IPACTR_SYS_H

int ipactr_pipe2(int fds[2], int flags);
int ipactr_accept4(int fd, int flags);
/* An anonymous close-on-exec file (the state JSON that in-container hooks read on stdin). */
int ipactr_memfd_create(const char *name);

#endif
