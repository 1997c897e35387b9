/* SPDX-License-Identifier: MIT */
/* Ashmem areas whose region exists while some holders still have the area's file (fork children, or
 * processes that were sent it, before their first use since the region was made). The kernel ties the
 * region to the open file description; a process can only swap its own descriptors to the region's
 * file, so the broker keeps the region's two files for the others until the area's file is gone
 * everywhere (inotify: the inode's end), and hands them out to any process that shows the area's file.
 * The messages AREA_BIND and AREA_GET. */
#define _GNU_SOURCE
#include "areas.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/core.h"

struct area {
	uint64_t dev, ino; /* the area's file */
	int wd;
	int data_fd, ctl_fd;
	struct area *next;
};

static struct {
	struct mvb_registry *reg;
	int inotify_fd;
	struct area *all;
	uint64_t count, max, bound, handed, refused;
} A = { .inotify_fd = -1 };

/* What an area's file is: an empty memfd that can never grow (nothing in it to map or read). */
static int area_file_identity(int fd, uint64_t *dev, uint64_t *ino)
{
	struct stat st;
	int seals;

	if (fstat(fd, &st) < 0)
		return -EBADF;
	seals = fcntl(fd, F_GET_SEALS);
	if (!S_ISREG(st.st_mode) || st.st_size != 0 || seals < 0 || !(seals & F_SEAL_GROW))
		return -EINVAL;
	*dev = (uint64_t)st.st_dev;
	*ino = (uint64_t)st.st_ino;
	return 0;
}

static struct area *find(uint64_t dev, uint64_t ino)
{
	for (struct area *a = A.all; a; a = a->next)
		if (a->ino == ino && a->dev == dev)
			return a;
	return NULL;
}

static void area_drop(struct area **link)
{
	struct area *a = *link;

	*link = a->next;
	close(a->data_fd);
	close(a->ctl_fd);
	free(a);
	A.count--;
}

static void on_inotify(void *ud, uint32_t events)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));

	(void)ud;
	(void)events;
	for (;;) {
		ssize_t n = read(A.inotify_fd, buf, sizeof(buf));

		if (n <= 0)
			return;
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)p;

			p += sizeof(*ev) + ev->len;
			/* Only the inode's end counts: another open of the file (through /proc) may close
			 * while the area lives on. An overflow loses nothing: every end still reports
			 * IN_IGNORED later, or the area stays until the broker exits. */
			if (!(ev->mask & IN_IGNORED))
				continue;
			for (struct area **l = &A.all; *l; l = &(*l)->next)
				if ((*l)->wd == ev->wd) {
					area_drop(l);
					break;
				}
		}
	}
}

static int bind_area(int area_fd, int data_fd, int ctl_fd)
{
	struct mvb_region *r;
	struct area *a;
	uint64_t dev, ino;
	bool created;
	char path[64];
	int e = area_file_identity(area_fd, &dev, &ino);

	if (e < 0)
		return e;
	if (find(dev, ino))
		return -EEXIST; /* another holder made the region first: ask for it */
	/* The region must be one we track, and ctl_fd its control file: the same check as ATTACH. */
	e = mvb_attach(A.reg, data_fd, ctl_fd, &r, &created);
	if (e < 0)
		return e;
	if (!mvb_is_ctl_of(r, ctl_fd))
		return -EINVAL;
	if (A.count >= A.max)
		return -ENOSPC;
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->dev = dev;
	a->ino = ino;
	a->data_fd = fcntl(data_fd, F_DUPFD_CLOEXEC, 3);
	a->ctl_fd = fcntl(ctl_fd, F_DUPFD_CLOEXEC, 3);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", area_fd);
	a->wd = a->data_fd < 0 || a->ctl_fd < 0 ? -1 : inotify_add_watch(A.inotify_fd, path, IN_DELETE_SELF);
	if (a->wd < 0) {
		e = a->data_fd < 0 || a->ctl_fd < 0 ? -EMFILE : errno == ENOSPC ? -ENOSPC : -errno;
		if (a->data_fd >= 0)
			close(a->data_fd);
		if (a->ctl_fd >= 0)
			close(a->ctl_fd);
		free(a);
		return e;
	}
	/* inotify gives one watch per inode: a reused number means that inode was ours already. */
	for (struct area **l = &A.all; *l; l = &(*l)->next)
		if ((*l)->wd == a->wd) {
			area_drop(l);
			break;
		}
	a->next = A.all;
	A.all = a;
	A.count++;
	A.bound++;
	return 0;
}

/* One way: what went wrong shows as no binding (AREA_GET: ENOENT) and in the counters. */
static void on_bind(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	(void)c;
	(void)m;
	if (bind_area(fds[0], fds[1], fds[2]) < 0)
		A.refused++;
}

static void on_get(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	uint64_t dev, ino;
	int e = area_file_identity(fds[0], &dev, &ino);
	struct area *a = e < 0 ? NULL : find(dev, ino);

	if (e == 0 && !a)
		e = -ENOENT;
	if (e < 0) {
		mvb_reply(c, m, e, NULL, 0, -1);
		return;
	}
	A.handed++;
	int two[2] = { a->data_fd, a->ctl_fd };
	mvb_reply_fds(c, m, 0, NULL, 0, two, 2);
}

void mvb_areas_stats(struct mvb_stats *st)
{
	mvb_stats_add(st, "regions.areas_kept", A.count);
	mvb_stats_add(st, "regions.areas_bound", A.bound);
	mvb_stats_add(st, "regions.areas_handed", A.handed);
	mvb_stats_add(st, "regions.areas_refused", A.refused);
}

int mvb_areas_init(struct mvb_registry *reg)
{
	struct rlimit rl;

	A.reg = reg;
	A.inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (A.inotify_fd < 0)
		return -errno;
	/* Two descriptors per area, and areas are short-lived: a sixteenth of ours at most. */
	A.max = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (uint64_t)rl.rlim_cur / 16 : 64;
	int e = mvb_io_add(A.inotify_fd, EPOLLIN, on_inotify, NULL);
	if (e < 0)
		return e;
	mvb_handler_register(MV_MSG_AREA_BIND, on_bind);
	mvb_handler_register(MV_MSG_AREA_GET, on_get);
	return 0;
}

void mvb_areas_fini(void)
{
	while (A.all)
		area_drop(&A.all);
	if (A.inotify_fd >= 0) {
		mvb_io_remove(A.inotify_fd);
		close(A.inotify_fd);
		A.inotify_fd = -1;
	}
}
