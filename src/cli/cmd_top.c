/* SPDX-License-Identifier: MIT */
/* memvisor top: a live view of one broker, refreshed every interval, from the admin API alone
 * (memvisor/broker.h): the broker, its regions, the purge and restore rates, the compressed tier,
 * merging per process and the Xen domains. On a terminal it redraws in place with ANSI escapes and
 * reads single keys (termios); anywhere else it prints plain frames one after another. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "cli.h"
#include "memvisor/broker.h"
#include "memvisor/memvisor.h"

enum sort_key { SORT_SIZE, SORT_PINNED, SORT_UNPINNED, SORT_PURGED, SORT_COMPRESSED, SORT_RESTORES, SORT_NAME };

static const struct {
	const char *name;
	char key;
} sorts[] = {
	[SORT_SIZE] = { "size", 's' },
	[SORT_PINNED] = { "pinned", 'p' },
	[SORT_UNPINNED] = { "unpinned", 'u' },
	[SORT_PURGED] = { "purged", 'x' },
	[SORT_COMPRESSED] = { "compressed", 'c' },
	[SORT_RESTORES] = { "restores", 'r' },
	[SORT_NAME] = { "name", 'n' },
};

static enum sort_key sort_by = SORT_SIZE;
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	stop = 1;
}

static uint64_t sort_value(const struct mv_broker_region *g)
{
	switch (sort_by) {
	case SORT_PINNED: return g->pinned;
	case SORT_UNPINNED: return g->unpinned - g->compressed;
	case SORT_PURGED: return g->purged;
	case SORT_COMPRESSED: return g->compressed;
	case SORT_RESTORES: return g->restores;
	default: return g->size;
	}
}

/* Largest first; names in order; ties by id, so that rows do not jump between frames. */
static int cmp_region(const void *a, const void *b)
{
	const struct mv_broker_region *x = a, *y = b;
	int c = 0;

	if (sort_by == SORT_NAME)
		c = strcmp(x->name, y->name);
	else {
		uint64_t vx = sort_value(x), vy = sort_value(y);
		c = vx > vy ? -1 : vx < vy ? 1 : 0;
	}
	return c ? c : x->id < y->id ? -1 : x->id > y->id;
}

static void comm_of(pid_t pid, char *out, size_t len)
{
	char path[64];
	FILE *f;

	snprintf(out, len, "?");
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	if ((f = fopen(path, "re"))) {
		if (fgets(out, (int)len, f))
			out[strcspn(out, "\n")] = 0;
		fclose(f);
	}
}

static const char *bytes(char *buf, size_t len, uint64_t b)
{
	cli_human_bytes(buf, len, b);
	return buf;
}

static void duration(char *buf, size_t len, uint64_t ns)
{
	uint64_t s = ns / 1000000000ull;
	if (s >= 86400)
		snprintf(buf, len, "%llud %02lluh", (unsigned long long)(s / 86400),
			 (unsigned long long)(s % 86400 / 3600));
	else if (s >= 3600)
		snprintf(buf, len, "%lluh %02llum", (unsigned long long)(s / 3600),
			 (unsigned long long)(s % 3600 / 60));
	else
		snprintf(buf, len, "%llum %02llus", (unsigned long long)(s / 60), (unsigned long long)(s % 60));
}

/* What the rates are measured against: the previous frame's counters. */
static struct {
	bool have;
	uint64_t uptime_ns, purged_pages, restores;
} prev;

#define V(name) mv_broker_status_value(st, name, 0)

/* One frame into f. Returns 0, or a negative errno when there is no broker to show. */
static int frame(FILE *f, bool tty)
{
	mv_broker_status *st;
	struct mv_broker_region *regs = NULL;
	struct mv_broker_domain *doms = NULL;
	struct mv_broker_merger *mergers = NULL;
	size_t nregs = 0, ndoms = 0, nmergers = 0;
	char b1[32], b2[32], b3[32], b4[32], b5[32];
	int r = mv_broker_status_new(&st);

	if (r < 0)
		return r;
	if (mv_broker_regions(&regs, &nregs) < 0)
		nregs = 0;
	if (mv_broker_domains(&doms, &ndoms) < 0)
		ndoms = 0;
	if (mv_broker_mergers(&mergers, &nmergers) < 0)
		nmergers = 0;

	uint64_t up = V("broker.uptime_ns"), purged = V("regions.purged_pages_total"), restores = V("tier.restores");
	/* The first frame has nothing before it: its rates are the averages since the broker started. */
	bool since_start = !prev.have || up <= prev.uptime_ns || purged < prev.purged_pages || restores < prev.restores;
	double dt = (double)(since_start ? up : up - prev.uptime_ns) / 1e9;
	double purge_rate = dt > 0 ? (double)(purged - (since_start ? 0 : prev.purged_pages)) * MV_PAGE_SIZE / dt : 0;
	double restore_rate = dt > 0 ? (double)(restores - (since_start ? 0 : prev.restores)) * MV_PAGE_SIZE / dt : 0;
	prev.have = true;
	prev.uptime_ns = up;
	prev.purged_pages = purged;
	prev.restores = restores;

	duration(b1, sizeof(b1), up);
	fprintf(f, "memvisor top - broker pid %llu, up %s, %llu clients, rss %s, heap %s, %llu fds\n",
		(unsigned long long)V("broker.pid"), b1, (unsigned long long)V("broker.clients"),
		bytes(b2, sizeof(b2), V("broker.rss_bytes")), bytes(b3, sizeof(b3), V("broker.heap_bytes")),
		(unsigned long long)V("broker.fds"));
	fprintf(f, "Regions: %llu (%llu held), %s: pinned %s, unpinned %s, purged %s, compressed %s\n",
		(unsigned long long)V("regions.count"), (unsigned long long)V("regions.held"),
		bytes(b1, sizeof(b1), V("regions.pages_total") * MV_PAGE_SIZE),
		bytes(b2, sizeof(b2), V("regions.pages_pinned") * MV_PAGE_SIZE),
		bytes(b3, sizeof(b3), V("regions.pages_unpinned") * MV_PAGE_SIZE), /* resident */
		bytes(b4, sizeof(b4), V("regions.pages_purged") * MV_PAGE_SIZE),
		bytes(b5, sizeof(b5), V("tier.pages") * MV_PAGE_SIZE));
	fprintf(f, "Rates%s: purge %s/s, restore %s/s; purged %s in %llu runs, %llu pages restored\n",
		since_start ? " (since start)" : "", bytes(b1, sizeof(b1), (uint64_t)purge_rate),
		bytes(b2, sizeof(b2), (uint64_t)restore_rate), bytes(b3, sizeof(b3), purged * MV_PAGE_SIZE),
		(unsigned long long)V("regions.purge_runs"), (unsigned long long)restores);
	/* A page leaves the tier restored to its owner (a hit) or evicted for room (a miss). */
	uint64_t held = V("tier.bytes_held"), evictions = V("tier.evictions");
	double ratio = held ? (double)(V("tier.pages") * MV_PAGE_SIZE) / (double)held : 0;
	if (restores + evictions)
		snprintf(b5, sizeof(b5), "%.1f%%", 100.0 * (double)restores / (double)(restores + evictions));
	else
		snprintf(b5, sizeof(b5), "-");
	fprintf(f, "Tier: %s, %s in %s of %s, ratio %.2f, hit rate %s (%llu restored, %llu evicted)\n",
		V("tier.enabled") ? "on" : "off", bytes(b1, sizeof(b1), V("tier.pages") * MV_PAGE_SIZE),
		bytes(b2, sizeof(b2), held), bytes(b3, sizeof(b3), V("tier.budget")), ratio, b5,
		(unsigned long long)restores, (unsigned long long)evictions);
	fprintf(f,
		"Xen: %llu domains, %llu event channels, %llu grant shares, %llu grant mappings, %llu xenstore nodes\n",
		(unsigned long long)V("xen.domains"), (unsigned long long)V("xen.event_channels"),
		(unsigned long long)V("xen.grant_shares"), (unsigned long long)V("xen.grant_mappings"),
		(unsigned long long)V("xenstore.nodes"));

	fprintf(f, "\n%-6s %8s %8s %7s %8s  %s\n", "DOMID", "PID", "GRANTS", "MAPPED", "CHANNELS", "COMMAND");
	for (size_t i = 0; i < ndoms; i++) {
		char name[64], comm[64];
		unsigned d = doms[i].domid;
		uint64_t grants, maps, chans;
		snprintf(name, sizeof(name), "xen.domain.%u.grants", d);
		grants = V(name);
		snprintf(name, sizeof(name), "xen.domain.%u.grant_mappings", d);
		maps = V(name);
		snprintf(name, sizeof(name), "xen.domain.%u.event_channels", d);
		chans = V(name);
		comm_of(doms[i].pid, comm, sizeof(comm));
		fprintf(f, "%-6u %8d %8llu %7llu %8llu  %s\n", d, (int)doms[i].pid, (unsigned long long)grants,
			(unsigned long long)maps, (unsigned long long)chans, comm);
	}
	if (!ndoms)
		fprintf(f, "(no domains)\n");

	fprintf(f, "\n%8s %-12s %9s %9s %9s %9s  %s\n", "PID", "PARTITION", "SHARED", "SAVED", "ZERO", "PROFIT",
		"COMMAND");
	for (size_t i = 0; i < nmergers; i++) {
		const struct mv_merge_stats *m = &mergers[i].stats;
		char comm[64], profit[40];
		comm_of(mergers[i].pid, comm, sizeof(comm));
		cli_human_bytes(profit + 1, sizeof(profit) - 1,
				(uint64_t)(m->general_profit < 0 ? -m->general_profit : m->general_profit));
		profit[0] = m->general_profit < 0 ? '-' : ' ';
		fprintf(f, "%8d %-12.12s %9s %9s %9s %9s  %s\n", (int)mergers[i].pid,
			mergers[i].partition[0] ? mergers[i].partition : "-",
			bytes(b1, sizeof(b1), m->pages_shared * MV_PAGE_SIZE),
			bytes(b2, sizeof(b2), m->pages_sharing * MV_PAGE_SIZE),
			bytes(b3, sizeof(b3), m->zero_pages * MV_PAGE_SIZE), profit[0] == '-' ? profit : profit + 1,
			comm);
	}
	if (!nmergers)
		fprintf(f, "(no merging processes)\n");

	qsort(regs, nregs, sizeof(*regs), cmp_region);
	fprintf(f, "\n%-6s %-20s %9s %9s %9s %9s %10s %8s  %s   [sort: %s]\n", "ID", "NAME", "SIZE", "PINNED",
		"UNPINNED", "PURGED", "COMPRESSED", "RESTORES", "HOLDERS", sorts[sort_by].name);
	for (size_t i = 0; i < nregs; i++) {
		const struct mv_broker_region *g = &regs[i];
		char holders[96] = "";
		size_t off = 0;
		for (uint32_t k = 0; k < g->nholders && k < MV_BROKER_MAX_HOLDERS && off < sizeof(holders) - 12; k++)
			off += (size_t)snprintf(holders + off, sizeof(holders) - off, "%s%d", k ? "," : "",
						(int)g->holders[k]);
		fprintf(f, "%-6llu %-20.20s %9s %9s %9s %9s %10s %8llu  %s\n", (unsigned long long)g->id, g->name,
			bytes(b1, sizeof(b1), g->size), bytes(b2, sizeof(b2), g->pinned * MV_PAGE_SIZE),
			bytes(b3, sizeof(b3), (g->unpinned - g->compressed) * MV_PAGE_SIZE),
			bytes(b4, sizeof(b4), g->purged * MV_PAGE_SIZE),
			bytes(b5, sizeof(b5), g->compressed * MV_PAGE_SIZE), (unsigned long long)g->restores,
			off ? holders : "-");
	}
	if (!nregs)
		fprintf(f, "(no regions)\n");
	if (tty)
		fprintf(f,
			"\nq quit   sort: s size  p pinned  u unpinned  x purged  c compressed  r restores  n name\n");
	free(regs);
	free(doms);
	free(mergers);
	mv_broker_status_free(st);
	return 0;
}
#undef V

/* Redraws in place, clipped to the window, as top does. */
static void draw(const char *text, size_t len)
{
	struct winsize ws = { 0 };
	unsigned rows = 24, cols = 80, row = 0;

	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) {
		rows = ws.ws_row;
		cols = ws.ws_col;
	}
	fputs("\x1b[H", stdout);
	for (const char *p = text; p < text + len && row < rows; row++) {
		const char *nl = memchr(p, '\n', (size_t)(text + len - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(text + len - p);
		fwrite(p, 1, n < cols ? n : cols, stdout);
		fputs("\x1b[K", stdout);
		if (row + 1 < rows)
			fputs("\r\n", stdout);
		p += n + 1;
	}
	fputs("\x1b[J", stdout);
	fflush(stdout);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: memvisor top [--once] [--interval SECONDS] [--sort KEY]\n"
		   "  a live view of the broker: uptime and memory, regions, purge and restore rates, the\n"
		   "  compressed tier, merging per process, domains with their grants and channels\n"
		   "  --once              print one frame and exit\n"
		   "  --interval SECONDS  time between frames (default 1; 0.1 to 3600)\n"
		   "  --sort KEY          regions by size, pinned, unpinned, purged, compressed, restores or name\n"
		   "  keys: q quits; s p u x c r n sort by the key above\n"
		   "  Not on a terminal, frames are printed one after another as plain text.\n");
}

int cli_top_usage(FILE *f)
{
	usage(f);
	return 0;
}

int cli_top(int argc, char **argv)
{
	bool once = false;
	double interval = 1.0;

	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--once") == 0)
			once = true;
		else if (strcmp(argv[i], "--interval") == 0) {
			char *end;
			if (i + 1 >= argc) {
				fprintf(stderr, "memvisor top: --interval needs SECONDS\n");
				return 2;
			}
			errno = 0;
			interval = strtod(argv[++i], &end);
			if (errno || end == argv[i] || *end || !(interval >= 0.1 && interval <= 3600)) {
				fprintf(stderr, "memvisor top: bad --interval '%s' (seconds, 0.1 to 3600)\n", argv[i]);
				return 2;
			}
		} else if (strcmp(argv[i], "--sort") == 0) {
			size_t k;
			if (i + 1 >= argc) {
				fprintf(stderr, "memvisor top: --sort needs KEY\n");
				return 2;
			}
			i++;
			for (k = 0; k < CLI_ARRAY_SIZE(sorts) && strcmp(argv[i], sorts[k].name); k++)
				;
			if (k == CLI_ARRAY_SIZE(sorts)) {
				fprintf(stderr,
					"memvisor top: bad --sort '%s' (size, pinned, unpinned, purged, "
					"compressed, restores, name)\n",
					argv[i]);
				return 2;
			}
			sort_by = (enum sort_key)k;
		} else {
			fprintf(stderr, "memvisor top: unknown argument '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}

	bool tty = !once && isatty(STDOUT_FILENO);
	bool keys = isatty(STDIN_FILENO);
	struct termios saved, raw;
	struct sigaction sa = { .sa_handler = on_signal };
	char *text = NULL;
	size_t len = 0;
	int rc = 0;

	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	if (keys && tcgetattr(STDIN_FILENO, &saved) == 0) {
		raw = saved;
		raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
		raw.c_cc[VMIN] = 1;
		raw.c_cc[VTIME] = 0;
		keys = !once && tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
	} else
		keys = false;
	if (tty)
		fputs("\x1b[?1049h\x1b[?25l", stdout); /* the alternate screen, no cursor: as top */

	while (!stop) {
		free(text); /* each stream makes its own buffer */
		text = NULL;
		FILE *f = open_memstream(&text, &len);
		if (!f) {
			rc = 1;
			break;
		}
		int r = frame(f, tty);
		if (r < 0)
			fprintf(f, "memvisor top: no broker: %s\n", r == -ENOTCONN ? "none is running" : strerror(-r));
		fclose(f);
		if (r < 0 && once) {
			fputs(text, stderr);
			rc = 1;
			break;
		}
		if (tty)
			draw(text, len);
		else {
			fputs(text, stdout);
			fflush(stdout);
		}
		if (once)
			break;
		if (!tty)
			fputs("\n", stdout);

		/* Wait out the interval, answering keys as they come. */
		uint64_t until = cli_now_ns() + (uint64_t)(interval * 1e9);
		bool redraw = false;
		while (!stop && !redraw) {
			uint64_t now = cli_now_ns();
			if (now >= until)
				break;
			struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
			int n = poll(&pfd, keys ? 1 : 0, (int)((until - now) / 1000000) + 1);
			if (n <= 0 || !(pfd.revents & POLLIN))
				continue;
			char c;
			if (read(STDIN_FILENO, &c, 1) != 1) {
				keys = false;
				continue;
			}
			if (c == 'q' || c == 'Q') {
				stop = 1;
				break;
			}
			for (size_t k = 0; k < CLI_ARRAY_SIZE(sorts); k++)
				if (c == sorts[k].key) {
					sort_by = (enum sort_key)k;
					redraw = true;
				}
		}
	}
	free(text);
	if (tty)
		fputs("\x1b[?25h\x1b[?1049l", stdout);
	fflush(stdout);
	if (keys)
		tcsetattr(STDIN_FILENO, TCSANOW, &saved);
	return rc;
}
