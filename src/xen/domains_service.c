/* SPDX-License-Identifier: MIT */
/* Domains in the broker: ids, their processes, DOMAIN and DOMAINS. Event channels and the xenstore
 * learn of a domain's start and end through listeners. */
#define _GNU_SOURCE
#include "xen_services.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "broker/core.h"
#include "common/util.h"
#include "xen/xen_record.h"

#define MAX_LISTENERS 4

/* A domain restored from the record of a broker that died is pending until its process connects again
 * (any request of its: the domain is its pid's, which SO_PEERCRED vouches for); it ends when that
 * process does, as seen on the upkeep tick. */
static struct {
	int service;
	uint8_t used[MV_DOMID_LAST + 1];
	uint8_t pending[MV_DOMID_LAST + 1];
	uint8_t restored[MV_DOMID_LAST + 1];
	uint8_t loaded[MV_DOMID_LAST + 1];
	uint32_t pid[MV_DOMID_LAST + 1];
	uint64_t start[MV_DOMID_LAST + 1];
	uint64_t created_ns[MV_DOMID_LAST + 1];
	uint32_t next;
	uint32_t count, npending;
	/* processes whose chosen domain was refused: neither that domain nor the toolstack in the xenstore */
	struct {
		uint32_t pid;
		uint64_t start;
	} refused[16];
	uint32_t nrefused;
	const struct mvb_domain_listener *listeners[MAX_LISTENERS];
	int nlisteners;
} D = { .next = MV_DOMID_FIRST };

void mvb_domains_listen(const struct mvb_domain_listener *l)
{
	if (D.nlisteners < MAX_LISTENERS)
		D.listeners[D.nlisteners++] = l;
}

uint16_t mvb_domain_of(struct mvb_client *c)
{
	return (uint16_t)*mvb_client_slot(c, D.service);
}

uint16_t mvb_domain_of_pid(pid_t pid)
{
	for (struct mvb_client *o = mvb_client_first(); o; o = mvb_client_next(o))
		if (mvb_domain_of(o) && mvb_client_pid(o) == pid)
			return mvb_domain_of(o);
	for (uint32_t d = MV_DOMID_FIRST; D.npending && d <= MV_DOMID_LAST; d++)
		if (D.pending[d] && D.pid[d] == (uint32_t)pid && mvb_process_start(pid) == D.start[d])
			return (uint16_t)d;
	return 0;
}

bool mvb_domain_restored(uint32_t domid)
{
	return mvb_domain_alive(domid) && D.restored[domid];
}

static void record_domain(uint32_t d)
{
	struct mvb_rec_domain r = {
		.domid = (uint16_t)d, .pid = D.pid[d], .start_ticks = D.start[d], .created_realtime_ns = D.created_ns[d]
	};
	mvb_record_append(MVB_REC_DOMAIN, &r, sizeof(r));
}

static void domain_end(uint16_t d)
{
	for (int i = 0; i < D.nlisteners; i++)
		if (D.listeners[i]->gone)
			D.listeners[i]->gone(d);
	if (D.pending[d])
		D.npending--;
	D.used[d] = D.pending[d] = D.restored[d] = 0;
	D.count--;
	mvb_record_append(MVB_REC_DOMAIN_GONE, &d, sizeof(d));
}

/* The pending domain of the client's process, now its connection's; 0 if there is none. */
static uint16_t adopt(struct mvb_client *c)
{
	uint32_t pid = (uint32_t)mvb_client_pid(c);
	for (uint32_t d = MV_DOMID_FIRST; D.npending && d <= MV_DOMID_LAST; d++) {
		if (!D.pending[d] || D.pid[d] != pid)
			continue;
		if (mvb_process_start((pid_t)pid) != D.start[d]) {
			domain_end((uint16_t)d); /* that process died and its pid is another's now */
			continue;
		}
		D.pending[d] = 0;
		D.npending--;
		*mvb_client_slot(c, D.service) = d;
		mvb_log("domain %u is pid %d again", d, (int)pid);
		return (uint16_t)d;
	}
	return 0;
}

bool mvb_domain_alive(uint32_t domid)
{
	return domid >= MV_DOMID_FIRST && domid <= MV_DOMID_LAST && D.used[domid];
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

static bool name_ok(const char *n)
{
	size_t l = strnlen(n, MV_DOMAIN_NAME_MAX);
	if (l == 0 || l >= MV_DOMAIN_NAME_MAX)
		return false;
	for (const char *p = n; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
		      *p == '_' || *p == '.'))
			return false;
	return true;
}

/* A new domain for pid: want, or (0) the next free id. Ids are handed out round-robin so a dead domain's
 * id is not given to a new process at once (a peer still holding it would otherwise reach a stranger). */
static int domain_new(uint32_t want, pid_t pid, const char *chosen_name)
{
	uint32_t d = D.next;

	if (want && (want < MV_DOMID_FIRST || want > MV_DOMID_LAST))
		return -EINVAL;
	/* a domain waiting for a process that has ended goes now, not at the next tick, so that a program
	 * run twice as the same domain, one after the other, gets it the second time */
	if (want && D.used[want] && D.pending[want] && mvb_process_start((pid_t)D.pid[want]) != D.start[want])
		domain_end((uint16_t)want);
	if (want && D.used[want])
		return -EEXIST;
	if (D.count >= MV_DOMID_LAST)
		return -ENOSPC;
	if (want) {
		d = want;
	} else {
		for (uint32_t tries = 0; tries < MV_DOMID_LAST; tries++) {
			if (d < MV_DOMID_FIRST || d > MV_DOMID_LAST)
				d = MV_DOMID_FIRST;
			if (!D.used[d])
				break;
			d++;
		}
		D.next = d + 1;
	}
	D.used[d] = 1;
	D.count++;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	D.created_ns[d] = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	D.pid[d] = (uint32_t)pid;
	D.start[d] = mvb_process_start(pid);
	D.restored[d] = 0;
	record_domain(d);
	mvb_log("domain %u is pid %d", d, (int)pid);
	char name[64];
	if (chosen_name && *chosen_name)
		snprintf(name, sizeof(name), "%s", chosen_name);
	else
		domain_name(pid, name, sizeof(name));
	for (int i = 0; i < D.nlisteners; i++)
		if (D.listeners[i]->introduced)
			D.listeners[i]->introduced((uint16_t)d, name);
	return (int)d;
}

/* The domain waits for its process (any connection of that pid and start time) and ends with it. */
static void make_pending(uint32_t d)
{
	D.pending[d] = 1;
	D.npending++;
}

int mvb_domain_assign(struct mvb_client *c)
{
	uintptr_t *slot = mvb_client_slot(c, D.service);

	if (*slot)
		return (int)*slot;
	for (struct mvb_client *o = mvb_client_first(); o; o = mvb_client_next(o))
		if (o != c && mvb_domain_of(o) && mvb_client_pid(o) == mvb_client_pid(c) &&
		    mvb_client_uid(o) == mvb_client_uid(c)) {
			*slot = mvb_domain_of(o);
			return (int)*slot;
		}
	if (adopt(c))
		return (int)*slot;
	int d = domain_new(0, mvb_client_pid(c), NULL);
	if (d > 0)
		*slot = (uintptr_t)d;
	return d;
}

static pid_t parent_of(pid_t pid)
{
	struct mvu_proc_stat st;
	return mvu_proc_stat((int)pid, &st) == 0 ? (pid_t)st.ppid : 0;
}

bool mvb_domain_descendant(pid_t pid)
{
	pid_t p = parent_of(pid);
	for (int depth = 0; p > 1 && depth < 64; depth++, p = parent_of(p))
		if (mvb_domain_of_pid(p))
			return true;
	return false;
}

int mvb_domain_for_pid(pid_t pid)
{
	int d = mvb_domain_of_pid(pid);
	if (d)
		return d;
	d = domain_new(0, pid, NULL);
	if (d > 0)
		make_pending((uint32_t)d);
	return d;
}

bool mvb_domain_refused(pid_t pid)
{
	for (uint32_t i = 0; i < MV_ARRAY_SIZE(D.refused) && i < D.nrefused; i++)
		if (D.refused[i].pid == (uint32_t)pid && D.refused[i].start == mvb_process_start(pid))
			return true;
	return false;
}

static int claim_checked(struct mvb_client *c, const struct mvw_req_domain_claim *req)
{
	pid_t pid = mvb_client_pid(c);
	char name[MV_DOMAIN_NAME_MAX];

	memcpy(name, req->name, sizeof(name));
	name[sizeof(name) - 1] = '\0';
	if ((req->flags & ~MV_DOMAIN_FOR_EXEC) || (name[0] && !name_ok(req->name)))
		return -EINVAL;
	if (req->domid && (req->domid < MV_DOMID_FIRST || req->domid > MV_DOMID_LAST))
		return -EINVAL;
	uint16_t cur = mvb_domain_of_pid(pid);
	if (cur) {
		if (req->domid && req->domid != cur)
			return -EBUSY;
		return (req->flags & MV_DOMAIN_FOR_EXEC) ? cur : mvb_domain_assign(c);
	}
	int d = domain_new(req->domid, pid, name);
	if (d < 0)
		return d;
	if (req->flags & MV_DOMAIN_FOR_EXEC)
		make_pending((uint32_t)d);
	else
		*mvb_client_slot(c, D.service) = (uintptr_t)d;
	return d;
}

static void client_gone(struct mvb_client *c)
{
	uintptr_t *slot = mvb_client_slot(c, D.service);
	uint16_t d = (uint16_t)*slot;

	if (!d)
		return;
	*slot = 0;
	/* the domain ends with the process's last connection */
	for (struct mvb_client *o = mvb_client_first(); o; o = mvb_client_next(o))
		if (o != c && mvb_domain_of(o) == d)
			return;
	domain_end(d);
	mvb_log("domain %u (pid %d) is gone", d, (int)mvb_client_pid(c));
}

static void tick(void)
{
	for (uint32_t d = MV_DOMID_FIRST; D.npending && d <= MV_DOMID_LAST; d++)
		if (D.pending[d] && mvb_process_start((pid_t)D.pid[d]) != D.start[d]) {
			mvb_log("domain %u (pid %u) ended while it was away", d, D.pid[d]);
			domain_end((uint16_t)d);
		}
}

/* ---- the record ---- */

static void read_domain(const uint8_t *p, size_t len)
{
	struct mvb_rec_domain r;
	if (mvb_rec_domain_decode(p, len, &r) < 0)
		return;
	D.loaded[r.domid] = 1;
	D.pid[r.domid] = r.pid;
	D.start[r.domid] = r.start_ticks;
	D.created_ns[r.domid] = r.created_realtime_ns;
}

static void read_domain_gone(const uint8_t *p, size_t len)
{
	uint16_t d;
	if (len != sizeof(d))
		return;
	memcpy(&d, p, sizeof(d));
	if (d <= MV_DOMID_LAST)
		D.loaded[d] = 0;
}

static void dump(void)
{
	for (uint32_t d = MV_DOMID_FIRST; d <= MV_DOMID_LAST; d++)
		if (D.used[d])
			record_domain(d);
}

void mvb_domains_restore_finish(void)
{
	uint32_t kept = 0, dropped = 0;
	for (uint32_t d = MV_DOMID_FIRST; d <= MV_DOMID_LAST; d++) {
		if (!D.loaded[d])
			continue;
		D.loaded[d] = 0;
		/* a start time of 0 is no process we could ever check */
		bool alive = D.start[d] && mvb_process_start((pid_t)D.pid[d]) == D.start[d];
		D.used[d] = 1;
		D.count++;
		if (!alive) {
			domain_end((uint16_t)d); /* its xenstore directory and what it owned go as at its death */
			dropped++;
			continue;
		}
		D.pending[d] = D.restored[d] = 1;
		D.npending++;
		D.next = d + 1;
		kept++;
		for (int i = 0; i < D.nlisteners; i++)
			if (D.listeners[i]->restored)
				D.listeners[i]->restored((uint16_t)d);
	}
	if (kept || dropped)
		mvb_log("record: %u domains kept (their processes live), %u dropped", kept, dropped);
}

/* A sealed snapshot of the domains, for the tools. */
static int make_domains_memfd(void)
{
	struct mvw_domains_head head = { .magic = MV_DOMAINS_MAGIC, .rec_size = sizeof(struct mvw_domain_rec) };
	size_t len = sizeof(head) + (size_t)D.count * sizeof(struct mvw_domain_rec);
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
	struct mvw_domain_rec *recs = (struct mvw_domain_rec *)(m + sizeof(head));
	for (struct mvb_client *c = mvb_client_first(); c && head.count < D.count; c = mvb_client_next(c)) {
		uint16_t d = mvb_domain_of(c);
		bool seen = false;
		for (uint32_t i = 0; i < head.count && !seen; i++)
			seen = recs[i].domid == d;
		if (d && !seen)
			recs[head.count++] = (struct mvw_domain_rec){ .domid = d,
								      .pid = mvb_client_pid(c),
								      .uid = mvb_client_uid(c),
								      .created_realtime_ns = D.created_ns[d] };
	}
	/* and those waiting for their process (kept from the record, made for a pid, reserved for an exec) */
	for (uint32_t d = MV_DOMID_FIRST; D.npending && d <= MV_DOMID_LAST && head.count < D.count; d++)
		if (D.used[d] && D.pending[d])
			recs[head.count++] = (struct mvw_domain_rec){ .domid = (uint16_t)d,
								      .pid = (int32_t)D.pid[d],
								      .uid = mvb_owner_uid(),
								      .created_realtime_ns = D.created_ns[d] };
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

static void on_domain(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	int d = mvb_domain_assign(c);
	struct mvw_rep_domain rep = { .domid = d > 0 ? (uint32_t)d : 0 };

	mvb_reply(c, m, d < 0 ? d : 0, &rep, sizeof(rep), -1);
}

static int claim(struct mvb_client *c, const struct mvw_req_domain_claim *req)
{
	int d = claim_checked(c, req);
	if (d < 0 && !(req->flags & MV_DOMAIN_FOR_EXEC) && !mvb_domain_refused(mvb_client_pid(c))) {
		uint32_t i = D.nrefused++ % MV_ARRAY_SIZE(D.refused);
		D.refused[i].pid = (uint32_t)mvb_client_pid(c);
		D.refused[i].start = mvb_process_start(mvb_client_pid(c));
	}
	return d;
}

static void on_domain_claim(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	int d = claim(c, &m->u.domain_claim);
	struct mvw_rep_domain rep = { .domid = d > 0 ? (uint32_t)d : 0 };

	mvb_reply(c, m, d < 0 ? d : 0, &rep, sizeof(rep), -1);
}

static void on_domains(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	int fd = make_domains_memfd();

	mvb_reply(c, m, fd < 0 ? fd : 0, NULL, 0, fd);
	if (fd >= 0)
		close(fd);
}

static void stats(struct mvb_stats *st)
{
	mvb_stats_add(st, "xen.domains", D.count);
}

static bool busy(void)
{
	return D.count > 0;
}

static const struct mvb_service service = {
	.name = "domains",
	.client_gone = client_gone,
	.tick = tick,
	.stats = stats,
	.busy = busy,
};

int mvb_domains_service_init(void)
{
	D.service = mvb_service_register(&service);
	mvb_handler_register(MV_MSG_DOMAIN, on_domain);
	mvb_handler_register(MV_MSG_DOMAINS, on_domains);
	mvb_handler_register(MV_MSG_DOMAIN_CLAIM, on_domain_claim);
	mvb_record_on(MVB_REC_DOMAIN, read_domain);
	mvb_record_on(MVB_REC_DOMAIN_GONE, read_domain_gone);
	mvb_record_dumper(dump);
	return 0;
}
