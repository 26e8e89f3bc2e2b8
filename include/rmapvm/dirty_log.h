/* dirty_log.h: dirty logging of the soft MMU: modes, harvest algorithms, manual protect, rings, D bits, stats. */
#ifndef RMAPVM_DIRTY_LOG_H
#define RMAPVM_DIRTY_LOG_H

#include <stdbool.h>
#include <stdint.h>
#include "rmapvm/backend.h" /* enum dirty_mode, ring_entry_fn */
#include "rmapvm/mmu.h"

/*
 * How a harvest finds and re-protects the pages it reports:
 *  DIRTY_ALGO_WALK  the 2012 baseline: swap the live bitmap for the zeroed
 *                   spare, wait for a grace period (every vCPU left its memslot
 *                   read side), then clear W on every leaf of every mmu page on
 *                   active_mmu_pages whose slot_bitmap has the slot. Cost grows
 *                   with the number of page tables, not with the dirty pages.
 *  DIRTY_ALGO_RMAP  the talk: under mmu_lock, per bitmap word: xchg with 0,
 *                   keep the old value, write-protect its pages through their
 *                   rmaps; one remote TLB flush before the call returns.
 *  DIRTY_ALGO_TDP   modern KVM's TDP MMU: like rmap, but each word's pages are
 *                   found by walking the page table over its gfn range.
 */
enum dirty_log_algo {
	DIRTY_ALGO_WALK,
	DIRTY_ALGO_RMAP,
	DIRTY_ALGO_TDP,
	DIRTY_ALGO_NR,
};

/*
 * How a harvest holds mmu_lock (the talk's "fine-grained mmu locking"):
 *  DIRTY_LOCK_WHOLE    for write, over the whole call (KVM's GET_DIRTY_LOG)
 *  DIRTY_LOCK_CHUNKED  for write, dropped and retaken every chunk_pages pages,
 *                      so faults wait for at most one chunk
 *  DIRTY_LOCK_SHARED   for read, with each rmap head locked while it is
 *                      visited; with MMU_LOCK_SHARED faults (readers too) the
 *                      vCPUs keep faulting while a range is harvested. The walk
 *                      algorithm always takes the lock for write.
 */
enum dirty_log_lock {
	DIRTY_LOCK_WHOLE,
	DIRTY_LOCK_CHUNKED,
	DIRTY_LOCK_SHARED,
	DIRTY_LOCK_NR,
};

#define DIRTY_RING_MIN_ENTRIES	1024u	/* 16 KiB of entries: above the reserve */
#define DIRTY_RING_MAX_ENTRIES	65536u	/* KVM_DIRTY_RING_MAX_ENTRIES */
#define DIRTY_RING_RSVD_ENTRIES 64u	/* KVM_DIRTY_RING_RSVD_ENTRIES */
#define DIRTY_PML_ENTRIES	512u	/* PML_ENTITY_NUM: one 4 KiB log page */

/* dirty_log_config - per VM; see vm_configure_dirty_log(). */
struct dirty_log_config {
	enum dirty_mode mode;	    /* bitmap | manual | ring; dbit = bitmap with D bits */
	enum dirty_log_algo algo;   /* harvest algorithm */
	enum dirty_log_lock lock;   /* mmu_lock discipline of harvests */
	bool dbit;		    /* D-bit (PML-like) logging; implied by DIRTY_MODE_DBIT */
	bool initially_set;	    /* manual mode: enabling sets every bit, protects nothing */
	bool eager_split;	    /* split huge mappings when protection starts */
	bool recover_huge;	    /* disabling zaps 4 KiB leaves that may map huge again */
	uint32_t ring_entries;	    /* ring mode: entries per vCPU, a power of two */
	uint32_t chunk_pages;	    /* DIRTY_LOCK_CHUNKED: pages per lock hold, multiple of 64 */
};

/* Defaults: bitmap mode, rmap algorithm, whole-call lock, 4096-entry rings, recovery on. */
void dirty_log_config_default(struct dirty_log_config *cfg);

/*
 * vm_configure_dirty_log() - choose how the VM logs dirty pages. Allowed
 * while no memslot has KVM_MEM_LOG_DIRTY_PAGES (-EBUSY otherwise); running
 * vCPUs are paused for the switch. -EINVAL: bad enum, initially_set without
 * manual mode, ring size not a power of two in [DIRTY_RING_MIN_ENTRIES,
 * DIRTY_RING_MAX_ENTRIES], chunk_pages not a non-zero multiple of 64.
 * -ENOMEM. A VM never configured logs with the defaults.
 */
int vm_configure_dirty_log(struct vm *vm, const struct dirty_log_config *cfg);
/* Current configuration (defaults if never configured). */
void vm_get_dirty_log_config(struct vm *vm, struct dirty_log_config *cfg);
/*
 * dirty_log_set_harvest() - change only the harvest algorithm and lock
 * discipline; allowed at any time (they concern the host side only). 0 or -EINVAL.
 */
int dirty_log_set_harvest(struct vm *vm, enum dirty_log_algo algo, enum dirty_log_lock lock);

int dirty_log_algo_parse(const char *s, enum dirty_log_algo *algo);
const char *dirty_log_algo_name(enum dirty_log_algo algo);
int dirty_log_lock_parse(const char *s, enum dirty_log_lock *lock);
const char *dirty_log_lock_name(enum dirty_log_lock lock);
/* "bitmap" | "manual" | "ring" | "dbit" into @cfg->mode (and @cfg->dbit). 0 or -EINVAL. */
int dirty_log_mode_parse(const char *s, struct dirty_log_config *cfg);

/*
 * Logging is turned on and off per slot with vm_set_user_memory_region()
 * (flag KVM_MEM_LOG_DIRTY_PAGES). Turning it on write-protects the slot's
 * leaves at every level through the rmaps (the page table for tdp, the
 * active list for walk), or in D-bit mode clears D on 4 KiB leaves and
 * write-protects the huge ones; with initially_set it only sets every bit.
 * Logged slots map 4 KiB; a write to a protected huge mapping replaces it.
 *
 * Bitmaps below are little-endian 64-bit words, bit i = page first_page + i
 * of the slot, ALIGN(npages, 64) / 8 bytes for a whole slot. @slot is
 * (as_id << 16) | id. All harvest calls serialize on the VM's slots_lock and
 * return -EINVAL for a bad slot, -ENOENT when the slot is not logged, -ENXIO
 * when the mode has no bitmap (ring).
 */

/*
 * dirty_log_get() - KVM_GET_DIRTY_LOG. Bitmap mode: fetch and clear the
 * slot's dirty bits and re-protect those pages (algorithm as configured);
 * remote TLBs are flushed before the call returns. Manual mode: copy the
 * bits, change nothing. D-bit mode first drains every vCPU's PML buffer.
 */
int dirty_log_get(struct vm *vm, uint32_t slot, uint64_t *bitmap);

/*
 * dirty_log_clear() - KVM_CLEAR_DIRTY_LOG (manual mode): for each bit set in
 * @bitmap, clear it in the slot's bitmap and, if it was set there, re-protect
 * the page. first_page must be a multiple of 64 and at most npages; num_pages
 * must not pass the slot's end and must be a multiple of 64 unless the range
 * reaches the end; otherwise -EINVAL. Flushes TLBs before returning.
 */
int dirty_log_clear(struct vm *vm, uint32_t slot, uint64_t first_page, uint64_t num_pages,
		    const uint64_t *bitmap);

/*
 * dirty_log_get_and_clear_range() - the talk's "GET_DIRTY_LOG on a range":
 * fetch, clear and re-protect [first_page, first_page + num_pages) only
 * (alignment rules of dirty_log_clear()), holding mmu_lock for that range
 * only. Bitmap and manual modes.
 */
int dirty_log_get_and_clear_range(struct vm *vm, uint32_t slot, uint64_t first_page,
				  uint64_t num_pages, uint64_t *bitmap);

/*
 * Dirty ring (ring mode). Each vCPU owns a ring of struct dirty_gfn, filled
 * in order as it dirties pages. A harvest reads entries in order (flags with
 * acquire), hands (slot, offset) to @fn and marks them RESET (release);
 * dirty_ring_reset() then re-protects the pages of RESET entries (coalesced
 * into 64-page masks) and frees their places. A vCPU whose ring reaches its
 * soft limit (size - 64, minus 512 more in D-bit mode) stops before its next
 * access ("ring full exit") until a reset makes room.
 */
struct dirty_gfn {
	uint32_t flags;	  /* DIRTY_GFN_F_* */
	uint32_t slot;	  /* (as_id << 16) | id */
	uint64_t offset;  /* gfn - base_gfn */
};
#define DIRTY_GFN_F_DIRTY (1u << 0)
#define DIRTY_GFN_F_RESET (1u << 1)

/*
 * dirty_ring_harvest() - deliver every published entry of vCPU @vcpu's ring
 * (draining its PML buffer first in D-bit mode). Returns the number of
 * entries, -EINVAL (bad vCPU) or -ENXIO (not ring mode). One harvester per
 * ring at a time (serialized internally).
 */
int dirty_ring_harvest(struct vm *vm, int vcpu, ring_entry_fn fn, void *opaque);
/* dirty_ring_reset() - KVM_RESET_DIRTY_RINGS: returns the entries reset, or -ENXIO. */
int dirty_ring_reset(struct vm *vm);
/* Entries pushed and not yet reset on @vcpu's ring, or -EINVAL / -ENXIO. */
int dirty_ring_used(struct vm *vm, int vcpu);

/* Counters of dirty logging; read racily but atomically. */
struct dirty_log_stats {
	uint64_t harvests;	    /* get, get-and-clear, clear and ring-reset calls */
	uint64_t dirty_pages;	    /* pages reported (bits fetched, entries reset) */
	uint64_t reprotected;	    /* sptes that lost W (or D) in harvests */
	uint64_t flushes;	    /* remote TLB flushes by dirty logging */
	uint64_t lock_hold_ns;	    /* mmu_lock held by harvests, in total */
	uint64_t lock_hold_max_ns;  /* longest single hold */
	uint64_t last_lock_hold_ns; /* held by the last harvest call (all its holds) */
	uint64_t last_harvest_ns;   /* wall time of the last harvest call */
	uint64_t grace_periods;	    /* walk: bitmap swaps behind a grace period */
	uint64_t walk_sptes;	    /* walk: sptes scanned on active_mmu_pages */
	uint64_t enable_wp;	    /* sptes protected when logging was turned on */
	uint64_t huge_split;	    /* huge leaves split eagerly */
	uint64_t huge_recovered;    /* 4 KiB leaves zapped so huge mappings return */
	uint64_t ring_pushes;	    /* entries pushed to rings */
	uint64_t ring_full_exits;   /* vCPU stops on a soft-full ring */
	uint64_t ring_overflows;    /* pushes to a hard-full ring (logged in the bitmap) */
	uint64_t ring_masks;	    /* coalesced 64-page masks applied by resets */
	uint64_t pml_flushes;	    /* PML buffers drained */
	uint64_t pml_entries;	    /* gpas logged through PML */
};

void dirty_log_get_stats(struct vm *vm, struct dirty_log_stats *st);

/*
 * dirty_log_inject_writes() - benchmarks only: dirty @count pages of @slot
 * starting at page @first, every @stride pages, exactly as the lockless fast
 * path does for a vCPU write fault (set W and D on the mapped 4 KiB leaf by
 * cmpxchg, then log the page), without touching guest memory. Pages with
 * no 4 KiB leaf are only logged. Returns the pages dirtied or -errno.
 */
int64_t dirty_log_inject_writes(struct vm *vm, uint32_t slot, uint64_t first, uint64_t count,
				uint64_t stride);

#endif /* RMAPVM_DIRTY_LOG_H */
