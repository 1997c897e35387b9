/* SPDX-License-Identifier: MIT */
/* libFuzzer: the page store's decoders on stored bytes that may be corrupt or cut short, and every
 * encoder's output read back. The first byte picks the case: decode as word patterns, LZ4 or zstd
 * (any bytes: an error or one whole page, never a read or write outside the buffers); or encode the
 * rest as a page (zero-padded) with each codec and decode it (it must come back exact). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pool/codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t page[MVZ_PAGE], out[MVZ_PAGE], enc[MVZ_PAGE + 64];

	if (size < 1)
		return 0;
	unsigned op = data[0] % 5;
	data++;
	size--;
	if (op < 4) {
		/* A copy of exactly the stored length, so that reading past it is caught. */
		uint8_t *copy = size ? malloc(size) : NULL;
		if (size && !copy)
			return 0;
		if (size)
			memcpy(copy, data, size);
		unsigned fmt = op == 0 ? MVZ_FMT_WK : op == 1 ? MVZ_FMT_LZ4 : op == 2 ? MVZ_FMT_ZSTD : 0;
		int r = mvz_decode(fmt, copy, size, out, NULL);
		free(copy);
		if (r != 0 && r != -EIO && r != -ENOMEM)
			__builtin_trap();
		if (fmt == 0 && r != -EIO)
			__builtin_trap();
		return 0;
	}
	memset(page, 0, sizeof(page));
	memcpy(page, data, size < MVZ_PAGE ? size : MVZ_PAGE);
	for (int c = 0; c < 5; c++) {
		unsigned fmt = c == 0 ? MVZ_FMT_WK : c == 4 ? MVZ_FMT_ZSTD : MVZ_FMT_LZ4;
		int n = c == 0   ? mvz_wk_encode(page, enc, sizeof(enc))
			: c == 1 ? mvz_lz4_encode(page, enc, sizeof(enc), 1)
			: c == 2 ? mvz_lz4_encode(page, enc, sizeof(enc), 8)
			: c == 3 ? mvz_lz4hc_encode(page, enc, sizeof(enc), 4)
				 : mvz_zstd_encode(page, enc, sizeof(enc), 1, NULL);
		if (n == -ENOSPC && c == 0)
			continue; /* the word coder may not fit a page of misses in a page and a bit */
		if (n <= 0 || (size_t)n > sizeof(enc))
			__builtin_trap();
		if (mvz_decode(fmt, enc, (size_t)n, out, NULL) != 0 || memcmp(out, page, MVZ_PAGE))
			__builtin_trap();
		/* And cut short by one byte, it is an error. */
		if (mvz_decode(fmt, enc, (size_t)n - 1, out, NULL) != -EIO)
			__builtin_trap();
	}
	return 0;
}
