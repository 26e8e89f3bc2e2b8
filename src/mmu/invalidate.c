/* invalidate.c: MMU-notifier protocol, unmap_hva_range in four variants, and aging through rmap. */
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "rmapvm/invalidate.h"
#include "mmu_internal.h"

/*
 * Protocol (KVM's kvm_mmu_notifier_invalidate_range_start/end, see
 * docs/INVALIDATION.md):
 *  start: mn_active_invalidate_count++ (memslot updates now wait), then under
 *         mmu_lock, if any slot maps the range: in_progress++ (resetting the
 *         gfn range when it was the first), widen [range_start, range_end) to
 *         cover the slots' gfns, zap, one remote TLB flush.
 *  end:   under mmu_lock, if any slot maps the range: seq++, in_progress--;
 *         then mn_active_invalidate_count--, wake memslot updaters.
 * The memslot sets cannot change between the two calls (memslots_swap()
 * waits for mn_active_invalidate_count == 0), so both calls make the same
 * "any slot maps it" decision and in_progress stays balanced.
 */

#define INVALID_GFN (~(gfn_t)0)

static const char *const variant_names[UNMAP_NR_VARIANTS] = {
	[UNMAP_LEVEL_RANGE] = "level_range",
	[UNMAP_SLOT_RANGE] = "slot_range",
	[UNMAP_PER_PAGE] = "per_page",
	[UNMAP_TDP] = "tdp",
};

int unmap_variant_parse(const char *s, enum unmap_variant *v)
{
	int i;

	for (i = 0; i < UNMAP_NR_VARIANTS; i++) {
		if (!strcasecmp(s, variant_names[i])) {
			*v = i;
			return 0;
		}
	}
	return -EINVAL;
}

const char *unmap_variant_name(enum unmap_variant v)
{
	return (unsigned int)v < UNMAP_NR_VARIANTS ? variant_names[v] : "?";
}

int invalidate_set_variant(struct vm *vm, enum unmap_variant v)
{
	if ((unsigned int)v >= UNMAP_NR_VARIANTS)
		return -EINVAL;
	WRITE_ONCE(vm->unmap_variant, (int)v);
	return 0;
}

enum unmap_variant invalidate_get_variant(const struct vm *vm)
{
	return (enum unmap_variant)READ_ONCE(vm->unmap_variant);
}

static hva_t slot_hva_end(const struct memslot *slot)
{
	return slot->userspace_addr + (slot->npages << PAGE_SHIFT);
}

/* gfn of @hva in @slot (@hva inside the slot, or its end for an exclusive bound). */
static gfn_t hva_to_gfn_memslot(hva_t hva, const struct memslot *slot)
{
	return slot->base_gfn + ((hva - slot->userspace_addr) >> PAGE_SHIFT);
}

/*
 * Page-align [*start, *end): start down, end up (a partly covered last page
 * is included). False for an empty or wrapping range.
 */
static bool hva_range_normalize(hva_t *start, hva_t *end)
{
	if (*start >= *end || *end > UINTPTR_MAX - (PAGE_SIZE - 1))
		return false;
	*start = ALIGN_DOWN(*start, PAGE_SIZE);
	*end = ALIGN_UP(*end, PAGE_SIZE);
	return true;
}

/* ---- handlers: return true when a remote TLB flush is needed ---- */

/* Zap every spte on @rmap (gfn @gfn of @slot at @level). Under mmu_lock (write). */
static bool __zap_rmap(struct vm *vm, struct mmu_caches *c, const struct memslot *slot,
		       struct rmap_head *rmap, gfn_t gfn, int level)
{
	struct rmap_iterator iter;
	uint64_t *sptep;
	bool flush = false;

	/* Removing an entry moves another one: restart from the first. */
	while ((sptep = rmap_get_first(rmap, &iter)))
		flush |= mmu_zap_leaf(vm, c, slot, sptep, gfn, level);
	return flush;
}

/* One 4 KiB page of @slot: its rmap at every level (the 2012 kvm_handle_hva()). */
static bool __unmap_gfn_all_levels(struct vm *vm, struct mmu_caches *c,
				   const struct memslot *slot, gfn_t gfn)
{
	bool flush = false;
	int level;

	for (level = PG_LEVEL_4K; level <= PG_LEVEL_MAX_LEAF; level++) {
		struct rmap_head *rmap = gfn_to_rmap(gfn, level, slot);

		if (rmap->val)
			flush |= __zap_rmap(vm, c, slot, rmap, gfn, level);
	}
	return flush;
}

/* UNMAP_PER_PAGE: for each page, every slot of every address space. */
static bool __unmap_per_page(struct vm *vm, struct mmu_caches *c, hva_t start, hva_t end)
{
	bool flush = false;
	hva_t hva;
	int as, i;

	for (hva = start; hva < end; hva += PAGE_SIZE) {
		for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++) {
			const struct memslots *slots = vm_memslots(vm, as);

			for (i = 0; i < slots->nr; i++) {
				const struct memslot *slot = slots->by_gfn[i];

				if (hva < slot->userspace_addr || hva >= slot_hva_end(slot))
					continue;
				flush |= __unmap_gfn_all_levels(vm, c, slot,
								hva_to_gfn_memslot(hva, slot));
			}
		}
	}
	return flush;
}

/* UNMAP_SLOT_RANGE: per intersecting slot, per page, every level. */
static bool __unmap_slot_range(struct vm *vm, struct mmu_caches *c, const struct memslot *slot,
			       gfn_t gfn_start, gfn_t gfn_end)
{
	bool flush = false;
	gfn_t gfn;

	for (gfn = gfn_start; gfn < gfn_end; gfn++)
		flush |= __unmap_gfn_all_levels(vm, c, slot, gfn);
	return flush;
}

/* UNMAP_LEVEL_RANGE: per level, the rmap index range of [gfn_start, gfn_end) once. */
static bool __unmap_level_range(struct vm *vm, struct mmu_caches *c, const struct memslot *slot,
				gfn_t gfn_start, gfn_t gfn_end)
{
	struct slot_rmap_walk_iterator it;
	bool flush = false;

	for_each_slot_rmap_range(slot, PG_LEVEL_4K, PG_LEVEL_MAX_LEAF, gfn_start, gfn_end - 1, &it)
		flush |= __zap_rmap(vm, c, slot, it.rmap, it.gfn, it.level);
	return flush;
}

/*
 * UNMAP_TDP: walk the table @spt (entries at @level, first gfn @base) over
 * [gfn_start, gfn_end) and zap every leaf that maps any of it; no rmap is
 * consulted to find them (the rmap entry is still dropped, since the other
 * variants and faults rely on rmaps).
 */
static bool __unmap_tdp_walk(struct vm *vm, struct mmu_caches *c, const struct memslot *slot,
			     uint64_t *spt, int level, gfn_t base, gfn_t gfn_start, gfn_t gfn_end)
{
	uint64_t span = KVM_PAGES_PER_HPAGE(level);
	gfn_t first = MAX(gfn_start, base);
	unsigned int i = (unsigned int)((first - base) / span);
	bool flush = false;

	for (; i < PT64_ENT_PER_PAGE; i++) {
		gfn_t gfn = base + i * span;
		uint64_t *sptep = &spt[i];
		uint64_t spte;

		if (gfn >= gfn_end)
			break;
		spte = spte_read(sptep);
		if (!is_shadow_present_pte(spte))
			continue;
		if (is_last_spte(spte, level))
			flush |= mmu_zap_leaf(vm, c, slot, sptep, gfn, level);
		else
			flush |= __unmap_tdp_walk(vm, c, slot, spte_to_child_spt(spte), level - 1,
						  gfn, gfn_start, gfn_end);
	}
	return flush;
}

static bool __unmap_tdp(struct vm *vm, struct mmu_caches *c, const struct memslot *slot,
			gfn_t gfn_start, gfn_t gfn_end)
{
	return __unmap_tdp_walk(vm, c, slot, vm->root[slot->as_id]->spt, PT64_ROOT_LEVEL, 0,
				gfn_start, gfn_end);
}

/*
 * Clamp [start, end) to @slot and convert it to gfns [*gs, *ge); the end
 * rounds up so a partly covered last page is included. False if disjoint.
 */
static bool slot_hva_range_to_gfns(const struct memslot *slot, hva_t start, hva_t end, gfn_t *gs,
				   gfn_t *ge)
{
	hva_t s = MAX(start, slot->userspace_addr);
	hva_t e = MIN(end, slot_hva_end(slot));

	if (s >= e)
		return false;
	*gs = hva_to_gfn_memslot(s, slot);
	*ge = hva_to_gfn_memslot(ALIGN_UP(e, PAGE_SIZE), slot);
	return true;
}

/*
 * __unmap_hva_range() - zap every spte mapping a byte of [start, end)
 * (page aligned) with @variant. Under mmu_lock (write); memslots stable.
 * Returns true if a remote TLB flush is needed.
 */
static bool __unmap_hva_range(struct vm *vm, enum unmap_variant variant, struct mmu_caches *c,
			      hva_t start, hva_t end)
{
	bool flush = false;
	int as;

	if (variant == UNMAP_PER_PAGE)
		return __unmap_per_page(vm, c, start, end);

	for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++) {
		struct memslot_hva_iter it;
		struct memslot *slot;

		for_each_memslot_in_hva_range(slot, &it, vm_memslots(vm, as), start, end) {
			gfn_t gs, ge;

			if (!slot_hva_range_to_gfns(slot, start, end, &gs, &ge))
				continue;
			switch (variant) {
			case UNMAP_SLOT_RANGE:
				flush |= __unmap_slot_range(vm, c, slot, gs, ge);
				break;
			case UNMAP_TDP:
				flush |= __unmap_tdp(vm, c, slot, gs, ge);
				break;
			default:
				flush |= __unmap_level_range(vm, c, slot, gs, ge);
				break;
			}
		}
	}
	return flush;
}

/*
 * The union over all address spaces of the gfn ranges that [start, end)
 * covers; false when no slot maps any of it. Memslots stable.
 */
static bool hva_range_gfn_union(struct vm *vm, hva_t start, hva_t end, gfn_t *ustart, gfn_t *uend)
{
	bool found = false;
	int as;

	*ustart = INVALID_GFN;
	*uend = 0;
	for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++) {
		struct memslot_hva_iter it;
		struct memslot *slot;

		for_each_memslot_in_hva_range(slot, &it, vm_memslots(vm, as), start, end) {
			gfn_t gs, ge;

			if (!slot_hva_range_to_gfns(slot, start, end, &gs, &ge))
				continue;
			found = true;
			*ustart = MIN(*ustart, gs);
			*uend = MAX(*uend, ge);
		}
	}
	return found;
}

/* ---- the notifier ---- */

int invalidate_range_start(struct vm *vm, hva_t start, hva_t end)
{
	enum unmap_variant variant = invalidate_get_variant(vm);
	struct mmu_caches c;
	gfn_t gs, ge;
	bool flush = false;

	if (!hva_range_normalize(&start, &end))
		return -EINVAL;

	/* From here until _end, memslot sets cannot be swapped. */
	pthread_mutex_lock(&vm->mn_lock);
	vm->mn_active_invalidate_count++;
	pthread_mutex_unlock(&vm->mn_lock);

	/* Zapping frees descriptors into this cache; it allocates nothing. */
	mmu_caches_init(&c);
	mmu_write_lock(vm);
	if (hva_range_gfn_union(vm, start, end, &gs, &ge)) {
		/* invalidate begin: a fresh range when no other invalidation runs. */
		if (!vm->mmu_invalidate_in_progress++) {
			WRITE_ONCE(vm->mmu_invalidate_range_start, INVALID_GFN);
			WRITE_ONCE(vm->mmu_invalidate_range_end, 0);
		}
		/* range add: the union of all in-progress ranges. */
		WRITE_ONCE(vm->mmu_invalidate_range_start, MIN(vm->mmu_invalidate_range_start, gs));
		WRITE_ONCE(vm->mmu_invalidate_range_end, MAX(vm->mmu_invalidate_range_end, ge));
		flush = __unmap_hva_range(vm, variant, &c, start, end);
	}
	/* One flush for the whole call, before mmu_lock is dropped. */
	if (flush)
		vm_flush_remote_tlbs(vm);
	mmu_write_unlock(vm);
	mmu_memory_cache_free(&c.desc_cache);
	return 0;
}

int invalidate_range_end(struct vm *vm, hva_t start, hva_t end)
{
	gfn_t gs, ge;
	int r = 0;

	if (!hva_range_normalize(&start, &end))
		return -EINVAL;

	mmu_write_lock(vm);
	if (hva_range_gfn_union(vm, start, end, &gs, &ge)) {
		if (vm->mmu_invalidate_in_progress <= 0) {
			r = -EINVAL;
		} else {
			/*
			 * Bump the sequence before ending the range: a fault that
			 * resolved its page before this point sees one or the other.
			 */
			__atomic_store_n(&vm->mmu_invalidate_seq, vm->mmu_invalidate_seq + 1,
					 __ATOMIC_RELEASE);
			WRITE_ONCE(vm->mmu_invalidate_in_progress,
				   vm->mmu_invalidate_in_progress - 1);
		}
	}
	mmu_write_unlock(vm);

	pthread_mutex_lock(&vm->mn_lock);
	if (vm->mn_active_invalidate_count > 0 && !--vm->mn_active_invalidate_count)
		pthread_cond_broadcast(&vm->mn_cond);
	pthread_mutex_unlock(&vm->mn_lock);
	return r;
}

/* ---- aging ---- */

/* Test (and with @clear, clear) A on every spte mapping [start, end). */
static bool __age_hva_range(struct vm *vm, hva_t start, hva_t end, bool clear)
{
	bool young = false;
	int as;

	for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++) {
		struct memslot_hva_iter mit;
		struct memslot *slot;

		for_each_memslot_in_hva_range(slot, &mit, vm_memslots(vm, as), start, end) {
			struct slot_rmap_walk_iterator it;
			gfn_t gs, ge;

			if (!slot_hva_range_to_gfns(slot, start, end, &gs, &ge))
				continue;
			for_each_slot_rmap_range(slot, PG_LEVEL_4K, PG_LEVEL_MAX_LEAF, gs, ge - 1,
						 &it) {
				struct rmap_iterator iter;
				uint64_t *sptep;

				for_each_rmap_spte(it.rmap, &iter, sptep) {
					if (!clear) {
						if (is_accessed_spte(spte_read(sptep)))
							return true;
						continue;
					}
					/* The walker sets A without mmu_lock: atomic clear. */
					if (spte_clear_bits(sptep, SPTE_A_MASK) & SPTE_A_MASK)
						young = true;
				}
			}
		}
	}
	return young;
}

static bool age_hva_range(struct vm *vm, hva_t start, hva_t end, bool clear, bool flush)
{
	bool young;

	if (!hva_range_normalize(&start, &end))
		return false;
	/* Memslots must not change under the walk: same guard as invalidation. */
	pthread_mutex_lock(&vm->mn_lock);
	vm->mn_active_invalidate_count++;
	pthread_mutex_unlock(&vm->mn_lock);

	/* For write even to test: shared-lock faults change rmap heads under read. */
	mmu_write_lock(vm);
	young = __age_hva_range(vm, start, end, clear);
	if (young && flush)
		vm_flush_remote_tlbs(vm);
	mmu_write_unlock(vm);

	pthread_mutex_lock(&vm->mn_lock);
	if (!--vm->mn_active_invalidate_count)
		pthread_cond_broadcast(&vm->mn_cond);
	pthread_mutex_unlock(&vm->mn_lock);
	return young;
}

bool invalidate_test_young(struct vm *vm, hva_t start, hva_t end)
{
	return age_hva_range(vm, start, end, false, false);
}

bool invalidate_clear_young(struct vm *vm, hva_t start, hva_t end)
{
	return age_hva_range(vm, start, end, true, false);
}

bool invalidate_clear_flush_young(struct vm *vm, hva_t start, hva_t end)
{
	return age_hva_range(vm, start, end, true, true);
}
