/* SPDX-License-Identifier: MIT */
/* memvisord: the per-user broker. It plays the kernel's part: it tracks regions, purges unpinned pages
 * least recently unpinned first, and answers the library and the tools over one SOCK_SEQPACKET socket.
 * Single-threaded: one epoll loop. A client can only ever get an error back or be disconnected.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../proto/wire.h"
#include "../regions/registry.h"
#include "../merge/partitions.h"
#include "../xen/evtchn_broker.h"
#include "../xen/gnttab_broker.h"
#include "../xenstore/store.h"

#define MAX_CLIENTS 4096
#define MAX_XS_CLIENTS 1024

enum { KIND_BROKER = 1, KIND_XENSTORE = 2 }; /* first member of what epoll points at */

struct client {
	int kind;
	int fd;
	pid_t pid;
	uid_t uid;
	uint16_t domid; /* 0: not a domain (yet) */
	uint64_t domain_created_ns;
	uint64_t *ids; /* regions this client told us it holds */
	size_t nids, capids;
	struct client *prev, *next;
};

static struct broker {
	int listen_fd, epoll_fd, timer_fd, signal_fd, psi_fd, lock_fd, bulletin_fd;
	char dir[256];
	char sock_path[300];
	uid_t uid;
	pid_t pid;
	uint64_t start_ns;
	struct mv_bulletin *bulletin;
	struct client *clients;
	uint64_t nclients;
	struct mvb_registry reg;
	uint64_t budget_pages; /* UINT64_MAX: none */
	uint64_t min_available;
	uint64_t sweep_ms;
	bool psi;
	bool compress;
	uint64_t compressed_budget; /* 0: default, a share of RAM */
	uint64_t psi_events, purges_pressure, purges_budget, purges_explicit;
	uint64_t last_pressure_purge_ns;
	struct mvb_totals totals;
	struct mvp_state parts;
	uint8_t domid_used[MV_DOMID_LAST + 1];
	struct mve_state evt;
	struct mvg_state gnt;
	struct mvx_store *xs;
	int xs_listen_fd;
	char xs_path[300];
	uint64_t nxs;
	uint32_t next_domid;
	uint32_t ndomains;
	uint64_t exit_idle_ms;  /* 0: never exit for want of work */
	uint64_t idle_since_ns; /* 0: not idle */
	uint64_t xs_base_nodes; /* the tree every broker starts with */
	bool idle_exit_due;
} B = {
	.listen_fd = -1, .epoll_fd = -1, .timer_fd = -1, .signal_fd = -1, .psi_fd = -1, .lock_fd = -1,
	.bulletin_fd = -1, .xs_listen_fd = -1, .budget_pages = UINT64_MAX, .next_domid = MV_DOMID_FIRST, .sweep_ms = 1000, .psi = true, .compress = true,
};

static bool foreground;

static void logmsg(const char *fmt, ...)
{
	va_list ap;
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	fprintf(stderr, "memvisord[%d] %lld.%03ld: ", (int)getpid(), (long long)ts.tv_sec, ts.tv_nsec / 1000000);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int epoll_add(int fd, uint32_t events, void *ptr)
{
	struct epoll_event ev = { .events = events, .data.ptr = ptr };
	return epoll_ctl(B.epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

/* Tags for the non-client descriptors in epoll. */
static char TAG_XS_LISTEN, TAG_LISTEN, TAG_INOTIFY, TAG_TIMER, TAG_SIGNAL, TAG_PSI;

static void publish_budget(void)
{
	atomic_store(&B.bulletin->budget_pages, B.budget_pages == UINT64_MAX ? 0 : B.budget_pages);
}

static uint64_t enforce_budget(void)
{
	uint64_t runs, purged = 0, unpinned;

	/* Clear the kick first: an unpin that lands during the purge may kick again. */
	atomic_store(&B.bulletin->kick_pending, 0);
	unpinned = mvb_unpinned_pages(&B.reg);
	if (B.budget_pages != UINT64_MAX && unpinned > B.budget_pages) {
		purged = mvb_purge(&B.reg, unpinned - B.budget_pages, &runs);
		if (purged)
			B.purges_budget++;
		unpinned -= purged < unpinned ? purged : unpinned;
	}
	/* Re-anchor the hint on the truth: clients only ever add deltas to it. */
	atomic_store(&B.bulletin->unpinned_hint, (int64_t)unpinned);
	return purged;
}

static void pressure_purge(const char *why)
{
	uint64_t unpinned = mvb_unpinned_pages(&B.reg), target, runs, got;
	int64_t avail = mv_meminfo("MemAvailable");

	if (!unpinned && B.reg.compressed_pages) {
		mvb_store_shrink(&B.reg, mvb_store_bytes(&B.reg) / 4 * 3);
		B.purges_pressure++;
		return;
	}
	if (!unpinned)
		return;
	/* Like a shrinker: a share of what is there, more if we know the deficit. */
	target = unpinned / 4;
	if (target < (16u << 20) / MV_PAGE_SIZE)
		target = (16u << 20) / MV_PAGE_SIZE;
	if (B.min_available && avail >= 0 && (uint64_t)avail < B.min_available) {
		uint64_t deficit = (B.min_available - (uint64_t)avail) / MV_PAGE_SIZE * 2;
		if (deficit > target)
			target = deficit;
	}
	/* The compressed copies give way first, a quarter of them; then unpinned pages go (compressed, if
	 * there is still room). */
	if (B.reg.compressed_pages)
		mvb_store_shrink(&B.reg, mvb_store_bytes(&B.reg) / 4 * 3);
	got = mvb_purge(&B.reg, target, &runs);
	if (got) {
		B.purges_pressure++;
		logmsg("%s: purged %llu pages in %llu ranges", why, (unsigned long long)got, (unsigned long long)runs);
	}
	B.last_pressure_purge_ns = mv_now_ns();
	atomic_store(&B.bulletin->unpinned_hint, (int64_t)mvb_unpinned_pages(&B.reg));
}

/* Nobody connected and nothing anyone would miss: no region, no compressed page, no partition, no
 * domain and no xenstore node beyond the tree a fresh broker starts with. */
static bool holds_nothing(void)
{
	return B.nclients == 0 && B.nxs == 0 && B.reg.count == 0 && B.reg.compressed_pages == 0 &&
	       B.parts.nparts == 0 && B.ndomains == 0 && (!B.xs || mvx_store_nodes(B.xs) <= B.xs_base_nodes);
}

/* An auto-started broker is adopted by whoever reaps orphans; a child subreaper that waits for all its
 * children would wait for it forever. So it leaves once it has been idle for a while. */
static void check_idle(void)
{
	uint64_t now = mv_now_ns();

	if (!B.exit_idle_ms || !holds_nothing()) {
		B.idle_since_ns = 0;
		return;
	}
	if (!B.idle_since_ns)
		B.idle_since_ns = now;
	else if (now - B.idle_since_ns >= B.exit_idle_ms * 1000000ull)
		B.idle_exit_due = true;
}

static void on_timer(void)
{
	uint64_t expirations;

	if (read(B.timer_fd, &expirations, sizeof(expirations)) < 0)
		return;
	check_idle();
	mvb_sweep(&B.reg, &B.totals);
	mvp_collect(&B.parts);
	enforce_budget();
	if (B.min_available) {
		int64_t avail = mv_meminfo("MemAvailable");
		if (avail >= 0 && (uint64_t)avail < B.min_available)
			pressure_purge("MemAvailable below watermark");
	}
}

static void on_psi(void)
{
	B.psi_events++;
	pressure_purge("memory pressure (PSI)");
}

/* Xenstore clients: a byte stream each, in Xen's wire format, answered by the store. */
struct xs_client {
	int kind;
	int fd;
	bool want_out;
	struct mvx_conn *conn;
};

static void xs_drop(struct xs_client *x)
{
	epoll_ctl(B.epoll_fd, EPOLL_CTL_DEL, x->fd, NULL);
	close(x->fd);
	mvx_conn_free(x->conn);
	free(x);
	B.nxs--;
}

/* Sends what the store has for a client; what the socket does not take waits for EPOLLOUT. */
static void xs_flush(struct xs_client *x)
{
	const void *buf;
	size_t n = mvx_conn_pending(x->conn, &buf);
	while (n) {
		ssize_t w = send(x->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		mvx_conn_consume(x->conn, (size_t)w);
		n = mvx_conn_pending(x->conn, &buf);
	}
	bool want = n > 0;
	if (want != x->want_out) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0), .data.ptr = x };
		epoll_ctl(B.epoll_fd, EPOLL_CTL_MOD, x->fd, &ev);
		x->want_out = want;
	}
}

/* After anything that may have produced output (watch events reach other clients). */
static void xs_flush_all(void)
{
	struct mvx_conn *c;
	if (!B.xs)
		return;
	while ((c = mvx_store_next_overflowed(B.xs))) {
		logmsg("xenstore: dropping a client (domain %u) that does not read its events", mvx_conn_domid(c));
		xs_drop(mvx_conn_user(c));
	}
	while ((c = mvx_store_next_dirty(B.xs)))
		xs_flush(mvx_conn_user(c));
}

static void on_xs_client(struct xs_client *x, uint32_t events)
{
	char buf[16384];
	if (events & EPOLLOUT)
		xs_flush(x);
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
		for (int budget = 0; budget < 16; budget++) {
			ssize_t n = recv(x->fd, buf, sizeof(buf), MSG_DONTWAIT);
			if (n < 0 && errno == EAGAIN)
				break;
			if (n <= 0) {
				xs_drop(x);
				xs_flush_all();
				return;
			}
			int r = mvx_conn_input(x->conn, buf, (size_t)n);
			if (r == -EPROTO) {
				logmsg("xenstore: dropping a client (domain %u): message too long", mvx_conn_domid(x->conn));
				xs_drop(x);
				xs_flush_all();
				return;
			}
			if (r < 0)
				break; /* overflowed: dropped below */
		}
	}
	xs_flush_all();
}

static uint32_t domain_of_pid(pid_t pid);

static void on_xs_accept(void)
{
	for (;;) {
		struct ucred cred;
		socklen_t cl = sizeof(cred);
		int fd = accept4(B.xs_listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0)
			return;
		struct xs_client *x = NULL;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 || (cred.uid != B.uid && cred.uid != 0) ||
		    B.nxs >= MAX_XS_CLIENTS || !(x = calloc(1, sizeof(*x)))) {
			close(fd);
			continue;
		}
		x->kind = KIND_XENSTORE;
		x->fd = fd;
		/* a process that is a domain acts as it; anyone else is the toolstack, domain 0 */
		x->conn = mvx_conn_new(B.xs, domain_of_pid(cred.pid), x);
		if (!x->conn || epoll_add(fd, EPOLLIN | EPOLLRDHUP, x) < 0) {
			mvx_conn_free(x->conn);
			close(fd);
			free(x);
			continue;
		}
		B.nxs++;
	}
}

static void domain_name(pid_t pid, char *buf, size_t len)
{
	char path[64], comm[32] = "process";
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	FILE *f = fopen(path, "re");
	if (f) {
		if (fgets(comm, sizeof(comm), f))
			comm[strcspn(comm, "\n")] = '\0';
		fclose(f);
	}
	for (char *p = comm; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
		      *p == '_' || *p == '.'))
			*p = '_';
	snprintf(buf, len, "%s-%d", comm, (int)pid);
}

/* The process's domain, made on first use. A process is one domain however many connections it opens
 * (each library copy in it has its own: libxenevtchn, libxengnttab, ...). Ids are handed out
 * round-robin so a dead domain's id is not given to a new process at once (a peer still holding it
 * would otherwise reach a stranger). */
static int domain_assign(struct client *c)
{
	if (c->domid)
		return c->domid;
	for (struct client *o = B.clients; o; o = o->next)
		if (o != c && o->domid && o->pid == c->pid && o->uid == c->uid) {
			c->domid = o->domid;
			c->domain_created_ns = o->domain_created_ns;
			return c->domid;
		}
	if (B.ndomains >= MV_DOMID_LAST)
		return -ENOSPC;
	uint32_t d = B.next_domid;
	for (uint32_t tries = 0; tries < MV_DOMID_LAST; tries++) {
		if (d < MV_DOMID_FIRST || d > MV_DOMID_LAST)
			d = MV_DOMID_FIRST;
		if (!B.domid_used[d])
			break;
		d++;
	}
	B.domid_used[d] = 1;
	B.ndomains++;
	B.next_domid = d + 1;
	c->domid = (uint16_t)d;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	c->domain_created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	logmsg("domain %u is pid %d", d, (int)c->pid);
	if (B.xs) {
		char name[64];
		domain_name(c->pid, name, sizeof(name));
		mvx_domain_introduce(B.xs, d, name);
		xs_flush_all();
	}
	return (int)d;
}

static uint32_t domain_of_pid(pid_t pid)
{
	for (struct client *o = B.clients; o; o = o->next)
		if (o->domid && o->pid == pid)
			return o->domid;
	return 0;
}

static bool domain_alive(uint32_t domid)
{
	return domid >= MV_DOMID_FIRST && domid <= MV_DOMID_LAST && B.domid_used[domid];
}

static void domain_release(struct client *c)
{
	if (!c->domid)
		return;
	/* the domain ends with the process's last connection */
	for (struct client *o = B.clients; o; o = o->next)
		if (o != c && o->domid == c->domid) {
			c->domid = 0;
			return;
		}
	mve_domain_gone(&B.evt, c->domid);
	if (B.xs) {
		mvx_domain_release(B.xs, c->domid);
		xs_flush_all();
	}
	B.domid_used[c->domid] = 0;
	B.ndomains--;
	logmsg("domain %u (pid %d) is gone", c->domid, (int)c->pid);
	c->domid = 0;
}

static void gnt_notify(uint16_t dom, uint32_t port)
{
	mve_notify(&B.evt, dom, port);
}

static int make_domains_memfd(void)
{
	struct mv_domains_head head = { .magic = MV_DOMAINS_MAGIC, .rec_size = sizeof(struct mv_domain_rec) };
	size_t len = sizeof(head) + (size_t)B.ndomains * sizeof(struct mv_domain_rec);
	int fd = memfd_create("memvisor-domains", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	char *m = MAP_FAILED;
	if (ftruncate(fd, (off_t)len) == 0)
		m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED) {
		int e = -errno;
		close(fd);
		return e;
	}
	struct mv_domain_rec *recs = (struct mv_domain_rec *)(m + sizeof(head));
	for (struct client *c = B.clients; c && head.count < B.ndomains; c = c->next) {
		bool seen = false;
		for (uint32_t i = 0; i < head.count && !seen; i++)
			seen = recs[i].domid == c->domid;
		if (c->domid && !seen)
			recs[head.count++] = (struct mv_domain_rec){
				.domid = c->domid, .pid = c->pid, .uid = c->uid, .created_realtime_ns = c->domain_created_ns
			};
	}
	memcpy(m, &head, sizeof(head));
	munmap(m, len);
	/* the reader gets a copy nobody can change under it */
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

static void client_drop(struct client *c)
{
	/* grant notifications first: they may send events through ports the domain is about to lose */
	mvg_owner_gone(&B.gnt, c);
	domain_release(c);
	mvp_owner_gone(&B.parts, c);
	epoll_ctl(B.epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		B.clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c->ids);
	free(c);
	B.nclients--;
}

static void client_note_region(struct client *c, uint64_t id)
{
	for (size_t i = 0; i < c->nids; i++)
		if (c->ids[i] == id)
			return;
	if (c->nids == c->capids) {
		size_t n = c->capids ? c->capids * 2 : 8;
		uint64_t *v = realloc(c->ids, n * sizeof(*v));
		if (!v)
			return; /* holder lists are informational */
		c->ids = v;
		c->capids = n;
	}
	c->ids[c->nids++] = id;
}

static void client_forget_region(struct client *c, uint64_t id)
{
	for (size_t i = 0; i < c->nids; i++)
		if (c->ids[i] == id) {
			c->ids[i] = c->ids[--c->nids];
			return;
		}
}

static int reply_fds(struct client *c, const struct mv_wire_msg *req, int32_t status, const void *payload, size_t len,
		     const int *fds, unsigned nfds)
{
	unsigned char buf[MV_WIRE_MAX_PACKET];
	size_t n;
	ssize_t r;

	if (status < 0) {
		len = 0;
		nfds = 0;
	}
	n = mv_wire_encode(buf, req->hdr.type | MV_MSG_REPLY, req->hdr.seq, status, payload, len);
	r = mv_send_fds(c->fd, buf, n, fds, nfds, MSG_DONTWAIT);
	/* A client that does not read its replies loses its connection, never stalls the broker. */
	return r < 0 ? (int)r : 0;
}

static int reply(struct client *c, const struct mv_wire_msg *req, int32_t status, const void *payload, size_t len,
		 int fd)
{
	return reply_fds(c, req, status, payload, len, &fd, fd >= 0 ? 1 : 0);
}

static int make_regions_memfd(void)
{
	struct mv_regions_head head = { .magic = MV_REGIONS_MAGIC, .rec_size = sizeof(struct mv_region_rec) };
	size_t len = sizeof(head) + B.reg.count * sizeof(struct mv_region_rec);
	struct mv_region_rec *recs;
	char *m;
	int fd = memfd_create("memvisor-regions", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)len) < 0)
		goto fail;
	m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		goto fail;
	recs = (struct mv_region_rec *)(m + sizeof(head));
	for (struct mvb_region *r = B.reg.all; r; r = r->next) {
		struct mv_region_rec *rec = &recs[head.count++];
		struct mv_ctl_counts cnt;

		mvb_region_counts(r, &cnt);
		rec->id = r->id;
		rec->size = r->size;
		rec->npages = r->npages;
		rec->pinned = cnt.pinned + cnt.other;
		rec->unpinned = cnt.unpinned + cnt.purging + cnt.compressed; /* all unpinned pages */
		rec->purged = cnt.purged;
		rec->purged_total = r->purged_total;
		rec->compressed = cnt.compressed;
		rec->restores = r->restores;
		rec->flags = (r->hold_fd >= 0 ? MV_ATTACH_HELD : 0) | ((uint32_t)r->flags << 8) |
			     (r->ctl && (atomic_load(&r->ctl->flags) & MV_CTL_F_NO_COMPRESS) ? (MV_CTL_F_NO_COMPRESS << 16) : 0);
		snprintf(rec->name, sizeof(rec->name), "%s", r->name);
	}
	/* Holders: invert the clients' lists. Few clients hold many regions, so a search is fine. */
	for (struct client *c = B.clients; c; c = c->next)
		for (size_t i = 0; i < c->nids; i++)
			for (uint32_t k = 0; k < head.count; k++)
				if (recs[k].id == c->ids[i]) {
					if (recs[k].nholders < MV_REC_MAX_HOLDERS)
						recs[k].holders[recs[k].nholders++] = c->pid;
					break;
				}
	memcpy(m, &head, sizeof(head));
	munmap(m, len);
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
		goto fail;
	return fd;
fail:;
	int e = -errno;
	close(fd);
	return e;
}

static void fill_status(struct mv_rep_status *s)
{
	struct mallinfo2 mi = mallinfo2();

	mvb_totals(&B.reg, &B.totals); /* a status request must not change what it reports on */
	memset(s, 0, sizeof(*s));
	s->broker_pid = B.pid;
	s->uid = B.uid;
	s->uptime_ns = mv_now_ns() - B.start_ns;
	s->clients = B.nclients;
	s->regions = B.reg.count;
	s->regions_held = B.reg.held;
	s->pages_total = B.totals.pages;
	s->pages_pinned = B.totals.pinned;
	s->pages_unpinned = B.totals.unpinned;
	s->pages_purged = B.totals.purged;
	s->purged_pages_total = B.reg.purged_pages_total;
	s->purge_runs = B.reg.purge_runs;
	s->purges_pressure = B.purges_pressure;
	s->purges_budget = B.purges_budget;
	s->purges_explicit = B.purges_explicit;
	s->unpinned_budget = B.budget_pages == UINT64_MAX ? UINT64_MAX : B.budget_pages * MV_PAGE_SIZE;
	s->min_available = B.min_available;
	s->psi_events = B.psi_events;
	s->psi_enabled = B.psi_fd >= 0;
	s->inotify_overflows = (uint32_t)B.reg.overflows;
	s->broker_heap_bytes = mi.uordblks;
	s->domains = B.ndomains;
	s->evtchn_channels = B.evt.nchans;
	s->gnt_shares = B.gnt.nshares;
	s->gnt_maps = B.gnt.nmaps;
	if (B.xs) {
		mvx_store_counts(B.xs, &s->xs_connections, &s->xs_watches, &s->xs_transactions);
		s->xs_nodes = mvx_store_nodes(B.xs);
	}
	s->compress_enabled = B.reg.compress;
	s->pages_compressed = B.reg.compressed_pages;
	if (B.reg.store) {
		struct mv_store_stats st;
		mv_store_stats(B.reg.store, &st);
		s->compressed_bytes = st.compr_data_size;
		s->compressed_mem_used = st.mem_used_total;
	}
	s->compressed_budget = B.reg.store_budget;
	s->compressions_total = B.reg.compressions;
	s->restores_total = B.reg.restores;
	s->evictions_total = B.reg.evictions;
	s->incompressible_total = B.reg.incompressible;
}

static void dispatch(struct client *c, struct mv_wire_msg *m, int *fds)
{
	uint8_t type = m->hdr.type;

	switch (type) {
	case MV_MSG_HELLO: {
		struct mv_rep_hello rep = { .version = MV_WIRE_VERSION, .broker_pid = B.pid, .page_size = MV_PAGE_SIZE };
		if (m->u.hello.version != MV_WIRE_VERSION) {
			reply(c, m, -EPROTONOSUPPORT, NULL, 0, -1);
			return;
		}
		reply(c, m, 0, &rep, sizeof(rep), B.bulletin_fd);
		return;
	}
	case MV_MSG_ATTACH: {
		struct mvb_region *r = NULL;
		struct mv_rep_attach rep = { 0 };
		bool created;
		int e = mvb_attach(&B.reg, fds[0], &r, &created);

		if (e == 0) {
			client_note_region(c, r->id);
			rep.region_id = r->id;
			rep.flags = (created ? MV_ATTACH_NEW : 0) | (r->hold_fd >= 0 ? MV_ATTACH_HELD : 0);
			/* Someone just unpinned: the budget may need enforcing right away. */
			if (B.budget_pages != UINT64_MAX && r->hold_fd >= 0)
				enforce_budget();
		}
		if (!(m->u.attach.flags & MV_ATTACH_REQ_ONEWAY))
			reply(c, m, e, &rep, sizeof(rep), -1);
		return;
	}
	case MV_MSG_DETACH:
		client_forget_region(c, m->u.detach.region_id);
		reply(c, m, 0, NULL, 0, -1);
		return;
	case MV_MSG_KICK:
		enforce_budget();
		return;
	case MV_MSG_PURGE: {
		struct mv_rep_purge rep = { 0 };
		uint64_t t0 = mv_now_ns(), target;

		switch (m->u.purge.mode) {
		case MV_PURGE_BYTES:
			target = mv_round_up(m->u.purge.bytes, MV_PAGE_SIZE) / MV_PAGE_SIZE;
			if (m->u.purge.bytes > UINT64_MAX - MV_PAGE_SIZE)
				target = UINT64_MAX;
			rep.pages = mvb_purge(&B.reg, target, &rep.runs);
			B.purges_explicit++;
			break;
		case MV_PURGE_EVERYTHING:
			rep.pages = mvb_purge(&B.reg, UINT64_MAX, &rep.runs);
			B.purges_explicit++;
			break;
		case MV_PURGE_BUDGET:
			rep.pages = enforce_budget();
			break;
		default:
			reply(c, m, -EINVAL, NULL, 0, -1);
			return;
		}
		rep.ns = mv_now_ns() - t0;
		rep.unpinned_left = mvb_unpinned_pages(&B.reg);
		atomic_store(&B.bulletin->unpinned_hint, (int64_t)rep.unpinned_left);
		reply(c, m, 0, &rep, sizeof(rep), -1);
		return;
	}
	case MV_MSG_STATUS: {
		struct mv_rep_status s;
		fill_status(&s);
		reply(c, m, 0, &s, sizeof(s), -1);
		return;
	}
	case MV_MSG_REGIONS: {
		int fd = make_regions_memfd();
		reply(c, m, fd < 0 ? fd : 0, NULL, 0, fd);
		if (fd >= 0)
			close(fd);
		return;
	}
	case MV_MSG_RESTORE: {
		struct mv_rep_restore rep = { 0 };
		int e = mvb_restore(&B.reg, fds[0], m->u.restore.pg0, m->u.restore.pg1, &rep.restored, &rep.lost);
		reply(c, m, e, &rep, sizeof(rep), -1);
		return;
	}
	case MV_MSG_DOMAIN: {
		int d = domain_assign(c);
		struct mv_rep_domain rep = { .domid = d > 0 ? (uint32_t)d : 0 };
		reply(c, m, d < 0 ? d : 0, &rep, sizeof(rep), -1);
		return;
	}
	case MV_MSG_DOMAINS: {
		int fd = make_domains_memfd();
		reply(c, m, fd < 0 ? fd : 0, NULL, 0, fd);
		if (fd >= 0)
			close(fd);
		return;
	}
	case MV_MSG_EVTCHN_BIND_UNBOUND:
	case MV_MSG_EVTCHN_BIND_INTERDOMAIN: {
		struct mv_rep_evtchn_bind rep = { 0 };
		int efds[2] = { -1, -1 };
		int e = domain_assign(c);
		if (e > 0)
			e = type == MV_MSG_EVTCHN_BIND_UNBOUND
				    ? mve_bind_unbound(&B.evt, c->domid, m->u.evtchn_bind.remote_domid, domain_alive,
						       &rep.port, efds)
				    : mve_bind_interdomain(&B.evt, c->domid, m->u.evtchn_bind.remote_domid,
							   m->u.evtchn_bind.remote_port, &rep.port, efds);
		reply_fds(c, m, e < 0 ? e : 0, &rep, sizeof(rep), efds, 2);
		return;
	}
	case MV_MSG_EVTCHN_UNBIND:
		reply(c, m, c->domid ? mve_unbind(&B.evt, c->domid, m->u.evtchn_unbind.port) : -EINVAL, NULL, 0, -1);
		return;
	case MV_MSG_GNT_SHARE: {
		struct mv_rep_gnt_share rep = { 0 };
		int fd = -1, e = domain_assign(c);
		if (e > 0)
			e = mvg_share(&B.gnt, c, c->domid, &m->u.gnt_share, &rep, &fd);
		reply(c, m, e < 0 ? e : 0, &rep, sizeof(rep), fd);
		if (fd >= 0 && e < 0)
			close(fd);
		return;
	}
	case MV_MSG_GNT_UNSHARE:
		reply(c, m, mvg_unshare(&B.gnt, c, &m->u.gnt_unshare), NULL, 0, -1);
		return;
	case MV_MSG_GNT_MAP: {
		struct mv_rep_gnt_map rep = { 0 };
		int fd = -1, e = domain_assign(c);
		if (e > 0)
			e = mvg_map(&B.gnt, c, c->domid, &m->u.gnt_map, &rep, &fd);
		reply(c, m, e < 0 ? e : 0, &rep, sizeof(rep), fd);
		return;
	}
	case MV_MSG_GNT_UNMAP:
		reply(c, m, mvg_unmap(&B.gnt, c, m->u.gnt_unmap.map_id), NULL, 0, -1);
		return;
	case MV_MSG_MERGE_JOIN: {
		struct mv_rep_merge_join rep = { 0 };
		int pfds[2];
		char name[sizeof(m->u.merge_join.name) + 1];
		memcpy(name, m->u.merge_join.name, sizeof(m->u.merge_join.name));
		name[sizeof(name) - 1] = '\0';
		int e = mvp_join(&B.parts, name, c->uid, fds[0], c, &rep.member_id, &rep.slot, &rep.gen, &pfds[0], &pfds[1]);
		reply_fds(c, m, e, &rep, sizeof(rep), pfds, 2);
		return;
	}
	case MV_MSG_MERGE_PROMOTE: {
		struct mv_rep_merge_promote rep = { 0 };
		int e = mvp_promote(&B.parts, m->u.merge_promote.member_id, c, m->u.merge_promote.n, &rep.done);
		reply(c, m, e, &rep, sizeof(rep), -1);
		return;
	}
	case MV_MSG_MERGE_LEAVE:
		reply(c, m, mvp_leave(&B.parts, m->u.merge_leave.member_id, c), NULL, 0, -1);
		return;
	case MV_MSG_CONFIG:
		/* Only the broker's owner (or root) ever gets this far: see on_accept. */
		switch (m->u.config.key) {
		case MV_CONFIG_COMPRESS:
			if (m->u.config.value > 1) {
				reply(c, m, -EINVAL, NULL, 0, -1);
				return;
			}
			B.reg.compress = m->u.config.value == 1;
			break;
		case MV_CONFIG_COMPRESSED_BUDGET:
			B.reg.store_budget = m->u.config.value;
			mvb_store_shrink(&B.reg, B.reg.store_budget);
			break;
		case MV_CONFIG_UNPINNED_BUDGET:
			B.budget_pages = m->u.config.value == UINT64_MAX ? UINT64_MAX
									   : m->u.config.value / MV_PAGE_SIZE;
			publish_budget();
			enforce_budget();
			break;
		case MV_CONFIG_MIN_AVAILABLE:
			B.min_available = m->u.config.value;
			break;
		default:
			reply(c, m, -EINVAL, NULL, 0, -1);
			return;
		}
		reply(c, m, 0, NULL, 0, -1);
		return;
	}
	reply(c, m, -EOPNOTSUPP, NULL, 0, -1);
}

static void on_client(struct client *c, uint32_t events)
{
	unsigned char buf[MV_WIRE_MAX_PACKET + 1];
	int fds[MV_MAX_FDS];

	for (int budget = 0; budget < 64; budget++) {
		unsigned nfds = MV_MAX_FDS;
		struct mv_wire_msg m;
		ssize_t n = mv_recv_fds(c->fd, buf, sizeof(buf), fds, &nfds, MSG_DONTWAIT);
		int r;

		if (n == -EAGAIN)
			break;
		if (n == -EMSGSIZE) {
			/* Oversized packet or too many fds: refuse it, keep the connection. */
			struct mv_wire_msg fake = { 0 };
			fake.hdr.type = MV_MSG_HELLO;
			reply(c, &fake, -EMSGSIZE, NULL, 0, -1);
			continue;
		}
		if (n <= 0) {
			client_drop(c);
			return;
		}
		r = mv_wire_decode(buf, (size_t)n, nfds, 0, &m);
		if (r < 0) {
			struct mv_wire_hdr h;
			if ((size_t)n >= sizeof(h)) {
				memcpy(&h, buf, sizeof(h));
				m.hdr = h;
				m.hdr.type &= (uint8_t)~MV_MSG_REPLY;
				if (m.hdr.type == MV_MSG_KICK)
					m.hdr.type = 0; /* KICK never gets a reply; keep error replies unambiguous */
				if (reply(c, &m, r, NULL, 0, -1) == -EAGAIN) {
					mv_close_fds(fds, nfds);
					client_drop(c);
					return;
				}
			}
			mv_close_fds(fds, nfds);
			continue;
		}
		dispatch(c, &m, fds);
		mv_close_fds(fds, nfds);
	}
	if (events & (EPOLLHUP | EPOLLERR)) {
		/* Drain what is left first: a client may send and exit. */
		unsigned nfds = MV_MAX_FDS;
		if (mv_recv_fds(c->fd, buf, sizeof(buf), fds, &nfds, MSG_DONTWAIT | MSG_PEEK) == -EAGAIN ||
		    events & EPOLLERR)
			client_drop(c);
	}
}

static void on_accept(void)
{
	for (;;) {
		struct ucred cred;
		socklen_t cl = sizeof(cred);
		struct client *c;
		int fd = accept4(B.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0)
			return;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 ||
		    (cred.uid != B.uid && cred.uid != 0)) {
			logmsg("refused connection from uid %u", (unsigned)cred.uid);
			close(fd);
			continue;
		}
		if (B.nclients >= MAX_CLIENTS || !(c = calloc(1, sizeof(*c)))) {
			close(fd);
			continue;
		}
		c->kind = KIND_BROKER;
		c->fd = fd;
		c->pid = cred.pid;
		c->uid = cred.uid;
		if (epoll_add(fd, EPOLLIN | EPOLLRDHUP, c) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = B.clients;
		if (B.clients)
			B.clients->prev = c;
		B.clients = c;
		B.nclients++;
	}
}

static int setup_psi(void)
{
	/* Unprivileged triggers need a window that is a multiple of 2 s. */
	const char *trig = "some 150000 2000000";
	int fd = open("/proc/pressure/memory", O_RDWR | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (write(fd, trig, strlen(trig) + 1) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

/* Detach once listening, so that whoever started us can connect as soon as we return. Everything that
 * is tied to the process (signalfd readiness, epoll, the bulletin's pid) is created after this. */
static int daemonize(void)
{
	char log_path[300];
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid > 0)
		_exit(0);
	setsid();
	B.pid = getpid();
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	snprintf(log_path, sizeof(log_path), "%s/memvisord.log", B.dir);
	int log = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		close(null);
	}
	if (log >= 0) {
		dup2(log, 2);
		close(log);
	}
	return chdir("/") < 0 ? -errno : 0;
}

static int setup(int ready_fd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct rlimit rl;
	sigset_t mask;
	int r;

	B.gnt.notify = gnt_notify;

	B.uid = getuid();
	B.start_ns = mv_now_ns();
	if (mkdir(B.dir, 0700) < 0 && errno != EEXIST) {
		logmsg("cannot create %s: %s", B.dir, strerror(errno));
		return -errno;
	}
	setenv("MEMVISOR_RUNTIME_DIR", B.dir, 1);
	char check[256];
	if ((r = mv_runtime_dir(check, sizeof(check), 0)) < 0) {
		logmsg("runtime directory %s must be ours and mode 0700: %s", B.dir, strerror(-r));
		return r;
	}
	char lock_path[300];
	snprintf(lock_path, sizeof(lock_path), "%s/broker.lock", B.dir);
	B.lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (B.lock_fd < 0)
		return -errno;
	if (flock(B.lock_fd, LOCK_EX | LOCK_NB) < 0)
		return -EALREADY;

	snprintf(B.sock_path, sizeof(B.sock_path), "%s/broker.sock", B.dir);
	if (strlen(B.sock_path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, B.sock_path);
	unlink(B.sock_path);
	if (B.xs_path[0])
		unlink(B.xs_path); /* stale: we hold the lock, so no live broker owns it */
	B.listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (B.listen_fd < 0 || bind(B.listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(B.listen_fd, 128) < 0) {
		logmsg("cannot listen on %s: %s", B.sock_path, strerror(errno));
		return -errno;
	}
	chmod(B.sock_path, 0600);
	snprintf(B.xs_path, sizeof(B.xs_path), "%s/xenstored.sock", B.dir);
	if (strlen(B.xs_path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, B.xs_path);
	unlink(B.xs_path);
	B.xs_listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (B.xs_listen_fd < 0 || bind(B.xs_listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(B.xs_listen_fd, 128) < 0) {
		logmsg("cannot listen on %s: %s", B.xs_path, strerror(errno));
		return -errno;
	}
	chmod(B.xs_path, 0600);
	B.xs = mvx_store_new();
	if (!B.xs)
		return -ENOMEM;
	mvx_store_set_domain_check(B.xs, domain_alive);
	B.xs_base_nodes = mvx_store_nodes(B.xs);
	if (!foreground && (r = daemonize()) < 0)
		return r;

	/* Every held region costs a descriptor; take all we may. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	B.bulletin_fd = memfd_create("memvisor-bulletin", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (B.bulletin_fd < 0 || ftruncate(B.bulletin_fd, MV_PAGE_SIZE) < 0 ||
	    fcntl(B.bulletin_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		return -errno;
	B.bulletin = mmap(NULL, MV_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, B.bulletin_fd, 0);
	if (B.bulletin == MAP_FAILED)
		return -errno;
	B.bulletin->magic = MV_BULLETIN_MAGIC;
	B.bulletin->broker_pid = B.pid;
	publish_budget();

	r = mvb_registry_init(&B.reg);
	if (r < 0)
		return r;
	if (!B.compressed_budget) {
		int64_t total = mv_meminfo("MemTotal");
		B.compressed_budget = total > 0 ? (uint64_t)total / 20 : (256ull << 20);
	}
	r = mvb_tier_init(&B.reg, B.compress, B.compressed_budget);
	if (r < 0)
		return r;
	B.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	B.timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (B.epoll_fd < 0 || B.timer_fd < 0)
		return -errno;
	/* The idle check rides on the upkeep timer: make it tick often enough for a short grace. */
	uint64_t tick_ms = B.sweep_ms;
	if (B.exit_idle_ms && B.exit_idle_ms / 4 < tick_ms)
		tick_ms = B.exit_idle_ms / 4 > 10 ? B.exit_idle_ms / 4 : 10;
	struct itimerspec its = {
		.it_interval = { .tv_sec = (time_t)(tick_ms / 1000), .tv_nsec = (long)(tick_ms % 1000) * 1000000 },
	};
	its.it_value = its.it_interval;
	timerfd_settime(B.timer_fd, 0, &its, NULL);

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	B.signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

	if (B.psi) {
		B.psi_fd = setup_psi();
		if (B.psi_fd < 0)
			logmsg("PSI triggers unavailable (%s); relying on the MemAvailable watermark",
			       strerror(-B.psi_fd));
	}
	if (epoll_add(B.listen_fd, EPOLLIN, &TAG_LISTEN) < 0 || epoll_add(B.xs_listen_fd, EPOLLIN, &TAG_XS_LISTEN) < 0 || epoll_add(B.reg.inotify_fd, EPOLLIN, &TAG_INOTIFY) < 0 ||
	    epoll_add(B.timer_fd, EPOLLIN, &TAG_TIMER) < 0 || epoll_add(B.signal_fd, EPOLLIN, &TAG_SIGNAL) < 0)
		return -errno;
	if (B.psi_fd >= 0 && epoll_add(B.psi_fd, EPOLLPRI, &TAG_PSI) < 0) {
		close(B.psi_fd);
		B.psi_fd = -1;
	}
	if (ready_fd >= 0) {
		(void)!write(ready_fd, "R", 1);
		close(ready_fd);
	}
	return 0;
}

static int run(void)
{
	struct epoll_event evs[64];

	logmsg("listening on %s (budget %s, min-available %llu, PSI %s, compressed tier %s, %llu bytes)", B.sock_path,
	       B.budget_pages == UINT64_MAX ? "none" : "set", (unsigned long long)B.min_available,
	       B.psi_fd >= 0 ? "on" : "off", B.reg.compress ? "on" : "off", (unsigned long long)B.reg.store_budget);
	for (;;) {
		int n = epoll_wait(B.epoll_fd, evs, 64, -1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;

			if (p == &TAG_LISTEN)
				on_accept();
			else if (p == &TAG_XS_LISTEN)
				on_xs_accept();
			else if (p == &TAG_INOTIFY)
				mvb_handle_inotify(&B.reg);
			else if (p == &TAG_TIMER)
				on_timer();
			else if (p == &TAG_PSI)
				on_psi();
			else if (p == &TAG_SIGNAL) {
				struct signalfd_siginfo si;
				if (read(B.signal_fd, &si, sizeof(si)) == sizeof(si)) {
					logmsg("exiting on signal %u", si.ssi_signo);
					return 0;
				}
			} else if (*(int *)p == KIND_XENSTORE)
				on_xs_client(p, evs[i].events);
			else
				on_client(p, evs[i].events);
		}
		if (B.idle_exit_due) {
			logmsg("exiting: idle for %llu ms", (unsigned long long)B.exit_idle_ms);
			return 0;
		}
	}
}

static void usage(FILE *f)
{
	fprintf(f, "usage: memvisord [options]\n"
		   "  --runtime-dir DIR        socket and lock directory (default: $MEMVISOR_RUNTIME_DIR,\n"
		   "                           $XDG_RUNTIME_DIR/memvisor, /tmp/memvisor-UID)\n"
		   "  --foreground             do not daemonize; log to stderr\n"
		   "  --unpinned-budget BYTES  keep at most this much unpinned memory resident\n"
		   "  --min-available BYTES    purge when MemAvailable drops below (default: 2%% of RAM, 0 = off)\n"
		   "  --no-psi                 do not use PSI memory pressure triggers\n"
		   "  --no-compress            drop unpinned pages at once instead of keeping them compressed\n"
		   "  --compressed-budget BYTES  what the compressed store may hold (default: 5%% of RAM)\n"
		   "  --sweep-ms N             upkeep interval (default 1000)\n"
		   "  --exit-idle SECONDS      exit after this long with no client and nothing held\n"
		   "                           (default 0: never; the library starts brokers with 60)\n"
		   "  --ready-fd FD            write one byte to FD once listening\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "runtime-dir", required_argument, NULL, 'd' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "unpinned-budget", required_argument, NULL, 'b' },
		{ "min-available", required_argument, NULL, 'm' },
		{ "no-psi", no_argument, NULL, 'P' },
		{ "no-compress", no_argument, NULL, 'C' },
		{ "compressed-budget", required_argument, NULL, 'z' },
		{ "sweep-ms", required_argument, NULL, 's' },
		{ "ready-fd", required_argument, NULL, 'r' },
		{ "exit-idle", required_argument, NULL, 'i' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int ready_fd = -1, c, r;
	bool min_set = false;
	uint64_t v;

	B.pid = getpid();
	while ((c = getopt_long(argc, argv, "d:fb:m:PCz:s:r:i:h", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			if (snprintf(B.dir, sizeof(B.dir), "%s", optarg) >= (int)sizeof(B.dir)) {
				fprintf(stderr, "memvisord: runtime directory name too long\n");
				return 2;
			}
			break;
		case 'f': foreground = true; break;
		case 'b':
			if (mv_parse_size(optarg, &v) < 0) {
				fprintf(stderr, "memvisord: bad --unpinned-budget '%s'\n", optarg);
				return 2;
			}
			B.budget_pages = v / MV_PAGE_SIZE;
			break;
		case 'm':
			if (mv_parse_size(optarg, &v) < 0) {
				fprintf(stderr, "memvisord: bad --min-available '%s'\n", optarg);
				return 2;
			}
			B.min_available = v;
			min_set = true;
			break;
		case 'P': B.psi = false; break;
		case 'C': B.compress = false; break;
		case 'z':
			if (mv_parse_size(optarg, &v) < 0) {
				fprintf(stderr, "memvisord: bad --compressed-budget '%s'\n", optarg);
				return 2;
			}
			B.compressed_budget = v ? v : 1;
			break;
		case 's':
			if (mv_parse_size(optarg, &v) < 0 || v < 10 || v > 3600000) {
				fprintf(stderr, "memvisord: --sweep-ms takes 10..3600000\n");
				return 2;
			}
			B.sweep_ms = v;
			break;
		case 'i': {
			char *end;
			errno = 0;
			double secs = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(secs >= 0 && secs <= 86400.0 * 365)) {
				fprintf(stderr, "memvisord: bad --exit-idle '%s' (seconds, 0 = never)\n", optarg);
				return 2;
			}
			B.exit_idle_ms = (uint64_t)(secs * 1000.0 + 0.5);
			if (secs > 0 && !B.exit_idle_ms)
				B.exit_idle_ms = 1;
			break;
		}
		case 'r': {
			char *end;
			long fd = strtol(optarg, &end, 10);
			if (*end || fd < 0 || fd > INT_MAX) {
				fprintf(stderr, "memvisord: bad --ready-fd\n");
				return 2;
			}
			ready_fd = (int)fd;
			break;
		}
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	/* Whatever the spawning application left open is not ours to keep alive. */
	for (int fd = 3; fd < 1024; fd++)
		if (fd != ready_fd)
			close(fd);
	if (!B.dir[0] && mv_runtime_dir(B.dir, sizeof(B.dir), 1) < 0) {
		fprintf(stderr, "memvisord: no usable runtime directory\n");
		return 1;
	}
	if (!min_set) {
		int64_t total = mv_meminfo("MemTotal");
		B.min_available = total > 0 ? (uint64_t)total / 50 : 0;
	}

	r = setup(foreground ? ready_fd : -1);
	if (r == -EALREADY) {
		if (!foreground)
			return 0; /* lost a start race, or already running: fine */
		fprintf(stderr, "memvisord: another broker already serves %s\n", B.dir);
		return 3;
	}
	if (r < 0) {
		fprintf(stderr, "memvisord: setup failed: %s\n", strerror(-r));
		return 1;
	}
	r = run();
	unlink(B.sock_path);
	if (B.xs_path[0])
		unlink(B.xs_path);
	mvb_registry_fini(&B.reg);
	return r < 0 ? 1 : 0;
}
