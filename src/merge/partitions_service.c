/* SPDX-License-Identifier: MIT */
/* Named merge partitions in the broker: JOIN, PROMOTE and LEAVE over the partitions (partitions_broker.c);
 * a member's connection ending is its leaving, and collection runs on the upkeep timer. */
#define _GNU_SOURCE
#include "partitions_service.h"

#include <string.h>

#include "broker/core.h"
#include "partitions_broker.h"

static struct mvp_state P;

static void on_join(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvw_rep_merge_join rep = { 0 };
	int pfds[2];
	char name[sizeof(m->u.merge_join.name) + 1];

	memcpy(name, m->u.merge_join.name, sizeof(m->u.merge_join.name));
	name[sizeof(name) - 1] = '\0';
	int e = mvp_join(&P, name, mvb_client_uid(c), fds[0], c, &rep.member_id, &rep.slot, &rep.gen, &pfds[0],
			 &pfds[1]);
	mvb_reply_fds(c, m, e, &rep, sizeof(rep), pfds, 2);
}

static void on_promote(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvw_rep_merge_promote rep = { 0 };
	int e = mvp_promote(&P, m->u.merge_promote.member_id, c, m->u.merge_promote.n, m->u.merge_promote.max_sharing,
			    &rep.done);

	mvb_reply(c, m, e, &rep, sizeof(rep), -1);
}

static void on_leave(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	mvb_reply(c, m, mvp_leave(&P, m->u.merge_leave.member_id, c), NULL, 0, -1);
}

static void client_gone(struct mvb_client *c)
{
	mvp_owner_gone(&P, c);
}

static void tick(void)
{
	mvp_collect(&P);
}

static void stats(struct mvb_stats *st)
{
	mvb_stats_add(st, "merge.partitions", P.nparts);
	mvb_stats_add(st, "merge.partition_members", mvp_count_members(&P));
}

static bool busy(void)
{
	return P.nparts > 0;
}

static const struct mvb_service service = {
	.name = "partitions",
	.client_gone = client_gone,
	.tick = tick,
	.stats = stats,
	.busy = busy,
};

int mvb_partitions_service_init(void)
{
	mvb_service_register(&service);
	mvb_handler_register(MV_MSG_MERGE_JOIN, on_join);
	mvb_handler_register(MV_MSG_MERGE_PROMOTE, on_promote);
	mvb_handler_register(MV_MSG_MERGE_LEAVE, on_leave);
	return 0;
}
