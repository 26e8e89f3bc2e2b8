/* memslot.c: memslot sets per address space: KVM_SET_USER_MEMORY_REGION, lookups, rmap walks. */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "mmu_internal.h"

static hva_t slot_hva_end(const struct memslot *slot)
{
	return slot->userspace_addr + (slot->npages << PAGE_SHIFT);
}

struct memslot *memslots_find_gfn(const struct memslots *slots, gfn_t gfn)
{
	int lo = 0, hi = slots->nr - 1;

	/* Last slot whose base_gfn <= gfn. */
	while (lo <= hi) {
		int mid = lo + (hi - lo) / 2;

		if (slots->by_gfn[mid]->base_gfn <= gfn)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	if (hi < 0)
		return NULL;
	return memslot_contains(slots->by_gfn[hi], gfn) ? slots->by_gfn[hi] : NULL;
}

void memslot_hva_iter_init(struct memslot_hva_iter *it, const struct memslots *slots, hva_t start,
			   hva_t end)
{
	int lo = 0, hi = slots->nr - 1;

	it->slots = slots;
	it->start = start;
	it->end = end;
	/* Last slot whose hva start < end: candidates are by_hva[0..idx]. */
	while (lo <= hi) {
		int mid = lo + (hi - lo) / 2;

		if (slots->by_hva[mid]->userspace_addr < end)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	it->idx = hi;
}

struct memslot *memslot_hva_iter_next(struct memslot_hva_iter *it)
{
	while (it->idx >= 0) {
		int i = it->idx--;

		/* No slot at or below i ends after start: done. */
		if (it->slots->hva_max_end[i] <= it->start) {
			it->idx = -1;
			return NULL;
		}
		if (slot_hva_end(it->slots->by_hva[i]) > it->start)
			return it->slots->by_hva[i];
	}
	return NULL;
}

/* ---- slot_rmap_walk iterator ---- */

static void rmap_walk_init_level(struct slot_rmap_walk_iterator *it, int level)
{
	it->level = level;
	it->gfn = it->start_gfn;
	it->rmap = gfn_to_rmap(it->start_gfn, level, it->slot);
	it->end_rmap = gfn_to_rmap(it->end_gfn, level, it->slot);
}

/* Advance to the next non-empty head (or past the end: rmap = NULL). */
static void rmap_walk_skip_empty(struct slot_rmap_walk_iterator *it)
{
	while (it->rmap) {
		if (it->rmap <= it->end_rmap) {
			if (it->rmap->val)
				return;
			it->rmap++;
			continue;
		}
		if (++it->level > it->end_level) {
			it->rmap = NULL;
			return;
		}
		rmap_walk_init_level(it, it->level);
	}
}

/* Output gfn: the first gfn of the current frame inside [start_gfn, end_gfn]. */
static void rmap_walk_set_gfn(struct slot_rmap_walk_iterator *it)
{
	const struct memslot *slot = it->slot;
	uint64_t idx = (uint64_t)(it->rmap - slot->rmap[it->level - 1]);
	gfn_t frame = ((slot->base_gfn >> KVM_HPAGE_GFN_SHIFT(it->level)) + idx)
		      << KVM_HPAGE_GFN_SHIFT(it->level);

	it->gfn = MAX(frame, it->start_gfn);
}

void slot_rmap_walk_init(struct slot_rmap_walk_iterator *it, const struct memslot *slot,
			 int start_level, int end_level, gfn_t start_gfn, gfn_t end_gfn)
{
	it->slot = slot;
	it->start_level = start_level;
	it->end_level = end_level;
	it->start_gfn = MAX(start_gfn, slot->base_gfn);
	it->end_gfn = MIN(end_gfn, slot->base_gfn + slot->npages - 1);
	if (it->start_gfn > it->end_gfn || start_level > end_level) {
		it->rmap = NULL;
		return;
	}
	rmap_walk_init_level(it, start_level);
	rmap_walk_skip_empty(it);
	if (it->rmap)
		rmap_walk_set_gfn(it);
}

bool slot_rmap_walk_okay(const struct slot_rmap_walk_iterator *it)
{
	return it->rmap != NULL;
}

void slot_rmap_walk_next(struct slot_rmap_walk_iterator *it)
{
	it->rmap++;
	rmap_walk_skip_empty(it);
	if (it->rmap)
		rmap_walk_set_gfn(it);
}

/* ---- slot metadata ---- */

static void memslot_free_arch(struct memslot *slot)
{
	int i;

	for (i = 0; i < PG_LEVEL_MAX_LEAF; i++)
		free(slot->rmap[i]);
	for (i = 0; i < KVM_NR_HUGE_LEVELS; i++)
		free(slot->disallow_lpage[i]);
}

static const struct mem_backing *vm_find_backing(struct vm *vm, hva_t hva, uint64_t size)
{
	int i;

	for (i = 0; i < vm->nr_backings; i++) {
		const struct mem_backing *b = vm->backings[i];

		if (hva >= b->hva && hva + size <= b->hva + b->size)
			return b;
	}
	return NULL;
}

/*
 * Allocate rmaps per level and disallow_lpage per huge frame: head and tail
 * frames that the slot covers only partly, and every frame when gpa and hva
 * are not congruent modulo the huge size, may not be mapped huge.
 */
static int memslot_alloc_arch(struct memslot *slot)
{
	int level;

	for (level = PG_LEVEL_4K; level <= PG_LEVEL_MAX_LEAF; level++) {
		uint64_t n = memslot_level_entries(slot, level);
		uint64_t pages = KVM_PAGES_PER_HPAGE(level), i;
		int *lpage;

		slot->rmap[level - 1] = calloc(n, sizeof(struct rmap_head));
		if (!slot->rmap[level - 1])
			goto out_free;
		if (level == PG_LEVEL_4K)
			continue;
		lpage = calloc(n, sizeof(int));
		if (!lpage)
			goto out_free;
		slot->disallow_lpage[level - 2] = lpage;
		if (slot->base_gfn & (pages - 1))
			lpage[0] = 1;
		if ((slot->base_gfn + slot->npages) & (pages - 1))
			lpage[n - 1] = 1;
		if ((slot->base_gfn ^ (slot->userspace_addr >> PAGE_SHIFT)) & (pages - 1))
			for (i = 0; i < n; i++)
				lpage[i] = 1;
	}
	return 0;

out_free:
	memslot_free_arch(slot);
	return -ENOMEM;
}

static void memslot_free(struct vm *vm, struct memslot *slot)
{
	if (!slot)
		return;
	dirty_log_free_memslot(vm, slot);
	memslot_free_arch(slot);
	free(slot);
}

/* ---- memslot sets ---- */

static int memslots_reserve(struct memslots *set, int nr)
{
	int cap = set->capacity ? set->capacity : 16;

	if (nr <= set->capacity)
		return 0;
	while (cap < nr)
		cap *= 2;
	struct memslot **g = realloc(set->by_gfn, cap * sizeof(*g));
	if (!g)
		return -ENOMEM;
	set->by_gfn = g;
	struct memslot **h = realloc(set->by_hva, cap * sizeof(*h));
	if (!h)
		return -ENOMEM;
	set->by_hva = h;
	hva_t *m = realloc(set->hva_max_end, cap * sizeof(*m));
	if (!m)
		return -ENOMEM;
	set->hva_max_end = m;
	set->capacity = cap;
	return 0;
}

/* Remove @slot from @arr[0..nr), starting the search at @hint (a lower bound). */
static void memslots_remove_at(struct memslot **arr, int nr, int hint, struct memslot *slot)
{
	int i;

	for (i = hint; i < nr; i++) {
		if (arr[i] == slot) {
			memmove(&arr[i], &arr[i + 1], (nr - i - 1) * sizeof(*arr));
			return;
		}
	}
	assert(0 && "slot missing from memslot set");
}

static int memslots_insert_pos_gfn(const struct memslots *set, const struct memslot *slot)
{
	int lo = 0, hi = set->nr;

	while (lo < hi) {
		int mid = lo + (hi - lo) / 2;

		if (set->by_gfn[mid]->base_gfn < slot->base_gfn)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int memslots_insert_pos_hva(const struct memslots *set, const struct memslot *slot)
{
	int lo = 0, hi = set->nr;

	while (lo < hi) {
		int mid = lo + (hi - lo) / 2;

		if (set->by_hva[mid]->userspace_addr <= slot->userspace_addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* First index in by_hva whose hva start is >= @hva. */
static int memslots_lower_pos_hva(const struct memslots *set, hva_t hva)
{
	int lo = 0, hi = set->nr;

	while (lo < hi) {
		int mid = lo + (hi - lo) / 2;

		if (set->by_hva[mid]->userspace_addr < hva)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void memslots_recompute_max_end(struct memslots *set, int from)
{
	int i;

	for (i = from; i < set->nr; i++) {
		hva_t end = slot_hva_end(set->by_hva[i]);

		set->hva_max_end[i] = i ? MAX(set->hva_max_end[i - 1], end) : end;
	}
}

/* Replace @old by @new in @set (either may be NULL); capacity reserved by the caller. */
static void memslots_apply(struct memslots *set, struct memslot *old, struct memslot *new)
{
	int pos, hpos = set->nr;

	if (old) {
		/* Binary searches give the first candidate; equal hva keys are scanned. */
		memslots_remove_at(set->by_gfn, set->nr, memslots_insert_pos_gfn(set, old), old);
		hpos = memslots_lower_pos_hva(set, old->userspace_addr);
		memslots_remove_at(set->by_hva, set->nr, hpos, old);
		set->nr--;
	}
	if (new) {
		pos = memslots_insert_pos_gfn(set, new);
		memmove(&set->by_gfn[pos + 1], &set->by_gfn[pos], (set->nr - pos) * sizeof(new));
		set->by_gfn[pos] = new;
		pos = memslots_insert_pos_hva(set, new);
		memmove(&set->by_hva[pos + 1], &set->by_hva[pos], (set->nr - pos) * sizeof(new));
		set->by_hva[pos] = new;
		set->nr++;
		hpos = MIN(hpos, pos);
	}
	set->generation++;
	memslots_recompute_max_end(set, hpos > 0 ? hpos - 1 : 0);
}

int memslots_init(struct vm *vm)
{
	int as;

	for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++) {
		vm->id_to_slot[as] = calloc(KVM_USER_MEM_SLOTS, sizeof(struct memslot *));
		if (!vm->id_to_slot[as])
			return -ENOMEM;
		vm->memslots[as] = &vm->slot_sets[as][0];
	}
	return 0;
}

void memslots_destroy(struct vm *vm)
{
	int as, i;

	for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++) {
		if (vm->id_to_slot[as])
			for (i = 0; i < KVM_USER_MEM_SLOTS; i++)
				memslot_free(vm, vm->id_to_slot[as][i]);
		free(vm->id_to_slot[as]);
		for (i = 0; i < 2; i++) {
			free(vm->slot_sets[as][i].by_gfn);
			free(vm->slot_sets[as][i].by_hva);
			free(vm->slot_sets[as][i].hva_max_end);
		}
	}
}

struct memslot *vm_id_to_memslot(struct vm *vm, int as_id, int id)
{
	if (as_id < 0 || as_id >= KVM_ADDRESS_SPACE_NUM || id < 0 || id >= KVM_USER_MEM_SLOTS)
		return NULL;
	return vm->id_to_slot[as_id][id];
}

void vm_synchronize_srcu(struct vm *vm)
{
	struct vcpu *vcpu;
	int i;

	/* Pairs with vcpu_srcu_read_lock(): both sides are seq_cst (Dekker). */
	for_each_vcpu(i, vcpu, vm) {
		uint64_t seq = __atomic_load_n(&vcpu->srcu_seq, __ATOMIC_SEQ_CST);

		if (!(seq & 1))
			continue;
		while (__atomic_load_n(&vcpu->srcu_seq, __ATOMIC_ACQUIRE) == seq)
			sched_yield();
	}
}

/*
 * Swap in @new for @old in address space @as: edit the inactive set,
 * publish it, wait for readers of the active one, then edit that one too.
 * Waits until no MMU-notifier invalidation is active, so that the start and
 * end of an invalidation see the same slots.
 */
static int memslots_swap(struct vm *vm, int as, struct memslot *old, struct memslot *new)
{
	struct memslots *active = vm->memslots[as];
	struct memslots *inactive = active == &vm->slot_sets[as][0] ? &vm->slot_sets[as][1]
								     : &vm->slot_sets[as][0];
	int r;

	r = memslots_reserve(inactive, active->nr + 1);
	if (!r)
		r = memslots_reserve(active, active->nr + 1);
	if (r)
		return r;
	memslots_apply(inactive, old, new);

	pthread_mutex_lock(&vm->mn_lock);
	while (vm->mn_active_invalidate_count)
		pthread_cond_wait(&vm->mn_cond, &vm->mn_lock);
	inactive->generation = ++vm->memslots_generation;
	__atomic_store_n(&vm->memslots[as], inactive, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&vm->mn_lock);

	vm_synchronize_srcu(vm);
	memslots_apply(active, old, new);
	return 0;
}

/*
 * Replace *@oldp in the published set by an INVALID copy of it (sharing its
 * rmaps, lpage_info and bitmap) and free the original struct; *@oldp then
 * points to the copy. After it, no fault maps the slot, but notifiers still
 * find it. 0 or -ENOMEM.
 */
static int memslot_invalidate(struct vm *vm, int as_id, struct memslot **oldp)
{
	struct memslot *old = *oldp, *inv = malloc(sizeof(*inv));
	int r;

	if (!inv)
		return -ENOMEM;
	*inv = *old;
	inv->flags |= KVM_MEMSLOT_INVALID;
	r = memslots_swap(vm, as_id, old, inv);
	if (r) {
		free(inv);
		return r;
	}
	vm->id_to_slot[as_id][old->id] = inv;
	free(old); /* its arrays now belong to @inv */
	*oldp = inv;
	return 0;
}

static bool memslot_overlaps(struct vm *vm, int as, int id, gfn_t base, uint64_t npages)
{
	struct memslots *slots = vm->memslots[as];
	int i;

	/* Slots are disjoint and sorted: only the neighbours of base can overlap. */
	i = 0;
	{
		int lo = 0, hi = slots->nr - 1;

		while (lo <= hi) {
			int mid = lo + (hi - lo) / 2;

			if (slots->by_gfn[mid]->base_gfn < base + npages)
				lo = mid + 1;
			else
				hi = mid - 1;
		}
		i = hi;
	}
	for (; i >= 0; i--) {
		struct memslot *s = slots->by_gfn[i];

		if (s->base_gfn + s->npages <= base)
			return false;
		if (s->id != id)
			return true;
	}
	return false;
}

static int check_memory_region(const struct vm_memory_region *mem)
{
	int as_id = mem->slot >> 16, id = mem->slot & 0xffff;

	if (mem->flags & ~KVM_MEM_VALID_FLAGS)
		return -EINVAL;
	if (as_id >= KVM_ADDRESS_SPACE_NUM || id >= KVM_USER_MEM_SLOTS)
		return -EINVAL;
	if (!IS_ALIGNED(mem->memory_size, PAGE_SIZE) || !IS_ALIGNED(mem->guest_phys_addr, PAGE_SIZE))
		return -EINVAL;
	if (!IS_ALIGNED(mem->userspace_addr, PAGE_SIZE))
		return -EINVAL;
	if (mem->memory_size >> PAGE_SHIFT > KVM_MEM_MAX_NR_PAGES)
		return -EINVAL;
	if (mem->guest_phys_addr + mem->memory_size < mem->guest_phys_addr ||
	    mem->guest_phys_addr + mem->memory_size > (1ull << KVM_MAX_GPA_BITS))
		return -EINVAL;
	if (mem->memory_size &&
	    (mem->userspace_addr + mem->memory_size < mem->userspace_addr || !mem->userspace_addr))
		return -EINVAL;
	return 0;
}

int vm_register_backing(struct vm *vm, const struct mem_backing *b)
{
	int r = 0;

	pthread_mutex_lock(&vm->slots_lock);
	if (vm->nr_backings == (int)ARRAY_SIZE(vm->backings))
		r = -ENOSPC;
	else
		vm->backings[vm->nr_backings++] = b;
	pthread_mutex_unlock(&vm->slots_lock);
	return r;
}

int vm_set_user_memory_region(struct vm *vm, const struct vm_memory_region *mem)
{
	int as_id = mem->slot >> 16, id = mem->slot & 0xffff;
	struct memslot *old, *new = NULL;
	uint64_t npages = mem->memory_size >> PAGE_SHIFT;
	gfn_t base_gfn = mem->guest_phys_addr >> PAGE_SHIFT;
	bool move = false;
	int r;

	r = check_memory_region(mem);
	if (r)
		return r;

	pthread_mutex_lock(&vm->slots_lock);
	old = vm->id_to_slot[as_id][id];
	if (!npages) {
		r = old ? 0 : -EINVAL;
		if (r)
			goto out;
		goto delete;
	}
	if (old) {
		if (mem->userspace_addr != old->userspace_addr || npages != old->npages ||
		    ((mem->flags ^ old->flags) & KVM_MEM_READONLY)) {
			r = -EINVAL;
			goto out;
		}
		if (base_gfn != old->base_gfn)
			move = true;
		else if (mem->flags == old->flags)
			goto out; /* nothing changes */
	}
	if ((!old || move) && memslot_overlaps(vm, as_id, id, base_gfn, npages)) {
		r = -EEXIST;
		goto out;
	}

	new = calloc(1, sizeof(*new));
	if (!new) {
		r = -ENOMEM;
		goto out;
	}
	new->base_gfn = base_gfn;
	new->npages = npages;
	new->userspace_addr = mem->userspace_addr;
	new->flags = mem->flags;
	new->id = id;
	new->as_id = as_id;
	new->backing = vm_find_backing(vm, mem->userspace_addr, mem->memory_size);

	if (old && !move) {
		/* Flags change: the rmaps and lpage_info move to the new struct. */
		memcpy(new->rmap, old->rmap, sizeof(new->rmap));
		memcpy(new->disallow_lpage, old->disallow_lpage, sizeof(new->disallow_lpage));
	} else {
		r = memslot_alloc_arch(new);
		if (r)
			goto out_free_new;
	}
	r = dirty_log_prepare_memslot(vm, old && !move ? old : NULL, new);
	if (r)
		goto out_free_arch;

	if (move) {
		/* A move is a delete followed by a create with the same id. */
		r = memslot_invalidate(vm, as_id, &old);
		if (r)
			goto out_free_log;
		mmu_zap_memslot(vm, old);
	}
	r = memslots_swap(vm, as_id, old, new);
	if (r)
		goto out_free_log; /* a moved slot stays invalid: deleted, as KVM leaves it */
	if (move) {
		memslot_free(vm, old);
		old = NULL;
	}
	vm->id_to_slot[as_id][id] = new;
	if (old) {
		dirty_log_commit_memslot(vm, old, new);
		/* The arrays (and a bitmap handed over) now belong to @new. */
		if (old->dirty_bitmap == new->dirty_bitmap)
			old->dirty_bitmap = NULL;
		if (old->dirty_log_priv == new->dirty_log_priv)
			old->dirty_log_priv = NULL;
		memset(old->rmap, 0, sizeof(old->rmap));
		memset(old->disallow_lpage, 0, sizeof(old->disallow_lpage));
		memslot_free(vm, old);
	} else {
		dirty_log_commit_memslot(vm, NULL, new);
	}
	goto out;

delete:
	/* Invalid first (notifiers still find it, faults retry), zap, then remove. */
	r = memslot_invalidate(vm, as_id, &old);
	if (r)
		goto out;
	mmu_zap_memslot(vm, old);
	r = memslots_swap(vm, as_id, old, NULL);
	if (r)
		goto out;
	vm->id_to_slot[as_id][id] = NULL;
	memslot_free(vm, old);
	goto out;

out_free_log:
	dirty_log_free_memslot(vm, new);
out_free_arch:
	if (!old || move)
		memslot_free_arch(new);
out_free_new:
	free(new);
out:
	pthread_mutex_unlock(&vm->slots_lock);
	return r;
}
