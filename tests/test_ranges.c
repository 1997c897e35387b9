/* SPDX-License-Identifier: MIT */
/* Pin/unpin range algebra against an independent model of the kernel driver's range list.
 * The model keeps ranges as the driver does (sorted list, purged flag, LRU sequence); the code under test
 * keeps per-page words. Purging runs through the broker's real registry and purge path in-process. */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "memvisor/memvisor.h"
#include "regions/ctl.h"
#include "regions/region.h"
#include "regions/registry.h"

#define NP 48
#define PG MV_PAGE_SIZE

/* ---- the model ---- */
struct mrange {
	int64_t s, e;
	int purged;
	uint64_t lru;
};
static struct mrange M[NP + 4];
static int MN;
static uint64_t Mseq;
static int Mzero[NP]; /* page contents were punched */

static void m_reset(void)
{
	MN = 0;
	Mseq = 0;
	memset(Mzero, 0, sizeof(Mzero));
}

static void m_del(int i)
{
	memmove(&M[i], &M[i + 1], (size_t)(MN - i - 1) * sizeof(M[0]));
	MN--;
}

static void m_add(int64_t s, int64_t e, int purged, uint64_t lru)
{
	int i = 0;
	while (i < MN && M[i].s < s)
		i++;
	memmove(&M[i + 1], &M[i], (size_t)(MN - i) * sizeof(M[0]));
	M[i] = (struct mrange){ s, e, purged, lru };
	MN++;
}

static int overlaps(const struct mrange *r, int64_t a, int64_t b)
{
	return r->s <= b && r->e >= a;
}

static int m_pin(int64_t a, int64_t b)
{
	int ret = 0;
	for (int i = 0; i < MN; i++) {
		struct mrange *r = &M[i];
		if (!overlaps(r, a, b))
			continue;
		ret |= r->purged;
		if (r->s >= a && r->e <= b) {
			m_del(i--);
		} else if (r->s >= a) {
			r->s = b + 1;
		} else if (r->e <= b) {
			r->e = a - 1;
		} else {
			int64_t e = r->e;
			int p = r->purged;
			r->e = a - 1;
			m_add(b + 1, e, p, ++Mseq);
			break;
		}
	}
	return ret;
}

static void m_unpin(int64_t a, int64_t b)
{
	int purged = 0;
	for (int i = 0; i < MN; i++)
		if (M[i].s <= a && M[i].e >= b)
			return;
restart:
	for (int i = 0; i < MN; i++)
		if (overlaps(&M[i], a, b)) {
			a = a < M[i].s ? a : M[i].s;
			b = b > M[i].e ? b : M[i].e;
			purged |= M[i].purged;
			m_del(i);
			goto restart;
		}
	m_add(a, b, purged, ++Mseq);
}

static int m_status(int64_t a, int64_t b)
{
	for (int i = 0; i < MN; i++)
		if (overlaps(&M[i], a, b))
			return MV_IS_UNPINNED;
	return MV_IS_PINNED;
}

static uint64_t m_purge(uint64_t target)
{
	uint64_t done = 0;
	while (done < target) {
		int best = -1;
		for (int i = 0; i < MN; i++)
			if (!M[i].purged && (best < 0 || M[i].lru < M[best].lru))
				best = i;
		if (best < 0)
			break;
		M[best].purged = 1;
		for (int64_t p = M[best].s; p <= M[best].e; p++)
			Mzero[p] = 1;
		done += (uint64_t)(M[best].e - M[best].s + 1);
	}
	return done;
}

/* ---- the code under test ---- */
struct fixture {
	mv_region *r;
	unsigned char *data;
	struct mvb_registry g;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	setenv("MEMVISOR_AUTOSTART", "0", 1);
	setenv("MEMVISOR_RUNTIME_DIR", "/nonexistent/memvisor-test", 1);
	assert_int_equal(mv_region_new("ranges", NP * PG - 100, &f->r), 0);
	assert_int_equal(mv_region_map(f->r, PROT_READ | PROT_WRITE, (void **)&f->data), 0);
	for (int p = 0; p < NP; p++)
		memset(f->data + (size_t)p * PG, p + 1, PG);
	assert_int_equal(mvb_registry_init(&f->g), 0);
	m_reset();
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	mvb_registry_fini(&f->g);
	mv_region_unmap(f->r, f->data);
	mv_region_unref(f->r);
	free(f);
	return 0;
}

static uint64_t purge(struct fixture *f, uint64_t pages)
{
	struct mvb_region *br;
	bool created;
	uint64_t runs;
	/* Hand the region to the in-process broker registry, as an unpin would. */
	assert_int_equal(mvb_attach(&f->g, mv_region_fd(f->r), f->r->ctl_fd, &br, &created), 0);
	return mvb_purge(&f->g, pages, true, &runs);
}

static void compare(struct fixture *f)
{
	for (int p = 0; p < NP; p++) {
		unsigned st = MV_PG_STATE(atomic_load(&f->r->view.pages[p]));
		int want = MV_PG_PINNED;
		for (int i = 0; i < MN; i++)
			if (M[i].s <= p && M[i].e >= p)
				want = M[i].purged ? MV_PG_PURGED : MV_PG_UNPINNED;
		if (st != (unsigned)want)
			fail_msg("page %d: state %u, model %d", p, st, want);
		unsigned char c = f->data[(size_t)p * PG + 17];
		if (Mzero[p] ? c != 0 : c != (unsigned char)(p + 1))
			fail_msg("page %d: byte %u, model says %s", p, c, Mzero[p] ? "zero" : "intact");
	}
}

static int pin(struct fixture *f, int64_t a, int64_t b)
{
	int r = mv_region_pin(f->r, (size_t)a * PG, (size_t)(b - a + 1) * PG);
	int m = m_pin(a, b);
	assert_int_equal(r, m);
	/* Rewrite what was lost so later comparisons stay meaningful. */
	for (int64_t p = a; p <= b; p++)
		if (Mzero[p]) {
			memset(f->data + (size_t)p * PG, (int)p + 1, PG);
			Mzero[p] = 0;
		}
	compare(f);
	return r;
}

static void unpin(struct fixture *f, int64_t a, int64_t b)
{
	assert_int_equal(mv_region_unpin(f->r, (size_t)a * PG, (size_t)(b - a + 1) * PG), 0);
	m_unpin(a, b);
	compare(f);
}

static void status(struct fixture *f, int64_t a, int64_t b)
{
	assert_int_equal(mv_region_pin_status(f->r, (size_t)a * PG, (size_t)(b - a + 1) * PG), m_status(a, b));
}

static void do_purge(struct fixture *f, uint64_t pages)
{
	uint64_t got = purge(f, pages), want = m_purge(pages);
	assert_int_equal(got, want);
	compare(f);
}

/* ---- cases from the driver ---- */

static void test_pin_case1_subsumes(void **state)
{
	struct fixture *f = *state;
	unpin(f, 4, 7);
	assert_int_equal(pin(f, 2, 9), MV_NOT_PURGED);
	status(f, 0, NP - 1);
	assert_int_equal(MN, 0);
}

static void test_pin_case2_front(void **state)
{
	struct fixture *f = *state;
	unpin(f, 4, 9);
	pin(f, 2, 5);
	status(f, 4, 5);
	status(f, 6, 9);
}

static void test_pin_case3_rear(void **state)
{
	struct fixture *f = *state;
	unpin(f, 4, 9);
	pin(f, 8, 12);
	status(f, 8, 9);
	status(f, 4, 7);
}

static void test_pin_case4_middle_and_lru(void **state)
{
	struct fixture *f = *state;
	unpin(f, 0, 9);   /* oldest */
	unpin(f, 20, 21); /* newer */
	pin(f, 4, 5);     /* leaves 0-3 (old LRU slot) and 6-9 (new slot, after 20-21) */
	do_purge(f, 4);   /* takes 0-3 only */
	do_purge(f, 1);   /* then 20-21, before 6-9 */
	do_purge(f, 1);
	assert_int_equal(pin(f, 0, NP - 1), MV_WAS_PURGED);
}

static void test_unpin_merges_overlaps_not_neighbours(void **state)
{
	struct fixture *f = *state;
	unpin(f, 2, 4);
	unpin(f, 5, 6); /* adjacent: stays separate */
	assert_int_equal(MN, 2);
	unpin(f, 4, 5); /* overlaps both: one range 2-6 */
	assert_int_equal(MN, 1);
	do_purge(f, 1);
}

static void test_unpin_subsumed_keeps_lru(void **state)
{
	struct fixture *f = *state;
	unpin(f, 0, 7);
	unpin(f, 10, 11);
	unpin(f, 2, 3); /* inside 0-7: no change, 0-7 stays oldest */
	do_purge(f, 1);
}

static void test_merge_inherits_purged_mark(void **state)
{
	struct fixture *f = *state;
	unpin(f, 0, 3);
	do_purge(f, 4);
	unpin(f, 2, 7); /* merges with the purged range: whole 0-7 carries the mark, 4-7 keep data */
	assert_int_equal(pin(f, 6, 7), MV_WAS_PURGED);
	do_purge(f, NP); /* marked ranges are off the LRU: nothing to purge */
}

static void test_pin_twice_and_purge_twice(void **state)
{
	struct fixture *f = *state;
	unpin(f, 0, NP - 1);
	do_purge(f, NP);
	do_purge(f, NP);
	assert_int_equal(pin(f, 0, NP - 1), MV_WAS_PURGED);
	assert_int_equal(pin(f, 0, NP - 1), MV_NOT_PURGED);
}

static void test_range_rules(void **state)
{
	struct fixture *f = *state;
	size_t end = NP * PG;

	/* len 0 means "to the end", from any aligned offset within the rounded size */
	assert_int_equal(mv_region_unpin(f->r, 8 * PG, 0), 0);
	m_unpin(8, NP - 1);
	compare(f);
	assert_int_equal(mv_region_pin_status(f->r, end - PG, 0), MV_IS_UNPINNED);
	assert_int_equal(mv_region_pin(f->r, 0, 0), MV_NOT_PURGED);
	m_pin(0, NP - 1);
	/* misaligned offset or length */
	assert_int_equal(mv_region_pin(f->r, 1, PG), -EINVAL);
	assert_int_equal(mv_region_unpin(f->r, 0, PG + 1), -EINVAL);
	assert_int_equal(mv_region_pin_status(f->r, PG / 2, 0), -EINVAL);
	/* out of range, also at the exact end, and overflowing */
	assert_int_equal(mv_region_pin(f->r, end, PG), -EINVAL);
	assert_int_equal(mv_region_pin(f->r, end - PG, 2 * PG), -EINVAL);
	assert_int_equal(mv_region_unpin(f->r, end, 0), -EINVAL);
	assert_int_equal(mv_region_unpin(f->r, end + PG, 0), -EINVAL);
	assert_int_equal(mv_region_pin(f->r, PG, SIZE_MAX - PG + 1), -EINVAL);
	assert_int_equal(mv_region_unpin(f->r, SIZE_MAX & ~(size_t)(PG - 1), PG), -EINVAL);
	/* nothing changed */
	compare(f);
	assert_int_equal(mv_region_pin_status(f->r, 0, 0), MV_IS_PINNED);
}

static void test_status_any_page(void **state)
{
	struct fixture *f = *state;
	unpin(f, 10, 10);
	status(f, 0, 9);
	status(f, 0, 10);
	status(f, 10, 20);
	status(f, 11, 20);
}

/* Random sequences, every step compared with the model. */
static void test_random_against_model(void **state)
{
	struct fixture *f = *state;

	for (unsigned seed = 1; seed <= 6; seed++) {
		srandom(seed);
		for (int step = 0; step < 4000; step++) {
			int64_t a = random() % NP, b = a + random() % (random() % 4 ? 6 : NP);
			if (b >= NP)
				b = NP - 1;
			switch (random() % 9) {
			case 0:
			case 1:
			case 2: pin(f, a, b); break;
			case 3:
			case 4:
			case 5: unpin(f, a, b); break;
			case 6: status(f, a, b); break;
			case 7: do_purge(f, (uint64_t)(random() % 8)); break;
			case 8:
				if (random() % 8 == 0)
					do_purge(f, NP);
				break;
			}
		}
		pin(f, 0, NP - 1);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_pin_case1_subsumes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pin_case2_front, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pin_case3_rear, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pin_case4_middle_and_lru, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unpin_merges_overlaps_not_neighbours, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unpin_subsumed_keeps_lru, setup, teardown),
		cmocka_unit_test_setup_teardown(test_merge_inherits_purged_mark, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pin_twice_and_purge_twice, setup, teardown),
		cmocka_unit_test_setup_teardown(test_range_rules, setup, teardown),
		cmocka_unit_test_setup_teardown(test_status_any_page, setup, teardown),
		cmocka_unit_test_setup_teardown(test_random_against_model, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
