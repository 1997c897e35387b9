/* SPDX-License-Identifier: MIT */
/* The gate between the application's mapping changes and a merge's last check and mmap
 * (src/merge/merge_gate.c): each side waits for the other, a thread never waits for itself (and a
 * signal handler's call waits with a thread that waits), a forked child is not held by its parent's
 * other threads, and under threads hammering both sides the two never overlap. */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "merge/merge_gate.h"

static void pause_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static atomic_int stage;

static void *closer(void *arg)
{
	(void)arg;
	bool closed = mvm_gate_close();
	atomic_store(&stage, 2);
	mvm_gate_open(closed);
	return (void *)(uintptr_t)closed;
}

static void *passer(void *arg)
{
	(void)arg;
	mvm_gate_pass_begin();
	atomic_store(&stage, 2);
	mvm_gate_pass_end();
	return NULL;
}

static void test_closing_waits_for_a_pass(void **state)
{
	(void)state;
	atomic_store(&stage, 0);
	mvm_gate_pass_begin();
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, closer, NULL), 0);
	pause_ms(100);
	assert_int_equal(atomic_load(&stage), 0); /* still waiting for the pass */
	mvm_gate_pass_end();
	void *closed;
	assert_int_equal(pthread_join(t, &closed), 0);
	assert_int_equal(atomic_load(&stage), 2);
	assert_true(closed != NULL);
}

static void test_pass_waits_for_a_closing(void **state)
{
	(void)state;
	atomic_store(&stage, 0);
	bool closed = mvm_gate_close();
	assert_true(closed);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, passer, NULL), 0);
	pause_ms(100);
	assert_int_equal(atomic_load(&stage), 0);
	mvm_gate_open(closed);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(atomic_load(&stage), 2);
}

/* A signal handler's munmap inside a pass, or the engine's own mapping calls inside a closing, must go
 * straight through: the thread would otherwise wait for itself. */
static void test_a_thread_never_waits_for_itself(void **state)
{
	(void)state;
	mvm_gate_pass_begin();
	mvm_gate_pass_begin();
	bool inner = mvm_gate_close(); /* inside a pass: does not close */
	assert_false(inner);
	mvm_gate_open(inner);
	mvm_gate_pass_end();
	mvm_gate_pass_end();
	bool closed = mvm_gate_close();
	assert_true(closed);
	mvm_gate_pass_begin();
	mvm_gate_pass_end();
	mvm_gate_open(closed);
	/* unbalanced ends are ignored: the gate is open for the others afterwards */
	mvm_gate_pass_end();
	atomic_store(&stage, 0);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, closer, NULL), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(atomic_load(&stage), 2);
}

/* A signal handler's munmap on a thread that is still waiting for its pass waits as well. */
static atomic_int handler_passed;

static void on_signal(int sig)
{
	(void)sig;
	mvm_gate_pass_begin();
	atomic_store(&handler_passed, 1);
	mvm_gate_pass_end();
}

static void test_handler_waits_with_its_thread(void **state)
{
	(void)state;
	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(SIGUSR1, &sa, NULL), 0);
	atomic_store(&stage, 0);
	atomic_store(&handler_passed, 0);
	bool closed = mvm_gate_close();
	assert_true(closed);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, passer, NULL), 0);
	pause_ms(50); /* the thread is waiting for its pass */
	assert_int_equal(pthread_kill(t, SIGUSR1), 0);
	pause_ms(100);
	assert_int_equal(atomic_load(&handler_passed), 0);
	assert_int_equal(atomic_load(&stage), 0);
	mvm_gate_open(closed);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(atomic_load(&handler_passed), 1);
	assert_int_equal(atomic_load(&stage), 2);
	signal(SIGUSR1, SIG_DFL);
}

static atomic_bool holding, release;

static void *hold_a_pass(void *arg)
{
	(void)arg;
	mvm_gate_pass_begin();
	atomic_store(&holding, true);
	while (!atomic_load(&release))
		pause_ms(1);
	mvm_gate_pass_end();
	return NULL;
}

static void test_fork_child_is_not_held(void **state)
{
	(void)state;
	atomic_store(&holding, false);
	atomic_store(&release, false);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, hold_a_pass, NULL), 0);
	while (!atomic_load(&holding))
		pause_ms(1);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(10); /* a child held by the thread that did not come along would hang here */
		bool closed = mvm_gate_close();
		mvm_gate_open(closed);
		_exit(closed ? 0 : 3);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	atomic_store(&release, true);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* Threads that pass and threads that close, as fast as they can: a pass and a closing never overlap,
 * and every one of them gets through. */
enum { ROUNDS = 20000 };
static atomic_int passing, closing;
static atomic_uint overlaps;
static atomic_uint done_rounds;

static void *stress_passer(void *arg)
{
	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		mvm_gate_pass_begin();
		atomic_fetch_add(&passing, 1);
		if (atomic_load(&closing))
			atomic_fetch_add(&overlaps, 1);
		if (i % 64 == 0) { /* a nested pass, as a signal handler's munmap would make */
			mvm_gate_pass_begin();
			mvm_gate_pass_end();
		}
		atomic_fetch_sub(&passing, 1);
		mvm_gate_pass_end();
		atomic_fetch_add(&done_rounds, 1);
	}
	return NULL;
}

static void *stress_closer(void *arg)
{
	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		bool closed = mvm_gate_close();
		if (!closed)
			atomic_fetch_add(&overlaps, 1000); /* this thread is in no pass: it must close */
		atomic_fetch_add(&closing, 1);
		if (atomic_load(&passing))
			atomic_fetch_add(&overlaps, 1);
		atomic_fetch_sub(&closing, 1);
		mvm_gate_open(closed);
		atomic_fetch_add(&done_rounds, 1);
	}
	return NULL;
}

static void test_stress_never_overlaps(void **state)
{
	(void)state;
	enum { PASSERS = 3, CLOSERS = 2 };
	pthread_t t[PASSERS + CLOSERS];
	for (int i = 0; i < PASSERS + CLOSERS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, i < PASSERS ? stress_passer : stress_closer, NULL), 0);
	for (int i = 0; i < PASSERS + CLOSERS; i++)
		assert_int_equal(pthread_join(t[i], NULL), 0);
	assert_int_equal(atomic_load(&overlaps), 0);
	assert_int_equal(atomic_load(&done_rounds), (PASSERS + CLOSERS) * ROUNDS);
	assert_int_equal(atomic_load(&passing), 0);
	assert_int_equal(atomic_load(&closing), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_closing_waits_for_a_pass),
		cmocka_unit_test(test_pass_waits_for_a_closing),
		cmocka_unit_test(test_a_thread_never_waits_for_itself),
		cmocka_unit_test(test_handler_waits_with_its_thread),
		cmocka_unit_test(test_fork_child_is_not_held),
		cmocka_unit_test(test_stress_never_overlaps),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
