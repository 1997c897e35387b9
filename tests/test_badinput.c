/* SPDX-License-Identifier: MIT */
/* Bad input: every public entry point, every broker message type, wrong descriptors, wrong users and a
 * holder that scribbles over its control block. Errors must be clear; the broker must survive and keep
 * serving everyone else. */
#include "helpers.h"

#include <dirent.h>
#include <poll.h>

#include <pwd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "memvisor/broker.h"
#include "memvisor/memvisor.h"
#include "regions/ctl.h"
#include "regions/region.h"

#define PG MV_PAGE_SIZE

static void broker_alive(void)
{
	struct mvw_rep_status s;
	assert_int_equal(tb_status(&s), 0);
	assert_int_equal(s.broker_pid, TB.pid);
}

static void test_api_bad_arguments(void **state)
{
	mv_region *r = NULL;
	void *addr;
	int p[2];

	assert_int_equal(mv_region_new("x", 0, &r), -EINVAL);
	assert_int_equal(mv_region_new("x", SIZE_MAX, &r), -EINVAL);
	assert_int_equal(mv_region_new("x", PG, NULL), -EINVAL);
	assert_null(r);
	assert_int_equal(mv_region_from_fd(-1, &r), -EBADF);
	assert_int_equal(mv_region_from_fd(1000000, &r), -EBADF);
	assert_int_equal(pipe(p), 0);
	assert_int_equal(mv_region_from_fd(p[0], &r), -EINVAL);
	assert_int_equal(mv_region_fd_valid(p[0]), 0);
	close(p[0]);
	close(p[1]);
	assert_int_equal(mv_region_fd_valid(-1), -EBADF);
	/* A memfd that merely looks similar. */
	int fd = memfd_create("impostor", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 4 * PG), 0);
	assert_int_equal(mv_region_from_fd(fd, &r), -EINVAL);
	assert_int_equal(mv_region_fd_valid(fd), 0);
	/* Sealed like a region's data file, but no broker knows it as one. */
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
	assert_int_equal(mv_region_from_fd(fd, &r), -EINVAL);
	assert_int_equal(mv_region_fd_valid(fd), 0);
	close(fd);

	assert_int_equal(mv_region_pin(NULL, 0, 0), -EINVAL);
	assert_int_equal(mv_region_unpin(NULL, 0, 0), -EINVAL);
	assert_int_equal(mv_region_pin_status(NULL, 0, 0), -EINVAL);
	assert_int_equal(mv_region_set_prot(NULL, 0), -EINVAL);
	assert_int_equal(mv_region_get_prot(NULL), -EINVAL);
	assert_int_equal(mv_region_fd(NULL), -EINVAL);
	assert_int_equal(mv_region_map(NULL, PROT_READ, &addr), -EINVAL);
	assert_null(mv_region_unref(NULL));
	assert_null(mv_region_ref(NULL));

	assert_int_equal(mv_region_new(NULL, 3 * PG + 1, &r), 0);
	assert_string_equal(mv_region_name(r), "dev/ashmem");
	assert_int_equal(mv_region_size(r), 3 * PG + 1);
	assert_int_equal(mv_region_map(r, PROT_READ, NULL), -EINVAL);
	assert_int_equal(mv_region_map(r, 0x100, &addr), -EINVAL);
	assert_int_equal(mv_region_unmap(r, NULL), -EINVAL);
	assert_int_equal(mv_region_unmap(r, (void *)1), -EINVAL);
	/* Ranges cover the page-rounded size: 4 pages. */
	assert_int_equal(mv_region_unpin(r, 3 * PG, PG), 0);
	assert_int_equal(mv_region_unpin(r, 4 * PG, PG), -EINVAL);
	mv_region_unref(r);
}

static void test_names(void **state)
{
	char longname[400];
	mv_region *r, *r2;

	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	assert_int_equal(mv_region_new(longname, PG, &r), 0);
	assert_int_equal(strlen(mv_region_name(r)), MV_REGION_NAME_MAX);
	assert_int_equal(mv_region_from_fd(mv_region_fd(r), &r2), 0);
	assert_string_equal(mv_region_name(r2), mv_region_name(r));
	mv_region_unref(r2);
	mv_region_unref(r);
}

static void test_prot_mask_only_shrinks_and_is_enforced(void **state)
{
	mv_region *r, *late;
	void *a;

	assert_int_equal(mv_region_new("prot", 2 * PG, &r), 0);
	assert_int_equal(mv_region_get_prot(r), PROT_READ | PROT_WRITE | PROT_EXEC);
	assert_int_equal(mv_region_set_prot(r, PROT_READ | PROT_WRITE | PROT_EXEC | 0x8), -EINVAL);
	assert_int_equal(mv_region_set_prot(r, PROT_READ | PROT_WRITE), 0);
	assert_int_equal(mv_region_set_prot(r, PROT_READ | PROT_WRITE | PROT_EXEC), -EINVAL);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_EXEC, &a), -EPERM);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, &a), 0);
	memset(a, 3, PG);
	/* Dropping PROT_WRITE: the kernel refuses any new writable shared mapping, ours or anyone's. */
	assert_int_equal(mv_region_set_prot(r, PROT_READ), 0);
	assert_int_equal(mv_region_get_prot(r), PROT_READ);
	void *w = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, mv_region_fd(r), 0);
	assert_true(w == MAP_FAILED);
	assert_int_equal(errno, EPERM);
	void *ro;
	assert_int_equal(mv_region_map(r, PROT_READ, &ro), 0);
	assert_int_equal(((unsigned char *)ro)[0], 3);
	assert_int_equal(mv_region_map(r, PROT_READ | PROT_WRITE, &w), -EPERM);
	/* A process opening it now still pins and unpins (privately: nothing can purge it any more). */
	assert_int_equal(mv_region_from_fd(mv_region_fd(r), &late), 0);
	assert_int_equal(mv_region_unpin(late, 0, 0), 0);
	assert_int_equal(mv_region_pin(late, 0, 0), MV_NOT_PURGED);
	assert_int_equal(mv_region_set_prot(r, 0), 0);
	assert_int_equal(mv_region_set_prot(r, PROT_READ), -EINVAL);
	mv_region_unmap(r, a);
	mv_region_unmap(r, ro);
	mv_region_unref(late);
	mv_region_unref(r);
	broker_alive();
}

/* Raw packets straight at the broker. */
static int raw_connect(void)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/broker.sock", TB.dir);
	return mvc_connect_socket(path);
}

/* A request and its answer; the answer's descriptors go to keep[] (up to nkeep), the rest are closed. */
static int raw_roundtrip_fds(int s, const void *pkt, size_t len, const int *fds, unsigned nfds, struct mvw_msg *rep,
			     int *keep, unsigned nkeep)
{
	unsigned char buf[MV_WIRE_MAX_PACKET];
	int rfds[MV_MAX_FDS];
	unsigned rn = MV_MAX_FDS;
	ssize_t n = mvu_send_fds(s, pkt, len, fds, nfds, 0);
	if (n < 0)
		return (int)n;
	n = mvu_recv_fds(s, buf, sizeof(buf), rfds, &rn, 0);
	if (n <= 0)
		return n == 0 ? -ECONNRESET : (int)n;
	for (unsigned i = 0; i < rn; i++)
		if (i < nkeep)
			keep[i] = rfds[i];
		else
			close(rfds[i]);
	return mvw_decode(buf, (size_t)n, rn, 1, rep);
}

static int raw_roundtrip(int s, const void *pkt, size_t len, const int *fds, unsigned nfds, struct mvw_msg *rep)
{
	return raw_roundtrip_fds(s, pkt, len, fds, nfds, rep, NULL, 0);
}

static void expect_error_at(int line, int s, const void *pkt, size_t len, const int *fds, unsigned nfds, int err)
{
	struct mvw_msg rep;
	int r = raw_roundtrip(s, pkt, len, fds, nfds, &rep);
	if (r != 0 || rep.hdr.status != err)
		fail_msg("line %d: round trip %d, status %d, wanted %d", line, r, r ? 0 : rep.hdr.status, err);
}
#define expect_error(...) expect_error_at(__LINE__, __VA_ARGS__)

/* The status of the answer to bytes that are no request: its header only (it names no message type). */
static int raw_malformed_status(int s, const void *pkt, size_t len)
{
	unsigned char buf[MV_WIRE_MAX_PACKET];
	struct mvw_hdr h;

	struct pollfd pf = { .fd = s, .events = POLLIN };

	if (mvu_send_fds(s, pkt, len, NULL, 0, 0) != (ssize_t)len)
		return 1;
	if (poll(&pf, 1, 5000) != 1)
		return 4; /* no answer */
	ssize_t n = recv(s, buf, sizeof(buf), 0);
	if (n < (ssize_t)sizeof(h))
		return 2;
	memcpy(&h, buf, sizeof(h));
	if (h.magic != MV_WIRE_MAGIC || !(h.type & MV_MSG_REPLY))
		return 3;
	return h.status;
}

static void test_broker_bad_packets(void **state)
{
	unsigned char pkt[MV_WIRE_MAX_PACKET * 2];
	struct mvw_hdr h = { .magic = MV_WIRE_MAGIC, .version = MV_WIRE_VERSION, .type = MV_MSG_STATUS, .seq = 7 };
	int s = raw_connect();
	assert_true(s >= 0);

	/* Fine as a baseline. */
	struct mvw_msg rep;
	assert_int_equal(raw_roundtrip(s, &h, sizeof(h), NULL, 0, &rep), 0);
	assert_int_equal(rep.hdr.status, 0);
	assert_int_equal(rep.hdr.seq, 7);

	/* A truncated header and an empty packet are answered (as no request) and the connection stays. */
	assert_int_equal(raw_malformed_status(s, &h, 5), -EPROTO);
	assert_int_equal(raw_malformed_status(s, &h, 0), -EPROTO);
	assert_int_equal(raw_roundtrip(s, &h, sizeof(h), NULL, 0, &rep), 0);
	assert_int_equal(rep.hdr.status, 0);
	/* Wrong magic, wrong version, unknown type, reply bit, bad length, status set. */
	struct mvw_hdr bad = h;
	bad.magic = 0x1234;
	expect_error(s, &bad, sizeof(bad), NULL, 0, -EPROTO);
	bad = h;
	bad.version = 99;
	expect_error(s, &bad, sizeof(bad), NULL, 0, -EPROTONOSUPPORT);
	bad = h;
	bad.type = 77;
	expect_error(s, &bad, sizeof(bad), NULL, 0, -EPROTO);
	bad = h;
	bad.type = MV_MSG_STATUS | MV_MSG_REPLY;
	expect_error(s, &bad, sizeof(bad), NULL, 0, -EPROTO);
	bad = h;
	bad.len = 100;
	expect_error(s, &bad, sizeof(bad), NULL, 0, -EPROTO);
	bad = h;
	bad.status = -5;
	expect_error(s, &bad, sizeof(bad), NULL, 0, -EPROTO);
	/* Payload of the wrong size for its type. */
	struct mvw_req_purge pr = { .mode = MV_PURGE_EVERYTHING };
	bad = h;
	bad.type = MV_MSG_PURGE;
	bad.len = sizeof(pr) - 1;
	memcpy(pkt, &bad, sizeof(bad));
	memcpy(pkt + sizeof(bad), &pr, sizeof(pr) - 1);
	expect_error(s, pkt, sizeof(bad) + sizeof(pr) - 1, NULL, 0, -EPROTO);
	/* Oversized packet. */
	memset(pkt, 0xee, sizeof(pkt));
	memcpy(pkt, &h, sizeof(h));
	expect_error(s, pkt, sizeof(pkt), NULL, 0, -EMSGSIZE);
	/* Descriptors where none belong, and none where one must be. */
	int p[2];
	assert_int_equal(pipe(p), 0);
	expect_error(s, &h, sizeof(h), p, 1, -EPROTO);
	struct mvw_req_attach at = { 0 };
	size_t n = mvw_encode(pkt, MV_MSG_ATTACH, 9, 0, &at, sizeof(at));
	expect_error(s, pkt, n, NULL, 0, -EPROTO);
	expect_error(s, pkt, n, p, 1, -EPROTO); /* data and control file */
	/* Attach, and restore, with something that is not a region. */
	expect_error(s, pkt, n, p, 2, -EINVAL);
	struct mvw_req_restore rs = { .pg0 = 0, .pg1 = 0 };
	size_t rn = mvw_encode(pkt + MV_WIRE_MAX_PACKET, MV_MSG_RESTORE, 14, 0, &rs, sizeof(rs));
	expect_error(s, pkt + MV_WIRE_MAX_PACKET, rn, p, 1, -EINVAL);
	int mfd[2] = { memfd_create("not-sealed", MFD_CLOEXEC), memfd_create("not-sealed-ctl", MFD_CLOEXEC) };
	assert_int_equal(ftruncate(mfd[0], 4 * PG), 0);
	assert_int_equal(ftruncate(mfd[1], (off_t)mvr_ctl_length(4)), 0);
	expect_error(s, pkt, n, mfd, 2, -EINVAL);
	close(mfd[0]);
	close(mfd[1]);
	mfd[0] = memfd_create("sealed-garbage", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	mfd[1] = memfd_create("sealed-garbage-ctl", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_int_equal(ftruncate(mfd[0], 4 * PG), 0);
	assert_int_equal(ftruncate(mfd[1], (off_t)mvr_ctl_length(4)), 0);
	assert_int_equal(pwrite(mfd[1], "V_REGION garbage", 16, 0), 16);
	for (int i = 0; i < 2; i++)
		assert_int_equal(fcntl(mfd[i], F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
	expect_error(s, pkt, n, mfd, 2, -EINVAL);
	/* A real region's data file with a forged control file; a control file asked for a file that
	 * is no region, and one asked for without any file. */
	mv_region *real;
	assert_int_equal(mv_region_new("real", 4 * PG, &real), 0);
	int forged[2] = { mv_region_fd(real), mfd[1] };
	expect_error(s, pkt, n, forged, 2, -EINVAL);
	size_t cn = mvw_encode(pkt + MV_WIRE_MAX_PACKET, MV_MSG_REGION_CTL, 15, 0, NULL, 0);
	expect_error(s, pkt + MV_WIRE_MAX_PACKET, cn, mfd, 1, -EINVAL);
	expect_error(s, pkt + MV_WIRE_MAX_PACKET, cn, NULL, 0, -EPROTO);
	/* Ashmem areas: the area's file must be an empty memfd sealed against growth, the region a real
	 * one with its own control file; one area, one region; an area nobody bound has none. */
	int area = memfd_create("area", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_int_equal(fcntl(area, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
	size_t an = mvw_encode(pkt + MV_WIRE_MAX_PACKET, MV_MSG_AREA_GET, 16, 0, NULL, 0);
	expect_error(s, pkt + MV_WIRE_MAX_PACKET, an, &area, 1, -ENOENT);
	expect_error(s, pkt + MV_WIRE_MAX_PACKET, an, p, 1, -EINVAL);
	expect_error(s, pkt + MV_WIRE_MAX_PACKET, an, NULL, 0, -EPROTO);
	/* Binding is one way: whatever is refused leaves the area without a region. */
	unsigned char bpkt[MV_WIRE_MAX_PACKET];
	size_t bn = mvw_encode(bpkt, MV_MSG_AREA_BIND, 0, 0, NULL, 0);
	int bind_bad_area[3] = { p[0], mv_region_fd(real), real->ctl_fd };
	int bind_region_as_area[3] = { mv_region_fd(real), mv_region_fd(real), real->ctl_fd };
	int bind_forged[3] = { area, mv_region_fd(real), mfd[1] };
	int bind_garbage[3] = { area, mfd[0], mfd[1] };
	const int *bad_binds[] = { bind_bad_area, bind_region_as_area, bind_forged, bind_garbage };
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(mvu_send_fds(s, bpkt, bn, bad_binds[i], 3, 0), (ssize_t)bn);
	expect_error(s, pkt + MV_WIRE_MAX_PACKET, an, &area, 1, -ENOENT);
	expect_error(s, bpkt, bn, bind_forged, 2, -EPROTO); /* malformed: answered, as every such packet */
	int bind_ok[3] = { area, mv_region_fd(real), real->ctl_fd };
	assert_int_equal(mvu_send_fds(s, bpkt, bn, bind_ok, 3, 0), (ssize_t)bn);
	/* A second binding of a bound area changes nothing. */
	assert_int_equal(mvu_send_fds(s, bpkt, bn, bind_forged, 3, 0), (ssize_t)bn);
	struct mvw_msg arep;
	int got[2] = { -1, -1 };
	an = mvw_encode(pkt + MV_WIRE_MAX_PACKET, MV_MSG_AREA_GET, 18, 0, NULL, 0);
	assert_int_equal(raw_roundtrip_fds(s, pkt + MV_WIRE_MAX_PACKET, an, &area, 1, &arep, got, 2), 0);
	assert_int_equal(arep.hdr.status, 0);
	assert_true(mvr_ctl_check_files(got[0], got[1], &(uint64_t){ 0 }, &(struct mvr_ctl_hdr){ 0 }) == 0);
	struct stat a, b;
	assert_int_equal(fstat(got[0], &a), 0);
	assert_int_equal(fstat(mv_region_fd(real), &b), 0);
	assert_int_equal(a.st_ino, b.st_ino);
	close(got[0]);
	close(got[1]);
	close(area);
	mv_region_unref(real);
	close(mfd[0]);
	close(mfd[1]);
	close(p[0]);
	close(p[1]);
	/* Bad purge mode, bad config key, unknown detach id (harmless). */
	pr.mode = 42;
	n = mvw_encode(pkt, MV_MSG_PURGE, 10, 0, &pr, sizeof(pr));
	expect_error(s, pkt, n, NULL, 0, -EINVAL);
	struct mvw_req_config cf = { .key = 99 };
	n = mvw_encode(pkt, MV_MSG_CONFIG, 11, 0, &cf, sizeof(cf));
	expect_error(s, pkt, n, NULL, 0, -EINVAL);
	struct mvw_req_detach dt = { .region_id = 123456 };
	n = mvw_encode(pkt, MV_MSG_DETACH, 12, 0, &dt, sizeof(dt));
	expect_error(s, pkt, n, NULL, 0, 0);
	struct mvw_req_hello he = { .version = 2 };
	n = mvw_encode(pkt, MV_MSG_HELLO, 13, 0, &he, sizeof(he));
	expect_error(s, pkt, n, NULL, 0, -EPROTONOSUPPORT);

	/* Random garbage, many times. */
	srandom(7);
	for (int i = 0; i < 2000; i++) {
		size_t len = (size_t)(random() % 64);
		for (size_t k = 0; k < len; k++)
			pkt[k] = (unsigned char)random();
		if (len >= 2 && (i & 1)) {
			pkt[0] = MV_WIRE_MAGIC & 0xff;
			pkt[1] = MV_WIRE_MAGIC >> 8;
		}
		if (mvu_send_fds(s, pkt, len, NULL, 0, MSG_DONTWAIT) < 0)
			break;
	}
	close(s);
	broker_alive();

	/* A client that never reads its replies is cut off, never stalls the broker: once its socket
	 * holds no more replies, the broker hangs up, and the client's next send fails. */
	s = raw_connect();
	n = mvw_encode(pkt, MV_MSG_STATUS, 1, 0, NULL, 0);
	bool hung_up = false;
	for (int i = 0; i < 20000 && !hung_up; i++) {
		ssize_t w = mvu_send_fds(s, pkt, n, NULL, 0, MSG_DONTWAIT);
		if (w == -EAGAIN)
			usleep(1000); /* the broker has not read the last ones yet */
		hung_up = w == -EPIPE || w == -ECONNRESET;
	}
	broker_alive();
	assert_true(hung_up);
	close(s);
	broker_alive();
}

/* The broker holds its user's region, grant and partition memfds: no process of that user may open them
 * through /proc/<broker>/fd. As root the broker runs as nobody here, so that the check means the same. */
static void test_broker_fds_unreachable(void **state)
{
	struct passwd *pw = getpwnam("nobody");
	bool as_nobody = getuid() == 0;
	struct tbroker b = { 0 };
	char dir[] = "/tmp/mvtest-XXXXXX";
	int p[2];

	if (as_nobody && !pw) {
		skip();
		return;
	}
	assert_non_null(mkdtemp(dir));
	if (as_nobody)
		assert_int_equal(chown(dir, pw->pw_uid, pw->pw_gid), 0);
	assert_int_equal(pipe(p), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* A process of the broker's user: it starts the broker, makes it hold a region's memfd, then
		 * tries every descriptor the broker has. */
		close(p[0]);
		if (as_nobody &&
		    (setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) || setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid)))
			_exit(10);
		if (tb_start_in(&b, dir, NULL) < 0)
			_exit(access(getenv("MEMVISOR_BROKER"), X_OK) == 0 ? 11 : 77); /* 77: cannot run it as nobody */
		mv_region *r;
		if (mv_region_new("secret", 4 * MV_PAGE_SIZE, &r) < 0 || mv_region_unpin(r, 0, 0) < 0 || mv_sync() < 0)
			_exit(12);
		char path[96];
		int opened = 0, tried = 0;
		for (int fd = 0; fd < 64; fd++) {
			snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)b.pid, fd);
			int f = open(path, O_RDONLY | O_CLOEXEC);
			tried++;
			if (f >= 0) {
				opened++;
				close(f);
			} else if (errno != EACCES && errno != ENOENT) {
				_exit(13);
			}
		}
		snprintf(path, sizeof(path), "/proc/%d/fd", (int)b.pid);
		bool listable = opendir(path) != NULL;
		tb_stop(&b);
		_exit(opened == 0 && !listable && tried == 64 ? 0 : 14);
	}
	close(p[1]);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	close(p[0]);
	rmdir(dir);
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) == 77) {
		skip(); /* the build tree is not reachable for nobody */
		return;
	}
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* CPU time (utime + stime, in clock ticks) a process has used. */
static long cpu_ticks(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	long ut = 0, st = 0;
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &ut, &st) != 2)
		return -1;
	return ut + st;
}

/* Whether a STATUS sent on s is answered within ms. */
static bool answered(int s, int ms)
{
	unsigned char buf[MV_WIRE_MAX_PACKET];
	size_t n = mvw_encode(buf, MV_MSG_STATUS, 1, 0, NULL, 0);
	struct pollfd pf = { .fd = s, .events = POLLIN };
	if (mvu_send_fds(s, buf, n, NULL, 0, MSG_DONTWAIT) < 0)
		return false;
	return poll(&pf, 1, ms) == 1 && recv(s, buf, sizeof(buf), 0) > 0;
}

/* At its descriptor limit the broker stops accepting instead of spinning on the listening socket, and
 * takes the waiting clients in once descriptors come free. */
static void test_descriptor_limit(void **state)
{
	struct tbroker b;
	int socks[200], n = 0;

	setenv("MEMVISOR_TEST_NOFILE", "40", 1);
	assert_int_equal(tb_start(&b, NULL), 0);
	unsetenv("MEMVISOR_TEST_NOFILE");
	char path[300];
	snprintf(path, sizeof(path), "%s/broker.sock", b.dir);
	/* clients until one is left waiting: the broker has no descriptor for it */
	for (; n < 200; n++) {
		socks[n] = mvc_connect_socket(path);
		assert_true(socks[n] >= 0);
		if (!answered(socks[n], 500)) {
			n++;
			break;
		}
	}
	assert_true(n < 200); /* the limit was reached */
	long t0 = cpu_ticks(b.pid);
	usleep(1000000);
	long used = cpu_ticks(b.pid) - t0;
	print_message("at the limit with %d clients: broker used %ld ticks in 1 s\n", n, used);
	assert_true(t0 >= 0 && used < 20); /* spinning would be ~100 ticks */
	/* half of them leave: the one waiting is taken in and answered */
	for (int i = 0; i < n / 2; i++)
		close(socks[i]);
	struct pollfd pf = { .fd = socks[n - 1], .events = POLLIN };
	assert_int_equal(poll(&pf, 1, 5000), 1);
	unsigned char buf[MV_WIRE_MAX_PACKET];
	assert_true(recv(socks[n - 1], buf, sizeof(buf), 0) > 0);
	int fresh = mvc_connect_socket(path);
	assert_true(fresh >= 0 && answered(fresh, 5000));
	close(fresh);
	for (int i = n / 2; i < n; i++)
		close(socks[i]);
	tb_stop(&b);
}

/* A status request on a raw connection: its status (0, or the broker's refusal). */
static int status_of(int s)
{
	struct mvw_msg rep;
	uint32_t seq = 0;
	return mvc_exchange(s, &seq, MV_MSG_STATUS, NULL, 0, -1, &rep, NULL, mvu_now_ns() + 5000000000ull, NULL);
}

/* One process cannot fill the broker's connection table: past --clients-per-pid its connections are
 * answered EUSERS and closed, while other processes still get in, and a freed place is taken again. */
static void test_clients_per_pid(void **state)
{
	(void)state;
	struct tbroker b;
	const char *extra[] = { "--clients-per-pid", "4", NULL };
	int socks[4];
	char path[300];

	assert_int_equal(tb_start(&b, extra), 0);
	snprintf(path, sizeof(path), "%s/broker.sock", b.dir);
	for (int i = 0; i < 4; i++) {
		socks[i] = mvc_connect_socket(path);
		assert_true(socks[i] >= 0);
		assert_int_equal(status_of(socks[i]), 0);
	}
	for (int i = 0; i < 3; i++) {
		int extra_sock = mvc_connect_socket(path);
		assert_true(extra_sock >= 0);
		assert_int_equal(status_of(extra_sock), -EUSERS);
		char c;
		assert_int_equal(recv(extra_sock, &c, 1, 0), 0); /* and then closed */
		close(extra_sock);
	}
	/* a refused connection that never asks anything harms nobody */
	int silent = mvc_connect_socket(path);
	assert_true(silent >= 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int s = mvc_connect_socket(path);
		_exit(s >= 0 && status_of(s) == 0 ? 0 : 1);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	close(socks[0]);
	int again = -1;
	assert_true(WAIT_FOR(
		(again = mvc_connect_socket(path)) >= 0 && status_of(again) == 0 ? true : (close(again), false), 5));
	struct mvw_msg rep;
	uint32_t seq = 0;
	assert_int_equal(
		mvc_exchange(again, &seq, MV_MSG_STATUS, NULL, 0, -1, &rep, NULL, mvu_now_ns() + 5000000000ull, NULL),
		0);
	assert_int_equal(rep.u.status_rep.clients, 4);
	close(again);
	close(silent);
	for (int i = 1; i < 4; i++)
		close(socks[i]);
	tb_stop(&b);
}

/* Another user made /tmp/memvisor-<our uid> first (here root, for a uid of our choosing): we still get a
 * broker, in our home directory. Root only: only root can squat for another uid. */
static void test_squatted_tmp_dir(void **state)
{
	const uid_t uid = 54321;
	char squat[64], home[] = "/tmp/mvtest-home-XXXXXX";

	if (getuid() != 0) {
		skip();
		return;
	}
	snprintf(squat, sizeof(squat), "/tmp/memvisor-%u", (unsigned)uid);
	if (mkdir(squat, 0755) < 0) {
		skip(); /* somebody has it already: not ours to touch */
		return;
	}
	assert_non_null(mkdtemp(home));
	assert_int_equal(chown(home, uid, uid), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (setresgid(uid, uid, uid) || setresuid(uid, uid, uid))
			_exit(10);
		if (access(getenv("MEMVISOR_BROKER"), X_OK) != 0)
			_exit(77);
		setenv("HOME", home, 1);
		unsetenv("MEMVISOR_RUNTIME_DIR");
		unsetenv("XDG_RUNTIME_DIR");
		unsetenv("MEMVISOR_AUTOSTART");
		setenv("MEMVISOR_EXIT_IDLE", "1", 1);
		mv_region *r;
		if (mv_region_new("squatted", MV_PAGE_SIZE, &r) < 0)
			_exit(11); /* no broker: the squat won */
		struct mvw_rep_status st = { 0 };
		if (tb_status(&st) < 0)
			_exit(12);
		char dir[256];
		if (mv_broker_runtime_dir(dir, sizeof(dir)) < 0 || strncmp(dir, home, strlen(home)) != 0)
			_exit(13);
		mv_region_unref(r);
		kill(st.broker_pid, SIGTERM);
		_exit(0);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	rmdir(squat);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", home);
	assert_int_equal(system(cmd), 0);
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) == 77) {
		skip();
		return;
	}
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* Another unprivileged user is refused at the door. */
static void test_other_uid_refused(void **state)
{
	struct passwd *pw = getpwnam("nobody");
	if (getuid() != 0 || !pw) {
		skip();
		return;
	}
	/* The broker runs as root here, so make the test from a nobody process. */
	char sock[300];
	snprintf(sock, sizeof(sock), "%s/broker.sock", TB.dir);
	chmod(TB.dir, 0711);
	chmod(sock, 0777); /* let them reach the broker: its own credential check must refuse them */
	pid_t pid = fork();
	if (pid == 0) {
		if (setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) || setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid))
			_exit(10);
		int s = raw_connect();
		if (s < 0)
			_exit(11);
		struct mvw_hdr h = {
			.magic = MV_WIRE_MAGIC, .version = MV_WIRE_VERSION, .type = MV_MSG_STATUS, .seq = 1
		};
		struct mvw_msg rep;
		int r = raw_roundtrip(s, &h, sizeof(h), NULL, 0, &rep);
		_exit(r == -ECONNRESET || r == -EPIPE ? 0 : 12);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	chmod(TB.dir, 0700);
	chmod(sock, 0600);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	broker_alive();
}

/* A holder corrupts its region's control block: garbage states, stamps, even the lock. The broker must
 * not crash, must not touch other regions, and must keep purging honest ones. */
static void test_malicious_control_block(void **state)
{
	mv_region *evil, *good;
	unsigned char *g;
	uint64_t purged;

	assert_int_equal(mv_region_new("evil", 64 * PG, &evil), 0);
	assert_int_equal(mv_region_new("good", 8 * PG, &good), 0);
	assert_int_equal(mv_region_map(good, PROT_READ | PROT_WRITE, (void **)&g), 0);
	memset(g, 9, 8 * PG);
	assert_int_equal(mv_region_unpin(evil, 0, 0), 0);
	assert_int_equal(mv_region_unpin(good, 0, 4 * PG), 0);

	srandom(99);
	for (int round = 0; round < 50; round++) {
		for (int p = 0; p < 64; p++)
			atomic_store(&evil->view.pages[p], ((uint64_t)random() << 32) ^ (uint64_t)random());
		if (round % 10 == 0)
			memset(&evil->view.hdr->lock, 0xff, sizeof(evil->view.hdr->lock));
		atomic_store(&evil->view.hdr->purger_pid, (int32_t)random());
		atomic_store(&evil->view.hdr->last_stamp, ((uint64_t)random() << 32) | (uint64_t)random());
		assert_int_equal(mv_purge(MV_PURGE_ALL, &purged), 0);
		assert_int_equal(mv_sync(), 0);
		broker_alive();
	}
	/* The honest region: exactly its unpinned half purged, pinned half intact. */
	assert_int_equal(mv_region_pin(good, 0, 0), MV_WAS_PURGED);
	assert_int_equal(g[0], 0);
	assert_int_equal(g[4 * PG], 9);
	assert_int_equal(g[8 * PG - 1], 9);
	mv_region_unmap(good, g);
	mv_region_unref(good);
	mv_region_unref(evil);
	broker_alive();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_api_bad_arguments, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_names, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_prot_mask_only_shrinks_and_is_enforced, tb_fixture_start,
						tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_broker_bad_packets, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test_setup_teardown(test_other_uid_refused, tb_fixture_start, tb_fixture_stop),
		cmocka_unit_test(test_broker_fds_unreachable),
		cmocka_unit_test(test_descriptor_limit),
		cmocka_unit_test(test_clients_per_pid),
		cmocka_unit_test(test_squatted_tmp_dir),
		cmocka_unit_test_setup_teardown(test_malicious_control_block, tb_fixture_start, tb_fixture_stop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
