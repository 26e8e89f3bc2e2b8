/* memory.c: host page queries (pagemap), zero-page checks, racy page copies and the parallel memory digest. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "migrate_internal.h"

#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)

int pagemap_open(void)
{
	return open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
}

int pagemap_populated(int fd, const void *hva, uint64_t npages, uint64_t *bitmap)
{
	uint64_t ent[512], i, done = 0, vpn = (uintptr_t)hva >> PAGE_SHIFT;

	memset(bitmap, 0, bitmap_words(npages) * 8);
	if (fd < 0) {
		for (i = 0; i < npages; i++)
			set_bit64(bitmap, i);
		return 0;
	}
	while (done < npages) {
		uint64_t n = MIN(npages - done, (uint64_t)ARRAY_SIZE(ent));
		ssize_t got = pread(fd, ent, n * 8, (off_t)((vpn + done) * 8));

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0 || got % 8) {
			/* Cannot ask: count the rest as populated (always correct). */
			for (i = done; i < npages; i++)
				set_bit64(bitmap, i);
			return 0;
		}
		n = (uint64_t)got / 8;
		for (i = 0; i < n; i++)
			if (ent[i] & (PM_PRESENT | PM_SWAPPED))
				set_bit64(bitmap, done + i);
		done += n;
	}
	return 0;
}

bool page_is_zero(const void *p)
{
	const uint64_t *w = p;
	uint64_t acc = 0;
	unsigned int i;

	for (i = 0; i < PAGE_SIZE / 8; i += 8) {
#ifdef RMAPVM_TSAN
		for (unsigned int j = 0; j < 8; j++)
			acc |= __atomic_load_n(&w[i + j], __ATOMIC_RELAXED);
#else
		acc |= w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] |
		       w[i + 7];
#endif
		if (acc)
			return false;
	}
	return true;
}

void page_copy_racy(void *dst, const void *src)
{
#ifdef RMAPVM_TSAN
	const uint64_t *s = src;
	uint64_t *d = dst;
	unsigned int i;

	for (i = 0; i < PAGE_SIZE / 8; i++)
		d[i] = __atomic_load_n(&s[i], __ATOMIC_RELAXED);
#else
	memcpy(dst, src, PAGE_SIZE);
#endif
}

/* ---- digest ---- */

uint64_t mig_digest_nr_chunks(const struct backend_region *r, int n, uint32_t chunk_pages)
{
	uint64_t c = 0;
	int i;

	for (i = 0; i < n; i++)
		c += DIV_ROUND_UP(r[i].size / PAGE_SIZE, chunk_pages);
	return c;
}

int mig_digest_prepare(struct mig_digest_job *job, const struct backend_region *r, int n,
		       uint32_t chunk_pages)
{
	uint64_t *first;
	int i;

	memset(job, 0, sizeof(*job));
	first = calloc((size_t)n + 1, sizeof(*first));
	if (!first)
		return -ENOMEM;
	for (i = 0; i < n; i++)
		first[i + 1] = first[i] + DIV_ROUND_UP(r[i].size / PAGE_SIZE, chunk_pages);
	job->regions = r;
	job->nr_regions = n;
	job->chunk_pages = chunk_pages;
	job->nr_chunks = first[n];
	job->chunk_first = first;
	job->chunk_hash = calloc(job->nr_chunks ? job->nr_chunks : 1, sizeof(uint64_t));
	if (!job->chunk_hash) {
		free(first);
		job->chunk_first = NULL;
		return -ENOMEM;
	}
	return 0;
}

void mig_digest_free(struct mig_digest_job *job)
{
	free((void *)job->chunk_first);
	free(job->chunk_hash);
	free(job->stale);
	job->chunk_first = NULL;
	job->chunk_hash = NULL;
	job->stale = NULL;
}

int mig_digest_track(struct mig_digest_job *job)
{
	uint64_t words = bitmap_words(job->nr_chunks ? job->nr_chunks : 1);

	job->stale = malloc(words * 8);
	if (!job->stale)
		return -ENOMEM;
	memset(job->stale, 0xff, words * 8);
	return 0;
}

void mig_digest_chunk_pos(const struct mig_digest_job *job, uint64_t i, int *region,
			  uint64_t *page)
{
	int lo = 0, hi = job->nr_regions - 1;

	while (lo < hi) {
		int mid = (lo + hi + 1) / 2;

		if (job->chunk_first[mid] <= i)
			lo = mid;
		else
			hi = mid - 1;
	}
	*region = lo;
	*page = (i - job->chunk_first[lo]) * job->chunk_pages;
}

static const uint8_t zero_page[PAGE_SIZE] __attribute__((aligned(64)));

int mig_digest_part(const struct mig_digest_job *job, int th, int nth)
{
	uint64_t *pop = malloc(bitmap_words(job->chunk_pages) * 8);
	uint8_t *copy = malloc(PAGE_SIZE);
	int pm = pagemap_open(), reg = 0;
	uint64_t i;
	/* Heap state: XXH3_state_t's 64-byte alignment is not kept on every stack. */
	XXH3_state_t *st = XXH3_createState();

	if (!pop || !copy || !st) {
		free(pop);
		free(copy);
		XXH3_freeState(st);
		if (pm >= 0)
			close(pm);
		return -ENOMEM;
	}
	for (i = (uint64_t)th; i < job->nr_chunks; i += (uint64_t)nth) {
		const struct backend_region *r;
		uint64_t first, np, p;

		/* Clear before reading: a mark made while we hash means hash again later. */
		if (job->stale && !(__atomic_fetch_and(&job->stale[i / 64], ~(1ull << (i % 64)),
						       __ATOMIC_ACQ_REL) & (1ull << (i % 64))))
			continue;
		mig_digest_chunk_pos(job, i, &reg, &first);
		r = &job->regions[reg];
		np = MIN((uint64_t)job->chunk_pages, r->size / PAGE_SIZE - first);
		pagemap_populated(pm, r->hva + first * PAGE_SIZE, np, pop);
		XXH3_64bits_reset(st);
		for (p = 0; p < np; p++) {
			const uint8_t *src = r->hva + (first + p) * PAGE_SIZE;

			if (!test_bit64(pop, p)) {
				XXH3_64bits_update(st, zero_page, PAGE_SIZE);
				continue;
			}
#ifdef RMAPVM_TSAN
			page_copy_racy(copy, src);
			src = copy;
#endif
			XXH3_64bits_update(st, src, PAGE_SIZE);
		}
		job->chunk_hash[i] = XXH3_64bits_digest(st);
	}
	if (pm >= 0)
		close(pm);
	free(pop);
	free(copy);
	XXH3_freeState(st);
	return 0;
}

struct digest_thread {
	const struct mig_digest_job *job;
	int th, nth, r;
	bool started;		/* creator's view: joined below */
	pthread_t t;
};

static void *digest_thread_fn(void *arg)
{
	struct digest_thread *d = arg;

	d->r = mig_digest_part(d->job, d->th, d->nth);
	return NULL;
}

int mig_digest_run(struct mig_digest_job *job, int threads, uint64_t *lo, uint64_t *hi)
{
	struct digest_thread d[64];
	XXH128_hash_t h;
	int i, r;

	threads = MAX(1, MIN(threads, 64));
	for (i = 1; i < threads; i++) {
		d[i] = (struct digest_thread){ .job = job, .th = i, .nth = threads };
		d[i].started = !pthread_create(&d[i].t, NULL, digest_thread_fn, &d[i]);
	}
	r = mig_digest_part(job, 0, threads);
	for (i = 1; i < threads; i++) {
		if (d[i].started)
			pthread_join(d[i].t, NULL);
		else /* no thread: do its share here */
			d[i].r = mig_digest_part(job, i, threads);
		if (!r)
			r = d[i].r;
	}
	if (r)
		return r;
	h = XXH3_128bits(job->chunk_hash, job->nr_chunks * sizeof(uint64_t));
	*lo = h.low64;
	*hi = h.high64;
	return 0;
}

int mig_memory_digest(struct backend *be, uint32_t chunk_pages, int threads, uint64_t *lo,
		      uint64_t *hi)
{
	struct backend_region regions[256];
	struct mig_digest_job job;
	int n = be->ops->get_regions(be, regions, (int)ARRAY_SIZE(regions)), r;

	if (n < 0)
		return n;
	if (n > (int)ARRAY_SIZE(regions))
		return -E2BIG;
	r = mig_digest_prepare(&job, regions, n, chunk_pages ? chunk_pages : 256);
	if (r)
		return r;
	r = mig_digest_run(&job, threads, lo, hi);
	mig_digest_free(&job);
	return r;
}
