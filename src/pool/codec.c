/* SPDX-License-Identifier: MIT */
/* Page codecs: the word-pattern coder, and LZ4, LZ4HC and zstd with per-thread state. */
#define _GNU_SOURCE
#include "codec.h"

#include <errno.h>
#include <lz4.h>
#include <lz4hc.h>
#include <pthread.h>
#include <string.h>
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

_Static_assert(MVZ_PAGE == MV_PAGE_SIZE, "one page size");

/* ---- the word-pattern coder ----
 *
 * Encoding of a page, sections back to back:
 *   tags   256 bytes: 2 bits a word, word i in bits 2*(i%4) of byte i/4 (0 zero, 1 exact, 2 partial,
 *          3 miss);
 *   misses 4 bytes for each miss, the word as stored in memory;
 *   slots  4 bits for each exact or partial word, its dictionary slot, two to a byte, low nibble first;
 *   lows   10 bits for each partial word, its low bits, a little-endian bit stream.
 * Section sizes follow from the tags, so the length is checked before a single word is written. The
 * dictionary starts all zeros; a miss or partial word replaces the word in its slot, which is chosen
 * from the upper 22 bits alone (so a partial match is always in the word's own slot). */

enum { WK_WORDS = MVZ_PAGE / 4, WK_TAGS = WK_WORDS / 4, WK_ZERO = 0, WK_EXACT = 1, WK_PARTIAL = 2, WK_MISS = 3 };

static inline unsigned wk_slot(uint32_t w)
{
	return ((w >> 10) * 0x9E3779B1u) >> 28;
}

static inline size_t wk_size(unsigned nmiss, unsigned nslots, unsigned npartial)
{
	return WK_TAGS + 4u * nmiss + (nslots + 1) / 2 + (10u * npartial + 7) / 8;
}

static inline unsigned popcount64(uint64_t x)
{
	x = x - ((x >> 1) & 0x5555555555555555ull);
	x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
	return (unsigned)((x * 0x0101010101010101ull) >> 56);
}

/* Branches on the tag, not arithmetic: a branch-free loop was measured slower on real heaps (the
 * dictionary load then waits on every store before it). */
int mvz_wk_encode(const void *page, void *dst, size_t cap)
{
	uint32_t dict[16] = { 0 }, words[WK_WORDS];
	uint8_t tags[WK_TAGS], slots[WK_WORDS];
	uint16_t lows[WK_WORDS];
	unsigned nm = 0, ns = 0, nl = 0;
	uint8_t *out = dst;

	if (cap < WK_TAGS)
		return -ENOSPC;
	/* Misses go straight to their place in dst, so a page that will not fit stops at the first miss
	 * too many. */
	uint8_t *miss = out + WK_TAGS;
	size_t miss_cap = (cap - WK_TAGS) / 4;
	memcpy(words, page, MVZ_PAGE);
	for (unsigned i = 0; i < WK_WORDS; i += 4) {
		unsigned t = 0;
		for (unsigned k = 0; k < 4; k++) {
			uint32_t w = words[i + k];
			unsigned s = wk_slot(w), tag;
			uint32_t d = dict[s];
			if (w == 0) {
				tag = WK_ZERO;
			} else if (d == w) {
				tag = WK_EXACT;
				slots[ns++] = (uint8_t)s;
			} else if (((d ^ w) >> 10) == 0) {
				tag = WK_PARTIAL;
				slots[ns++] = (uint8_t)s;
				lows[nl++] = (uint16_t)(w & 0x3ff);
				dict[s] = w;
			} else {
				tag = WK_MISS;
				if (nm == miss_cap)
					return -ENOSPC;
				memcpy(miss + 4 * nm++, &w, 4);
				dict[s] = w;
			}
			t |= tag << (2 * k);
		}
		tags[i / 4] = (uint8_t)t;
	}
	size_t need = wk_size(nm, ns, nl);
	if (need > cap)
		return -ENOSPC;
	memcpy(out, tags, WK_TAGS);
	uint8_t *p = miss + 4 * nm;
	for (unsigned j = 0; j + 1 < ns; j += 2)
		*p++ = (uint8_t)(slots[j] | slots[j + 1] << 4);
	if (ns & 1)
		*p++ = slots[ns - 1];
	uint64_t acc = 0;
	unsigned j = 0;
	for (; j + 4 <= nl; j += 4) { /* four lows are five bytes */
		acc = (uint64_t)lows[j] | (uint64_t)lows[j + 1] << 10 | (uint64_t)lows[j + 2] << 20 |
		      (uint64_t)lows[j + 3] << 30;
		for (unsigned b = 0; b < 5; b++)
			*p++ = (uint8_t)(acc >> (8 * b));
	}
	unsigned bits = 0;
	for (acc = 0; j < nl; j++, bits += 10)
		acc |= (uint64_t)lows[j] << bits;
	for (; bits > 0; bits = bits > 8 ? bits - 8 : 0) {
		*p++ = (uint8_t)acc;
		acc >>= 8;
	}
	return (int)need;
}

int mvz_wk_decode(const void *src, size_t len, void *page)
{
	const uint8_t *in = src;
	unsigned nm = 0, ne = 0, np = 0;

	if (!src || len < WK_TAGS || len > MVZ_PAGE)
		return -EIO;
	for (unsigned i = 0; i < WK_TAGS; i += 8) {
		uint64_t b, lo, hi;
		memcpy(&b, in + i, 8);
		lo = b & 0x5555555555555555ull;
		hi = (b >> 1) & 0x5555555555555555ull;
		nm += popcount64(lo & hi);
		ne += popcount64(lo & ~hi);
		np += popcount64(~lo & hi);
	}
	/* The sections' sizes follow from the tags: once the length matches, every cursor below stays
	 * inside its section. */
	if (wk_size(nm, ne + np, np) != len)
		return -EIO;

	const uint8_t *miss = in + WK_TAGS, *slot = miss + 4 * nm, *low = slot + (ne + np + 1) / 2;
	uint32_t dict[16] = { 0 }, words[WK_WORDS];
	unsigned js = 0;
	uint32_t acc = 0, bits = 0;
	for (unsigned i = 0; i < WK_WORDS; i++) {
		unsigned tag = (in[i / 4] >> (2 * (i % 4))) & 3, s;
		uint32_t w;
		switch (tag) {
		case WK_ZERO: w = 0; break;
		case WK_EXACT:
			s = (slot[js / 2] >> (4 * (js & 1))) & 15;
			js++;
			w = dict[s];
			break;
		case WK_PARTIAL:
			s = (slot[js / 2] >> (4 * (js & 1))) & 15;
			js++;
			if (bits < 10) {
				acc |= (uint32_t)*low++ << bits;
				bits += 8;
				if (bits < 10) {
					acc |= (uint32_t)*low++ << bits;
					bits += 8;
				}
			}
			w = (dict[s] & ~0x3ffu) | (acc & 0x3ff);
			acc >>= 10;
			bits -= 10;
			dict[s] = w;
			break;
		default:
			memcpy(&w, miss, 4);
			miss += 4;
			dict[wk_slot(w)] = w;
			break;
		}
		words[i] = w;
	}
	memcpy(page, words, MVZ_PAGE);
	return 0;
}

/* ---- LZ4, LZ4HC, zstd: per-thread state, freed at thread exit ---- */

static __thread LZ4_stream_t *tls_lz4;
static __thread LZ4_streamHC_t *tls_lz4hc;
static __thread ZSTD_CCtx *tls_cctx;
static __thread ZSTD_DCtx *tls_dctx;
static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void tls_free(void *unused)
{
	(void)unused;
	LZ4_freeStream(tls_lz4);
	LZ4_freeStreamHC(tls_lz4hc);
	ZSTD_freeCCtx(tls_cctx);
	ZSTD_freeDCtx(tls_dctx);
	tls_lz4 = NULL;
	tls_lz4hc = NULL;
	tls_cctx = NULL;
	tls_dctx = NULL;
}

static void tls_init(void)
{
	pthread_key_create(&tls_key, tls_free);
}

static void tls_touch(void)
{
	pthread_once(&tls_once, tls_init);
	pthread_setspecific(tls_key, (void *)1); /* so the destructor runs at thread exit */
}

int mvz_lz4_encode(const void *page, void *dst, size_t cap, int acceleration)
{
	if (!tls_lz4) {
		tls_touch();
		if (!(tls_lz4 = LZ4_createStream()))
			return -ENOMEM;
	}
	/* Plain LZ4 blocks from a reused stream, without clearing its 16 KiB of state for each page. */
	LZ4_resetStream_fast(tls_lz4);
	int n = LZ4_compress_fast_continue(tls_lz4, page, dst, MVZ_PAGE, (int)cap, acceleration);
	return n > 0 ? n : -ENOSPC;
}

int mvz_lz4hc_encode(const void *page, void *dst, size_t cap, int level)
{
	if (!tls_lz4hc) {
		tls_touch();
		if (!(tls_lz4hc = LZ4_createStreamHC()))
			return -ENOMEM;
	}
	LZ4_resetStreamHC_fast(tls_lz4hc, level);
	int n = LZ4_compress_HC_continue(tls_lz4hc, page, dst, MVZ_PAGE, (int)cap);
	return n > 0 ? n : -ENOSPC;
}

int mvz_lz4_decode(const void *src, size_t len, void *page)
{
	if (!src || len == 0 || len > (size_t)LZ4_compressBound(MVZ_PAGE))
		return -EIO;
	return LZ4_decompress_safe(src, page, (int)len, MVZ_PAGE) == MVZ_PAGE ? 0 : -EIO;
}

int mvz_zstd_encode(const void *page, void *dst, size_t cap, int level, const struct ZSTD_CDict_s *cdict)
{
	if (!tls_cctx) {
		tls_touch();
		if (!(tls_cctx = ZSTD_createCCtx()))
			return -ENOMEM;
	}
	size_t n = cdict ? ZSTD_compress_usingCDict(tls_cctx, dst, cap, page, MVZ_PAGE, cdict)
			 : ZSTD_compressCCtx(tls_cctx, dst, cap, page, MVZ_PAGE, level);
	return ZSTD_isError(n) ? -ENOSPC : (int)n;
}

int mvz_zstd_decode(const void *src, size_t len, void *page, const struct ZSTD_DDict_s *ddict)
{
	if (!src || len == 0)
		return -EIO;
	if (!tls_dctx) {
		tls_touch();
		if (!(tls_dctx = ZSTD_createDCtx()))
			return -ENOMEM;
	}
	size_t n = ddict ? ZSTD_decompress_usingDDict(tls_dctx, page, MVZ_PAGE, src, len, ddict)
			 : ZSTD_decompressDCtx(tls_dctx, page, MVZ_PAGE, src, len);
	return ZSTD_isError(n) || n != MVZ_PAGE ? -EIO : 0;
}

int mvz_decode(unsigned fmt, const void *src, size_t len, void *page, const struct ZSTD_DDict_s *ddict)
{
	switch (fmt) {
	case MVZ_FMT_LZ4: return mvz_lz4_decode(src, len, page);
	case MVZ_FMT_ZSTD: return mvz_zstd_decode(src, len, page, ddict);
	case MVZ_FMT_WK: return mvz_wk_decode(src, len, page);
	default: return -EIO;
	}
}
