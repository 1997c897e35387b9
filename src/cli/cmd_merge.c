/* SPDX-License-Identifier: MIT */
/* memvisor merge: what every merging process of this user has merged, from the boards they publish. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "memvisor/broker.h"
#include "memvisor/memvisor.h"

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
	struct mv_broker_merger *rows;
	size_t n;
	char dir[256];
	int r = mv_broker_mergers(&rows, &n);

	if (r < 0) {
		fprintf(stderr, "memvisor: cannot read the merging processes' boards: %s\n", strerror(-r));
		return 1;
	}
	struct mv_merge_stats t = { 0 };
	for (size_t i = 0; i < n; i++) {
		const struct mv_merge_stats *s = &rows[i].stats;
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
			const struct mv_broker_merger *b = &rows[i];
			printf("%s{\"pid\":%d,\"partition\":", i ? "," : "", (int)b->pid);
			cli_json_string(stdout, b->partition);
			printf(",\"scanner\":{\"run\":%d,\"sleep_usecs\":%u,\"pages_to_scan\":%u,\"max_pages_to_"
			       "merge\":%u},"
			       "\"updated_ns\":%lu,\"stats\":",
			       b->scanner_running, b->knobs.sleep_usecs, b->knobs.pages_to_scan,
			       b->knobs.max_pages_to_merge, (unsigned long)b->updated_realtime_ns);
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
		if (mv_broker_runtime_dir(dir, sizeof(dir)) == 0)
			printf("no process is merging memory (merge contexts publish here: %s/merge)\n", dir);
		else
			printf("no process is merging memory\n");
		free(rows);
		return 0;
	}
	printf("merging processes (as of each one's last scan or statistics call)\n");
	printf("  %7s %-11s %10s %8s %8s %8s %8s %7s %9s %6s %9s %7s %s\n", "PID", "PARTITION", "REGISTERED", "SHARED",
	       "SHARING", "UNSHARED", "VOLATILE", "ZERO", "SCANNED", "FULL", "PROFIT", "SCANNER", "BUDGET");
	for (size_t i = 0; i < n; i++) {
		const struct mv_broker_merger *b = &rows[i];
		const struct mv_merge_stats *s = &b->stats;
		char reg[32], prof[32];
		cli_human_bytes(reg, sizeof(reg), s->pages_registered * MV_PAGE_SIZE);
		if (s->general_profit < 0) {
			cli_human_bytes(prof + 1, sizeof(prof) - 1, (uint64_t)-s->general_profit);
			prof[0] = '-';
		} else {
			cli_human_bytes(prof, sizeof(prof), (uint64_t)s->general_profit);
		}
		printf("  %7d %-11s %10s %8lu %8lu %8lu %8lu %7lu %9lu %6lu %9s %7s %s\n", (int)b->pid, b->partition,
		       reg, (unsigned long)s->pages_shared, (unsigned long)s->pages_sharing,
		       (unsigned long)s->pages_unshared, (unsigned long)s->pages_volatile, (unsigned long)s->zero_pages,
		       (unsigned long)s->pages_scanned, (unsigned long)s->full_scans, prof,
		       b->scanner_running ? "running" : "-", s->map_budget_reached ? "reached" : "ok");
	}
	char saved[32];
	cli_human_bytes(saved, sizeof(saved), (t.pages_sharing + t.zero_pages) * MV_PAGE_SIZE);
	printf("  total: %zu context(s), %lu pages shared by %lu more sites, %lu zero pages: %s saved\n", n,
	       (unsigned long)t.pages_shared, (unsigned long)t.pages_sharing, (unsigned long)t.zero_pages, saved);
	free(rows);
	return 0;
}
