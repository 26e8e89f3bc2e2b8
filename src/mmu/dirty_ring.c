/* dirty_ring.c: per-vCPU dirty rings: push, in-order harvest, reset with 64-page coalescing, ring-full exits. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dirty_internal.h"
#include "rmapvm/util.h"

static void dirty_ring_destroy(struct dirty_ring *ring)
{
	if (!ring)
		return;
	pthread_mutex_destroy(&ring->prod_lock);
	pthread_mutex_destroy(&ring->wait_lock);
	pthread_cond_destroy(&ring->wait_cond);
	free(ring->entries);
	free(ring);
}

int dirty_rings_alloc(struct vm *vm, struct dirty_log_vm *dl, uint32_t entries, bool dbit)
{
	int i;

	dl->rings = calloc(dl->nr_vcpus, sizeof(*dl->rings));
	if (!dl->rings)
		return -ENOMEM;
	for (i = 0; i < dl->nr_vcpus; i++) {
		struct dirty_ring *ring = calloc(1, sizeof(*ring));

		if (!ring)
			return -ENOMEM;
		dl->rings[i] = ring;
		ring->entries = calloc(entries, sizeof(*ring->entries));
		pthread_mutex_init(&ring->prod_lock, NULL);
		pthread_mutex_init(&ring->wait_lock, NULL);
		pthread_cond_init(&ring->wait_cond, NULL);
		if (!ring->entries)
			return -ENOMEM;
		ring->size = entries;
		/* Room kept after soft-full: the access in flight, and a PML drain in D-bit mode. */
		ring->soft_limit = entries - DIRTY_RING_RSVD_ENTRIES - (dbit ? DIRTY_PML_ENTRIES : 0);
		vm->vcpus[i]->dirty_ring = ring;
	}
	return 0;
}

void dirty_rings_free(struct vm *vm, struct dirty_log_vm *dl)
{
	int i;

	if (!dl->rings)
		return;
	for (i = 0; i < dl->nr_vcpus; i++) {
		if (vm)
			vm->vcpus[i]->dirty_ring = NULL;
		dirty_ring_destroy(dl->rings[i]);
	}
	free(dl->rings);
	dl->rings = NULL;
}

static inline uint32_t ring_used(struct dirty_ring *ring)
{
	return __atomic_load_n(&ring->dirty_index, __ATOMIC_ACQUIRE) -
	       __atomic_load_n(&ring->reset_index, __ATOMIC_ACQUIRE);
}

static inline bool ring_soft_full(struct dirty_ring *ring)
{
	return ring_used(ring) >= ring->soft_limit;
}

/*
 * Publish (slot, offset) in @vcpu's ring: fields first, then flags = DIRTY
 * with release, so a harvester that sees DIRTY (acquire) sees the fields.
 */
bool dirty_ring_push(struct vm *vm, struct vcpu *vcpu, const struct memslot *slot, uint64_t offset)
{
	struct dirty_ring *ring = vcpu->dirty_ring;
	struct dirty_gfn *e;
	uint32_t idx, used;

	if (!ring)
		return false;
	pthread_mutex_lock(&ring->prod_lock);
	idx = ring->dirty_index;
	used = idx - __atomic_load_n(&ring->reset_index, __ATOMIC_ACQUIRE);
	if (used >= ring->size) {
		pthread_mutex_unlock(&ring->prod_lock);
		return false;
	}
	e = &ring->entries[idx & (ring->size - 1)];
	e->slot = (uint32_t)slot->as_id << 16 | slot->id;
	e->offset = offset;
	__atomic_store_n(&e->flags, DIRTY_GFN_F_DIRTY, __ATOMIC_RELEASE);
	__atomic_store_n(&ring->dirty_index, idx + 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&ring->prod_lock);
	dl_stat_add(vm, ring_pushes, 1);
	if (used + 1 >= ring->soft_limit)
		__atomic_fetch_or(&vcpu->requests, KVM_REQ_RING_FULL, __ATOMIC_SEQ_CST);
	return true;
}

/*
 * KVM_EXIT_DIRTY_RING_FULL: the vCPU leaves guest mode and waits until a
 * reset brings its ring under the soft limit. A pause request ends the wait
 * early (the request is raised again, to wait after the pause).
 */
void dirty_ring_wait_for_reset(struct vcpu *vcpu)
{
	struct dirty_ring *ring = vcpu->dirty_ring;

	if (!ring || !ring_soft_full(ring)) {
		if (ring)
			ring->exit_counted = false;
		return;
	}
	if (!ring->exit_counted) {
		stat_inc(vcpu->stats.ring_full_exits);
		ring->exit_counted = true;
	}
	__atomic_store_n(&vcpu->mode, OUTSIDE_GUEST_MODE, __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&ring->wait_lock);
	while (ring_soft_full(ring)) {
		struct timespec ts;

		if (__atomic_load_n(&vcpu->requests, __ATOMIC_SEQ_CST) & KVM_REQ_PAUSE) {
			__atomic_fetch_or(&vcpu->requests, KVM_REQ_RING_FULL, __ATOMIC_SEQ_CST);
			break;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&ring->wait_cond, &ring->wait_lock, &ts);
	}
	if (!ring_soft_full(ring))
		ring->exit_counted = false;
	pthread_mutex_unlock(&ring->wait_lock);
	__atomic_store_n(&vcpu->mode, IN_GUEST_MODE, __ATOMIC_SEQ_CST);
}

/* Ring of vCPU @idx in ring mode; slots_lock held. */
static int ring_lookup(struct vm *vm, int idx, struct dirty_ring **ringp)
{
	struct dirty_log_vm *dl = dirty_log_vm(vm);

	if (!dl || dl->cfg.mode != DIRTY_MODE_RING || !dl->rings)
		return -ENXIO;
	if (idx < 0 || idx >= dl->nr_vcpus)
		return -EINVAL;
	*ringp = dl->rings[idx];
	return 0;
}

int dirty_ring_used(struct vm *vm, int idx)
{
	struct dirty_ring *ring;
	int r;

	pthread_mutex_lock(&vm->slots_lock);
	r = ring_lookup(vm, idx, &ring);
	if (!r)
		r = (int)ring_used(ring);
	pthread_mutex_unlock(&vm->slots_lock);
	return r;
}

/* Pages a full ring logged in a slot's bitmap: fetch, re-protect and deliver them. */
static int ring_harvest_overflow(struct vm *vm, ring_entry_fn fn, void *opaque)
{
	int as, i, n = 0;

	for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++) {
		struct memslots *slots = vm_memslots(vm, as);
		struct memslot *slot;

		for_each_memslot(slot, i, slots) {
			struct dirty_slot *ds = slot->dirty_log_priv;
			uint64_t nw, w, *bits;
			struct dirty_ctx ctx;

			if (!ds || !__atomic_exchange_n(&ds->overflow, false, __ATOMIC_ACQ_REL))
				continue;
			nw = memslot_dirty_bitmap_words(slot);
			bits = calloc(nw, sizeof(*bits));
			if (!bits) {
				__atomic_store_n(&ds->overflow, true, __ATOMIC_RELEASE);
				return -ENOMEM;
			}
			dirty_ctx_init(&ctx, vm, slot);
			__dirty_get_and_clear(&ctx, 0, slot->npages, bits);
			dirty_ctx_finish(&ctx, now_ns(), 0);
			for (w = 0; w < nw; w++) {
				uint64_t m = bits[w];

				for (; m; m &= m - 1, n++)
					fn(opaque, (uint32_t)slot->as_id << 16 | slot->id,
					   w * 64 + __builtin_ctzll(m));
			}
			free(bits);
		}
	}
	return n;
}

/*
 * The user side of the protocol: entries strictly in order from the fetch
 * index; stop at the first one not DIRTY; mark each RESET with release once
 * its fields are read.
 */
int dirty_ring_harvest(struct vm *vm, int idx, ring_entry_fn fn, void *opaque)
{
	struct dirty_ring *ring;
	int r, n = 0;

	pthread_mutex_lock(&vm->slots_lock);
	r = ring_lookup(vm, idx, &ring);
	if (r)
		goto out;
	if (dirty_log_vm(vm)->cfg.dbit)
		dirty_pml_drain(vm, vm->vcpus[idx]); /* the kick before harvesting */
	for (;;) {
		struct dirty_gfn *e = &ring->entries[ring->fetch_index & (ring->size - 1)];
		uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);
		uint32_t slot;
		uint64_t offset;

		if (!(flags & DIRTY_GFN_F_DIRTY) || (flags & DIRTY_GFN_F_RESET))
			break;
		slot = e->slot;
		offset = e->offset;
		__atomic_store_n(&e->flags, flags | DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		ring->fetch_index++;
		fn(opaque, slot, offset);
		n++;
	}
	r = ring_harvest_overflow(vm, fn, opaque);
	r = r < 0 ? r : n + r;
out:
	pthread_mutex_unlock(&vm->slots_lock);
	return r;
}

/* One coalesced reset unit: up to 64 pages of a slot. */
struct ring_mask {
	uint32_t slot;
	uint64_t offset;
	uint64_t mask;
};

struct mask_vec {
	struct ring_mask *v;
	size_t n, cap;
};

static int mask_vec_push(struct mask_vec *mv, uint32_t slot, uint64_t offset, uint64_t mask)
{
	assert(mv->n < mv->cap && "reset units sized from the entries in use");
	mv->v[mv->n++] = (struct ring_mask){ slot, offset, mask };
	return 0;
}

/*
 * Reset one ring: take RESET entries in order, free their places, and
 * coalesce them into (slot, offset, 64-page mask) units as KVM does: an
 * entry joins the current unit if it lies in [offset, offset + 64) or
 * slightly below it when shifting the mask keeps every bit.
 */
static int ring_reset_collect(struct dirty_ring *ring, struct mask_vec *mv, int *count)
{
	bool have = false;
	uint32_t cur_slot = 0;
	uint64_t cur_off = 0, mask = 0;
	int r = 0;

	/*
	 * Harvested entries are [reset_index, fetch_index). Not bounded by
	 * dirty_index: a harvest may take an entry whose DIRTY flag is published
	 * while the producer has not yet advanced dirty_index.
	 */
	while (ring->reset_index != ring->fetch_index) {
		struct dirty_gfn *e = &ring->entries[ring->reset_index & (ring->size - 1)];
		uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE), slot;
		uint64_t offset;

		if (!(flags & DIRTY_GFN_F_RESET))
			break;
		slot = e->slot;
		offset = e->offset;
		__atomic_store_n(&e->flags, 0, __ATOMIC_RELEASE);
		__atomic_store_n(&ring->reset_index, ring->reset_index + 1, __ATOMIC_RELEASE);
		(*count)++;
		if (have && slot == cur_slot) {
			int64_t delta = (int64_t)(offset - cur_off);

			if (delta >= 0 && delta < 64) {
				mask |= 1ull << delta;
				continue;
			}
			if (delta < 0 && delta > -64 && ((mask << -delta) >> -delta) == mask) {
				mask = (mask << -delta) | 1;
				cur_off = offset;
				continue;
			}
		}
		if (have)
			r |= mask_vec_push(mv, cur_slot, cur_off, mask);
		have = true;
		cur_slot = slot;
		cur_off = offset;
		mask = 1;
	}
	if (have)
		r |= mask_vec_push(mv, cur_slot, cur_off, mask);
	return r;
}

int dirty_ring_reset(struct vm *vm)
{
	uint64_t t0 = now_ns(), hold = 0, hold_max = 0, rep = 0;
	struct mask_vec mv = { 0 };
	struct dirty_log_vm *dl;
	struct dirty_ctx ctx;
	bool flush = false, skip;
	int count = 0, r = 0, i;
	size_t k, j;

	pthread_mutex_lock(&vm->slots_lock);
	dl = dirty_log_vm(vm);
	if (!dl || dl->cfg.mode != DIRTY_MODE_RING || !dl->rings) {
		r = -ENXIO;
		goto out;
	}
	/* Room for one unit per entry: collecting must not fail once entries are freed. */
	for (i = 0; i < dl->nr_vcpus; i++)
		mv.cap += dl->rings[i]->fetch_index - dl->rings[i]->reset_index;
	mv.v = malloc(MAX(mv.cap, 1) * sizeof(*mv.v));
	if (!mv.v) {
		r = -ENOMEM;
		goto out;
	}
	for (i = 0; i < dl->nr_vcpus; i++)
		ring_reset_collect(dl->rings[i], &mv, &count);
	skip = vm->debug_faults & MMU_DEBUG_SKIP_REPROTECT_WORD;

	/* Apply the units slot by slot, each run under one mmu_lock hold. */
	for (k = 0; k < mv.n; k = j) {
		uint32_t sid = mv.v[k].slot;
		struct memslot *slot = vm_id_to_memslot(vm, sid >> 16, sid & 0xffff);

		for (j = k; j < mv.n && mv.v[j].slot == sid; j++)
			;
		/* The slot may be gone or no longer logged: skip, as KVM checks. */
		if (!slot || !(slot->flags & KVM_MEM_LOG_DIRTY_PAGES) || !slot->dirty_log_priv)
			continue;
		dirty_ctx_init(&ctx, vm, slot);
		ctx.skip_word = skip;
		if (ctx.algo == DIRTY_ALGO_WALK) {
			ctx.walk_bits = calloc(memslot_dirty_bitmap_words(slot) + 1, sizeof(uint64_t));
			ctx.walk_first = 0;
			ctx.walk_npages = slot->npages;
		}
		dirty_ctx_lock(&ctx);
		for (; k < j; k++) {
			uint64_t off = mv.v[k].offset, m = mv.v[k].mask;

			if (off >= slot->npages)
				continue;
			if (slot->npages - off < 64)
				m &= (1ull << (slot->npages - off)) - 1;
			dirty_reprotect_masked(&ctx, off, m);
		}
		dirty_walk_finish(&ctx);
		dirty_ctx_unlock(&ctx);
		free(ctx.walk_bits);
		skip = ctx.skip_word;
		flush |= ctx.flush;
		hold += ctx.hold_ns;
		hold_max = MAX(hold_max, ctx.hold_max_ns);
		rep += ctx.reprotected;
	}
	memset(&ctx, 0, sizeof(ctx));
	ctx.vm = vm;
	ctx.flush = flush;
	ctx.hold_ns = hold;
	ctx.hold_max_ns = hold_max;
	ctx.reprotected = rep;
	dirty_ctx_finish(&ctx, t0, count);
	dl_stat_add(vm, ring_masks, mv.n);

	/* Room was made: wake vCPUs waiting on a full ring. */
	for (i = 0; i < dl->nr_vcpus; i++) {
		struct dirty_ring *ring = dl->rings[i];

		pthread_mutex_lock(&ring->wait_lock);
		pthread_cond_broadcast(&ring->wait_cond);
		pthread_mutex_unlock(&ring->wait_lock);
	}
	r = count;
out:
	free(mv.v);
	pthread_mutex_unlock(&vm->slots_lock);
	return r;
}
