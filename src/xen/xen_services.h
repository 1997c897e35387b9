/* SPDX-License-Identifier: MIT */
/* Xen's model in the broker: domains, event channels and grant tables as broker services (see
 * broker/core.h). Internal to memvisord. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/util.h"

struct mvb_client;

/* Domains: a process is one domain however many connections it opens, made on first use. */
MV_HIDDEN int mvb_domains_service_init(void);
/* The client's domid, made now if it has none; -ENOSPC when every id is taken. */
MV_HIDDEN int mvb_domain_assign(struct mvb_client *c);
/* 0 when the client is no domain (yet). */
MV_HIDDEN uint16_t mvb_domain_of(struct mvb_client *c);
MV_HIDDEN uint16_t mvb_domain_of_pid(pid_t pid);
/* Whether an ancestor of pid (up to the first one that is gone) is a domain. */
MV_HIDDEN bool mvb_domain_descendant(pid_t pid);
/* pid asked for a chosen domain and was refused (it is no domain, nor the toolstack). */
MV_HIDDEN bool mvb_domain_refused(pid_t pid);
/* pid's domain, made now (waiting for the process to connect, ending with it) if it has none. */
MV_HIDDEN int mvb_domain_for_pid(pid_t pid);
MV_HIDDEN bool mvb_domain_alive(uint32_t domid);
/* The domain came back from the record of a broker that died (its process is the same). */
MV_HIDDEN bool mvb_domain_restored(uint32_t domid);
/* After the record is read: domains whose processes live are kept, pending their return; the others
 * end as they would have. */
MV_HIDDEN void mvb_domains_restore_finish(void);

/* Told when a domain begins (with a name for it) and ends. */
struct mvb_domain_listener {
	void (*introduced)(uint16_t domid, const char *name);
	void (*gone)(uint16_t domid);
	void (*restored)(uint16_t domid); /* kept from the record: its state is there already */
};
MV_HIDDEN void mvb_domains_listen(const struct mvb_domain_listener *l);

/* Event channels between domains. */
MV_HIDDEN int mvb_evtchn_service_init(void);
MV_HIDDEN void mvb_evtchn_notify(uint16_t domid, uint32_t port);

/* Grant tables. Registered before the domains service: a dying client's unmap notifications may go
 * through ports its domain is about to lose. */
MV_HIDDEN int mvb_gnttab_service_init(void);
