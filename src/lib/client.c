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

#define REQUEST_TIMEOUT_MS 5000
#define RECONNECT_INTERVAL_NS (1000ull * 1000 * 1000)

extern char **environ;

/* The connection carries one request at a time. Its lock hands the connection out in arrival order:
 * with a plain mutex, a thread that asks back to back (a purge loop) re-takes it before a woken
 * waiter runs, and a pin waiting to restore its pages could starve for seconds. */
struct fifo_lock {
	pthread_mutex_t m;
	pthread_cond_t turn;
	uint64_t next, serving;
};

static struct {
	struct fifo_lock lock;
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
	.lock = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 },
	.fd = -1,
};

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void);

static void conn_lock(void)
{
	/* before the lock is ever taken: a fork while it is held must find the handler in place */
	pthread_once(&atfork_once, register_atfork);
	pthread_mutex_lock(&C.lock.m);
	uint64_t ticket = C.lock.next++;
	while (ticket != C.lock.serving)
		pthread_cond_wait(&C.lock.turn, &C.lock.m);
	pthread_mutex_unlock(&C.lock.m);
}

/* Takes the connection only if nobody has it or waits for it. */
static bool conn_trylock(void)
{
	bool ok;

	pthread_once(&atfork_once, register_atfork);
	pthread_mutex_lock(&C.lock.m);
	ok = C.lock.next == C.lock.serving;
	if (ok)
		C.lock.next++;
	pthread_mutex_unlock(&C.lock.m);
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
	C.lock.serving++;
	pthread_cond_broadcast(&C.lock.turn);
	pthread_mutex_unlock(&C.lock.m);
}

static void atfork_child(void)
{
	/* The socket and the broker's record of us belong to the parent. Drop our copy of the socket;
	 * the child reconnects and re-attaches its inherited regions on its next broker operation. */
	pthread_mutex_init(&C.lock.m, NULL);
	pthread_cond_init(&C.lock.turn, NULL);
	C.lock.next = C.lock.serving = 0;
	if (C.fd >= 0)
		close(C.fd);
	C.fd = -1;
	C.last_attempt_ns = 0;
}

static void register_atfork(void)
{
	pthread_atfork(NULL, NULL, atfork_child);
}

static void disconnect_locked(void)
{
	if (C.fd >= 0)
		close(C.fd);
	C.fd = -1;
	/* The bulletin mapping stays: pointers to it may be in use by pin/unpin in other threads, and
	 * a stale bulletin only receives hints nobody reads. It is replaced on reconnect. */
}

int mvc_connect_socket(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

static int exchange(int sock, uint32_t *seq, uint8_t type, const void *payload, size_t len, const int *sfds,
		    unsigned nsfds, struct mvw_msg *rep, int *rep_fd, int timeout_ms)
{
	unsigned char buf[MV_WIRE_MAX_PACKET];
	uint32_t myseq = ++*seq;
	size_t n = mvw_encode(buf, type, myseq, 0, payload, len);
	ssize_t r;
	uint64_t deadline = mvu_now_ns() + (uint64_t)timeout_ms * 1000000ull;

	if (rep_fd)
		*rep_fd = -1;
	r = mvu_send_fds(sock, buf, n, sfds, nsfds, 0);
	if (r < 0)
		return (int)r;
	for (;;) {
		int fds[MV_MAX_FDS];
		unsigned nfds = MV_MAX_FDS;
		uint64_t now = mvu_now_ns();
		struct pollfd p = { .fd = sock, .events = POLLIN };

		if (now >= deadline)
			return -ETIMEDOUT;
		r = poll(&p, 1, (int)((deadline - now) / 1000000ull) + 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		r = mvu_recv_fds(sock, buf, sizeof(buf), fds, &nfds, MSG_DONTWAIT);
		if (r == -EAGAIN)
			continue;
		if (r < 0)
			return (int)r;
		if (r == 0)
			return -ECONNRESET;
		r = mvw_decode(buf, (size_t)r, nfds, 1, rep);
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
}

int mvc_exchange(int sock, uint32_t *seq, uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep,
		 int *rep_fd, int timeout_ms)
{
	return exchange(sock, seq, type, payload, len, &fd, fd >= 0 ? 1 : 0, rep, rep_fd, timeout_ms);
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

/* Constructors run before main: a broker that does not answer at once is left for the first real
 * request. One is started if none runs (unless MEMVISOR_AUTOSTART=0): a Xen program may talk to the
 * xenstore before it calls anything of ours. */
#define EARLY_TIMEOUT_MS 50

static int connect_with(bool force, bool autostart, int timeout_ms)
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
		fd = r < 0 ? r : mvc_connect_socket(path);
		if (fd < 0 && autostart && autostart_enabled()) {
			if (mvc_spawn_broker() == 0) {
				r = mvu_runtime_path(path, sizeof(path), "broker.sock", 0);
				/* The winner of a start race may still be binding: retry briefly. */
				for (int i = 0; r == 0 && i < 200; i++) {
					fd = mvc_connect_socket(path);
					if (fd >= 0 || (fd != -ENOENT && fd != -ECONNREFUSED))
						break;
					usleep(10000);
				}
			}
		}
		if (fd < 0)
			return -ENOTCONN;

		r = mvc_exchange(fd, &C.seq, MV_MSG_HELLO, &hello, sizeof(hello), -1, &rep, &bfd, timeout_ms);
		if (r < 0) {
			close(fd);
			if ((r == -ECONNRESET || r == -EPIPE) && attempt == 0) {
				usleep(20000); /* let it finish leaving: its lock and socket go with it */
				continue;
			}
			return r == -ETIMEDOUT ? r : -ENOTCONN;
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
	C.fd = fd;
	C.pid = getpid();
	C.gen++;
	for (unsigned i = 0; i < C.n_on_connect && C.fd >= 0; i++)
		C.on_connect[i]();
	return C.fd >= 0 ? 0 : -ENOTCONN; /* a hook's exchange may have found it broken */
}

static int connect_locked(bool force)
{
	return connect_with(force, true, REQUEST_TIMEOUT_MS);
}

static int request_locked(uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep, int *rep_fd)
{
	int r = connect_locked(true);

	if (r < 0)
		return r;
	r = mvc_exchange(C.fd, &C.seq, type, payload, len, fd, rep, rep_fd, REQUEST_TIMEOUT_MS);
	if (r == -ETIMEDOUT || r == -EPIPE || r == -ECONNRESET || r == -EPROTO || r == -ENOTCONN) {
		/* Never leave the stream out of step: a late reply would be read as the next one's. */
		disconnect_locked();
		if (r != -ETIMEDOUT && r != -EPROTO) {
			/* The broker went away between requests: one fresh attempt. */
			r = connect_locked(true);
			if (r == 0)
				r = mvc_exchange(C.fd, &C.seq, type, payload, len, fd, rep, rep_fd, REQUEST_TIMEOUT_MS);
			if (r == -ETIMEDOUT || r == -EPIPE || r == -ECONNRESET || r == -EPROTO)
				disconnect_locked();
		}
	}
	return r;
}

int mvc_request(uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep, int *rep_fd)
{
	struct mvw_msg local;
	int r;

	conn_lock();
	r = request_locked(type, payload, len, fd, rep ? rep : &local, rep_fd);
	conn_unlock();
	return r;
}

int mvc_request_early(uint8_t type)
{
	struct mvw_msg rep;
	int r;

	conn_lock();
	/* On a connection the process already uses, a slow answer must not cost it the connection (and its
	 * domain with it): the short wait is only for one made here. */
	int timeout = mvc_connected_locked() ? REQUEST_TIMEOUT_MS : EARLY_TIMEOUT_MS;
	r = connect_with(true, true, EARLY_TIMEOUT_MS);
	if (r == 0) {
		r = mvc_exchange(C.fd, &C.seq, type, NULL, 0, -1, &rep, NULL, timeout);
		if (r == -ETIMEDOUT || r == -EPIPE || r == -ECONNRESET || r == -EPROTO)
			disconnect_locked();
	}
	conn_unlock();
	return r;
}

/* ---- for facilities that keep state with the broker (regions re-attach on reconnect) ---- */

void mvc_on_connect(void (*fn)(void))
{
	conn_lock();
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

void mvc_lock(void)
{
	conn_lock();
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
	return connect_with(retry_now, autostart, REQUEST_TIMEOUT_MS);
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

int mvc_exchange_locked(uint8_t type, const void *payload, size_t len, int fd, struct mvw_msg *rep, int *rep_fd)
{
	struct mvw_msg local;
	int e;

	if (!conn_open())
		return -ENOTCONN;
	e = mvc_exchange(C.fd, &C.seq, type, payload, len, fd, rep ? rep : &local, rep_fd, REQUEST_TIMEOUT_MS);
	if (e == -ETIMEDOUT || e == -EPIPE || e == -ECONNRESET || e == -EPROTO)
		disconnect_locked(); /* never out of step */
	return e;
}

int mvc_exchange_fds_locked(uint8_t type, const void *payload, size_t len, const int *fds, unsigned nfds)
{
	struct mvw_msg rep;
	int e;

	if (!conn_open())
		return -ENOTCONN;
	e = exchange(C.fd, &C.seq, type, payload, len, fds, nfds, &rep, NULL, REQUEST_TIMEOUT_MS);
	if (e == -ETIMEDOUT || e == -EPIPE || e == -ECONNRESET || e == -EPROTO)
		disconnect_locked(); /* never out of step */
	return e;
}

/* One-way message: never waits. Dropped if the socket is full or gone. */
void mvc_send_oneway_locked(uint8_t type, const void *payload, size_t len, int fd)
{
	unsigned char buf[MV_WIRE_MAX_PACKET];
	size_t n = mvw_encode(buf, type, 0, 0, payload, len);

	if (conn_open() && mvu_send_fds(C.fd, buf, n, &fd, fd >= 0 ? 1 : 0, MSG_DONTWAIT) == -EPIPE)
		disconnect_locked();
}

void mvc_check_alive_locked(void)
{
	if (conn_open()) {
		struct pollfd p = { .fd = C.fd, .events = POLLIN };
		if (poll(&p, 1, 0) > 0)
			disconnect_locked(); /* hang-up, or data we never asked for */
	}
}

struct mvw_bulletin *mvc_bulletin(void)
{
	return atomic_load_explicit(&C.bulletin, memory_order_acquire);
}
