/* SPDX-License-Identifier: MIT */
/* The page codecs behind the store: each encodes one 4 KiB page into at most cap bytes and decodes
 * exactly what it encoded. Decoders take untrusted bytes: anything but a complete, consistent encoding
 * of a page is -EIO, never a read or write outside the buffers. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"

#define MVZ_PAGE 4096u

/* How a stored page was encoded: recorded with the page, so that a load picks the decoder the store
 * used, whatever the store's policy is now. */
enum mvz_format {
	MVZ_FMT_LZ4 = 1,  /* an LZ4 block (LZ4 and LZ4HC write the same format) */
	MVZ_FMT_ZSTD = 2, /* a zstd frame, with the store's dictionary if it has one */
	MVZ_FMT_WK = 3,   /* the word-pattern coder below */
};

/* The word-pattern coder (after Wilson and Kaplan's WKdm): the page as 1024 32-bit words, each a zero,
 * an exact or partial (same upper 22 bits) match of one of 16 recently seen words, or a miss. Heaps are
 * mostly pointers and small integers, which this catches at several times LZ4's speed.
 * Returns the encoded size, or -ENOSPC when it would not fit in cap bytes. */
MV_HIDDEN int mvz_wk_encode(const void *page, void *dst, size_t cap);
/* 0, or -EIO when src is not exactly one encoded page. */
MV_HIDDEN int mvz_wk_decode(const void *src, size_t len, void *page);

/* LZ4 through a per-thread stream with a fast reset (resetting 16 KiB of state per 4 KiB page was the
 * largest avoidable cost); acceleration as LZ4's (1: default). Size, or -ENOSPC, or -ENOMEM. */
MV_HIDDEN int mvz_lz4_encode(const void *page, void *dst, size_t cap, int acceleration);
/* LZ4HC at level (LZ4's HC levels), per-thread state. Decodes as LZ4. */
MV_HIDDEN int mvz_lz4hc_encode(const void *page, void *dst, size_t cap, int level);
MV_HIDDEN int mvz_lz4_decode(const void *src, size_t len, void *page);

struct ZSTD_CDict_s;
struct ZSTD_DDict_s;
/* zstd at level, or with cdict (which carries its level) when not NULL; per-thread context. */
MV_HIDDEN int mvz_zstd_encode(const void *page, void *dst, size_t cap, int level, const struct ZSTD_CDict_s *cdict);
MV_HIDDEN int mvz_zstd_decode(const void *src, size_t len, void *page, const struct ZSTD_DDict_s *ddict);

/* The decoder for fmt: 0, -EIO for bytes that are not one page in that format (or an unknown fmt),
 * -ENOMEM when a per-thread context cannot be made. */
MV_HIDDEN int mvz_decode(unsigned fmt, const void *src, size_t len, void *page, const struct ZSTD_DDict_s *ddict);
