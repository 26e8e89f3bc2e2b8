/* rmap.h: reverse mappings: rmap heads, pte_list_desc chains, their iterators and caches. */
#ifndef RMAPVM_RMAP_H
#define RMAPVM_RMAP_H

#include <assert.h>
#include <stdint.h>
#include "rmapvm/types.h"

/*
 * mmu_memory_cache - objects pre-allocated outside mmu_lock so that code
 * under the lock never calls the allocator (KVM's kvm_mmu_memory_cache).
 * One per thread that changes page tables (each vCPU, each host caller).
 */
#define MMU_CACHE_CAPACITY 64
struct mmu_memory_cache {
	size_t obj_size;		       /* bytes per object, fixed at init */
	int nobjs;			       /* objects available in @objects */
	void *objects[MMU_CACHE_CAPACITY];     /* LIFO stack of free objects */
};

void mmu_memory_cache_init(struct mmu_memory_cache *mc, size_t obj_size);
/* Fill @mc to at least @min objects; call without mmu_lock. Returns 0 or -ENOMEM. */
int mmu_memory_cache_topup(struct mmu_memory_cache *mc, int min);
/* Take one zeroed object; the cache must have been topped up (asserted). */
void *mmu_memory_cache_alloc(struct mmu_memory_cache *mc);
/* Give an object back (kept if there is room, else freed). */
void mmu_memory_cache_put(struct mmu_memory_cache *mc, void *obj);
void mmu_memory_cache_free(struct mmu_memory_cache *mc);

/*
 * rmap_head - which sptes map one (memslot, gfn, level). One word:
 *   val == 0             no spte
 *   bit 0 clear          val is the only sptep (sptes are 8-byte aligned)
 *   bit 0 set            val & ~1 points to a chain of pte_list_desc
 * Changed only under mmu_lock (write).
 */
struct rmap_head {
	uintptr_t val;
};

#define RMAP_MANY   1ul
#define PTE_LIST_EXT 14

/*
 * pte_list_desc - 14 sptes of a "many" rmap. Only the head descriptor of a
 * chain may be partly full; every later one is full, so the total is
 * head->spte_count + head->tail_count in O(1).
 */
struct pte_list_desc {
	struct pte_list_desc *more;	 /* next (full) descriptor, or NULL */
	uint32_t spte_count;		 /* entries used in this descriptor */
	uint32_t tail_count;		 /* entries in all descriptors after this one */
	uint64_t *sptes[PTE_LIST_EXT];	 /* sptep of each mapping */
};
static_assert(sizeof(struct pte_list_desc) == 128, "pte_list_desc is two cache lines");

/*
 * pte_list_add() - add @sptep to @head; descriptors come from @mc.
 * Returns the number of sptes on @head before the insertion.
 */
unsigned int pte_list_add(struct mmu_memory_cache *mc, uint64_t *sptep, struct rmap_head *head);
/*
 * pte_list_remove() - remove @sptep, which must be on @head; the head
 * descriptor's last entry fills the hole; an emptied descriptor goes to @mc.
 * Returns 0, or -ENOENT when @sptep is not on @head (a bug in the caller).
 */
int pte_list_remove(struct mmu_memory_cache *mc, uint64_t *sptep, struct rmap_head *head);
/* Drop every entry of @head at once (the sptes themselves are not touched). */
void pte_list_destroy(struct mmu_memory_cache *mc, struct rmap_head *head);
/* Number of sptes on @head, O(1). */
unsigned int pte_list_count(const struct rmap_head *head);
/* Descriptors in use by @head (for metadata accounting). */
unsigned int pte_list_desc_count(const struct rmap_head *head);

/* rmap_iterator - position in one rmap; all fields private. */
struct rmap_iterator {
	struct pte_list_desc *desc; /* current descriptor, NULL for a single entry */
	int pos;		    /* index in desc->sptes */
};

/*
 * rmap_get_first() - first sptep of @head, or NULL. Loops may change the
 * sptes they visit, but after removing an entry from the rmap they must
 * restart from rmap_get_first() (the removal moved another entry).
 */
uint64_t *rmap_get_first(const struct rmap_head *head, struct rmap_iterator *iter);
uint64_t *rmap_get_next(struct rmap_iterator *iter);

#define for_each_rmap_spte(_head_, _iter_, _sptep_)                                                \
	for (_sptep_ = rmap_get_first(_head_, _iter_); _sptep_; _sptep_ = rmap_get_next(_iter_))

#endif /* RMAPVM_RMAP_H */
