/* SPDX-License-Identifier: MIT */
/* memvisor: the command-line tool. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "lib/client.h"
#include "memvisor/memvisor.h"
#include "proto/wire.h"
#include "regions/ctl.h"

static bool json;

void cli_json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

void cli_human_bytes(char *buf, size_t len, uint64_t b)
{
	static const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)b;
	int i = 0;

	while (v >= 1024 && i < 4) {
		v /= 1024;
		i++;
	}
	snprintf(buf, len, i ? "%.1f %s" : "%.0f %s", v, u[i]);
}

static int no_broker(int r)
{
	if (r == -ENOTCONN)
		fprintf(stderr, "memvisor: no broker is running (start one with 'memvisord', or run 'memvisor tour')\n");
	else
		fprintf(stderr, "memvisor: broker request failed: %s\n", strerror(-r));
	return 1;
}

static int cmd_status(void)
{
	struct mv_wire_msg rep;
	int r = mvc_request(MV_MSG_STATUS, NULL, 0, -1, &rep, NULL);
	const struct mv_rep_status *s = &rep.u.status_rep;
	char b1[32], b2[32], b3[32], b4[32];

	if (r < 0)
		return no_broker(r);
	if (json) {
		printf("{\"broker_pid\":%d,\"uid\":%u,\"uptime_s\":%.3f,\"clients\":%llu,\"regions\":%llu,"
		       "\"regions_held\":%llu,\"bytes_total\":%llu,\"bytes_pinned\":%llu,\"bytes_unpinned\":%llu,"
		       "\"bytes_purged\":%llu,\"purged_bytes_total\":%llu,\"purge_runs\":%llu,"
		       "\"purges\":{\"pressure\":%llu,\"budget\":%llu,\"explicit\":%llu},",
		       s->broker_pid, s->uid, (double)s->uptime_ns / 1e9, (unsigned long long)s->clients,
		       (unsigned long long)s->regions, (unsigned long long)s->regions_held,
		       (unsigned long long)(s->pages_total * MV_PAGE_SIZE),
		       (unsigned long long)(s->pages_pinned * MV_PAGE_SIZE),
		       (unsigned long long)(s->pages_unpinned * MV_PAGE_SIZE),
		       (unsigned long long)(s->pages_purged * MV_PAGE_SIZE),
		       (unsigned long long)(s->purged_pages_total * MV_PAGE_SIZE), (unsigned long long)s->purge_runs,
		       (unsigned long long)s->purges_pressure, (unsigned long long)s->purges_budget,
		       (unsigned long long)s->purges_explicit);
		if (s->unpinned_budget == UINT64_MAX)
			printf("\"unpinned_budget\":null,");
		else
			printf("\"unpinned_budget\":%llu,", (unsigned long long)s->unpinned_budget);
		printf("\"min_available\":%llu,\"psi_enabled\":%s,\"psi_events\":%llu,\"broker_heap_bytes\":%llu,"
		       "\"inotify_overflows\":%u,",
		       (unsigned long long)s->min_available, s->psi_enabled ? "true" : "false",
		       (unsigned long long)s->psi_events, (unsigned long long)s->broker_heap_bytes, s->inotify_overflows);
		printf("\"compressed_tier\":{\"enabled\":%s,\"pages\":%llu,\"bytes_original\":%llu,"
		       "\"bytes_compressed\":%llu,\"bytes_held\":%llu,\"ratio\":%.3f,\"budget\":%llu,"
		       "\"compressions\":%llu,\"restores\":%llu,\"evictions\":%llu,\"incompressible\":%llu},",
		       s->compress_enabled ? "true" : "false", (unsigned long long)s->pages_compressed,
		       (unsigned long long)(s->pages_compressed * MV_PAGE_SIZE), (unsigned long long)s->compressed_bytes,
		       (unsigned long long)s->compressed_mem_used,
		       s->compressed_mem_used ? (double)(s->pages_compressed * MV_PAGE_SIZE) / (double)s->compressed_mem_used : 0.0,
		       (unsigned long long)s->compressed_budget, (unsigned long long)s->compressions_total,
		       (unsigned long long)s->restores_total, (unsigned long long)s->evictions_total,
		       (unsigned long long)s->incompressible_total);
		printf("\"xen\":{\"domains\":%llu,\"event_channels\":%llu,\"grant_shares\":%llu,\"grant_mappings\":%llu,"
		       "\"xenstore\":{\"connections\":%llu,\"watches\":%llu,\"transactions\":%llu,\"nodes\":%llu}}}\n",
		       (unsigned long long)s->domains, (unsigned long long)s->evtchn_channels,
		       (unsigned long long)s->gnt_shares, (unsigned long long)s->gnt_maps,
		       (unsigned long long)s->xs_connections, (unsigned long long)s->xs_watches,
		       (unsigned long long)s->xs_transactions, (unsigned long long)s->xs_nodes);
		return 0;
	}
	printf("broker      pid %d, uid %u, up %.1f s, %llu clients\n", s->broker_pid, s->uid,
	       (double)s->uptime_ns / 1e9, (unsigned long long)s->clients);
	cli_human_bytes(b1, sizeof(b1), s->pages_total * MV_PAGE_SIZE);
	printf("regions     %llu (%llu held for purging), %s\n", (unsigned long long)s->regions,
	       (unsigned long long)s->regions_held, b1);
	cli_human_bytes(b1, sizeof(b1), s->pages_pinned * MV_PAGE_SIZE);
	cli_human_bytes(b2, sizeof(b2), s->pages_unpinned * MV_PAGE_SIZE);
	cli_human_bytes(b3, sizeof(b3), s->pages_purged * MV_PAGE_SIZE);
	printf("pages       pinned %s, unpinned %s, purged %s\n", b1, b2, b3);
	cli_human_bytes(b1, sizeof(b1), s->purged_pages_total * MV_PAGE_SIZE);
	printf("purging     %s in %llu ranges; triggers: pressure %llu, budget %llu, explicit %llu\n", b1,
	       (unsigned long long)s->purge_runs, (unsigned long long)s->purges_pressure,
	       (unsigned long long)s->purges_budget, (unsigned long long)s->purges_explicit);
	if (s->unpinned_budget == UINT64_MAX)
		snprintf(b2, sizeof(b2), "none");
	else
		cli_human_bytes(b2, sizeof(b2), s->unpinned_budget);
	cli_human_bytes(b3, sizeof(b3), s->min_available);
	cli_human_bytes(b4, sizeof(b4), s->broker_heap_bytes);
	printf("policy      unpinned budget %s, min MemAvailable %s, PSI %s (%llu events)\n", b2, b3,
	       s->psi_enabled ? "on" : "off", (unsigned long long)s->psi_events);
	printf("broker heap %s\n", b4);
	cli_human_bytes(b1, sizeof(b1), s->pages_compressed * MV_PAGE_SIZE);
	cli_human_bytes(b2, sizeof(b2), s->compressed_mem_used);
	cli_human_bytes(b3, sizeof(b3), s->compressed_budget);
	printf("compressed  %s, %s: %s held in %s (ratio %.2f, budget %s); %llu compressed, %llu restored, "
	       "%llu evicted, %llu incompressible dropped\n",
	       s->compress_enabled ? "on" : "off", s->compress_enabled ? "unpinned pages kept before dropping" : "drop at once",
	       b1, b2, s->compressed_mem_used ? (double)(s->pages_compressed * MV_PAGE_SIZE) / (double)s->compressed_mem_used : 0.0,
	       b3, (unsigned long long)s->compressions_total, (unsigned long long)s->restores_total,
	       (unsigned long long)s->evictions_total, (unsigned long long)s->incompressible_total);
	printf("xen         %llu domains, %llu event channels, %llu grant shares, %llu grant mappings;\n"
	       "            xenstore %llu nodes, %llu connections, %llu watches, %llu open transactions\n",
	       (unsigned long long)s->domains, (unsigned long long)s->evtchn_channels,
	       (unsigned long long)s->gnt_shares, (unsigned long long)s->gnt_maps, (unsigned long long)s->xs_nodes,
	       (unsigned long long)s->xs_connections, (unsigned long long)s->xs_watches,
	       (unsigned long long)s->xs_transactions);
	return 0;
}

int cli_fetch_regions(struct mv_region_rec **recs, void **map, size_t *maplen)
{
	struct mv_wire_msg rep;
	struct stat st;
	int fd = -1, n;
	int r = mvc_request(MV_MSG_REGIONS, NULL, 0, -1, &rep, &fd);

	if (r < 0)
		return r;
	if (fd < 0 || fstat(fd, &st) < 0) {
		if (fd >= 0)
			close(fd);
		return -EPROTO;
	}
	*maplen = (size_t)st.st_size;
	*map = mmap(NULL, *maplen, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (*map == MAP_FAILED)
		return -errno;
	n = mv_wire_regions_check(*map, *maplen);
	if (n < 0) {
		munmap(*map, *maplen);
		return n;
	}
	*recs = (struct mv_region_rec *)((char *)*map + sizeof(struct mv_regions_head));
	return n;
}

static int cmd_domains(void)
{
	struct mv_wire_msg rep, st;
	struct stat sb;
	int fd = -1;
	int r = mvc_request(MV_MSG_DOMAINS, NULL, 0, -1, &rep, &fd);
	if (r < 0)
		return no_broker(r);
	if (fd < 0 || fstat(fd, &sb) < 0 || sb.st_size < (off_t)sizeof(struct mv_domains_head)) {
		if (fd >= 0)
			close(fd);
		fprintf(stderr, "memvisor: the broker sent a malformed domain list\n");
		return 1;
	}
	size_t len = (size_t)sb.st_size;
	void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	int n = map == MAP_FAILED ? -errno : mv_wire_domains_check(map, len);
	if (n < 0) {
		fprintf(stderr, "memvisor: the broker sent a malformed domain list\n");
		if (map != MAP_FAILED)
			munmap(map, len);
		return 1;
	}
	const struct mv_domain_rec *recs = (const struct mv_domain_rec *)((char *)map + sizeof(struct mv_domains_head));
	int broker = mvc_request(MV_MSG_STATUS, NULL, 0, -1, &st, NULL) == 0 ? st.u.status_rep.broker_pid : 0;
	if (json) {
		printf("{\"domains\":[{\"domid\":0,\"pid\":%d,\"role\":\"broker\"}", broker);
		for (int i = 0; i < n; i++)
			printf(",{\"domid\":%u,\"pid\":%d,\"uid\":%u,\"created_ns\":%llu}", recs[i].domid, recs[i].pid,
			       recs[i].uid, (unsigned long long)recs[i].created_realtime_ns);
		printf("]}\n");
	} else {
		printf("%6s %8s %6s  %s\n", "DOMID", "PID", "UID", "WHAT");
		printf("%6u %8d %6s  %s\n", 0u, broker, "-", "the broker (plays the hypervisor)");
		for (int i = 0; i < n; i++) {
			char comm[64] = "", path[64];
			snprintf(path, sizeof(path), "/proc/%d/comm", recs[i].pid);
			FILE *f = fopen(path, "re");
			if (f) {
				if (fgets(comm, sizeof(comm), f))
					comm[strcspn(comm, "\n")] = 0;
				fclose(f);
			}
			printf("%6u %8d %6u  %s\n", recs[i].domid, recs[i].pid, recs[i].uid, comm);
		}
	}
	munmap(map, len);
	return 0;
}

static int cmd_regions(void)
{
	struct mv_region_rec *recs;
	void *map;
	size_t maplen;
	int n = cli_fetch_regions(&recs, &map, &maplen);

	if (n < 0)
		return no_broker(n);
	if (json)
		printf("[");
	else
		printf("%-6s %-24s %10s %8s %8s %8s %10s  %s\n", "ID", "NAME", "SIZE", "PINNED", "UNPINNED", "PURGED",
		       "COMPRESSED", "HOLDERS");
	for (int i = 0; i < n; i++) {
		struct mv_region_rec *r = &recs[i];
		if (json) {
			printf("%s{\"id\":%llu,\"name\":", i ? "," : "", (unsigned long long)r->id);
			cli_json_string(stdout, r->name);
			printf(",\"size\":%llu,\"pages\":%llu,\"pinned_pages\":%llu,\"unpinned_pages\":%llu,"
			       "\"purged_pages\":%llu,\"purged_pages_total\":%llu,\"compressed_pages\":%llu,\"restores\":%llu,"
			       "\"compression\":%s,\"held\":%s,\"purgeable\":%s,\"holders\":[",
			       (unsigned long long)r->size, (unsigned long long)r->npages, (unsigned long long)r->pinned,
			       (unsigned long long)r->unpinned, (unsigned long long)r->purged,
			       (unsigned long long)r->purged_total, (unsigned long long)r->compressed,
			       (unsigned long long)r->restores, (r->flags >> 16) & MV_CTL_F_NO_COMPRESS ? "false" : "true",
			       (r->flags & MV_ATTACH_HELD) ? "true" : "false", (r->flags >> 8) & 1 ? "false" : "true");
			for (uint32_t k = 0; k < r->nholders; k++)
				printf("%s%d", k ? "," : "", r->holders[k]);
			printf("]}");
		} else {
			char sz[32], holders[96] = "";
			size_t off = 0;
			cli_human_bytes(sz, sizeof(sz), r->size);
			for (uint32_t k = 0; k < r->nholders && off < sizeof(holders) - 12; k++)
				off += (size_t)snprintf(holders + off, sizeof(holders) - off, "%s%d", k ? "," : "",
							r->holders[k]);
			printf("%-6llu %-24.24s %10s %8llu %8llu %8llu %10llu  %s\n", (unsigned long long)r->id, r->name, sz,
			       (unsigned long long)r->pinned, (unsigned long long)(r->unpinned - r->compressed),
			       (unsigned long long)r->purged, (unsigned long long)r->compressed, off ? holders : "-");
		}
	}
	if (json)
		printf("]\n");
	munmap(map, maplen);
	return 0;
}

static int cmd_purge(int argc, char **argv)
{
	struct mv_req_purge req = { .mode = MV_PURGE_EVERYTHING };
	struct mv_wire_msg rep;
	char b[32];
	int r;

	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--all") == 0)
			req.mode = MV_PURGE_EVERYTHING;
		else if (strcmp(argv[i], "--bytes") == 0 && i + 1 < argc) {
			if (mv_parse_size(argv[++i], &req.bytes) < 0) {
				fprintf(stderr, "memvisor purge: bad size '%s'\n", argv[i]);
				return 2;
			}
			req.mode = MV_PURGE_BYTES;
		} else {
			fprintf(stderr, "usage: memvisor purge [--all | --bytes N] [--json]\n");
			return 2;
		}
	}
	r = mvc_request(MV_MSG_PURGE, &req, sizeof(req), -1, &rep, NULL);
	if (r < 0)
		return no_broker(r);
	if (json) {
		printf("{\"purged_bytes\":%llu,\"ranges\":%llu,\"seconds\":%.6f,\"unpinned_left_bytes\":%llu}\n",
		       (unsigned long long)(rep.u.purge_rep.pages * MV_PAGE_SIZE), (unsigned long long)rep.u.purge_rep.runs,
		       (double)rep.u.purge_rep.ns / 1e9,
		       (unsigned long long)(rep.u.purge_rep.unpinned_left * MV_PAGE_SIZE));
	} else {
		cli_human_bytes(b, sizeof(b), rep.u.purge_rep.pages * MV_PAGE_SIZE);
		printf("purged %s in %llu ranges (%.3f ms)\n", b, (unsigned long long)rep.u.purge_rep.runs,
		       (double)rep.u.purge_rep.ns / 1e6);
	}
	return 0;
}

static int cmd_config(int argc, char **argv)
{
	struct mv_req_config req = { 0 };
	uint64_t v = 0;
	int r;

	if (argc != 2) {
		fprintf(stderr, "usage: memvisor config unpinned-budget|min-available BYTES|none\n");
		return 2;
	}
	if (strcmp(argv[0], "compress") == 0) {
		req.key = MV_CONFIG_COMPRESS;
		if (strcmp(argv[1], "on") && strcmp(argv[1], "off")) {
			fprintf(stderr, "memvisor config: compress takes on or off\n");
			return 2;
		}
		req.value = strcmp(argv[1], "on") == 0;
		int r = mvc_request(MV_MSG_CONFIG, &req, sizeof(req), -1, NULL, NULL);
		return r < 0 ? no_broker(r) : 0;
	}
	if (strcmp(argv[0], "compressed-budget") == 0)
		req.key = MV_CONFIG_COMPRESSED_BUDGET;
	else if (strcmp(argv[0], "unpinned-budget") == 0)
		req.key = MV_CONFIG_UNPINNED_BUDGET;
	else if (strcmp(argv[0], "min-available") == 0)
		req.key = MV_CONFIG_MIN_AVAILABLE;
	else {
		fprintf(stderr, "memvisor config: unknown setting '%s'\n", argv[0]);
		return 2;
	}
	if (strcmp(argv[1], "none") == 0)
		v = req.key == MV_CONFIG_UNPINNED_BUDGET ? UINT64_MAX : 0;
	else if (mv_parse_size(argv[1], &v) < 0) {
		fprintf(stderr, "memvisor config: bad size '%s'\n", argv[1]);
		return 2;
	}
	req.value = v;
	r = mvc_request(MV_MSG_CONFIG, &req, sizeof(req), -1, NULL, NULL);
	if (r < 0)
		return no_broker(r);
	return 0;
}

static int cmd_env(void)
{
	char dir[256];
	int r = mv_runtime_dir(dir, sizeof(dir), 0);

	if (r < 0 && r != -ENOENT) {
		fprintf(stderr, "memvisor env: runtime directory unusable: %s\n", strerror(-r));
		return 1;
	}
	if (json) {
		printf("{\"MEMVISOR_RUNTIME_DIR\":");
		cli_json_string(stdout, dir);
		printf(",\"broker_socket\":");
		printf("\"%s/broker.sock\"}\n", dir);
	} else {
		printf("export MEMVISOR_RUNTIME_DIR='%s'\n", dir);
	}
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: memvisor COMMAND [--json]\n"
		   "  status                 broker, clients, regions, bytes pinned/unpinned/purged, purge counts\n"
		   "  regions                every region: name, size, pinned/unpinned/purged pages, holder pids\n"
		   "  purge [--all|--bytes N] purge unpinned memory now, least recently unpinned first\n"
		   "  config KEY VALUE       unpinned-budget BYTES|none, min-available BYTES, compress on|off,\n"
		   "                         compressed-budget BYTES\n"
		   "  env                    the exports a shell needs\n"
		   "  merge                  same-page merging of every merging process: shared, sharing, zero pages\n"
		   "  domains                every domain (a process that asked for its domid) and its pid\n"
		   "  store ls|read|write|rm|watch  the broker's xenstore, as domain 0 (PATH [VALUE|COUNT])\n"
		   "  tour                   a guided run: processes sharing a purgeable cache under pressure\n");
}

int main(int argc, char **argv)
{
	const char *cmd;
	char *args[64];
	int nargs = 0;

	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	cmd = argv[1];
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			json = true;
		else if (nargs < 63)
			args[nargs++] = argv[i];
	}
	if (strcmp(cmd, "tour") == 0)
		return cli_tour(nargs, args, json);
	if (strcmp(cmd, "tour-vchan-peer") == 0 && nargs == 1)
		return cli_tour_vchan_peer(args[0]); /* the tour runs this with memvisor's Xen libraries */
	if (strcmp(cmd, "tour-ashmem-client") == 0 && nargs == 1)
		return cli_tour_ashmem_client(atoi(args[0])); /* the tour runs this under LD_PRELOAD */
	if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
		usage(stdout);
		return 0;
	}
	/* Inspecting must not start a broker as a side effect. */
	setenv("MEMVISOR_AUTOSTART", "0", 1);
	if (strcmp(cmd, "status") == 0 && !nargs)
		return cmd_status();
	if (strcmp(cmd, "regions") == 0 && !nargs)
		return cmd_regions();
	if (strcmp(cmd, "purge") == 0)
		return cmd_purge(nargs, args);
	if (strcmp(cmd, "config") == 0)
		return cmd_config(nargs, args);
	if (strcmp(cmd, "env") == 0 && !nargs)
		return cmd_env();
	if (strcmp(cmd, "merge") == 0 && !nargs)
		return cli_merge(json);
	if (strcmp(cmd, "domains") == 0 && !nargs)
		return cmd_domains();
	if (strcmp(cmd, "store") == 0)
		return cli_store(nargs, args, json);
	fprintf(stderr, "memvisor: unknown command or arguments: %s\n", cmd);
	usage(stderr);
	return 2;
}
