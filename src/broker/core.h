/* SPDX-License-Identifier: MIT */
/* The broker core: one epoll loop, the client table, the message router, and the registries that the
 * facilities (regions, merge partitions, domains, event channels, grant tables, the xenstore) plug into,
 * as sd-event sources do. The core knows no facility: each registers its message handlers, what to
 * release when a client goes, its part of the status reply, its upkeep and whether it still holds
 * anything. Internal to memvisord; the loop is one thread, so nothing here locks (the compressed tier
 * has threads of its own, which never call in here). */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto/wire.h"

struct mvb_client;
struct mvb_stats;

/* One named counter, "facility.counter" (see MV_MSG_STATS in proto/wire.h). */
MV_HIDDEN void mvb_stats_add(struct mvb_stats *st, const char *name, uint64_t value);

struct mvb_service {
	const char *name;
	/* A client's connection closed (exit, kill -9, or dropped by the core): release what it held. */
	void (*client_gone)(struct mvb_client *c);
	/* The upkeep timer fired. */
	void (*tick)(void);
	/* Add this facility's counters to a status snapshot (mvb_stats_add). */
	void (*stats)(struct mvb_stats *st);
	/* Whether anything is held that a client would miss if the broker left (for --exit-idle). */
	bool (*busy)(void);
	/* The broker is exiting. */
	void (*fini)(void);
};

/* Registers a service; returns its id, which names its slot in every client. Services are told of a
 * client's end in the order they registered. */
MV_HIDDEN int mvb_service_register(const struct mvb_service *s);

typedef void (*mvb_handler_fn)(struct mvb_client *c, const struct mvw_msg *m, const int *fds);
/* The handler of one message type; every request type has exactly one. */
MV_HIDDEN void mvb_handler_register(uint8_t type, mvb_handler_fn fn);

/* Replies to a request (an error status carries no payload and no descriptors). Never blocks: a client
 * that does not read its replies loses its connection instead. */
MV_HIDDEN int mvb_reply(struct mvb_client *c, const struct mvw_msg *req, int32_t status, const void *payload,
			size_t len, int fd);
MV_HIDDEN int mvb_reply_fds(struct mvb_client *c, const struct mvw_msg *req, int32_t status, const void *payload,
			    size_t len, const int *fds, unsigned nfds);

MV_HIDDEN pid_t mvb_client_pid(const struct mvb_client *c);
MV_HIDDEN uid_t mvb_client_uid(const struct mvb_client *c);
/* The service's own word for this client (zero until set). */
MV_HIDDEN uintptr_t *mvb_client_slot(struct mvb_client *c, int service);
/* Every connected client, in no particular order. */
MV_HIDDEN struct mvb_client *mvb_client_first(void);
MV_HIDDEN struct mvb_client *mvb_client_next(struct mvb_client *c);

/* Other descriptors in the loop: fn(ud, events) runs when they are ready. */
typedef void (*mvb_io_fn)(void *ud, uint32_t events);
MV_HIDDEN int mvb_io_add(int fd, uint32_t events, mvb_io_fn fn, void *ud);
MV_HIDDEN int mvb_io_modify(int fd, uint32_t events);
MV_HIDDEN void mvb_io_remove(int fd);

/* The page every client maps (budget, unpinned hint, kick flag): the HELLO reply carries it. */
MV_HIDDEN struct mvw_bulletin *mvb_bulletin(void);

MV_HIDDEN uid_t mvb_owner_uid(void);
MV_HIDDEN uint64_t mvb_uptime_ns(void);
MV_HIDDEN uint64_t mvb_client_count(void);
/* Connections refused so far for a process's or the table's limit. */
MV_HIDDEN uint64_t mvb_refused_count(void);
/* Every service's counters into st (status.c). */
MV_HIDDEN void mvb_services_stats(struct mvb_stats *st);
/* The STATUS and STATS messages (status.c), registered by the core itself. */
MV_HIDDEN void mvb_status_init(void);
MV_HIDDEN pid_t mvb_pid(void);
MV_HIDDEN void mvb_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

struct mvb_core_config {
	int listen_fd;            /* SOCK_SEQPACKET, non-blocking, listening */
	uint64_t tick_ms;         /* upkeep interval */
	uint64_t exit_idle_ms;    /* 0: never exit for want of work */
	uint32_t clients_per_pid; /* connections one process may hold; 0: the default (64) */
};

/* After daemonizing: everything tied to the process (the loop, the timer, signals, the bulletin). */
MV_HIDDEN int mvb_core_init(const struct mvb_core_config *cfg);
/* Until SIGTERM, SIGINT, SIGHUP or idleness; then the services' fini. */
MV_HIDDEN int mvb_core_run(void);
