/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "client.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MV_INSTALL_BROKER
#define MV_INSTALL_BROKER "/usr/local/bin/memvisord"
#endif

/* How long a caller may wait for the broker (MEMVISOR_TIMEOUT_MS): every request an application makes,
 * including the wait for the connection and for a connection to be made. Administrative requests (a
 * purge, a setting, a listing) ask the broker for work that grows with the memory it manages, and are
 * made by tools or on purpose, never by pin, unpin or a constructor: they wait longer
 * (MEMVISOR_ADMIN_TIMEOUT_MS, and never less than the other). */
#define DEFAULT_TIMEOUT_MS 50
#define DEFAULT_ADMIN_TIMEOUT_MS 5000
#define MAX_TIMEOUT_MS 600000
#define RECONNECT_INTERVAL_NS (1000ull * 1000 * 1000)

extern char **environ;

/* The connection carries one request at a time. Its lock hands the connection out in arrival order:
 * with a plain mutex, a thread that asks back to back (a purge loop) re-takes it before a woken
 * waiter runs, and a pin waiting to restore its pages could starve for seconds. A waiter whose
 * deadline passes leaves the queue: the lock never makes a caller wait longer than its bound. */
struct fifo_waiter {
	struct fifo_waiter *next;
};

struct fifo_lock {
	pthread_mutex_t m;
	pthread_cond_t turn;
	struct fifo_waiter *head, *tail; /* head holds the lock */
};

static struct {
	struct fifo_lock lock;
	uint64_t deadline_ns; /* the lock holder's: every exchange it makes ends by then */
	unsigned abandoned;   /* requests sent whose answers nobody waits for any more */
	int fd;
	pid_t pid; /* process that owns fd; a forked child must not share it */
	uint32_t seq;
	uint64_t gen;
	char dir[256];                         /* the runtime directory fd's broker serves */
	struct mvw_bulletin *_Atomic bulletin; /* read without the lock by unpin; never unmapped */
	uint64_t last_attempt_ns;
	void (*on_connect[4])(void); /* facilities' hooks, run on every new connection */
	unsigned n_on_connect;
	void (*_Atomic on_release)(void); /* a facility's hook, run before the lock is let go */
} C = {
	.lock = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL },
	.fd = -1,
};

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void);

/* The process's Xen domain, when a Xen library is loaded (see mvc_domain_init). */
static struct {
	bool wanted;        /* every fork child becomes a domain of its own at once */
	bool claim_pending; /* MEMVISOR_XEN_DOMID was not answered yet: asked again at first use */
	int error;          /* the chosen domain was refused: the Xen libraries fail with this */
} XD;
static int domain_claim(bool early);

static __thread struct fifo_waiter self_waiter;

static int env_ms(const char *name, int def)
{
	const char *e = getenv(name);
	char *end;
	long v;

	if (!e || !*e)
		return def;
	errno = 0;
	v = strtol(e, &end, 10);
	return errno || *end || v < 1 || v > MAX_TIMEOUT_MS ? def : (int)v;
}

int mvc_timeout_ms(bool admin)
{
	int t = env_ms("MEMVISOR_TIMEOUT_MS", DEFAULT_TIMEOUT_MS);
	int a = env_ms("MEMVISOR_ADMIN_TIMEOUT_MS", DEFAULT_ADMIN_TIMEOUT_MS);

	return admin && a > t ? a : t;
}

static uint64_t deadline_in(int ms)
{
	return mvu_now_ns() + (uint64_t)ms * 1000000ull;
}

/* 0 once the connection is ours, -ETIMEDOUT if it was not by the deadline. */
static int conn_lock_until(uint64_t deadline)
{
	struct fifo_waiter *me = &self_waiter;
	int r = 0;

	/* before the lock is ever taken: a fork while it is held must find the handler in place */
	pthread_once(&atfork_once, register_atfork);
	pthread_mutex_lock(&C.lock.m);
	me->next = NULL;
	if (C.lock.tail)
		C.lock.tail->next = me;
	else
		C.lock.head = me;
	C.lock.tail = me;
	while (C.lock.head != me) {
		struct timespec ts = { .tv_sec = (time_t)(deadline / 1000000000ull),
				       .tv_nsec = (long)(deadline % 1000000000ull) };
		if (pthread_cond_clockwait(&C.lock.turn, &C.lock.m, CLOCK_MONOTONIC, &ts) == ETIMEDOUT &&
		    C.lock.head != me) {
			/* Leave the queue. Not at its head, so the holder and the order are unchanged. */
			struct fifo_waiter *p = C.lock.head;
			while (p->next != me)
				p = p->next;
			p->next = me->next;
			if (C.lock.tail == me)
				C.lock.tail = p;
			r = -ETIMEDOUT;
			break;
		}
	}
	pthread_mutex_unlock(&C.lock.m);
	if (r == 0)
		C.deadline_ns = deadline;
	return r;
}

/* Takes the connection only if nobody has it or waits for it. */
static bool conn_trylock(void)
{
	bool ok;

	pthread_once(&atfork_once, register_atfork);
	pthread_mutex_lock(&C.lock.m);
	ok = C.lock.head == NULL;
	if (ok) {
		self_waiter.next = NULL;
		C.lock.head = C.lock.tail = &self_waiter;
	}
	pthread_mutex_unlock(&C.lock.m);
	if (ok)
		C.deadline_ns = deadline_in(mvc_timeout_ms(false));
	return ok;
}

static void conn_unlock(void)
{
	/* Work that threads could not do because the connection was busy (a one-way message from an
	 * unpin, which never waits) is done by whoever had it, before letting it go. */
	void (*hook)(void) = atomic_load_explicit(&C.on_release, memory_order_acquire);
	if (hook && C.fd >= 0 && C.pid == getpid())
		hook();
	pthread_mutex_lock(&C.lock.m);
	C.lock.head = C.lock.head->next;
	if (!C.lock.head)
		C.lock.tail = NULL;
	pthread_cond_broadcast(&C.lock.turn);
	pthread_mutex_unlock(&C.lock.m);
}

static void atfork_child(void)
{
	/* The socket and the broker's record of us belong to the parent. Drop our copy of the socket;
	 * the child reconnects and re-attaches its inherited regions on its next broker operation. */
	pthread_mutex_init(&C.lock.m, NULL);
	pthread_cond_init(&C.lock.turn, NULL);
	C.lock.head = C.lock.tail = NULL;
	C.abandoned = 0;
	if (C.fd >= 0)
		close(C.fd);
	__atomic_store_n(&C.fd, -1, __ATOMIC_RELEASE);
	C.last_attempt_ns = 0;
	/* A child of a domain is a domain of its own, never its parent nor the toolstack: made now, before
	 * the child can reach the xenstore through a library that is not ours. A chosen id stays the
	 * parent's; the child gets a fresh one. */
	XD.claim_pending = false;
	XD.error = 0;
	if (XD.wanted)
		(void)mvc_request_early(MV_MSG_DOMAIN);
}

static void register_atfork(void)
{
	pthread_atfork(NULL, NULL, atfork_child);
}

static void disconnect_locked(void)
{
	if (C.fd >= 0)
		close(C.fd);
	__atomic_store_n(&C.fd, -1, __ATOMIC_RELEASE);
	C.abandoned = 0;
	/* The bulletin mapping stays: pointers to it may be in use by pin/unpin in other threads, and
	 * a stale bulletin only receives hints nobody reads. It is replaced on reconnect. */
}

static int connect_socket(const char *path, int flags)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | flags, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

int mvc_connect_socket(const char *path)
{
	return connect_socket(path, 0);
}

/* More unanswered requests than this and the broker is not coming back soon: start afresh. */
#define MAX_ABANDONED 256

/* A packet that arrived for a request nobody waits for any more: dropped, fds and all. Anything else
 * means the stream is out of step. */
static bool take_stale(unsigned *abandoned, const struct mvw_msg *m, uint32_t myseq)
{
	if (!abandoned || !*abandoned || m->hdr.seq == myseq || !(m->hdr.type & MV_MSG_REPLY))
		return false;
	(*abandoned)--;
	return true;
}

static int exchange(int sock, uint32_t *seq, uint8_t type, const void *payload, size_t len, const int *sfds,
		    unsigned nsfds, struct mvw_msg *rep, int *rep_fd, uint64_t deadline, unsigned *abandoned)
{
	unsigned char buf[MV_WIRE_MAX_PACKET];
	uint32_t myseq;
	size_t n;
	ssize_t r;

	if (rep_fd)
		*rep_fd = -1;
	if (mvu_now_ns() >= deadline)
		return -ETIMEDOUT;
	if (abandoned && *abandoned >= MAX_ABANDONED)
		return -EPROTO; /* the caller drops the connection */
	myseq = ++*seq;
	n = mvw_encode(buf, type, myseq, 0, payload, len);
	/* Never wait to send: a broker that does not read is one that does not answer. */
	r = mvu_send_fds(sock, buf, n, sfds, nsfds, MSG_DONTWAIT);
	if (r < 0)
		return (int)r;
	for (;;) {
		int fds[MV_MAX_FDS];
		unsigned nfds = MV_MAX_FDS;
		uint64_t now = mvu_now_ns();
		struct pollfd p = { .fd = sock, .events = POLLIN };

		if (now >= deadline)
			goto timeout;
		r = poll(&p, 1, (int)((deadline - now + 999999ull) / 1000000ull));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			goto timeout;
		r = mvu_recv_fds(sock, buf, sizeof(buf), fds, &nfds, MSG_DONTWAIT);
		if (r == -EAGAIN)
			continue;
		if (r < 0)
			return (int)r;
		if (r == 0)
			return -ECONNRESET;
		r = mvw_decode(buf, (size_t)r, nfds, 1, rep);
		if (r == 0 && take_stale(abandoned, rep, myseq)) {
			/* the late answer to an earlier request: never this one's */
			mvu_close_fds(fds, nfds);
			continue;
		}
		if (r < 0 || rep->hdr.seq != myseq || (rep->hdr.type & ~MV_MSG_REPLY) != type) {
			mvu_close_fds(fds, nfds);
			return r < 0 ? (int)r : -EPROTO;
		}
		if (rep->hdr.status < 0)
			return rep->hdr.status;
		/* rep_fd has room for as many descriptors as the reply type carries (checked by decode) */
		for (unsigned i = 0; i < nfds; i++) {
			if (rep_fd)
				rep_fd[i] = fds[i];
			else
				close(fds[i]);
		}
		return 0;
	}
timeout:
	/* The request stays sent: its answer, when it comes, is recognised by its sequence number and
	 * dropped, so the connection (and what the broker keeps for it) survives a slow broker. */
	if (abandoned)
		(*abandoned)++;
	return -ETIMEDOUT;
}

int mvc_exchange(int sock, uint32_t *seq, uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep,
		 int *rep_fd, uint64_t deadline, unsigned *abandoned)
{
	return exchange(sock, seq, type, payload, len, &fd, fd >= 0 ? 1 : 0, rep, rep_fd, deadline, abandoned);
}

static int broker_path(char *out, size_t len)
{
	const char *env = getenv("MEMVISOR_BROKER");
	Dl_info info;

	if (env && *env) {
		snprintf(out, len, "%s", env);
		return access(out, X_OK) == 0 ? 0 : -ENOENT;
	}
	/* Next to wherever this code was loaded from: lib/../bin, or bin/ for the tools. */
	if (dladdr((void *)broker_path, &info) && info.dli_fname) {
		static const char *const rel[] = { "/memvisord", "/../bin/memvisord", "/../../bin/memvisord" };
		char self[PATH_MAX];
		char *slash;

		if (realpath(info.dli_fname, self) && (slash = strrchr(self, '/'))) {
			*slash = '\0';
			for (size_t i = 0; i < MV_ARRAY_SIZE(rel); i++) {
				snprintf(out, len, "%s%s", self, rel[i]);
				if (access(out, X_OK) == 0)
					return 0;
			}
		}
	}
	snprintf(out, len, "%s", MV_INSTALL_BROKER);
	return access(out, X_OK) == 0 ? 0 : -ENOENT;
}

/* An auto-started broker outlives its starter but must not outlive all use: see memvisord --exit-idle. */
#define AUTOSTART_EXIT_IDLE "60"

static const char *autostart_exit_idle(void)
{
	const char *e = getenv("MEMVISOR_EXIT_IDLE");
	char *end;

	if (!e || !*e)
		return AUTOSTART_EXIT_IDLE;
	errno = 0;
	double v = strtod(e, &end);
	return errno || *end || !(v >= 0 && v <= 86400.0 * 365) ? AUTOSTART_EXIT_IDLE : e;
}

int mvc_spawn_broker(void)
{
	char path[PATH_MAX], dir[256], idle[32];
	char *argv[] = { "memvisord", "--runtime-dir", dir, "--exit-idle", idle, NULL };
	pid_t pid;
	int r, status;

	r = mvu_runtime_dir(dir, sizeof(dir), 1);
	if (r < 0)
		return r;
	snprintf(idle, sizeof(idle), "%s", autostart_exit_idle());
	r = broker_path(path, sizeof(path));
	if (r < 0)
		return r;
	/* memvisord daemonizes once it listens, so its first process exits quickly; many processes
	 * spawning at once is fine: all but one lose the lock and exit. */
	r = posix_spawn(&pid, path, NULL, NULL, argv, environ);
	if (r)
		return -r;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return 0; /* SIGCHLD ignored by the application: the child is reaped for us */
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -ECHILD;
}

static bool autostart_enabled(void)
{
	const char *e = getenv("MEMVISOR_AUTOSTART");
	return !(e && strcmp(e, "0") == 0);
}

/* With the lock held, within its holder's deadline. */
static int connect_with(bool force, bool autostart)
{
	char path[300];
	struct mvw_msg rep;
	struct mvw_req_hello hello = { .version = MV_WIRE_VERSION };
	int fd, bfd = -1, r;
	uint64_t now = mvu_now_ns();
	char dir[sizeof(C.dir)];

	pthread_once(&atfork_once, register_atfork);
	/* The program may name its broker (MEMVISOR_RUNTIME_DIR) after a library constructor already
	 * connected to the default one: follow it, or requests would go to a broker it never chose. */
	if (mvu_runtime_dir_name(dir, sizeof(dir)) < 0)
		dir[0] = '\0';
	if (C.fd >= 0 && C.pid == getpid() && strcmp(dir, C.dir) == 0)
		return 0;
	if (C.fd >= 0)
		disconnect_locked();
	/* Retries are spaced out, but a different broker is a first attempt. */
	if (!force && C.last_attempt_ns && now - C.last_attempt_ns < RECONNECT_INTERVAL_NS && strcmp(dir, C.dir) == 0)
		return -ENOTCONN;
	C.last_attempt_ns = now;
	snprintf(C.dir, sizeof(C.dir), "%s", dir);

	/* A broker leaving for idleness can accept us in its last moment and hang up: one more try, which
	 * starts another if need be. */
	for (int attempt = 0;; attempt++) {
		r = mvu_runtime_path(path, sizeof(path), "broker.sock", 0);
		if (r < 0 && r != -ENOENT)
			return r;
		/* Non-blocking: a stopped broker's full backlog would otherwise keep connect() waiting. */
		fd = r < 0 ? r : connect_socket(path, SOCK_NONBLOCK);
		if (fd < 0 && fd != -EAGAIN && autostart && autostart_enabled()) {
			if (mvc_spawn_broker() == 0) {
				/* Starting one is not waiting on one: the new broker gets a full bound to answer. */
				uint64_t d = deadline_in(mvc_timeout_ms(false));
				if (d > C.deadline_ns)
					C.deadline_ns = d;
				r = mvu_runtime_path(path, sizeof(path), "broker.sock", 0);
				/* The winner of a start race may still be binding: retry briefly. */
				for (int i = 0; r == 0 && i < 200; i++) {
					fd = connect_socket(path, SOCK_NONBLOCK);
					if (fd >= 0 || (fd != -ENOENT && fd != -ECONNREFUSED))
						break;
					usleep(10000);
				}
			}
		}
		if (fd < 0)
			return fd == -EAGAIN ? -EAGAIN : -ENOTCONN;

		/* Nothing rides on a connection before its handshake: one that does not answer is closed. */
		r = mvc_exchange(fd, &C.seq, MV_MSG_HELLO, &hello, sizeof(hello), -1, &rep, &bfd, C.deadline_ns, NULL);
		if (r < 0) {
			close(fd);
			if ((r == -ECONNRESET || r == -EPIPE) && attempt == 0) {
				usleep(20000); /* let it finish leaving: its lock and socket go with it */
				continue;
			}
			return r == -ETIMEDOUT || r == -EAGAIN ? r : -ENOTCONN;
		}
		break;
	}
	struct mvw_bulletin *b = mmap(NULL, MV_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, bfd, 0);
	close(bfd);
	if (b == MAP_FAILED) {
		close(fd);
		return -ENOTCONN;
	}
	if (b->magic != MV_BULLETIN_MAGIC) {
		munmap(b, MV_PAGE_SIZE);
		close(fd);
		return -EPROTO;
	}
	/* The previous bulletin, if any, is left mapped (see disconnect_locked): one page per broker
	 * restart, bounded by how often brokers die. */
	atomic_store_explicit(&C.bulletin, b, memory_order_release);
	/* the generation changes before the descriptor does, for mvc_epoch's readers */
	__atomic_store_n(&C.gen, C.gen + 1, __ATOMIC_RELEASE);
	__atomic_store_n(&C.pid, getpid(), __ATOMIC_RELEASE);
	__atomic_store_n(&C.fd, fd, __ATOMIC_RELEASE);
	for (unsigned i = 0; i < C.n_on_connect && C.fd >= 0; i++)
		C.on_connect[i]();
	return C.fd >= 0 ? 0 : -ENOTCONN; /* a hook's exchange may have found it broken */
}

static bool broken(int r)
{
	return r == -EPIPE || r == -ECONNRESET || r == -EPROTO || r == -ENOTCONN;
}

static int exchange_locked(uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep, int *rep_fd)
{
	int r = mvc_exchange(C.fd, &C.seq, type, payload, len, fd, rep, rep_fd, C.deadline_ns, &C.abandoned);

	/* A timeout keeps the connection (the answer is dropped when it comes); only a broken stream or
	 * a gone broker loses it. */
	if (broken(r))
		disconnect_locked();
	return r;
}

static int request_locked(uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep, int *rep_fd)
{
	int r = connect_with(true, true);

	if (r < 0)
		return r;
	r = exchange_locked(type, payload, len, fd, rep, rep_fd);
	if (r == -EPIPE || r == -ECONNRESET) {
		/* The broker went away between requests: one fresh attempt, within the same bound. */
		r = connect_with(true, true);
		if (r == 0)
			r = exchange_locked(type, payload, len, fd, rep, rep_fd);
	}
	return r;
}

static int request_within(int timeout_ms, uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep,
			  int *rep_fd)
{
	struct mvw_msg local;
	int r = conn_lock_until(deadline_in(timeout_ms));

	if (r < 0)
		return r;
	r = request_locked(type, payload, len, fd, rep ? rep : &local, rep_fd);
	conn_unlock();
	return r;
}

int mvc_request(uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep, int *rep_fd)
{
	return request_within(mvc_timeout_ms(false), type, payload, len, fd, rep, rep_fd);
}

int mvc_request_admin(uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep, int *rep_fd)
{
	return request_within(mvc_timeout_ms(true), type, payload, len, fd, rep, rep_fd);
}

/* Constructors run before main: a broker that does not answer within the bound is left for the first
 * real request, and a second constructor does not try again what the first just found silent. One is
 * started if none runs (unless MEMVISOR_AUTOSTART=0): a Xen program may talk to the xenstore before it
 * calls anything of ours. */
static int request_early(uint8_t type, const void *payload, size_t len, struct mvw_msg *rep)
{
	int r = conn_lock_until(deadline_in(mvc_timeout_ms(false)));

	if (r < 0)
		return r;
	r = connect_with(false, true);
	if (r == 0)
		r = exchange_locked(type, payload, len, -1, rep, NULL);
	conn_unlock();
	return r;
}

int mvc_request_early(uint8_t type)
{
	struct mvw_msg rep;
	return request_early(type, NULL, 0, &rep);
}

/* ---- the Xen libraries: which domain this process is ---- */

static bool unanswered(int r)
{
	return r == -ETIMEDOUT || r == -EAGAIN || r == -ENOTCONN || r == -EPIPE || r == -ECONNRESET;
}

/* MEMVISOR_XEN_DOMID (and MEMVISOR_XEN_NAME) choose the domain. Once it is ours they leave the
 * environment, so that a program this one starts is a domain of its own, as a fork child is. */
static int domain_claim(bool early)
{
	const char *id = getenv("MEMVISOR_XEN_DOMID"), *name = getenv("MEMVISOR_XEN_NAME");
	struct mvw_req_domain_claim req = { 0 };
	struct mvw_msg rep;
	char *end;

	errno = 0;
	unsigned long v = strtoul(id, &end, 10);
	if (errno || end == id || *end || id[0] == '-' || v < MV_DOMID_FIRST || v > MV_DOMID_LAST)
		return XD.error = -EINVAL;
	if (name && strlen(name) >= sizeof(req.name))
		return XD.error = -EINVAL;
	req.domid = (uint32_t)v;
	if (name)
		memcpy(req.name, name, strlen(name));
	int r = early ? request_early(MV_MSG_DOMAIN_CLAIM, &req, sizeof(req), &rep)
		      : mvc_request(MV_MSG_DOMAIN_CLAIM, &req, sizeof(req), -1, &rep, NULL);
	XD.claim_pending = unanswered(r);
	if (XD.claim_pending)
		return r;
	XD.error = r < 0 ? r : 0;
	if (r == 0) {
		unsetenv("MEMVISOR_XEN_DOMID");
		unsetenv("MEMVISOR_XEN_NAME");
	}
	return r;
}

void mvc_domain_init(void)
{
	if (XD.wanted)
		return;
	XD.wanted = true;
	const char *id = getenv("MEMVISOR_XEN_DOMID");
	if (id && *id)
		(void)domain_claim(true);
	else
		(void)mvc_request_early(MV_MSG_DOMAIN);
	/* from now on a fork child is a domain at once (the handler is in place: the request took the lock) */
	pthread_once(&atfork_once, register_atfork);
}

int mvc_domain_check(void)
{
	if (XD.claim_pending) {
		int r = domain_claim(false);
		if (unanswered(r))
			return r;
	}
	return XD.error;
}

/* ---- for facilities that keep state with the broker (regions re-attach on reconnect) ---- */

void mvc_on_connect(void (*fn)(void))
{
	/* no deadline: registration waits for whoever has the connection, once per facility */
	while (conn_lock_until(UINT64_MAX) < 0)
		;
	for (unsigned i = 0; i < C.n_on_connect; i++)
		if (C.on_connect[i] == fn)
			goto out;
	if (C.n_on_connect < MV_ARRAY_SIZE(C.on_connect))
		C.on_connect[C.n_on_connect++] = fn;
out:
	conn_unlock();
}

void mvc_on_release(void (*fn)(void))
{
	atomic_store_explicit(&C.on_release, fn, memory_order_release);
}

int mvc_lock(void)
{
	return conn_lock_until(deadline_in(mvc_timeout_ms(false)));
}

bool mvc_trylock(void)
{
	return conn_trylock();
}

void mvc_unlock(void)
{
	conn_unlock();
}

int mvc_connect_locked(bool retry_now, bool autostart)
{
	return connect_with(retry_now, autostart);
}

/* The socket is open and this process's: what exchanges and sends need. Whether it is still the broker
 * the program names is mvc_connected_locked's question, asked once per decision, not per message. */
static bool conn_open(void)
{
	return C.fd >= 0 && C.pid == getpid();
}

bool mvc_connected_locked(void)
{
	char dir[sizeof(C.dir)];

	/* a connection to a broker the program no longer names is no connection */
	if (C.fd < 0 || C.pid != getpid() || mvu_runtime_dir_name(dir, sizeof(dir)) < 0)
		return false;
	return strcmp(dir, C.dir) == 0;
}

uint64_t mvc_generation_locked(void)
{
	return C.gen;
}

uint64_t mvc_epoch(void)
{
	int fd = __atomic_load_n(&C.fd, __ATOMIC_ACQUIRE);
	uint64_t gen = __atomic_load_n(&C.gen, __ATOMIC_ACQUIRE);

	if (fd < 0 || __atomic_load_n(&C.pid, __ATOMIC_ACQUIRE) != getpid())
		return 0;
	/* no events asked: only a hang-up or an error (the broker died, the descriptor went) is reported */
	struct pollfd p = { .fd = fd };
	if (poll(&p, 1, 0) != 0)
		return 0;
	return __atomic_load_n(&C.fd, __ATOMIC_ACQUIRE) == fd && __atomic_load_n(&C.gen, __ATOMIC_ACQUIRE) == gen ? gen
														  : 0;
}

int mvc_exchange_locked(uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep, int *rep_fd)
{
	struct mvw_msg local;

	if (!conn_open())
		return -ENOTCONN;
	return exchange_locked(type, payload, len, fd, rep ? rep : &local, rep_fd);
}

int mvc_exchange_fds_locked(uint8_t type, const void *payload, size_t len, const int *fds, unsigned nfds)
{
	return mvc_exchange_fds_rep_locked(type, payload, len, fds, nfds, NULL);
}

int mvc_exchange_fds_rep_locked(uint8_t type, const void *payload, size_t len, const int *fds, unsigned nfds,
				struct mvw_msg *rep)
{
	struct mvw_msg local;
	int e;

	if (!conn_open())
		return -ENOTCONN;
	e = exchange(C.fd, &C.seq, type, payload, len, fds, nfds, rep ? rep : &local, NULL, C.deadline_ns,
		     &C.abandoned);
	if (broken(e))
		disconnect_locked();
	return e;
}

/* One-way message: never waits. Dropped if the socket is full or gone. */
void mvc_send_oneway_locked(uint8_t type, const void *payload, size_t len, int fd)
{
	mvc_send_oneway_fds_locked(type, payload, len, &fd, fd >= 0 ? 1 : 0);
}

void mvc_send_oneway_fds_locked(uint8_t type, const void *payload, size_t len, const int *fds, unsigned nfds)
{
	unsigned char buf[MV_WIRE_MAX_PACKET];
	size_t n = mvw_encode(buf, type, 0, 0, payload, len);

	if (conn_open() && mvu_send_fds(C.fd, buf, n, fds, nfds, MSG_DONTWAIT) == -EPIPE)
		disconnect_locked();
}

void mvc_check_alive_locked(void)
{
	unsigned char buf[MV_WIRE_MAX_PACKET];

	while (conn_open()) {
		int fds[MV_MAX_FDS];
		unsigned nfds = MV_MAX_FDS;
		struct mvw_msg m;
		ssize_t n = mvu_recv_fds(C.fd, buf, sizeof(buf), fds, &nfds, MSG_DONTWAIT);

		if (n == -EAGAIN)
			return;
		/* late answers to abandoned requests are dropped; a hang-up, or data we never asked for,
		 * ends the connection */
		bool stale = n > 0 && mvw_decode(buf, (size_t)n, nfds, 1, &m) == 0 && take_stale(&C.abandoned, &m, 0);
		if (n > 0)
			mvu_close_fds(fds, nfds);
		if (!stale)
			disconnect_locked();
	}
}

struct mvw_bulletin *mvc_bulletin(void)
{
	return atomic_load_explicit(&C.bulletin, memory_order_acquire);
}
