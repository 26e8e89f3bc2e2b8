/* kvm.h: the real-KVM backend: a minimal VMM (VM, memslots, long-mode vCPUs, guest protocol, dirty logging, vCPU state). */
#ifndef RMAPVM_KVM_H
#define RMAPVM_KVM_H

/*
 * Every function returns 0 (or a count) or -errno and never prints or
 * exits. Where an error needs explaining, the VM keeps a one-line message
 * (kvm_vm_error()); kvm_vm_create() writes its message into the caller's
 * buffer. The guest is embedded in the library (src/kvm/guest); its ABI is
 * include/rmapvm/kvm_guest_abi.h.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rmapvm/backend.h"
#include "rmapvm/backing.h"
#include "rmapvm/types.h"
#include "rmapvm/workload.h"

/* kvm_caps - what /dev/kvm offers, asked with KVM_CHECK_EXTENSION on a VM. */
struct kvm_caps {
	int api_version;	  /* KVM_GET_API_VERSION (12) */
	int nr_memslots;	  /* KVM_CAP_NR_MEMSLOTS */
	int max_vcpus;		  /* KVM_CAP_MAX_VCPUS */
	uint32_t manual_protect;  /* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 flags; 0 = absent */
	uint32_t ring_max_bytes;  /* KVM_CAP_DIRTY_LOG_RING(_ACQ_REL) per-vCPU maximum; 0 = absent */
	bool ring_acq_rel;	  /* KVM_CAP_DIRTY_LOG_RING_ACQ_REL */
	bool ring_with_bitmap;	  /* KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP */
	int xsave_size;		  /* KVM_CAP_XSAVE2 size, 4096 with plain KVM_CAP_XSAVE, 0 = none */
	bool xcrs;		  /* KVM_CAP_XCRS */
	bool vcpu_events;	  /* KVM_CAP_VCPU_EVENTS */
	bool irqchip;		  /* KVM_CAP_IRQCHIP (in-kernel LAPIC) */
	bool tsc_control;	  /* KVM_CAP_TSC_CONTROL (KVM_SET_TSC_KHZ) */
	bool immediate_exit;	  /* KVM_CAP_IMMEDIATE_EXIT */
	bool readonly_mem;	  /* KVM_CAP_READONLY_MEM */
	bool cpuid_1g;		  /* guest CPUID offers 1 GiB pages (pdpe1gb) */
	bool pvm;		  /* /dev/kvm is kvm_pvm (module loaded) */
	int nr_msrs;		  /* KVM_GET_MSR_INDEX_LIST length */
};

/* kvm_probe() - open /dev/kvm and fill @caps. -ENOENT/-EACCES when absent. */
int kvm_probe(struct kvm_caps *caps);
/* kvm_caps_format() - one line per capability into @buf. */
void kvm_caps_format(const struct kvm_caps *caps, char *buf, size_t len);

/* Called with text the guest printed (GUEST_PORT_PRINT), from a vCPU thread. */
typedef void (*kvm_print_fn)(void *opaque, int vcpu, const char *text, size_t len);

/* kvm_vm_config - the VM to build. Zero fields take the defaults noted. */
struct kvm_vm_config {
	uint64_t mem_bytes;		/* RAM (the workload region), multiple of 4 KiB */
	int nr_vcpus;			/* 1 .. GUEST_MAX_VCPUS */
	int nr_slots;			/* RAM memslots (RAM split evenly), >= 1 */
	enum backing_type backing;	/* host memory behind RAM */
	struct workload_spec workload;	/* what every vCPU does */
	uint32_t guest_flags;		/* GUEST_F_* (kvm_guest_abi.h) */
	uint64_t batch;			/* accesses per batch; 0 = min(region pages, 16384) */
	uint64_t max_rounds;		/* own-counter mode: batches per vCPU; 0 = until stopped */
	uint32_t ring_entries;		/* dirty ring entries per vCPU (power of two); 0 = none */
	kvm_print_fn print;		/* guest output; NULL = kept only in the VM's log */
	void *print_opaque;
};

/* Where a vCPU is. */
enum kvm_vcpu_run_state {
	KVM_VCPU_CREATED,	/* threads not started */
	KVM_VCPU_RUNNING,
	KVM_VCPU_PAUSED,
	KVM_VCPU_DONE,		/* guest reported done (and verification passed) */
	KVM_VCPU_FAILED,	/* guest reported a failure (GUEST_PORT_FAIL) */
	KVM_VCPU_ERROR,		/* unexpected exit or ioctl failure */
};

/* kvm_vcpu_stats - counters of one vCPU (host side and the guest's own). */
struct kvm_vcpu_stats {
	enum kvm_vcpu_run_state state;
	uint64_t exits;			/* KVM_RUN returns */
	uint64_t io_exits;		/* KVM_EXIT_IO */
	uint64_t syncs;			/* GUEST_PORT_SYNC */
	uint64_t intr_exits;		/* -EINTR (kicks) */
	uint64_t ring_full_exits;	/* KVM_EXIT_DIRTY_RING_FULL */
	uint64_t guest_writes;		/* from the vCPU page, as of the last batch */
	uint64_t guest_reads;
	uint64_t guest_batches;
	uint64_t guest_round;
};

/* kvm_region_info - one memslot as the VMM laid it out. */
struct kvm_region_info {
	uint32_t slot;		/* (as_id << 16) | id */
	gpa_t gpa;
	uint64_t npages;
	uint8_t *hva;
	bool ram;		/* workload RAM (false: the system slot) */
};

struct kvm_vm;

/*
 * kvm_vm_create() - build a VM: caps checked, system memslot (GDT, TSS,
 * page tables, guest image, parameters, shadow stamps) and RAM memslots,
 * dirty ring (if asked) and vCPUs in 64-bit mode at CPL3 on the guest's
 * entry. The vCPUs do not run until kvm_vm_start(). On error *@out is
 * NULL and @err holds the reason.
 */
int kvm_vm_create(const struct kvm_vm_config *cfg, struct kvm_vm **out, char *err, size_t errlen);
/* kvm_vm_destroy() - stop vCPU threads, close everything, free memory. NULL is fine. */
void kvm_vm_destroy(struct kvm_vm *vm);
/* The reason for the VM's last error ("" if none). */
const char *kvm_vm_error(const struct kvm_vm *vm);
const struct kvm_vm_config *kvm_vm_config(const struct kvm_vm *vm);
const struct kvm_caps *kvm_vm_caps(const struct kvm_vm *vm);
/* Raw descriptors, for tests that talk to the kernel directly. */
int kvm_vm_fd(const struct kvm_vm *vm);
int kvm_vcpu_fd(const struct kvm_vm *vm, int vcpu);

/* Start one thread per vCPU (vCPUs run). */
int kvm_vm_start(struct kvm_vm *vm);
/*
 * kvm_vm_pause() - every vCPU out of guest mode with its pending I/O
 * completed (KVM_RUN with immediate_exit), so its state can be saved.
 * Finished vCPUs count as paused. kvm_vm_resume() lets them run again.
 */
int kvm_vm_pause(struct kvm_vm *vm);
int kvm_vm_resume(struct kvm_vm *vm);
/*
 * kvm_vm_wait() - wait until every vCPU is done, one failed, or @timeout_s
 * passed (< 0: forever). 0 = all done; -EIO = a guest failure or an
 * unexpected exit (kvm_vm_error() says which); -ETIMEDOUT.
 */
int kvm_vm_wait(struct kvm_vm *vm, double timeout_s);
/* Ask the guest to finish its batch, verify and report done (host write to params). */
int kvm_vm_request_stop(struct kvm_vm *vm);
/* Host-rounds mode: set the stamp round (vCPUs should be paused). */
int kvm_vm_set_round(struct kvm_vm *vm, uint32_t round);
/* Throttle vCPUs to run @pct percent less (auto-converge); 0 = off, max 99. */
int kvm_vm_throttle(struct kvm_vm *vm, int pct);
int kvm_vm_vcpu_stats(struct kvm_vm *vm, int vcpu, struct kvm_vcpu_stats *st);
/* Copy the guest's printed text (all vCPUs, oldest first, truncated) into @buf. */
size_t kvm_vm_log(struct kvm_vm *vm, char *buf, size_t len);

/* Memory layout. */
int kvm_vm_nr_regions(const struct kvm_vm *vm);
int kvm_vm_region(const struct kvm_vm *vm, int i, struct kvm_region_info *info);
/* Host view of guest memory: NULL unless [gpa, gpa + len) lies in one memslot. */
void *kvm_vm_gpa_to_hva(struct kvm_vm *vm, gpa_t gpa, size_t len);
/* RAM page @page (0 .. mem_bytes/4K - 1) of vCPU-region-independent RAM; NULL out of range. */
uint64_t *kvm_vm_ram_page(struct kvm_vm *vm, uint64_t page);
/* The RAM region of vCPU @vcpu: first RAM page and count. */
int kvm_vm_vcpu_region(const struct kvm_vm *vm, int vcpu, uint64_t *first_page, uint64_t *npages);
/*
 * kvm_vm_write_guest() - a host write to guest memory. KVM does not log
 * writes made through the hva, so the VMM records the pages itself and
 * the next harvest reports them (as KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP does).
 */
int kvm_vm_write_guest(struct kvm_vm *vm, gpa_t gpa, const void *data, size_t len);

/*
 * Host write commands (VM created with GUEST_F_HOST_CMDS in guest_flags,
 * vCPUs running): the guest stamps exactly the RAM pages named (RAM page
 * numbers as kvm_vm_ram_page(); each vCPU writes those of its own region),
 * so a test or benchmark knows which pages the guest dirtied. Pages
 * @first + k * @stride for k < @count (@stride >= 1), or the @n pages of
 * @pages (at most GUEST_LIST_MAX). Returns once every vCPU finished the
 * command: 0, -EINVAL (bad pages, VM not in that mode), -EBUSY (paused or
 * not started), -EIO (a vCPU failed), -ETIMEDOUT after @timeout_s. One
 * caller at a time.
 */
int kvm_vm_guest_write_range(struct kvm_vm *vm, uint64_t first, uint64_t count, uint64_t stride,
			     double timeout_s);
int kvm_vm_guest_write_list(struct kvm_vm *vm, const uint32_t *pages, uint64_t n,
			    double timeout_s);

/*
 * kvm_vm_add_memslot() - an extra memslot (tests, bad input): id must be
 * unused and the range must not overlap another slot (-EEXIST), sizes and
 * addresses page-aligned (-EINVAL). The VMM does not own @hva.
 */
int kvm_vm_add_memslot(struct kvm_vm *vm, uint32_t id, gpa_t gpa, uint64_t size, void *hva);
/* kvm_vm_enable_cap() - KVM_ENABLE_CAP on the VM, -EOPNOTSUPP if KVM_CHECK_EXTENSION says no. */
int kvm_vm_enable_cap(struct kvm_vm *vm, uint32_t cap, uint64_t arg0);

/*
 * Dirty tracking (the kernel's three modes, see docs/KVM.md):
 *  DIRTY_MODE_BITMAP  KVM_GET_DIRTY_LOG: get-and-clear of a whole slot; a
 *                     ranged harvest keeps the bits outside its range for
 *                     later callers (never lost);
 *  DIRTY_MODE_MANUAL  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (+INITIALLY_SET):
 *                     GET copies, KVM_CLEAR_DIRTY_LOG re-protects exactly
 *                     the fetched bits of a 64-page-aligned range;
 *  DIRTY_MODE_RING    per-vCPU rings (VM created with ring_entries).
 * -EOPNOTSUPP for what this kernel (or this VM) cannot do, with a message.
 */
int kvm_vm_dirty_start(struct kvm_vm *vm, const struct dirty_config *cfg);
int kvm_vm_dirty_stop(struct kvm_vm *vm);
/* Harvest a range of memslot @slot (backend_ops.harvest_range contract). */
int kvm_vm_harvest_range(struct kvm_vm *vm, uint32_t slot, uint64_t first_page, uint64_t npages,
			 uint64_t *bitmap);
/* Ring mode: deliver every published entry (ring order), then KVM_RESET_DIRTY_RINGS. Returns entries. */
int kvm_vm_harvest_rings(struct kvm_vm *vm, ring_entry_fn fn, void *opaque);

/*
 * kvm_vcpu_state - everything KVM keeps about a vCPU, as a plain blob
 * (the migration stream carries it as bytes). Bump KVM_VCPU_STATE_VERSION
 * whenever the layout changes; load refuses another version or size.
 */
#define KVM_VCPU_STATE_MAGIC   0x53435652u /* "RVCS" */
#define KVM_VCPU_STATE_VERSION 1
#define KVM_STATE_MAX_MSRS     256
#define KVM_STATE_XSAVE_MAX    16384

struct kvm_vcpu_state_msr {
	uint32_t index;
	uint32_t pad;
	uint64_t data;
};

struct kvm_vcpu_state {
	uint32_t magic;			/* KVM_VCPU_STATE_MAGIC */
	uint32_t version;		/* KVM_VCPU_STATE_VERSION */
	uint32_t size;			/* sizeof(struct kvm_vcpu_state) */
	uint32_t vcpu_id;
	uint32_t flags;			/* KVM_STATE_F_* : which parts are present */
	uint32_t nr_msrs;		/* valid entries of msrs[] */
	uint32_t xsave_len;		/* bytes of xsave[] in use */
	uint32_t tsc_khz;		/* KVM_GET_TSC_KHZ of the source */
	uint8_t regs[144];		/* struct kvm_regs */
	uint8_t sregs[312];		/* struct kvm_sregs */
	uint8_t fpu[416];		/* struct kvm_fpu */
	uint8_t xcrs[392];		/* struct kvm_xcrs */
	uint8_t lapic[1024];		/* struct kvm_lapic_state */
	uint8_t events[64];		/* struct kvm_vcpu_events */
	uint8_t mp_state[4];		/* struct kvm_mp_state */
	uint8_t debugregs[128];		/* struct kvm_debugregs */
	uint8_t pad[4];
	struct kvm_vcpu_state_msr msrs[KVM_STATE_MAX_MSRS];
	uint8_t xsave[KVM_STATE_XSAVE_MAX]; /* struct kvm_xsave (KVM_GET_XSAVE2 size) */
};

#define KVM_STATE_F_XSAVE     (1u << 0)
#define KVM_STATE_F_XCRS      (1u << 1)
#define KVM_STATE_F_LAPIC     (1u << 2)
#define KVM_STATE_F_EVENTS    (1u << 3)
#define KVM_STATE_F_MP_STATE  (1u << 4)
#define KVM_STATE_F_DEBUGREGS (1u << 5)

/* Save / load one vCPU (VM paused or not started). */
int kvm_vcpu_save_state(struct kvm_vm *vm, int vcpu, struct kvm_vcpu_state *st);
int kvm_vcpu_load_state(struct kvm_vm *vm, int vcpu, const struct kvm_vcpu_state *st);

/*
 * Snapshot file: VM config, every memslot's contents and every vCPU's
 * state. kvm_vm_save() needs the VM paused (or not started);
 * kvm_vm_restore() builds a fresh VM from the file, not started.
 */
int kvm_vm_save(struct kvm_vm *vm, const char *path);
int kvm_vm_restore(const char *path, kvm_print_fn print, void *opaque, struct kvm_vm **out,
		   char *err, size_t errlen);

/*
 * kvm_backend_init() - the dirty-tracking backend interface (backend.h)
 * over @vm; @be->priv is @vm. destroy() destroys the VM.
 */
void kvm_backend_init(struct backend *be, struct kvm_vm *vm);

#endif /* RMAPVM_KVM_H */
