/* SPDX-License-Identifier: MIT */
/* memvisor: the command-line tool. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "memvisor/broker.h"
#include "memvisor/memvisor.h"

static bool json;

static int no_broker(int r)
{
	if (r == -ENOTCONN)
		fprintf(stderr,
			"memvisor: no broker is running (start one with 'memvisord', or run 'memvisor tour')\n");
	else
		fprintf(stderr, "memvisor: broker request failed: %s\n", strerror(-r));
	return 1;
}

/* Counters the broker reports; a counter an older broker does not know reads as 0. */
#define V(name) ((unsigned long long)mv_broker_status_value(st, name, 0))

static int cmd_status(void)
{
	mv_broker_status *st;
	char b1[32], b2[32], b3[32], b4[32];
	int r = mv_broker_status_new(&st);

	if (r < 0)
		return no_broker(r);
	uint64_t budget = mv_broker_status_value(st, "regions.unpinned_budget", UINT64_MAX);
	double held = (double)V("tier.bytes_held"), orig = (double)(V("tier.pages") * MV_PAGE_SIZE);
	if (json) {
		printf("{\"broker_pid\":%llu,\"uid\":%llu,\"uptime_s\":%.3f,\"clients\":%llu,\"regions\":%llu,"
		       "\"regions_held\":%llu,\"bytes_total\":%llu,\"bytes_pinned\":%llu,\"bytes_unpinned\":%llu,"
		       "\"bytes_purged\":%llu,\"purged_bytes_total\":%llu,\"purge_runs\":%llu,"
		       "\"purges\":{\"pressure\":%llu,\"budget\":%llu,\"explicit\":%llu},",
		       V("broker.pid"), V("broker.uid"), (double)V("broker.uptime_ns") / 1e9, V("broker.clients"),
		       V("regions.count"), V("regions.held"), V("regions.pages_total") * MV_PAGE_SIZE,
		       V("regions.pages_pinned") * MV_PAGE_SIZE, V("regions.pages_unpinned") * MV_PAGE_SIZE,
		       V("regions.pages_purged") * MV_PAGE_SIZE, V("regions.purged_pages_total") * MV_PAGE_SIZE,
		       V("regions.purge_runs"), V("regions.purges_pressure"), V("regions.purges_budget"),
		       V("regions.purges_explicit"));
		if (budget == UINT64_MAX)
			printf("\"unpinned_budget\":null,");
		else
			printf("\"unpinned_budget\":%llu,", (unsigned long long)budget);
		printf("\"min_available\":%llu,\"psi_enabled\":%s,\"psi_events\":%llu,\"broker_heap_bytes\":%llu,"
		       "\"inotify_overflows\":%llu,",
		       V("regions.min_available"), V("regions.psi_enabled") ? "true" : "false", V("regions.psi_events"),
		       V("broker.heap_bytes"), V("regions.inotify_overflows"));
		printf("\"compressed_tier\":{\"enabled\":%s,\"pages\":%llu,\"bytes_original\":%llu,"
		       "\"bytes_compressed\":%llu,\"bytes_held\":%llu,\"ratio\":%.3f,\"budget\":%llu,"
		       "\"compressions\":%llu,\"restores\":%llu,\"evictions\":%llu,\"incompressible\":%llu},",
		       V("tier.enabled") ? "true" : "false", V("tier.pages"), V("tier.pages") * MV_PAGE_SIZE,
		       V("tier.bytes_compressed"), V("tier.bytes_held"), held ? orig / held : 0.0, V("tier.budget"),
		       V("tier.compressions"), V("tier.restores"), V("tier.evictions"), V("tier.incompressible"));
		printf("\"xen\":{\"domains\":%llu,\"event_channels\":%llu,\"grant_shares\":%llu,\"grant_mappings\":%"
		       "llu,"
		       "\"xenstore\":{\"connections\":%llu,\"watches\":%llu,\"transactions\":%llu,\"nodes\":%llu}},",
		       V("xen.domains"), V("xen.event_channels"), V("xen.grant_shares"), V("xen.grant_mappings"),
		       V("xenstore.connections"), V("xenstore.watches"), V("xenstore.transactions"),
		       V("xenstore.nodes"));
		/* Every counter by its name, those above included, so that a monitor sees new ones too. */
		printf("\"counters\":{");
		for (size_t i = 0; i < mv_broker_status_count(st); i++) {
			uint64_t v;
			const char *name = mv_broker_status_entry(st, i, &v);
			printf("%s", i ? "," : "");
			cli_json_string(stdout, name);
			printf(":%llu", (unsigned long long)v);
		}
		printf("}}\n");
		mv_broker_status_free(st);
		return 0;
	}
	printf("broker      pid %llu, uid %llu, up %.1f s, %llu clients\n", V("broker.pid"), V("broker.uid"),
	       (double)V("broker.uptime_ns") / 1e9, V("broker.clients"));
	cli_human_bytes(b1, sizeof(b1), V("regions.pages_total") * MV_PAGE_SIZE);
	printf("regions     %llu (%llu held for purging), %s\n", V("regions.count"), V("regions.held"), b1);
	cli_human_bytes(b1, sizeof(b1), V("regions.pages_pinned") * MV_PAGE_SIZE);
	cli_human_bytes(b2, sizeof(b2), V("regions.pages_unpinned") * MV_PAGE_SIZE);
	cli_human_bytes(b3, sizeof(b3), V("regions.pages_purged") * MV_PAGE_SIZE);
	printf("pages       pinned %s, unpinned %s, purged %s\n", b1, b2, b3);
	cli_human_bytes(b1, sizeof(b1), V("regions.purged_pages_total") * MV_PAGE_SIZE);
	printf("purging     %s in %llu ranges; triggers: pressure %llu, budget %llu, explicit %llu\n", b1,
	       V("regions.purge_runs"), V("regions.purges_pressure"), V("regions.purges_budget"),
	       V("regions.purges_explicit"));
	if (budget == UINT64_MAX)
		snprintf(b2, sizeof(b2), "none");
	else
		cli_human_bytes(b2, sizeof(b2), budget);
	cli_human_bytes(b3, sizeof(b3), V("regions.min_available"));
	cli_human_bytes(b4, sizeof(b4), V("broker.heap_bytes"));
	printf("policy      unpinned budget %s, min MemAvailable %s, PSI %s (%llu events)\n", b2, b3,
	       V("regions.psi_enabled") ? "on" : "off", V("regions.psi_events"));
	printf("broker heap %s\n", b4);
	cli_human_bytes(b1, sizeof(b1), V("tier.pages") * MV_PAGE_SIZE);
	cli_human_bytes(b2, sizeof(b2), V("tier.bytes_held"));
	cli_human_bytes(b3, sizeof(b3), V("tier.budget"));
	printf("compressed  %s, %s: %s held in %s (ratio %.2f, budget %s); %llu compressed, %llu restored, "
	       "%llu evicted, %llu incompressible dropped\n",
	       V("tier.enabled") ? "on" : "off",
	       V("tier.enabled") ? "unpinned pages kept before dropping" : "drop at once", b1, b2,
	       held ? orig / held : 0.0, b3, V("tier.compressions"), V("tier.restores"), V("tier.evictions"),
	       V("tier.incompressible"));
	printf("xen         %llu domains, %llu event channels, %llu grant shares, %llu grant mappings;\n"
	       "            xenstore %llu nodes, %llu connections, %llu watches, %llu open transactions\n",
	       V("xen.domains"), V("xen.event_channels"), V("xen.grant_shares"), V("xen.grant_mappings"),
	       V("xenstore.nodes"), V("xenstore.connections"), V("xenstore.watches"), V("xenstore.transactions"));
	printf("merging     %llu named partitions, %llu members\n", V("merge.partitions"),
	       V("merge.partition_members"));
	mv_broker_status_free(st);
	return 0;
}
#undef V

static int cmd_domains(void)
{
	struct mv_broker_domain *d;
	mv_broker_status *st;
	size_t n;
	int r = mv_broker_domains(&d, &n);

	if (r == -EPROTO) {
		fprintf(stderr, "memvisor: the broker sent a malformed domain list\n");
		return 1;
	}
	if (r < 0)
		return no_broker(r);
	uint64_t broker = 0;
	if (mv_broker_status_new(&st) == 0) {
		broker = mv_broker_status_value(st, "broker.pid", 0);
		mv_broker_status_free(st);
	}
	if (json) {
		printf("{\"domains\":[{\"domid\":0,\"pid\":%llu,\"role\":\"broker\"}", (unsigned long long)broker);
		for (size_t i = 0; i < n; i++)
			printf(",{\"domid\":%u,\"pid\":%d,\"uid\":%u,\"created_ns\":%llu}", d[i].domid, (int)d[i].pid,
			       (unsigned)d[i].uid, (unsigned long long)d[i].created_realtime_ns);
		printf("]}\n");
	} else {
		printf("%6s %8s %6s  %s\n", "DOMID", "PID", "UID", "WHAT");
		printf("%6u %8llu %6s  %s\n", 0u, (unsigned long long)broker, "-", "the broker (plays the hypervisor)");
		for (size_t i = 0; i < n; i++) {
			char comm[64] = "", path[64];
			snprintf(path, sizeof(path), "/proc/%d/comm", (int)d[i].pid);
			FILE *f = fopen(path, "re");
			if (f) {
				if (fgets(comm, sizeof(comm), f))
					comm[strcspn(comm, "\n")] = 0;
				fclose(f);
			}
			printf("%6u %8d %6u  %s\n", d[i].domid, (int)d[i].pid, (unsigned)d[i].uid, comm);
		}
	}
	free(d);
	return 0;
}

static int cmd_regions(void)
{
	struct mv_broker_region *recs;
	size_t n;
	int r = mv_broker_regions(&recs, &n);

	if (r < 0)
		return no_broker(r);
	if (json)
		printf("[");
	else
		printf("%-6s %-24s %10s %8s %8s %8s %10s  %s\n", "ID", "NAME", "SIZE", "PINNED", "UNPINNED", "PURGED",
		       "COMPRESSED", "HOLDERS");
	for (size_t i = 0; i < n; i++) {
		struct mv_broker_region *g = &recs[i];
		if (json) {
			printf("%s{\"id\":%llu,\"name\":", i ? "," : "", (unsigned long long)g->id);
			cli_json_string(stdout, g->name);
			printf(",\"size\":%llu,\"pages\":%llu,\"pinned_pages\":%llu,\"unpinned_pages\":%llu,"
			       "\"purged_pages\":%llu,\"purged_pages_total\":%llu,\"compressed_pages\":%llu,"
			       "\"restores\":%llu,"
			       "\"compression\":%s,\"held\":%s,\"purgeable\":%s,\"holders\":[",
			       (unsigned long long)g->size, (unsigned long long)g->pages, (unsigned long long)g->pinned,
			       (unsigned long long)g->unpinned, (unsigned long long)g->purged,
			       (unsigned long long)g->purged_total, (unsigned long long)g->compressed,
			       (unsigned long long)g->restores,
			       g->flags & MV_BROKER_REGION_NO_COMPRESS ? "false" : "true",
			       g->flags & MV_BROKER_REGION_HELD ? "true" : "false",
			       g->flags & MV_BROKER_REGION_UNPURGEABLE ? "false" : "true");
			for (uint32_t k = 0; k < g->nholders; k++)
				printf("%s%d", k ? "," : "", (int)g->holders[k]);
			printf("]}");
		} else {
			char sz[32], holders[96] = "";
			size_t off = 0;
			cli_human_bytes(sz, sizeof(sz), g->size);
			for (uint32_t k = 0; k < g->nholders && off < sizeof(holders) - 12; k++)
				off += (size_t)snprintf(holders + off, sizeof(holders) - off, "%s%d", k ? "," : "",
							(int)g->holders[k]);
			printf("%-6llu %-24.24s %10s %8llu %8llu %8llu %10llu  %s\n", (unsigned long long)g->id,
			       g->name, sz, (unsigned long long)g->pinned,
			       (unsigned long long)(g->unpinned - g->compressed), (unsigned long long)g->purged,
			       (unsigned long long)g->compressed, off ? holders : "-");
		}
	}
	if (json)
		printf("]\n");
	free(recs);
	return 0;
}

static int cmd_purge(int argc, char **argv)
{
	struct mv_broker_purge_result res;
	uint64_t bytes = MV_PURGE_ALL;
	char b[32];
	int r;

	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--all") == 0)
			bytes = MV_PURGE_ALL;
		else if (strcmp(argv[i], "--bytes") == 0 && i + 1 < argc) {
			if (mv_broker_parse_size(argv[++i], &bytes) < 0 || bytes == MV_PURGE_ALL) {
				fprintf(stderr, "memvisor purge: bad size '%s'\n", argv[i]);
				return 2;
			}
		} else {
			if (strcmp(argv[i], "--bytes") == 0)
				fprintf(stderr, "memvisor purge: --bytes needs SIZE\n");
			else
				fprintf(stderr, "memvisor purge: unexpected argument '%s'\n", argv[i]);
			fprintf(stderr, "usage: memvisor purge [--all | --bytes SIZE] [--json]\n");
			return 2;
		}
	}
	r = mv_broker_purge(bytes, &res, sizeof(res));
	if (r < 0)
		return no_broker(r);
	if (json) {
		printf("{\"purged_bytes\":%llu,\"ranges\":%llu,\"seconds\":%.6f,\"unpinned_left_bytes\":%llu}\n",
		       (unsigned long long)res.bytes, (unsigned long long)res.runs, (double)res.ns / 1e9,
		       (unsigned long long)res.unpinned_bytes);
	} else {
		cli_human_bytes(b, sizeof(b), res.bytes);
		printf("purged %s in %llu ranges (%.3f ms)\n", b, (unsigned long long)res.runs, (double)res.ns / 1e6);
	}
	return 0;
}

static int cmd_config(int argc, char **argv)
{
	enum mv_broker_setting key;
	uint64_t v = 0;
	int r;

	if (argc != 2) {
		fprintf(stderr,
			"memvisor config: takes KEY VALUE (%d arguments given)\n"
			"usage: memvisor config unpinned-budget SIZE|none | min-available SIZE | compress on|off |\n"
			"                       compressed-budget SIZE\n",
			argc);
		return 2;
	}
	if (strcmp(argv[0], "compress") == 0) {
		if (strcmp(argv[1], "on") && strcmp(argv[1], "off")) {
			fprintf(stderr, "memvisor config: compress takes on or off, not '%s'\n", argv[1]);
			return 2;
		}
		r = mv_broker_set(MV_BROKER_COMPRESS, strcmp(argv[1], "on") == 0);
		return r < 0 ? no_broker(r) : 0;
	}
	if (strcmp(argv[0], "compressed-budget") == 0)
		key = MV_BROKER_COMPRESSED_BUDGET;
	else if (strcmp(argv[0], "unpinned-budget") == 0)
		key = MV_BROKER_UNPINNED_BUDGET;
	else if (strcmp(argv[0], "min-available") == 0)
		key = MV_BROKER_MIN_AVAILABLE;
	else {
		fprintf(stderr, "memvisor config: unknown setting '%s'\n", argv[0]);
		return 2;
	}
	if (strcmp(argv[1], "none") == 0)
		v = key == MV_BROKER_UNPINNED_BUDGET ? MV_BROKER_NO_LIMIT : 0;
	else if (mv_broker_parse_size(argv[1], &v) < 0) {
		fprintf(stderr, "memvisor config: bad size '%s' for %s (4096, 4k, 64M, 1GiB)\n", argv[1], argv[0]);
		return 2;
	}
	r = mv_broker_set(key, v);
	if (r < 0)
		return no_broker(r);
	return 0;
}

static int cmd_env(void)
{
	char dir[256];
	int r = mv_broker_runtime_dir(dir, sizeof(dir));

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

/* Each command's synopsis and what it does: for --help, for the overview and for usage errors. */
static const struct command {
	const char *name, *synopsis, *what;
} commands[] = {
	{ "status", "status [--json]", "broker, clients, regions, bytes pinned/unpinned/purged, purge counts" },
	{ "regions", "regions [--json]", "every region: name, size, pinned/unpinned/purged pages, holder pids" },
	{ "top", "top [--once] [--interval SECONDS] [--sort KEY]",
	  "a live view: broker, regions, purge and restore rates, the compressed tier, merging, domains" },
	{ "purge", "purge [--all | --bytes SIZE] [--json]",
	  "drop unpinned memory now, least recently unpinned first (no compressed copies kept)" },
	{ "config", "config KEY VALUE",
	  "unpinned-budget SIZE|none, min-available SIZE, compress on|off, compressed-budget SIZE" },
	{ "env", "env [--json]", "the exports a shell needs" },
	{ "merge", "merge [--json]", "same-page merging of every merging process: shared, sharing, zero pages" },
	{ "domains", "domains [--json]", "every domain (a process that asked for its domid) and its pid" },
	{ "store", "store ls|read|write|rm|watch PATH [VALUE|COUNT]", "the broker's xenstore, as domain 0" },
	{ "run", "run --domid N [--name NAME] -- PROGRAM [ARGS]", "run PROGRAM as Xen domain N" },
	{ "tour", "tour [--json]", "a guided run: processes sharing a purgeable cache under pressure" },
};

static const struct command *find_command(const char *name)
{
	for (size_t i = 0; i < CLI_ARRAY_SIZE(commands); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: memvisor COMMAND [ARGS] [--json]\n");
	for (size_t i = 0; i < CLI_ARRAY_SIZE(commands); i++)
		fprintf(f, "  %-22s %s\n", commands[i].name, commands[i].what);
	fprintf(f, "  --help, --version      also after any COMMAND\n"
		   "SIZE takes units: 4096, 4k, 64M, 1GiB (powers of 1024).\n");
}

static int command_help(const struct command *c)
{
	if (strcmp(c->name, "top") == 0)
		return cli_top_usage(stdout);
	if (strcmp(c->name, "store") == 0) {
		cli_store_usage(stdout);
		return 0;
	}
	printf("usage: memvisor %s\n  %s\n", c->synopsis, c->what);
	if (strcmp(c->name, "purge") == 0 || strcmp(c->name, "config") == 0)
		printf("SIZE takes units: 4096, 4k, 64M, 1GiB (powers of 1024).\n");
	return 0;
}

/* A command that takes no arguments was given one: name it. */
static int unexpected(const char *cmd, const char *arg)
{
	fprintf(stderr, "memvisor %s: unexpected argument '%s'\n", cmd, arg);
	fprintf(stderr, "usage: memvisor %s\n", find_command(cmd)->synopsis);
	return 2;
}

int main(int argc, char **argv)
{
	const char *cmd;
	char *args[64];
	int nargs = 0;

	/* run hands its arguments and environment to another program as they are (--version is the
	 * tool's, answered below like every command's) */
	if (argc >= 2 && strcmp(argv[1], "run") == 0 && !(argc >= 3 && strcmp(argv[2], "--version") == 0))
		return cli_run(argc - 2, argv + 2);
	/* A tool someone is watching may wait for a busy broker longer than a program's hot path may;
	 * the environment still decides when it says. A peer that died is reported, not a SIGPIPE. */
	setenv("MEMVISOR_TIMEOUT_MS", "2000", 0);
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	cmd = argv[1];
	if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0) {
		printf("memvisor %s\n", MV_VERSION);
		return 0;
	}
	if (strcmp(cmd, "tour-vchan-peer") == 0 && argc == 3)
		return cli_tour_vchan_peer(argv[2]); /* the tour runs this with memvisor's Xen libraries */
	if (strcmp(cmd, "tour-ashmem-client") == 0 && argc == 3)
		return cli_tour_ashmem_client(atoi(argv[2])); /* the tour runs this under LD_PRELOAD */
	const struct command *c = find_command(cmd);
	if (!c) {
		fprintf(stderr, "memvisor: unknown command '%s'\n", cmd);
		usage(stderr);
		return 2;
	}
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
			return command_help(c);
		if (strcmp(argv[i], "--version") == 0) {
			printf("memvisor %s\n", MV_VERSION);
			return 0;
		}
		if (strcmp(argv[i], "--json") == 0 && strcmp(cmd, "top"))
			json = true;
		else if (nargs < 63)
			args[nargs++] = argv[i];
		else {
			fprintf(stderr, "memvisor %s: too many arguments\n", cmd);
			return 2;
		}
	}
	if (strcmp(cmd, "tour") == 0)
		return cli_tour(nargs, args, json);
	/* Inspecting must not start a broker as a side effect. */
	setenv("MEMVISOR_AUTOSTART", "0", 1);
	bool no_args = !strcmp(cmd, "status") || !strcmp(cmd, "regions") || !strcmp(cmd, "env") ||
		       !strcmp(cmd, "merge") || !strcmp(cmd, "domains");
	if (no_args && nargs)
		return unexpected(cmd, args[0]);
	if (strcmp(cmd, "status") == 0)
		return cmd_status();
	if (strcmp(cmd, "regions") == 0)
		return cmd_regions();
	if (strcmp(cmd, "top") == 0)
		return cli_top(nargs, args);
	if (strcmp(cmd, "purge") == 0)
		return cmd_purge(nargs, args);
	if (strcmp(cmd, "config") == 0)
		return cmd_config(nargs, args);
	if (strcmp(cmd, "env") == 0)
		return cmd_env();
	if (strcmp(cmd, "merge") == 0)
		return cli_merge(json);
	if (strcmp(cmd, "domains") == 0)
		return cmd_domains();
	return cli_store(nargs, args, json);
}
