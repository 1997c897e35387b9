/* SPDX-License-Identifier: MIT */
/* Regions and the broker: which regions this process holds (the broker re-learns them after a restart,
 * in a forked child, or when the process names another broker), handing a region to the broker once
 * something in it is unpinned, the budget hint, and restores. Everything goes over the one broker
 * connection (lib/client.h), under its lock. */
#define _GNU_SOURCE
#include "attach.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "lib/client.h"
#include "region.h"

#define LIVENESS_INTERVAL_NS (100ull * 1000 * 1000)

/* The regions this process holds. Their own lock, taken after the connection's when both are held:
 * creating or freeing a region must never wait for the connection longer than the bound, and a
 * region being freed must leave the list whether the connection could be had or not. */
static pthread_mutex_t list_m = PTHREAD_MUTEX_INITIALIZER;
static struct mv_region *attached;
static _Atomic uint64_t last_liveness_ns;
static _Atomic bool handover_pending, kick_pending_here;
static pthread_once_t hook_once = PTHREAD_ONCE_INIT;

static int attach_locked(struct mv_region *r)
{
	struct mvw_req_attach req = { .ctl_fdnum = r->ctl_fd };
	struct mvw_msg rep;
	int fds[2] = { r->fd, r->ctl_fd };
	int e = mvc_exchange_fds_rep_locked(MV_MSG_ATTACH, &req, sizeof(req), fds, 2, &rep);

	if (e < 0)
		return e;
	r->broker_id = rep.u.attach_rep.region_id;
	r->attached_gen = mvc_generation_locked();
	r->attached_pid = getpid();
	return 0;
}

static void reattach_all_locked(void)
{
	/* A transport error drops the connection, a timeout spends the bound: the rest would fail at once.
	 * Those left out are handed over by their next unpin all the same. */
	pthread_mutex_lock(&list_m);
	for (struct mv_region *r = attached; r; r = r->reg_next)
		if (attach_locked(r) < 0)
			break;
	pthread_mutex_unlock(&list_m);
}

/* Run by whichever thread lets the connection go: what unpins could not send because it was busy. */
static void deferred_locked(void)
{
	if (!mvc_connected_locked())
		return; /* what is pending goes with the next connection's re-attach */
	if (atomic_exchange(&handover_pending, false)) {
		pthread_mutex_lock(&list_m);
		for (struct mv_region *r = attached; r; r = r->reg_next)
			if (atomic_exchange(&r->handover_wanted, false) && !atomic_load(&r->view.hdr->broker_holds)) {
				struct mvw_req_attach req = { .flags = MV_ATTACH_REQ_ONEWAY, .ctl_fdnum = r->ctl_fd };
				int fds[2] = { r->fd, r->ctl_fd };
				mvc_send_oneway_fds_locked(MV_MSG_ATTACH, &req, sizeof(req), fds, 2);
			}
		pthread_mutex_unlock(&list_m);
	}
	struct mvw_bulletin *b = mvc_bulletin();
	if (atomic_exchange(&kick_pending_here, false) && b && atomic_exchange(&b->kick_pending, 1) == 0)
		mvc_send_oneway_locked(MV_MSG_KICK, NULL, 0, -1);
}

static void register_hook(void)
{
	mvc_on_connect(reattach_all_locked);
	mvc_on_release(deferred_locked);
}

void mvr_attach_add(struct mv_region *r)
{
	pthread_once(&hook_once, register_hook);
	pthread_mutex_lock(&list_m);
	r->reg_prev = NULL;
	r->reg_next = attached;
	if (attached)
		attached->reg_prev = r;
	attached = r;
	pthread_mutex_unlock(&list_m);
	/* A new connection re-attaches every region, this one included; an existing one needs telling.
	 * Without the connection in time, the region's first unpin hands it over instead. */
	if (mvc_lock() < 0)
		return;
	if (mvc_connect_locked(true, true) == 0 && r->attached_gen != mvc_generation_locked())
		(void)attach_locked(r);
	mvc_unlock();
}

void mvr_attach_remove(struct mv_region *r)
{
	pthread_mutex_lock(&list_m);
	if (r->reg_prev)
		r->reg_prev->reg_next = r->reg_next;
	else if (attached == r)
		attached = r->reg_next;
	if (r->reg_next)
		r->reg_next->reg_prev = r->reg_prev;
	r->reg_prev = r->reg_next = NULL;
	pthread_mutex_unlock(&list_m);
	/* Without the connection in time the broker learns it from the inode's end (inotify). */
	if (mvc_lock() < 0)
		return;
	if (r->attached_gen && r->attached_gen == mvc_generation_locked() && r->attached_pid == getpid() &&
	    mvc_connected_locked()) {
		struct mvw_req_detach req = { .region_id = r->broker_id };
		(void)mvc_exchange_locked(MV_MSG_DETACH, &req, sizeof(req), -1, NULL, NULL);
	}
	mvc_unlock();
}

void mvr_unpinned_changed(struct mv_region *r, int64_t delta)
{
	static __thread unsigned calls;
	struct mvw_bulletin *b = mvc_bulletin();
	bool need_hold, need_kick = false, check_alive = false;
	uint64_t budget = b ? atomic_load_explicit(&b->budget_pages, memory_order_relaxed) : 0;

	/* The hint only matters while a budget is set; the broker re-anchors it when one is. */
	if (budget && delta)
		atomic_fetch_add_explicit(&b->unpinned_hint, delta, memory_order_relaxed);
	if (delta <= 0)
		return;
	/* Pairs with the broker clearing broker_holds and then rescanning: either it sees our
	 * unpinned pages or we see the flag clear and hand it the fd again. */
	atomic_thread_fence(memory_order_seq_cst);
	need_hold = !atomic_load(&r->view.hdr->broker_holds) && !r->ctl_private;
	if (budget)
		need_kick = (uint64_t)atomic_load_explicit(&b->unpinned_hint, memory_order_relaxed) > budget &&
			    !atomic_load_explicit(&b->kick_pending, memory_order_relaxed);
	if ((++calls & 255) == 0) {
		uint64_t now = mvu_now_ns();
		check_alive =
			now - atomic_load_explicit(&last_liveness_ns, memory_order_relaxed) > LIVENESS_INTERVAL_NS;
	}
	if (!need_hold && !need_kick && !check_alive)
		return;

	/* Slow path: a syscall or two, at most once per transition or per liveness interval. trylock: an
	 * unpin never waits behind another thread's broker round trip; the thread that has the
	 * connection sends what this one could not when it lets it go. */
	if (!mvc_trylock()) {
		if (need_hold) {
			atomic_store(&r->handover_wanted, true);
			atomic_store(&handover_pending, true);
		}
		if (need_kick)
			atomic_store(&kick_pending_here, true);
		return;
	}
	atomic_store_explicit(&last_liveness_ns, mvu_now_ns(), memory_order_relaxed);
	mvc_check_alive_locked();
	if (!mvc_connected_locked()) {
		/* Reconnecting re-attaches every region, this one included. No autostart: an unpin must
		 * stay cheap; the next create or open starts a broker if needed. */
		if (mvc_connect_locked(false, false) < 0 || !need_hold)
			goto out;
		need_hold = !atomic_load(&r->view.hdr->broker_holds);
	}
	if (need_hold) {
		struct mvw_req_attach req = { .flags = MV_ATTACH_REQ_ONEWAY, .ctl_fdnum = r->ctl_fd };
		int fds[2] = { r->fd, r->ctl_fd };
		mvc_send_oneway_fds_locked(MV_MSG_ATTACH, &req, sizeof(req), fds, 2);
	}
	b = mvc_bulletin();
	if (need_kick && mvc_connected_locked() && b && atomic_exchange(&b->kick_pending, 1) == 0)
		mvc_send_oneway_locked(MV_MSG_KICK, NULL, 0, -1);
out:
	mvc_unlock();
}

int mvr_attach_find_ctl(uint64_t dev, uint64_t ino)
{
	int fd = -1;

	pthread_mutex_lock(&list_m);
	for (struct mv_region *r = attached; r; r = r->reg_next)
		if (r->ino == ino && r->dev == dev && r->ctl_fd >= 0) {
			fd = fcntl(r->ctl_fd, F_DUPFD_CLOEXEC, 3);
			break;
		}
	pthread_mutex_unlock(&list_m);
	return fd < 0 ? -ENOENT : fd;
}

int mvr_attach_fetch_ctl(int data_fd)
{
	struct mvw_msg rep;
	int ctl = -1, e = mvc_request(MV_MSG_REGION_CTL, NULL, 0, data_fd, &rep, &ctl);

	if (e == 0)
		return ctl;
	/* The broker's own answer: not a region it knows. Anything else: no broker to ask. */
	return e == -EINVAL ? -EINVAL : -ENOTCONN;
}

int mvr_restore(void *region, uint64_t pg0, uint64_t pg1)
{
	struct mv_region *r = region;
	struct mvw_req_restore req = { .pg0 = pg0, .pg1 = pg1 };
	struct mvw_msg rep;

	return mvc_request(MV_MSG_RESTORE, &req, sizeof(req), r->fd, &rep, NULL);
}

int mvr_area_bind(int area_fd, const struct mv_region *r)
{
	int fds[3] = { area_fd, r->fd, r->ctl_fd }, e;

	if (r->ctl_fd < 0)
		return -EINVAL; /* a private control block: nobody else could share the pins */
	e = mvc_lock();
	if (e < 0)
		return e;
	/* One way: the mmap that makes the region waits for nothing. A holder that asks for the region
	 * before the broker read this retries (mvr_area_fetch). */
	e = mvc_connect_locked(true, true);
	if (e == 0)
		mvc_send_oneway_fds_locked(MV_MSG_AREA_BIND, NULL, 0, fds, 3);
	mvc_unlock();
	return e;
}

int mvr_area_fetch(int area_fd, int *data_fd, int *ctl_fd)
{
	struct mvw_msg rep;
	int two[2] = { -1, -1 }, e;
	uint64_t until = mvu_now_ns() + (uint64_t)mvc_timeout_ms(false) * 1000000u;

	/* The record says mapped, so the binding is sent: it may still be on its way, on the mapper's
	 * connection. */
	while ((e = mvc_request(MV_MSG_AREA_GET, NULL, 0, area_fd, &rep, two)) == -ENOENT && mvu_now_ns() < until)
		usleep(500);
	if (e < 0)
		return e;
	*data_fd = two[0];
	*ctl_fd = two[1];
	return 0;
}
