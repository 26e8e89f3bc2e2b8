/* dirty_internal.h: structures shared by the dirty-logging files of src/mmu (dirty_*.c). */
#ifndef RMAPVM_DIRTY_INTERNAL_H
#define RMAPVM_DIRTY_INTERNAL_H

#include "mmu_internal.h"
#include "rmapvm/dirty_log.h"

/* dirty_slot - slot->dirty_log_priv of a logged slot. */
struct dirty_slot {
	/* Bitmap that marks go to: one half of slot->dirty_bitmap. Loaded with
	 * acquire by markers (inside a memslot read side); only the walk
	 * algorithm swaps it, then waits for a grace period. */
	uint64_t *live;
	uint64_t *spare;	/* the other half */
	/* INITIALLY_SET: nothing was protected at enable, so huge mappings may
	 * still be writable; each re-protect protects the huge frames too. */
	bool lazy_protect;
	/* Ring mode: a push found its ring full and logged in @live instead. */
	bool overflow;
};

/* dirty_ring - one vCPU's ring (vcpu->dirty_ring). */
struct dirty_ring {
	struct dirty_gfn *entries;
	uint32_t size;			/* power of two */
	uint32_t soft_limit;		/* used >= soft_limit: ring full exit */
	uint32_t dirty_index;		/* next entry to fill; prod_lock, read atomically */
	uint32_t reset_index;		/* next entry to reset; VM reset_lock, read atomically */
	uint32_t fetch_index;		/* harvester's position; slots_lock */
	bool exit_counted;		/* vCPU thread: this full episode was counted */
	pthread_mutex_t prod_lock;	/* pushes (vCPU, PML drains by the host) */
	pthread_mutex_t wait_lock;	/* a vCPU waiting for room */
	pthread_cond_t wait_cond;
};

/* pml_buffer - one vCPU's PML log (vcpu->pml): gfns whose D bit went 0->1. */
struct pml_buffer {
	pthread_mutex_t lock;		/* the vCPU appends, the vCPU or a harvester drains */
	uint32_t nr;
	gfn_t gfns[DIRTY_PML_ENTRIES];
};

/* dirty_log_vm - vm->dirty_log. */
struct dirty_log_vm {
	struct dirty_log_config cfg;	/* mode/dbit/rings: changed with vCPUs paused */
	int nr_vcpus;
	struct dirty_ring **rings;	/* per vCPU, ring mode */
	struct pml_buffer **pml;	/* per vCPU, D-bit mode */
	/* MMU_DEBUG_SKIP_REPROTECT_WORD: the word never re-protected, (slot id << 48 | page
	 * offset), chosen by the first harvest that re-protects something; ~0 = not yet. */
	uint64_t debug_skip_key;
	struct dirty_log_stats stats;	/* relaxed atomics */
};

#define dl_stat_add(vm, field, n)                                                                  \
	__atomic_fetch_add(&dirty_log_vm(vm)->stats.field, (n), __ATOMIC_RELAXED)

/* The VM's dirty-log state, created with defaults on first use (slots_lock held). */
struct dirty_log_vm *dirty_log_vm(struct vm *vm);

/*
 * dirty_ctx - one harvest call: what to re-protect and how. Built by
 * dirty_ctx_init(), used under mmu_lock by dirty_reprotect_masked().
 */
struct dirty_ctx {
	struct vm *vm;
	struct memslot *slot;
	struct dirty_slot *ds;
	enum dirty_log_algo algo;
	enum dirty_log_lock lock;
	bool dbit;			/* clear D instead of W on 4 KiB leaves */
	bool shared;			/* mmu_lock held for read: lock rmap heads */
	bool skip_word;			/* MMU_DEBUG_SKIP_REPROTECT_WORD is on */
	bool flush;			/* a remote TLB flush is due before returning */
	/* walk: the pages to re-protect, collected, then one walk at the end */
	uint64_t *walk_bits;		/* bit i = page walk_first + i */
	uint64_t walk_first, walk_npages;
	/* tdp: last level-1 table found (valid while the lock is held) */
	gfn_t tdp_frame;		/* gfn >> 9 of the cached table, or ~0 */
	uint64_t *tdp_spt;
	/* lock accounting */
	uint64_t lock_t0, hold_ns, hold_max_ns;
	uint64_t reprotected;
};

void dirty_ctx_init(struct dirty_ctx *ctx, struct vm *vm, struct memslot *slot);
void dirty_ctx_lock(struct dirty_ctx *ctx);
void dirty_ctx_unlock(struct dirty_ctx *ctx);
/*
 * dirty_reprotect_masked() - re-protect the pages of @mask at page offset
 * @offset of ctx->slot (bit i = page offset + i); under mmu_lock as per ctx.
 * Sets ctx->flush. For walk, only collects (see dirty_walk_finish()).
 */
void dirty_reprotect_masked(struct dirty_ctx *ctx, uint64_t offset, uint64_t mask);
/* Test-only: true if the word at @offset is the one MMU_DEBUG_SKIP_REPROTECT_WORD leaves alone. */
bool dirty_debug_skip(struct dirty_ctx *ctx, uint64_t offset);
/*
 * __dirty_get_and_clear() - fetch, clear and re-protect [first, first +
 * npages) of ctx->slot into @out (first a multiple of 64); takes and drops
 * mmu_lock per ctx; slots_lock held. Returns the pages fetched.
 */
uint64_t __dirty_get_and_clear(struct dirty_ctx *ctx, uint64_t first, uint64_t npages,
			       uint64_t *out);
/* walk: scan active_mmu_pages once for what was collected; mmu_lock (write). */
void dirty_walk_finish(struct dirty_ctx *ctx);
/* Flush remote TLBs if due; account the call. After the lock is dropped. */
void dirty_ctx_finish(struct dirty_ctx *ctx, uint64_t t_start, uint64_t pages);

/* ---- dirty_walk.c: the three ways to reach sptes ---- */
/* Re-protect one 4 KiB leaf (clear W, or D when @dbit). True if it changed. */
bool dirty_spte_reprotect(uint64_t *sptep, bool dbit);
/* rmap: pages of @mask at gfn @base (4 KiB rmaps; rmap heads locked if @shared). */
unsigned int dirty_rmap_reprotect_masked(const struct memslot *slot, gfn_t base, uint64_t mask,
					 bool dbit, bool shared);
/*
 * tdp: leaves over [start, end] of @slot's root; 4 KiB leaves only where
 * @bits (bit i = gfn bits_base + i; NULL = all) is set, huge leaves always
 * lose W. Uses and updates the ctx's table cache.
 */
unsigned int dirty_tdp_reprotect(struct dirty_ctx *ctx, gfn_t start, gfn_t end,
				 const uint64_t *bits, gfn_t bits_base);
/*
 * walk: every leaf of @slot in [start, end] on active_mmu_pages (filtered
 * by slot_bitmap), same rule for @bits. mmu_lock (write). Returns sptes
 * changed; *scanned counts sptes looked at.
 */
unsigned int dirty_walk_reprotect(struct vm *vm, const struct memslot *slot, gfn_t start, gfn_t end,
				  const uint64_t *bits, gfn_t bits_base, bool dbit, uint64_t *scanned);
/* Clear W on every huge leaf mapping @gfn of @slot (rmaps, or table walk for tdp). */
unsigned int dirty_protect_huge_at(struct dirty_ctx *ctx, gfn_t gfn);
/* Whole slot at enable: W (or D on 4 KiB in D-bit mode) off everywhere. mmu_lock (write). */
unsigned int dirty_protect_slot(struct vm *vm, const struct memslot *slot, enum dirty_log_algo algo,
				bool dbit);

/* ---- dirty_ring.c ---- */
int dirty_rings_alloc(struct vm *vm, struct dirty_log_vm *dl, uint32_t entries, bool dbit);
/* Free the rings; @vm (NULL from vm_destroy) gets its vCPU pointers cleared. vCPUs parked. */
void dirty_rings_free(struct vm *vm, struct dirty_log_vm *dl);
/* Push (slot, offset) to @vcpu's ring; false if the ring is hard-full. */
bool dirty_ring_push(struct vm *vm, struct vcpu *vcpu, const struct memslot *slot, uint64_t offset);

/* ---- dirty_pml.c ---- */
int dirty_pml_alloc(struct vm *vm, struct dirty_log_vm *dl);
void dirty_pml_free(struct vm *vm, struct dirty_log_vm *dl);
/* Drain @vcpu's PML buffer into the bitmap / ring; caller holds slots_lock or a read side. */
void dirty_pml_drain(struct vm *vm, struct vcpu *vcpu);
/* kvm_arch_sync_dirty_log: drain every vCPU's buffer (host side, slots_lock held). */
void dirty_pml_sync(struct vm *vm);

#endif /* RMAPVM_DIRTY_INTERNAL_H */
