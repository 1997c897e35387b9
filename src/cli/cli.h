/* SPDX-License-Identifier: MIT */
/* Shared by the memvisor tool's commands. Internal. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define CLI_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline uint64_t cli_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One descriptor over a Unix socket with a one-byte message; -1 on failure. */
int cli_send_fd(int sock, int fd);
int cli_recv_fd(int sock);
/* All of len bytes sent (out) or received on a stream socket: 0, -ECONNRESET at EOF, or -errno. */
int cli_full_io(int fd, void *buf, size_t len, bool out);

void cli_json_string(FILE *f, const char *s);
void cli_human_bytes(char *buf, size_t len, uint64_t b);
int cli_tour(int argc, char **argv, bool json);
int cli_merge(bool json);
int cli_store(int argc, char **argv, bool json);
void cli_store_usage(FILE *f);
int cli_top(int argc, char **argv);
int cli_top_usage(FILE *f);
int cli_run(int argc, char **argv);
int cli_find_beside_exe(const char *const *rel, size_t nrel, const char *probe, char *out, size_t len);
int cli_tour_vchan(FILE *out);
int cli_tour_vchan_proxy(FILE *out);
int cli_xen_libdir(char *out, size_t len);
/* A node of the broker's xenstore, as the toolstack: its length, or -errno. */
int cli_store_read(const char *path, char *out, size_t outlen);
int cli_tour_vchan_peer(const char *role);
int cli_tour_ashmem_client(int sock);
