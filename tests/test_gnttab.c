/* SPDX-License-Identifier: MIT */
/* libxengnttab.so.1 (ours, built against Debian's xengnttab.h): sharing and mapping between processes,
 * read-only grants the kernel enforces, every misuse's errno, unmap notifications on unmap, close and
 * kill -9 (both sides), grant copy, and the broker releasing a dead domain's grants. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "helpers.h"
#include "memvisor/broker.h"
#include "xen/gnttab_table.h"
#include "xenpeer.h"

#define PG 4096

static int me(void)
{
	int d = peer_domid_now();
	assert_true(d > 0);
	return d;
}

static void test_share_and_map(void **state)
{
	(void)state;
	struct peer p;
	assert_int_equal(peer_start(&p), 0);
	int peer = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0);
	assert_true(peer > 0 && peer != me());

	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	assert_non_null(gs);
	assert_true(xengntshr_fd(gs) >= 0);
	uint32_t refs[16];
	uint8_t *a = xengntshr_share_pages(gs, (uint32_t)peer, 16, refs, 1);
	assert_non_null(a);
	for (int i = 0; i < 16; i++) {
		assert_true(refs[i] >= 8); /* Xen reserves 0-7 */
		assert_int_equal(refs[i], refs[0] + (uint32_t)i);
	}
	for (int i = 0; i < 16 * PG; i++)
		assert_int_equal(a[i], 0); /* fresh pages are zeroed */
	a[0] = 11, a[5 * PG + 7] = 22, a[15 * PG + 4095] = 33;

	/* the peer maps all 16 and sees our bytes; its writes come back */
	assert_int_equal(peer_do(&p, OP_MAP, me(), (int)refs[0], 16, 1), 0);
	assert_int_equal(peer_do(&p, OP_READ, 0, 0, 0, 0), 11);
	assert_int_equal(peer_do(&p, OP_READ, 5 * PG + 7, 0, 0, 0), 22);
	assert_int_equal(peer_do(&p, OP_READ, 15 * PG + 4095, 0, 0, 0), 33);
	assert_int_equal(peer_do(&p, OP_WRITE, 3 * PG + 1, 44, 0, 0), 0);
	assert_int_equal(a[3 * PG + 1], 44);
	assert_int_equal(peer_do(&p, OP_UNMAP, 0, 0, 0, 0), 0);

	/* a map from the middle, across two shares: refs of a second share follow in one request */
	uint32_t refs2[4];
	uint8_t *b = xengntshr_share_pages(gs, (uint32_t)peer, 4, refs2, 1);
	assert_non_null(b);
	b[0] = 55;
	assert_int_equal(refs2[0], refs[15] + 1); /* the cursor continues */
	assert_int_equal(peer_do(&p, OP_MAP, me(), (int)refs[14], 3, 1), 0);
	assert_int_equal(peer_do(&p, OP_READ, PG + 4095, 0, 0, 0), 33);
	assert_int_equal(peer_do(&p, OP_READ, 2 * PG, 0, 0, 0), 55);
	assert_int_equal(peer_do(&p, OP_UNMAP, 0, 0, 0, 0), 0);

	/* after unshare the refs are gone for new mappings */
	assert_int_equal(xengntshr_unshare(gs, a, 16), 0);
	assert_int_equal(peer_do(&p, OP_MAP, me(), (int)refs[0], 1, 0), -EINVAL);
	assert_int_equal(peer_do(&p, OP_MAP, me(), (int)refs2[0], 1, 1), 0);
	assert_int_equal(peer_do(&p, OP_READ, 0, 0, 0, 0), 55);
	/* the granter unshares while the peer maps: the page stays the peer's until it unmaps */
	assert_int_equal(xengntshr_unshare(gs, b, 4), 0);
	assert_int_equal(peer_do(&p, OP_READ, 0, 0, 0, 0), 55);
	assert_int_equal(peer_do(&p, OP_WRITE, 0, 66, 0, 0), 0);
	assert_int_equal(peer_do(&p, OP_READ, 0, 0, 0, 0), 66);
	assert_int_equal(peer_do(&p, OP_UNMAP, 0, 0, 0, 0), 0);
	assert_int_equal(xengntshr_close(gs), 0);
	assert_int_equal(peer_end(&p, 0), 0);
}

static void test_read_only_is_enforced(void **state)
{
	(void)state;
	struct peer p;
	assert_int_equal(peer_start(&p), 0);
	int peer = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0);
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	uint32_t ref;
	uint8_t *a = xengntshr_share_pages(gs, (uint32_t)peer, 1, &ref, 0);
	assert_non_null(a);
	a[100] = 7;
	/* a writable mapping of a read-only grant is refused */
	assert_int_equal(peer_do(&p, OP_MAP, me(), (int)ref, 1, 1), -EINVAL);
	/* a clear-byte notification needs a writable mapping */
	assert_int_equal(peer_do(&p, OP_MAP_NOTIFY, me(), (int)ref, 0 | (100 << 1), -1), -EINVAL);
	assert_int_equal(peer_do(&p, OP_MAP, me(), (int)ref, 1, 0), 0);
	assert_int_equal(peer_do(&p, OP_READ, 100, 0, 0, 0), 7);
	/* the mapping cannot be made writable, and a write faults */
	assert_int_equal(peer_do(&p, OP_MPROTECT_RW, 0, 0, 0, 0), -EACCES);
	int64_t r = peer_do(&p, OP_WRITE, 100, 9, 0, 0);
	assert_true(r == INT64_MIN);
	int st = peer_end(&p, 0);
	assert_true(WIFSIGNALED(st));
	assert_true(WTERMSIG(st) == SIGSEGV || WTERMSIG(st) == SIGBUS);
	assert_int_equal(a[100], 7);
	/* the granter's own mapping still writes */
	a[100] = 8;
	assert_int_equal(a[100], 8);
	assert_int_equal(xengntshr_close(gs), 0);
	munmap(a, PG);
}

/* The kernel, not the library, refuses writes: a mapper that goes around the library with the
 * descriptor the broker gave it still cannot write. */
static void test_read_only_descriptor(void **state)
{
	(void)state;
	int fds[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
	pid_t pid = fork();
	if (pid == 0) {
		int dom = peer_domid_now();
		if (write(fds[1], &dom, sizeof(dom)) != sizeof(dom))
			_exit(1);
		uint32_t ref;
		if (read(fds[1], &ref, sizeof(ref)) != sizeof(ref))
			_exit(2);
		struct mvw_req_gnt_map req = { .domid = (uint32_t)dom ^ 0, .count = 1 };
		int granter;
		if (read(fds[1], &granter, sizeof(granter)) != sizeof(granter))
			_exit(3);
		req.domid = (uint32_t)granter;
		req.refs[0] = ref;
		struct mvw_msg rep;
		int fd = -1;
		if (mvc_request(MV_MSG_GNT_MAP, &req, sizeof(req), -1, &rep, &fd) < 0 || fd < 0)
			_exit(4);
		if (mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)rep.u.gnt_map_rep.page * PG) !=
		    MAP_FAILED)
			_exit(5);
		if (pwrite(fd, "x", 1, 0) == 1)
			_exit(6);
		char path[64];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		int rw = open(path, O_RDWR);
		if (rw >= 0 && mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0) != MAP_FAILED)
			_exit(7);
		if (rw >= 0 && pwrite(rw, "x", 1, 0) == 1)
			_exit(8);
		uint8_t *ro = mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, (off_t)rep.u.gnt_map_rep.page * PG);
		if (ro == MAP_FAILED || ro[0] != 'g')
			_exit(9);
		_exit(0);
	}
	int peer;
	assert_int_equal(read(fds[0], &peer, sizeof(peer)), sizeof(peer));
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	uint32_t ref;
	uint8_t *a = xengntshr_share_pages(gs, (uint32_t)peer, 1, &ref, 0);
	assert_non_null(a);
	a[0] = 'g';
	int dom = me();
	assert_int_equal(write(fds[0], &ref, sizeof(ref)), sizeof(ref));
	assert_int_equal(write(fds[0], &dom, sizeof(dom)), sizeof(dom));
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_int_equal(a[0], 'g');
	xengntshr_close(gs);
	close(fds[0]), close(fds[1]);
}

/* A mapper that goes around the library keeps the descriptor the broker gave it and may mmap or pread
 * any offset of it. It still finds only pages granted to it: not the page granted to another domain,
 * not a page it was granted once and that was unshared, not the granter's ungranted memory. */
static int scan_fd(int fd, const char *secret)
{
	struct stat st;
	uint8_t buf[PG];
	if (fstat(fd, &st) < 0 || st.st_size % PG)
		return 20;
	for (off_t off = 0; off < st.st_size; off += PG) {
		if (pread(fd, buf, PG, off) != PG)
			return 21;
		if (memmem(buf, PG, secret, strlen(secret)))
			return 22;
		uint8_t *m = mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, off);
		if (m == MAP_FAILED)
			return 23;
		bool found = memmem(m, PG, secret, strlen(secret)) != NULL;
		munmap(m, PG);
		if (found)
			return 24;
	}
	return 0;
}

static void test_mapper_sees_only_its_grants(void **state)
{
	(void)state;
	static const char secret[] = "not-for-this-mapper";
	struct peer q;
	assert_int_equal(peer_start(&q), 0);
	int other = (int)peer_do(&q, OP_DOMID, 0, 0, 0, 0);
	int fds[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
	pid_t pid = fork();
	if (pid == 0) {
		int dom = peer_domid_now();
		if (write(fds[1], &dom, sizeof(dom)) != sizeof(dom))
			_exit(1);
		uint32_t msg[3]; /* granter, writable ref, read-only ref */
		if (read(fds[1], msg, sizeof(msg)) != sizeof(msg))
			_exit(2);
		for (int i = 1; i <= 2; i++) {
			struct mvw_req_gnt_map req = { .domid = msg[0], .count = 1 };
			req.refs[0] = msg[i];
			struct mvw_msg rep;
			int fd = -1;
			if (mvc_request(MV_MSG_GNT_MAP, &req, sizeof(req), -1, &rep, &fd) < 0 || fd < 0)
				_exit(3);
			char mine[2];
			if (pread(fd, mine, 1, (off_t)rep.u.gnt_map_rep.page * PG) != 1 ||
			    mine[0] != (i == 1 ? 'w' : 'r'))
				_exit(4);
			int r = scan_fd(fd, secret);
			if (r)
				_exit(r + i * 10);
		}
		_exit(0);
	}
	int mapper;
	assert_int_equal(read(fds[0], &mapper, sizeof(mapper)), sizeof(mapper));
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	uint32_t ref_w, ref_r, ref_other;
	/* granted to the mapper once, written, then unshared before it looked */
	uint32_t ref_old2[2], ref_old_r2[2];
	uint8_t *old = xengntshr_share_pages(gs, (uint32_t)mapper, 2, ref_old2, 1);
	uint8_t *old_r = xengntshr_share_pages(gs, (uint32_t)mapper, 2, ref_old_r2, 0);
	assert_non_null(old);
	assert_non_null(old_r);
	for (int i = 0; i < 2; i++) {
		memcpy(old + i * PG + 100, secret, sizeof(secret));
		memcpy(old_r + i * PG + 100, secret, sizeof(secret));
	}
	assert_int_equal(xengntshr_unshare(gs, old, 2), 0);
	assert_int_equal(xengntshr_unshare(gs, old_r, 2), 0);
	uint8_t *w = xengntshr_share_pages(gs, (uint32_t)mapper, 1, &ref_w, 1);
	uint8_t *r = xengntshr_share_pages(gs, (uint32_t)mapper, 1, &ref_r, 0);
	/* granted to another domain, either way */
	uint8_t *o = xengntshr_share_pages(gs, (uint32_t)other, 1, &ref_other, 1);
	uint32_t ref_other_r;
	uint8_t *o_r = xengntshr_share_pages(gs, (uint32_t)other, 1, &ref_other_r, 0);
	assert_non_null(w);
	assert_non_null(r);
	assert_non_null(o);
	assert_non_null(o_r);
	w[0] = 'w', r[0] = 'r';
	memcpy(o, secret, sizeof(secret));
	memcpy(o_r, secret, sizeof(secret));
	/* and the granter's own memory, never granted */
	uint8_t *priv = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(priv != MAP_FAILED);
	memcpy(priv, secret, sizeof(secret));
	uint32_t msg[3] = { (uint32_t)me(), ref_w, ref_r };
	assert_int_equal(write(fds[0], msg, sizeof(msg)), sizeof(msg));
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	/* the other domain does map its own */
	assert_int_equal(peer_do(&q, OP_MAP, me(), (int)ref_other, 1, 1), 0);
	assert_int_equal(peer_do(&q, OP_READ, 0, 0, 0, 0), secret[0]);
	assert_int_equal(peer_do(&q, OP_UNMAP, 0, 0, 0, 0), 0);
	assert_int_equal(peer_end(&q, 0), 0);
	xengntshr_unshare(gs, w, 1), xengntshr_unshare(gs, r, 1);
	xengntshr_unshare(gs, o, 1), xengntshr_unshare(gs, o_r, 1);
	xengntshr_close(gs);
	munmap(priv, PG);
	close(fds[0]), close(fds[1]);
}

static void test_misuse(void **state)
{
	(void)state;
	struct peer p, q;
	assert_int_equal(peer_start(&p), 0);
	assert_int_equal(peer_start(&q), 0);
	int pd = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0), qd = (int)peer_do(&q, OP_DOMID, 0, 0, 0, 0);
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	assert_null(xengnttab_open(NULL, 1));
	assert_int_equal(errno, EINVAL);
	uint32_t ref;
	uint8_t *a = xengntshr_share_pages(gs, (uint32_t)pd, 1, &ref, 1);
	assert_non_null(a);
	/* a grant is mapped only by the domain it names */
	assert_int_equal(peer_do(&q, OP_MAP, me(), (int)ref, 1, 1), -EINVAL);
	assert_null(xengnttab_map_grant_ref(gt, (uint32_t)me(), ref, PROT_READ));
	assert_int_equal(errno, EINVAL);
	/* refs never issued, the reserved ones, another granter's */
	assert_int_equal(peer_do(&p, OP_MAP, me(), 3, 1, 1), -EINVAL);
	assert_int_equal(peer_do(&p, OP_MAP, me(), (int)ref + 1, 1, 1), -EINVAL);
	assert_int_equal(peer_do(&p, OP_MAP, qd, (int)ref, 1, 1), -EINVAL);
	/* all or nothing: a bad ref at the end fails the whole request */
	assert_int_equal(peer_do(&p, OP_MAP, me(), (int)ref, 2, 1), -EINVAL);
	/* shapes */
	assert_null(xengnttab_map_domain_grant_refs(gt, 0, (uint32_t)me(), &ref, PROT_READ));
	assert_int_equal(errno, EINVAL);
	uint32_t *many = calloc(65537, sizeof(*many));
	assert_null(xengnttab_map_domain_grant_refs(gt, 65537, (uint32_t)me(), many, PROT_READ));
	assert_int_equal(errno, EINVAL);
	free(many);
	assert_null(xengnttab_map_grant_ref_notify(gt, (uint32_t)me(), ref, PROT_READ | PROT_WRITE, 4096, -1));
	assert_int_equal(errno, EINVAL);
	assert_null(xengntshr_share_pages(gs, (uint32_t)pd, 0, &ref, 1));
	assert_int_equal(errno, EINVAL);
	assert_null(xengntshr_share_pages(gs, 0x7ff0, 1, &ref, 1));
	assert_int_equal(errno, EINVAL);
	/* unmap: only what was mapped, with its count */
	assert_int_equal(peer_do(&p, OP_MAP, me(), (int)ref, 1, 1), 0);
	assert_int_equal(xengnttab_unmap(gt, a, 1), -1);
	assert_int_equal(errno, EINVAL);
	uint32_t r2[2];
	uint8_t *two = xengntshr_share_pages(gs, (uint32_t)me(), 2, r2, 1); /* to ourselves */
	assert_non_null(two);
	uint8_t *m = xengnttab_map_domain_grant_refs(gt, 2, (uint32_t)me(), r2, PROT_READ | PROT_WRITE);
	assert_non_null(m);
	m[PG] = 1;
	assert_int_equal(two[PG], 1);
	assert_int_equal(xengnttab_unmap(gt, m, 1), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(xengnttab_unmap(gt, m, 2), 0);
	assert_int_equal(xengnttab_unmap(gt, m, 2), -1);
	assert_int_equal(errno, EINVAL);
	/* set_max_grants: before the first mapping only, and then a limit */
	assert_int_equal(xengnttab_set_max_grants(gt, 4), -1);
	assert_int_equal(errno, EBUSY);
	xengnttab_handle *lim = xengnttab_open(NULL, 0);
	assert_int_equal(xengnttab_set_max_grants(lim, (1u << 20) + 1), -1);
	assert_int_equal(errno, E2BIG);
	assert_int_equal(xengnttab_set_max_grants(lim, 1), 0);
	assert_null(xengnttab_map_domain_grant_refs(lim, 2, (uint32_t)me(), r2, PROT_READ));
	assert_int_equal(errno, ENOMEM);
	void *one = xengnttab_map_grant_ref(lim, (uint32_t)me(), r2[0], PROT_READ);
	assert_non_null(one);
	assert_null(xengnttab_map_grant_ref(lim, (uint32_t)me(), r2[1], PROT_READ));
	assert_int_equal(errno, ENOMEM);
	assert_int_equal(xengnttab_unmap(lim, one, 1), 0);
	assert_non_null((one = xengnttab_map_grant_ref(lim, (uint32_t)me(), r2[1], PROT_READ)));
	assert_int_equal(xengnttab_close(lim), 0);
	munmap(one, PG);
	/* dmabuf has nothing to export between processes */
	uint32_t fd;
	assert_int_equal(xengnttab_dmabuf_exp_from_refs(gt, (uint32_t)me(), 0, 1, r2, &fd), -1);
	assert_int_equal(errno, EOPNOTSUPP);
	assert_int_equal(xengnttab_dmabuf_imp_to_refs(gt, (uint32_t)me(), 0, 1, r2), -1);
	assert_int_equal(errno, EOPNOTSUPP);
	assert_int_equal(xengnttab_close(gt), 0);
	assert_int_equal(xengntshr_close(gs), 0);
	munmap(a, PG);
	munmap(two, 2 * PG);
	assert_int_equal(peer_end(&p, 0), 0);
	assert_int_equal(peer_end(&q, 0), 0);
}

/* Linux gntalloc's limit: 1024 live grants; ENOSPC beyond. Ended grants make room again. */
static void test_share_limit(void **state)
{
	(void)state;
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	static uint32_t refs[1024];
	uint8_t *a = xengntshr_share_pages(gs, (uint32_t)me(), 1000, refs, 1);
	assert_non_null(a);
	uint32_t more[32];
	assert_null(xengntshr_share_pages(gs, (uint32_t)me(), 25, more, 1));
	assert_int_equal(errno, ENOSPC);
	uint8_t *b = xengntshr_share_pages(gs, (uint32_t)me(), 24, more, 1);
	assert_non_null(b);
	assert_null(xengntshr_share_pages(gs, (uint32_t)me(), 1, more, 1));
	assert_int_equal(errno, ENOSPC);
	assert_null(xengntshr_share_pages(gs, (uint32_t)me(), 1025, refs, 1));
	assert_int_equal(errno, ENOSPC);
	/* a partial unshare gives back exactly those */
	assert_int_equal(xengntshr_unshare(gs, a + 10 * PG, 2), 0);
	uint8_t *c = xengntshr_share_pages(gs, (uint32_t)me(), 2, more, 1);
	assert_non_null(c);
	assert_null(xengntshr_share_pages(gs, (uint32_t)me(), 1, more, 1));
	/* closing the handle ends them all */
	assert_int_equal(xengntshr_close(gs), 0);
	gs = xengntshr_open(NULL, 0);
	uint8_t *d = xengntshr_share_pages(gs, (uint32_t)me(), 1024, refs, 1);
	assert_non_null(d);
	assert_int_equal(xengntshr_unshare(gs, d, 1024), 0);
	assert_int_equal(xengntshr_close(gs), 0);
	munmap(a, 1000 * PG), munmap(b, 24 * PG), munmap(c, 2 * PG);
}

/* Closing a handle ends its grants but leaves the memory mapped: a later share never lands on pages
 * the application still maps, while pages it munmapped first (as libxenvchan does) are given back. */
static void test_closed_share_memory_stays(void **state)
{
	(void)state;
	struct peer p;
	assert_int_equal(peer_start(&p), 0);
	int pd = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0);
	for (int writable = 0; writable <= 1; writable++) {
		xengntshr_handle *gs = xengntshr_open(NULL, 0);
		uint32_t ref[2];
		uint8_t *kept = xengntshr_share_pages(gs, (uint32_t)pd, 2, ref, writable);
		uint8_t *gone = xengntshr_share_pages(gs, (uint32_t)pd, 1, ref, writable);
		assert_non_null(kept);
		assert_non_null(gone);
		memset(kept, 'k', 2 * PG);
		assert_int_equal(munmap(gone, PG), 0);
		assert_int_equal(xengntshr_close(gs), 0);
		gs = xengntshr_open(NULL, 0);
		uint8_t *fresh[3];
		for (int i = 0; i < 3; i++) {
			fresh[i] = xengntshr_share_pages(gs, (uint32_t)pd, 1, ref, writable);
			assert_non_null(fresh[i]);
			for (int b = 0; b < PG; b++)
				assert_int_equal(fresh[i][b], 0);
			memset(fresh[i], 'f', PG);
		}
		for (int b = 0; b < 2 * PG; b++)
			assert_int_equal(kept[b], 'k');
		/* the kept pages are not counted as live grants: the whole limit is there */
		uint32_t refs[1021];
		uint8_t *rest = xengntshr_share_pages(gs, (uint32_t)pd, 1021, refs, writable);
		assert_non_null(rest);
		assert_int_equal(xengntshr_unshare(gs, rest, 1021), 0);
		for (int i = 0; i < 3; i++)
			assert_int_equal(xengntshr_unshare(gs, fresh[i], 1), 0);
		assert_int_equal(xengntshr_close(gs), 0);
		munmap(kept, 2 * PG);
	}
	assert_int_equal(peer_end(&p, 0), 0);
}

static uint64_t broker_value(const char *name)
{
	mv_broker_status *st;
	uint64_t v = UINT64_MAX;
	if (mv_broker_status_new(&st) == 0) {
		v = mv_broker_status_value(st, name, UINT64_MAX);
		mv_broker_status_free(st);
	}
	return v;
}

/* Grants cost the broker descriptors per pool, not per page: 2000 one-page shares to one domain, from
 * two granters, read-only and writable, several of each kind mapped, take a few descriptors. */
static void test_descriptors_per_grant(void **state)
{
	(void)state;
	enum { N = 1000 }; /* per granter: under its limit of 1024 live grants */
	struct peer p, q;
	assert_int_equal(peer_start(&p), 0);
	assert_int_equal(peer_start(&q), 0);
	int pd = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0), qd = (int)peer_do(&q, OP_DOMID, 0, 0, 0, 0);
	uint64_t fds0 = broker_value("broker.fds");
	assert_true(fds0 != UINT64_MAX);
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	static uint8_t *pages[N];
	static uint32_t refs[N], qrefs[N];
	for (int i = 0; i < N; i++) {
		pages[i] = xengntshr_share_pages(gs, (uint32_t)pd, 1, &refs[i], i % 2);
		assert_non_null(pages[i]);
		pages[i][7] = (uint8_t)(i % 251 + 1);
		int64_t r = peer_do(&q, OP_SHARE, pd, 1, i % 2, 0);
		assert_true(r >= 8);
		qrefs[i] = (uint32_t)r;
	}
	/* the mapper maps some of each kind, and sees the right page */
	for (int i = 0; i < N; i += 97) {
		assert_int_equal(peer_do(&p, OP_MAP, me(), (int)refs[i], 1, i % 2), 0);
		assert_int_equal(peer_do(&p, OP_READ, 7, 0, 0, 0), i % 251 + 1);
		assert_int_equal(peer_do(&p, OP_UNMAP, 0, 0, 0, 0), 0);
		assert_int_equal(peer_do(&p, OP_MAP, qd, (int)qrefs[i], 1, i % 2), 0);
		assert_int_equal(peer_do(&p, OP_READ, 7, 0, 0, 0), 0);
		assert_int_equal(peer_do(&p, OP_UNMAP, 0, 0, 0, 0), 0);
	}
	uint64_t fds1 = broker_value("broker.fds");
	print_message("broker descriptors: %llu before, %llu with %d one-page grants\n", (unsigned long long)fds0,
		      (unsigned long long)fds1, 2 * N);
	assert_true(fds1 < fds0 + 64);
	for (int i = 0; i < N; i++)
		assert_int_equal(xengntshr_unshare(gs, pages[i], 1), 0);
	xengntshr_close(gs);
	assert_int_equal(peer_end(&p, 0), 0);
	assert_int_equal(peer_end(&q, 0), 0);
	/* and they are given back */
	assert_true(WAIT_FOR(broker_value("xen.grant_shares") == 0, 5));
}

/* Pages a granter keeps mapped hold only a pool that may reuse pages: a granter that asks for pool after
 * pool, keeping a page of each, does not make the broker keep their descriptors. */
static void test_kept_pages_hold_no_descriptors(void **state)
{
	(void)state;
	int dom = me();
	uint64_t fds0 = broker_value("broker.fds");
	for (int i = 0; i < 300; i++) {
		struct mvw_req_gnt_pool preq = { .domid = (uint32_t)dom, .flags = (uint32_t)(i % 2) };
		struct mvw_msg rep;
		int fd = -1;
		assert_int_equal(mvc_request(MV_MSG_GNT_POOL, &preq, sizeof(preq), -1, &rep, &fd), 0);
		assert_true(fd >= 0);
		close(fd);
		struct mvw_req_gnt_share sreq = { .domid = (uint32_t)dom,
						  .count = 1,
						  .flags = (uint32_t)(i % 2),
						  .pool_id = rep.u.gnt_pool_rep.pool_id };
		assert_int_equal(mvc_request(MV_MSG_GNT_SHARE, &sreq, sizeof(sreq), -1, &rep, NULL), 0);
		struct mvw_req_gnt_unshare ureq = { .share_id = rep.u.gnt_share_rep.share_id,
						    .count = 1,
						    .flags = MV_GNT_UNSHARE_KEEP };
		assert_int_equal(mvc_request(MV_MSG_GNT_UNSHARE, &ureq, sizeof(ureq), -1, NULL, NULL), 0);
	}
	uint64_t fds1 = broker_value("broker.fds");
	assert_true(fds1 < fds0 + 16);
	/* a retired pool's own share is refused */
	struct mvw_req_gnt_pool preq = { .domid = (uint32_t)dom };
	struct mvw_msg rep;
	int fd = -1;
	assert_int_equal(mvc_request(MV_MSG_GNT_POOL, &preq, sizeof(preq), -1, &rep, &fd), 0);
	close(fd);
	uint64_t old = rep.u.gnt_pool_rep.pool_id;
	assert_int_equal(mvc_request(MV_MSG_GNT_POOL, &preq, sizeof(preq), -1, &rep, &fd), 0);
	close(fd);
	struct mvw_req_gnt_share sreq = { .domid = (uint32_t)dom, .count = 1, .pool_id = old };
	assert_int_equal(mvc_request(MV_MSG_GNT_SHARE, &sreq, sizeof(sreq), -1, &rep, NULL), -ESTALE);
	sreq.flags = MV_GNT_WRITABLE; /* nor another permission's */
	sreq.pool_id = rep.u.gnt_pool_rep.pool_id;
	assert_int_equal(mvc_request(MV_MSG_GNT_SHARE, &sreq, sizeof(sreq), -1, &rep, NULL), -ESTALE);
}

/* Sets up a channel: our unbound port for peer p, bound by it. Returns our port; *theirs gets its. */
static int channel_with(xenevtchn_handle *ev, struct peer *p, int pd, int *theirs)
{
	int port = xenevtchn_bind_unbound_port(ev, (uint32_t)pd);
	assert_true(port > 0);
	*theirs = (int)peer_do(p, OP_BIND, me(), port, 0, 0);
	assert_true(*theirs > 0);
	return port;
}

static bool fired(xenevtchn_handle *ev, int port, int ms)
{
	return peer_wait_event(ev, ms) == port;
}

/* Mapper-side notification (map_grant_ref_notify): on unmap, on close, on kill -9. */
static void test_mapper_notify(void **state)
{
	(void)state;
	xenevtchn_handle *ev = xenevtchn_open(NULL, 0);
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	for (int how = 0; how < 3; how++) {
		struct peer p;
		assert_int_equal(peer_start(&p), 0);
		int pd = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0), theirs;
		int port = channel_with(ev, &p, pd, &theirs);
		uint32_t ref;
		uint8_t *a = xengntshr_share_pages(gs, (uint32_t)pd, 1, &ref, 1);
		assert_non_null(a);
		a[123] = 1;
		assert_int_equal(peer_do(&p, OP_MAP_NOTIFY, me(), (int)ref, 1 | (123 << 1), theirs), 0);
		assert_int_equal(peer_do(&p, OP_READ, 123, 0, 0, 0), 1);
		assert_false(fired(ev, port, 50));
		assert_int_equal(a[123], 1);
		if (how == 0)
			assert_int_equal(peer_do(&p, OP_UNMAP, 0, 0, 0, 0), 0);
		else if (how == 1)
			assert_int_equal(peer_do(&p, OP_CLOSE, 0, 0, 0, 0), 0);
		else
			kill(p.pid, SIGKILL);
		assert_true(fired(ev, port, 5000));
		assert_true(WAIT_FOR(a[123] == 0, 5));
		if (how == 2)
			assert_true(WIFSIGNALED(peer_end(&p, SIGKILL)));
		else
			assert_int_equal(peer_end(&p, 0), 0);
		assert_int_equal(xengntshr_unshare(gs, a, 1), 0);
		xenevtchn_unbind(ev, (evtchn_port_t)port);
	}
	xengntshr_close(gs);
	xenevtchn_close(ev);
}

/* Granter-side notification (share_page_notify): the mapper hears when the granter goes. */
static void test_granter_notify(void **state)
{
	(void)state;
	xenevtchn_handle *ev = xenevtchn_open(NULL, 0);
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	for (int how = 0; how < 2; how++) {
		struct peer p;
		assert_int_equal(peer_start(&p), 0);
		int pd = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0);
		int theirs = (int)peer_do(&p, OP_BIND_UNBOUND, me(), 0, 0, 0);
		assert_true(theirs > 0);
		int port = xenevtchn_bind_interdomain(ev, (uint32_t)pd, (evtchn_port_t)theirs);
		assert_true(port > 0);
		int ref = (int)peer_do(&p, OP_SHARE_NOTIFY, me(), 0 /* read-only */, 2000, theirs);
		assert_true(ref >= 8);
		assert_int_equal(peer_do(&p, OP_WRITE, 2000, 1, 0, 0), 0);
		assert_int_equal(peer_do(&p, OP_WRITE, 1000, 42, 0, 0), 0);
		uint8_t *m = xengnttab_map_grant_ref(gt, (uint32_t)pd, (uint32_t)ref, PROT_READ);
		assert_non_null(m);
		assert_int_equal(m[2000], 1);
		if (how == 0)
			assert_int_equal(peer_do(&p, OP_UNMAP, 0, 0, 0, 0), 0);
		else
			kill(p.pid, SIGKILL);
		assert_true(fired(ev, port, 5000));
		/* the byte is cleared even in a read-only grant, and the page outlives its granter */
		assert_true(WAIT_FOR(m[2000] == 0, 5));
		assert_int_equal(m[1000], 42);
		assert_int_equal(xengnttab_unmap(gt, m, 1), 0);
		peer_end(&p, how ? SIGKILL : 0);
		xenevtchn_unbind(ev, (evtchn_port_t)port);
	}
	xengnttab_close(gt);
	xenevtchn_close(ev);
}

/* A dead domain's grants and mappings are all released: its granter can share its full quota
 * again, and a dead granter's refs no longer map. */
static void test_death_releases(void **state)
{
	(void)state;
	struct peer p;
	struct mvw_rep_status before = { 0 }, during = { 0 }, after = { 0 };
	(void)me();
	assert_int_equal(tb_status(&before), 0);
	assert_int_equal(peer_start(&p), 0);
	int pd = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0);
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	static uint32_t refs[1024];
	uint8_t *a = xengntshr_share_pages(gs, (uint32_t)pd, 1024, refs, 1);
	assert_non_null(a);
	assert_int_equal(peer_do(&p, OP_MAP, me(), (int)refs[0], 64, 1), 0);
	int ref = (int)peer_do(&p, OP_SHARE, me(), 8, 1, 0);
	assert_true(ref >= 8);
	assert_true(peer_do(&p, OP_BIND_UNBOUND, me(), 0, 0, 0) > 0);
	assert_int_equal(tb_status(&during), 0);
	assert_int_equal(during.gnt_shares, before.gnt_shares + 2);
	assert_int_equal(during.gnt_maps, before.gnt_maps + 1);
	assert_int_equal(during.evtchn_channels, before.evtchn_channels + 1);
	assert_int_equal(during.domains, before.domains + 1);
	kill(p.pid, SIGKILL);
	assert_true(WIFSIGNALED(peer_end(&p, SIGKILL)));
	/* its mapping of our share, its own share and its port are gone; our share stays ours */
	assert_true(WAIT_FOR(tb_status(&after) == 0 && after.domains == before.domains &&
				     after.gnt_maps == before.gnt_maps && after.gnt_shares == before.gnt_shares + 1 &&
				     after.evtchn_channels == before.evtchn_channels,
			     5));
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	assert_true(WAIT_FOR(
		xengnttab_map_grant_ref(gt, (uint32_t)pd, (uint32_t)ref, PROT_READ) == NULL && errno == EINVAL, 5));
	assert_int_equal(xengntshr_unshare(gs, a, 1024), 0);
	uint8_t *b = xengntshr_share_pages(gs, (uint32_t)me(), 1024, refs, 1);
	assert_non_null(b);
	xengntshr_unshare(gs, b, 1024);
	xengnttab_close(gt);
	xengntshr_close(gs);
}

/* Grants without notifications live in table pools: once the granter has its pool and the grantee has
 * mapped one of the pool's refs, share, map, unmap and unshare need no broker, so they work with it
 * stopped; each share's page is zeroed, and each side sees the other's writes. */
static void test_table_grants_need_no_broker(void **state)
{
	(void)state;
	struct peer p;
	assert_int_equal(peer_start(&p), 0);
	int pd = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0), md = me();
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	uint32_t ref, self;
	uint8_t *a = xengntshr_share_pages(gs, (uint32_t)pd, 1, &ref, 1);
	assert_non_null(a);
	assert_int_equal(peer_do(&p, OP_MAP, md, (int)ref, 1, 1), 0);
	assert_int_equal(peer_do(&p, OP_UNMAP, 0, 0, 0, 0), 0);
	assert_int_equal(xengntshr_unshare(gs, a, 1), 0);
	uint8_t *s = xengntshr_share_pages(gs, (uint32_t)md, 1, &self, 1);
	assert_non_null(s);
	uint8_t *m = xengnttab_map_grant_ref(gt, (uint32_t)md, self, PROT_READ | PROT_WRITE);
	assert_non_null(m);
	assert_int_equal(xengnttab_unmap(gt, m, 1), 0);
	assert_int_equal(xengntshr_unshare(gs, s, 1), 0);

	kill(TB.pid, SIGSTOP);
	for (int i = 0; i < 50; i++) {
		a = xengntshr_share_pages(gs, (uint32_t)pd, 1, &ref, 1);
		assert_non_null(a);
		assert_int_equal(a[9], 0);
		assert_int_equal(a[10], 0);
		a[9] = (uint8_t)(i + 1);
		assert_int_equal(peer_do(&p, OP_MAP, md, (int)ref, 1, 1), 0);
		assert_int_equal(peer_do(&p, OP_READ, 9, 0, 0, 0), i + 1);
		assert_int_equal(peer_do(&p, OP_WRITE, 10, 100 + i, 0, 0), 0);
		assert_int_equal(peer_do(&p, OP_UNMAP, 0, 0, 0, 0), 0);
		assert_int_equal(a[10], 100 + i);
		assert_int_equal(xengntshr_unshare(gs, a, 1), 0);

		uint32_t both[2];
		s = xengntshr_share_pages(gs, (uint32_t)md, 2, both, 1);
		assert_non_null(s);
		assert_int_equal(both[1], both[0] + 1);
		assert_int_equal(s[PG + 1], 0);
		self = both[0];
		m = xengnttab_map_domain_grant_refs(gt, 2, (uint32_t)md, both, PROT_READ | PROT_WRITE);
		assert_non_null(m);
		m[PG + 1] = (uint8_t)(i + 7);
		assert_int_equal(s[PG + 1], i + 7);
		assert_int_equal(xengnttab_unmap(gt, m, 2), 0);
		assert_int_equal(xengntshr_unshare(gs, s, 2), 0);
	}
	kill(TB.pid, SIGCONT);
	/* an ended ref is refused, though the mapper has the pool's table */
	assert_int_equal(peer_do(&p, OP_MAP, md, (int)ref, 1, 1), -EINVAL);
	assert_null(xengnttab_map_grant_ref(gt, (uint32_t)md, self, PROT_READ));
	assert_int_equal(errno, EINVAL);
	xengnttab_close(gt);
	xengntshr_close(gs);
	assert_int_equal(peer_end(&p, 0), 0);
}

/* gntalloc's rule, with mappings the broker does not see made: a grant lives while it is mapped. An
 * unshared page the grantee still maps is not granted again (a later share lands beside it) until the
 * mapping goes, here with the mapper's kill -9; then it is, zeroed, under a new ref. */
static void test_table_mapping_holds_its_page(void **state)
{
	(void)state;
	struct peer p;
	assert_int_equal(peer_start(&p), 0);
	int pd = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0);
	uint64_t shares0 = broker_value("xen.grant_shares"), maps0 = broker_value("xen.grant_mappings");
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	uint32_t ref, ref2, ref3;
	uint8_t *a = xengntshr_share_pages(gs, (uint32_t)pd, 1, &ref, 1);
	assert_non_null(a);
	a[0] = 'A';
	assert_int_equal(peer_do(&p, OP_MAP, me(), (int)ref, 1, 1), 0);
	assert_int_equal(peer_do(&p, OP_READ, 0, 0, 0, 0), 'A');
	assert_int_equal(broker_value("xen.grant_mappings"), maps0 + 1);
	assert_int_equal(xengntshr_unshare(gs, a, 1), 0);
	assert_int_equal(broker_value("xen.grant_shares"), shares0 + 1); /* ended, still mapped */

	uint8_t *b = xengntshr_share_pages(gs, (uint32_t)pd, 1, &ref2, 1);
	assert_non_null(b);
	assert_int_equal((ref2 - ref) % 1024, 1); /* the slot beside */
	assert_int_equal(b[0], 0);
	b[0] = 'B';
	assert_int_equal(peer_do(&p, OP_READ, 0, 0, 0, 0), 'A');
	assert_int_equal(broker_value("xen.grant_shares"), shares0 + 2);

	kill(p.pid, SIGKILL);
	assert_true(WIFSIGNALED(peer_end(&p, SIGKILL)));
	assert_true(WAIT_FOR(
		broker_value("xen.grant_mappings") == maps0 && broker_value("xen.grant_shares") == shares0 + 1, 5));
	uint8_t *c = xengntshr_share_pages(gs, (uint32_t)pd, 1, &ref3, 1);
	assert_non_null(c);
	assert_true(ref3 != ref);
	assert_int_equal((ref3 - ref) % 1024, 0); /* its page again, under a new ref */
	for (int i = 0; i < PG; i++)
		assert_int_equal(c[i], 0);
	assert_int_equal(xengntshr_unshare(gs, b, 1), 0);
	assert_int_equal(xengntshr_unshare(gs, c, 1), 0);
	xengntshr_close(gs);
}

/* A grantee may write anything into a table it is given. The broker goes on counting, mapping and
 * sweeping (refusing what the words no longer say), other domains' grants are untouched, and the
 * granter's death still ends everything; the pool goes once the garbage no longer holds it. */
static void test_table_scribbled(void **state)
{
	(void)state;
	struct peer p, q;
	assert_int_equal(peer_start(&p), 0);
	assert_int_equal(peer_start(&q), 0);
	int pd = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0), qd = (int)peer_do(&q, OP_DOMID, 0, 0, 0, 0);
	int ref = (int)peer_do(&p, OP_SHARE, me(), 4, 1, 0);
	assert_true(ref >= 8);
	struct mvw_req_gnt_table_open req = { .domid = (uint32_t)pd, .ref = (uint32_t)ref, .flags = MV_GNT_WRITABLE };
	struct mvw_msg rep;
	int fds[2] = { -1, -1 };
	assert_int_equal(mvc_request(MV_MSG_GNT_TABLE_OPEN, &req, sizeof(req), -1, &rep, fds), 0);
	assert_true(fds[0] >= 0 && fds[1] >= 0);
	struct mvgt_table *t = mmap(NULL, MVGT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0);
	assert_true(t != MAP_FAILED);
	memset(t, 0xff, MVGT_SIZE);
	assert_true(broker_value("xen.grant_shares") <= 2 * MVGT_SLOTS);
	assert_true(broker_value("xen.grant_mappings") <= 2 * MVGT_SLOTS);
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	assert_null(xengnttab_map_grant_ref(gt, (uint32_t)pd, (uint32_t)ref, PROT_READ));
	assert_int_equal(errno, EINVAL);

	int qref = (int)peer_do(&q, OP_SHARE, me(), 1, 1, 0);
	assert_true(qref >= 8);
	assert_int_equal(peer_do(&q, OP_WRITE, 5, 77, 0, 0), 0);
	uint8_t *m = xengnttab_map_grant_ref(gt, (uint32_t)qd, (uint32_t)qref, PROT_READ);
	assert_non_null(m);
	assert_int_equal(m[5], 77);
	assert_int_equal(xengnttab_unmap(gt, m, 1), 0);

	uint64_t pools = broker_value("xen.grant_pools");
	kill(p.pid, SIGKILL);
	assert_true(WIFSIGNALED(peer_end(&p, SIGKILL)));
	assert_true(WAIT_FOR(broker_value("xen.domains") == 2, 5)); /* us and q */
	assert_int_equal(broker_value("xen.grant_pools"), pools);   /* the garbage says it is mapped */
	memset(t, 0, MVGT_SIZE);
	assert_true(WAIT_FOR(broker_value("xen.grant_pools") == pools - 1, 5));
	munmap(t, MVGT_SIZE);
	close(fds[0]), close(fds[1]);
	xengnttab_close(gt);
	assert_int_equal(peer_end(&q, 0), 0);
}

/* A slot's refs go through generations: consecutive refs can span two of them, which a mapping takes
 * as two runs in one range; one ref of them not granted fails the whole mapping. */
static void test_table_refs_across_generations(void **state)
{
	(void)state;
	int md = me();
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	static uint32_t refs[1024];
	uint32_t again;
	uint8_t *a = xengntshr_share_pages(gs, (uint32_t)md, 1024, refs, 1);
	assert_non_null(a);
	assert_int_equal(xengntshr_unshare(gs, a, 1), 0);
	uint8_t *b = xengntshr_share_pages(gs, (uint32_t)md, 1, &again, 1);
	assert_non_null(b);
	assert_int_equal(again, refs[0] + 1024); /* slot 0, its next generation */
	a[1023 * PG] = 5, b[0] = 6;
	uint32_t run[5] = { refs[1020], refs[1021], refs[1022], refs[1023], again };
	uint8_t *m = xengnttab_map_domain_grant_refs(gt, 5, (uint32_t)md, run, PROT_READ | PROT_WRITE);
	assert_non_null(m);
	assert_int_equal(m[3 * PG], 5);
	assert_int_equal(m[4 * PG], 6);
	m[4 * PG + 1] = 7;
	assert_int_equal(b[1], 7);
	assert_int_equal(xengnttab_unmap(gt, m, 5), 0);
	assert_int_equal(xengntshr_unshare(gs, a + 1021 * PG, 1), 0);
	assert_null(xengnttab_map_domain_grant_refs(gt, 5, (uint32_t)md, run, PROT_READ));
	assert_int_equal(errno, EINVAL);
	assert_int_equal(xengntshr_unshare(gs, b, 1), 0);
	assert_int_equal(xengntshr_unshare(gs, a + PG, 1023), 0);
	xengnttab_close(gt);
	xengntshr_close(gs);
}

/* A fork child is a domain of its own: it does not grant in the tables it inherited from its parent. */
static void test_table_fork(void **state)
{
	(void)state;
	int md = me();
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	uint32_t mine;
	uint8_t *a = xengntshr_share_pages(gs, (uint32_t)md, 1, &mine, 1);
	assert_non_null(a);
	a[0] = 'P';
	struct peer p;
	assert_int_equal(peer_start(&p), 0);
	int pd = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0);
	assert_true(pd != md);
	int ref = (int)peer_do(&p, OP_SHARE, md, 1, 1, 0);
	assert_true(ref >= 8);
	assert_int_equal(peer_do(&p, OP_WRITE, 0, 'C', 0, 0), 0);
	uint8_t *m = xengnttab_map_grant_ref(gt, (uint32_t)pd, (uint32_t)ref, PROT_READ);
	assert_non_null(m);
	assert_int_equal(m[0], 'C');
	assert_int_equal(a[0], 'P');
	assert_int_equal(xengnttab_unmap(gt, m, 1), 0);
	/* and its ref is its own: as ours it means nothing, or our own page */
	m = xengnttab_map_grant_ref(gt, (uint32_t)md, (uint32_t)ref, PROT_READ);
	assert_true(m == NULL || m[0] == (ref == (int)mine ? 'P' : 0));
	if (m)
		assert_int_equal(xengnttab_unmap(gt, m, 1), 0);
	assert_int_equal(peer_end(&p, 0), 0);
	assert_int_equal(xengntshr_unshare(gs, a, 1), 0);
	xengnttab_close(gt);
	xengntshr_close(gs);
}

struct cycler {
	xengntshr_handle *gs;
	xengnttab_handle *gt;
	int dom, id, failures;
};

static void *cycle_grants(void *arg)
{
	struct cycler *c = arg;
	for (int i = 0; i < 200; i++) {
		uint32_t refs[3];
		int n = 1 + (i + c->id) % 3;
		uint8_t *a = xengntshr_share_pages(c->gs, (uint32_t)c->dom, n, refs, 1);
		if (!a) {
			c->failures++;
			continue;
		}
		uint8_t v = (uint8_t)(c->id * 50 + i % 50 + 1);
		for (int k = 0; k < n; k++) {
			c->failures += a[k * PG + 3] != 0; /* zeroed, whatever another thread did with it */
			a[k * PG + 3] = v;
		}
		uint8_t *m = xengnttab_map_domain_grant_refs(c->gt, (uint32_t)n, (uint32_t)c->dom, refs,
							     PROT_READ | PROT_WRITE);
		if (m) {
			for (int k = 0; k < n; k++) {
				c->failures += m[k * PG + 3] != v;
				m[k * PG + 4] = v;
			}
			c->failures += xengnttab_unmap(c->gt, m, (uint32_t)n) != 0;
		} else {
			c->failures++;
		}
		for (int k = 0; k < n; k++)
			c->failures += a[k * PG + 4] != v;
		c->failures += xengntshr_unshare(c->gs, a, (uint32_t)n) != 0;
	}
	return NULL;
}

/* Threads of one process share and map through the same handles and the same tables at once: every
 * share's pages are zeroed, and each thread sees its own bytes through its mapping. */
static void test_table_threads(void **state)
{
	(void)state;
	struct cycler c[4];
	pthread_t t[4];
	xengntshr_handle *gs = xengntshr_open(NULL, 0);
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	int dom = me();
	for (int i = 0; i < 4; i++) {
		c[i] = (struct cycler){ .gs = gs, .gt = gt, .dom = dom, .id = i };
		assert_int_equal(pthread_create(&t[i], NULL, cycle_grants, &c[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(c[i].failures, 0);
	}
	assert_true(WAIT_FOR(broker_value("xen.grant_shares") == 0 && broker_value("xen.grant_mappings") == 0, 5));
	xengnttab_close(gt);
	xengntshr_close(gs);
}

static void test_grant_copy(void **state)
{
	(void)state;
	struct peer p;
	assert_int_equal(peer_start(&p), 0);
	int pd = (int)peer_do(&p, OP_DOMID, 0, 0, 0, 0);
	int rw = (int)peer_do(&p, OP_SHARE, me(), 2, 1, 0);
	assert_true(rw >= 8);
	assert_int_equal(peer_do(&p, OP_WRITE, PG + 10, 'a', 0, 0), 0);
	xengnttab_handle *gt = xengnttab_open(NULL, 0);
	char buf[16] = "0123456789";
	xengnttab_grant_copy_segment_t segs[4] = { 0 };
	/* into the grant, then out of it */
	segs[0].source.virt = buf;
	segs[0].dest.foreign.ref = (uint32_t)rw + 1;
	segs[0].dest.foreign.domid = (uint16_t)pd;
	segs[0].dest.foreign.offset = 20;
	segs[0].len = 10;
	segs[0].flags = GNTCOPY_dest_gref;
	char out[16] = { 0 };
	segs[1].source.foreign.ref = (uint32_t)rw + 1;
	segs[1].source.foreign.domid = (uint16_t)pd;
	segs[1].source.foreign.offset = 10;
	segs[1].dest.virt = out;
	segs[1].len = 15;
	segs[1].flags = GNTCOPY_source_gref;
	/* a ref that does not exist, and a copy past the page */
	segs[2] = segs[1];
	segs[2].source.foreign.ref = 5;
	segs[3] = segs[1];
	segs[3].source.foreign.offset = 4090;
	assert_int_equal(xengnttab_grant_copy(gt, 4, segs), 0);
	assert_int_equal(segs[0].status, GNTST_okay);
	assert_int_equal(segs[1].status, GNTST_okay);
	assert_int_equal(segs[2].status, GNTST_bad_gntref);
	assert_int_equal(segs[3].status, GNTST_bad_copy_arg);
	assert_int_equal(out[0], 'a');
	assert_memory_equal(out + 10, "01234", 5);
	assert_int_equal(peer_do(&p, OP_READ, PG + 25, 0, 0, 0), '5');
	/* into a read-only grant: refused */
	assert_int_equal(peer_do(&p, OP_UNMAP, 0, 0, 0, 0), 0);
	int ro = (int)peer_do(&p, OP_SHARE, me(), 1, 0, 0);
	segs[0].dest.foreign.ref = (uint32_t)ro;
	assert_int_equal(xengnttab_grant_copy(gt, 1, segs), 0);
	assert_int_equal(segs[0].status, GNTST_permission_denied);
	assert_int_equal(peer_do(&p, OP_READ, 20, 0, 0, 0), 0);
	xengnttab_close(gt);
	assert_int_equal(peer_end(&p, 0), 0);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN); /* a peer killed on purpose */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_share_and_map, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_read_only_is_enforced, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_read_only_descriptor, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_mapper_sees_only_its_grants, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_misuse, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_share_limit, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_descriptors_per_grant, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_closed_share_memory_stays, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_kept_pages_hold_no_descriptors, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_mapper_notify, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_granter_notify, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_death_releases, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_grant_copy, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_table_grants_need_no_broker, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_table_mapping_holds_its_page, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_table_scribbled, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_table_refs_across_generations, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_table_threads, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_table_fork, tb_fixture_start, tb_fixture_stop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
