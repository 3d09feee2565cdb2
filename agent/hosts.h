/*
 * /etc/hosts names the sandbox: `localhost` and the sandbox's hostname resolve without a network.
 */
#ifndef CAPSULE_HOSTS_H
#define CAPSULE_HOSTS_H

/* The line hosts_sync adds for the hostname ends with this, so that a stale one can be told from the user's. */
#define HOSTS_MARK "# capsule: this sandbox"
/* A bigger /etc/hosts is the user's business: left as it is. */
#define HOSTS_MAX (64 * 1024)

/* Make /etc/hosts name `localhost` and this sandbox's hostname (at start, and again whenever the
 * hostname changed since: a fork with memory gets its new name after it was restored). Best effort:
 * a read-only or odd /etc is left alone. */
void hosts_sync(void);

#endif
