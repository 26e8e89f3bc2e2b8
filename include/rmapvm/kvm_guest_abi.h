/* kvm_guest_abi.h: the contract between the rmapvm VMM and its guest: memory layout, ports, shared pages. */
#ifndef RMAPVM_KVM_GUEST_ABI_H
#define RMAPVM_KVM_GUEST_ABI_H

/*
 * Freestanding: included by the guest (src/kvm/guest, -DRMAPVM_FREESTANDING)
 * and by the VMM. Bump GUEST_ABI_VERSION whenever a layout below changes.
 *
 * Guest physical layout (identity mapped, user-accessible, 2 MiB pages or
 * 1 GiB where the guest CPUID offers them):
 *
 *   0x0000_1000  GDT                           (host-built)
 *   0x0000_2000  64-bit TSS + I/O bitmap       (host-built; the bitmap opens the protocol ports)
 *   0x0000_5000  struct guest_params           (host writes, guest reads)
 *   0x0000_6000  struct guest_vcpu_page[64]    (one 4 KiB page per vCPU)
 *   0x0010_0000  page tables: PML4, PDPT, PDs  (host-built)
 *   0x0040_0000  guest code (flat binary, at most 2 MiB)
 *   0x0060_0000  vCPU stacks, GUEST_STACK_SIZE each
 *   0x00a0_0000  page list of host write commands (GUEST_F_HOST_CMDS), u32 each
 *   0x0100_0000  shadow stamps: one u64 per RAM page, the guest's own record
 *                of the last stamp it wrote (what "verify" compares against)
 *   GUEST_RAM_GPA (1 GiB)  RAM: the workload region, split over memslots
 *
 * Everything below GUEST_RAM_GPA lives in memslot 0 ("system"); RAM is in
 * memslots 1..N. Both are guest memory: both are dirty-logged and migrated.
 */
#include <stdint.h>
#include "rmapvm/workload.h"

#define GUEST_ABI_VERSION 2
#define GUEST_PARAMS_MAGIC 0x52564d50u /* "PMVR" */

#define GUEST_GDT_GPA	    0x1000ull
#define GUEST_TSS_GPA	    0x2000ull
#define GUEST_TSS_IOMAP_OFF 0x68u	/* I/O bitmap right after the 104-byte TSS */
#define GUEST_TSS_LIMIT	    (GUEST_TSS_IOMAP_OFF + 0x2000u) /* bitmap + 0xff terminator byte */
#define GUEST_PARAMS_GPA    0x5000ull
#define GUEST_VCPU_GPA	    0x6000ull
#define GUEST_MAX_VCPUS	    64
#define GUEST_PT_GPA	    0x100000ull
#define GUEST_PT_END	    0x400000ull
#define GUEST_CODE_GPA	    0x400000ull
#define GUEST_CODE_MAX	    0x200000ull
#define GUEST_STACK_GPA	    0x600000ull
#define GUEST_STACK_SIZE    0x10000ull
#define GUEST_LIST_GPA	    0xa00000ull
#define GUEST_SHADOW_GPA    0x1000000ull
#define GUEST_LIST_MAX	    ((GUEST_SHADOW_GPA - GUEST_LIST_GPA) / 4) /* u32 page numbers */
#define GUEST_RAM_GPA	    0x40000000ull
#define GUEST_MAX_GPA	    (512ull << 30) /* one PDPT */

/* GDT selectors. PVM requires the user selectors to equal the host's (Linux) ones. */
#define GUEST_SEL_KCODE 0x10
#define GUEST_SEL_KDATA 0x18
#define GUEST_SEL_UDATA 0x2b
#define GUEST_SEL_UCODE 0x33
#define GUEST_SEL_TSS	0x40

/* Protocol ports: `out %eax, %dx`, 32-bit, from CPL3 (allowed by the TSS I/O bitmap). */
#define GUEST_PORT_SYNC	 0x500 /* value: the round just finished; details in the vCPU page */
#define GUEST_PORT_DONE	 0x501 /* value: 0; the vCPU finished (verification passed if asked) */
#define GUEST_PORT_FAIL	 0x502 /* value: enum guest_fail; details in the vCPU page */
#define GUEST_PORT_PRINT 0x503 /* value: length of the text in the vCPU page's print buffer */
#define GUEST_PORT_FIRST GUEST_PORT_SYNC
#define GUEST_NR_PORTS	 4

/* QEMU (multiboot build) ports: debugcon and isa-debug-exit. */
#define GUEST_QEMU_DEBUGCON 0xe9
#define GUEST_QEMU_EXIT	    0xf4

enum guest_fail {
	GUEST_FAIL_NONE = 0,
	GUEST_FAIL_BAD_PARAMS = 1,   /* magic, version or layout does not fit */
	GUEST_FAIL_READ_MISMATCH = 2, /* a read found a stamp other than the last one written */
	GUEST_FAIL_VERIFY = 3,	     /* final verification: page stamp != shadow stamp */
	GUEST_FAIL_BAD_STAMP = 4,    /* stamp names another vCPU, page or a future round */
	GUEST_FAIL_FPU = 5,	     /* xmm7 lost its value: FPU state was not carried over */
};

/* guest_params.flags */
#define GUEST_F_HOST_ROUNDS (1u << 0) /* stamp with params->round (host-driven); else own counter */
#define GUEST_F_VERIFY_READS (1u << 1) /* every read checks the page against the shadow */
#define GUEST_F_VERIFY_END   (1u << 2) /* verify the whole region before reporting done */
#define GUEST_F_SYNC_EXITS   (1u << 3) /* exit to the host (GUEST_PORT_SYNC) after each batch */
#define GUEST_F_HOST_CMDS    (1u << 4) /* no workload: run the host's write commands (cmd_*) */

/* guest_params - written by the host before the first run (round/stop also later). */
struct guest_params {
	uint32_t magic;		    /* GUEST_PARAMS_MAGIC */
	uint32_t abi_version;	    /* GUEST_ABI_VERSION */
	uint32_t nr_vcpus;	    /* vCPUs that run the workload */
	uint32_t flags;		    /* GUEST_F_* */
	uint64_t ram_gpa;	    /* first RAM byte (GUEST_RAM_GPA) */
	uint64_t ram_pages;	    /* RAM size in 4 KiB pages, split evenly over the vCPUs */
	uint64_t shadow_gpa;	    /* u64 per RAM page (GUEST_SHADOW_GPA) */
	uint64_t batch;		    /* accesses per batch (a sync point between batches) */
	uint64_t max_rounds;	    /* own-counter mode: stop after this many batches; 0 = never */
	uint64_t tsc_khz;	    /* for spec.rate; 0 = no rate limit */
	struct workload_spec spec;  /* the access pattern */
	volatile uint32_t round;    /* host-rounds mode: the stamp round (host bumps it while paused) */
	volatile uint32_t stop;	    /* non-zero: finish the batch, verify, report done */
	/*
	 * GUEST_F_HOST_CMDS: the host sets cmd_first/count/stride, then bumps
	 * cmd_seq (release). Every vCPU stamps, with round cmd_seq, the RAM
	 * pages (numbered over all RAM) of the command that lie in its own
	 * region, then sets its cmd_done = cmd_seq (and syncs with
	 * GUEST_F_SYNC_EXITS). Pages cmd_first + k * cmd_stride for k <
	 * cmd_count; with cmd_stride 0, the cmd_count u32 page numbers at
	 * GUEST_LIST_GPA.
	 */
	volatile uint32_t cmd_seq;
	uint32_t cmd_pad;
	volatile uint64_t cmd_first;
	volatile uint64_t cmd_count;
	volatile uint64_t cmd_stride;
};

/* guest_vcpu_page - one per vCPU: the guest's progress and failure report. */
struct guest_vcpu_page {
	uint32_t id;		/* vCPU id (host-written) */
	uint32_t started;	/* guest: workload state initialised */
	uint64_t first_page;	/* host: first RAM page of this vCPU's region */
	uint64_t npages;	/* host: pages in the region */
	uint64_t round;		/* guest: current round */
	uint64_t writes;	/* guest: counters, updated at each sync */
	uint64_t reads;
	uint64_t batches;
	struct workload_state ws; /* guest: where the pattern is (migrates with memory) */
	/* failure report (GUEST_PORT_FAIL) */
	uint32_t fail_reason;	/* enum guest_fail */
	uint32_t pad;
	uint64_t fail_page;	/* page index within the region */
	uint64_t fail_expected;
	uint64_t fail_found;
	char print_buf[2048];	/* GUEST_PORT_PRINT text, not NUL-terminated */
	uint32_t cmd_done;	/* guest: cmd_seq of the last host command finished */
	uint32_t cmd_pad;
};

#define GUEST_VCPU_PAGE_GPA(id) (GUEST_VCPU_GPA + (uint64_t)(id) * 0x1000ull)

#ifndef __cplusplus
_Static_assert(sizeof(struct guest_params) <= 4096, "guest_params fits a page");
_Static_assert(sizeof(struct guest_vcpu_page) <= 4096, "guest_vcpu_page fits a page");
_Static_assert(GUEST_VCPU_GPA + GUEST_MAX_VCPUS * 0x1000ull <= GUEST_PT_GPA, "vCPU pages fit");
_Static_assert(GUEST_STACK_GPA + GUEST_MAX_VCPUS * GUEST_STACK_SIZE <= GUEST_LIST_GPA,
	       "stacks fit");
#endif

#endif /* RMAPVM_KVM_GUEST_ABI_H */
