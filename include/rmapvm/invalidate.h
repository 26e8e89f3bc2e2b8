/* invalidate.h: MMU-notifier invalidation of the soft MMU, unmap_hva_range variants, aging, host memory operations. */
#ifndef RMAPVM_INVALIDATE_H
#define RMAPVM_INVALIDATE_H

#include <stddef.h>
#include <stdint.h>
#include "rmapvm/types.h"

struct vm;
struct mem_backing;

/*
 * unmap_variant - how invalidate_range_start() finds the sptes of an hva
 * range (docs/INVALIDATION.md). All four remove exactly the same sptes:
 *  UNMAP_LEVEL_RANGE  the talk's kvm_unmap_hva_range(): per intersecting
 *                     slot, per level, walk the rmap index range once
 *  UNMAP_SLOT_RANGE   skip slots that do not intersect, then per 4 KiB page
 *                     visit the rmap of each level
 *  UNMAP_PER_PAGE     2012 before: per 4 KiB hva, scan every memslot of every
 *                     address space, visit the rmap of each level
 *  UNMAP_TDP          no rmap lookup: walk the page table over each slot's
 *                     gfn range (the TDP MMU's zap_gfn_range)
 */
enum unmap_variant {
	UNMAP_LEVEL_RANGE = 0, /* default */
	UNMAP_SLOT_RANGE,
	UNMAP_PER_PAGE,
	UNMAP_TDP,
	UNMAP_NR_VARIANTS,
};

/* "level_range" | "slot_range" | "per_page" | "tdp"; 0 or -EINVAL. */
int unmap_variant_parse(const char *s, enum unmap_variant *v);
const char *unmap_variant_name(enum unmap_variant v);

/* Select the variant later invalidations of @vm use. 0 or -EINVAL. */
int invalidate_set_variant(struct vm *vm, enum unmap_variant v);
enum unmap_variant invalidate_get_variant(const struct vm *vm);

/*
 * invalidate_range_start() - the host is about to change what backs
 * [@start, @end) (MMU notifier invalidate_range_start). @end is rounded up to
 * a whole page, @start down. Blocks memslot updates until the matching
 * invalidate_range_end(); if any memslot of any address space maps part of
 * the range: marks it in progress (faults on its gfns retry), removes every
 * spte that maps any byte of it, and flushes remote TLBs once. When it
 * returns, no vCPU can reach the old pages through the soft MMU.
 * Must not be called by a thread that has a vCPU loaded (the flush would
 * wait for itself). Returns 0, or -EINVAL for an empty or wrapping range.
 */
int invalidate_range_start(struct vm *vm, hva_t start, hva_t end);
/*
 * invalidate_range_end() - the change announced by the matching
 * invalidate_range_start(@start, @end) is complete: bump the sequence so
 * faults that resolved a page before it retry, end the in-progress range,
 * let memslot updates go. 0 or -EINVAL (no invalidation in progress).
 */
int invalidate_range_end(struct vm *vm, hva_t start, hva_t end);

/*
 * Aging (host reclaim) through rmap over [@start, @end):
 * invalidate_test_young()        true if any spte mapping the range has A set
 * invalidate_clear_young()       clear A on all of them; true if any was set.
 *                                No TLB flush: a vCPU that still caches the
 *                                translation does not set A again (as KVM).
 * invalidate_clear_flush_young() the same, then one remote TLB flush if any
 *                                was young, so the next access sets A.
 */
bool invalidate_test_young(struct vm *vm, hva_t start, hva_t end);
bool invalidate_clear_young(struct vm *vm, hva_t start, hva_t end);
bool invalidate_clear_flush_young(struct vm *vm, hva_t start, hva_t end);

/* ---- host memory operations (src/mmu/host_mem.c) ---- */

/*
 * host_mem - guest memory whose pages the host can really replace: a memfd
 * page pool mapped twice, once whole (the host's "direct map", where sptes
 * point: the pfn) and once as the guest's hva range, page by page as the
 * host page table (pfn_of[]) says. Replacing a page maps a new pool page at
 * the same hva; the old page keeps its contents until the pool reuses it, so
 * a vCPU left with a stale translation observes old data, as in KVM.
 */
struct host_mem;

/*
 * host_mem_create() - @size bytes of guest memory (a multiple of 2 MiB) at a
 * fresh 2 MiB-aligned hva, over a pool of @pool_size bytes (>= @size; room
 * for replacements). @huge: the initial pages are 2 MiB contiguous runs
 * (the host maps them huge). Returns 0, -EINVAL or -ENOMEM.
 */
int host_mem_create(struct host_mem **hmp, size_t size, size_t pool_size, bool huge);
void host_mem_destroy(struct host_mem *hm);
/* The backing to vm_register_backing() before creating slots in it. */
const struct mem_backing *host_mem_backing(const struct host_mem *hm);
/* Host address (pool alias) of the page now behind @hva, or 0 outside @hm. */
void *host_mem_page(const struct host_mem *hm, hva_t hva);

/* Fill callback: the new pages of [@hva, @hva + @len) are at @page. */
typedef void (*host_mem_fill_fn)(void *opaque, hva_t hva, void *page, size_t len);

#define HOST_MEM_COPY  (1u << 0) /* new pages start with the old contents (migration) */
#define HOST_MEM_HUGE  (1u << 1) /* back whole 2 MiB frames with huge pages */
#define HOST_MEM_SMALL (1u << 2) /* back with 4 KiB pages (split) */

/*
 * host_mem_discard() - drop the memory behind [@start, @start + @len) of
 * @vm's guest memory: invalidate_range_start, madvise(MADV_DONTNEED) (or, in
 * a host_mem, fresh zero pages), invalidate_range_end. A guest read
 * afterwards sees zeros. The range is rounded to whole pages.
 * Returns 0 or -errno (-EINVAL: empty range).
 */
int host_mem_discard(struct vm *vm, hva_t start, size_t len);
/*
 * host_mem_replace() - give [@start, @start + @len) new host pages, inside
 * invalidate_range_start/end: zeros, or the old contents with HOST_MEM_COPY;
 * then @fill (may be NULL) writes them before the range ends. HOST_MEM_HUGE
 * / HOST_MEM_SMALL make the host map it huge / small (THP collapse, split;
 * anonymous memory: MADV_HUGEPAGE / MADV_NOHUGEPAGE), so a re-fault maps at
 * the new level. Returns 0 or -errno (-ENOMEM: host_mem pool exhausted;
 * -EINVAL: bad range or flags).
 */
int host_mem_replace(struct vm *vm, hva_t start, size_t len, unsigned int flags,
		     host_mem_fill_fn fill, void *opaque);
/*
 * __host_mem_replace() - the host page-table change of host_mem_replace()
 * on @hm alone, without notifier calls: the caller brackets it with
 * invalidate_range_start/end itself (tests use this to race faults).
 */
int __host_mem_replace(struct host_mem *hm, hva_t start, size_t len, unsigned int flags,
		       host_mem_fill_fn fill, void *opaque);

/*
 * host_mem_set_resolve_hook() - test hook: @fn runs once, the next time a
 * fault resolves an hva of @hm to its page (before mmu_lock), with the
 * resolved page's host address. NULL clears it.
 */
void host_mem_set_resolve_hook(struct host_mem *hm, void (*fn)(void *opaque, hva_t host),
			       void *opaque);

#endif /* RMAPVM_INVALIDATE_H */
