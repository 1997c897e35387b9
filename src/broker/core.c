/* SPDX-License-Identifier: MIT */
/* The broker core (core.h): the loop, clients, routing, registries. Nothing facility-specific. */
#define _GNU_SOURCE
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 4096
#define MAX_SERVICES 8
#define DEFAULT_CLIENTS_PER_PID 64
/* Refused connections waiting for their first request, to be told why (see on_refused). */
#define MAX_REFUSED 16

enum source_kind { SRC_LISTEN = 1, SRC_CLIENT, SRC_TIMER, SRC_SIGNAL, SRC_IO, SRC_REMOVED };

/* What an epoll entry points at: the kind comes first in every one of them. */
struct source {
	enum source_kind kind;
	int fd;
	mvb_io_fn fn;
	void *ud;
	struct source *next;
};

struct mvb_client {
	enum source_kind kind; /* SRC_CLIENT: epoll points here */
	int fd;
	pid_t pid;
	uid_t uid;
	bool doomed; /* a reply did not fit its socket: dropped once the current message is handled */
	int refused; /* past a limit: its first request is answered with this (-EUSERS), then it goes */
	uintptr_t slots[MAX_SERVICES];
	struct mvb_client *prev, *next;
};

static struct {
	int epoll_fd, bulletin_fd;
	struct source listen, timer, signal;
	struct source *io;
	struct source *removed; /* freed after the batch of events that may still point at them */
	uid_t uid;
	pid_t pid;
	struct mvw_bulletin *bulletin;
	struct mvb_client *clients;
	uint64_t nclients, nrefused, refused_total;
	uint32_t per_pid;
	const struct mvb_service *services[MAX_SERVICES];
	int nservices;
	mvb_handler_fn handlers[MV_MSG_TYPE_MAX];
	uint64_t start_ns;
	uint64_t exit_idle_ms, idle_since_ns;
	bool idle_exit_due;
	bool accept_paused; /* out of descriptors: the listener waits for one to come free */
} K = { .epoll_fd = -1, .bulletin_fd = -1 };

void mvb_log(const char *fmt, ...)
{
	va_list ap;
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	fprintf(stderr, "memvisord[%d] %lld.%03ld: ", (int)getpid(), (long long)ts.tv_sec, ts.tv_nsec / 1000000);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

int mvb_service_register(const struct mvb_service *s)
{
	if (K.nservices == MAX_SERVICES)
		abort(); /* a build-time constant: more services than slots is a programming error */
	K.services[K.nservices] = s;
	return K.nservices++;
}

void mvb_handler_register(uint8_t type, mvb_handler_fn fn)
{
	if (type >= MV_MSG_TYPE_MAX || K.handlers[type])
		abort(); /* two facilities claiming one message, or one outside the protocol table */
	K.handlers[type] = fn;
}

pid_t mvb_client_pid(const struct mvb_client *c)
{
	return c->pid;
}

uid_t mvb_client_uid(const struct mvb_client *c)
{
	return c->uid;
}

uintptr_t *mvb_client_slot(struct mvb_client *c, int service)
{
	return &c->slots[service];
}

/* Refused connections are no service's business. */
static struct mvb_client *skip_refused(struct mvb_client *c)
{
	while (c && c->refused)
		c = c->next;
	return c;
}

struct mvb_client *mvb_client_first(void)
{
	return skip_refused(K.clients);
}

struct mvb_client *mvb_client_next(struct mvb_client *c)
{
	return skip_refused(c->next);
}

struct mvw_bulletin *mvb_bulletin(void)
{
	return K.bulletin;
}

uid_t mvb_owner_uid(void)
{
	return K.uid;
}

pid_t mvb_pid(void)
{
	return K.pid;
}

static int epoll_add(int fd, uint32_t events, void *ptr)
{
	struct epoll_event ev = { .events = events, .data.ptr = ptr };
	return epoll_ctl(K.epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int mvb_io_add(int fd, uint32_t events, mvb_io_fn fn, void *ud)
{
	struct source *s = calloc(1, sizeof(*s));
	int r;

	if (!s)
		return -ENOMEM;
	*s = (struct source){ .kind = SRC_IO, .fd = fd, .fn = fn, .ud = ud, .next = K.io };
	r = epoll_add(fd, events, s);
	if (r < 0) {
		free(s);
		return r;
	}
	K.io = s;
	return 0;
}

int mvb_io_modify(int fd, uint32_t events)
{
	for (struct source *s = K.io; s; s = s->next)
		if (s->fd == fd) {
			struct epoll_event ev = { .events = events, .data.ptr = s };
			return epoll_ctl(K.epoll_fd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
		}
	return -ENOENT;
}

void mvb_io_remove(int fd)
{
	for (struct source **p = &K.io; *p; p = &(*p)->next)
		if ((*p)->fd == fd) {
			struct source *s = *p;
			epoll_ctl(K.epoll_fd, EPOLL_CTL_DEL, fd, NULL);
			*p = s->next;
			s->kind = SRC_REMOVED;
			s->next = K.removed;
			K.removed = s;
			return;
		}
}

int mvb_reply_fds(struct mvb_client *c, const struct mvw_msg *req, int32_t status, const void *payload, size_t len,
		  const int *fds, unsigned nfds)
{
	unsigned char buf[MV_WIRE_MAX_PACKET];
	size_t n;
	ssize_t r;

	if (status < 0) {
		len = 0;
		nfds = 0;
	}
	n = mvw_encode(buf, req->hdr.type | MV_MSG_REPLY, req->hdr.seq, status, payload, len);
	r = mvu_send_fds(c->fd, buf, n, fds, nfds, MSG_DONTWAIT);
	/* A client that does not read its replies loses its connection, never stalls the broker: a reply
	 * it missed would leave its requests and our answers out of step. */
	if (r < 0) {
		c->doomed = true;
		if (r == -EAGAIN)
			mvb_log("dropping client pid %d: it does not read its replies", (int)c->pid);
	}
	return r < 0 ? (int)r : 0;
}

int mvb_reply(struct mvb_client *c, const struct mvw_msg *req, int32_t status, const void *payload, size_t len, int fd)
{
	return mvb_reply_fds(c, req, status, payload, len, &fd, fd >= 0 ? 1 : 0);
}

static void resume_accept(void)
{
	if (!K.accept_paused)
		return;
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &K.listen };
	epoll_ctl(K.epoll_fd, EPOLL_CTL_MOD, K.listen.fd, &ev);
	K.accept_paused = false;
}

static void client_drop(struct mvb_client *c)
{
	for (int i = 0; i < K.nservices && !c->refused; i++)
		if (K.services[i]->client_gone)
			K.services[i]->client_gone(c);
	epoll_ctl(K.epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		K.clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->refused)
		K.nrefused--;
	else
		K.nclients--;
	free(c);
	resume_accept();
}

/* The core's own messages: the handshake and the status, whose sections come from the services. */
static void on_hello(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	struct mvw_rep_hello rep = { .version = MV_WIRE_VERSION, .broker_pid = K.pid, .page_size = MV_PAGE_SIZE };

	if (m->u.hello.version != MV_WIRE_VERSION) {
		mvb_reply(c, m, -EPROTONOSUPPORT, NULL, 0, -1);
		return;
	}
	mvb_reply(c, m, 0, &rep, sizeof(rep), K.bulletin_fd);
}

uint64_t mvb_uptime_ns(void)
{
	return mvu_now_ns() - K.start_ns;
}

uint64_t mvb_client_count(void)
{
	return K.nclients;
}

void mvb_services_stats(struct mvb_stats *st)
{
	for (int i = 0; i < K.nservices; i++)
		if (K.services[i]->stats)
			K.services[i]->stats(st);
}

static void dispatch(struct mvb_client *c, const struct mvw_msg *m, const int *fds)
{
	mvb_handler_fn fn = m->hdr.type < MV_MSG_TYPE_MAX ? K.handlers[m->hdr.type] : NULL;

	if (fn)
		fn(c, m, fds);
	else
		mvb_reply(c, m, -EOPNOTSUPP, NULL, 0, -1);
}

/* An answer to bytes that are no request (no header to take a type or sequence from). */
static void reply_malformed(struct mvb_client *c, int err)
{
	struct mvw_msg fake = { 0 };
	mvb_reply(c, &fake, err, NULL, 0, -1);
}

static void on_client(struct mvb_client *c, uint32_t events)
{
	unsigned char buf[MV_WIRE_MAX_PACKET + 1];
	int fds[MV_MAX_FDS];

	for (int budget = 0; budget < 64; budget++) {
		unsigned nfds = MV_MAX_FDS;
		struct mvw_msg m;
		ssize_t n = mvu_recv_fds(c->fd, buf, sizeof(buf), fds, &nfds, MSG_DONTWAIT);
		int r;

		if (n == -EAGAIN)
			break;
		if (n == -EMSGSIZE) {
			/* Oversized packet or too many fds: refuse it, keep the connection. */
			reply_malformed(c, -EMSGSIZE);
		} else if (n < 0 || (n == 0 && (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)))) {
			client_drop(c);
			return;
		} else if (n == 0) {
			/* On SOCK_SEQPACKET an empty packet reads as 0 bytes, like the end of the stream; the
			 * peer has not hung up, so it is a packet, and a malformed one. */
			reply_malformed(c, -EPROTO);
		} else if ((r = mvw_decode(buf, (size_t)n, nfds, 0, &m)) < 0) {
			if ((size_t)n >= sizeof(m.hdr)) {
				memcpy(&m.hdr, buf, sizeof(m.hdr));
				m.hdr.type &= (uint8_t)~MV_MSG_REPLY;
				if (m.hdr.type == MV_MSG_KICK)
					m.hdr.type = 0; /* KICK never gets a reply; keep error replies unambiguous */
				mvb_reply(c, &m, r, NULL, 0, -1);
			} else {
				reply_malformed(c, r); /* a truncated header: answered as no request */
			}
		} else if (c->refused) {
			mvb_reply(c, &m, c->refused, NULL, 0, -1);
			c->doomed = true;
		} else {
			dispatch(c, &m, fds);
		}
		mvu_close_fds(fds, nfds);
		if (c->doomed) {
			client_drop(c);
			return;
		}
	}
	if (events & (EPOLLHUP | EPOLLERR)) {
		/* Drain what is left first: a client may send and exit. */
		unsigned nfds = MV_MAX_FDS;
		ssize_t n = mvu_recv_fds(c->fd, buf, sizeof(buf), fds, &nfds, MSG_DONTWAIT | MSG_PEEK);
		if (n >= 0)
			mvu_close_fds(fds, nfds); /* a peek installs the descriptors too */
		if (n == -EAGAIN || events & EPOLLERR)
			client_drop(c);
	}
}

static uint32_t clients_of(pid_t pid)
{
	uint32_t n = 0;
	for (struct mvb_client *c = K.clients; c; c = c->next)
		n += !c->refused && c->pid == pid;
	return n;
}

uint64_t mvb_refused_count(void)
{
	return K.refused_total;
}

static void on_accept(void)
{
	for (;;) {
		struct ucred cred;
		socklen_t cl = sizeof(cred);
		struct mvb_client *c;
		int fd = accept4(K.listen.fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
			/* The connection stays queued; a level-triggered listener would wake us for it again at
			 * once, forever. Stop listening until a descriptor comes free (a client leaves, or the
			 * next tick). */
			static uint64_t logged_ns;
			if (!logged_ns || mvu_now_ns() - logged_ns > 60000000000ull) {
				mvb_log("out of file descriptors (%s): not accepting until some are free",
					strerror(errno));
				logged_ns = mvu_now_ns();
			}
			struct epoll_event ev = { .events = 0, .data.ptr = &K.listen };
			epoll_ctl(K.epoll_fd, EPOLL_CTL_MOD, K.listen.fd, &ev);
			K.accept_paused = true;
			return;
		}
		if (fd < 0)
			return;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 || (cred.uid != K.uid && cred.uid != 0)) {
			mvb_log("refused connection from uid %u", (unsigned)cred.uid);
			close(fd);
			continue;
		}
		if (!(c = calloc(1, sizeof(*c)))) {
			close(fd);
			continue;
		}
		c->kind = SRC_CLIENT;
		c->fd = fd;
		c->pid = cred.pid;
		c->uid = cred.uid;
		/* One process may not fill the table: past its share (or with the table full) a connection
		 * is answered EUSERS at its first request and closed. */
		if (K.nclients >= MAX_CLIENTS || clients_of(cred.pid) >= K.per_pid) {
			if (!(K.refused_total++ % 1024))
				mvb_log("refusing pid %d: %s (%llu refused so far)", (int)cred.pid,
					K.nclients >= MAX_CLIENTS ? "no connection left" : "too many connections",
					(unsigned long long)K.refused_total);
			c->refused = -EUSERS;
			if (K.nrefused >= MAX_REFUSED) {
				close(fd);
				free(c);
				continue;
			}
		}
		if (epoll_add(fd, EPOLLIN | EPOLLRDHUP, c) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = K.clients;
		if (K.clients)
			K.clients->prev = c;
		K.clients = c;
		if (c->refused)
			K.nrefused++;
		else
			K.nclients++;
	}
}

/* An auto-started broker is adopted by whoever reaps orphans; a child subreaper that waits for all its
 * children would wait for it forever. So it leaves once it has been idle for a while. */
static void check_idle(void)
{
	bool busy = K.nclients > 0;
	uint64_t now = mvu_now_ns();

	for (int i = 0; i < K.nservices && !busy; i++)
		busy = K.services[i]->busy && K.services[i]->busy();
	if (!K.exit_idle_ms || busy) {
		K.idle_since_ns = 0;
		return;
	}
	if (!K.idle_since_ns)
		K.idle_since_ns = now;
	else if (now - K.idle_since_ns >= K.exit_idle_ms * 1000000ull)
		K.idle_exit_due = true;
}

/* Right before leaving: a client may have connected in the same batch as the timer, or be waiting in the
 * backlog. Take whoever is there; if anyone came, stay. */
static bool still_idle(void)
{
	on_accept();
	bool busy = K.nclients > 0;
	for (int i = 0; i < K.nservices && !busy; i++)
		busy = K.services[i]->busy && K.services[i]->busy();
	if (busy)
		K.idle_since_ns = 0;
	return !busy;
}

static void on_timer(void)
{
	uint64_t expirations;

	if (read(K.timer.fd, &expirations, sizeof(expirations)) < 0)
		return;
	resume_accept(); /* descriptors may have come free elsewhere (a region let go) */
	check_idle();
	for (int i = 0; i < K.nservices; i++)
		if (K.services[i]->tick)
			K.services[i]->tick();
}

int mvb_core_init(const struct mvb_core_config *cfg)
{
	sigset_t mask;

	K.uid = getuid();
	K.pid = getpid();
	K.start_ns = mvu_now_ns();
	K.exit_idle_ms = cfg->exit_idle_ms;
	K.per_pid = cfg->clients_per_pid ? cfg->clients_per_pid : DEFAULT_CLIENTS_PER_PID;
	K.listen = (struct source){ .kind = SRC_LISTEN, .fd = cfg->listen_fd };

	K.bulletin_fd = memfd_create("memvisor-bulletin", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (K.bulletin_fd < 0 || ftruncate(K.bulletin_fd, MV_PAGE_SIZE) < 0 ||
	    fcntl(K.bulletin_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		return -errno;
	K.bulletin = mmap(NULL, MV_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, K.bulletin_fd, 0);
	if (K.bulletin == MAP_FAILED)
		return -errno;
	K.bulletin->magic = MV_BULLETIN_MAGIC;
	K.bulletin->broker_pid = K.pid;

	K.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	K.timer.fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	K.timer.kind = SRC_TIMER;
	if (K.epoll_fd < 0 || K.timer.fd < 0)
		return -errno;
	/* The idle check rides on the upkeep timer: make it tick often enough for a short grace. */
	uint64_t tick_ms = cfg->tick_ms;
	if (K.exit_idle_ms && K.exit_idle_ms / 4 < tick_ms)
		tick_ms = K.exit_idle_ms / 4 > 10 ? K.exit_idle_ms / 4 : 10;
	struct itimerspec its = {
		.it_interval = { .tv_sec = (time_t)(tick_ms / 1000), .tv_nsec = (long)(tick_ms % 1000) * 1000000 },
	};
	its.it_value = its.it_interval;
	timerfd_settime(K.timer.fd, 0, &its, NULL);

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	K.signal.fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	K.signal.kind = SRC_SIGNAL;
	if (K.signal.fd < 0)
		return -errno;
	if (epoll_add(K.listen.fd, EPOLLIN, &K.listen) < 0 || epoll_add(K.timer.fd, EPOLLIN, &K.timer) < 0 ||
	    epoll_add(K.signal.fd, EPOLLIN, &K.signal) < 0)
		return -errno;
	mvb_handler_register(MV_MSG_HELLO, on_hello);
	mvb_status_init();
	return 0;
}

int mvb_core_run(void)
{
	struct epoll_event evs[64];
	int ret = 0;

	for (;;) {
		int n = epoll_wait(K.epoll_fd, evs, 64, -1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = -errno;
			break;
		}
		for (int i = 0; i < n; i++) {
			struct source *s = evs[i].data.ptr;

			switch (s->kind) {
			case SRC_LISTEN: on_accept(); break;
			case SRC_TIMER: on_timer(); break;
			case SRC_SIGNAL: {
				struct signalfd_siginfo si;
				if (read(K.signal.fd, &si, sizeof(si)) == sizeof(si)) {
					mvb_log("exiting on signal %u", si.ssi_signo);
					goto out;
				}
				break;
			}
			case SRC_CLIENT: on_client((struct mvb_client *)s, evs[i].events); break;
			case SRC_IO: s->fn(s->ud, evs[i].events); break;
			case SRC_REMOVED: break;
			}
		}
		while (K.removed) {
			struct source *s = K.removed;
			K.removed = s->next;
			free(s);
		}
		if (K.idle_exit_due && still_idle()) {
			mvb_log("exiting: idle for %llu ms", (unsigned long long)K.exit_idle_ms);
			break;
		}
		K.idle_exit_due = false;
	}
out:
	while (K.removed) {
		struct source *s = K.removed;
		K.removed = s->next;
		free(s);
	}
	for (int i = K.nservices - 1; i >= 0; i--)
		if (K.services[i]->fini)
			K.services[i]->fini();
	return ret;
}
