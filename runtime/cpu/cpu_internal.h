/* cpu_internal.h — what the CPU devices' files share: the kernel tables of the two
 * precisions (kernels_fp.c) for the device (device_cpu.c) to install. */
#ifndef POC_CPU_INTERNAL_H
#define POC_CPU_INTERNAL_H

#include <stddef.h>

#include "device.h"

/* Loops with less work than this (in multiply-adds, roughly) run on one thread: waking a
 * team costs more than they do. */
#define CPU_PAR_MIN ((size_t)1 << 15)

/* The CPU loss head's blocking (see poc_device.head_*): logits in flight per block stay
 * under CPU_HEAD_BLOCK values (8 MiB in fp32), small enough to stay in the last-level cache
 * between the GEMM that writes a block and the two that read it back. bench/model measured
 * this best on a 2-core EPYC: 384 rows × 4096 columns and 768 × 2048 both beat their
 * neighbours by 5–15%. */
#define CPU_HEAD_ROWS 1024
#define CPU_HEAD_BLOCK ((size_t)1 << 21)

/* Fills every member of k with the float (_f32) or double (_f64) kernels. */
void poc_cpu_kernels_f32(poc_kernels *k);
void poc_cpu_kernels_f64(poc_kernels *k);

#endif
