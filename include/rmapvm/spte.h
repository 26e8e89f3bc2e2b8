/* spte.h: the soft MMU's spte bit layout, predicates and constructors (one place, checked). */
#ifndef RMAPVM_SPTE_H
#define RMAPVM_SPTE_H

#include <assert.h>
#include <stdatomic.h>
#include <stdint.h>
#include "rmapvm/types.h"

/*
 * An spte is one 64-bit word in a 512-entry mmu page, laid out like an EPT
 * entry plus KVM's software bits:
 *
 *   bit  0      R       readable (hardware-defined)
 *   bit  1      W       writable (hardware-defined)
 *   bit  2      X       executable (hardware-defined; unused by the walker)
 *   bit  7      HUGE    leaf at level 2 or 3 (PT_PAGE_SIZE_MASK)
 *   bit  8      A       accessed, set by the walker on any access
 *   bit  9      D       dirty, set by the walker on a write
 *   bit 11      PRESENT present from the MMU's point of view (SPTE_MMU_PRESENT)
 *   bits 12-51  frame   leaf: host frame (hva >> 12) of the first byte mapped;
 *                       non-leaf: address >> 12 of the child's 512-entry table
 *   bit 57      H       host-writable: the host mapping may be written
 *   bit 58      M       mmu-writable: the MMU itself needs no write protection
 *
 * Writable-state machine (H M W): 111 writable; 110 write-protected for dirty
 * logging (the lockless fast path may set W by cmpxchg); 100 write-protected
 * by the MMU (slow path only); 000 host read-only. W implies M implies H.
 *
 * W, A and D are volatile: the walker (A/D) and the fast path (W) change them
 * without mmu_lock, so every update of a present spte is an atomic exchange or
 * compare-exchange, never a plain store.
 */
#define SPTE_R_MASK		(1ull << 0)
#define SPTE_W_MASK		(1ull << 1)
#define SPTE_X_MASK		(1ull << 2)
#define SPTE_HUGE_MASK		(1ull << 7)
#define SPTE_A_MASK		(1ull << 8)
#define SPTE_D_MASK		(1ull << 9)
#define SPTE_PRESENT_MASK	(1ull << 11)
#define SPTE_FRAME_SHIFT	12
#define SPTE_FRAME_MASK		(((1ull << 52) - 1) & ~((1ull << SPTE_FRAME_SHIFT) - 1))
#define SPTE_HOST_WRITABLE_MASK	(1ull << 57)
#define SPTE_MMU_WRITABLE_MASK	(1ull << 58)

#define SPTE_ALL_MASKS                                                                             \
	(SPTE_R_MASK | SPTE_W_MASK | SPTE_X_MASK | SPTE_HUGE_MASK | SPTE_A_MASK | SPTE_D_MASK |    \
	 SPTE_PRESENT_MASK | SPTE_FRAME_MASK | SPTE_HOST_WRITABLE_MASK | SPTE_MMU_WRITABLE_MASK)

/* The masks must not overlap: their sum equals their union. */
static_assert(SPTE_R_MASK + SPTE_W_MASK + SPTE_X_MASK + SPTE_HUGE_MASK + SPTE_A_MASK +
			      SPTE_D_MASK + SPTE_PRESENT_MASK + SPTE_FRAME_MASK +
			      SPTE_HOST_WRITABLE_MASK + SPTE_MMU_WRITABLE_MASK ==
		      SPTE_ALL_MASKS,
	      "spte masks overlap");
static_assert((SPTE_FRAME_MASK >> SPTE_FRAME_SHIFT) == (1ull << 40) - 1, "40-bit frame field");
static_assert(SPTE_FRAME_SHIFT == PAGE_SHIFT, "frame field holds an address >> PAGE_SHIFT");

#define SHADOW_NONPRESENT_VALUE 0ull

static inline bool is_shadow_present_pte(uint64_t spte)
{
	return spte & SPTE_PRESENT_MASK;
}

static inline bool is_large_pte(uint64_t spte)
{
	return spte & SPTE_HUGE_MASK;
}

/* A leaf maps memory: level 1, or a huge entry at level 2/3. */
static inline bool is_last_spte(uint64_t spte, int level)
{
	return level == PG_LEVEL_4K || is_large_pte(spte);
}

static inline bool is_writable_pte(uint64_t spte)
{
	return spte & SPTE_W_MASK;
}

static inline bool is_mmu_writable_spte(uint64_t spte)
{
	return spte & SPTE_MMU_WRITABLE_MASK;
}

static inline bool is_host_writable_spte(uint64_t spte)
{
	return spte & SPTE_HOST_WRITABLE_MASK;
}

static inline bool is_accessed_spte(uint64_t spte)
{
	return spte & SPTE_A_MASK;
}

static inline bool is_dirty_spte(uint64_t spte)
{
	return spte & SPTE_D_MASK;
}

/* Leaf: hva of the first byte mapped. Non-leaf: address of the child table. */
static inline uintptr_t spte_to_addr(uint64_t spte)
{
	return (uintptr_t)(spte & SPTE_FRAME_MASK);
}

static inline uint64_t *spte_to_child_spt(uint64_t spte)
{
	return (uint64_t *)spte_to_addr(spte);
}

/* W implies M implies H (see the state machine above). */
static inline bool spte_writable_invariants_ok(uint64_t spte)
{
	if (!is_shadow_present_pte(spte))
		return true;
	if (is_writable_pte(spte) && !is_mmu_writable_spte(spte))
		return false;
	if (is_mmu_writable_spte(spte) && !is_host_writable_spte(spte))
		return false;
	return true;
}

/*
 * make_spte() - a leaf spte mapping @hva at @level.
 * @host_writable: the host mapping may be written (H).
 * @writable: install with W (and M); otherwise M is kept (dirty-log state 110)
 *            when @host_writable, so the fast path can make it writable.
 * A is set (the access that caused the fault); D is left to the caller
 * (set with W, except that D-bit logging sets it only on a real write).
 */
static inline uint64_t make_spte(hva_t hva, int level, bool host_writable, bool writable)
{
	uint64_t spte = SPTE_PRESENT_MASK | SPTE_R_MASK | SPTE_X_MASK | SPTE_A_MASK;

	spte |= (uint64_t)hva & SPTE_FRAME_MASK;
	if (level > PG_LEVEL_4K)
		spte |= SPTE_HUGE_MASK;
	if (host_writable)
		spte |= SPTE_HOST_WRITABLE_MASK | SPTE_MMU_WRITABLE_MASK;
	if (host_writable && writable)
		spte |= SPTE_W_MASK;
	return spte;
}

static inline uint64_t make_nonleaf_spte(uint64_t *child_spt)
{
	return SPTE_PRESENT_MASK | SPTE_R_MASK | SPTE_W_MASK | SPTE_X_MASK |
	       SPTE_HOST_WRITABLE_MASK | SPTE_MMU_WRITABLE_MASK | ((uint64_t)(uintptr_t)child_spt & SPTE_FRAME_MASK);
}

/* Index of the entry for @gfn in a table at @level. */
static inline unsigned int spte_index(gfn_t gfn, int level)
{
	return (gfn >> KVM_HPAGE_GFN_SHIFT(level)) & (PT64_ENT_PER_PAGE - 1);
}

/* Volatile spte access: every load is atomic; updates go through xchg/cmpxchg. */
static inline uint64_t spte_read(uint64_t *sptep)
{
	return __atomic_load_n(sptep, __ATOMIC_ACQUIRE);
}

static inline void spte_set_nonvolatile(uint64_t *sptep, uint64_t spte)
{
	__atomic_store_n(sptep, spte, __ATOMIC_RELEASE);
}

static inline uint64_t spte_xchg(uint64_t *sptep, uint64_t new_spte)
{
	return __atomic_exchange_n(sptep, new_spte, __ATOMIC_ACQ_REL);
}

static inline bool spte_cmpxchg(uint64_t *sptep, uint64_t *old, uint64_t new_spte)
{
	return __atomic_compare_exchange_n(sptep, old, new_spte, false, __ATOMIC_ACQ_REL,
					   __ATOMIC_ACQUIRE);
}

/* Atomically clear @mask, returning the old value. */
static inline uint64_t spte_clear_bits(uint64_t *sptep, uint64_t mask)
{
	return __atomic_fetch_and(sptep, ~mask, __ATOMIC_ACQ_REL);
}

static inline uint64_t spte_set_bits(uint64_t *sptep, uint64_t mask)
{
	return __atomic_fetch_or(sptep, mask, __ATOMIC_ACQ_REL);
}

#endif /* RMAPVM_SPTE_H */
