/* SPDX-License-Identifier: MIT */
/* memvisord: the per-user broker. It plays the kernel's part for ordinary processes: regions and their
 * purging, merge partitions, Xen domains with event channels and grant tables, and a xenstore. This
 * file takes the options, makes the runtime directory's sockets, daemonizes, and plugs each
 * facility's service into the core (core.h), which runs the one loop. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "core.h"
#include "merge/partitions_service.h"
#include "regions/regions_service.h"
#include "xen/xen_record.h"
#include "xen/xen_services.h"
#include "xenstore/xenstore_service.h"

static struct {
	char dir[256];
	char sock_path[300], xs_path[300], ts_path[300];
	bool foreground;
	uint64_t sweep_ms, exit_idle_ms;
	struct mvb_regions_config regions;
	struct mvb_xenstore_config xs;
	uint32_t clients_per_pid;
	int listen_fd, xs_listen_fd, ts_listen_fd, lock_fd;
	int nactivated; /* sockets systemd passed (sd_listen_fds), from SD_LISTEN_FDS_START */
	bool activated, xs_activated, ts_activated; /* they are systemd's to make and remove */
} M = {
	.sweep_ms = 1000,
	.regions = { .unpinned_budget = UINT64_MAX, .psi = true, .compress = true },
	.listen_fd = -1,
	.xs_listen_fd = -1,
	.ts_listen_fd = -1,
	.lock_fd = -1,
};

static int listen_on(const char *path, int type, int *out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	unlink(path); /* stale: we hold the lock, so no live broker owns it */
	fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 128) < 0) {
		int e = -errno;
		mvb_log("cannot listen on %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return e;
	}
	chmod(path, 0600);
	*out = fd;
	return 0;
}

/* Socket activation (systemd's memvisord.socket, or systemd-socket-activate): the SOCK_SEQPACKET socket
 * on <dir>/broker.sock is the broker's, a SOCK_STREAM one on <dir>/xenstored.sock the xenstore's. Any
 * other passed socket is a unit that does not match this broker's runtime directory: refused, since
 * clients would never find it. What was not passed, the broker binds itself. */
static int take_activated(void)
{
	int n = M.nactivated;

	if (n <= 0)
		return 0;
	for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; fd++) {
		if (sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, M.sock_path, 0) > 0 && M.listen_fd < 0)
			M.listen_fd = fd;
		else if (sd_is_socket_unix(fd, SOCK_STREAM, 1, M.xs_path, 0) > 0 && M.xs_listen_fd < 0) {
			M.xs_listen_fd = fd;
			M.xs_activated = true;
		} else if (sd_is_socket_unix(fd, SOCK_STREAM, 1, M.ts_path, 0) > 0 && M.ts_listen_fd < 0) {
			M.ts_listen_fd = fd;
			M.ts_activated = true;
		} else {
			mvb_log("socket activation: descriptor %d is not a listening socket on %s, %s or %s", fd,
				M.sock_path, M.xs_path, M.ts_path);
			return -EINVAL;
		}
		int fl = fcntl(fd, F_GETFL);
		if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
			return -errno;
	}
	M.activated = M.listen_fd >= 0; /* else only the xenstore's: the broker binds its own */
	return n;
}

/* The service manager hears how the broker is doing (nothing happens when none listens). */
static void notify_tick(void)
{
	sd_notifyf(0, "STATUS=serving %llu clients", (unsigned long long)mvb_client_count());
}

static void notify_fini(void)
{
	sd_notify(0, "STOPPING=1\nSTATUS=stopping");
}

static const struct mvb_service notify_service = {
	.name = "notify",
	.tick = notify_tick,
	.fini = notify_fini,
};

/* Detach once listening, so that whoever started us can connect as soon as we return. Everything that
 * is tied to the process (signalfd readiness, epoll, the bulletin's pid) is created after this. */
static int daemonize(void)
{
	char log_path[300];
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid > 0)
		_exit(0);
	setsid();
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	snprintf(log_path, sizeof(log_path), "%s/memvisord.log", M.dir);
	int log = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		close(null);
	}
	if (log >= 0) {
		dup2(log, 2);
		close(log);
	}
	return chdir("/") < 0 ? -errno : 0;
}

static int setup(int ready_fd)
{
	char check[256], lock_path[300];
	struct rlimit rl;
	int r;

	if (mkdir(M.dir, 0700) < 0 && errno != EEXIST) {
		mvb_log("cannot create %s: %s", M.dir, strerror(errno));
		return -errno;
	}
	setenv("MEMVISOR_RUNTIME_DIR", M.dir, 1);
	if ((r = mvu_runtime_dir(check, sizeof(check), 0)) < 0) {
		mvb_log("runtime directory %s must be ours and mode 0700: %s", M.dir, strerror(-r));
		return r;
	}
	snprintf(lock_path, sizeof(lock_path), "%s/broker.lock", M.dir);
	M.lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (M.lock_fd < 0)
		return -errno;
	if (flock(M.lock_fd, LOCK_EX | LOCK_NB) < 0)
		return -EALREADY;
	snprintf(M.sock_path, sizeof(M.sock_path), "%s/broker.sock", M.dir);
	snprintf(M.xs_path, sizeof(M.xs_path), "%s/xenstored.sock", M.dir);
	snprintf(M.ts_path, sizeof(M.ts_path), "%s/xenstored-toolstack.sock", M.dir);
	if ((r = take_activated()) < 0)
		return r;
	if ((M.listen_fd < 0 && (r = listen_on(M.sock_path, SOCK_SEQPACKET, &M.listen_fd)) < 0) ||
	    (M.xs_listen_fd < 0 && (r = listen_on(M.xs_path, SOCK_STREAM, &M.xs_listen_fd)) < 0) ||
	    (M.ts_listen_fd < 0 && (r = listen_on(M.ts_path, SOCK_STREAM, &M.ts_listen_fd)) < 0))
		return r;
	/* Activated, the broker has a supervisor that waits on it: it stays its child. */
	if (!M.foreground && !M.nactivated && (r = daemonize()) < 0)
		return r;
	/* The broker holds every region, grant and partition memfd of its user's processes. Dumpable, any
	 * process of the user could open them through /proc/<broker>/fd and bypass what the broker
	 * enforces (a read-only grant, a canonical page only the broker writes). */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		return -errno;

	/* Every held region costs a descriptor; take all we may. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (!M.regions.compressed_budget) {
		int64_t total = mvu_meminfo("MemTotal");
		M.regions.compressed_budget = total > 0 ? (uint64_t)total / 20 : (256ull << 20);
	}
	struct mvb_core_config core = { .listen_fd = M.listen_fd,
					.tick_ms = M.sweep_ms,
					.exit_idle_ms = M.exit_idle_ms,
					.clients_per_pid = M.clients_per_pid };
	if ((r = mvb_core_init(&core)) < 0)
		return r;
	/* The order is the order a client's end is seen in: its grants' unmap notifications go out
	 * through event channels before its domain, and so its channels, ends. */
	if ((r = mvb_gnttab_service_init()) < 0 || (r = mvb_domains_service_init()) < 0 ||
	    (r = mvb_evtchn_service_init()) < 0 || (r = mvb_partitions_service_init()) < 0 ||
	    (r = mvb_regions_service_init(&M.regions)) < 0 ||
	    (r = mvb_xenstore_service_init(M.xs_listen_fd, M.ts_listen_fd, &M.xs)) < 0 ||
	    (r = mvb_service_register(&notify_service)) < 0)
		return r;
	/* What a broker before this one recorded of the Xen state of processes that still live. A record
	 * it cannot read is no reason not to start: it starts without it. */
	if ((r = mvb_record_load(M.dir)) < 0)
		mvb_log("record: cannot read %s/xen.state: %s", M.dir, strerror(-r));
	mvb_domains_restore_finish();
	if ((r = mvb_record_begin(M.dir)) < 0)
		mvb_log("record: cannot write %s/xen.state: %s; Xen state will not survive a restart", M.dir,
			strerror(-r));
	if (ready_fd >= 0) {
		(void)!write(ready_fd, "R", 1);
		close(ready_fd);
	}
	sd_notifyf(0, "READY=1\nSTATUS=listening on %s%s", M.sock_path, M.nactivated ? " (socket-activated)" : "");
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: memvisord [options]\n"
		   "  --runtime-dir DIR        socket and lock directory (default: $MEMVISOR_RUNTIME_DIR,\n"
		   "                           $XDG_RUNTIME_DIR/memvisor, /tmp/memvisor-UID)\n"
		   "  --foreground             do not daemonize; log to stderr\n"
		   "  --unpinned-budget BYTES  keep at most this much unpinned memory resident\n"
		   "  --min-available BYTES    purge when MemAvailable drops below (default: 2%% of RAM, 0 = off)\n"
		   "  --no-psi                 do not use PSI memory pressure triggers\n"
		   "  --no-compress            drop unpinned pages at once instead of keeping them compressed\n"
		   "  --compressed-budget BYTES  what the compressed store may hold (default: 5%% of RAM)\n"
		   "  --sweep-ms N             upkeep interval (default 1000)\n"
		   "  --exit-idle SECONDS      exit after this long with no client and nothing held\n"
		   "                           (default 0: never; the library starts brokers with 60)\n"
		   "  --clients-per-pid N      broker connections one process may hold (default 64)\n"
		   "  --xs-conns-per-pid N     xenstore connections one process may hold (default 64)\n"
		   "  --xs-dom0-nodes N        xenstore nodes domain 0 may own (default 100000)\n"
		   "  --xs-dom0-watches N      watches per domain 0 process (default 1024)\n"
		   "  --xs-dom0-transactions N open transactions per domain 0 process (default 64)\n"
		   "  --xs-dom0-tx-entries N   nodes one domain 0 transaction may touch (default 65536)\n"
		   "  --xs-toolstack MODE      who is domain 0 in the xenstore, besides never a domain or a\n"
		   "                           descendant of one: 'any' process of the user (default), or\n"
		   "                           'socket': only those on xenstored-toolstack.sock\n"
		   "  --ready-fd FD            write one byte to FD once listening\n"
		   "  --help, --version\n"
		   "Sizes take units: 4096, 4k, 64M, 1GiB (powers of 1024). Started by systemd's\n"
		   "memvisord.socket, it serves the sockets passed (LISTEN_FDS) and reports readiness.\n");
}

static int parse_size(const char *opt, const char *arg, uint64_t *v)
{
	if (mvu_parse_size(arg, v) < 0) {
		fprintf(stderr, "memvisord: bad --%s '%s'\n", opt, arg);
		return -1;
	}
	return 0;
}

static int parse_count(const char *opt, const char *arg, uint32_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(arg, &end, 10);
	if (errno || end == arg || *end || v < 1 || v > UINT32_MAX || arg[0] == '-') {
		fprintf(stderr, "memvisord: bad --%s '%s' (1..%u)\n", opt, arg, UINT32_MAX);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "runtime-dir", required_argument, NULL, 'd' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "unpinned-budget", required_argument, NULL, 'b' },
		{ "min-available", required_argument, NULL, 'm' },
		{ "no-psi", no_argument, NULL, 'P' },
		{ "no-compress", no_argument, NULL, 'C' },
		{ "compressed-budget", required_argument, NULL, 'z' },
		{ "sweep-ms", required_argument, NULL, 's' },
		{ "ready-fd", required_argument, NULL, 'r' },
		{ "exit-idle", required_argument, NULL, 'i' },
		{ "clients-per-pid", required_argument, NULL, 'c' },
		{ "xs-conns-per-pid", required_argument, NULL, 'X' },
		{ "xs-dom0-nodes", required_argument, NULL, 'N' },
		{ "xs-dom0-watches", required_argument, NULL, 'W' },
		{ "xs-dom0-transactions", required_argument, NULL, 'T' },
		{ "xs-dom0-tx-entries", required_argument, NULL, 'E' },
		{ "xs-toolstack", required_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	int ready_fd = -1, c, r;
	bool min_set = false;
	uint64_t v;
	char *end;

	mvb_xenstore_config_defaults(&M.xs);
	while ((c = getopt_long(argc, argv, "d:fb:m:PCz:s:r:i:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			if (parse_count("clients-per-pid", optarg, &M.clients_per_pid) < 0)
				return 2;
			break;
		case 'X':
			if (parse_count("xs-conns-per-pid", optarg, &M.xs.max_conns_per_pid) < 0)
				return 2;
			break;
		case 'N':
			if (parse_count("xs-dom0-nodes", optarg, &M.xs.dom0.nodes) < 0)
				return 2;
			break;
		case 'W':
			if (parse_count("xs-dom0-watches", optarg, &M.xs.dom0.watches) < 0)
				return 2;
			break;
		case 'T':
			if (parse_count("xs-dom0-transactions", optarg, &M.xs.dom0.transactions) < 0)
				return 2;
			break;
		case 'S':
			if (strcmp(optarg, "any") != 0 && strcmp(optarg, "socket") != 0) {
				fprintf(stderr, "memvisord: bad --xs-toolstack '%s' (any or socket)\n", optarg);
				return 2;
			}
			M.xs.toolstack_socket_only = strcmp(optarg, "socket") == 0;
			break;
		case 'E':
			if (parse_count("xs-dom0-tx-entries", optarg, &M.xs.dom0.tx_entries) < 0)
				return 2;
			break;
		case 'd':
			if (snprintf(M.dir, sizeof(M.dir), "%s", optarg) >= (int)sizeof(M.dir)) {
				fprintf(stderr, "memvisord: runtime directory name too long\n");
				return 2;
			}
			break;
		case 'f': M.foreground = true; break;
		case 'b':
			if (parse_size("unpinned-budget", optarg, &v) < 0)
				return 2;
			M.regions.unpinned_budget = v / MV_PAGE_SIZE * MV_PAGE_SIZE;
			break;
		case 'm':
			if (parse_size("min-available", optarg, &v) < 0)
				return 2;
			M.regions.min_available = v;
			min_set = true;
			break;
		case 'P': M.regions.psi = false; break;
		case 'C': M.regions.compress = false; break;
		case 'z':
			if (parse_size("compressed-budget", optarg, &v) < 0)
				return 2;
			M.regions.compressed_budget = v ? v : 1;
			break;
		case 's':
			if (mvu_parse_size(optarg, &v) < 0 || v < 10 || v > 3600000) {
				fprintf(stderr, "memvisord: bad --sweep-ms '%s' (10..3600000)\n", optarg);
				return 2;
			}
			M.sweep_ms = v;
			break;
		case 'i': {
			errno = 0;
			double secs = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(secs >= 0 && secs <= 86400.0 * 365)) {
				fprintf(stderr, "memvisord: bad --exit-idle '%s' (seconds, 0 = never)\n", optarg);
				return 2;
			}
			M.exit_idle_ms = (uint64_t)(secs * 1000.0 + 0.5);
			if (secs > 0 && !M.exit_idle_ms)
				M.exit_idle_ms = 1;
			break;
		}
		case 'r': {
			long fd = strtol(optarg, &end, 10);
			if (*end || fd < 0 || fd > INT_MAX) {
				fprintf(stderr, "memvisord: bad --ready-fd '%s'\n", optarg);
				return 2;
			}
			ready_fd = (int)fd;
			break;
		}
		case 'h': usage(stdout); return 0;
		case 'V': printf("memvisord %s\n", MV_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "memvisord: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	/* Whatever the spawning application left open is not ours to keep alive; what a service manager
	 * passed is. */
	M.nactivated = sd_listen_fds(1);
	if (M.nactivated < 0) {
		fprintf(stderr, "memvisord: bad socket activation environment: %s\n", strerror(-M.nactivated));
		return 1;
	}
	for (int fd = 3; fd < 1024; fd++)
		if (fd != ready_fd && (fd < SD_LISTEN_FDS_START || fd >= SD_LISTEN_FDS_START + M.nactivated))
			close(fd);
	if (!M.dir[0] && mvu_runtime_dir(M.dir, sizeof(M.dir), 1) < 0) {
		fprintf(stderr, "memvisord: no usable runtime directory\n");
		return 1;
	}
	if (!min_set) {
		int64_t total = mvu_meminfo("MemTotal");
		M.regions.min_available = total > 0 ? (uint64_t)total / 50 : 0;
	}

	r = setup(M.foreground ? ready_fd : -1);
	if (r == -EALREADY) {
		if (!M.foreground && !M.nactivated)
			return 0; /* lost a start race, or already running: fine */
		fprintf(stderr, "memvisord: another broker already serves %s\n", M.dir);
		return 3;
	}
	if (r < 0) {
		fprintf(stderr, "memvisord: setup failed: %s\n", strerror(-r));
		return 1;
	}
	mvb_log("listening on %s and %s", M.sock_path, M.xs_path);
	r = mvb_core_run();
	/* systemd's sockets outlive this broker: the next connection starts another. */
	if (!M.activated)
		unlink(M.sock_path);
	if (!M.xs_activated)
		unlink(M.xs_path);
	if (!M.ts_activated)
		unlink(M.ts_path);
	return r < 0 ? 1 : 0;
}
