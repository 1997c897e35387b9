/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

ssize_t mvu_send_fds(int sock, const void *buf, size_t len, const int *fds, unsigned nfds, int flags)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * MV_MAX_FDS)];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (nfds > MV_MAX_FDS)
		return -EINVAL;
	if (nfds) {
		struct cmsghdr *c;

		memset(&ctl, 0, sizeof(ctl));
		msg.msg_control = ctl.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	do
		n = sendmsg(sock, &msg, flags | MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

void mvu_close_fds(int *fds, unsigned nfds)
{
	for (unsigned i = 0; i < nfds; i++)
		if (fds[i] >= 0) {
			close(fds[i]);
			fds[i] = -1;
		}
}

ssize_t mvu_recv_fds(int sock, void *buf, size_t len, int *fds, unsigned *nfds, int flags)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * MV_MAX_FDS)];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)
	};
	unsigned cap = *nfds, got = 0;
	ssize_t n;

	do
		n = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		*nfds = 0;
		return -errno;
	}
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int tmp[MV_MAX_FDS];

		if (k > MV_MAX_FDS)
			k = MV_MAX_FDS;
		memcpy(tmp, CMSG_DATA(c), k * sizeof(int));
		for (size_t i = 0; i < k; i++) {
			if (got < cap)
				fds[got++] = tmp[i];
			else
				close(tmp[i]);
		}
	}
	*nfds = got;
	if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
		mvu_close_fds(fds, got);
		*nfds = 0;
		return -EMSGSIZE;
	}
	return n;
}

int mvu_runtime_dir_name(char *buf, size_t len)
{
	const char *env = getenv("MEMVISOR_RUNTIME_DIR");
	int n;

	if (env && *env)
		n = snprintf(buf, len, "%s", env);
	else if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
		n = snprintf(buf, len, "%s/memvisor", env);
	else {
		n = snprintf(buf, len, "/tmp/memvisor-%u", (unsigned)getuid());
		/* Anyone can make that name first in /tmp and deny us a broker. Then the home directory,
		 * which nobody else can write, holds ours. */
		struct stat st;
		const char *home = getenv("HOME");
		if (n >= 0 && (size_t)n < len && lstat(buf, &st) == 0 &&
		    (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 0077)) && home && *home == '/')
			n = snprintf(buf, len, "%s/.memvisor-runtime", home);
	}
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int mvu_runtime_dir(char *buf, size_t len, int create)
{
	struct stat st;
	int n = mvu_runtime_dir_name(buf, len);

	if (n < 0)
		return n;
	if (create && mkdir(buf, 0700) < 0 && errno != EEXIST)
		return -errno;
	if (lstat(buf, &st) < 0)
		return -errno;
	/* Someone else's or a world-writable directory would let them impersonate the broker. */
	if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 0077))
		return -EACCES;
	return 0;
}

int mvu_runtime_path(char *buf, size_t len, const char *leaf, int create)
{
	char dir[256];
	int r = mvu_runtime_dir(dir, sizeof(dir), create);

	if (r < 0)
		return r;
	r = snprintf(buf, len, "%s/%s", dir, leaf);
	if (r < 0 || (size_t)r >= len)
		return -ENAMETOOLONG;
	return 0;
}

int mvu_proc_stat(int pid, struct mvu_proc_stat *out)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	int e = n < 0 ? -errno : -EIO;
	close(fd);
	if (n <= 0)
		return e;
	buf[n] = '\0';
	/* the command name may hold spaces and parentheses: the fields follow the last ')' (state is
	 * field 3, the parent 4, the start time 22) */
	char *p = strrchr(buf, ')');
	unsigned long long start;
	if (!p || sscanf(p + 1, " %c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
			 &out->state, &out->ppid, &start) != 3)
		return -EIO;
	out->starttime = start;
	return 0;
}

int64_t mvu_meminfo(const char *field)
{
	char line[256];
	size_t flen = strlen(field);
	int64_t val = -ENOENT;
	FILE *f = fopen("/proc/meminfo", "re");

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
			val = strtoll(line + flen + 1, NULL, 10) * 1024;
			break;
		}
	}
	fclose(f);
	return val;
}

int mvu_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	uint64_t mul = 1;

	if (!s || !*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case '\0': break;
	case 'k':
	case 'K':
		mul = 1ull << 10;
		end++;
		break;
	case 'm':
	case 'M':
		mul = 1ull << 20;
		end++;
		break;
	case 'g':
	case 'G':
		mul = 1ull << 30;
		end++;
		break;
	case 't':
	case 'T':
		mul = 1ull << 40;
		end++;
		break;
	default: return -EINVAL;
	}
	if (*end == 'i' && mul > 1)
		end++;
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end)
		return -EINVAL;
	if (v > UINT64_MAX / mul)
		return -ERANGE;
	*out = v * mul;
	return 0;
}
