/* memslot.h: guest memory slots (KVM_SET_USER_MEMORY_REGION semantics) and their rmap arrays. */
#ifndef RMAPVM_MEMSLOT_H
#define RMAPVM_MEMSLOT_H

#include <stdint.h>
#include "rmapvm/types.h"
#include "rmapvm/rmap.h"

#define KVM_MEM_LOG_DIRTY_PAGES (1u << 0)
#define KVM_MEM_READONLY	(1u << 1)
#define KVM_MEM_VALID_FLAGS	(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY)
/*
 * Internal: a slot being deleted or moved. It stays in the published set
 * (so MMU-notifier invalidations still find and zap its sptes) while its
 * sptes are zapped, but faults on it retry and nothing new maps it.
 */
#define KVM_MEMSLOT_INVALID	(1u << 16)

#define KVM_ADDRESS_SPACE_NUM 2
#define KVM_USER_MEM_SLOTS    32764
#define KVM_MEM_MAX_NR_PAGES  ((1ull << 31) - 1)
/* Guest physical addresses are 52 bits wide (MAXPHYADDR). */
#define KVM_MAX_GPA_BITS 52

/* Number of huge levels with lpage_info (2 MiB, 1 GiB). */
#define KVM_NR_HUGE_LEVELS (PG_LEVEL_MAX_LEAF - 1)

/* Backing kind of the host memory under a slot, as reported by backing.c. */
struct mem_backing;

/*
 * memslot - one contiguous guest-physical range backed by one contiguous
 * host-virtual range. Immutable once published except for the rmaps
 * (mmu_lock), lpage_info counters (mmu_lock) and dirty bitmaps (atomics).
 */
struct memslot {
	gfn_t base_gfn;		 /* first gfn */
	uint64_t npages;	 /* number of 4 KiB pages */
	hva_t userspace_addr;	 /* hva of base_gfn */
	uint32_t flags;		 /* KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY */
	uint16_t id;		 /* slot number within its address space */
	uint16_t as_id;		 /* address space */
	/* rmap[L - 1]: one head per frame of level L, indexed by gfn_to_index() */
	struct rmap_head *rmap[PG_LEVEL_MAX_LEAF];
	/* lpage_info[L - 2]: disallow_lpage counter per frame of huge level L */
	int *disallow_lpage[KVM_NR_HUGE_LEVELS];
	/* Two bitmaps back to back (live, then scratch), ALIGN(npages, 64) bits each;
	 * NULL unless dirty logging with a bitmap is on. */
	uint64_t *dirty_bitmap;
	/* Host memory registered for [userspace_addr, +npages pages), or NULL. */
	const struct mem_backing *backing;
	/* Dirty-logging private state, owned by src/mmu/dirty_log.c. */
	void *dirty_log_priv;
};

/* Index of the level-@level frame holding @gfn, relative to @base_gfn's frame. */
static inline uint64_t gfn_to_index(gfn_t gfn, gfn_t base_gfn, int level)
{
	return (gfn >> KVM_HPAGE_GFN_SHIFT(level)) - (base_gfn >> KVM_HPAGE_GFN_SHIFT(level));
}

/* Entries in the level-@level arrays of a slot. */
static inline uint64_t memslot_level_entries(const struct memslot *slot, int level)
{
	return gfn_to_index(slot->base_gfn + slot->npages - 1, slot->base_gfn, level) + 1;
}

static inline struct rmap_head *gfn_to_rmap(gfn_t gfn, int level, const struct memslot *slot)
{
	return &slot->rmap[level - 1][gfn_to_index(gfn, slot->base_gfn, level)];
}

static inline int *lpage_disallowed(gfn_t gfn, int level, const struct memslot *slot)
{
	return &slot->disallow_lpage[level - 2][gfn_to_index(gfn, slot->base_gfn, level)];
}

static inline hva_t gfn_to_hva_memslot(const struct memslot *slot, gfn_t gfn)
{
	return slot->userspace_addr + ((gfn - slot->base_gfn) << PAGE_SHIFT);
}

static inline bool memslot_contains(const struct memslot *slot, gfn_t gfn)
{
	return gfn >= slot->base_gfn && gfn < slot->base_gfn + slot->npages;
}

static inline uint64_t memslot_dirty_bitmap_words(const struct memslot *slot)
{
	return DIV_ROUND_UP(slot->npages, 64);
}

/*
 * memslots - one address space's slots. As in KVM there are two sets per
 * address space: an update edits the inactive set, publishes it, waits for
 * a grace period (every vCPU left its read side, KVM's SRCU), then applies
 * the same edit to the other set. Readers never see a set change.
 */
struct memslots {
	uint64_t generation;	   /* bumped by each update */
	int nr;			   /* number of slots */
	struct memslot **by_gfn;   /* sorted by base_gfn: gfn lookup in O(log n) */
	struct memslot **by_hva;   /* sorted by userspace_addr */
	hva_t *hva_max_end;	   /* hva_max_end[i] = max end of by_hva[0..i] */
	int capacity;		   /* allocated entries of the three arrays */
};

/* Slot holding @gfn, or NULL. O(log n); caller in a grace-period read side. */
struct memslot *memslots_find_gfn(const struct memslots *slots, gfn_t gfn);

/*
 * memslot_hva_iter - slots whose hva range intersects [start, end), by
 * binary search over by_hva and the running maximum of ends.
 */
struct memslot_hva_iter {
	const struct memslots *slots; /* input */
	hva_t start, end;	      /* input: hva range */
	int idx;		      /* private: next candidate in by_hva, counting down */
};

void memslot_hva_iter_init(struct memslot_hva_iter *it, const struct memslots *slots, hva_t start,
			   hva_t end);
struct memslot *memslot_hva_iter_next(struct memslot_hva_iter *it);

#define for_each_memslot_in_hva_range(_slot_, _it_, _slots_, _start_, _end_)                      \
	for (memslot_hva_iter_init(_it_, _slots_, _start_, _end_);                                 \
	     ((_slot_) = memslot_hva_iter_next(_it_)) != NULL;)

#define for_each_memslot(_slot_, _i_, _slots_)                                                     \
	for ((_i_) = 0; (_i_) < (_slots_)->nr && ((_slot_) = (_slots_)->by_gfn[_i_], 1); (_i_)++)

/*
 * slot_rmap_walk_iterator - every non-empty rmap head of a slot over a gfn
 * range and a level range, level by level (KVM's slot_rmap_walk_iterator).
 */
struct slot_rmap_walk_iterator {
	/* input */
	const struct memslot *slot;
	gfn_t start_gfn;	/* first gfn (inclusive) */
	gfn_t end_gfn;		/* last gfn (inclusive) */
	int start_level;
	int end_level;
	/* output */
	gfn_t gfn;		/* a gfn in the frame of @rmap (start_gfn, then frame bases) */
	struct rmap_head *rmap; /* current non-empty head */
	int level;		/* level of @rmap */
	/* private */
	struct rmap_head *end_rmap;
};

void slot_rmap_walk_init(struct slot_rmap_walk_iterator *it, const struct memslot *slot,
			 int start_level, int end_level, gfn_t start_gfn, gfn_t end_gfn);
bool slot_rmap_walk_okay(const struct slot_rmap_walk_iterator *it);
void slot_rmap_walk_next(struct slot_rmap_walk_iterator *it);

#define for_each_slot_rmap_range(_slot_, _start_level_, _end_level_, _start_gfn_, _end_gfn_,      \
				 _iter_)                                                           \
	for (slot_rmap_walk_init(_iter_, _slot_, _start_level_, _end_level_, _start_gfn_,          \
				 _end_gfn_);                                                       \
	     slot_rmap_walk_okay(_iter_); slot_rmap_walk_next(_iter_))

#endif /* RMAPVM_MEMSLOT_H */
