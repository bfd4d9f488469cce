/*
 * ipactr_shim.h — C that Swift cannot call or must not run.
 *
 * Each function here exists for one of two reasons, stated next to it:
 *  - the C API is variadic (Swift cannot call variadic C functions), or
 *  - the code runs between clone() and execve() in the child of a
 *    multi-threaded process, where only async-signal-safe syscalls are allowed.
 */
#ifndef IPACTR_SHIM_H
#define IPACTR_SHIM_H

#include <stddef.h>

struct archive;

/* archive_set_error() is variadic: a fixed-format wrapper. */
void ipactr_archive_set_error(struct archive *a, int errnum, const char *message);

#endif
