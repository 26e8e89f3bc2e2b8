/* mmu_internal.h: soft-MMU structures shared by the files of src/mmu (vm, vcpu, mmu_page, TLB). */
#ifndef RMAPVM_MMU_INTERNAL_H
#define RMAPVM_MMU_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "rmapvm/backing.h"
#include "rmapvm/list.h"
#include "rmapvm/memslot.h"
#include "rmapvm/mmu.h"
#include "rmapvm/rmap.h"
#include "rmapvm/spte.h"

/* Relaxed atomic helpers: counters and flags shared between threads. */
#define READ_ONCE(x)	   __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define WRITE_ONCE(x, v)   __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define load_acquire(p)	   __atomic_load_n(p, __ATOMIC_ACQUIRE)
#define store_release(p, v) __atomic_store_n(p, v, __ATOMIC_RELEASE)
/* Counter owned by one thread (single writer): no locked instruction. */
#define stat_inc(x)	   WRITE_ONCE(x, READ_ONCE(x) + 1)
#define stat_add(x, n)	   WRITE_ONCE(x, READ_ONCE(x) + (n))
/* Counter with several writers. */
#define stat_inc_shared(x) __atomic_fetch_add(&(x), 1, __ATOMIC_RELAXED)

static inline void cpu_relax(void)
{
	__builtin_ia32_pause();
}

/* mmu_page_role - what a page table is; pages are unique per (gfn, role). */
union mmu_page_role {
	uint32_t word;
	struct {
		uint32_t level : 4;  /* level of the sptes in this table (1..4) */
		uint32_t as_id : 1;  /* address space */
		uint32_t invalid : 1; /* zapped, waiting for the TLB flush before free */
	};
};

/*
 * mmu_page - one page table: 512 sptes. A direct-map table has exactly one
 * parent spte. Allocated from an arena (mmu_page_pool) so that sptep_to_sp()
 * is arithmetic, like page_private() in the kernel.
 */
struct mmu_page {
	struct list_head link;		/* on vm->active_mmu_pages, or a zap list */
	union mmu_page_role role;
	gfn_t gfn;			/* first gfn covered by the table */
	uint64_t *spt;			/* the 512 sptes (4 KiB aligned) */
	uint64_t *parent_ptep;		/* non-leaf spte pointing here; NULL for a root */
	/* 2012 baseline only: bit (slot id % 64) set for every memslot a leaf
	 * of this table maps (a 64-bit filter of KVM's slot_bitmap). */
	uint64_t slot_bitmap;
	uint32_t nr_present;		/* present sptes in spt (under mmu_lock) */
};

/* Arena: 2 MiB aligned; the first MMU_ARENA_HDR_PAGES hold the structs. */
#define MMU_ARENA_SIZE	    SZ_2M
#define MMU_ARENA_HDR_PAGES 16
#define MMU_ARENA_PAGES	    (512 - MMU_ARENA_HDR_PAGES)
struct mmu_arena {
	struct mmu_arena *next;			/* all arenas of a pool */
	struct mmu_page sps[MMU_ARENA_PAGES];	/* struct of table i (page HDR + i) */
};
static_assert(sizeof(struct mmu_arena) <= MMU_ARENA_HDR_PAGES * 4096, "arena header fits");

static inline struct mmu_page *sptep_to_sp(const uint64_t *sptep)
{
	uintptr_t p = (uintptr_t)sptep;
	struct mmu_arena *arena = (struct mmu_arena *)ALIGN_DOWN(p, MMU_ARENA_SIZE);
	uintptr_t page = (p - (uintptr_t)arena) >> PAGE_SHIFT;

	return &arena->sps[page - MMU_ARENA_HDR_PAGES];
}

/* mmu_page_pool - page tables of one VM; arenas are never returned before vm_destroy. */
struct mmu_page_pool {
	pthread_mutex_t lock;
	struct mmu_arena *arenas;	/* list of every arena */
	struct mmu_page *free_list;	/* free pages, linked through parent_ptep */
	uint64_t nr_free;
	uint64_t nr_arenas;
};

/* mmu_page_cache - a thread's pre-filled zeroed tables (no allocation under mmu_lock). */
#define MMU_PAGE_CACHE_CAPACITY 16
struct mmu_page_cache {
	int nobjs;
	struct mmu_page *objects[MMU_PAGE_CACHE_CAPACITY];
};

/* Per-thread allocation context for code that changes page tables. */
struct mmu_caches {
	struct mmu_memory_cache desc_cache;	/* pte_list_desc */
	struct mmu_page_cache page_cache;	/* mmu pages */
};

/* Soft TLB entry: one 4 KiB translation. */
#define TLB_W 1u /* writes allowed (spte W was set) */
#define TLB_D 2u /* spte D already set: a write needs no walk */
struct tlb_entry {
	gfn_t tag;		/* gfn + 1; 0 = invalid */
	uintptr_t hva;		/* host address of the 4 KiB page */
	uint32_t perm;		/* TLB_W | TLB_D */
};

/* vcpu->mode, as in KVM: a remote flush waits only for vCPUs not OUTSIDE. */
enum vcpu_mode {
	OUTSIDE_GUEST_MODE,
	IN_GUEST_MODE,
	READING_SHADOW_PAGE_TABLES, /* lockless walk outside guest mode (fast path) */
};

/* vcpu->requests bits. */
#define KVM_REQ_TLB_FLUSH    (1u << 0) /* drop every TLB entry */
#define KVM_REQ_PAUSE	     (1u << 1) /* park until vm_resume() */
#define KVM_REQ_KICK	     (1u << 2) /* leave guest mode once (flush PML buffer) */
#define KVM_REQ_RING_FULL    (1u << 3) /* dirty ring soft-full: wait for reset */

/* Per-vCPU counters (single writer: the vCPU thread). */
struct vcpu_stats {
	uint64_t accesses;
	uint64_t tlb_hits;
	uint64_t tlb_misses;
	uint64_t tlb_flushes;
	uint64_t faults_slow;
	uint64_t faults_fast;
	uint64_t fault_retries;
	uint64_t mmio_exits;
	uint64_t ring_full_exits;
};

struct vcpu {
	struct vm *vm;
	int id;
	int as_id;			/* address space of accesses (0; 1 = SMM) */
	int mode;			/* enum vcpu_mode, seq_cst accesses */
	uint32_t requests;		/* KVM_REQ_*, set remotely, cleared by the vCPU */
	uint64_t tlb_gen_acked;		/* last vm->tlb_flush_gen this vCPU flushed for */
	uint64_t srcu_seq;		/* odd while inside a memslot read side */
	bool loaded;			/* a thread runs this vCPU (pause_lock) */
	bool parked;			/* blocked in a pause (pause_lock) */
	struct tlb_entry *tlb;		/* tlb_mask + 1 entries */
	uint32_t tlb_mask;
	struct mmu_caches caches;	/* for faults */
	struct vcpu_stats stats;
	void *dirty_ring;		/* src/mmu/dirty_ring.c, NULL when unused */
	void *pml;			/* src/mmu/dirty_log.c D-bit buffer, NULL when unused */
};

struct vm {
	struct vm_config cfg;
	/* mmu_lock protects page-table structure, rmaps, active_mmu_pages and
	 * lpage_info; spte volatile bits change atomically without it. */
	pthread_rwlock_t mmu_lock;
	/* slots_lock serializes memslot updates and host-side slot walkers. */
	pthread_mutex_t slots_lock;
	struct memslots *memslots[KVM_ADDRESS_SPACE_NUM]; /* active set, published with release */
	struct memslots slot_sets[KVM_ADDRESS_SPACE_NUM][2]; /* active + inactive sets */
	struct memslot **id_to_slot[KVM_ADDRESS_SPACE_NUM];  /* by id; under slots_lock */
	uint64_t memslots_generation;
	struct mmu_page *root[KVM_ADDRESS_SPACE_NUM];
	struct list_head active_mmu_pages;	/* every live table, newest first */
	pthread_mutex_t mmu_pages_lock;		/* active_mmu_pages, for shared-lock faults */
	uint64_t nr_mmu_pages;
	uint64_t nr_leaf_sptes[PG_LEVEL_MAX_LEAF];
	struct mmu_page_pool pool;
	struct mmu_caches host_caches;		/* for host-side callers, under slots_lock */

	/* MMU notifier state (src/mmu/invalidate.c); under mmu_lock for write. */
	uint64_t mmu_invalidate_seq;
	int64_t mmu_invalidate_in_progress;
	gfn_t mmu_invalidate_range_start;
	gfn_t mmu_invalidate_range_end;
	int64_t mn_active_invalidate_count;	/* under slots_lock's notifier mutex */
	int unmap_variant;			/* enum unmap_variant (rmapvm/invalidate.h) */
	pthread_mutex_t mn_lock;
	pthread_cond_t mn_cond;

	/* Registered host mappings (hugetlbfs page sizes). */
	const struct mem_backing *backings[64];
	int nr_backings;

	/* vCPUs and the remote TLB flush / pause protocol. */
	int nr_vcpus;
	struct vcpu **vcpus;
	uint64_t tlb_flush_gen;
	uint64_t remote_tlb_flushes;
	pthread_mutex_t pause_lock;
	pthread_cond_t pause_cond;
	bool pause_requested;

	/* Dirty logging (src/mmu/dirty_log.c), opaque here. */
	void *dirty_log;
	unsigned int debug_faults;		/* enum mmu_debug_fault */
};

#define for_each_vcpu(_i_, _vcpu_, _vm_)                                                           \
	for ((_i_) = 0; (_i_) < (_vm_)->nr_vcpus && ((_vcpu_) = (_vm_)->vcpus[_i_], 1); (_i_)++)

/* ---- mmu_lock ---- */
static inline void mmu_write_lock(struct vm *vm)
{
	pthread_rwlock_wrlock(&vm->mmu_lock);
}
static inline void mmu_write_unlock(struct vm *vm)
{
	pthread_rwlock_unlock(&vm->mmu_lock);
}
static inline void mmu_read_lock(struct vm *vm)
{
	pthread_rwlock_rdlock(&vm->mmu_lock);
}
static inline void mmu_read_unlock(struct vm *vm)
{
	pthread_rwlock_unlock(&vm->mmu_lock);
}

/* Memslots of @as_id; caller holds slots_lock or is in a vCPU read side. */
static inline struct memslots *vm_memslots(struct vm *vm, int as_id)
{
	/* seq_cst: orders after vcpu_srcu_read_lock()'s store (a plain load on x86). */
	return __atomic_load_n(&vm->memslots[as_id], __ATOMIC_SEQ_CST);
}

/* ---- memslot.c ---- */
int memslots_init(struct vm *vm);
void memslots_destroy(struct vm *vm);
/* Slot @id of @as_id, or NULL; caller holds slots_lock. */
struct memslot *vm_id_to_memslot(struct vm *vm, int as_id, int id);
/* Wait until every vCPU left any memslot read side it was in (synchronize_srcu). */
void vm_synchronize_srcu(struct vm *vm);
static inline void vcpu_srcu_read_lock(struct vcpu *vcpu)
{
	__atomic_store_n(&vcpu->srcu_seq, vcpu->srcu_seq + 1, __ATOMIC_SEQ_CST);
}
static inline void vcpu_srcu_read_unlock(struct vcpu *vcpu)
{
	__atomic_store_n(&vcpu->srcu_seq, vcpu->srcu_seq + 1, __ATOMIC_RELEASE);
}

/* ---- mmu.c: page tables ---- */
int mmu_init(struct vm *vm);
void mmu_destroy(struct vm *vm);
void mmu_caches_init(struct mmu_caches *c);
/* Fill @c for one fault (3 tables, 1 descriptor); without mmu_lock. */
int mmu_topup_caches(struct vm *vm, struct mmu_caches *c, int nr_pages, int nr_descs);
void mmu_caches_free(struct vm *vm, struct mmu_caches *c);

/*
 * __mmu_map_gfn() - install a leaf for @gfn of @slot at @level, building
 * missing tables and replacing what is in the way. Under mmu_lock for write,
 * or for read when @shared (tables and leaves then go in by cmpxchg, rmaps
 * are locked per head, and anything that needs a zap returns -EAGAIN).
 * @write: the access writes (the spte gets W and D, the page is logged).
 * Returns MMU_MAP_FLUSH if a mapping was removed (remote TLB flush needed
 * before the lock is dropped), 0, or -EAGAIN.
 */
int __mmu_map_gfn(struct vm *vm, struct mmu_caches *c, struct vcpu *vcpu,
		  const struct memslot *slot, gfn_t gfn, int level, bool host_writable, bool write,
		  bool shared);
/*
 * __mmu_map_gfn_host() - as __mmu_map_gfn(), with the host address of the
 * level-aligned frame (backing_host_addr()) resolved by the caller, before
 * mmu_lock, as a fault resolves its pfn; the caller must have passed the
 * MMU-notifier retry check (mmu_invalidate_retry_gfn) under the lock.
 */
int __mmu_map_gfn_host(struct vm *vm, struct mmu_caches *c, struct vcpu *vcpu,
		       const struct memslot *slot, gfn_t gfn, int level, hva_t hva,
		       bool host_writable, bool write, bool shared);
/* Return value of __mmu_map_gfn(): flush needed; or -EAGAIN (shared mode: retake for write). */
#define MMU_MAP_FLUSH 1

/*
 * mmu_zap_spte() - remove the leaf *@sptep (mapping @gfn at @level of @slot)
 * and its rmap entry; under mmu_lock (write). Returns true (flush needed)
 * if the spte was present.
 */
bool mmu_zap_leaf(struct vm *vm, struct mmu_caches *c, const struct memslot *slot, uint64_t *sptep,
		  gfn_t gfn, int level);
/* Zap every leaf of @slot (delete/move), freeing emptied tables after a flush. */
void mmu_zap_memslot(struct vm *vm, struct memslot *slot);
/*
 * mmu_zap_subtree() - zap the table that the non-leaf *@sptep (at @level)
 * points to, with every leaf below it; the tables go on @invalid, to be
 * freed by mmu_commit_zap() after a remote TLB flush. Under mmu_lock (write).
 * Returns true if a leaf was zapped.
 */
bool mmu_zap_subtree(struct vm *vm, struct mmu_caches *c, int as_id, uint64_t *sptep, int level,
		     struct list_head *invalid);
/* Remote TLB flush, then free the tables on @invalid. Under mmu_lock (write). */
void mmu_commit_zap(struct vm *vm, struct list_head *invalid);
/* Slow-path page fault for @gfn; 0 (fixed or retry) or -EFAULT (MMIO exit). */
int kvm_mmu_page_fault(struct vcpu *vcpu, gfn_t gfn, bool write);
/* True if a fault that read @mmu_seq must retry (an invalidation raced). Under mmu_lock. */
bool mmu_invalidate_retry_gfn(struct vm *vm, uint64_t mmu_seq, gfn_t gfn);

/*
 * mmu_split_huge_leaf() - replace the huge leaf *@sptep (mapping the frame
 * of @gfn at @level of @slot) by a table of 512 leaves one level down with
 * the same frames and permissions, minus W when @wp (eager page splitting).
 * Under mmu_lock (write); the caller flushes TLBs if W was dropped. Returns
 * 0; -ENOMEM when @c lacks a table or descriptors (nothing changed; top up
 * and retry); -E2BIG when more descriptors are needed than a cache holds;
 * -ENOENT when *@sptep is not a huge leaf.
 */
int mmu_split_huge_leaf(struct vm *vm, struct mmu_caches *c, const struct memslot *slot,
			uint64_t *sptep, gfn_t gfn, int level, bool wp);

/*
 * rmap_lock() / rmap_unlock() - the per-head lock of shared-mode faults
 * (bit 1 of head->val): rmap_lock() spins until it owns the head and returns
 * its value without the lock bit; rmap_unlock() stores @val back (release).
 * Needed only by code that reads rmaps under mmu_lock held for read.
 */
uintptr_t rmap_lock(struct rmap_head *head);
void rmap_unlock(struct rmap_head *head, uintptr_t val);

/* Largest level at which @gfn of @slot may be mapped (alignment, disallow_lpage, logging). */
int mmu_max_slot_level(struct vm *vm, const struct memslot *slot, gfn_t gfn, int max_level);

/* Lockless: the leaf spte pointer and level mapping @gfn in @as_id, or NULL. */
uint64_t *mmu_lookup_leaf(struct vm *vm, int as_id, gfn_t gfn, int *level);

/* ---- vcpu.c ---- */
void vcpu_flush_tlb(struct vcpu *vcpu);
void vcpu_handle_requests(struct vcpu *vcpu);
/* Set @req on every vCPU and make them see it (kick). */
void vm_make_all_vcpus_request(struct vm *vm, uint32_t req);

/* ---- dirty_log.c hooks used by memslot updates and the fault path ---- */
/*
 * dirty_log_prepare_memslot() - before @new (replacing @old, either may be
 * NULL) is published: allocate or hand over its dirty bitmap. 0 or -ENOMEM.
 */
int dirty_log_prepare_memslot(struct vm *vm, const struct memslot *old, struct memslot *new);
/*
 * dirty_log_commit_memslot() - after @new is published and a grace period
 * passed: write-protect when logging was turned on, restore huge mappings
 * when it was turned off. Called with slots_lock held, mmu_lock not held.
 */
void dirty_log_commit_memslot(struct vm *vm, const struct memslot *old, struct memslot *new);
/* Free what prepare gave @slot (bitmap, private state). */
void dirty_log_free_memslot(struct vm *vm, struct memslot *slot);
/* mark_page_dirty_in_slot() - log @gfn of @slot as dirty (bitmap or ring); no-op if not logged. */
void mark_page_dirty_in_slot(struct vm *vm, struct vcpu *vcpu, const struct memslot *slot, gfn_t gfn);
/* True when logged slots keep 4 KiB sptes writable and log via D bits (PML-like). */
bool dirty_log_uses_dbit(const struct vm *vm);
/* Walker hook: D went 0->1 on a 4 KiB spte in D-bit mode. */
void vcpu_pml_log(struct vcpu *vcpu, gfn_t gfn);
/* KVM_REQ_RING_FULL: leave guest mode and wait until the vCPU's dirty ring has room (or a pause). */
void dirty_ring_wait_for_reset(struct vcpu *vcpu);
/* Free the VM's dirty-logging state (rings, PML buffers); from vm_destroy() after the memslots. */
void dirty_log_destroy(struct vm *vm);

#endif /* RMAPVM_MMU_INTERNAL_H */
