/* SPDX-License-Identifier: MIT */
/* memvisor store: the broker's xenstore for people. Speaks the xs_wire protocol itself on
 * $MEMVISOR_RUNTIME_DIR/xenstored-toolstack.sock (xenstored.sock from a broker without it), as the
 * toolstack (domain 0), like Xen's xenstore-* tools. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <xen/io/xs_wire.h>

#include "cli/cli.h"
#include "memvisor/broker.h"

struct xs {
	int fd;
	uint32_t req;
};

static int xs_connect(struct xs *x)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char dir[256];
	int r = mv_broker_runtime_dir(dir, sizeof(dir));
	if (r < 0)
		return r;
	static const char *const names[] = { "xenstored-toolstack.sock", "xenstored.sock" };
	for (size_t i = 0; i < CLI_ARRAY_SIZE(names); i++) {
		if ((size_t)snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", dir, names[i]) >= sizeof(sa.sun_path))
			return -ENAMETOOLONG;
		x->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (x->fd < 0)
			return -errno;
		if (connect(x->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		r = -errno;
		close(x->fd);
		x->fd = -1;
		if (r != -ENOENT || i + 1 == CLI_ARRAY_SIZE(names))
			return r;
	}
	x->req = 0;
	return 0;
}

/* One message from the store into buf (NUL-terminated after its payload). */
static int xs_recv(struct xs *x, struct xsd_sockmsg *h, char *buf)
{
	int r = cli_full_io(x->fd, h, sizeof(*h), false);
	if (r == 0 && h->len > 2 * XENSTORE_PAYLOAD_MAX)
		return -EPROTO;
	if (r == 0)
		r = cli_full_io(x->fd, buf, h->len, false);
	if (r == 0)
		buf[h->len] = '\0';
	return r;
}

/* A request with up to two payload parts; the reply's payload in buf. -errno as the store named it. */
static int xs_req(struct xs *x, uint32_t type, const void *a, size_t alen, const void *b, size_t blen, char *buf,
		  uint32_t *len)
{
	struct xsd_sockmsg h = { .type = type, .req_id = ++x->req, .len = (uint32_t)(alen + blen) };
	if (h.len > XENSTORE_PAYLOAD_MAX)
		return -E2BIG;
	int r = cli_full_io(x->fd, &h, sizeof(h), true);
	if (r == 0 && alen)
		r = cli_full_io(x->fd, (void *)a, alen, true);
	if (r == 0 && blen)
		r = cli_full_io(x->fd, (void *)b, blen, true);
	while (r == 0) {
		struct xsd_sockmsg rh;
		if ((r = xs_recv(x, &rh, buf)) < 0)
			break;
		if (rh.type == XS_WATCH_EVENT || rh.req_id != h.req_id)
			continue;
		if (rh.type == XS_ERROR) {
			for (size_t i = 0; i < sizeof(xsd_errors) / sizeof(xsd_errors[0]); i++)
				if (strcmp(buf, xsd_errors[i].errstring) == 0)
					return -xsd_errors[i].errnum;
			return -EIO;
		}
		if (len)
			*len = rh.len;
		return 0;
	}
	return r;
}

int cli_store_read(const char *path, char *out, size_t outlen)
{
	struct xs x;
	static char buf[XENSTORE_PAYLOAD_MAX + 1];
	uint32_t len = 0;
	int r = xs_connect(&x);
	if (r < 0)
		return r;
	r = xs_req(&x, XS_READ, path, strlen(path) + 1, NULL, 0, buf, &len);
	close(x.fd);
	if (r < 0)
		return r;
	if (outlen)
		snprintf(out, outlen, "%.*s", (int)len, buf);
	return (int)len;
}

static int fail(const char *what, const char *path, int e)
{
	fprintf(stderr, "memvisor store: %s %s: %s\n", what, path, strerror(-e));
	return 1;
}

static void print_value(const char *v, uint32_t len, bool json)
{
	if (json) {
		char *s = strndup(v, len);
		cli_json_string(stdout, s ? s : "");
		free(s);
		return;
	}
	putchar('"');
	for (uint32_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)v[i];
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < ' ' || c > '~')
			printf("\\x%02x", c);
		else
			putchar(c);
	}
	putchar('"');
}

/* The names of path's children, NUL-separated, in a malloc'd buffer; a big directory comes in parts. */
static int children(struct xs *x, const char *path, char **out, size_t *outlen)
{
	static char buf[2 * XENSTORE_PAYLOAD_MAX + 1];
	uint32_t len;
	char *all = NULL;
	size_t n = 0;
	int r = xs_req(x, XS_DIRECTORY, path, strlen(path) + 1, NULL, 0, buf, &len);
	if (r == 0) {
		all = malloc(len + 1);
		if (!all)
			return -ENOMEM;
		memcpy(all, buf, len);
		n = len;
	}
	while (r == -E2BIG || (r == 0 && all == NULL)) {
		char off[24];
		int l = snprintf(off, sizeof(off), "%zu", n);
		if ((r = xs_req(x, XS_DIRECTORY_PART, path, strlen(path) + 1, off, (size_t)l + 1, buf, &len)) < 0)
			break;
		size_t gl = strlen(buf) + 1, more = len > gl ? len - gl : 0;
		char *grown = realloc(all, n + more + 1);
		if (!grown) {
			r = -ENOMEM;
			break;
		}
		all = grown;
		memcpy(all + n, buf + gl, more);
		n += more;
		if (more == 0 || (n >= 1 && all[n - 1] == '\0' && (n == 1 || all[n - 2] == '\0'))) {
			n = n ? n - 1 : 0; /* the empty name that ends the list */
			r = 0;
			break;
		}
		r = -E2BIG;
	}
	if (r < 0) {
		free(all);
		return r;
	}
	all[n] = '\0';
	*out = all;
	*outlen = n;
	return 0;
}

/* Recursive over the tree, which may be as deep as paths are long (about 1500 levels): each level keeps
 * only its child list and path; the value and permission buffers are used before descending and shared. */
static int ls(struct xs *x, const char *path, int depth, bool json, bool *first)
{
	static char val[2 * XENSTORE_PAYLOAD_MAX + 1], perms[2 * XENSTORE_PAYLOAD_MAX + 1];
	char *kids;
	size_t len;
	int r = children(x, path, &kids, &len);
	if (r < 0)
		return r;
	for (size_t o = 0; o < len && r == 0; o += strlen(kids + o) + 1) {
		char *child;
		if (asprintf(&child, "%s%s%s", path, strcmp(path, "/") ? "/" : "", kids + o) < 0) {
			r = -ENOMEM;
			break;
		}
		uint32_t vlen = 0, plen = 0;
		if (xs_req(x, XS_READ, child, strlen(child) + 1, NULL, 0, val, &vlen) < 0)
			vlen = 0; /* removed meanwhile */
		if (xs_req(x, XS_GET_PERMS, child, strlen(child) + 1, NULL, 0, perms, &plen) < 0)
			plen = 0;
		if (json) {
			printf("%s\n    {\"path\": ", *first ? "" : ",");
			*first = false;
			cli_json_string(stdout, child);
			printf(", \"value\": ");
			print_value(val, vlen, true);
			printf(", \"perms\": [");
			for (uint32_t p = 0; p < plen && perms[p]; p += (uint32_t)strlen(perms + p) + 1) {
				printf("%s", p ? ", " : "");
				cli_json_string(stdout, perms + p);
			}
			printf("]}");
		} else {
			printf("%*s%s = ", depth, "", kids + o);
			print_value(val, vlen, false);
			printf("  (");
			for (uint32_t p = 0; p < plen && perms[p]; p += (uint32_t)strlen(perms + p) + 1)
				printf("%s%s", p ? "," : "", perms + p);
			printf(")\n");
		}
		r = ls(x, child, depth + 1, json, first);
		free(child);
	}
	free(kids);
	return r;
}

static void usage(void)
{
	cli_store_usage(stderr);
}

void cli_store_usage(FILE *f)
{
	fprintf(f, "usage: memvisor store ls [PATH] [--json] | read PATH | write PATH VALUE | rm PATH |\n"
		   "                      watch PATH [COUNT]\n");
}

int cli_store(int argc, char **argv, bool json)
{
	if (argc < 1) {
		usage();
		return 2;
	}
	const char *op = argv[0];
	/* A bad command line is the user's error, whether or not a broker runs: exit 2 before connecting. */
	bool known = (strcmp(op, "ls") == 0 && argc <= 2) || (strcmp(op, "read") == 0 && argc == 2) ||
		     (strcmp(op, "write") == 0 && argc == 3) || (strcmp(op, "rm") == 0 && argc == 2) ||
		     (strcmp(op, "watch") == 0 && (argc == 2 || argc == 3));
	if (!known) {
		if (strcmp(op, "ls") && strcmp(op, "read") && strcmp(op, "write") && strcmp(op, "rm") &&
		    strcmp(op, "watch"))
			fprintf(stderr, "memvisor store: unknown operation '%s'\n", op);
		else
			fprintf(stderr, "memvisor store %s: wrong number of arguments\n", op);
		usage();
		return 2;
	}
	long count = -1;
	if (strcmp(op, "watch") == 0 && argc == 3) {
		char *end;
		errno = 0;
		count = strtol(argv[2], &end, 10);
		if (errno || end == argv[2] || *end || count <= 0) {
			fprintf(stderr, "memvisor store watch: bad COUNT '%s' (a positive number)\n", argv[2]);
			return 2;
		}
	}
	struct xs x;
	int r = xs_connect(&x);
	if (r < 0) {
		fprintf(stderr, "memvisor store: no xenstore (is the broker running?): %s\n", strerror(-r));
		return 1;
	}
	static char buf[2 * XENSTORE_PAYLOAD_MAX + 1];
	uint32_t len = 0;
	int rc = 0;
	if (strcmp(op, "ls") == 0 && argc <= 2) {
		const char *path = argc == 2 ? argv[1] : "/";
		bool first = true;
		if (json)
			printf("{\"nodes\": [");
		r = ls(&x, path, 0, json, &first);
		if (json)
			printf("\n]}\n");
		rc = r < 0 ? fail("ls", path, r) : 0;
	} else if (strcmp(op, "read") == 0 && argc == 2) {
		r = xs_req(&x, XS_READ, argv[1], strlen(argv[1]) + 1, NULL, 0, buf, &len);
		if (r < 0) {
			rc = fail("read", argv[1], r);
		} else if (json) {
			printf("{\"path\": ");
			cli_json_string(stdout, argv[1]);
			printf(", \"value\": ");
			print_value(buf, len, true);
			printf("}\n");
		} else {
			fwrite(buf, 1, len, stdout);
			putchar('\n');
		}
	} else if (strcmp(op, "write") == 0 && argc == 3) {
		r = xs_req(&x, XS_WRITE, argv[1], strlen(argv[1]) + 1, argv[2], strlen(argv[2]), buf, NULL);
		rc = r < 0 ? fail("write", argv[1], r) : 0;
	} else if (strcmp(op, "rm") == 0 && argc == 2) {
		r = xs_req(&x, XS_RM, argv[1], strlen(argv[1]) + 1, NULL, 0, buf, NULL);
		rc = r < 0 ? fail("rm", argv[1], r) : 0;
	} else if (strcmp(op, "watch") == 0 && (argc == 2 || argc == 3)) {
		r = xs_req(&x, XS_WATCH, argv[1], strlen(argv[1]) + 1, "memvisor", 9, buf, NULL);
		if (r < 0) {
			rc = fail("watch", argv[1], r);
		} else {
			setvbuf(stdout, NULL, _IOLBF, 0);
			for (long seen = 0; count < 0 || seen < count;) {
				struct xsd_sockmsg h;
				if ((r = xs_recv(&x, &h, buf)) < 0) {
					rc = fail("watch", argv[1], r);
					break;
				}
				if (h.type != XS_WATCH_EVENT)
					continue;
				if (json) {
					printf("{\"path\": ");
					cli_json_string(stdout, buf);
					printf("}\n");
				} else {
					printf("%s\n", buf);
				}
				seen++;
			}
		}
	} else {
		usage();
		rc = 2;
	}
	close(x.fd);
	return rc;
}
