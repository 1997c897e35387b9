/* SPDX-License-Identifier: MIT */
/* The xenstore tree and protocol engine. Everything a client sends is untrusted: lengths are checked
 * against the payload, strings are bounded, and every failure is an XS_ERROR reply naming the errno, as
 * Xen's xenstored sends.
 *
 * Transactions copy what they touch (see tx_child), not the tree. Each node remembers the generation of its last
 * change; a transaction records the generation of every node it looked at (0 for "absent") and, at
 * commit, fails with EAGAIN if any of them changed meanwhile; otherwise its operations are replayed on
 * the real tree and their watches fire. Unrelated writes never make a transaction fail. */
#define _GNU_SOURCE
#include "xenstore/xenstore.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xen/io/xs_wire.h>

#define HDR sizeof(struct xsd_sockmsg)
#define PERM_R 1u
#define PERM_W 2u

struct perm {
	uint32_t dom;
	uint8_t bits;
};

struct node {
	char *name;
	char *value;
	uint32_t vlen;
	struct perm *perms; /* [0]: owner, and what everyone else gets */
	uint32_t nperms;
	struct node *parent;
	struct node **kids;
	uint32_t nkids, capkids;
	uint64_t gen;
	bool stub;    /* a transaction's: only the name of a live child, copied when looked at */
	bool partial; /* a transaction's copy of a live node: children it lacks are still only live */
};

struct owner_count {
	uint32_t dom, n;
};

struct tree {
	struct node *root;
	struct tree *base; /* a transaction's tree: the store's, which it copies from as it touches it */
	struct owner_count *counts;
	uint32_t ncounts, capcounts;
	uint64_t nodes;
};

struct access {
	char *path;
	uint64_t gen;
};

struct op {
	uint32_t type;
	char *path;
	char *data;
	uint32_t dlen;
};

struct tx {
	uint32_t id;
	struct tree t;
	struct access *acc;
	uint32_t nacc, capacc;
	struct op *ops;
	uint32_t nops, capops;
	int doomed; /* a change it made could not be logged: its commit fails with this */
	struct tx *next;
};

struct watch {
	char *path; /* absolute, or @introduceDomain / @releaseDomain */
	char *token;
	size_t strip; /* bytes of the domain path to strip from events: the watch was relative */
	struct watch *next;
};

struct mvx_conn {
	struct mvx_store *s;
	uint32_t domid;
	int32_t pid;
	void *user;
	uint8_t in[HDR + XENSTORE_PAYLOAD_MAX];
	size_t inlen;
	uint8_t *out;
	size_t outlen, outcap;
	struct watch *watches;
	uint32_t nwatches;
	struct tx *txs;
	uint32_t ntx, next_txid;
	bool dirty, overflowed;
	struct mvx_conn *prev, *next;
};

struct mvx_store {
	struct tree t;
	uint64_t gen;
	struct mvx_conn *conns;
	struct mvx_quota quota;
	bool (*alive)(uint32_t domid);
	uint8_t introduced[0x8000 / 8];
	void (*journal)(void *ud, uint8_t kind, const void *p, size_t len);
	void *journal_ud;
};

/* ---- the tree ---- */

static const struct mvx_limits *limits(const struct mvx_store *s, uint32_t dom)
{
	return dom == 0 ? &s->quota.dom0 : &s->quota.guest;
}

/* A domain opens as many connections as it likes (within the per-process limit): its watches and
 * transactions are counted over all of them, or one process could hold 64 times its quota. */
static bool same_quota_holder(const struct mvx_conn *a, const struct mvx_conn *b)
{
	return a->domid == b->domid && (a->domid != 0 || a->pid == b->pid);
}

static uint32_t held_watches(const struct mvx_conn *c)
{
	uint32_t n = 0;
	for (const struct mvx_conn *o = c->s->conns; o; o = o->next)
		n += same_quota_holder(c, o) ? o->nwatches : 0;
	return n;
}

static uint32_t held_transactions(const struct mvx_conn *c)
{
	uint32_t n = 0;
	for (const struct mvx_conn *o = c->s->conns; o; o = o->next)
		n += same_quota_holder(c, o) ? o->ntx : 0;
	return n;
}

static uint32_t *owner_slot(struct tree *t, uint32_t dom, bool add)
{
	for (uint32_t i = 0; i < t->ncounts; i++)
		if (t->counts[i].dom == dom)
			return &t->counts[i].n;
	if (!add)
		return NULL;
	if (t->ncounts == t->capcounts) {
		uint32_t cap = t->capcounts ? t->capcounts * 2 : 8;
		struct owner_count *n = realloc(t->counts, cap * sizeof(*n));
		if (!n)
			return NULL;
		t->counts = n;
		t->capcounts = cap;
	}
	t->counts[t->ncounts] = (struct owner_count){ dom, 0 };
	return &t->counts[t->ncounts++].n;
}

static void owner_add(struct tree *t, uint32_t dom, int delta)
{
	uint32_t *n = owner_slot(t, dom, delta > 0);
	if (n)
		*n = (uint32_t)((int64_t)*n + delta);
}

static uint32_t owned(struct tree *t, uint32_t dom)
{
	uint32_t *n = owner_slot(t, dom, false);
	return n ? *n : 0;
}

static struct node *node_new(const char *name, size_t nlen)
{
	struct node *n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->name = strndup(name, nlen);
	if (!n->name) {
		free(n);
		return NULL;
	}
	return n;
}

static void node_free(struct tree *t, struct node *n)
{
	for (uint32_t i = 0; i < n->nkids; i++)
		node_free(t, n->kids[i]);
	if (t && n->nperms) {
		owner_add(t, n->perms[0].dom, -1);
		t->nodes--;
	}
	free(n->kids);
	free(n->perms);
	free(n->value);
	free(n->name);
	free(n);
}

static void node_path(const struct node *n, char *buf, size_t len);

/* A transaction's tree holds only what the transaction touched (below). The store's tree is its base. */
static void kid_detach(struct node *p, const struct node *k)
{
	for (uint32_t i = 0; i < p->nkids; i++)
		if (p->kids[i] == k) {
			memmove(&p->kids[i], &p->kids[i + 1], (p->nkids - i - 1) * sizeof(*p->kids));
			p->nkids--;
			return;
		}
}

static int kid_attach(struct node *p, struct node *k)
{
	if (p->nkids == p->capkids) {
		uint32_t cap = p->capkids ? p->capkids * 2 : 4;
		struct node **kids = realloc(p->kids, cap * sizeof(*kids));
		if (!kids)
			return -ENOMEM;
		p->kids = kids;
		p->capkids = cap;
	}
	k->parent = p;
	p->kids[p->nkids++] = k;
	return 0;
}

/* A transaction's node takes the live node's own fields; its children stay in the live tree until the
 * transaction looks at them (partial). */
static int fill_from(struct node *n, const struct node *live)
{
	char *v = live->vlen ? malloc(live->vlen) : NULL;
	struct perm *pv = malloc(live->nperms * sizeof(*pv));
	if ((live->vlen && !v) || !pv) {
		free(v);
		free(pv);
		return -ENOMEM;
	}
	if (live->vlen)
		memcpy(v, live->value, live->vlen);
	memcpy(pv, live->perms, live->nperms * sizeof(*pv));
	free(n->value);
	free(n->perms);
	n->value = v;
	n->vlen = live->vlen;
	n->perms = pv;
	n->nperms = live->nperms;
	n->gen = live->gen;
	n->stub = false;
	n->partial = true;
	return 0;
}

/* Transactions copy on touch. A transaction's tree starts as a copy of the root alone. Looking a path up
 * copies each node on the way from the live tree the first time (its value and permissions, not its
 * children: the node is partial, and a child it lacks is looked for in the live tree). Listing or
 * removing children first loads the list of names (stubs, filled when looked at), as Xen's xenstored
 * copies a directory's record. So a transaction costs what it touched, not the tree, and what it saw of a
 * node is what the node was when it first touched it; commit checks every such node (see commit). */
static struct node *tx_child(struct tree *t, struct node *n, const char *name, size_t len, const struct node *live)
{
	for (uint32_t i = 0; i < n->nkids; i++) {
		struct node *k = n->kids[i];
		if (strlen(k->name) != len || memcmp(k->name, name, len) != 0)
			continue;
		if (!k->stub)
			return k;
		if (live && fill_from(k, live) == 0)
			return k;
		/* gone from the live tree since the names were loaded: the commit fails anyway (the parent's
		 * generation changed), so within the transaction it is gone */
		kid_detach(n, k);
		node_free(NULL, k);
		return NULL;
	}
	if (!t->base || !n->partial || !live)
		return NULL;
	struct node *k = node_new(name, len);
	if (!k || fill_from(k, live) < 0 || kid_attach(n, k) < 0) {
		if (k)
			node_free(NULL, k);
		return NULL;
	}
	return k;
}

static struct node *child(const struct node *n, const char *name, size_t len)
{
	for (uint32_t i = 0; i < n->nkids; i++)
		if (strlen(n->kids[i]->name) == len && memcmp(n->kids[i]->name, name, len) == 0)
			return n->kids[i];
	return NULL;
}

/* The node at an absolute, canonical path, or the deepest existing ancestor in *deepest. In a
 * transaction's tree the live tree is walked alongside: its node at the same path is the original. */
static struct node *lookup(struct tree *t, const char *path, struct node **deepest)
{
	struct node *n = t->root, *live = t->base ? t->base->root : NULL;
	const char *p = path + 1;
	while (*p) {
		const char *e = strchr(p, '/');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		struct node *lk = live ? child(live, p, len) : NULL;
		struct node *k = t->base ? tx_child(t, n, p, len, lk) : child(n, p, len);
		if (!k) {
			if (deepest)
				*deepest = n;
			return NULL;
		}
		n = k;
		live = lk;
		p += len + (e ? 1 : 0);
	}
	if (deepest)
		*deepest = n;
	return n;
}

static int by_name(const void *a, const void *b)
{
	return strcmp((*(struct node *const *)a)->name, (*(struct node *const *)b)->name);
}

/* Makes a transaction's node list all its children: the live ones (stubs unless already copied) in the
 * live order, then those the transaction made. */
static int load_kids(struct tree *t, struct node *n, const struct node *live)
{
	if (!t->base || !n->partial)
		return 0;
	uint32_t nl = live ? live->nkids : 0, cap = nl + n->nkids;
	struct node **kids = malloc((cap ? cap : 1) * sizeof(*kids));
	struct node **mine = malloc((n->nkids ? n->nkids : 1) * sizeof(*mine));
	bool *taken = calloc(n->nkids ? n->nkids : 1, sizeof(*taken));
	int r = -ENOMEM;
	uint32_t k = 0, nmine = n->nkids;
	if (!kids || !mine || !taken)
		goto out;
	if (nmine) {
		memcpy(mine, n->kids, nmine * sizeof(*mine));
		qsort(mine, nmine, sizeof(*mine), by_name);
	}
	for (uint32_t i = 0; i < nl; i++) {
		struct node key = { .name = live->kids[i]->name }, *kp = &key;
		struct node **hit = nmine ? bsearch(&kp, mine, nmine, sizeof(*mine), by_name) : NULL;
		if (hit) {
			taken[hit - mine] = true;
			kids[k++] = *hit;
			continue;
		}
		struct node *s = node_new(key.name, strlen(key.name));
		if (!s) {
			while (k--)
				if (kids[k]->stub)
					node_free(NULL, kids[k]);
			goto out;
		}
		s->stub = true;
		s->parent = n;
		kids[k++] = s;
	}
	for (uint32_t i = 0; i < n->nkids; i++) {
		struct node key = { .name = n->kids[i]->name }, *kp = &key;
		struct node **hit = bsearch(&kp, mine, nmine, sizeof(*mine), by_name);
		if (!taken[hit - mine])
			kids[k++] = n->kids[i];
	}
	free(n->kids);
	n->kids = kids;
	kids = NULL;
	n->nkids = k;
	n->capkids = cap;
	n->partial = false;
	r = 0;
out:
	free(kids);
	free(mine);
	free(taken);
	return r;
}

static void uncount(struct tree *t, const struct node *live)
{
	owner_add(t, live->perms[0].dom, -1);
	t->nodes--;
	for (uint32_t i = 0; i < live->nkids; i++)
		uncount(t, live->kids[i]);
}

/* A transaction removes n: node_free counts off the nodes it copied; this, those still only live. */
static void uncount_uncopied(struct tree *t, const struct node *n, const struct node *live)
{
	if (!live)
		return;
	if (n->stub) {
		uncount(t, live);
		return;
	}
	for (uint32_t i = 0; i < n->nkids; i++)
		uncount_uncopied(t, n->kids[i], child(live, n->kids[i]->name, strlen(n->kids[i]->name)));
	if (n->partial)
		for (uint32_t i = 0; i < live->nkids; i++)
			if (!child(n, live->kids[i]->name, strlen(live->kids[i]->name)))
				uncount(t, live->kids[i]);
}

static int tx_tree_init(struct tree *t, struct tree *base)
{
	memset(t, 0, sizeof(*t));
	t->base = base;
	t->root = node_new("", 0);
	t->counts = malloc((base->ncounts ? base->ncounts : 1) * sizeof(*t->counts));
	if (!t->root || !t->counts || fill_from(t->root, base->root) < 0) {
		if (t->root)
			node_free(NULL, t->root);
		free(t->counts);
		return -ENOMEM;
	}
	memcpy(t->counts, base->counts, base->ncounts * sizeof(*t->counts));
	t->capcounts = base->ncounts ? base->ncounts : 1;
	t->ncounts = base->ncounts;
	t->nodes = base->nodes;
	return 0;
}

static void tree_free(struct tree *t)
{
	if (t->root)
		node_free(NULL, t->root);
	free(t->counts);
	memset(t, 0, sizeof(*t));
}

/* The live node at the same path as a transaction's node. */
static const struct node *live_of(struct tree *t, const struct node *n)
{
	char path[XENSTORE_ABS_PATH_MAX + 64];
	if (!t->base)
		return NULL;
	node_path(n, path, sizeof(path));
	return lookup(t->base, path, NULL);
}

static uint8_t perm_of(const struct node *n, uint32_t dom)
{
	if (dom == 0 || n->perms[0].dom == dom)
		return PERM_R | PERM_W;
	for (uint32_t i = 1; i < n->nperms; i++)
		if (n->perms[i].dom == dom)
			return n->perms[i].bits;
	return n->perms[0].bits;
}

static void node_path(const struct node *n, char *buf, size_t len)
{
	const struct node *chain[XENSTORE_ABS_PATH_MAX / 2];
	size_t k = 0, o = 0;
	for (; n && n->parent && k < sizeof(chain) / sizeof(chain[0]); n = n->parent)
		chain[k++] = n;
	if (!k)
		snprintf(buf, len, "/");
	while (k--) {
		int w = snprintf(buf + o, len - o, "/%s", chain[k]->name);
		if (w < 0 || (size_t)w >= len - o)
			break;
		o += (size_t)w;
	}
}

/* ---- connections and output ---- */

static void out_append(struct mvx_conn *c, uint32_t type, uint32_t req_id, uint32_t tx_id, const void *p1, size_t l1,
		       const void *p2, size_t l2)
{
	struct xsd_sockmsg h = { .type = type, .req_id = req_id, .tx_id = tx_id, .len = (uint32_t)(l1 + l2) };
	size_t need = c->outlen + HDR + l1 + l2;
	if (c->overflowed)
		return;
	if (need > c->s->quota.out_max) {
		c->overflowed = true; /* the broker drops a client that does not read */
		return;
	}
	if (need > c->outcap) {
		size_t cap = c->outcap ? c->outcap : 4096;
		while (cap < need)
			cap *= 2;
		uint8_t *n = realloc(c->out, cap);
		if (!n) {
			c->overflowed = true;
			return;
		}
		c->out = n;
		c->outcap = cap;
	}
	memcpy(c->out + c->outlen, &h, HDR);
	if (l1)
		memcpy(c->out + c->outlen + HDR, p1, l1);
	if (l2)
		memcpy(c->out + c->outlen + HDR + l1, p2, l2);
	c->outlen = need;
	c->dirty = true;
}

static const char *errname(int e)
{
	for (size_t i = 0; i < sizeof(xsd_errors) / sizeof(xsd_errors[0]); i++)
		if (xsd_errors[i].errnum == e)
			return xsd_errors[i].errstring;
	return "EINVAL";
}

static void reply_error(struct mvx_conn *c, const struct xsd_sockmsg *h, int e)
{
	const char *n = errname(e);
	out_append(c, XS_ERROR, h->req_id, h->tx_id, n, strlen(n) + 1, NULL, 0);
}

static void reply(struct mvx_conn *c, const struct xsd_sockmsg *h, const void *p, size_t len)
{
	out_append(c, h->type, h->req_id, h->tx_id, p, len, NULL, 0);
}

static void reply_ok(struct mvx_conn *c, const struct xsd_sockmsg *h)
{
	reply(c, h, "OK", 3);
}

/* ---- paths ---- */

static bool valid_chars(const char *p)
{
	for (; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
		      *p == '/' || *p == '_' || *p == '@'))
			return false;
	return true;
}

static bool is_special(const char *p)
{
	return strcmp(p, "@introduceDomain") == 0 || strcmp(p, "@releaseDomain") == 0;
}

/* Canonical absolute path of what the client named; *strip gets the prefix added to a relative one. */
static int canonical(struct mvx_conn *c, const char *raw, char *out, size_t outlen, bool allow_special, size_t *strip)
{
	size_t len = strlen(raw), pre = 0;
	if (strip)
		*strip = 0;
	if (raw[0] == '@') {
		if (!allow_special || !is_special(raw))
			return -EINVAL;
		snprintf(out, outlen, "%s", raw);
		return 0;
	}
	if (len == 0)
		return -EINVAL;
	if (raw[0] != '/') {
		if (len > XENSTORE_REL_PATH_MAX)
			return -EINVAL;
		pre = (size_t)snprintf(out, outlen, "/local/domain/%" PRIu32 "/", c->domid);
	} else if (len > XENSTORE_ABS_PATH_MAX) {
		return -EINVAL;
	}
	if (pre + len >= outlen)
		return -EINVAL;
	memcpy(out + pre, raw, len + 1);
	if (!valid_chars(out) || strstr(out, "//") || (strlen(out) > 1 && out[strlen(out) - 1] == '/'))
		return -EINVAL;
	if (strip)
		*strip = pre;
	return 0;
}

/* ---- watches ---- */

static bool under(const char *path, const char *top)
{
	size_t n = strlen(top);
	if (strcmp(top, "/") == 0)
		return path[0] == '/';
	return strncmp(path, top, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

static void send_event(struct mvx_conn *c, const struct watch *w, const char *path)
{
	const char *shown = path;
	if (w->strip && strlen(path) >= w->strip)
		shown = path + w->strip;
	size_t pl = strlen(shown) + 1, tl = strlen(w->token) + 1;
	out_append(c, XS_WATCH_EVENT, 0, 0, shown, pl, w->token, tl);
}

/* A change at path: watches on it or above it hear of path; on a removal, watches below hear of their
 * own path. Only connections that may read the node are told (the node as it was, for a removal). */
static void fire(struct mvx_store *s, const char *path, const struct node *n, bool removal)
{
	for (struct mvx_conn *c = s->conns; c; c = c->next) {
		if (n && !(perm_of(n, c->domid) & PERM_R))
			continue;
		for (struct watch *w = c->watches; w; w = w->next) {
			if (w->path[0] == '@')
				continue;
			if (under(path, w->path))
				send_event(c, w, path);
			else if (removal && under(w->path, path))
				send_event(c, w, w->path);
		}
	}
}

static void fire_special(struct mvx_store *s, const char *which)
{
	for (struct mvx_conn *c = s->conns; c; c = c->next)
		for (struct watch *w = c->watches; w; w = w->next)
			if (strcmp(w->path, which) == 0)
				send_event(c, w, which);
}

/* ---- operations on a tree (the store's, or a transaction's copy) ---- */

struct ctx {
	struct mvx_store *s;
	struct tree *t;
	uint32_t dom;
	struct tx *tx; /* NULL: changes fire watches at once */
	bool quota;    /* off while a committed transaction is replayed */
};

static int tx_access(struct ctx *x, const char *path)
{
	if (!x->tx)
		return 0;
	for (uint32_t i = 0; i < x->tx->nacc; i++)
		if (strcmp(x->tx->acc[i].path, path) == 0)
			return 0;
	/* one entry stays free for the change this access is for (see tx_log) */
	if (x->quota && x->tx->nacc + x->tx->nops + 1 >= limits(x->s, x->dom)->tx_entries)
		return -ENOSPC;
	if (x->tx->nacc == x->tx->capacc) {
		uint32_t cap = x->tx->capacc ? x->tx->capacc * 2 : 16;
		struct access *n = realloc(x->tx->acc, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		x->tx->acc = n;
		x->tx->capacc = cap;
	}
	struct node *node = lookup(x->t, path, NULL);
	char *dup = strdup(path);
	if (!dup)
		return -ENOMEM;
	x->tx->acc[x->tx->nacc++] = (struct access){ dup, node ? node->gen : 0 };
	return 0;
}

/* Records path and each missing level above it, up to the first that exists (its children change). */
static int tx_access_chain(struct ctx *x, const char *path)
{
	char buf[XENSTORE_ABS_PATH_MAX + 64];
	snprintf(buf, sizeof(buf), "%s", path);
	for (;;) {
		int e = tx_access(x, buf);
		if (e < 0)
			return e;
		if (lookup(x->t, buf, NULL) || strcmp(buf, "/") == 0)
			return 0;
		char *slash = strrchr(buf, '/');
		if (slash == buf)
			slash[1] = '\0';
		else
			*slash = '\0';
	}
}

static int tx_log(struct ctx *x, uint32_t type, const char *path, const void *data, uint32_t dlen)
{
	if (!x->tx)
		return 0;
	struct tx *t = x->tx;
	/* The change is made in the transaction's tree already: if it cannot be logged, the commit would
	 * lose it, so the transaction can no longer commit. */
	if (x->quota && t->nacc + t->nops >= limits(x->s, x->dom)->tx_entries) {
		t->doomed = -ENOSPC;
		return -ENOSPC;
	}
	if (t->nops == t->capops) {
		uint32_t cap = t->capops ? t->capops * 2 : 8;
		struct op *n = realloc(t->ops, cap * sizeof(*n));
		if (!n) {
			t->doomed = -ENOMEM;
			return -ENOMEM;
		}
		t->ops = n;
		t->capops = cap;
	}
	struct op o = { .type = type, .path = strdup(path), .data = dlen ? malloc(dlen) : NULL, .dlen = dlen };
	if (!o.path || (dlen && !o.data)) {
		free(o.path);
		free(o.data);
		t->doomed = -ENOMEM;
		return -ENOMEM;
	}
	if (dlen)
		memcpy(o.data, data, dlen);
	t->ops[t->nops++] = o;
	return 0;
}

static void journal_node(struct mvx_store *s, const struct node *n);

static void touch(struct ctx *x, struct node *n)
{
	n->gen = ++x->s->gen;
	if (x->t == &x->s->t)
		journal_node(x->s, n);
}

static bool over_quota(struct ctx *x, uint32_t more)
{
	return x->quota && (uint64_t)owned(x->t, x->dom) + more > limits(x->s, x->dom)->nodes;
}

/* Creates the missing levels of path below the deepest existing one, as the client's. */
static int create(struct ctx *x, const char *path, struct node **out)
{
	struct node *top;
	struct node *n = lookup(x->t, path, &top);
	if (n) {
		*out = n;
		return 0;
	}
	if (!(perm_of(top, x->dom) & PERM_W))
		return -EACCES;
	char rel[XENSTORE_ABS_PATH_MAX + 64];
	char here[XENSTORE_ABS_PATH_MAX + 64];
	node_path(top, here, sizeof(here));
	size_t skip = strcmp(here, "/") == 0 ? 1 : strlen(here) + 1;
	snprintf(rel, sizeof(rel), "%s", path + skip);
	uint32_t levels = 1;
	for (const char *p = rel; *p; p++)
		levels += *p == '/';
	if (over_quota(x, levels))
		return -ENOSPC;
	struct node *parent = top;
	char *save, *comp = strtok_r(rel, "/", &save);
	while (comp) {
		struct node *k = node_new(comp, strlen(comp));
		if (!k)
			return -ENOMEM;
		k->nperms = parent->nperms;
		k->perms = malloc(k->nperms * sizeof(*k->perms));
		if (!k->perms) {
			node_free(NULL, k);
			return -ENOMEM;
		}
		memcpy(k->perms, parent->perms, k->nperms * sizeof(*k->perms));
		if (x->dom != 0)
			k->perms[0].dom = x->dom; /* a domain owns what it creates */
		if (parent->nkids == parent->capkids) {
			uint32_t cap = parent->capkids ? parent->capkids * 2 : 4;
			struct node **kids = realloc(parent->kids, cap * sizeof(*kids));
			if (!kids) {
				node_free(NULL, k);
				return -ENOMEM;
			}
			parent->kids = kids;
			parent->capkids = cap;
		}
		k->parent = parent;
		parent->kids[parent->nkids++] = k;
		owner_add(x->t, k->perms[0].dom, 1);
		x->t->nodes++;
		touch(x, parent);
		touch(x, k);
		parent = k;
		comp = strtok_r(NULL, "/", &save);
	}
	*out = parent;
	return 0;
}

static int op_write(struct ctx *x, const char *path, const void *val, uint32_t vlen)
{
	if (x->quota && vlen > limits(x->s, x->dom)->value_size)
		return -ENOSPC;
	int e = tx_access_chain(x, path);
	struct node *n = NULL;
	if (e == 0)
		e = create(x, path, &n);
	if (e < 0)
		return e;
	if (!(perm_of(n, x->dom) & PERM_W))
		return -EACCES;
	char *v = vlen ? malloc(vlen) : NULL;
	if (vlen && !v)
		return -ENOMEM;
	if (vlen)
		memcpy(v, val, vlen);
	free(n->value);
	n->value = v;
	n->vlen = vlen;
	touch(x, n);
	if ((e = tx_log(x, XS_WRITE, path, val, vlen)) < 0)
		return e;
	if (!x->tx)
		fire(x->s, path, n, false);
	return 0;
}

static int op_mkdir(struct ctx *x, const char *path)
{
	int e = tx_access_chain(x, path);
	struct node *n = lookup(x->t, path, NULL);
	if (e < 0)
		return e;
	if (n)
		return 0; /* already there: fine, and nothing fires */
	if ((e = create(x, path, &n)) < 0)
		return e;
	if ((e = tx_log(x, XS_MKDIR, path, NULL, 0)) < 0)
		return e;
	if (!x->tx)
		fire(x->s, path, n, false);
	return 0;
}

static int op_rm(struct ctx *x, const char *path)
{
	if (strcmp(path, "/") == 0)
		return -EINVAL;
	struct node *top;
	int e = tx_access(x, path);
	struct node *n = lookup(x->t, path, &top);
	if (e < 0)
		return e;
	if (!n) {
		/* gone already: fine if its parent is there */
		char parent[XENSTORE_ABS_PATH_MAX + 64];
		snprintf(parent, sizeof(parent), "%s", path);
		char *slash = strrchr(parent, '/');
		if (slash == parent)
			slash[1] = '\0';
		else
			*slash = '\0';
		return lookup(x->t, parent, NULL) ? 0 : -ENOENT;
	}
	if (!(perm_of(n, x->dom) & PERM_W))
		return -EACCES;
	struct node *p = n->parent;
	char ppath[XENSTORE_ABS_PATH_MAX + 64];
	node_path(p, ppath, sizeof(ppath));
	if ((e = tx_access(x, ppath)) < 0 || (e = tx_log(x, XS_RM, path, NULL, 0)) < 0)
		return e;
	/* the parent's list must be whole, or the live child would show through again */
	if ((e = load_kids(x->t, p, live_of(x->t, p))) < 0)
		return e;
	if (!x->tx)
		fire(x->s, path, n, true); /* told while the node and its permissions are still there */
	if (x->t == &x->s->t && x->s->journal)
		x->s->journal(x->s->journal_ud, 'R', path, strlen(path));
	kid_detach(p, n);
	uncount_uncopied(x->t, n, live_of(x->t, n));
	node_free(x->t, n);
	touch(x, p);
	return 0;
}

static int parse_perms(struct ctx *x, const char *p, const char *end, struct perm **out, uint32_t *n)
{
	uint32_t count = 0, cap = 0;
	struct perm *v = NULL;
	while (p < end && *p) {
		size_t len = strnlen(p, (size_t)(end - p));
		uint8_t bits;
		switch (p[0]) {
		case 'n': bits = 0; break;
		case 'r': bits = PERM_R; break;
		case 'w': bits = PERM_W; break;
		case 'b': bits = PERM_R | PERM_W; break;
		default: free(v); return -EINVAL;
		}
		char *e;
		errno = 0;
		unsigned long dom = strtoul(p + 1, &e, 10);
		if (len < 2 || e != p + len || errno || dom > 0xffff || p[1] == '-' || p[1] == '+' || p[1] == ' ') {
			free(v);
			return -EINVAL;
		}
		if (count == cap) {
			cap = cap ? cap * 2 : 4;
			struct perm *nv = realloc(v, cap * sizeof(*nv));
			if (!nv) {
				free(v);
				return -ENOMEM;
			}
			v = nv;
		}
		v[count++] = (struct perm){ (uint32_t)dom, bits };
		p += len + 1;
	}
	if (count == 0 || (x->quota && count > limits(x->s, x->dom)->perms)) {
		free(v);
		return count == 0 ? -EINVAL : -ENOSPC;
	}
	*out = v;
	*n = count;
	return 0;
}

static int op_set_perms(struct ctx *x, const char *path, const char *list, const char *end)
{
	int e = tx_access(x, path);
	struct node *n = lookup(x->t, path, NULL);
	if (e < 0)
		return e;
	if (!n)
		return -ENOENT;
	if (!(perm_of(n, x->dom) & PERM_W))
		return -EACCES;
	struct perm *v;
	uint32_t count;
	if ((e = parse_perms(x, list, end, &v, &count)) < 0)
		return e;
	/* a domain may not give its node away */
	if (x->dom != 0 && v[0].dom != n->perms[0].dom) {
		free(v);
		return -EPERM;
	}
	if (v[0].dom != n->perms[0].dom && x->quota && owned(x->t, v[0].dom) >= limits(x->s, v[0].dom)->nodes) {
		free(v);
		return -ENOSPC;
	}
	if ((e = tx_log(x, XS_SET_PERMS, path, list, (uint32_t)(end - list))) < 0) {
		free(v);
		return e;
	}
	owner_add(x->t, n->perms[0].dom, -1);
	owner_add(x->t, v[0].dom, 1);
	free(n->perms);
	n->perms = v;
	n->nperms = count;
	touch(x, n);
	if (!x->tx)
		fire(x->s, path, n, false);
	return 0;
}

/* ---- requests ---- */

static struct tx *find_tx(struct mvx_conn *c, uint32_t id)
{
	for (struct tx *t = c->txs; t; t = t->next)
		if (t->id == id)
			return t;
	return NULL;
}

static void tx_free(struct tx *t)
{
	tree_free(&t->t);
	for (uint32_t i = 0; i < t->nacc; i++)
		free(t->acc[i].path);
	for (uint32_t i = 0; i < t->nops; i++) {
		free(t->ops[i].path);
		free(t->ops[i].data);
	}
	free(t->acc);
	free(t->ops);
	free(t);
}

static void tx_remove(struct mvx_conn *c, struct tx *t)
{
	for (struct tx **pp = &c->txs; *pp; pp = &(*pp)->next)
		if (*pp == t) {
			*pp = t->next;
			break;
		}
	c->ntx--;
	tx_free(t);
}

static int commit(struct mvx_conn *c, struct tx *t)
{
	struct mvx_store *s = c->s;
	if (t->doomed)
		return t->doomed;
	for (uint32_t i = 0; i < t->nacc; i++) {
		struct node *n = lookup(&s->t, t->acc[i].path, NULL);
		if ((n ? n->gen : 0) != t->acc[i].gen)
			return -EAGAIN;
	}
	struct ctx x = { .s = s, .t = &s->t, .dom = c->domid, .tx = NULL, .quota = false };
	for (uint32_t i = 0; i < t->nops; i++) {
		struct op *o = &t->ops[i];
		switch (o->type) {
		case XS_WRITE: (void)op_write(&x, o->path, o->data, o->dlen); break;
		case XS_MKDIR: (void)op_mkdir(&x, o->path); break;
		case XS_RM: (void)op_rm(&x, o->path); break;
		case XS_SET_PERMS: (void)op_set_perms(&x, o->path, o->data, o->data + o->dlen); break;
		}
	}
	return 0;
}

/* The payload split into NUL-terminated strings (the last one may lack its NUL). */
struct args {
	char buf[XENSTORE_PAYLOAD_MAX + 1];
	const char *s[3];
	unsigned n;
	uint32_t len;
};

static void split(struct args *a, const uint8_t *p, uint32_t len)
{
	memcpy(a->buf, p, len);
	a->buf[len] = '\0';
	a->len = len;
	a->n = 0;
	for (uint32_t o = 0; o < len && a->n < 3;) {
		a->s[a->n++] = a->buf + o;
		o += (uint32_t)strlen(a->buf + o) + 1;
	}
}

static int parse_domid(const char *s, uint32_t *out)
{
	char *e;
	errno = 0;
	unsigned long v = strtoul(s, &e, 10);
	if (!*s || *e || errno || v > 0xffff || s[0] == '-' || s[0] == '+' || s[0] == ' ')
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

/* One request being answered. A handler returns 0 (answered "OK"), -errno (answered with that error) or
 * REPLIED when it sent its own answer. */
struct request {
	struct mvx_conn *c;
	const struct xsd_sockmsg *h;
	const struct args *a;
	struct ctx *x;
	struct tx *t;
	char path[XENSTORE_ABS_PATH_MAX + 64];
};
#define REPLIED 1

/* The request's first argument as an absolute path, after checking it is there. */
static int path_arg(struct request *q, unsigned nargs, bool watch, size_t *strip)
{
	if (q->a->n < nargs)
		return -EINVAL;
	return canonical(q->c, q->a->s[0], q->path, sizeof(q->path), watch, strip);
}

static int reply_perms(struct request *q, const struct node *n)
{
	char out[XENSTORE_PAYLOAD_MAX];
	size_t o = 0;

	for (uint32_t i = 0; i < n->nperms && o + 16 < sizeof(out); i++) {
		static const char letters[] = "nrwb";
		o += (size_t)snprintf(out + o, sizeof(out) - o, "%c%" PRIu32, letters[n->perms[i].bits],
				      n->perms[i].dom) +
		     1;
	}
	reply(q->c, q->h, out, o);
	return REPLIED;
}

/* DIRECTORY lists the children whole or fails with E2BIG; DIRECTORY_PART gives them from an offset,
 * after the node's generation, and ends the last part with an empty name. */
static int reply_directory(struct request *q, const struct node *n)
{
	char out[XENSTORE_PAYLOAD_MAX + 1];
	size_t o = 0;
	uint64_t from = 0, at = 0;
	bool part = q->h->type == XS_DIRECTORY_PART, all = true;

	if (part) {
		char *end;
		if (q->a->n < 2 || !*q->a->s[1] || (from = strtoull(q->a->s[1], &end, 10), *end))
			return -EINVAL;
		o = (size_t)snprintf(out, sizeof(out), "%" PRIu64, n->gen) + 1;
	}
	for (uint32_t i = 0; i < n->nkids; i++) {
		size_t l = strlen(n->kids[i]->name) + 1;
		if (at < from) {
			at += l;
			continue;
		}
		if (o + l + (part ? 1 : 0) > XENSTORE_PAYLOAD_MAX) {
			all = false;
			break;
		}
		memcpy(out + o, n->kids[i]->name, l);
		o += l;
		at += l;
	}
	if (!all && !part)
		return -E2BIG; /* the client asks again part by part */
	if (part && all)
		out[o++] = '\0'; /* the end */
	reply(q->c, q->h, out, o);
	return REPLIED;
}

/* READ, GET_PERMS, DIRECTORY and DIRECTORY_PART: a readable node, then what was asked of it. */
static int req_read(struct request *q)
{
	int e;

	if ((e = path_arg(q, 1, false, NULL)) < 0 || (e = tx_access(q->x, q->path)) < 0)
		return e;
	struct node *n = lookup(q->x->t, q->path, NULL);
	if (!n)
		return -ENOENT;
	if (!(perm_of(n, q->c->domid) & PERM_R))
		return -EACCES;
	switch (q->h->type) {
	case XS_READ: reply(q->c, q->h, n->value, n->vlen); return REPLIED;
	case XS_GET_PERMS: return reply_perms(q, n);
	default:
		if ((e = load_kids(q->x->t, n, live_of(q->x->t, n))) < 0)
			return e;
		return reply_directory(q, n);
	}
}

static int req_write(struct request *q)
{
	int e = path_arg(q, 1, false, NULL);

	if (e < 0)
		return e;
	uint32_t off = (uint32_t)strlen(q->a->s[0]) + 1;
	if (off > q->h->len)
		return -EINVAL;
	return op_write(q->x, q->path, q->a->buf + off, q->h->len - off);
}

static int req_mkdir(struct request *q)
{
	int e = path_arg(q, 1, false, NULL);
	return e < 0 ? e : op_mkdir(q->x, q->path);
}

static int req_rm(struct request *q)
{
	int e = path_arg(q, 1, false, NULL);
	return e < 0 ? e : op_rm(q->x, q->path);
}

static int req_set_perms(struct request *q)
{
	int e = path_arg(q, 2, false, NULL);
	return e < 0 ? e : op_set_perms(q->x, q->path, q->a->s[1], q->a->buf + q->a->len);
}

static void watch_free(struct watch *w)
{
	free(w->path);
	free(w->token);
	free(w);
}

static int req_watch(struct request *q)
{
	struct mvx_conn *c = q->c;
	size_t strip;
	int e = path_arg(q, 2, true, &strip);

	if (e < 0)
		return e;
	const char *token = q->a->s[1];
	for (struct watch *w = c->watches; w; w = w->next)
		if (strcmp(w->path, q->path) == 0 && strcmp(w->token, token) == 0)
			return -EEXIST;
	if (held_watches(c) >= limits(c->s, c->domid)->watches)
		return -E2BIG;
	struct watch *w = calloc(1, sizeof(*w));
	if (!w || !(w->path = strdup(q->path)) || !(w->token = strdup(token))) {
		if (w)
			free(w->path);
		free(w);
		return -ENOMEM;
	}
	w->strip = strip;
	w->next = c->watches;
	c->watches = w;
	c->nwatches++;
	reply_ok(c, q->h);
	send_event(c, w, q->path); /* a new watch fires once at once, as Xen's do */
	return REPLIED;
}

static int req_unwatch(struct request *q)
{
	struct mvx_conn *c = q->c;
	size_t strip;
	int e = path_arg(q, 2, true, &strip);

	if (e < 0)
		return e;
	for (struct watch **pp = &c->watches; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->path, q->path) == 0 && strcmp((*pp)->token, q->a->s[1]) == 0) {
			struct watch *w = *pp;
			*pp = w->next;
			watch_free(w);
			c->nwatches--;
			return 0;
		}
	return -ENOENT;
}

static int req_transaction_start(struct request *q)
{
	struct mvx_conn *c = q->c;

	if (q->h->tx_id)
		return -EBUSY;
	if (held_transactions(c) >= limits(c->s, c->domid)->transactions)
		return -ENOSPC;
	struct tx *n = calloc(1, sizeof(*n));
	if (!n || tx_tree_init(&n->t, &c->s->t) < 0) {
		free(n);
		return -ENOMEM;
	}
	do
		n->id = ++c->next_txid;
	while (n->id == 0 || find_tx(c, n->id));
	n->next = c->txs;
	c->txs = n;
	c->ntx++;
	char id[16];
	int l = snprintf(id, sizeof(id), "%" PRIu32, n->id);
	reply(c, q->h, id, (size_t)l + 1);
	return REPLIED;
}

static int req_transaction_end(struct request *q)
{
	int e;

	if (!q->t || q->a->n < 1 || (strcmp(q->a->s[0], "T") && strcmp(q->a->s[0], "F")))
		return -EINVAL;
	e = q->a->s[0][0] == 'T' ? commit(q->c, q->t) : 0;
	tx_remove(q->c, q->t);
	return e;
}

static int req_get_domain_path(struct request *q)
{
	uint32_t d;
	int e = q->a->n < 1 ? -EINVAL : parse_domid(q->a->s[0], &d);

	if (e < 0)
		return e;
	char out[40];
	int l = snprintf(out, sizeof(out), "/local/domain/%" PRIu32, d);
	reply(q->c, q->h, out, (size_t)l + 1);
	return REPLIED;
}

static int req_is_domain_introduced(struct request *q)
{
	struct mvx_store *s = q->c->s;
	uint32_t d;
	int e = q->a->n < 1 ? -EINVAL : parse_domid(q->a->s[0], &d);

	if (e < 0)
		return e;
	bool yes = d == 0 || (d < 0x8000 && (s->introduced[d / 8] & (1u << (d % 8))));
	if (s->alive && d != 0)
		yes = yes && s->alive(d);
	reply(q->c, q->h, yes ? "T" : "F", 2);
	return REPLIED;
}

static int req_reset_watches(struct request *q)
{
	struct mvx_conn *c = q->c;

	while (c->watches) {
		struct watch *w = c->watches;
		c->watches = w->next;
		watch_free(w);
	}
	c->nwatches = 0;
	while (c->txs)
		tx_remove(c, c->txs);
	return 0;
}

/* Domains are processes: they come and go with them, never by request. */
static int req_domain_control(struct request *q)
{
	return q->c->domid == 0 ? -ENOSYS : -EACCES;
}

static int (*const requests[])(struct request *q) = {
	[XS_READ] = req_read,
	[XS_GET_PERMS] = req_read,
	[XS_DIRECTORY] = req_read,
	[XS_DIRECTORY_PART] = req_read,
	[XS_WRITE] = req_write,
	[XS_MKDIR] = req_mkdir,
	[XS_RM] = req_rm,
	[XS_SET_PERMS] = req_set_perms,
	[XS_WATCH] = req_watch,
	[XS_UNWATCH] = req_unwatch,
	[XS_TRANSACTION_START] = req_transaction_start,
	[XS_TRANSACTION_END] = req_transaction_end,
	[XS_GET_DOMAIN_PATH] = req_get_domain_path,
	[XS_IS_DOMAIN_INTRODUCED] = req_is_domain_introduced,
	[XS_RESET_WATCHES] = req_reset_watches,
	[XS_INTRODUCE] = req_domain_control,
	[XS_RELEASE] = req_domain_control,
	[XS_RESUME] = req_domain_control,
	[XS_SET_TARGET] = req_domain_control,
};

static void handle(struct mvx_conn *c, const struct xsd_sockmsg *h, const uint8_t *payload)
{
	struct mvx_store *s = c->s;
	static struct args a;    /* single-threaded; too big for the stack of a fuzzer's callers */
	static struct request q; /* likewise: it holds a path buffer */
	struct tx *t = NULL;

	split(&a, payload, h->len);
	if (h->tx_id && h->type != XS_WATCH && h->type != XS_UNWATCH) {
		t = find_tx(c, h->tx_id);
		if (!t) {
			reply_error(c, h, ENOENT);
			return;
		}
	}
	struct ctx x = { .s = s, .t = t ? &t->t : &s->t, .dom = c->domid, .tx = t, .quota = true };
	q.c = c;
	q.h = h;
	q.a = &a;
	q.x = &x;
	q.t = t;
	/* XS_CONTROL, and what only the daemon sends, is no request of a client's */
	int (*fn)(struct request *) = h->type < sizeof(requests) / sizeof(requests[0]) ? requests[h->type] : NULL;
	int e = fn ? fn(&q) : -EINVAL;

	if (e == REPLIED)
		return;
	if (e < 0)
		reply_error(c, h, -e);
	else
		reply_ok(c, h);
}

int mvx_conn_input(struct mvx_conn *c, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		size_t room = sizeof(c->in) - c->inlen, take = len < room ? len : room;
		memcpy(c->in + c->inlen, p, take);
		c->inlen += take;
		p += take;
		len -= take;
		while (c->inlen >= HDR) {
			struct xsd_sockmsg h;
			memcpy(&h, c->in, HDR);
			if (h.len > XENSTORE_PAYLOAD_MAX)
				return -EPROTO;
			if (c->inlen < HDR + h.len)
				break;
			handle(c, &h, c->in + HDR);
			memmove(c->in, c->in + HDR + h.len, c->inlen - HDR - h.len);
			c->inlen -= HDR + h.len;
		}
	}
	return c->overflowed ? -ENOBUFS : 0;
}

size_t mvx_conn_pending(struct mvx_conn *c, const void **buf)
{
	*buf = c->out;
	return c->outlen;
}

void mvx_conn_consume(struct mvx_conn *c, size_t n)
{
	if (n > c->outlen)
		n = c->outlen;
	if (!n)
		return;
	memmove(c->out, c->out + n, c->outlen - n);
	c->outlen -= n;
}

struct mvx_conn *mvx_store_next_dirty(struct mvx_store *s)
{
	for (struct mvx_conn *c = s->conns; c; c = c->next)
		if (c->dirty) {
			c->dirty = false;
			return c;
		}
	return NULL;
}

struct mvx_conn *mvx_store_next_overflowed(struct mvx_store *s)
{
	for (struct mvx_conn *c = s->conns; c; c = c->next)
		if (c->overflowed)
			return c;
	return NULL;
}

/* ---- store, connections, domains ---- */

static struct node *mk(struct ctx *x, const char *path, const char *value, const struct perm *perms, uint32_t n)
{
	struct node *node;
	if (create(x, path, &node) < 0)
		return NULL;
	if (value) {
		free(node->value);
		node->vlen = (uint32_t)strlen(value);
		node->value = strdup(value);
	}
	struct perm *v = malloc(n * sizeof(*v));
	if (!v)
		return node;
	memcpy(v, perms, n * sizeof(*v));
	owner_add(x->t, node->perms[0].dom, -1);
	owner_add(x->t, v[0].dom, 1);
	free(node->perms);
	node->perms = v;
	node->nperms = n;
	touch(x, node);
	return node;
}

void mvx_default_quota(struct mvx_quota *q)
{
	*q = (struct mvx_quota){
		.guest = { .nodes = 1000,
			   .value_size = 2048,
			   .watches = 128,
			   .transactions = 10,
			   .perms = 5,
			   .tx_entries = 4096 },
		.dom0 = { .nodes = 100000,
			  .value_size = XENSTORE_PAYLOAD_MAX,
			  .watches = 1024,
			  .transactions = 64,
			  .perms = 1024,
			  .tx_entries = 65536 },
		.out_max = 4u << 20,
	};
}

struct mvx_store *mvx_store_new(void)
{
	struct mvx_store *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	mvx_default_quota(&s->quota);
	s->t.root = node_new("", 0);
	if (!s->t.root || !(s->t.root->perms = malloc(sizeof(struct perm)))) {
		mvx_store_free(s);
		return NULL;
	}
	s->t.root->perms[0] = (struct perm){ 0, 0 };
	s->t.root->nperms = 1;
	owner_add(&s->t, 0, 1);
	s->t.nodes = 1;
	struct ctx x = { .s = s, .t = &s->t, .dom = 0 };
	static const struct perm none0 = { 0, 0 };
	if (!mk(&x, "/local/domain/0/domid", "0", &none0, 1) ||
	    !mk(&x, "/local/domain/0/name", "Domain-0", &none0, 1) || !mk(&x, "/tool", NULL, &none0, 1)) {
		mvx_store_free(s);
		return NULL;
	}
	return s;
}

void mvx_store_free(struct mvx_store *s)
{
	if (!s)
		return;
	while (s->conns)
		mvx_conn_free(s->conns);
	tree_free(&s->t);
	free(s);
}

struct mvx_quota *mvx_store_quota(struct mvx_store *s)
{
	return &s->quota;
}

void mvx_store_set_domain_check(struct mvx_store *s, bool (*alive)(uint32_t domid))
{
	s->alive = alive;
}

uint64_t mvx_store_nodes(struct mvx_store *s)
{
	return s->t.nodes;
}

void mvx_store_counts(struct mvx_store *s, uint64_t *conns, uint64_t *watches, uint64_t *transactions)
{
	*conns = *watches = *transactions = 0;
	for (struct mvx_conn *c = s->conns; c; c = c->next) {
		(*conns)++;
		*watches += c->nwatches;
		*transactions += c->ntx;
	}
}

/* As a toolstack lays out a guest: /local/domain/<id> readable by it, its domid and name, and a data
 * directory it owns (where libxenvchan publishes its rings). */
int mvx_domain_introduce(struct mvx_store *s, uint32_t domid, const char *name)
{
	if (domid == 0 || domid >= 0x8000)
		return -EINVAL;
	char path[96], value[16];
	struct ctx x = { .s = s, .t = &s->t, .dom = 0 };
	const struct perm guest_reads[2] = { { 0, 0 }, { domid, PERM_R } };
	const struct perm guest_owns[1] = { { domid, 0 } };
	snprintf(path, sizeof(path), "/local/domain/%" PRIu32, domid);
	snprintf(value, sizeof(value), "%" PRIu32, domid);
	struct node *n = mk(&x, path, NULL, guest_reads, 2);
	if (!n)
		return -ENOMEM;
	snprintf(path, sizeof(path), "/local/domain/%" PRIu32 "/domid", domid);
	if (!mk(&x, path, value, guest_reads, 2))
		return -ENOMEM;
	snprintf(path, sizeof(path), "/local/domain/%" PRIu32 "/name", domid);
	if (!mk(&x, path, name, guest_reads, 2))
		return -ENOMEM;
	snprintf(path, sizeof(path), "/local/domain/%" PRIu32 "/data", domid);
	if (!mk(&x, path, NULL, guest_owns, 1))
		return -ENOMEM;
	s->introduced[domid / 8] |= (uint8_t)(1u << (domid % 8));
	snprintf(path, sizeof(path), "/local/domain/%" PRIu32, domid);
	fire(s, path, n, false);
	fire_special(s, "@introduceDomain");
	return 0;
}

static void disown(struct mvx_store *s, struct node *n, uint32_t domid)
{
	bool changed = false;
	if (n->perms[0].dom == domid) {
		owner_add(&s->t, domid, -1);
		owner_add(&s->t, 0, 1);
		n->perms[0].dom = 0;
		changed = true;
	}
	for (uint32_t i = 1; i < n->nperms;)
		if (n->perms[i].dom == domid) {
			memmove(&n->perms[i], &n->perms[i + 1], (--n->nperms - i) * sizeof(*n->perms));
			changed = true;
		} else {
			i++;
		}
	if (changed)
		journal_node(s, n);
	for (uint32_t i = 0; i < n->nkids; i++)
		disown(s, n->kids[i], domid);
}

/* The domain's directory goes; what it owned elsewhere passes to domain 0 and its entries in others'
 * permissions go, so a later domain with the same id inherits nothing (as Xen does since XSA-322). */
void mvx_domain_release(struct mvx_store *s, uint32_t domid)
{
	if (domid == 0 || domid >= 0x8000)
		return;
	char path[64];
	snprintf(path, sizeof(path), "/local/domain/%" PRIu32, domid);
	struct ctx x = { .s = s, .t = &s->t, .dom = 0 };
	(void)op_rm(&x, path);
	disown(s, s->t.root, domid);
	s->introduced[domid / 8] &= (uint8_t) ~(1u << (domid % 8));
	fire_special(s, "@releaseDomain");
}

struct mvx_conn *mvx_conn_new(struct mvx_store *s, uint32_t domid, void *user)
{
	struct mvx_conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->s = s;
	c->domid = domid;
	c->user = user;
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	return c;
}

void mvx_conn_set_pid(struct mvx_conn *c, int32_t pid)
{
	c->pid = pid;
}

void mvx_conn_free(struct mvx_conn *c)
{
	if (!c)
		return;
	while (c->watches) {
		struct watch *w = c->watches;
		c->watches = w->next;
		free(w->path);
		free(w->token);
		free(w);
	}
	while (c->txs)
		tx_remove(c, c->txs);
	if (c->prev)
		c->prev->next = c->next;
	else
		c->s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c->out);
	free(c);
}

void *mvx_conn_user(struct mvx_conn *c)
{
	return c->user;
}

uint32_t mvx_conn_domid(struct mvx_conn *c)
{
	return c->domid;
}

/* ---- durability ---- */

/* 'N': u32 path length, u32 value length, u32 permission count, then the path, the value, and per
 * permission u32 domain and u32 bits. */
struct rec_node {
	uint32_t plen, vlen, nperms;
};

void mvx_store_set_journal(struct mvx_store *s, void (*fn)(void *ud, uint8_t kind, const void *p, size_t len), void *ud)
{
	s->journal = fn;
	s->journal_ud = ud;
}

static void journal_node(struct mvx_store *s, const struct node *n)
{
	if (!s->journal)
		return;
	char path[XENSTORE_ABS_PATH_MAX + 64];
	node_path(n, path, sizeof(path));
	struct rec_node h = { (uint32_t)strlen(path), n->vlen, n->nperms };
	size_t len = sizeof(h) + h.plen + h.vlen + (size_t)h.nperms * 8;
	uint8_t *buf = malloc(len), *p = buf;
	if (!buf)
		return;
	memcpy(p, &h, sizeof(h));
	p += sizeof(h);
	memcpy(p, path, h.plen);
	p += h.plen;
	if (h.vlen)
		memcpy(p, n->value, h.vlen);
	p += h.vlen;
	for (uint32_t i = 0; i < n->nperms; i++) {
		uint32_t w[2] = { n->perms[i].dom, n->perms[i].bits };
		memcpy(p, w, 8);
		p += 8;
	}
	s->journal(s->journal_ud, 'N', buf, len);
	free(buf);
}

static void dump_node(struct mvx_store *s, const struct node *n)
{
	journal_node(s, n);
	for (uint32_t i = 0; i < n->nkids; i++)
		dump_node(s, n->kids[i]);
}

/* The nodes every store starts with, parents first. */
static const char *const initial_paths[] = {
	"/local", "/local/domain", "/local/domain/0", "/local/domain/0/domid", "/local/domain/0/name", "/tool"
};

void mvx_store_dump(struct mvx_store *s)
{
	/* A dump is replayed into a store that starts with the initial nodes: one removed here must be
	 * removed there too, or a compacted record brings back what a client deleted. */
	for (size_t i = 0; s->journal && i < sizeof(initial_paths) / sizeof(initial_paths[0]); i++) {
		const char *path = initial_paths[i], *slash = strrchr(path, '/');
		char parent[32];
		snprintf(parent, sizeof(parent), "%.*s", (int)(slash - path), path);
		if (!lookup(&s->t, path, NULL) && (slash == path || lookup(&s->t, parent, NULL)))
			s->journal(s->journal_ud, 'R', path, strlen(path));
	}
	dump_node(s, s->t.root);
}

/* A path as a client may name one, absolute. */
static bool replay_path_ok(const char *p, size_t len)
{
	if (len == 0 || len > XENSTORE_ABS_PATH_MAX || p[0] != '/' || strlen(p) != len)
		return false;
	if (len == 1)
		return true;
	return valid_chars(p) && !strstr(p, "//") && p[len - 1] != '/';
}

int mvx_store_replay(struct mvx_store *s, uint8_t kind, const void *data, size_t len)
{
	char path[XENSTORE_ABS_PATH_MAX + 1];
	struct ctx x = { .s = s, .t = &s->t, .dom = 0 };
	const uint8_t *p = data;

	if (kind == 'R') {
		if (len == 0 || len > XENSTORE_ABS_PATH_MAX)
			return -EINVAL;
		memcpy(path, p, len);
		path[len] = '\0';
		if (!replay_path_ok(path, len) || len == 1)
			return -EINVAL;
		return op_rm(&x, path) < 0 ? -EINVAL : 0;
	}
	if (kind != 'N' || len < sizeof(struct rec_node))
		return -EINVAL;
	struct rec_node h;
	memcpy(&h, p, sizeof(h));
	if (h.plen > XENSTORE_ABS_PATH_MAX || h.vlen > XENSTORE_PAYLOAD_MAX || h.nperms == 0 || h.nperms > 65536 ||
	    len != sizeof(h) + h.plen + h.vlen + (size_t)h.nperms * 8)
		return -EINVAL;
	p += sizeof(h);
	memcpy(path, p, h.plen);
	path[h.plen] = '\0';
	if (!replay_path_ok(path, h.plen))
		return -EINVAL;
	const uint8_t *val = p + h.plen, *pp = val + h.vlen;
	struct perm *v = malloc(h.nperms * sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (uint32_t i = 0; i < h.nperms; i++) {
		uint32_t w[2];
		memcpy(w, pp + (size_t)i * 8, 8);
		if (w[0] > 0xffff || w[1] > (PERM_R | PERM_W)) {
			free(v);
			return -EINVAL;
		}
		v[i] = (struct perm){ w[0], (uint8_t)w[1] };
	}
	char *copy = h.vlen ? malloc(h.vlen) : NULL;
	struct node *n = NULL;
	if ((h.vlen && !copy) || create(&x, path, &n) < 0) {
		free(v);
		free(copy);
		return -ENOMEM;
	}
	if (h.vlen)
		memcpy(copy, val, h.vlen);
	free(n->value);
	n->value = copy;
	n->vlen = h.vlen;
	owner_add(&s->t, n->perms[0].dom, -1);
	owner_add(&s->t, v[0].dom, 1);
	free(n->perms);
	n->perms = v;
	n->nperms = h.nperms;
	n->gen = ++s->gen;
	return 0;
}

void mvx_domain_restored(struct mvx_store *s, uint32_t domid)
{
	if (domid == 0 || domid >= 0x8000)
		return;
	s->introduced[domid / 8] |= (uint8_t)(1u << (domid % 8));
}
