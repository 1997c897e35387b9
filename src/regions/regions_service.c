/* SPDX-License-Identifier: MIT */
/* The regions facility in the broker: which regions clients hold, the purge triggers (PSI, the
 * MemAvailable watermark, the unpinned budget, explicit requests), the compressed tier's budget, and
 * the messages ATTACH, DETACH, KICK, PURGE, RESTORE, REGIONS, CONFIG and REGION_CTL (and, through
 * areas.c, AREA_BIND and AREA_GET). */
#define _GNU_SOURCE
#include "regions_service.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "areas.h"
#include "broker/core.h"
#include "registry.h"

/* A sync (PURGE_BUDGET) that waits for the tier's reclaim under way: its answer goes when the last job
 * is back, so that what it reports, and what the caller sees next, is the reclaim done. */
struct sync_wait {
	struct mvb_client *c;
	struct mvw_msg m;
	uint64_t t0, reclaimed0;
};

/* What a client told us it holds: region ids, for the holder lists of REGIONS, and where it keeps each
 * region's control file, for processes that adopt the region. */
struct held_ids {
	uint64_t *ids;
	int32_t *ctl_fdnums;
	size_t n, cap;
};

static struct {
	int service;
	struct mvb_registry reg;
	struct mvb_totals totals;
	uint64_t budget_pages; /* UINT64_MAX: none */
	uint64_t min_available;
	int psi_fd;
	uint64_t psi_events, purges_pressure, purges_budget, purges_explicit;
	struct sync_wait *waits;
	size_t nwaits, waits_cap;
} R = { .psi_fd = -1, .budget_pages = UINT64_MAX };

static struct held_ids *held_of(struct mvb_client *c)
{
	return (struct held_ids *)*mvb_client_slot(c, R.service);
}

static void note_region(struct mvb_client *c, uint64_t id, int32_t ctl_fdnum)
{
	struct held_ids *h = held_of(c);

	if (!h) {
		h = calloc(1, sizeof(*h));
		if (!h)
			return; /* holder lists are informational */
		*mvb_client_slot(c, R.service) = (uintptr_t)h;
	}
	for (size_t i = 0; i < h->n; i++)
		if (h->ids[i] == id) {
			h->ctl_fdnums[i] = ctl_fdnum;
			return;
		}
	if (h->n == h->cap) {
		size_t n = h->cap ? h->cap * 2 : 8;
		uint64_t *v = realloc(h->ids, n * sizeof(*v));
		if (!v)
			return;
		h->ids = v;
		int32_t *f = realloc(h->ctl_fdnums, n * sizeof(*f));
		if (!f)
			return;
		h->ctl_fdnums = f;
		h->cap = n;
	}
	h->ctl_fdnums[h->n] = ctl_fdnum;
	h->ids[h->n++] = id;
}

static void forget_region(struct mvb_client *c, uint64_t id)
{
	struct held_ids *h = held_of(c);

	for (size_t i = 0; h && i < h->n; i++)
		if (h->ids[i] == id) {
			h->n--;
			h->ids[i] = h->ids[h->n];
			h->ctl_fdnums[i] = h->ctl_fdnums[h->n];
			return;
		}
}

static void publish_budget(void)
{
	atomic_store(&mvb_bulletin()->budget_pages, R.budget_pages == UINT64_MAX ? 0 : R.budget_pages);
}

/* unpinned: the candidates counted after the kick was cleared, or UINT64_MAX to clear it and count here.
 * Cleared first: an unpin that lands after the count kicks again. */
static uint64_t enforce_budget_counted(uint64_t unpinned)
{
	struct mvw_bulletin *b = mvb_bulletin();
	uint64_t runs, purged = 0;

	if (unpinned == UINT64_MAX) {
		atomic_store(&b->kick_pending, 0);
		unpinned = mvb_unpinned_pages(&R.reg);
	}
	if (R.budget_pages != UINT64_MAX && unpinned > R.budget_pages) {
		purged = mvb_purge(&R.reg, unpinned - R.budget_pages, true, &runs);
		if (purged)
			R.purges_budget++;
		unpinned -= purged < unpinned ? purged : unpinned;
	}
	/* Re-anchor the hint on the truth: clients only ever add deltas to it. */
	atomic_store(&b->unpinned_hint, (int64_t)unpinned);
	return purged;
}

static uint64_t enforce_budget(void)
{
	return enforce_budget_counted(UINT64_MAX);
}

static void pressure_purge(const char *why)
{
	uint64_t unpinned = mvb_unpinned_pages(&R.reg), target, runs, got;
	int64_t avail = mvu_meminfo("MemAvailable");

	if (!unpinned && R.reg.compressed_pages) {
		mvb_store_shrink(&R.reg, mvb_store_bytes(&R.reg) / 4 * 3);
		R.purges_pressure++;
		return;
	}
	if (!unpinned)
		return;
	/* Like a shrinker: a share of what is there, more if we know the deficit. */
	target = unpinned / 4;
	if (target < (16u << 20) / MV_PAGE_SIZE)
		target = (16u << 20) / MV_PAGE_SIZE;
	if (R.min_available && avail >= 0 && (uint64_t)avail < R.min_available) {
		uint64_t deficit = (R.min_available - (uint64_t)avail) / MV_PAGE_SIZE * 2;
		if (deficit > target)
			target = deficit;
	}
	/* The compressed copies give way first, a quarter of them; then unpinned pages go (compressed, if
	 * there is still room). */
	if (R.reg.compressed_pages)
		mvb_store_shrink(&R.reg, mvb_store_bytes(&R.reg) / 4 * 3);
	got = mvb_purge(&R.reg, target, true, &runs);
	if (got) {
		R.purges_pressure++;
		mvb_log("%s: purged %llu pages in %llu ranges", why, (unsigned long long)got, (unsigned long long)runs);
	}
	/* Re-anchor the clients' hint on the truth, or they would kick for a budget already met. */
	atomic_store(&mvb_bulletin()->unpinned_hint, (int64_t)mvb_unpinned_pages(&R.reg));
}

static void answer_syncs(void)
{
	if (!R.nwaits || mvb_tier_busy(&R.reg))
		return;
	uint64_t left = mvb_unpinned_pages(&R.reg);
	atomic_store(&mvb_bulletin()->unpinned_hint, (int64_t)left);
	for (size_t i = 0; i < R.nwaits; i++) {
		struct sync_wait *w = &R.waits[i];
		struct mvw_rep_purge rep = {
			.pages = R.reg.reclaimed_pages - w->reclaimed0,
			.ns = mvu_now_ns() - w->t0,
			.unpinned_left = left,
		};
		mvb_reply(w->c, &w->m, 0, &rep, sizeof(rep), -1);
	}
	R.nwaits = 0;
}

static void on_tier(void *ud, uint32_t events)
{
	bool was_busy = mvb_tier_busy(&R.reg);

	mvb_tier_poll(&R.reg);
	if (was_busy && !mvb_tier_busy(&R.reg)) {
		/* Re-anchor the clients' hint on the truth once the reclaim is over. */
		atomic_store(&mvb_bulletin()->unpinned_hint, (int64_t)mvb_unpinned_pages(&R.reg));
		answer_syncs();
	}
}

static void on_psi(void *ud, uint32_t events)
{
	R.psi_events++;
	pressure_purge("memory pressure (PSI)");
}

static void on_inotify(void *ud, uint32_t events)
{
	mvb_handle_inotify(&R.reg);
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

/* A sealed snapshot of every region with its holders, for the tools. */
static int make_regions_memfd(void)
{
	struct mvw_regions_head head = { .magic = MV_REGIONS_MAGIC, .rec_size = sizeof(struct mvw_region_rec) };
	size_t len = sizeof(head) + R.reg.count * sizeof(struct mvw_region_rec);
	struct mvw_region_rec *recs;
	char *m;
	int fd = memfd_create("memvisor-regions", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)len) < 0)
		goto fail;
	m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		goto fail;
	recs = (struct mvw_region_rec *)(m + sizeof(head));
	for (struct mvb_region *r = R.reg.all; r; r = r->next) {
		struct mvw_region_rec *rec = &recs[head.count++];
		struct mvr_ctl_counts cnt;

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
		rec->flags =
			(r->hold_fd >= 0 ? MV_ATTACH_HELD : 0) | ((uint32_t)r->flags << 8) |
			(r->ctl && (atomic_load(&r->ctl->flags) & MV_CTL_F_NO_COMPRESS) ? (MV_CTL_F_NO_COMPRESS << 16)
											: 0);
		snprintf(rec->name, sizeof(rec->name), "%s", r->name);
	}
	/* Holders: invert the clients' lists. Few clients hold many regions, so a search is fine. */
	for (struct mvb_client *c = mvb_client_first(); c; c = mvb_client_next(c)) {
		struct held_ids *h = held_of(c);
		for (size_t i = 0; h && i < h->n; i++)
			for (uint32_t k = 0; k < head.count; k++)
				if (recs[k].id == h->ids[i]) {
					if (recs[k].nholders < MV_REC_MAX_HOLDERS)
						recs[k].holders[recs[k].nholders++] = mvb_client_pid(c);
					break;
				}
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

static void on_attach(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvb_region *r = NULL;
	struct mvw_rep_attach rep = { 0 };
	bool created;
	int e = mvb_attach(&R.reg, fds[0], fds[1], &r, &created);

	if (e == 0) {
		note_region(c, r->id, m->u.attach.ctl_fdnum);
		rep.region_id = r->id;
		rep.flags = (created ? MV_ATTACH_NEW : 0) | (r->hold_fd >= 0 ? MV_ATTACH_HELD : 0);
		/* Someone just unpinned: the budget may need enforcing right away. */
		if (R.budget_pages != UINT64_MAX && r->hold_fd >= 0)
			enforce_budget();
	}
	if (!(m->u.attach.flags & MV_ATTACH_REQ_ONEWAY))
		mvb_reply(c, m, e, &rep, sizeof(rep), -1);
}

/* A process adopting a region it was handed (SCM_RIGHTS, exec) asks for its control file; the data file
 * it sends is its proof that it holds the region. */
static int region_ctl(int data_fd)
{
	struct mvb_region *r = mvb_find_file(&R.reg, data_fd);

	if (!r)
		return -EINVAL;
	int kept = mvb_region_ctl_dup(r);
	if (kept >= 0)
		return kept;
	/* Past its budget the broker keeps no descriptor for a region: it opens a holder's, where that
	 * holder said it keeps it, and takes it only if it is still the region's control file. */
	for (struct mvb_client *k = mvb_client_first(); k; k = mvb_client_next(k)) {
		struct held_ids *h = held_of(k);
		for (size_t i = 0; h && i < h->n; i++) {
			char path[64];
			struct stat st;
			int fd;

			if (h->ids[i] != r->id || h->ctl_fdnums[i] < 0)
				continue;
			/* The holder says where; what is there is checked before it is opened (a FIFO or a
			 * device there must not make the broker wait), and after. */
			snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)mvb_client_pid(k), (int)h->ctl_fdnums[i]);
			if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_ino != r->ctl_ino)
				break;
			fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
			if (fd < 0)
				break;
			if (mvb_is_ctl_of(r, fd))
				return fd;
			close(fd);
			break;
		}
	}
	return -EINVAL;
}

static void on_region_ctl(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	int ctl = region_ctl(fds[0]);

	mvb_reply(c, m, ctl < 0 ? ctl : 0, NULL, 0, ctl < 0 ? -1 : ctl);
	if (ctl >= 0)
		close(ctl);
}

static void on_detach(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	forget_region(c, m->u.detach.region_id);
	mvb_reply(c, m, 0, NULL, 0, -1);
}

static void on_kick(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	enforce_budget();
}

static void on_purge(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvw_rep_purge rep = { 0 };
	uint64_t t0 = mvu_now_ns(), target;

	switch (m->u.purge.mode) {
	case MV_PURGE_BYTES:
		target = mvu_round_up(m->u.purge.bytes, MV_PAGE_SIZE) / MV_PAGE_SIZE;
		if (m->u.purge.bytes > UINT64_MAX - MV_PAGE_SIZE)
			target = UINT64_MAX;
		/* An explicit request is for memory now: no second chance in the compressed tier. */
		rep.pages = mvb_purge(&R.reg, target, false, &rep.runs);
		R.purges_explicit++;
		break;
	case MV_PURGE_EVERYTHING:
		/* Everything unpinned goes, what the tier was keeping included, as the driver's purge of
		 * every range: the next pin answers WAS_PURGED and reads zeros. A reclaim under way stops
		 * where it is (its jobs out come back first, a few at most), and the tier drops those too. */
		mvb_tier_settle(&R.reg);
		rep.pages = mvb_purge(&R.reg, UINT64_MAX, false, &rep.runs);
		rep.pages += mvb_tier_drop_all(&R.reg);
		R.purges_explicit++;
		answer_syncs();
		break;
	case MV_PURGE_BUDGET: {
		uint64_t reclaimed0 = R.reg.reclaimed_pages;
		rep.pages = enforce_budget();
		if (!mvb_tier_busy(&R.reg))
			break;
		if (R.nwaits == R.waits_cap) {
			size_t nc = R.waits_cap ? R.waits_cap * 2 : 8;
			struct sync_wait *n = realloc(R.waits, nc * sizeof(*n));
			if (!n) {
				mvb_reply(c, m, -ENOMEM, NULL, 0, -1);
				return;
			}
			R.waits = n;
			R.waits_cap = nc;
		}
		R.waits[R.nwaits++] = (struct sync_wait){ c, *m, t0, reclaimed0 };
		return;
	}
	default: mvb_reply(c, m, -EINVAL, NULL, 0, -1); return;
	}
	rep.ns = mvu_now_ns() - t0;
	rep.unpinned_left = mvb_unpinned_pages(&R.reg);
	atomic_store(&mvb_bulletin()->unpinned_hint, (int64_t)rep.unpinned_left);
	mvb_reply(c, m, 0, &rep, sizeof(rep), -1);
}

static void on_regions(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	int fd = make_regions_memfd();

	mvb_reply(c, m, fd < 0 ? fd : 0, NULL, 0, fd);
	if (fd >= 0)
		close(fd);
}

static void on_restore(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvw_rep_restore rep = { 0 };
	int e = mvb_restore(&R.reg, fds[0], m->u.restore.pg0, m->u.restore.pg1, &rep.restored, &rep.lost);

	mvb_reply(c, m, e, &rep, sizeof(rep), -1);
}

static void on_config(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	/* Only the broker's owner (or root) ever gets this far: the core admits no one else. */
	switch (m->u.config.key) {
	case MV_CONFIG_COMPRESS:
		if (m->u.config.value > 1) {
			mvb_reply(c, m, -EINVAL, NULL, 0, -1);
			return;
		}
		R.reg.compress = m->u.config.value == 1;
		break;
	case MV_CONFIG_COMPRESSED_BUDGET:
		R.reg.store_budget = m->u.config.value;
		mvb_store_shrink(&R.reg, R.reg.store_budget);
		break;
	case MV_CONFIG_UNPINNED_BUDGET:
		R.budget_pages = m->u.config.value == UINT64_MAX ? UINT64_MAX : m->u.config.value / MV_PAGE_SIZE;
		publish_budget();
		enforce_budget();
		break;
	case MV_CONFIG_MIN_AVAILABLE: R.min_available = m->u.config.value; break;
	default: mvb_reply(c, m, -EINVAL, NULL, 0, -1); return;
	}
	mvb_reply(c, m, 0, NULL, 0, -1);
}

static void client_gone(struct mvb_client *c)
{
	struct held_ids *h = held_of(c);

	if (h) {
		free(h->ids);
		free(h->ctl_fdnums);
		free(h);
		*mvb_client_slot(c, R.service) = 0;
	}
	/* A sync whose caller is gone: nobody to answer. The reclaim goes on. */
	for (size_t i = 0; i < R.nwaits;)
		if (R.waits[i].c == c)
			R.waits[i] = R.waits[--R.nwaits];
		else
			i++;
}

static void tick(void)
{
	/* The sweep counts every region; the budget takes its count rather than counting again. */
	atomic_store(&mvb_bulletin()->kick_pending, 0);
	mvb_sweep(&R.reg, &R.totals);
	enforce_budget_counted(R.totals.candidates);
	if (R.min_available) {
		int64_t avail = mvu_meminfo("MemAvailable");
		if (avail >= 0 && (uint64_t)avail < R.min_available)
			pressure_purge("MemAvailable below watermark");
	}
}

static void stats(struct mvb_stats *st)
{
	struct mv_store_stats zs = { 0 };

	mvb_totals(&R.reg, &R.totals); /* a status request must not change what it reports on */
	mvb_stats_add(st, "regions.count", R.reg.count);
	mvb_areas_stats(st);
	mvb_stats_add(st, "regions.held", R.reg.held);
	mvb_stats_add(st, "regions.pages_total", R.totals.pages);
	mvb_stats_add(st, "regions.pages_pinned", R.totals.pinned);
	mvb_stats_add(st, "regions.pages_unpinned", R.totals.unpinned);
	mvb_stats_add(st, "regions.pages_purged", R.totals.purged);
	mvb_stats_add(st, "regions.purged_pages_total", R.reg.purged_pages_total);
	mvb_stats_add(st, "regions.holds_total", R.reg.holds_total);
	mvb_stats_add(st, "regions.purge_runs", R.reg.purge_runs);
	mvb_stats_add(st, "regions.purges_pressure", R.purges_pressure);
	mvb_stats_add(st, "regions.purges_budget", R.purges_budget);
	mvb_stats_add(st, "regions.purges_explicit", R.purges_explicit);
	mvb_stats_add(st, "regions.unpinned_budget",
		      R.budget_pages == UINT64_MAX ? UINT64_MAX : R.budget_pages * MV_PAGE_SIZE);
	mvb_stats_add(st, "regions.min_available", R.min_available);
	mvb_stats_add(st, "regions.psi_events", R.psi_events);
	mvb_stats_add(st, "regions.psi_enabled", R.psi_fd >= 0);
	mvb_stats_add(st, "regions.inotify_overflows", R.reg.overflows);
	if (R.reg.store)
		mv_store_stats(R.reg.store, &zs);
	mvb_stats_add(st, "tier.enabled", R.reg.compress);
	mvb_stats_add(st, "tier.pages", R.reg.compressed_pages);
	mvb_stats_add(st, "tier.bytes_compressed", zs.compr_data_size);
	mvb_stats_add(st, "tier.bytes_held", zs.mem_used_total);
	mvb_stats_add(st, "tier.budget", R.reg.store_budget);
	mvb_stats_add(st, "tier.compressions", R.reg.compressions);
	mvb_stats_add(st, "tier.restores", R.reg.restores);
	mvb_stats_add(st, "tier.evictions", R.reg.evictions);
	mvb_stats_add(st, "tier.incompressible", R.reg.incompressible);
}

static bool busy(void)
{
	return R.reg.count > 0 || R.reg.compressed_pages > 0;
}

static void fini(void)
{
	mvb_areas_fini();
	mvb_registry_fini(&R.reg);
	free(R.waits);
}

static const struct mvb_service service = {
	.name = "regions",
	.client_gone = client_gone,
	.tick = tick,
	.stats = stats,
	.busy = busy,
	.fini = fini,
};

int mvb_regions_service_init(const struct mvb_regions_config *cfg)
{
	int r;

	R.budget_pages = cfg->unpinned_budget == UINT64_MAX ? UINT64_MAX : cfg->unpinned_budget / MV_PAGE_SIZE;
	R.min_available = cfg->min_available;
	publish_budget();
	r = mvb_registry_init(&R.reg);
	if (r < 0)
		return r;
	/* A thread a core, up to four, compress for the tier; the loop only claims and finishes. */
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned threads = ncpu < 1 ? 1 : ncpu > 4 ? 4 : (unsigned)ncpu;
	r = mvb_tier_init(&R.reg, cfg->compress, cfg->compressed_budget, threads);
	if (r < 0)
		return r;
	if (R.reg.tier_efd >= 0) {
		r = mvb_io_add(R.reg.tier_efd, EPOLLIN, on_tier, NULL);
		if (r < 0)
			return r;
	}
	r = mvb_io_add(R.reg.inotify_fd, EPOLLIN, on_inotify, NULL);
	if (r < 0)
		return r;
	r = mvb_areas_init(&R.reg);
	if (r < 0)
		return r;
	if (cfg->psi) {
		R.psi_fd = setup_psi();
		if (R.psi_fd < 0)
			mvb_log("PSI triggers unavailable (%s); relying on the MemAvailable watermark",
				strerror(-R.psi_fd));
		else if (mvb_io_add(R.psi_fd, EPOLLPRI, on_psi, NULL) < 0) {
			close(R.psi_fd);
			R.psi_fd = -1;
		}
	}
	R.service = mvb_service_register(&service);
	mvb_handler_register(MV_MSG_ATTACH, on_attach);
	mvb_handler_register(MV_MSG_DETACH, on_detach);
	mvb_handler_register(MV_MSG_KICK, on_kick);
	mvb_handler_register(MV_MSG_PURGE, on_purge);
	mvb_handler_register(MV_MSG_REGIONS, on_regions);
	mvb_handler_register(MV_MSG_RESTORE, on_restore);
	mvb_handler_register(MV_MSG_CONFIG, on_config);
	mvb_handler_register(MV_MSG_REGION_CTL, on_region_ctl);
	mvb_log("regions: budget %s, min-available %llu, PSI %s, compressed tier %s, %llu bytes",
		R.budget_pages == UINT64_MAX ? "none" : "set", (unsigned long long)R.min_available,
		R.psi_fd >= 0 ? "on" : "off", R.reg.compress ? "on" : "off", (unsigned long long)R.reg.store_budget);
	return 0;
}
