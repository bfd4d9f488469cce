/*
 * ipactr_userns.h — a user-namespace file descriptor for a given id mapping.
 *
 * Why C: an idmapped mount (mount_setattr MOUNT_ATTR_IDMAP) needs an fd of a
 * user namespace that carries the mapping. The only way to get one is a
 * process living in it; we clone a child that does nothing but block on a
 * pipe, write its maps from the parent, open /proc/PID/ns/user and let it go.
 * The child runs between clone and _exit in a multi-threaded process, so it
 * may only make async-signal-safe calls: that is why it is not Swift.
 */
#ifndef IPACTR_USERNS_H
#define IPACTR_USERNS_H

/* uid_map / gid_map: the text written to /proc/PID/{uid,gid}_map, e.g.
 * "0 524288 65536\n". Returns an O_CLOEXEC fd of the namespace, or -errno. */
int ipactr_userns_open(const char *uid_map, const char *gid_map);

#endif
