/* SPDX-License-Identifier: MIT */
/* The first KSM proposal's /dev/ksm interface (2008), for programs written against it: its structs and
 * ioctl numbers, and the same operations as functions. With libmemvisor-preload.so in LD_PRELOAD an
 * unmodified program's open("/dev/ksm") and ioctls are answered by memvisor; without it, call these.
 *
 * Merging is per process here (the seed merged across every registered process): the regions a process
 * registers merge with each other. The functions return 0 or a value, or a negative errno.
 */
#ifndef MEMVISOR_KSM_H
#define MEMVISOR_KSM_H

#include <linux/ioctl.h>
#include <linux/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KSM_API_VERSION 1

#define ksm_control_flags_run 1

struct ksm_memory_region {
	__u32 npages; /* pages from addr */
	__u32 pad;
	__u64 addr;
};

struct ksm_user_scan {
	__u32 pages_to_scan;
	__u32 max_pages_to_merge;
	__u32 flags; /* ksm_control_flags_run, or nothing happens */
};

struct ksm_kthread_info {
	__u32 sleep; /* microseconds between batches */
	__u32 pages_to_scan;
	__u32 max_pages_to_merge;
	__u32 flags; /* ksm_control_flags_run starts the scanner thread, 0 stops it */
};

#define KSMIO 0xAB
#define KSM_GET_API_VERSION _IO(KSMIO, 0x00)
#define KSM_CREATE_SHARED_MEMORY_AREA _IO(KSMIO, 0x01)
#define KSM_CREATE_SCAN _IO(KSMIO, 0x02)
#define KSM_START_STOP_KTHREAD _IOW(KSMIO, 0x03, struct ksm_kthread_info)
#define KSM_GET_INFO_KTHREAD _IOW(KSMIO, 0x04, struct ksm_kthread_info)
#define KSM_REGISTER_MEMORY_REGION _IOW(KSMIO, 0x20, struct ksm_memory_region)
#define KSM_REMOVE_MEMORY_REGION _IO(KSMIO, 0x21)
#define KSM_SCAN _IOW(KSMIO, 0x40, struct ksm_user_scan)

/* open("/dev/ksm", flags): only O_CLOEXEC is looked at. */
int mv_ksm_open(int flags);
int mv_ksm_get_api_version(int ksm_fd);
int mv_ksm_create_shared_memory_area(int ksm_fd);
int mv_ksm_create_scan(int ksm_fd);
/* run with pages_to_scan or max_pages_to_merge 0: -EPERM, as in the seed */
int mv_ksm_start_stop_kthread(int ksm_fd, const struct ksm_kthread_info *info);
int mv_ksm_get_info_kthread(int ksm_fd, struct ksm_kthread_info *info);
int mv_ksm_register_memory_region(int sma_fd, const struct ksm_memory_region *region);
/* Removes every region registered through this fd (closing it does too). */
int mv_ksm_remove_memory_region(int sma_fd);
/* Without ksm_control_flags_run, or with a zero count, nothing is scanned. -EAGAIN with nothing
 * registered. */
int mv_ksm_scan(int scan_fd, const struct ksm_user_scan *scan);
/* close() for these fds when the preload library is not there to see the close. */
int mv_ksm_close(int fd);

#ifdef __cplusplus
}
#endif

#endif
