/* SPDX-License-Identifier: MIT */
/* The library's side of the broker connection: one per process, whatever libraries it loaded. It
 * knows no facility; those that keep state with the broker register a reconnect hook. Internal. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "../proto/wire.h"

/* Round trip with the broker, connecting (and starting it, if allowed) first. rep_fd[] gets the reply's
 * descriptors when the type carries any (caller closes; room for as many as the type carries).
 * -ENOTCONN without a broker; -ETIMEDOUT if the connection or the answer does not come within
 * mvc_timeout_ms(false) (MEMVISOR_TIMEOUT_MS, default 50 ms), -EAGAIN if the broker does not even take
 * the request. A timed-out request keeps the connection: its answer is recognised and dropped when it
 * comes, never taken for a later one's. */
MV_PRIVATE int mvc_request(uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep, int *rep_fd);

/* The same with the administrative bound (MEMVISOR_ADMIN_TIMEOUT_MS, default 5 s): purges, settings and
 * listings, whose work grows with what the broker manages and which no pin, unpin or constructor sends. */
MV_HIDDEN int mvc_request_admin(uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep,
				int *rep_fd);

/* The same for a message without payload or descriptors, from a library constructor: within the
 * ordinary bound, and not retried right after a constructor found the broker silent. */
MV_PRIVATE int mvc_request_early(uint8_t type);

/* For the Xen libraries' constructors: this process is a domain from now on (MEMVISOR_XEN_DOMID's, if
 * set), and so is each of its fork children, a new one, from the fork on. Within the ordinary bound. */
MV_PRIVATE void mvc_domain_init(void);
/* 0, or why the domain MEMVISOR_XEN_DOMID chose cannot be this process's (-EEXIST: taken; -EINVAL:
 * reserved or malformed; -EBUSY: the process is another domain already): the Xen libraries then fail. */
MV_PRIVATE int mvc_domain_check(void);

/* The bound in milliseconds, read from the environment each time: ordinary or administrative. */
MV_HIDDEN int mvc_timeout_ms(bool admin);

/* For a facility that keeps state with the broker: fn runs, under the connection lock, each time a
 * connection is made (after a broker restart, in a forked child, after a change of runtime directory),
 * so that it can re-establish that state with mvc_exchange_locked. */
MV_PRIVATE void mvc_on_connect(void (*fn)(void));

/* fn runs, with the lock held, each time the connection lock is about to be let go: deferred one-way
 * work of threads that found it busy. Must be cheap when there is nothing to do. */
MV_HIDDEN void mvc_on_release(void (*fn)(void));

/* The connection lock, handed out in arrival order, within the ordinary bound (-ETIMEDOUT otherwise);
 * trylock takes it only if nobody has it or waits. Whoever holds it has a deadline that every exchange
 * and connection it makes keeps to. */
MV_HIDDEN int mvc_lock(void);
MV_HIDDEN bool mvc_trylock(void);
MV_HIDDEN void mvc_unlock(void);
/* With the lock held: connect if needed. retry_now ignores the spacing of failed attempts; autostart
 * may start a broker (MEMVISOR_AUTOSTART permitting). */
MV_HIDDEN int mvc_connect_locked(bool retry_now, bool autostart);
MV_HIDDEN bool mvc_connected_locked(void);
/* Without the lock and without a round trip: the generation of the connection if it is open and the
 * broker has not hung up on it, else 0. What a facility keeps in memory shared with the broker (the
 * grant tables) is good while this stays what it was when the broker gave it. */
MV_PRIVATE uint64_t mvc_epoch(void);
/* Counts connections made: what was established under an older one is gone from the broker. */
MV_HIDDEN uint64_t mvc_generation_locked(void);
/* A round trip on the current connection (none is made); a transport error drops it, a timeout does
 * not. */
MV_HIDDEN int mvc_exchange_locked(uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep,
				  int *rep_fd);
/* The same with several descriptors and no reply payload (an event channel's two eventfds). */
MV_PRIVATE int mvc_exchange_fds_locked(uint8_t type, const void *payload, size_t len, const int *fds, unsigned nfds);
/* Never waits: dropped when the socket is full. */
MV_HIDDEN void mvc_send_oneway_locked(uint8_t type, const void *payload, size_t len, int fd);
MV_HIDDEN void mvc_send_oneway_fds_locked(uint8_t type, const void *payload, size_t len, const int *fds, unsigned nfds);
/* mvc_exchange_fds_locked with the reply (rep may be NULL). */
MV_HIDDEN int mvc_exchange_fds_rep_locked(uint8_t type, const void *payload, size_t len, const int *fds, unsigned nfds,
					  struct mvw_msg *rep);
/* Drops the connection if the broker hung up. */
MV_HIDDEN void mvc_check_alive_locked(void);
/* The broker's bulletin page, readable without the lock (NULL before the first connection). */
MV_HIDDEN struct mvw_bulletin *mvc_bulletin(void);

/* Low-level pieces shared with the CLI. */
MV_HIDDEN int mvc_connect_socket(const char *path);
/* By deadline (CLOCK_MONOTONIC ns). With abandoned, a timeout leaves the request counted there, and
 * answers to such requests are dropped; without, a timeout leaves the socket out of step. */
MV_HIDDEN int mvc_exchange(int sock, uint32_t *seq, uint8_t type, const void *payload, size_t len, int fd,
			   struct mvw_msg *rep, int *rep_fd, uint64_t deadline, unsigned *abandoned);
MV_HIDDEN int mvc_spawn_broker(void);
