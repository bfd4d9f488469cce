#define _GNU_SOURCE
#include "ipactr_fs.h"
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

int ipactr_openat2(int dirfd, const char *path, int flags, unsigned mode, unsigned long long resolve) {
    struct open_how how = { .flags = (unsigned long long)flags, .mode = mode, .resolve = resolve };
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

int ipactr_syncfs(int fd) {
    return syncfs(fd);
}
