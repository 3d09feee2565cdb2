/* Users and groups of the sandbox (its own /etc/passwd and /etc/group). */
#ifndef CAPSULE_USERS_H
#define CAPSULE_USERS_H

#include <sys/types.h>

#define MAX_GROUPS 64

struct cred { uid_t uid; gid_t gid; gid_t groups[MAX_GROUPS]; int ngroups; };

/* spec: name | uid | name:group | uid:gid. Returns 0, or -1 with a message in msg. */
int resolve_user(const char *spec, struct cred *cr, char *msg, size_t msz);

#endif
