#define _GNU_SOURCE
#include "ipactr_userns.h"
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    size_t len = strlen(text);
    ssize_t n = write(fd, text, len);
    int err = (n == (ssize_t)len) ? 0 : (n < 0 ? -errno : -EIO);
    close(fd);
    return err;
}

int ipactr_userns_open(const char *uid_map, const char *gid_map) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) return -errno;

    /* A raw clone without CLONE_VM: the child gets a copy of the address
     * space, blocks reading the pipe until the parent closes it, then exits. */
    pid_t pid = (pid_t)syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid < 0) {
        int err = -errno;
        close(pipefd[0]);
        close(pipefd[1]);
        return err;
    }
    if (pid == 0) {
        char c;
        close(pipefd[1]);
        while (read(pipefd[0], &c, 1) < 0 && errno == EINTR) {}
        _exit(0);
    }
    close(pipefd[0]);

    char path[64];
    int result;
    snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
    result = write_file(path, uid_map);
    if (result == 0) {
        /* Writing a gid map as a privileged writer does not need setgroups=deny. */
        snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
        result = write_file(path, gid_map);
    }
    if (result == 0) {
        snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
        result = open(path, O_RDONLY | O_CLOEXEC);
        if (result < 0) result = -errno;
    }
    close(pipefd[1]);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    return result;
}
