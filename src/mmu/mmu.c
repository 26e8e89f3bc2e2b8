/* mmu.c: page tables (mmu pages, pool, roots), leaf install and zap, the page-fault paths, prefault. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "mmu_internal.h"

/* ---- page-table pool ---- */

static int pool_grow(struct mmu_page_pool *pool)
{
	size_t map_len = 2 * MMU_ARENA_SIZE;
	uint8_t *raw, *base;
	struct mmu_arena *arena;
	int i;

	raw = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return -ENOMEM;
	base = (uint8_t *)ALIGN_UP((uintptr_t)raw, MMU_ARENA_SIZE);
	if (base > raw)
		munmap(raw, base - raw);
	if (base + MMU_ARENA_SIZE < raw + map_len)
		munmap(base + MMU_ARENA_SIZE, raw + map_len - (base + MMU_ARENA_SIZE));

	arena = (struct mmu_arena *)base;
	arena->next = pool->arenas;
	pool->arenas = arena;
	pool->nr_arenas++;
	for (i = MMU_ARENA_PAGES - 1; i >= 0; i--) {
		struct mmu_page *sp = &arena->sps[i];

		sp->spt = (uint64_t *)(base + (size_t)(MMU_ARENA_HDR_PAGES + i) * PAGE_SIZE);
		sp->parent_ptep = (uint64_t *)pool->free_list;
		pool->free_list = sp;
		pool->nr_free++;
	}
	return 0;
}

static struct mmu_page *pool_get(struct mmu_page_pool *pool)
{
	struct mmu_page *sp;

	pthread_mutex_lock(&pool->lock);
	if (!pool->free_list && pool_grow(pool)) {
		pthread_mutex_unlock(&pool->lock);
		return NULL;
	}
	sp = pool->free_list;
	pool->free_list = (struct mmu_page *)sp->parent_ptep;
	pool->nr_free--;
	pthread_mutex_unlock(&pool->lock);
	sp->parent_ptep = NULL;
	return sp;
}

/* @sp's spt must be all zero (non-present). */
static void pool_put(struct mmu_page_pool *pool, struct mmu_page *sp)
{
	uint64_t *spt = sp->spt;

	memset(sp, 0, sizeof(*sp));
	sp->spt = spt;
	pthread_mutex_lock(&pool->lock);
	sp->parent_ptep = (uint64_t *)pool->free_list;
	pool->free_list = sp;
	pool->nr_free++;
	pthread_mutex_unlock(&pool->lock);
}

void mmu_caches_init(struct mmu_caches *c)
{
	mmu_memory_cache_init(&c->desc_cache, sizeof(struct pte_list_desc));
	c->page_cache.nobjs = 0;
}

int mmu_topup_caches(struct vm *vm, struct mmu_caches *c, int nr_pages, int nr_descs)
{
	if (nr_pages > MMU_PAGE_CACHE_CAPACITY)
		nr_pages = MMU_PAGE_CACHE_CAPACITY;
	while (c->page_cache.nobjs < nr_pages) {
		struct mmu_page *sp = pool_get(&vm->pool);

		if (!sp)
			return -ENOMEM;
		c->page_cache.objects[c->page_cache.nobjs++] = sp;
	}
	return mmu_memory_cache_topup(&c->desc_cache, nr_descs);
}

void mmu_caches_free(struct vm *vm, struct mmu_caches *c)
{
	while (c->page_cache.nobjs)
		pool_put(&vm->pool, c->page_cache.objects[--c->page_cache.nobjs]);
	mmu_memory_cache_free(&c->desc_cache);
}

static struct mmu_page *mmu_alloc_sp(struct vm *vm, struct mmu_caches *c, int level, gfn_t gfn,
				     int as_id, uint64_t *parent_ptep)
{
	struct mmu_page *sp;

	assert(c->page_cache.nobjs > 0 && "page cache used without topup");
	sp = c->page_cache.objects[--c->page_cache.nobjs];
	sp->role.word = 0;
	sp->role.level = level;
	sp->role.as_id = as_id;
	sp->gfn = gfn;
	sp->parent_ptep = parent_ptep;
	sp->slot_bitmap = 0;
	sp->nr_present = 0;
	pthread_mutex_lock(&vm->mmu_pages_lock);
	list_add(&sp->link, &vm->active_mmu_pages);
	vm->nr_mmu_pages++;
	pthread_mutex_unlock(&vm->mmu_pages_lock);
	return sp;
}

/* An sp taken from @c but lost a cmpxchg race: give it back unused. */
static void mmu_free_unused_sp(struct vm *vm, struct mmu_caches *c, struct mmu_page *sp)
{
	pthread_mutex_lock(&vm->mmu_pages_lock);
	list_del(&sp->link);
	vm->nr_mmu_pages--;
	pthread_mutex_unlock(&vm->mmu_pages_lock);
	c->page_cache.objects[c->page_cache.nobjs++] = sp;
}

int mmu_init(struct vm *vm)
{
	int as, r;

	INIT_LIST_HEAD(&vm->active_mmu_pages);
	pthread_mutex_init(&vm->pool.lock, NULL);
	pthread_mutex_init(&vm->mmu_pages_lock, NULL);
	mmu_caches_init(&vm->host_caches);
	r = mmu_topup_caches(vm, &vm->host_caches, KVM_ADDRESS_SPACE_NUM, 0);
	if (r)
		return r;
	for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++)
		vm->root[as] = mmu_alloc_sp(vm, &vm->host_caches, PT64_ROOT_LEVEL, 0, as, NULL);
	return 0;
}

void mmu_destroy(struct vm *vm)
{
	struct mmu_arena *arena, *next;

	mmu_memory_cache_free(&vm->host_caches.desc_cache);
	for (arena = vm->pool.arenas; arena; arena = next) {
		next = arena->next;
		munmap(arena, MMU_ARENA_SIZE);
	}
	vm->pool.arenas = NULL;
	pthread_mutex_destroy(&vm->pool.lock);
	pthread_mutex_destroy(&vm->mmu_pages_lock);
}

/* ---- rmap updates, optionally locked per head (shared-lock faults) ---- */

#define RMAP_LOCKED 2ul

uintptr_t rmap_lock(struct rmap_head *head)
{
	uintptr_t old = __atomic_load_n(&head->val, __ATOMIC_RELAXED);

	for (;;) {
		if (old & RMAP_LOCKED) {
			cpu_relax();
			old = __atomic_load_n(&head->val, __ATOMIC_RELAXED);
			continue;
		}
		if (__atomic_compare_exchange_n(&head->val, &old, old | RMAP_LOCKED, true,
						__ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return old;
	}
}

void rmap_unlock(struct rmap_head *head, uintptr_t val)
{
	__atomic_store_n(&head->val, val, __ATOMIC_RELEASE);
}

static void rmap_add(struct mmu_caches *c, struct rmap_head *head, uint64_t *sptep, bool shared)
{
	struct rmap_head tmp;

	if (!shared) {
		pte_list_add(&c->desc_cache, sptep, head);
		return;
	}
	tmp.val = rmap_lock(head);
	pte_list_add(&c->desc_cache, sptep, &tmp);
	rmap_unlock(head, tmp.val);
}

/* ---- leaves ---- */

/* The slot of a mapped gfn: slots being deleted stay published (INVALID) until zapped. */
static struct memslot *mmu_slot_for_zap(struct vm *vm, int as_id, gfn_t gfn)
{
	return memslots_find_gfn(vm_memslots(vm, as_id), gfn);
}

bool mmu_zap_leaf(struct vm *vm, struct mmu_caches *c, const struct memslot *slot, uint64_t *sptep,
		  gfn_t gfn, int level)
{
	uint64_t old = spte_xchg(sptep, SHADOW_NONPRESENT_VALUE);
	struct mmu_page *sp = sptep_to_sp(sptep);
	int r;

	if (!is_shadow_present_pte(old))
		return false;
	r = pte_list_remove(&c->desc_cache, sptep, gfn_to_rmap(gfn, level, slot));
	assert(!r && "zapped spte missing from its rmap");
	(void)r;
	__atomic_fetch_sub(&sp->nr_present, 1, __ATOMIC_RELAXED);
	__atomic_fetch_sub(&vm->nr_leaf_sptes[level - 1], 1, __ATOMIC_RELAXED);
	return true;
}

/* Unlink @sp from its parent and put it on @invalid (it must hold no leaves). */
static void mmu_unlink_sp(struct vm *vm, struct mmu_page *sp, struct list_head *invalid)
{
	if (sp->parent_ptep) {
		spte_xchg(sp->parent_ptep, SHADOW_NONPRESENT_VALUE);
		__atomic_fetch_sub(&sptep_to_sp(sp->parent_ptep)->nr_present, 1, __ATOMIC_RELAXED);
		sp->parent_ptep = NULL;
	}
	sp->role.invalid = 1;
	pthread_mutex_lock(&vm->mmu_pages_lock);
	list_del(&sp->link);
	vm->nr_mmu_pages--;
	pthread_mutex_unlock(&vm->mmu_pages_lock);
	list_add(&sp->link, invalid);
}

bool mmu_zap_subtree(struct vm *vm, struct mmu_caches *c, int as_id, uint64_t *sptep, int level,
		     struct list_head *invalid)
{
	uint64_t spte = spte_read(sptep);
	struct mmu_page *child;
	bool flush = false;
	int i;

	if (!is_shadow_present_pte(spte) || is_last_spte(spte, level))
		return false;
	child = sptep_to_sp(spte_to_child_spt(spte));
	for (i = 0; i < PT64_ENT_PER_PAGE; i++) {
		uint64_t *p = &child->spt[i];
		uint64_t e = spte_read(p);
		gfn_t gfn = child->gfn + ((gfn_t)i << KVM_HPAGE_GFN_SHIFT(level - 1));

		if (!is_shadow_present_pte(e))
			continue;
		if (is_last_spte(e, level - 1)) {
			struct memslot *slot = mmu_slot_for_zap(vm, as_id, gfn);

			assert(slot && "leaf maps a gfn without memslot");
			flush |= mmu_zap_leaf(vm, c, slot, p, gfn, level - 1);
		} else {
			flush |= mmu_zap_subtree(vm, c, as_id, p, level - 1, invalid);
		}
	}
	mmu_unlink_sp(vm, child, invalid);
	return flush;
}

void mmu_commit_zap(struct vm *vm, struct list_head *invalid)
{
	struct mmu_page *sp, *n;

	if (list_empty(invalid))
		return;
	/* No vCPU may still walk the tables: flush (and wait) before freeing. */
	vm_flush_remote_tlbs(vm);
	list_for_each_entry_safe(sp, n, invalid, link) {
		list_del(&sp->link);
		pool_put(&vm->pool, sp);
	}
}

int mmu_max_slot_level(struct vm *vm, const struct memslot *slot, gfn_t gfn, int max_level)
{
	int level = MIN(max_level, vm->cfg.max_level);

	if (slot->flags & KVM_MEM_LOG_DIRTY_PAGES)
		return PG_LEVEL_4K;
	for (; level > PG_LEVEL_4K; level--)
		if (!*lpage_disallowed(gfn, level, slot))
			return level;
	return PG_LEVEL_4K;
}

uint64_t *mmu_lookup_leaf(struct vm *vm, int as_id, gfn_t gfn, int *levelp)
{
	uint64_t *spt = vm->root[as_id]->spt;
	int level;

	for (level = PT64_ROOT_LEVEL; level >= PG_LEVEL_4K; level--) {
		uint64_t *sptep = &spt[spte_index(gfn, level)];
		uint64_t spte = spte_read(sptep);

		if (!is_shadow_present_pte(spte))
			return NULL;
		if (is_last_spte(spte, level)) {
			*levelp = level;
			return sptep;
		}
		spt = spte_to_child_spt(spte);
	}
	return NULL;
}

int __mmu_map_gfn(struct vm *vm, struct mmu_caches *c, struct vcpu *vcpu,
		  const struct memslot *slot, gfn_t gfn, int level, bool host_writable, bool write,
		  bool shared)
{
	gfn_t frame = ALIGN_DOWN(gfn, KVM_PAGES_PER_HPAGE(level));
	hva_t host = backing_host_addr(slot->backing, gfn_to_hva_memslot(slot, frame));

	return __mmu_map_gfn_host(vm, c, vcpu, slot, gfn, level, host, host_writable, write,
				  shared);
}

int __mmu_map_gfn_host(struct vm *vm, struct mmu_caches *c, struct vcpu *vcpu,
		       const struct memslot *slot, gfn_t gfn, int level, hva_t hva,
		       bool host_writable, bool write, bool shared)
{
	int as_id = slot->as_id, cur;
	struct mmu_page *sp = vm->root[as_id];
	bool logged = slot->flags & KVM_MEM_LOG_DIRTY_PAGES;
	bool dbit = logged && dirty_log_uses_dbit(vm);
	gfn_t frame = ALIGN_DOWN(gfn, KVM_PAGES_PER_HPAGE(level));
	uint64_t *sptep, spte, new_spte;
	bool writable, flush = false;
	LIST_HEAD_DECL(invalid);

	for (cur = PT64_ROOT_LEVEL; cur > level; cur--) {
		sptep = &sp->spt[spte_index(gfn, cur)];
		spte = spte_read(sptep);
		if (is_shadow_present_pte(spte) && is_large_pte(spte)) {
			/* A huge leaf in the way of a smaller mapping: drop it. */
			gfn_t hframe = ALIGN_DOWN(gfn, KVM_PAGES_PER_HPAGE(cur));
			struct memslot *hslot;

			if (shared)
				return -EAGAIN;
			hslot = mmu_slot_for_zap(vm, as_id, hframe);
			assert(hslot);
			flush |= mmu_zap_leaf(vm, c, hslot, sptep, hframe, cur);
			spte = SHADOW_NONPRESENT_VALUE;
		}
		if (!is_shadow_present_pte(spte)) {
			gfn_t base = ALIGN_DOWN(gfn, KVM_PAGES_PER_HPAGE(cur));
			struct mmu_page *child = mmu_alloc_sp(vm, c, cur - 1, base, as_id, sptep);
			uint64_t expected = SHADOW_NONPRESENT_VALUE;

			new_spte = make_nonleaf_spte(child->spt);
			if (!spte_cmpxchg(sptep, &expected, new_spte)) {
				/* Another shared-lock fault linked a table first. */
				mmu_free_unused_sp(vm, c, child);
				if (is_last_spte(expected, cur))
					return -EAGAIN;
				spte = expected;
			} else {
				__atomic_fetch_add(&sp->nr_present, 1, __ATOMIC_RELAXED);
				spte = new_spte;
			}
		}
		sp = sptep_to_sp(spte_to_child_spt(spte));
	}

	sptep = &sp->spt[spte_index(gfn, level)];
	spte = spte_read(sptep);
	if (is_shadow_present_pte(spte) && !is_last_spte(spte, level)) {
		/* A table in the way of a huge mapping: zap it and what it maps. */
		if (shared)
			return -EAGAIN;
		flush |= mmu_zap_subtree(vm, c, as_id, sptep, level, &invalid);
		spte = SHADOW_NONPRESENT_VALUE;
	}
	if (is_shadow_present_pte(spte) && spte_to_addr(spte) != hva) {
		/* Stale leaf for another host address. */
		if (shared)
			return -EAGAIN;
		flush |= mmu_zap_leaf(vm, c, slot, sptep, frame, level);
		spte = SHADOW_NONPRESENT_VALUE;
	}

	/* Logged slots are write-protected (W on a write fault only), unless D bits log. */
	writable = host_writable && (!logged || dbit || write);
	if (is_shadow_present_pte(spte)) {
		/* Another vCPU mapped it: add W if this write needs it. */
		while (write && writable && !is_writable_pte(spte)) {
			new_spte = spte | SPTE_W_MASK | SPTE_D_MASK | SPTE_A_MASK;
			if (spte_cmpxchg(sptep, &spte, new_spte)) {
				if (logged)
					mark_page_dirty_in_slot(vm, vcpu, slot, gfn);
				break;
			}
			if (!is_shadow_present_pte(spte))
				return -EAGAIN; /* zapped under us (shared mode only) */
		}
		goto out;
	}

	new_spte = make_spte(hva, level, host_writable, writable);
	/* D with W, except that D-bit logging wants D only on an actual write. */
	if (writable && (!dbit || write))
		new_spte |= SPTE_D_MASK;
	if (shared) {
		uint64_t expected = SHADOW_NONPRESENT_VALUE;

		if (!spte_cmpxchg(sptep, &expected, new_spte))
			goto out; /* lost the race: the vCPU retries the access */
	} else {
		spte_set_nonvolatile(sptep, new_spte);
	}
	rmap_add(c, gfn_to_rmap(gfn, level, slot), sptep, shared);
	__atomic_fetch_add(&sp->nr_present, 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&vm->nr_leaf_sptes[level - 1], 1, __ATOMIC_RELAXED);
	__atomic_fetch_or(&sp->slot_bitmap, 1ull << (slot->id % 64), __ATOMIC_RELAXED);
	if (logged && (new_spte & SPTE_D_MASK) && write)
		mark_page_dirty_in_slot(vm, vcpu, slot, gfn);
out:
	if (!list_empty(&invalid))
		mmu_commit_zap(vm, &invalid);
	return flush ? MMU_MAP_FLUSH : 0;
}

int mmu_split_huge_leaf(struct vm *vm, struct mmu_caches *c, const struct memslot *slot,
			uint64_t *sptep, gfn_t gfn, int level, bool wp)
{
	uint64_t spte = spte_read(sptep), size, child;
	gfn_t frame = ALIGN_DOWN(gfn, KVM_PAGES_PER_HPAGE(level));
	int i, need = 0, r;
	struct mmu_page *sp;

	if (level <= PG_LEVEL_4K || !is_shadow_present_pte(spte) || !is_large_pte(spte))
		return -ENOENT;
	size = KVM_PAGES_PER_HPAGE(level - 1);
	/* A descriptor for each child rmap that already holds an spte (other roots). */
	for (i = 0; i < PT64_ENT_PER_PAGE; i++) {
		const struct rmap_head *h = gfn_to_rmap(frame + i * size, level - 1, slot);

		need += h->val && (!(h->val & RMAP_MANY) || pte_list_count(h) % PTE_LIST_EXT == 0);
	}
	if (need > MMU_CACHE_CAPACITY)
		return -E2BIG;
	if (c->page_cache.nobjs < 1 || c->desc_cache.nobjs < need)
		return -ENOMEM;

	sp = mmu_alloc_sp(vm, c, level - 1, frame, slot->as_id, sptep);
	/* Same frames and permissions one level down, W dropped if asked. */
	child = spte & ~(SPTE_FRAME_MASK | SPTE_HUGE_MASK | (wp ? SPTE_W_MASK : 0));
	if (level - 1 > PG_LEVEL_4K)
		child |= SPTE_HUGE_MASK;
	for (i = 0; i < PT64_ENT_PER_PAGE; i++) {
		hva_t hva = spte_to_addr(spte) + ((uint64_t)i * size << PAGE_SHIFT);

		spte_set_nonvolatile(&sp->spt[i], child | ((uint64_t)hva & SPTE_FRAME_MASK));
		pte_list_add(&c->desc_cache, &sp->spt[i], gfn_to_rmap(frame + i * size, level - 1, slot));
	}
	sp->nr_present = PT64_ENT_PER_PAGE;
	sp->slot_bitmap = 1ull << (slot->id % 64);
	__atomic_fetch_add(&vm->nr_leaf_sptes[level - 2], PT64_ENT_PER_PAGE, __ATOMIC_RELAXED);
	/* A/D set meanwhile by a walker are dropped: the caller flushes TLBs. */
	spte_xchg(sptep, make_nonleaf_spte(sp->spt));
	r = pte_list_remove(&c->desc_cache, sptep, gfn_to_rmap(frame, level, slot));
	assert(!r && "split huge spte missing from its rmap");
	(void)r;
	__atomic_fetch_sub(&vm->nr_leaf_sptes[level - 1], 1, __ATOMIC_RELAXED);
	return 0;
}

/* Zap every leaf of @slot through its rmaps; tables emptied by it are freed. */
static bool mmu_zap_slot_rmaps(struct vm *vm, struct mmu_caches *c, struct memslot *slot)
{
	struct slot_rmap_walk_iterator it;
	bool flush = false;

	for_each_slot_rmap_range(slot, PG_LEVEL_4K, PG_LEVEL_MAX_LEAF, slot->base_gfn,
				 slot->base_gfn + slot->npages - 1, &it) {
		struct rmap_iterator iter;
		uint64_t *sptep;

		/* Removing an entry moves another: restart from the first. */
		while ((sptep = rmap_get_first(it.rmap, &iter)))
			flush |= mmu_zap_leaf(vm, c, slot, sptep, it.gfn, it.level);
	}
	return flush;
}

/* Unlink tables (not roots) that map nothing; parents emptied by it go too. */
static void mmu_free_empty_tables(struct vm *vm, struct list_head *invalid)
{
	struct mmu_page *sp, *n;
	bool again = true;

	while (again) {
		again = false;
		list_for_each_entry_safe(sp, n, &vm->active_mmu_pages, link) {
			if (sp->parent_ptep && !sp->nr_present) {
				mmu_unlink_sp(vm, sp, invalid);
				again = true;
			}
		}
	}
}

void mmu_zap_memslot(struct vm *vm, struct memslot *slot)
{
	LIST_HEAD_DECL(invalid);
	bool flush;

	mmu_write_lock(vm);
	flush = mmu_zap_slot_rmaps(vm, &vm->host_caches, slot);
	mmu_free_empty_tables(vm, &invalid);
	if (!list_empty(&invalid))
		mmu_commit_zap(vm, &invalid); /* flushes */
	else if (flush)
		vm_flush_remote_tlbs(vm);
	mmu_write_unlock(vm);
}

/* ---- page faults ---- */

bool mmu_invalidate_retry_gfn(struct vm *vm, uint64_t mmu_seq, gfn_t gfn)
{
	if (vm->debug_faults & MMU_DEBUG_SKIP_SEQ_CHECK)
		return false;
	if (unlikely(READ_ONCE(vm->mmu_invalidate_in_progress)) &&
	    gfn >= READ_ONCE(vm->mmu_invalidate_range_start) &&
	    gfn < READ_ONCE(vm->mmu_invalidate_range_end))
		return true;
	return READ_ONCE(vm->mmu_invalidate_seq) != mmu_seq;
}

/*
 * Lockless fast path: a write to a present 4 KiB (or unlogged huge) spte that
 * is mmu-writable gets W by cmpxchg, then the page is logged. The vCPU is in
 * READING_SHADOW_PAGE_TABLES mode so no table it walks can be freed.
 */
static bool fast_page_fault(struct vcpu *vcpu, const struct memslot *slot, gfn_t gfn)
{
	struct vm *vm = vcpu->vm;
	bool logged = slot->flags & KVM_MEM_LOG_DIRTY_PAGES;
	bool fixed = false;
	uint64_t *sptep, spte;
	int level, tries;

	__atomic_store_n(&vcpu->mode, READING_SHADOW_PAGE_TABLES, __ATOMIC_SEQ_CST);
	sptep = mmu_lookup_leaf(vm, vcpu->as_id, gfn, &level);
	if (!sptep)
		goto out;
	spte = spte_read(sptep);
	for (tries = 0; tries < 4; tries++) {
		if (!is_shadow_present_pte(spte))
			break;
		if (is_writable_pte(spte)) {
			fixed = true; /* another vCPU fixed it */
			break;
		}
		if (!is_mmu_writable_spte(spte))
			break;
		if (level > PG_LEVEL_4K && logged)
			break; /* rebuild at 4 KiB in the slow path */
		if (spte_cmpxchg(sptep, &spte, spte | SPTE_W_MASK | SPTE_D_MASK | SPTE_A_MASK)) {
			if (logged)
				mark_page_dirty_in_slot(vm, vcpu, slot, gfn);
			fixed = true;
			break;
		}
	}
out:
	__atomic_store_n(&vcpu->mode, OUTSIDE_GUEST_MODE, __ATOMIC_SEQ_CST);
	return fixed;
}

int kvm_mmu_page_fault(struct vcpu *vcpu, gfn_t gfn, bool write)
{
	struct vm *vm = vcpu->vm;
	bool shared = vm->cfg.lock_mode == MMU_LOCK_SHARED;
	const struct memslot *slot;
	uint64_t mmu_seq;
	bool host_writable;
	int level, r = 0;
	hva_t hva, host;

	vcpu_srcu_read_lock(vcpu);
	slot = memslots_find_gfn(vm_memslots(vm, vcpu->as_id), gfn);
	if (slot && (slot->flags & KVM_MEMSLOT_INVALID)) {
		/* Being deleted or moved: retry until the new memslots are published. */
		stat_inc(vcpu->stats.fault_retries);
		goto out;
	}
	if (!slot || (write && (slot->flags & KVM_MEM_READONLY))) {
		stat_inc(vcpu->stats.mmio_exits);
		r = -EFAULT;
		goto out;
	}
	if (write && fast_page_fault(vcpu, slot, gfn)) {
		stat_inc(vcpu->stats.faults_fast);
		goto out;
	}

	mmu_seq = load_acquire(&vm->mmu_invalidate_seq);
	host_writable = !(slot->flags & KVM_MEM_READONLY);
	hva = gfn_to_hva_memslot(slot, gfn);
	/* get_user_pages: make the host page present (writable if the slot is). */
	r = backing_populate(hva, PAGE_SIZE, host_writable);
	if (r) {
		stat_inc(vcpu->stats.mmio_exits);
		goto out;
	}
	level = mmu_max_slot_level(vm, slot, gfn, PG_LEVEL_MAX_LEAF);
	if (level > PG_LEVEL_4K)
		level = MIN(level, host_mapping_level(slot->backing, hva));
	/* The "pfn": resolved before mmu_lock, so only the retry check below makes it safe. */
	host = backing_host_addr(slot->backing,
				 gfn_to_hva_memslot(slot, ALIGN_DOWN(gfn, KVM_PAGES_PER_HPAGE(level))));
	r = mmu_topup_caches(vm, &vcpu->caches, PT64_ROOT_LEVEL, 2);
	if (r)
		goto out;

	if (shared) {
		mmu_read_lock(vm);
		if (mmu_invalidate_retry_gfn(vm, mmu_seq, gfn)) {
			mmu_read_unlock(vm);
			stat_inc(vcpu->stats.fault_retries);
			goto out;
		}
		r = __mmu_map_gfn_host(vm, &vcpu->caches, vcpu, slot, gfn, level, host,
				       host_writable, write, true);
		mmu_read_unlock(vm);
		if (r != -EAGAIN)
			goto mapped;
	}
	mmu_write_lock(vm);
	if (mmu_invalidate_retry_gfn(vm, mmu_seq, gfn)) {
		mmu_write_unlock(vm);
		stat_inc(vcpu->stats.fault_retries);
		r = 0;
		goto out;
	}
	r = __mmu_map_gfn_host(vm, &vcpu->caches, vcpu, slot, gfn, level, host, host_writable,
			       write, false);
	if (r == MMU_MAP_FLUSH)
		vm_flush_remote_tlbs(vm);
	mmu_write_unlock(vm);
mapped:
	r = 0;
	stat_inc(vcpu->stats.faults_slow);
out:
	vcpu_srcu_read_unlock(vcpu);
	return r;
}

/* ---- prefault ---- */

int64_t vm_prefault_memory(struct vm *vm, int as_id, gpa_t gpa, uint64_t size, int max_level)
{
	gfn_t gfn = gpa >> PAGE_SHIFT, end;
	int64_t mapped = 0;
	bool flush = false;
	int r = 0, batch;

	if (as_id < 0 || as_id >= KVM_ADDRESS_SPACE_NUM || !IS_ALIGNED(gpa, PAGE_SIZE) ||
	    !IS_ALIGNED(size, PAGE_SIZE) || max_level < PG_LEVEL_4K || max_level > PG_LEVEL_1G ||
	    gpa + size < gpa)
		return -EINVAL;
	end = gfn + (size >> PAGE_SHIFT);

	pthread_mutex_lock(&vm->slots_lock);
	while (gfn < end && !r) {
		r = mmu_topup_caches(vm, &vm->host_caches, MMU_PAGE_CACHE_CAPACITY,
				     MMU_CACHE_CAPACITY);
		if (r)
			break;
		mmu_write_lock(vm);
		/* Each mapping needs at most 3 tables and 1 descriptor. */
		for (batch = 0; gfn < end && batch < MMU_CACHE_CAPACITY - 1 &&
				vm->host_caches.page_cache.nobjs >= 3;
		     batch++) {
			const struct memslot *slot = memslots_find_gfn(vm_memslots(vm, as_id), gfn);
			int level, m;
			uint64_t pages;

			if (!slot || (slot->flags & KVM_MEMSLOT_INVALID)) {
				r = -ENOENT;
				break;
			}
			level = mmu_max_slot_level(vm, slot, gfn, max_level);
			while (level > PG_LEVEL_4K &&
			       (!IS_ALIGNED(gfn, KVM_PAGES_PER_HPAGE(level)) ||
				gfn + KVM_PAGES_PER_HPAGE(level) > end))
				level--;
			m = __mmu_map_gfn(vm, &vm->host_caches, NULL, slot, gfn, level,
					  !(slot->flags & KVM_MEM_READONLY), false, false);
			flush |= m == MMU_MAP_FLUSH;
			pages = KVM_PAGES_PER_HPAGE(level);
			gfn += pages;
			mapped += pages << PAGE_SHIFT;
		}
		if (flush)
			vm_flush_remote_tlbs(vm);
		flush = false;
		mmu_write_unlock(vm);
	}
	pthread_mutex_unlock(&vm->slots_lock);
	return r ? r : mapped;
}
