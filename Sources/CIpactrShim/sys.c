#define _GNU_SOURCE
#include "ipactr_sys.h"
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

int ipactr_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }
int ipactr_accept4(int fd, int flags) { return accept4(fd, NULL, NULL, flags); }
int ipactr_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC); }
