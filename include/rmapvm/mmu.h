/* mmu.h: the soft MMU's public API: VMs, memslots, vCPUs and guest accesses. */
#ifndef RMAPVM_MMU_H
#define RMAPVM_MMU_H

#include <stdint.h>
#include "rmapvm/types.h"
#include "rmapvm/memslot.h"

struct vm;
struct vcpu;
struct mem_backing;

/*
 * Lock discipline of mmu_lock (the talk's "fine-grained mmu locking"):
 *  MMU_LOCK_EXCLUSIVE  one lock, every fault takes it for write (KVM's shadow MMU)
 *  MMU_LOCK_SHARED     faults take it for read and install sptes with cmpxchg
 *                      (KVM's TDP MMU); harvest and invalidation take it for write
 */
enum mmu_lock_mode {
	MMU_LOCK_EXCLUSIVE,
	MMU_LOCK_SHARED,
};

/* vm_config - fixed at vm_create(). */
struct vm_config {
	int nr_vcpus;			/* vCPUs created with the VM (1..VM_MAX_VCPUS) */
	unsigned int tlb_entries;	/* soft TLB entries per vCPU, a power of two */
	enum mmu_lock_mode lock_mode;	/* see above */
	int max_level;			/* largest mapping level allowed (PG_LEVEL_4K..1G) */
};

#define VM_MAX_VCPUS 256

void vm_config_default(struct vm_config *cfg);

/* vm_create() - a VM with @cfg->nr_vcpus vCPUs and empty address spaces. 0 or -errno. */
int vm_create(const struct vm_config *cfg, struct vm **vmp);
/* Destroy @vm; no vCPU thread may be running guest code. */
void vm_destroy(struct vm *vm);

struct vcpu *vm_get_vcpu(struct vm *vm, int idx);
int vm_nr_vcpus(const struct vm *vm);

/* vm_memory_region - KVM_SET_USER_MEMORY_REGION's argument. */
struct vm_memory_region {
	uint32_t slot;		/* (as_id << 16) | id */
	uint32_t flags;		/* KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY */
	gpa_t guest_phys_addr;	/* page aligned */
	uint64_t memory_size;	/* bytes, page aligned; 0 deletes the slot */
	hva_t userspace_addr;	/* page aligned */
};

/*
 * vm_set_user_memory_region() - create, delete (size 0), move (new gpa,
 * same size) or change the flags of a slot, with KVM's rules:
 *  -EINVAL  unaligned gpa/size/hva, bad flags, as_id/id out of range, size
 *           above KVM_MEM_MAX_NR_PAGES pages, gpa beyond 52 bits, changing
 *           gpa and size at once, toggling READONLY, hva range wrapping
 *  -EEXIST  the gfn range overlaps another slot of the address space
 *  -ENOMEM  metadata allocation failed
 * A deleted or moved slot's sptes are zapped and remote TLBs flushed before
 * the call returns. Takes slots_lock; waits for active invalidations.
 */
int vm_set_user_memory_region(struct vm *vm, const struct vm_memory_region *mem);

/*
 * vm_register_backing() - tell the VM about a host mapping so that slots in
 * it learn its page size (hugetlbfs). Anonymous memory needs no registration
 * (its level is asked of the host page tables). Returns 0 or -ENOSPC.
 */
int vm_register_backing(struct vm *vm, const struct mem_backing *b);

/*
 * vm_prefault_memory() - map [gpa, gpa + size) of address space @as_id at up
 * to @max_level without touching the backing memory (KVM_PRE_FAULT_MEMORY):
 * the page tables and rmaps of a large guest are built cheaply. Returns the
 * bytes mapped (>= 0) or -errno (-ENOENT: a gfn without memslot).
 */
int64_t vm_prefault_memory(struct vm *vm, int as_id, gpa_t gpa, uint64_t size, int max_level);

/*
 * Remote TLB flush: returns only when every vCPU has dropped its cached
 * translations or is outside guest mode (and will flush before re-entering).
 */
void vm_flush_remote_tlbs(struct vm *vm);

/* Stop every loaded vCPU at an access boundary / let them go again. */
void vm_pause(struct vm *vm);
void vm_resume(struct vm *vm);

/* ---- vCPU thread side: call only from the thread that runs the vCPU ---- */

/* Attach the calling thread to @vcpu / detach it. */
void vcpu_load(struct vcpu *vcpu);
void vcpu_put(struct vcpu *vcpu);

/*
 * Guest accesses: 8-byte aligned loads and stores at @gpa in the vCPU's
 * address space, through soft TLB -> page walk -> page fault, as hardware
 * would. Returns 0, or -EFAULT when no memslot maps @gpa or a write hits a
 * READONLY slot (KVM would exit to user space with KVM_EXIT_MMIO).
 * Blocks while the VM is paused or the vCPU's dirty ring is full.
 */
int vcpu_write_u64(struct vcpu *vcpu, gpa_t gpa, uint64_t val);
int vcpu_read_u64(struct vcpu *vcpu, gpa_t gpa, uint64_t *val);

int vcpu_id(const struct vcpu *vcpu);

/* Counters; per-vCPU ones are summed. Reading is racy by nature but atomic. */
struct vm_stats {
	uint64_t accesses;		/* guest loads + stores */
	uint64_t tlb_hits;
	uint64_t tlb_misses;		/* walks */
	uint64_t tlb_flushes;		/* TLB flushes done by vCPUs */
	uint64_t remote_tlb_flushes;	/* vm_flush_remote_tlbs() calls */
	uint64_t faults_slow;		/* faults fixed under mmu_lock */
	uint64_t faults_fast;		/* faults fixed by the lockless fast path */
	uint64_t fault_retries;		/* slow faults retried (invalidation raced) */
	uint64_t mmio_exits;		/* accesses with no writable memslot */
	uint64_t mmu_pages;		/* page tables (512 sptes each) */
	uint64_t leaf_sptes[PG_LEVEL_MAX_LEAF]; /* present leaves per level */
	uint64_t rmap_descs;		/* pte_list_desc in use */
	uint64_t guest_pages;		/* 4 KiB pages in all memslots */
	uint64_t rmap_bytes;		/* rmap heads + descriptors */
	uint64_t lpage_info_bytes;	/* disallow_lpage counters */
	uint64_t dirty_bitmap_bytes;	/* dirty bitmaps (live + scratch) */
	uint64_t page_table_bytes;	/* mmu pages: tables + structs */
};

void vm_get_stats(struct vm *vm, struct vm_stats *st);

/*
 * Test-only fault injection, to prove that the correctness tests can fail.
 * Never set outside tests.
 */
enum mmu_debug_fault {
	MMU_DEBUG_SKIP_REMOTE_FLUSH = 1u << 0,	/* vm_flush_remote_tlbs() does nothing */
	MMU_DEBUG_SKIP_REPROTECT_WORD = 1u << 1,/* harvest skips re-protecting one word */
	MMU_DEBUG_SKIP_SEQ_CHECK = 1u << 2,	/* faults ignore the notifier sequence */
};
void mmu_debug_set_faults(struct vm *vm, unsigned int faults);

#endif /* RMAPVM_MMU_H */
