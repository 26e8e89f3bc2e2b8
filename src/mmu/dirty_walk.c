/* dirty_walk.c: reaching the sptes to re-protect: through rmaps, by page-table walk (tdp), by the 2012 active-list walk. */
#include "dirty_internal.h"

static inline bool test_bit_at(const uint64_t *bits, uint64_t i)
{
	return (__atomic_load_n(&bits[i / 64], __ATOMIC_RELAXED) >> (i % 64)) & 1;
}

/*
 * A leaf whose W, A and D are all set has no volatile bits: the fast path
 * only touches sptes without W, the walker only sets a missing A or D, and
 * zaps hold mmu_lock for write. Such a spte can be changed by a plain store
 * (KVM's spte_has_volatile_bits()); any other needs an atomic clear so that
 * a concurrent W, A or D is not lost.
 */
inline bool dirty_spte_reprotect(uint64_t *sptep, bool dbit)
{
	const uint64_t wad = SPTE_W_MASK | SPTE_A_MASK | SPTE_D_MASK;
	uint64_t bit = dbit ? SPTE_D_MASK : SPTE_W_MASK;
	uint64_t spte = spte_read(sptep);

	if (!is_shadow_present_pte(spte) || !(spte & bit))
		return false;
	if ((spte & wad) == wad) {
		__atomic_store_n(sptep, spte & ~bit, __ATOMIC_RELEASE);
		return true;
	}
	return spte_clear_bits(sptep, bit) & bit;
}

/* Huge leaves lose W whatever the mode: a write must fault and map 4 KiB. */
static inline bool spte_protect_huge(uint64_t *sptep)
{
	uint64_t spte = spte_read(sptep);

	if (!is_shadow_present_pte(spte) || !is_writable_pte(spte))
		return false;
	return spte_clear_bits(sptep, SPTE_W_MASK) & SPTE_W_MASK;
}

/* Visit every spte of @head; with @shared the head is locked against faults adding to it. */
static unsigned int rmap_head_reprotect(struct rmap_head *head, int level, bool dbit, bool shared)
{
	struct rmap_iterator iter;
	struct rmap_head tmp;
	unsigned int n = 0;
	uint64_t *sptep;

	if (!__atomic_load_n(&head->val, __ATOMIC_RELAXED))
		return 0;
	if (shared)
		tmp.val = rmap_lock(head);
	else
		tmp.val = head->val;
	if (likely(!(tmp.val & RMAP_MANY))) {
		/* One spte (the common case: one root maps the gfn): no iterator. */
		sptep = (uint64_t *)tmp.val;
		n = level == PG_LEVEL_4K ? dirty_spte_reprotect(sptep, dbit) : spte_protect_huge(sptep);
		goto out;
	}
	for_each_rmap_spte(&tmp, &iter, sptep)
		n += level == PG_LEVEL_4K ? dirty_spte_reprotect(sptep, dbit) : spte_protect_huge(sptep);
out:
	if (shared)
		rmap_unlock(head, tmp.val);
	return n;
}

unsigned int dirty_rmap_reprotect_masked(const struct memslot *slot, gfn_t base, uint64_t mask,
					 bool dbit, bool shared)
{
	unsigned int n = 0;

	/* Lowest set bit, then clear it: the 2012 form (__ffs, mask &= mask - 1). */
	while (mask) {
		gfn_t gfn = base + __builtin_ctzll(mask);

		n += rmap_head_reprotect(gfn_to_rmap(gfn, PG_LEVEL_4K, slot), PG_LEVEL_4K, dbit, shared);
		mask &= mask - 1;
	}
	return n;
}

/*
 * Lowest table on the path to @gfn in @as_id's root: stops where the entry
 * for @gfn is a leaf or not present; *level is that table's level.
 */
static uint64_t *tdp_walk_to(struct vm *vm, int as_id, gfn_t gfn, int *level)
{
	uint64_t *spt = vm->root[as_id]->spt;
	int l;

	for (l = PT64_ROOT_LEVEL; l > PG_LEVEL_4K; l--) {
		uint64_t spte = spte_read(&spt[spte_index(gfn, l)]);

		if (!is_shadow_present_pte(spte) || is_last_spte(spte, l))
			break;
		spt = spte_to_child_spt(spte);
	}
	*level = l;
	return spt;
}

unsigned int dirty_tdp_reprotect(struct dirty_ctx *ctx, gfn_t start, gfn_t end,
				 const uint64_t *bits, gfn_t bits_base)
{
	const struct memslot *slot = ctx->slot;
	unsigned int n = 0;
	gfn_t gfn = start;

	while (gfn <= end) {
		uint64_t *spt;
		int level;

		if (ctx->tdp_spt && ctx->tdp_frame == gfn >> 9) {
			spt = ctx->tdp_spt;
			level = PG_LEVEL_4K;
		} else {
			spt = tdp_walk_to(ctx->vm, slot->as_id, gfn, &level);
			if (level == PG_LEVEL_4K) {
				ctx->tdp_frame = gfn >> 9;
				ctx->tdp_spt = spt;
			}
		}
		if (level == PG_LEVEL_4K) {
			gfn_t tend = MIN(end, gfn | (PT64_ENT_PER_PAGE - 1));

			for (; gfn <= tend; gfn++) {
				if (bits && !test_bit_at(bits, gfn - bits_base))
					continue;
				n += dirty_spte_reprotect(&spt[gfn & (PT64_ENT_PER_PAGE - 1)], ctx->dbit);
			}
			continue;
		}
		/* A huge leaf (or a hole) at @level: handle the frame, skip past it. */
		n += spte_protect_huge(&spt[spte_index(gfn, level)]);
		gfn = ALIGN_DOWN(gfn, KVM_PAGES_PER_HPAGE(level)) + KVM_PAGES_PER_HPAGE(level);
	}
	return n;
}

unsigned int dirty_walk_reprotect(struct vm *vm, const struct memslot *slot, gfn_t start, gfn_t end,
				  const uint64_t *bits, gfn_t bits_base, bool dbit, uint64_t *scanned)
{
	uint64_t slot_bit = 1ull << (slot->id % 64);
	struct mmu_page *sp;
	unsigned int n = 0;

	list_for_each_entry(sp, &vm->active_mmu_pages, link) {
		int level = sp->role.level, i;
		uint64_t pages;

		if (level > PG_LEVEL_MAX_LEAF || sp->role.as_id != slot->as_id ||
		    !(__atomic_load_n(&sp->slot_bitmap, __ATOMIC_RELAXED) & slot_bit))
			continue;
		pages = KVM_PAGES_PER_HPAGE(level);
		*scanned += PT64_ENT_PER_PAGE;
		for (i = 0; i < PT64_ENT_PER_PAGE; i++) {
			uint64_t *sptep = &sp->spt[i];
			uint64_t spte = spte_read(sptep);
			gfn_t gfn;

			if (!is_shadow_present_pte(spte) || !is_last_spte(spte, level))
				continue;
			gfn = sp->gfn + (gfn_t)i * pages;
			if (gfn + pages - 1 < start || gfn > end)
				continue;
			if (level > PG_LEVEL_4K) {
				n += spte_protect_huge(sptep);
				continue;
			}
			if (bits && !test_bit_at(bits, gfn - bits_base))
				continue;
			n += dirty_spte_reprotect(sptep, dbit);
		}
	}
	return n;
}

unsigned int dirty_protect_huge_at(struct dirty_ctx *ctx, gfn_t gfn)
{
	unsigned int n = 0;
	int level;

	if (ctx->algo == DIRTY_ALGO_TDP) {
		uint64_t *spt = tdp_walk_to(ctx->vm, ctx->slot->as_id, gfn, &level);

		ctx->tdp_spt = NULL;
		if (level > PG_LEVEL_4K)
			n += spte_protect_huge(&spt[spte_index(gfn, level)]);
		return n;
	}
	for (level = PG_LEVEL_2M; level <= PG_LEVEL_MAX_LEAF; level++)
		n += rmap_head_reprotect(gfn_to_rmap(gfn, level, ctx->slot), level, false, ctx->shared);
	return n;
}

unsigned int dirty_protect_slot(struct vm *vm, const struct memslot *slot, enum dirty_log_algo algo,
				bool dbit)
{
	gfn_t start = slot->base_gfn, end = slot->base_gfn + slot->npages - 1;
	struct slot_rmap_walk_iterator it;
	unsigned int n = 0;
	uint64_t scanned = 0;

	if (algo == DIRTY_ALGO_WALK)
		return dirty_walk_reprotect(vm, slot, start, end, NULL, 0, dbit, &scanned);
	if (algo == DIRTY_ALGO_TDP) {
		struct dirty_ctx ctx = { .vm = vm, .slot = (struct memslot *)slot, .dbit = dbit };

		return dirty_tdp_reprotect(&ctx, start, end, NULL, 0);
	}
	for_each_slot_rmap_range(slot, PG_LEVEL_4K, PG_LEVEL_MAX_LEAF, start, end, &it)
		n += rmap_head_reprotect(it.rmap, it.level, dbit, false);
	return n;
}
