/* SPDX-License-Identifier: MIT */
/* libFuzzer: `memvisor merge` reading a board file any process of the user may have written. */
#include <stdint.h>
#include <string.h>

#include "merge/board.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mvm_merge_board b;
	if (mvm_board_decode(data, size, &b) == 0) {
		if (size != sizeof(b) || b.magic != MV_BOARD_MAGIC || (b.seq & 1))
			__builtin_trap();
		size_t n = strnlen(b.partition, sizeof(b.partition));
		if (n == sizeof(b.partition))
			__builtin_trap(); /* the name must come back terminated */
		for (size_t i = 0; i < n; i++)
			if (b.partition[i] < ' ' || b.partition[i] > '~')
				__builtin_trap();
	}
	return 0;
}
