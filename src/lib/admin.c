/* SPDX-License-Identifier: MIT */
/* The admin API (memvisor/broker.h) over the wire protocol. Everything the broker sends is checked
 * before use: a snapshot that does not parse is -EPROTO, never a crash. */
#define _GNU_SOURCE
#include "memvisor/broker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client.h"
#include "memvisor/memvisor.h"

struct mv_broker_status {
	size_t n;
	struct mvw_stats_rec recs[];
};

/* Maps the sealed snapshot a reply carried, read-only. */
static int map_snapshot(int fd, void **map, size_t *len)
{
	struct stat st;

	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size <= 0) {
		if (fd >= 0)
			close(fd);
		return -EPROTO;
	}
	*len = (size_t)st.st_size;
	*map = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	return *map == MAP_FAILED ? -errno : 0;
}

static int fetch(uint8_t type, void **map, size_t *len)
{
	struct mvw_msg rep;
	int fd = -1;
	int r = mvc_request_admin(type, NULL, 0, -1, &rep, &fd);

	if (r < 0)
		return r;
	return map_snapshot(fd, map, len);
}

MV_EXPORT int mv_broker_runtime_dir(char *buf, size_t len)
{
	if (!buf || !len)
		return -EINVAL;
	return mvu_runtime_dir(buf, len, 0);
}

MV_EXPORT int mv_broker_status_new(mv_broker_status **ret)
{
	struct mvw_stats_head head;
	mv_broker_status *s;
	void *map;
	size_t len;
	int r;

	if (!ret)
		return -EINVAL;
	*ret = NULL;
	r = fetch(MV_MSG_STATS, &map, &len);
	if (r < 0)
		return r;
	if (mvw_stats_check(map, len, &head) < 0) {
		munmap(map, len);
		return -EPROTO;
	}
	s = malloc(sizeof(*s) + (size_t)head.count * sizeof(struct mvw_stats_rec));
	if (!s) {
		munmap(map, len);
		return -ENOMEM;
	}
	s->n = head.count;
	for (size_t i = 0; i < s->n; i++) {
		/* records may grow: take the part we know */
		memcpy(&s->recs[i], (char *)map + sizeof(head) + i * head.rec_size, sizeof(s->recs[i]));
		s->recs[i].name[sizeof(s->recs[i].name) - 1] = '\0';
	}
	munmap(map, len);
	*ret = s;
	return 0;
}

MV_EXPORT mv_broker_status *mv_broker_status_free(mv_broker_status *s)
{
	free(s);
	return NULL;
}

MV_EXPORT int mv_broker_status_get(const mv_broker_status *s, const char *name, uint64_t *value)
{
	if (!s || !name)
		return -EINVAL;
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->recs[i].name, name) == 0) {
			if (value)
				*value = s->recs[i].value;
			return 0;
		}
	return -ENOENT;
}

MV_EXPORT uint64_t mv_broker_status_value(const mv_broker_status *s, const char *name, uint64_t def)
{
	uint64_t v;
	return mv_broker_status_get(s, name, &v) == 0 ? v : def;
}

MV_EXPORT size_t mv_broker_status_count(const mv_broker_status *s)
{
	return s ? s->n : 0;
}

MV_EXPORT const char *mv_broker_status_entry(const mv_broker_status *s, size_t i, uint64_t *value)
{
	if (!s || i >= s->n)
		return NULL;
	if (value)
		*value = s->recs[i].value;
	return s->recs[i].name;
}

MV_EXPORT int mv_broker_regions(struct mv_broker_region **list, size_t *n)
{
	void *map;
	size_t len;
	int r, count;

	if (!list || !n)
		return -EINVAL;
	*list = NULL;
	*n = 0;
	r = fetch(MV_MSG_REGIONS, &map, &len);
	if (r < 0)
		return r;
	count = mvw_regions_check(map, len);
	if (count < 0) {
		munmap(map, len);
		return count;
	}
	const struct mvw_region_rec *recs =
		(const struct mvw_region_rec *)((char *)map + sizeof(struct mvw_regions_head));
	struct mv_broker_region *out = calloc(count ? (size_t)count : 1, sizeof(*out));
	if (!out) {
		munmap(map, len);
		return -ENOMEM;
	}
	for (int i = 0; i < count; i++) {
		const struct mvw_region_rec *rec = &recs[i];
		struct mv_broker_region *o = &out[i];
		o->id = rec->id;
		o->size = rec->size;
		o->pages = rec->npages;
		o->pinned = rec->pinned;
		o->unpinned = rec->unpinned;
		o->purged = rec->purged;
		o->purged_total = rec->purged_total;
		o->compressed = rec->compressed;
		o->restores = rec->restores;
		o->flags = (rec->flags & MV_ATTACH_HELD ? MV_BROKER_REGION_HELD : 0) |
			   (rec->flags & (1u << 8) ? MV_BROKER_REGION_UNPURGEABLE : 0) |
			   (rec->flags & (2u << 16) ? MV_BROKER_REGION_NO_COMPRESS : 0);
		o->nholders = rec->nholders < MV_BROKER_MAX_HOLDERS ? rec->nholders : MV_BROKER_MAX_HOLDERS;
		for (uint32_t k = 0; k < o->nholders; k++)
			o->holders[k] = rec->holders[k];
		memcpy(o->name, rec->name, sizeof(o->name));
		o->name[sizeof(o->name) - 1] = '\0';
	}
	munmap(map, len);
	*list = out;
	*n = (size_t)count;
	return count;
}

MV_EXPORT int mv_broker_domains(struct mv_broker_domain **list, size_t *n)
{
	void *map;
	size_t len;
	int r, count;

	if (!list || !n)
		return -EINVAL;
	*list = NULL;
	*n = 0;
	r = fetch(MV_MSG_DOMAINS, &map, &len);
	if (r < 0)
		return r;
	count = mvw_domains_check(map, len);
	if (count < 0) {
		munmap(map, len);
		return count;
	}
	const struct mvw_domain_rec *recs =
		(const struct mvw_domain_rec *)((char *)map + sizeof(struct mvw_domains_head));
	struct mv_broker_domain *out = calloc(count ? (size_t)count : 1, sizeof(*out));
	if (!out) {
		munmap(map, len);
		return -ENOMEM;
	}
	for (int i = 0; i < count; i++)
		out[i] = (struct mv_broker_domain){ .domid = recs[i].domid,
						    .pid = recs[i].pid,
						    .uid = recs[i].uid,
						    .created_realtime_ns = recs[i].created_realtime_ns };
	munmap(map, len);
	*list = out;
	*n = (size_t)count;
	return count;
}

MV_EXPORT int mv_broker_domain_self(void)
{
	struct mvw_msg rep;
	int r = mvc_request(MV_MSG_DOMAIN, NULL, 0, -1, &rep, NULL);

	return r < 0 ? r : (int)rep.u.domain_rep.domid;
}

MV_EXPORT int mv_broker_domain_reserve(uint32_t domid, const char *name)
{
	struct mvw_req_domain_claim req = { .domid = domid, .flags = MV_DOMAIN_FOR_EXEC };
	struct mvw_msg rep;

	if (domid > MV_DOMID_LAST || (name && strlen(name) >= sizeof(req.name)))
		return -EINVAL;
	if (name)
		memcpy(req.name, name, strlen(name));
	int r = mvc_request(MV_MSG_DOMAIN_CLAIM, &req, sizeof(req), -1, &rep, NULL);
	return r < 0 ? r : (int)rep.u.domain_rep.domid;
}

MV_EXPORT int mv_broker_purge(uint64_t bytes, struct mv_broker_purge_result *res, size_t res_size)
{
	struct mvw_req_purge req = {
		.mode = bytes == MV_PURGE_ALL ? MV_PURGE_EVERYTHING : MV_PURGE_BYTES,
		.bytes = bytes,
	};
	struct mv_broker_purge_result out;
	struct mvw_msg rep;
	int r;

	if (res && res_size > sizeof(out))
		return -EINVAL; /* a caller newer than this library */
	r = mvc_request_admin(MV_MSG_PURGE, &req, sizeof(req), -1, &rep, NULL);
	if (r < 0)
		return r;
	out = (struct mv_broker_purge_result){
		.bytes = rep.u.purge_rep.pages * MV_PAGE_SIZE,
		.runs = rep.u.purge_rep.runs,
		.ns = rep.u.purge_rep.ns,
		.unpinned_bytes = rep.u.purge_rep.unpinned_left * MV_PAGE_SIZE,
	};
	if (res)
		memcpy(res, &out, res_size);
	return 0;
}

MV_EXPORT int mv_broker_parse_size(const char *text, uint64_t *bytes)
{
	if (!bytes)
		return -EINVAL;
	return mvu_parse_size(text, bytes);
}

MV_EXPORT int mv_broker_set(enum mv_broker_setting setting, uint64_t value)
{
	struct mvw_req_config req = { .value = value };

	switch (setting) {
	case MV_BROKER_UNPINNED_BUDGET: req.key = MV_CONFIG_UNPINNED_BUDGET; break;
	case MV_BROKER_MIN_AVAILABLE: req.key = MV_CONFIG_MIN_AVAILABLE; break;
	case MV_BROKER_COMPRESS:
		if (value > 1)
			return -EINVAL;
		req.key = MV_CONFIG_COMPRESS;
		break;
	case MV_BROKER_COMPRESSED_BUDGET: req.key = MV_CONFIG_COMPRESSED_BUDGET; break;
	default: return -EINVAL;
	}
	return mvc_request_admin(MV_MSG_CONFIG, &req, sizeof(req), -1, NULL, NULL);
}

/* The broker calls of memvisor.h. */

MV_EXPORT int mv_purge(uint64_t bytes, uint64_t *purged)
{
	struct mvw_req_purge req = {
		.mode = bytes == MV_PURGE_ALL ? MV_PURGE_EVERYTHING : MV_PURGE_BYTES,
		.bytes = bytes,
	};
	struct mvw_msg rep;
	int r = mvc_request_admin(MV_MSG_PURGE, &req, sizeof(req), -1, &rep, NULL);

	if (r < 0)
		return r;
	if (purged)
		*purged = rep.u.purge_rep.pages * MV_PAGE_SIZE;
	return 0;
}

MV_EXPORT int mv_sync(void)
{
	struct mvw_req_purge req = { .mode = MV_PURGE_BUDGET };
	struct mvw_msg rep;

	return mvc_request_admin(MV_MSG_PURGE, &req, sizeof(req), -1, &rep, NULL);
}

MV_EXPORT int mv_broker_connected(void)
{
	struct mvw_msg rep;
	int r = mvc_request(MV_MSG_STATUS, NULL, 0, -1, &rep, NULL);

	return r == 0 ? 1 : 0;
}
