/* dirty_log.c: dirty logging in the soft MMU: configuration, enable/disable, marking, get/clear/ranged harvests, stats. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dirty_internal.h"
#include "rmapvm/util.h"

/* ---- configuration ---- */

void dirty_log_config_default(struct dirty_log_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->mode = DIRTY_MODE_BITMAP;
	cfg->algo = DIRTY_ALGO_RMAP;
	cfg->lock = DIRTY_LOCK_WHOLE;
	cfg->recover_huge = true;
	cfg->ring_entries = 4096;
	cfg->chunk_pages = 4096;
}

static const char *const algo_names[DIRTY_ALGO_NR] = { "walk", "rmap", "tdp" };
static const char *const lock_names[DIRTY_LOCK_NR] = { "whole", "chunked", "shared" };

const char *dirty_log_algo_name(enum dirty_log_algo algo)
{
	return (unsigned int)algo < DIRTY_ALGO_NR ? algo_names[algo] : "?";
}

int dirty_log_algo_parse(const char *s, enum dirty_log_algo *algo)
{
	int i;

	for (i = 0; i < DIRTY_ALGO_NR; i++) {
		if (!strcasecmp(s, algo_names[i])) {
			*algo = i;
			return 0;
		}
	}
	return -EINVAL;
}

const char *dirty_log_lock_name(enum dirty_log_lock lock)
{
	return (unsigned int)lock < DIRTY_LOCK_NR ? lock_names[lock] : "?";
}

int dirty_log_lock_parse(const char *s, enum dirty_log_lock *lock)
{
	int i;

	for (i = 0; i < DIRTY_LOCK_NR; i++) {
		if (!strcasecmp(s, lock_names[i])) {
			*lock = i;
			return 0;
		}
	}
	return -EINVAL;
}

int dirty_log_mode_parse(const char *s, struct dirty_log_config *cfg)
{
	static const char *const names[] = { "bitmap", "manual", "ring", "dbit" };
	int i;

	for (i = 0; i < (int)ARRAY_SIZE(names); i++) {
		if (strcasecmp(s, names[i]))
			continue;
		cfg->mode = i == 3 ? DIRTY_MODE_BITMAP : (enum dirty_mode)i;
		cfg->dbit = i == 3;
		return 0;
	}
	return -EINVAL;
}

static int dirty_log_config_check(const struct dirty_log_config *cfg)
{
	uint32_t n = cfg->ring_entries;

	if ((unsigned int)cfg->mode >= DIRTY_MODE_NR || (unsigned int)cfg->algo >= DIRTY_ALGO_NR ||
	    (unsigned int)cfg->lock >= DIRTY_LOCK_NR)
		return -EINVAL;
	if (cfg->initially_set && cfg->mode != DIRTY_MODE_MANUAL)
		return -EINVAL;
	if (cfg->mode == DIRTY_MODE_RING &&
	    (n & (n - 1) || n < DIRTY_RING_MIN_ENTRIES || n > DIRTY_RING_MAX_ENTRIES))
		return -EINVAL;
	if (!cfg->chunk_pages || cfg->chunk_pages % 64)
		return -EINVAL;
	return 0;
}

struct dirty_log_vm *dirty_log_vm(struct vm *vm)
{
	struct dirty_log_vm *dl = __atomic_load_n((struct dirty_log_vm **)&vm->dirty_log,
						  __ATOMIC_ACQUIRE);

	if (dl)
		return dl;
	dl = calloc(1, sizeof(*dl));
	if (!dl)
		return NULL;
	dirty_log_config_default(&dl->cfg);
	dl->nr_vcpus = vm->nr_vcpus;
	dl->debug_skip_key = ~0ull;
	__atomic_store_n((struct dirty_log_vm **)&vm->dirty_log, dl, __ATOMIC_RELEASE);
	return dl;
}

static bool vm_any_slot_logged(struct vm *vm)
{
	int as, i;

	for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++) {
		struct memslots *slots = vm_memslots(vm, as);
		struct memslot *slot;

		for_each_memslot(slot, i, slots)
			if (slot->flags & KVM_MEM_LOG_DIRTY_PAGES)
				return true;
	}
	return false;
}

int vm_configure_dirty_log(struct vm *vm, const struct dirty_log_config *cfg_in)
{
	struct dirty_log_config cfg = *cfg_in;
	struct dirty_log_vm *dl;
	bool paused;
	int r;

	if (cfg.mode == DIRTY_MODE_DBIT) {
		cfg.mode = DIRTY_MODE_BITMAP;
		cfg.dbit = true;
	}
	r = dirty_log_config_check(&cfg);
	if (r)
		return r;
	pthread_mutex_lock(&vm->slots_lock);
	dl = dirty_log_vm(vm);
	if (!dl) {
		r = -ENOMEM;
		goto out;
	}
	if (vm_any_slot_logged(vm)) {
		r = -EBUSY;
		goto out;
	}
	/* vCPUs read the mode and their ring/PML pointers: change them while parked. */
	pthread_mutex_lock(&vm->pause_lock);
	paused = vm->pause_requested;
	pthread_mutex_unlock(&vm->pause_lock);
	if (!paused)
		vm_pause(vm);
	dirty_rings_free(vm, dl);
	dirty_pml_free(vm, dl);
	dl->cfg = cfg;
	r = 0;
	if (cfg.mode == DIRTY_MODE_RING)
		r = dirty_rings_alloc(vm, dl, cfg.ring_entries, cfg.dbit);
	if (!r && cfg.dbit)
		r = dirty_pml_alloc(vm, dl);
	if (r) {
		dirty_rings_free(vm, dl);
		dirty_pml_free(vm, dl);
		dirty_log_config_default(&dl->cfg);
	}
	if (!paused)
		vm_resume(vm);
out:
	pthread_mutex_unlock(&vm->slots_lock);
	return r;
}

void vm_get_dirty_log_config(struct vm *vm, struct dirty_log_config *cfg)
{
	struct dirty_log_vm *dl;

	pthread_mutex_lock(&vm->slots_lock);
	dl = dirty_log_vm(vm);
	if (dl)
		*cfg = dl->cfg;
	else
		dirty_log_config_default(cfg);
	pthread_mutex_unlock(&vm->slots_lock);
}

int dirty_log_set_harvest(struct vm *vm, enum dirty_log_algo algo, enum dirty_log_lock lock)
{
	struct dirty_log_vm *dl;
	int r = 0;

	if ((unsigned int)algo >= DIRTY_ALGO_NR || (unsigned int)lock >= DIRTY_LOCK_NR)
		return -EINVAL;
	pthread_mutex_lock(&vm->slots_lock);
	dl = dirty_log_vm(vm);
	if (dl) {
		dl->cfg.algo = algo;
		dl->cfg.lock = lock;
	} else {
		r = -ENOMEM;
	}
	pthread_mutex_unlock(&vm->slots_lock);
	return r;
}

void dirty_log_destroy(struct vm *vm)
{
	struct dirty_log_vm *dl = vm->dirty_log;

	if (!dl)
		return;
	dirty_rings_free(NULL, dl);
	dirty_pml_free(NULL, dl);
	free(dl);
	vm->dirty_log = NULL;
}

/* ---- marking (vCPU side) ---- */

bool dirty_log_uses_dbit(const struct vm *vm)
{
	const struct dirty_log_vm *dl = __atomic_load_n((struct dirty_log_vm *const *)&vm->dirty_log,
							__ATOMIC_ACQUIRE);

	return dl && dl->cfg.dbit;
}

static inline void dirty_bitmap_set(uint64_t *bitmap, uint64_t rel)
{
	uint64_t bit = 1ull << (rel % 64), *p = &bitmap[rel / 64];

	/* Relaxed is enough: harvesters take words with an atomic exchange. */
	if (!(__atomic_load_n(p, __ATOMIC_RELAXED) & bit))
		__atomic_fetch_or(p, bit, __ATOMIC_RELAXED);
}

/*
 * Called after a spte became writable (fast path, slow path) or from a PML
 * drain; inside a memslot read side or with slots_lock held. Never blocks:
 * a full ring only raises KVM_REQ_RING_FULL for the vCPU to act on.
 */
void mark_page_dirty_in_slot(struct vm *vm, struct vcpu *vcpu, const struct memslot *slot, gfn_t gfn)
{
	struct dirty_slot *ds = slot->dirty_log_priv;
	struct dirty_log_vm *dl;
	uint64_t rel = gfn - slot->base_gfn;

	if (!(slot->flags & KVM_MEM_LOG_DIRTY_PAGES) || !ds)
		return;
	dl = __atomic_load_n((struct dirty_log_vm **)&vm->dirty_log, __ATOMIC_ACQUIRE);
	if (dl->cfg.mode == DIRTY_MODE_RING) {
		if (dirty_ring_push(vm, vcpu ? vcpu : vm->vcpus[0], slot, rel))
			return;
		/* Hard-full (never with the reserve respected): keep it in the bitmap. */
		__atomic_store_n(&ds->overflow, true, __ATOMIC_RELEASE);
		dl_stat_add(vm, ring_overflows, 1);
	}
	dirty_bitmap_set(__atomic_load_n(&ds->live, __ATOMIC_ACQUIRE), rel);
}

/* ---- memslot hooks ---- */

int dirty_log_prepare_memslot(struct vm *vm, const struct memslot *old, struct memslot *new)
{
	uint64_t words = memslot_dirty_bitmap_words(new), i;
	struct dirty_log_vm *dl;
	struct dirty_slot *ds;
	uint64_t *bm;

	if (!(new->flags & KVM_MEM_LOG_DIRTY_PAGES))
		return 0;
	if (old && old->dirty_bitmap && old->dirty_log_priv) {
		new->dirty_bitmap = old->dirty_bitmap;
		new->dirty_log_priv = old->dirty_log_priv;
		return 0;
	}
	dl = dirty_log_vm(vm);
	bm = calloc(2 * words, sizeof(uint64_t));
	ds = calloc(1, sizeof(*ds));
	if (!dl || !bm || !ds) {
		free(bm);
		free(ds);
		return -ENOMEM;
	}
	ds->live = bm;
	ds->spare = bm + words;
	if (dl->cfg.initially_set) {
		/* KVM_DIRTY_LOG_INITIALLY_SET: everything dirty, protection deferred. */
		for (i = 0; i < new->npages / 64; i++)
			bm[i] = ~0ull;
		if (new->npages % 64)
			bm[i] = (1ull << (new->npages % 64)) - 1;
		ds->lazy_protect = true;
	}
	new->dirty_bitmap = bm;
	new->dirty_log_priv = ds;
	return 0;
}

void dirty_log_free_memslot(struct vm *vm, struct memslot *slot)
{
	free(slot->dirty_bitmap);
	slot->dirty_bitmap = NULL;
	free(slot->dirty_log_priv);
	slot->dirty_log_priv = NULL;
}

/*
 * Split every huge leaf of @slot in [start, end] down to 4 KiB, W dropped
 * (eager page splitting). slots_lock held, mmu_lock not held: the host
 * caches are topped up between batches. Returns leaves split.
 */
static uint64_t dirty_split_range(struct vm *vm, const struct memslot *slot, gfn_t start, gfn_t end)
{
	struct mmu_caches *c = &vm->host_caches;
	uint64_t split = 0;
	int level;

	for (level = PG_LEVEL_MAX_LEAF; level > PG_LEVEL_4K; level--) {
		gfn_t cursor = start;
		bool done = false;

		while (!done) {
			struct slot_rmap_walk_iterator it;

			if (mmu_topup_caches(vm, c, MMU_PAGE_CACHE_CAPACITY, MMU_CACHE_CAPACITY))
				return split;
			done = true;
			mmu_write_lock(vm);
			for_each_slot_rmap_range(slot, level, level, cursor, end, &it) {
				struct rmap_iterator iter;
				uint64_t *sptep;
				int r = 0;

				/* Splitting removes the entry from this rmap: restart from the first. */
				while ((sptep = rmap_get_first(it.rmap, &iter))) {
					r = mmu_split_huge_leaf(vm, c, slot, sptep, it.gfn, level, true);
					if (r)
						break;
					split++;
				}
				if (r == -ENOMEM) {
					cursor = it.gfn;
					done = false;
					break;
				}
				/* -E2BIG: left huge (and write-protected); it splits on a write. */
			}
			if (split)
				vm_flush_remote_tlbs(vm);
			mmu_write_unlock(vm);
		}
	}
	return split;
}

/* Logging turned on for an existing slot (flags change). slots_lock held. */
static void dirty_log_enable_slot(struct vm *vm, struct memslot *slot)
{
	struct dirty_log_vm *dl = dirty_log_vm(vm);
	struct dirty_slot *ds = slot->dirty_log_priv;
	unsigned int n;

	if (ds->lazy_protect)
		return; /* INITIALLY_SET: O(1), protection comes with clears */
	if (dl->cfg.eager_split)
		dl_stat_add(vm, huge_split,
			    dirty_split_range(vm, slot, slot->base_gfn,
					      slot->base_gfn + slot->npages - 1));
	mmu_write_lock(vm);
	n = dirty_protect_slot(vm, slot, dl->cfg.algo, dl->cfg.dbit);
	/* Flush unconditionally, as KVM does: D-bit mode may have cleared nothing visible. */
	vm_flush_remote_tlbs(vm);
	mmu_write_unlock(vm);
	dl_stat_add(vm, enable_wp, n);
	dl_stat_add(vm, flushes, 1);
}

/*
 * Logging turned off: 4 KiB leaves of 2 MiB frames that may be mapped huge
 * (slot alignment and the host page) are zapped, so the next access maps
 * the frame huge again (KVM's kvm_mmu_zap_collapsible_sptes). slots_lock held.
 */
static void dirty_log_recover_huge(struct vm *vm, struct memslot *slot)
{
	uint64_t nframes = memslot_level_entries(slot, PG_LEVEL_2M), i, n = 0, zapped = 0;
	gfn_t *frames;
	bool flush = false;

	if (vm->cfg.max_level < PG_LEVEL_2M || !slot->disallow_lpage[0])
		return;
	frames = malloc(nframes * sizeof(*frames));
	if (!frames)
		return;
	/* Candidates: frames huge pages are allowed in that hold 4 KiB leaves. */
	mmu_read_lock(vm);
	for (i = 0; i < nframes; i++) {
		gfn_t frame = ALIGN_DOWN(slot->base_gfn, 512) + i * 512, g;

		if (*lpage_disallowed(MAX(frame, slot->base_gfn), PG_LEVEL_2M, slot))
			continue;
		for (g = frame; g < frame + 512; g++) {
			if (__atomic_load_n(&gfn_to_rmap(g, PG_LEVEL_4K, slot)->val, __ATOMIC_RELAXED)) {
				frames[n++] = frame;
				break;
			}
		}
	}
	mmu_read_unlock(vm);
	/* Ask the host page tables outside mmu_lock (it reads /proc). */
	for (i = 0; i < n; i++)
		if (host_mapping_level(slot->backing, gfn_to_hva_memslot(slot, frames[i])) < PG_LEVEL_2M)
			frames[i] = ~0ull;
	if (mmu_memory_cache_topup(&vm->host_caches.desc_cache, MMU_CACHE_CAPACITY))
		goto out;
	mmu_write_lock(vm);
	for (i = 0; i < n; i++) {
		gfn_t g;

		if (frames[i] == ~0ull)
			continue;
		for (g = frames[i]; g < frames[i] + 512; g++) {
			struct rmap_head *head = gfn_to_rmap(g, PG_LEVEL_4K, slot);
			struct rmap_iterator iter;
			uint64_t *sptep;

			while ((sptep = rmap_get_first(head, &iter))) {
				flush |= mmu_zap_leaf(vm, &vm->host_caches, slot, sptep, g, PG_LEVEL_4K);
				zapped++;
			}
		}
	}
	if (flush)
		vm_flush_remote_tlbs(vm);
	mmu_write_unlock(vm);
	dl_stat_add(vm, huge_recovered, zapped);
out:
	free(frames);
}

void dirty_log_commit_memslot(struct vm *vm, const struct memslot *old, struct memslot *new)
{
	bool was = old && (old->flags & KVM_MEM_LOG_DIRTY_PAGES);
	bool is = new->flags & KVM_MEM_LOG_DIRTY_PAGES;
	struct dirty_log_vm *dl = dirty_log_vm(vm);

	/* A new slot has no mappings; a read-only one can never be dirtied. */
	if (!old || (new->flags & KVM_MEM_READONLY) || !dl)
		return;
	if (is && !was)
		dirty_log_enable_slot(vm, new);
	else if (!is && was && dl->cfg.recover_huge)
		dirty_log_recover_huge(vm, new);
}

/* ---- one harvest call ---- */

void dirty_ctx_init(struct dirty_ctx *ctx, struct vm *vm, struct memslot *slot)
{
	struct dirty_log_vm *dl = dirty_log_vm(vm);

	memset(ctx, 0, sizeof(*ctx));
	ctx->vm = vm;
	ctx->slot = slot;
	ctx->ds = slot->dirty_log_priv;
	ctx->algo = dl->cfg.algo;
	ctx->lock = dl->cfg.lock;
	ctx->dbit = dl->cfg.dbit;
	/* The walk scans active_mmu_pages and eager splits build tables: both exclusive. */
	ctx->shared = ctx->lock == DIRTY_LOCK_SHARED && ctx->algo != DIRTY_ALGO_WALK &&
		      !(ctx->ds->lazy_protect && dl->cfg.eager_split);
	ctx->skip_word = vm->debug_faults & MMU_DEBUG_SKIP_REPROTECT_WORD;
}

void dirty_ctx_lock(struct dirty_ctx *ctx)
{
	if (ctx->shared)
		mmu_read_lock(ctx->vm);
	else
		mmu_write_lock(ctx->vm);
	ctx->lock_t0 = now_ns();
}

void dirty_ctx_unlock(struct dirty_ctx *ctx)
{
	uint64_t held = now_ns() - ctx->lock_t0;

	ctx->tdp_spt = NULL; /* tables may change once the lock is dropped */
	if (ctx->shared)
		mmu_read_unlock(ctx->vm);
	else
		mmu_write_unlock(ctx->vm);
	ctx->hold_ns += held;
	ctx->hold_max_ns = MAX(ctx->hold_max_ns, held);
}

/* Split the huge leaves over @gfn down to 4 KiB if the host caches allow (INITIALLY_SET + eager split). */
static void dirty_split_at(struct dirty_ctx *ctx, gfn_t gfn)
{
	struct vm *vm = ctx->vm;
	uint64_t *sptep;
	int level;

	while ((sptep = mmu_lookup_leaf(vm, ctx->slot->as_id, gfn, &level)) && level > PG_LEVEL_4K) {
		/* Permissions kept, as KVM's eager split: the mask's pages are protected next. */
		if (mmu_split_huge_leaf(vm, &vm->host_caches, ctx->slot, sptep, gfn, level, false))
			return;
		ctx->flush = true;
		ctx->tdp_spt = NULL;
		dl_stat_add(vm, huge_split, 1);
	}
}

/* OR @mask into @bits at bit position @pos. */
static void bits_or_at(uint64_t *bits, uint64_t pos, uint64_t mask)
{
	unsigned int sh = pos % 64;

	bits[pos / 64] |= mask << sh;
	if (sh && (mask >> (64 - sh)))
		bits[pos / 64 + 1] |= mask >> (64 - sh);
}

bool dirty_debug_skip(struct dirty_ctx *ctx, uint64_t offset)
{
	struct dirty_log_vm *dl = dirty_log_vm(ctx->vm);
	uint64_t key = (uint64_t)ctx->slot->id << 48 | offset;

	if (dl->debug_skip_key == ~0ull)
		dl->debug_skip_key = key;
	return dl->debug_skip_key == key;
}

void dirty_reprotect_masked(struct dirty_ctx *ctx, uint64_t offset, uint64_t mask)
{
	const struct memslot *slot = ctx->slot;
	gfn_t base = slot->base_gfn + offset, start, end;
	unsigned int n = 0;

	if (!mask)
		return;
	/* Pages were handed out: flush before returning even if no spte changed
	 * here (a concurrent harvest may have cleared W and not flushed yet). */
	ctx->flush = true;
	if (unlikely(ctx->skip_word) && dirty_debug_skip(ctx, offset))
		return; /* test-only: this word stays writable */
	start = base + __builtin_ctzll(mask);
	end = base + 63 - __builtin_clzll(mask);
	if (ctx->ds->lazy_protect) {
		/* Nothing was protected at enable: huge mappings over the mask too. */
		if (dirty_log_vm(ctx->vm)->cfg.eager_split) {
			dirty_split_at(ctx, start);
			dirty_split_at(ctx, end);
		}
		n += dirty_protect_huge_at(ctx, start);
		if ((start ^ end) >> 9)
			n += dirty_protect_huge_at(ctx, end);
	}
	if (ctx->algo == DIRTY_ALGO_WALK) {
		if (ctx->walk_bits)
			bits_or_at(ctx->walk_bits, offset - ctx->walk_first, mask);
	} else if (ctx->algo == DIRTY_ALGO_RMAP)
		n += dirty_rmap_reprotect_masked(slot, base, mask, ctx->dbit, ctx->shared);
	else
		n += dirty_tdp_reprotect(ctx, start, end, &mask, base);
	ctx->reprotected += n;
}

void dirty_walk_finish(struct dirty_ctx *ctx)
{
	const struct memslot *slot = ctx->slot;
	uint64_t scanned = 0;

	if (ctx->algo != DIRTY_ALGO_WALK || !ctx->walk_npages)
		return;
	ctx->reprotected += dirty_walk_reprotect(
		ctx->vm, slot, slot->base_gfn + ctx->walk_first,
		slot->base_gfn + ctx->walk_first + ctx->walk_npages - 1, ctx->walk_bits,
		slot->base_gfn + ctx->walk_first, ctx->dbit, &scanned);
	dl_stat_add(ctx->vm, walk_sptes, scanned);
}

void dirty_ctx_finish(struct dirty_ctx *ctx, uint64_t t_start, uint64_t pages)
{
	struct vm *vm = ctx->vm;
	struct dirty_log_stats *st = &dirty_log_vm(vm)->stats;

	/* Before returning: the caller reads the pages next. */
	if (ctx->flush) {
		vm_flush_remote_tlbs(vm);
		dl_stat_add(vm, flushes, 1);
	}
	dl_stat_add(vm, harvests, 1);
	dl_stat_add(vm, dirty_pages, pages);
	dl_stat_add(vm, reprotected, ctx->reprotected);
	dl_stat_add(vm, lock_hold_ns, ctx->hold_ns);
	/* Harvests serialize on slots_lock: plain max is enough. */
	if (ctx->hold_max_ns > READ_ONCE(st->lock_hold_max_ns))
		WRITE_ONCE(st->lock_hold_max_ns, ctx->hold_max_ns);
	WRITE_ONCE(st->last_lock_hold_ns, ctx->hold_ns);
	WRITE_ONCE(st->last_harvest_ns, now_ns() - t_start);
}

/* ---- harvest entry points ---- */

/* Slot @slot_id, logged with a bitmap. slots_lock held. */
static int dirty_lookup(struct vm *vm, uint32_t slot_id, struct memslot **slotp)
{
	struct memslot *slot = vm_id_to_memslot(vm, slot_id >> 16, slot_id & 0xffff);
	struct dirty_log_vm *dl = dirty_log_vm(vm);

	if (!slot || !dl)
		return -EINVAL;
	if (!(slot->flags & KVM_MEM_LOG_DIRTY_PAGES) || !slot->dirty_log_priv)
		return -ENOENT;
	*slotp = slot;
	return 0;
}

/* KVM's rules for a [first_page, first_page + num_pages) range of a slot. */
static int dirty_range_check(const struct memslot *slot, uint64_t first, uint64_t num)
{
	if (first % 64 || first > slot->npages || num > slot->npages - first)
		return -EINVAL;
	if (num < slot->npages - first && num % 64)
		return -EINVAL;
	return 0;
}

/*
 * Fetch, clear and re-protect [first, first + npages) word by word (rmap,
 * tdp; walk collects into @out and walks once). @out gets the fetched words.
 * slots_lock held. Returns the pages fetched.
 */
uint64_t __dirty_get_and_clear(struct dirty_ctx *ctx, uint64_t first, uint64_t npages,
			       uint64_t *out)
{
	uint64_t nw = DIV_ROUND_UP(npages, 64), w0 = first / 64, j, pages = 0;
	uint64_t *live = ctx->ds->live;
	uint64_t chunk = ctx->lock == DIRTY_LOCK_CHUNKED
				 ? dirty_log_vm(ctx->vm)->cfg.chunk_pages / 64 : UINT64_MAX;

	if (ctx->algo == DIRTY_ALGO_WALK) {
		ctx->walk_bits = calloc(nw + 1, sizeof(uint64_t));
		if (!ctx->walk_bits) {
			/* Cannot collect: protect the whole range instead (more, never less). */
			ctx->walk_bits = NULL;
			ctx->skip_word = false;
		}
		ctx->walk_first = first;
		ctx->walk_npages = npages;
	}
	dirty_ctx_lock(ctx);
	for (j = 0; j < nw; j++) {
		uint64_t v = __atomic_load_n(&live[w0 + j], __ATOMIC_RELAXED);

		if (v) {
			v = __atomic_exchange_n(&live[w0 + j], 0, __ATOMIC_ACQ_REL);
			pages += __builtin_popcountll(v);
			dirty_reprotect_masked(ctx, first + 64 * j, v);
		}
		out[j] = v;
		if (chunk != UINT64_MAX && (j + 1) % chunk == 0 && j + 1 < nw) {
			dirty_ctx_unlock(ctx);
			dirty_ctx_lock(ctx);
		}
	}
	dirty_walk_finish(ctx);
	dirty_ctx_unlock(ctx);
	free(ctx->walk_bits);
	ctx->walk_bits = NULL;
	return pages;
}

/*
 * The 2012 GET_DIRTY_LOG: if any bit is set, point the live bitmap at the
 * zeroed spare, wait for a grace period so no vCPU still marks the old one,
 * then under mmu_lock write-protect every leaf of the slot found on
 * active_mmu_pages, flush, and hand out the old bitmap.
 */
static uint64_t dirty_get_walk(struct dirty_ctx *ctx, uint64_t *bitmap)
{
	struct dirty_slot *ds = ctx->ds;
	const struct memslot *slot = ctx->slot;
	uint64_t nw = memslot_dirty_bitmap_words(slot), j, pages = 0, scanned = 0;
	uint64_t *old = ds->live, *skip = NULL;

	for (j = 0; j < nw; j++)
		if (__atomic_load_n(&old[j], __ATOMIC_RELAXED))
			break;
	if (j == nw) {
		memset(bitmap, 0, nw * sizeof(*bitmap));
		return 0;
	}
	memset(ds->spare, 0, nw * sizeof(uint64_t));
	__atomic_store_n(&ds->live, ds->spare, __ATOMIC_SEQ_CST);
	ds->spare = old;
	vm_synchronize_srcu(ctx->vm);
	dl_stat_add(ctx->vm, grace_periods, 1);

	for (j = 0; j < nw; j++) {
		bitmap[j] = __atomic_load_n(&old[j], __ATOMIC_RELAXED);
		pages += __builtin_popcountll(bitmap[j]);
	}
	if (ctx->skip_word) {
		/* Test-only: protect everything but one word (the first dirty one, then always it). */
		skip = malloc(nw * sizeof(*skip));
		if (skip) {
			memset(skip, 0xff, nw * sizeof(*skip));
			for (j = 0; j < nw && !bitmap[j]; j++)
				;
			if (j < nw)
				dirty_debug_skip(ctx, 64 * j); /* chooses the word if none yet */
			for (j = 0; j < nw; j++)
				if (dirty_debug_skip(ctx, 64 * j))
					skip[j] = 0;
		}
	}
	dirty_ctx_lock(ctx);
	ctx->reprotected += dirty_walk_reprotect(ctx->vm, slot, slot->base_gfn,
						 slot->base_gfn + slot->npages - 1, skip,
						 slot->base_gfn, ctx->dbit, &scanned);
	dirty_ctx_unlock(ctx);
	dl_stat_add(ctx->vm, walk_sptes, scanned);
	free(skip);
	ctx->flush = true;
	return pages;
}

int dirty_log_get(struct vm *vm, uint32_t slot_id, uint64_t *bitmap)
{
	uint64_t t0 = now_ns(), pages = 0, nw, j;
	struct memslot *slot;
	struct dirty_ctx ctx;
	int r;

	pthread_mutex_lock(&vm->slots_lock);
	r = dirty_lookup(vm, slot_id, &slot);
	if (r)
		goto out;
	if (dirty_log_vm(vm)->cfg.mode == DIRTY_MODE_RING) {
		r = -ENXIO;
		goto out;
	}
	if (dirty_log_vm(vm)->cfg.dbit)
		dirty_pml_sync(vm);
	dirty_ctx_init(&ctx, vm, slot);
	nw = memslot_dirty_bitmap_words(slot);
	if (dirty_log_vm(vm)->cfg.mode == DIRTY_MODE_MANUAL) {
		/* Manual protect: a copy; clear() re-protects. */
		for (j = 0; j < nw; j++)
			bitmap[j] = __atomic_load_n(&ctx.ds->live[j], __ATOMIC_RELAXED);
		goto out;
	}
	if (ctx.algo == DIRTY_ALGO_WALK)
		pages = dirty_get_walk(&ctx, bitmap);
	else
		pages = __dirty_get_and_clear(&ctx, 0, slot->npages, bitmap);
	dirty_ctx_finish(&ctx, t0, pages);
out:
	pthread_mutex_unlock(&vm->slots_lock);
	return r;
}

int dirty_log_get_and_clear_range(struct vm *vm, uint32_t slot_id, uint64_t first_page,
				  uint64_t num_pages, uint64_t *bitmap)
{
	uint64_t t0 = now_ns(), pages;
	struct memslot *slot;
	struct dirty_ctx ctx;
	int r;

	pthread_mutex_lock(&vm->slots_lock);
	r = dirty_lookup(vm, slot_id, &slot);
	if (!r && dirty_log_vm(vm)->cfg.mode == DIRTY_MODE_RING)
		r = -ENXIO;
	if (!r)
		r = dirty_range_check(slot, first_page, num_pages);
	if (r || !num_pages)
		goto out;
	if (dirty_log_vm(vm)->cfg.dbit)
		dirty_pml_sync(vm);
	dirty_ctx_init(&ctx, vm, slot);
	if (ctx.ds->lazy_protect && dirty_log_vm(vm)->cfg.eager_split)
		mmu_topup_caches(vm, &vm->host_caches, MMU_PAGE_CACHE_CAPACITY, MMU_CACHE_CAPACITY);
	pages = __dirty_get_and_clear(&ctx, first_page, num_pages, bitmap);
	dirty_ctx_finish(&ctx, t0, pages);
out:
	pthread_mutex_unlock(&vm->slots_lock);
	return r;
}

int dirty_log_clear(struct vm *vm, uint32_t slot_id, uint64_t first_page, uint64_t num_pages,
		    const uint64_t *bitmap)
{
	uint64_t t0 = now_ns(), nw, w0, j, pages = 0, chunk;
	struct dirty_log_vm *dl;
	struct memslot *slot;
	struct dirty_ctx ctx;
	uint64_t *live;
	int r;

	pthread_mutex_lock(&vm->slots_lock);
	r = dirty_lookup(vm, slot_id, &slot);
	dl = dirty_log_vm(vm);
	if (!r && dl->cfg.mode == DIRTY_MODE_RING)
		r = -ENXIO;
	if (!r)
		r = dirty_range_check(slot, first_page, num_pages);
	if (r || !num_pages)
		goto out;
	dirty_ctx_init(&ctx, vm, slot);
	nw = DIV_ROUND_UP(num_pages, 64);
	w0 = first_page / 64;
	live = ctx.ds->live;
	chunk = ctx.lock == DIRTY_LOCK_CHUNKED ? dl->cfg.chunk_pages / 64 : UINT64_MAX;
	if (ctx.algo == DIRTY_ALGO_WALK) {
		ctx.walk_bits = calloc(nw + 1, sizeof(uint64_t));
		if (!ctx.walk_bits) {
			r = -ENOMEM;
			goto out;
		}
		ctx.walk_first = first_page;
		ctx.walk_npages = num_pages;
	}
	if (ctx.ds->lazy_protect && dl->cfg.eager_split)
		mmu_topup_caches(vm, &vm->host_caches, MMU_PAGE_CACHE_CAPACITY, MMU_CACHE_CAPACITY);

	dirty_ctx_lock(&ctx);
	for (j = 0; j < nw; j++) {
		uint64_t m = bitmap[j];

		/* Bits past num_pages (the slot's end) are not the caller's. */
		if (j == nw - 1 && num_pages % 64)
			m &= (1ull << (num_pages % 64)) - 1;
		if (m) {
			/* Only bits that were set are re-protected: never one not fetched. */
			m &= __atomic_fetch_and(&live[w0 + j], ~m, __ATOMIC_ACQ_REL);
			pages += __builtin_popcountll(m);
			dirty_reprotect_masked(&ctx, first_page + 64 * j, m);
		}
		if (chunk != UINT64_MAX && (j + 1) % chunk == 0 && j + 1 < nw) {
			dirty_ctx_unlock(&ctx);
			if (ctx.ds->lazy_protect && dl->cfg.eager_split)
				mmu_topup_caches(vm, &vm->host_caches, MMU_PAGE_CACHE_CAPACITY,
						 MMU_CACHE_CAPACITY);
			dirty_ctx_lock(&ctx);
		}
	}
	dirty_walk_finish(&ctx);
	dirty_ctx_unlock(&ctx);
	free(ctx.algo == DIRTY_ALGO_WALK ? ctx.walk_bits : NULL);
	dirty_ctx_finish(&ctx, t0, pages);
out:
	pthread_mutex_unlock(&vm->slots_lock);
	return r;
}

/* ---- stats and benchmark helpers ---- */

void dirty_log_get_stats(struct vm *vm, struct dirty_log_stats *st)
{
	struct dirty_log_vm *dl = __atomic_load_n((struct dirty_log_vm **)&vm->dirty_log,
						  __ATOMIC_ACQUIRE);
	uint64_t *dst = (uint64_t *)st;
	struct vcpu *vcpu;
	size_t i;
	int v;

	memset(st, 0, sizeof(*st));
	if (!dl)
		return;
	for (i = 0; i < sizeof(*st) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&((uint64_t *)&dl->stats)[i], __ATOMIC_RELAXED);
	for_each_vcpu(v, vcpu, vm)
		st->ring_full_exits += READ_ONCE(vcpu->stats.ring_full_exits);
}

int64_t dirty_log_inject_writes(struct vm *vm, uint32_t slot_id, uint64_t first, uint64_t count,
				uint64_t stride)
{
	struct memslot *slot;
	int64_t done = 0;
	uint64_t i;
	int r;

	if (!stride)
		return -EINVAL;
	pthread_mutex_lock(&vm->slots_lock);
	r = dirty_lookup(vm, slot_id, &slot);
	if (r)
		goto out;
	mmu_read_lock(vm);
	for (i = 0; i < count && first + i * stride < slot->npages; i++) {
		gfn_t gfn = slot->base_gfn + first + i * stride;
		uint64_t *sptep, spte;
		int level;

		sptep = mmu_lookup_leaf(vm, slot->as_id, gfn, &level);
		if (sptep && level == PG_LEVEL_4K) {
			/* What fast_page_fault() and the walker do for a write. */
			spte = spte_read(sptep);
			while (is_shadow_present_pte(spte) && is_mmu_writable_spte(spte) &&
			       (spte & (SPTE_W_MASK | SPTE_D_MASK)) != (SPTE_W_MASK | SPTE_D_MASK) &&
			       !spte_cmpxchg(sptep, &spte,
					     spte | SPTE_W_MASK | SPTE_D_MASK | SPTE_A_MASK))
				;
		}
		mark_page_dirty_in_slot(vm, NULL, slot, gfn);
		done++;
	}
	mmu_read_unlock(vm);
out:
	pthread_mutex_unlock(&vm->slots_lock);
	return r ? r : done;
}
