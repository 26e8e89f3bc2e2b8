/* soft_vm.h: a complete soft-MMU virtual machine: RAM, memslots and vCPU threads running a workload. */
#ifndef RMAPVM_SOFT_VM_H
#define RMAPVM_SOFT_VM_H

#include <stdint.h>
#include "rmapvm/backing.h"
#include "rmapvm/mmu.h"
#include "rmapvm/workload.h"

/* soft_vm_config - what `rmapvm run --backend soft` builds. */
struct soft_vm_config {
	uint64_t mem_bytes;		/* guest RAM at gpa 0, a multiple of 4 KiB */
	int vcpus;			/* vCPU threads; each works on its own 1/vcpus of RAM */
	int slots;			/* RAM split into this many equal memslots */
	enum backing_type backing;	/* host memory kind */
	struct workload_spec workload;	/* what every vCPU does */
	enum mmu_lock_mode lock_mode;	/* mmu_lock discipline */
	uint64_t max_accesses;		/* per vCPU; 0 = until soft_vm_stop() */
};

/* Per-vCPU progress, read with relaxed atomics while it runs. */
struct soft_vcpu_stats {
	uint64_t writes;
	uint64_t reads;
	uint64_t bad_reads;		/* reads that saw a stamp that cannot be */
	int error;			/* -errno of a failed access, 0 */
};

struct soft_vm;

/* soft_vm_create() - allocate RAM and memslots; vCPUs not started. 0 or -errno. */
int soft_vm_create(const struct soft_vm_config *cfg, struct soft_vm **out);
/* Start the vCPU threads. */
int soft_vm_start(struct soft_vm *svm);
/* Ask the vCPUs to stop and join them (idempotent); a paused VM is resumed for that. */
void soft_vm_stop(struct soft_vm *svm);
/* True once every vCPU finished (max_accesses reached or an error). */
bool soft_vm_done(struct soft_vm *svm);
void soft_vm_destroy(struct soft_vm *svm);

struct vm *soft_vm_vm(struct soft_vm *svm);
const struct soft_vm_config *soft_vm_config(const struct soft_vm *svm);
const struct mem_backing *soft_vm_backing(const struct soft_vm *svm);
/* Round stamped into writes from now on (1..2^20-1). */
void soft_vm_set_round(struct soft_vm *svm, uint32_t round);
void soft_vm_vcpu_stats(struct soft_vm *svm, int vcpu, struct soft_vcpu_stats *st);

/*
 * soft_vm_verify() - host-side check of every page: 0, or a stamp of the
 * vCPU that owns the page, naming that page, with a round <= the current.
 * Returns 0 or -EIO with the first mismatch described in @err.
 */
int soft_vm_verify(struct soft_vm *svm, char *err, unsigned long errlen);

uint32_t soft_vm_round(const struct soft_vm *svm);
/* Make every vCPU sleep @pct percent of its time (auto-converge); 0 = off. */
void soft_vm_set_throttle(struct soft_vm *svm, uint32_t pct);

/*
 * soft_vm_save_vcpu() / soft_vm_load_vcpu() - a vCPU's architectural state
 * (workload position, access in flight, round) as a versioned blob, so it
 * continues in another VM. Save while paused or stopped; load before
 * soft_vm_start(). Returns 0, -EINVAL (bad index or blob), -ENOSPC, -EBUSY.
 */
int soft_vm_save_vcpu(struct soft_vm *svm, int idx, void *buf, size_t len, size_t *used);
int soft_vm_load_vcpu(struct soft_vm *svm, int idx, const void *buf, size_t len);

struct backend;
/*
 * soft_backend_create() - the dirty-tracking backend interface (backend.h)
 * over @svm, for migration. The backend does not own @svm. 0 or -errno.
 */
int soft_backend_create(struct soft_vm *svm, struct backend **out);

#endif /* RMAPVM_SOFT_VM_H */
