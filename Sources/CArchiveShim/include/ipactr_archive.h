/*
 * ipactr_archive.h — libarchive's variadic calls, for Swift (which cannot
 * call variadic C functions). Its own target so that only what unpacks
 * images links libarchive (and through it libxml2 and ICU): not
 * ipactr-runtime, whose start-up time counts per container.
 */
#ifndef IPACTR_ARCHIVE_H
#define IPACTR_ARCHIVE_H

#include <stddef.h>

struct archive;

/* archive_set_error() is variadic: a fixed-format wrapper. */
void ipactr_archive_set_error(struct archive *a, int errnum, const char *message);

#endif
