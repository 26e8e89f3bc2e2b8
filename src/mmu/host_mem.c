/* host_mem.c: host memory operations that drive the MMU notifier (discard, replace, THP changes) and the memfd page pool. */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rmapvm/invalidate.h"
#include "mmu_internal.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/*
 * A host_mem plays the host kernel's memory for the guest: a pool of pages
 * (one memfd), the "direct map" of all of them (@pool, where sptes point),
 * and the guest's hva range, each 4 KiB page of which maps one pool page as
 * the host page table @pfn_of says. Pages are replaced by mapping another
 * pool page at the same hva (mmap MAP_FIXED). A freed pool page keeps its
 * contents until reused, like freed RAM: a stale spte really reads old data.
 */
struct host_mem {
	struct mem_backing backing;	/* what the VM sees: hva, size, ops */
	int fd;				/* the memfd: pool page p at offset p * 4 KiB */
	uint8_t *pool;			/* the whole pool, mapped once (the pfn space) */
	uint64_t pool_pages;
	uint64_t npages;		/* guest pages at backing.hva */
	uint64_t *pfn_of;		/* host page table: guest page -> pool page (atomic) */
	uint8_t *huge;			/* per 2 MiB guest frame: host maps it huge (atomic) */
	pthread_mutex_t lock;		/* allocator and host page-table writers */
	uint64_t *used;			/* bitmap: pool page in use */
	uint16_t *block_used;		/* pages in use per 2 MiB pool block */
	uint64_t cursor;		/* next-fit position for 4 KiB allocations */
	uint64_t block_cursor;		/* next-fit position for 2 MiB allocations */
	void *reserve;			/* hva reservation (2 MiB aligned inside) */
	size_t reserve_len;
	void (*hook)(void *opaque, hva_t host); /* test hook, one-shot */
	void *hook_opaque;
};

#define PAGES_PER_2M 512u

static hva_t host_mem_host_addr(const struct mem_backing *b, hva_t hva);
static int host_mem_mapping_level(const struct mem_backing *b, hva_t hva);

static const struct mem_backing_ops host_mem_ops = {
	.host_addr = host_mem_host_addr,
	.mapping_level = host_mem_mapping_level,
};

static bool hm_contains(const struct host_mem *hm, hva_t hva)
{
	return hva >= hm->backing.hva && hva - hm->backing.hva < hm->backing.size;
}

static hva_t host_mem_host_addr(const struct mem_backing *b, hva_t hva)
{
	struct host_mem *hm = b->priv;
	uint64_t pfn;
	hva_t host;
	void (*hook)(void *, hva_t);

	if (!hm_contains(hm, hva))
		return hva;
	pfn = __atomic_load_n(&hm->pfn_of[(hva - b->hva) >> PAGE_SHIFT], __ATOMIC_ACQUIRE);
	host = (hva_t)hm->pool + (pfn << PAGE_SHIFT) + (hva & (PAGE_SIZE - 1));
	hook = __atomic_exchange_n(&hm->hook, NULL, __ATOMIC_ACQ_REL);
	if (hook)
		hook(hm->hook_opaque, host);
	return host;
}

static int host_mem_mapping_level(const struct mem_backing *b, hva_t hva)
{
	struct host_mem *hm = b->priv;

	if (!hm_contains(hm, hva))
		return PG_LEVEL_4K;
	return __atomic_load_n(&hm->huge[(hva - b->hva) >> 21], __ATOMIC_ACQUIRE) ? PG_LEVEL_2M
										   : PG_LEVEL_4K;
}

void host_mem_set_resolve_hook(struct host_mem *hm, void (*fn)(void *opaque, hva_t host),
			       void *opaque)
{
	hm->hook_opaque = opaque;
	__atomic_store_n(&hm->hook, fn, __ATOMIC_RELEASE);
}

const struct mem_backing *host_mem_backing(const struct host_mem *hm)
{
	return &hm->backing;
}

void *host_mem_page(const struct host_mem *hm, hva_t hva)
{
	if (!hm_contains(hm, hva))
		return NULL;
	return hm->pool +
	       (__atomic_load_n(&hm->pfn_of[(hva - hm->backing.hva) >> PAGE_SHIFT],
				__ATOMIC_ACQUIRE)
		<< PAGE_SHIFT) +
	       (hva & (PAGE_SIZE - 1));
}

/* ---- pool allocator (under hm->lock) ---- */

static bool pool_test(const struct host_mem *hm, uint64_t p)
{
	return hm->used[p / 64] & (1ull << (p % 64));
}

static void pool_mark(struct host_mem *hm, uint64_t p, bool used)
{
	if (used) {
		hm->used[p / 64] |= 1ull << (p % 64);
		hm->block_used[p / PAGES_PER_2M]++;
	} else {
		hm->used[p / 64] &= ~(1ull << (p % 64));
		hm->block_used[p / PAGES_PER_2M]--;
	}
}

/* One free pool page, next fit; prefers blocks already in use (keeps 2 MiB blocks free). */
static int64_t pool_alloc_4k(struct host_mem *hm)
{
	uint64_t n = hm->pool_pages, i, p;
	int pass;

	for (pass = 0; pass < 2; pass++) {
		for (i = 0; i < n; i++) {
			p = (hm->cursor + i) % n;
			if (pool_test(hm, p))
				continue;
			if (!pass && !hm->block_used[p / PAGES_PER_2M]) {
				/* Skip the whole free block on the first pass. */
				i += PAGES_PER_2M - 1 - (p % PAGES_PER_2M);
				continue;
			}
			pool_mark(hm, p, true);
			hm->cursor = p + 1;
			return (int64_t)p;
		}
	}
	return -ENOMEM;
}

/* A whole free 2 MiB block (its first pool page), or -ENOMEM. */
static int64_t pool_alloc_2m(struct host_mem *hm)
{
	uint64_t nblocks = hm->pool_pages / PAGES_PER_2M, i, blk, p;

	for (i = 0; i < nblocks; i++) {
		blk = (hm->block_cursor + i) % nblocks;
		if (hm->block_used[blk])
			continue;
		for (p = blk * PAGES_PER_2M; p < (blk + 1) * PAGES_PER_2M; p++)
			pool_mark(hm, p, true);
		hm->block_cursor = blk + 1;
		return (int64_t)(blk * PAGES_PER_2M);
	}
	return -ENOMEM;
}

/* ---- create / destroy ---- */

int host_mem_create(struct host_mem **hmp, size_t size, size_t pool_size, bool huge)
{
	struct host_mem *hm;
	uint64_t i, nframes;
	uint8_t *hva;
	int r = -ENOMEM;

	if (!size || !IS_ALIGNED(size, SZ_2M) || pool_size < size)
		return -EINVAL;
	pool_size = ALIGN_UP(pool_size, SZ_2M);
	hm = calloc(1, sizeof(*hm));
	if (!hm)
		return -ENOMEM;
	hm->fd = -1;
	pthread_mutex_init(&hm->lock, NULL);
	hm->npages = size >> PAGE_SHIFT;
	hm->pool_pages = pool_size >> PAGE_SHIFT;
	nframes = size / SZ_2M;
	hm->pfn_of = calloc(hm->npages, sizeof(*hm->pfn_of));
	hm->huge = calloc(nframes, 1);
	hm->used = calloc(DIV_ROUND_UP(hm->pool_pages, 64), sizeof(uint64_t));
	hm->block_used = calloc(hm->pool_pages / PAGES_PER_2M, sizeof(uint16_t));
	if (!hm->pfn_of || !hm->huge || !hm->used || !hm->block_used)
		goto fail;

	hm->fd = memfd_create("rmapvm-host-mem", MFD_CLOEXEC);
	if (hm->fd < 0 || ftruncate(hm->fd, (off_t)pool_size)) {
		r = -errno;
		goto fail;
	}
	hm->pool = mmap(NULL, pool_size, PROT_READ | PROT_WRITE, MAP_SHARED, hm->fd, 0);
	if (hm->pool == MAP_FAILED) {
		hm->pool = NULL;
		goto fail;
	}
	/* Reserve, then map the guest range 2 MiB aligned: guest page i = pool page i. */
	hm->reserve_len = size + SZ_2M;
	hm->reserve = mmap(NULL, hm->reserve_len, PROT_NONE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (hm->reserve == MAP_FAILED) {
		hm->reserve = NULL;
		goto fail;
	}
	hva = (uint8_t *)ALIGN_UP((uintptr_t)hm->reserve, SZ_2M);
	if (mmap(hva, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, hm->fd, 0) ==
	    MAP_FAILED)
		goto fail;
	for (i = 0; i < hm->npages; i++) {
		hm->pfn_of[i] = i;
		pool_mark(hm, i, true);
	}
	for (i = 0; i < nframes; i++)
		hm->huge[i] = huge;
	hm->cursor = hm->npages;
	hm->block_cursor = nframes;

	hm->backing.type = huge ? BACKING_THP : BACKING_ANON_4K;
	hm->backing.hva = (hva_t)hva;
	hm->backing.size = size;
	hm->backing.page_size = PAGE_SIZE;
	hm->backing.ops = &host_mem_ops;
	hm->backing.priv = hm;
	*hmp = hm;
	return 0;

fail:
	host_mem_destroy(hm);
	return r;
}

void host_mem_destroy(struct host_mem *hm)
{
	if (!hm)
		return;
	if (hm->reserve)
		munmap(hm->reserve, hm->reserve_len);
	if (hm->pool)
		munmap(hm->pool, hm->pool_pages << PAGE_SHIFT);
	if (hm->fd >= 0)
		close(hm->fd);
	free(hm->pfn_of);
	free(hm->huge);
	free(hm->used);
	free(hm->block_used);
	pthread_mutex_destroy(&hm->lock);
	free(hm);
}

/* ---- replacing pages ---- */

/* Make pool pages [p, p + n) read as zeros (drop them from the memfd). */
static int pool_zero(struct host_mem *hm, uint64_t p, uint64_t n)
{
	if (fallocate(hm->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(p << PAGE_SHIFT),
		      (off_t)(n << PAGE_SHIFT)))
		return -errno;
	return 0;
}

/*
 * Map guest pages [idx, idx + n) to pool pages [p, p + n) at their hva, then
 * publish them in the host page table.
 */
static int hm_map_run(struct host_mem *hm, uint64_t idx, uint64_t p, uint64_t n)
{
	void *hva = (void *)(hm->backing.hva + (idx << PAGE_SHIFT));
	uint64_t i;

	if (mmap(hva, n << PAGE_SHIFT, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, hm->fd,
		 (off_t)(p << PAGE_SHIFT)) == MAP_FAILED)
		return -errno;
	for (i = 0; i < n; i++)
		__atomic_store_n(&hm->pfn_of[idx + i], p + i, __ATOMIC_RELEASE);
	return 0;
}

/*
 * Replace guest pages [idx, idx + n), all inside one 2 MiB frame. A whole
 * frame may get one 2 MiB block (@want_huge); otherwise 4 KiB pages.
 */
static int hm_replace_piece(struct host_mem *hm, uint64_t idx, uint64_t n, bool want_huge,
			    unsigned int flags, host_mem_fill_fn fill, void *opaque)
{
	uint64_t old[PAGES_PER_2M], newp[PAGES_PER_2M], i, run;
	int64_t p = -ENOMEM;
	int r = 0;

	for (i = 0; i < n; i++)
		old[i] = hm->pfn_of[idx + i];
	if (want_huge && n == PAGES_PER_2M)
		p = pool_alloc_2m(hm);
	if (p >= 0) {
		for (i = 0; i < n; i++)
			newp[i] = (uint64_t)p + i;
	} else {
		for (i = 0; i < n; i++) {
			p = pool_alloc_4k(hm);
			if (p < 0) {
				while (i--)
					pool_mark(hm, newp[i], false);
				return (int)p;
			}
			newp[i] = (uint64_t)p;
		}
	}
	/* Contents first (the new pages are mapped nowhere yet), then the mapping. */
	for (i = 0; i < n && !r; i += run) {
		for (run = 1; i + run < n && newp[i + run] == newp[i] + run; run++)
			;
		if (flags & HOST_MEM_COPY) {
			uint64_t k;

			for (k = 0; k < run; k++)
				memcpy(hm->pool + (newp[i + k] << PAGE_SHIFT),
				       hm->pool + (old[i + k] << PAGE_SHIFT), PAGE_SIZE);
		} else {
			r = pool_zero(hm, newp[i], run);
		}
		if (!r && fill)
			fill(opaque, hm->backing.hva + ((idx + i) << PAGE_SHIFT),
			     hm->pool + (newp[i] << PAGE_SHIFT), run << PAGE_SHIFT);
		if (!r)
			r = hm_map_run(hm, idx + i, newp[i], run);
	}
	if (r) {
		/* Only possible before the first run was mapped, in practice; undo what is unmapped. */
		for (i = 0; i < n; i++)
			if (hm->pfn_of[idx + i] != newp[i])
				pool_mark(hm, newp[i], false);
		return r;
	}
	__atomic_store_n(&hm->huge[idx / PAGES_PER_2M], (uint8_t)(want_huge && n == PAGES_PER_2M &&
								newp[n - 1] == newp[0] + n - 1),
			 __ATOMIC_RELEASE);
	/* The old pages go back to the pool with their contents, like freed RAM. */
	for (i = 0; i < n; i++)
		pool_mark(hm, old[i], false);
	return 0;
}

static int __host_mem_replace_locked(struct host_mem *hm, hva_t start, hva_t end,
				     unsigned int flags, host_mem_fill_fn fill, void *opaque)
{
	uint64_t idx = (start - hm->backing.hva) >> PAGE_SHIFT;
	uint64_t last = (end - hm->backing.hva) >> PAGE_SHIFT;
	int r = 0;

	while (idx < last && !r) {
		uint64_t frame_end = ALIGN_DOWN(idx, PAGES_PER_2M) + PAGES_PER_2M;
		uint64_t n = MIN(frame_end, last) - idx;
		bool huge;

		if (flags & HOST_MEM_HUGE)
			huge = true;
		else if (flags & HOST_MEM_SMALL)
			huge = false;
		else /* keep the form: a whole huge frame stays huge */
			huge = hm->huge[idx / PAGES_PER_2M];
		r = hm_replace_piece(hm, idx, n, huge, flags, fill, opaque);
		idx += n;
	}
	return r;
}

static bool replace_args_ok(size_t len, hva_t start, unsigned int flags)
{
	return len && start + len > start && !(flags & HOST_MEM_HUGE && flags & HOST_MEM_SMALL) &&
	       !(flags & ~(HOST_MEM_COPY | HOST_MEM_HUGE | HOST_MEM_SMALL));
}

int __host_mem_replace(struct host_mem *hm, hva_t start, size_t len, unsigned int flags,
		       host_mem_fill_fn fill, void *opaque)
{
	hva_t end = start + len;
	int r;

	if (!replace_args_ok(len, start, flags))
		return -EINVAL;
	start = ALIGN_DOWN(start, PAGE_SIZE);
	end = ALIGN_UP(end, PAGE_SIZE);
	if (!hm_contains(hm, start) || !hm_contains(hm, end - 1))
		return -EINVAL;
	pthread_mutex_lock(&hm->lock);
	r = __host_mem_replace_locked(hm, start, end, flags, fill, opaque);
	pthread_mutex_unlock(&hm->lock);
	return r;
}

/*
 * The notifier range of a change to [start, end) of @hm: a huge mapping
 * partly inside is split first, and a split invalidates the whole 2 MiB
 * (Linux's split_huge_pmd notifies over the full huge page). Without this, a
 * fault on a gfn of the frame outside [start, end) could still map the
 * frame huge, over pages that are being replaced. Under hm->lock.
 */
static void hm_notifier_range(const struct host_mem *hm, hva_t *start, hva_t *end)
{
	hva_t base = hm->backing.hva;

	if (!IS_ALIGNED(*start - base, SZ_2M) && hm->huge[(*start - base) >> 21])
		*start = base + ALIGN_DOWN(*start - base, SZ_2M);
	if (!IS_ALIGNED(*end - base, SZ_2M) && hm->huge[(*end - base) >> 21])
		*end = base + ALIGN_UP(*end - base, SZ_2M);
}

/* host_mem change bracketed by the notifier over the (widened) range. */
static int hm_replace_notify(struct vm *vm, struct host_mem *hm, hva_t s, hva_t e,
			     unsigned int flags, host_mem_fill_fn fill, void *opaque)
{
	hva_t ns = s, ne = e;
	int r;

	pthread_mutex_lock(&hm->lock);
	hm_notifier_range(hm, &ns, &ne);
	r = invalidate_range_start(vm, ns, ne);
	if (!r) {
		r = __host_mem_replace_locked(hm, s, e, flags, fill, opaque);
		invalidate_range_end(vm, ns, ne);
	}
	pthread_mutex_unlock(&hm->lock);
	return r;
}

/* ---- the vm-level operations: notifier around the host change ---- */

/*
 * The host_mem behind [start, end) of @vm in *@hmp, or NULL (plain anonymous
 * memory). -EINVAL when the range is partly inside a host_mem.
 */
static int vm_find_host_mem(struct vm *vm, hva_t start, hva_t end, struct host_mem **hmp)
{
	int i, r = 0;

	*hmp = NULL;
	pthread_mutex_lock(&vm->slots_lock);
	for (i = 0; i < vm->nr_backings; i++) {
		const struct mem_backing *b = vm->backings[i];

		if (b->ops != &host_mem_ops || end <= b->hva || start >= b->hva + b->size)
			continue;
		if (start >= b->hva && end <= b->hva + b->size)
			*hmp = b->priv;
		else
			r = -EINVAL;
		break;
	}
	pthread_mutex_unlock(&vm->slots_lock);
	return r;
}

/* Anonymous memory: the change between start and end, with madvise. */
static int anon_replace(hva_t start, size_t len, unsigned int flags, host_mem_fill_fn fill,
			void *opaque)
{
	void *p = (void *)start, *copy = NULL;
	int r = 0;

	if (flags & HOST_MEM_COPY) {
		copy = malloc(len);
		if (!copy)
			return -ENOMEM;
		memcpy(copy, p, len);
	}
	if (madvise(p, len, MADV_DONTNEED)) {
		r = -errno;
		goto out;
	}
	if ((flags & HOST_MEM_HUGE) && madvise(p, len, MADV_HUGEPAGE))
		r = -errno;
	if ((flags & HOST_MEM_SMALL) && madvise(p, len, MADV_NOHUGEPAGE))
		r = -errno;
	if (r)
		goto out;
	if (flags & HOST_MEM_HUGE)
		madvise(p, len, MADV_POPULATE_WRITE); /* THP where the host has one */
	if (copy)
		memcpy(p, copy, len);
	if (fill)
		fill(opaque, start, p, len);
out:
	free(copy);
	return r;
}

int host_mem_replace(struct vm *vm, hva_t start, size_t len, unsigned int flags,
		     host_mem_fill_fn fill, void *opaque)
{
	hva_t end = start + len, s, e;
	struct host_mem *hm;
	int r;

	if (!replace_args_ok(len, start, flags))
		return -EINVAL;
	s = ALIGN_DOWN(start, PAGE_SIZE);
	e = ALIGN_UP(end, PAGE_SIZE);
	r = vm_find_host_mem(vm, s, e, &hm);
	if (r)
		return r;
	if (hm)
		return hm_replace_notify(vm, hm, s, e, flags, fill, opaque);
	r = invalidate_range_start(vm, s, e);
	if (r)
		return r;
	r = anon_replace(s, e - s, flags, fill, opaque);
	invalidate_range_end(vm, s, e);
	return r;
}

int host_mem_discard(struct vm *vm, hva_t start, size_t len)
{
	hva_t end = start + len, s, e;
	struct host_mem *hm;
	int r;

	if (!len || end < start)
		return -EINVAL;
	s = ALIGN_DOWN(start, PAGE_SIZE);
	e = ALIGN_UP(end, PAGE_SIZE);
	r = vm_find_host_mem(vm, s, e, &hm);
	if (r)
		return r;
	if (hm)
		return hm_replace_notify(vm, hm, s, e, 0, NULL, NULL);
	r = invalidate_range_start(vm, s, e);
	if (r)
		return r;
	if (madvise((void *)s, e - s, MADV_DONTNEED))
		r = -errno;
	invalidate_range_end(vm, s, e);
	return r;
}
