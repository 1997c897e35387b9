/* SPDX-License-Identifier: MIT */
/* The durable record of Xen state (xen_record.h). A frame is a 32-bit payload length, a kind byte and
 * the payload, after an 8-byte file header. Appends are single write(2)s to a file in the runtime
 * directory, so a broker killed with SIGKILL loses nothing it acknowledged; only the tail a kill cut
 * short is dropped on reading. The record is untrusted input for its reader: everything in it is
 * checked by the facility a record is for, as if a client had sent it. */
#define _GNU_SOURCE
#include "xen/xen_record.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define HEADER "MVXREC1\n"
#define HEADER_LEN 8
#define FILE_MAX (512ull << 20) /* a record larger than this is not ours */
#define COMPACT_MIN (256u << 10)

size_t mvb_rec_parse(const uint8_t *buf, size_t len, mvb_rec_fn fn, void *ud)
{
	size_t n = 0, off = HEADER_LEN;

	if (len < HEADER_LEN || memcmp(buf, HEADER, HEADER_LEN) != 0)
		return 0;
	while (len - off >= 5) {
		uint32_t plen;
		memcpy(&plen, buf + off, 4);
		if (plen > MVB_REC_MAX || plen > len - off - 5)
			break;
		fn(ud, buf[off + 4], buf + off + 5, plen);
		off += 5 + (size_t)plen;
		n++;
	}
	return n;
}

int mvb_rec_domain_decode(const uint8_t *p, size_t len, struct mvb_rec_domain *out)
{
	if (len != sizeof(*out))
		return -EINVAL;
	memcpy(out, p, sizeof(*out));
	return out->domid == 0 || out->domid > 0x7fef || out->pid == 0 || out->pid > 0x3fffffff ? -EINVAL : 0;
}

int mvb_rec_grants_decode(const uint8_t *p, size_t len, struct mvb_rec_grants *out)
{
	if (len != sizeof(*out))
		return -EINVAL;
	memcpy(out, p, sizeof(*out));
	return out->domid == 0 || out->domid > 0x7fef ? -EINVAL : 0;
}

static struct {
	int fd;
	char path[300];
	uint64_t written, base; /* bytes in the file; of them, what the last rewrite wrote */
	void (*dumpers[4])(void);
	int ndumpers;
	bool compacting, broken;
	void (*readers[256])(const uint8_t *p, size_t len);
} R = { .fd = -1 };

void mvb_record_on(uint8_t kind, void (*fn)(const uint8_t *p, size_t len))
{
	R.readers[kind] = fn;
}

static void dispatch(void *ud, uint8_t kind, const uint8_t *p, size_t len)
{
	(void)ud;
	if (R.readers[kind])
		R.readers[kind](p, len);
}

int mvb_record_load(const char *dir)
{
	char path[300];
	struct stat st;
	snprintf(path, sizeof(path), "%s/xen.state", dir);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	/* our own file, a regular one, of a sane size: anything else is not a record of ours */
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || (uint64_t)st.st_size > FILE_MAX) {
		close(fd);
		return -EINVAL;
	}
	size_t len = (size_t)st.st_size, got = 0;
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	while (got < len) {
		ssize_t r = read(fd, buf + got, len - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	size_t n = mvb_rec_parse(buf, got, dispatch, NULL);
	free(buf);
	return (int)(n > 0x7fffffff ? 0x7fffffff : n);
}

void mvb_record_dumper(void (*dump)(void))
{
	if (R.ndumpers < 4)
		R.dumpers[R.ndumpers++] = dump;
}

static int write_all(int fd, const struct iovec *iov, int n, size_t total)
{
	ssize_t w = writev(fd, iov, n);
	return w == (ssize_t)total ? 0 : -EIO;
}

/* The live state into a new file, which then replaces the old one. */
static int rewrite(void)
{
	char tmp[320];
	snprintf(tmp, sizeof(tmp), "%s.new", R.path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	int old = R.fd;
	R.fd = fd;
	R.written = 0;
	R.broken = false;
	R.compacting = true;
	struct iovec h = { HEADER, HEADER_LEN };
	int e = write_all(fd, &h, 1, HEADER_LEN);
	R.written = HEADER_LEN;
	for (int i = 0; i < R.ndumpers && !e; i++)
		R.dumpers[i]();
	R.compacting = false;
	if (!e && R.broken)
		e = -EIO;
	if (!e && rename(tmp, R.path) < 0)
		e = -errno;
	if (e) {
		close(fd);
		unlink(tmp);
		R.fd = old;
		return e;
	}
	if (old >= 0)
		close(old);
	R.base = R.written;
	return 0;
}

int mvb_record_begin(const char *dir)
{
	snprintf(R.path, sizeof(R.path), "%s/xen.state", dir);
	return rewrite();
}

void mvb_record_append(uint8_t kind, const void *p, size_t len)
{
	if (R.fd < 0 || len > MVB_REC_MAX)
		return;
	uint32_t plen = (uint32_t)len;
	uint8_t head[5];
	memcpy(head, &plen, 4);
	head[4] = kind;
	struct iovec iov[2] = { { head, 5 }, { (void *)p, len } };
	if (write_all(R.fd, iov, 2, 5 + len) < 0) {
		R.broken = true;
		if (!R.compacting)
			(void)rewrite(); /* a short write (disk full) must not leave a torn frame mid-file */
		return;
	}
	R.written += 5 + len;
	if (!R.compacting && R.written > COMPACT_MIN && R.written > 2 * R.base)
		(void)rewrite();
}

uint64_t mvb_process_start(pid_t pid)
{
	struct mvu_proc_stat st;
	if (mvu_proc_stat((int)pid, &st) < 0 || st.state == 'Z' || st.state == 'X')
		return 0; /* a zombie is no live process */
	return st.starttime;
}
