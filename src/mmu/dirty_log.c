/* dirty_log.c: dirty logging in the soft MMU: bitmaps, enable/disable, harvest. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mmu_internal.h"

bool dirty_log_uses_dbit(const struct vm *vm)
{
	return false;
}

void vcpu_pml_log(struct vcpu *vcpu, gfn_t gfn)
{
}

void mark_page_dirty_in_slot(struct vm *vm, struct vcpu *vcpu, const struct memslot *slot, gfn_t gfn)
{
	uint64_t rel = gfn - slot->base_gfn;

	if (!(slot->flags & KVM_MEM_LOG_DIRTY_PAGES) || !slot->dirty_bitmap)
		return;
	/* Relaxed is enough: the harvester takes words with an atomic exchange. */
	__atomic_fetch_or(&slot->dirty_bitmap[rel / 64], 1ull << (rel % 64), __ATOMIC_RELAXED);
}

int dirty_log_prepare_memslot(struct vm *vm, const struct memslot *old, struct memslot *new)
{
	if (!(new->flags & KVM_MEM_LOG_DIRTY_PAGES))
		return 0;
	if (old && old->dirty_bitmap) {
		new->dirty_bitmap = old->dirty_bitmap;
		return 0;
	}
	new->dirty_bitmap = calloc(2 * memslot_dirty_bitmap_words(new), sizeof(uint64_t));
	return new->dirty_bitmap ? 0 : -ENOMEM;
}

/* Clear W on every leaf of @slot through its rmaps. Under mmu_lock (write). */
static bool slot_rmap_write_protect(const struct memslot *slot)
{
	struct slot_rmap_walk_iterator it;
	bool flush = false;

	for_each_slot_rmap_range(slot, PG_LEVEL_4K, PG_LEVEL_MAX_LEAF, slot->base_gfn,
				 slot->base_gfn + slot->npages - 1, &it) {
		struct rmap_iterator iter;
		uint64_t *sptep;

		for_each_rmap_spte(it.rmap, &iter, sptep)
			if (spte_clear_bits(sptep, SPTE_W_MASK) & SPTE_W_MASK)
				flush = true;
	}
	return flush;
}

void dirty_log_commit_memslot(struct vm *vm, const struct memslot *old, struct memslot *new)
{
	bool was = old && (old->flags & KVM_MEM_LOG_DIRTY_PAGES);

	if ((new->flags & KVM_MEM_LOG_DIRTY_PAGES) && !was) {
		mmu_write_lock(vm);
		if (slot_rmap_write_protect(new))
			vm_flush_remote_tlbs(vm);
		mmu_write_unlock(vm);
	}
}

void dirty_log_free_memslot(struct vm *vm, struct memslot *slot)
{
	free(slot->dirty_bitmap);
	slot->dirty_bitmap = NULL;
}
