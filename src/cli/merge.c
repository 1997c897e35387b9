/* SPDX-License-Identifier: MIT */
/* memvisor merge: what every merging process of this user has merged, from the boards they publish. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "common/util.h"
#include "merge/board.h"

#define PG 4096

struct ctx_row {
	char file[300];
	struct mv_merge_board b;
};

/* A consistent copy of a board, or -1 when it is torn, foreign or stale (stale ones are removed). */
static int read_board(const char *dir, const char *name, struct ctx_row *row)
{
	int n = snprintf(row->file, sizeof(row->file), "%s/%s", dir, name);
	if (n < 0 || (size_t)n >= sizeof(row->file))
		return -1; /* a truncated name would be some other file */
	int fd = open(row->file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	struct stat st;
	int ok = -1;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
	    st.st_size == (off_t)sizeof(row->b)) {
		/* a writer mid-update shows an odd or changing sequence: read again */
		for (int tries = 0; tries < 100 && ok < 0; tries++) {
			unsigned char raw[sizeof(row->b)];
			uint32_t s2;
			if (pread(fd, raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
				break;
			if (pread(fd, &s2, sizeof(s2), offsetof(struct mv_merge_board, seq)) != sizeof(s2))
				break;
			if (mv_board_decode(raw, sizeof(raw), &row->b) == 0 && row->b.seq == s2)
				ok = 0;
			else
				usleep(100);
		}
	}
	close(fd);
	if (ok < 0)
		return -1;
	if (mv_proc_starttime((int)row->b.pid) != row->b.starttime) {
		unlink(row->file); /* its process died without cleaning up */
		return -1;
	}
	return 0;
}

static void json_stats(const struct mv_merge_stats *s)
{
	printf("{\"pages_shared\":%lu,\"pages_sharing\":%lu,\"pages_unshared\":%lu,\"pages_volatile\":%lu,"
	       "\"pages_scanned\":%lu,\"full_scans\":%lu,\"ksm_zero_pages\":%lu,\"general_profit\":%ld,"
	       "\"pages_skipped_budget\":%lu,\"map_budget_reached\":%lu,\"map_count\":%lu,\"map_limit\":%lu,"
	       "\"ranges\":%lu,\"pages_registered\":%lu,\"partition_pages\":%lu}",
	       (unsigned long)s->pages_shared, (unsigned long)s->pages_sharing, (unsigned long)s->pages_unshared,
	       (unsigned long)s->pages_volatile, (unsigned long)s->pages_scanned, (unsigned long)s->full_scans,
	       (unsigned long)s->zero_pages, (long)s->general_profit, (unsigned long)s->pages_skipped_budget,
	       (unsigned long)s->map_budget_reached, (unsigned long)s->map_count, (unsigned long)s->map_limit,
	       (unsigned long)s->ranges, (unsigned long)s->pages_registered, (unsigned long)s->partition_pages);
}

int cli_merge(bool json)
{
	char dir[256];
	int r = mv_runtime_path(dir, sizeof(dir), "merge", 0);
	if (r == -ENOENT) {
		printf(json ? "{\"contexts\":[],\"totals\":null}\n" : "no process is merging memory\n");
		return 0;
	}
	if (r < 0) {
		fprintf(stderr, "memvisor: no runtime directory: %s\n", strerror(-r));
		return 1;
	}
	struct ctx_row *rows = NULL;
	size_t n = 0, cap = 0;
	DIR *d = opendir(dir);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		size_t l = strlen(e->d_name);
		if (l < 7 || strcmp(e->d_name + l - 6, ".board"))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			struct ctx_row *nr = realloc(rows, cap * sizeof(*rows));
			if (!nr)
				break;
			rows = nr;
		}
		if (read_board(dir, e->d_name, &rows[n]) == 0)
			n++;
	}
	if (d)
		closedir(d);
	struct mv_merge_stats t = {0};
	for (size_t i = 0; i < n; i++) {
		const struct mv_merge_stats *s = &rows[i].b.stats;
		t.pages_shared += s->pages_shared;
		t.pages_sharing += s->pages_sharing;
		t.pages_unshared += s->pages_unshared;
		t.pages_volatile += s->pages_volatile;
		t.pages_scanned += s->pages_scanned;
		t.full_scans += s->full_scans;
		t.zero_pages += s->zero_pages;
		t.general_profit += s->general_profit;
		t.pages_skipped_budget += s->pages_skipped_budget;
		t.map_budget_reached |= s->map_budget_reached;
		t.ranges += s->ranges;
		t.pages_registered += s->pages_registered;
	}
	if (json) {
		printf("{\"contexts\":[");
		for (size_t i = 0; i < n; i++) {
			const struct mv_merge_board *b = &rows[i].b;
			printf("%s{\"pid\":%u,\"partition\":", i ? "," : "", b->pid);
			cli_json_string(stdout, b->partition);
			printf(",\"scanner\":{\"run\":%u,\"sleep_usecs\":%u,\"pages_to_scan\":%u,\"max_pages_to_merge\":%u},"
			       "\"updated_ns\":%lu,\"stats\":",
			       b->scanner_running, b->knobs.sleep_usecs, b->knobs.pages_to_scan, b->knobs.max_pages_to_merge,
			       (unsigned long)b->updated_realtime_ns);
			json_stats(&b->stats);
			printf("}");
		}
		printf("],\"totals\":");
		json_stats(&t);
		printf("}\n");
		free(rows);
		return 0;
	}
	if (!n) {
		printf("no process is merging memory (merge contexts publish here: %s)\n", dir);
		free(rows);
		return 0;
	}
	printf("merging processes (as of each one's last scan or statistics call)\n");
	printf("  %7s %-11s %10s %8s %8s %8s %8s %7s %9s %6s %9s %7s %s\n", "PID", "PARTITION", "REGISTERED", "SHARED",
	       "SHARING", "UNSHARED", "VOLATILE", "ZERO", "SCANNED", "FULL", "PROFIT", "SCANNER", "BUDGET");
	for (size_t i = 0; i < n; i++) {
		const struct mv_merge_board *b = &rows[i].b;
		const struct mv_merge_stats *s = &b->stats;
		char reg[32], prof[32];
		cli_human_bytes(reg, sizeof(reg), s->pages_registered * PG);
		if (s->general_profit < 0) {
			cli_human_bytes(prof + 1, sizeof(prof) - 1, (uint64_t)-s->general_profit);
			prof[0] = '-';
		} else {
			cli_human_bytes(prof, sizeof(prof), (uint64_t)s->general_profit);
		}
		printf("  %7u %-11s %10s %8lu %8lu %8lu %8lu %7lu %9lu %6lu %9s %7s %s\n", b->pid, b->partition, reg,
		       (unsigned long)s->pages_shared, (unsigned long)s->pages_sharing, (unsigned long)s->pages_unshared,
		       (unsigned long)s->pages_volatile, (unsigned long)s->zero_pages, (unsigned long)s->pages_scanned,
		       (unsigned long)s->full_scans, prof, b->scanner_running ? "running" : "-",
		       s->map_budget_reached ? "reached" : "ok");
	}
	char saved[32];
	cli_human_bytes(saved, sizeof(saved), (t.pages_sharing + t.zero_pages) * PG);
	printf("  total: %zu context(s), %lu pages shared by %lu more sites, %lu zero pages: %s saved\n", n,
	       (unsigned long)t.pages_shared, (unsigned long)t.pages_sharing, (unsigned long)t.zero_pages, saved);
	free(rows);
	return 0;
}
