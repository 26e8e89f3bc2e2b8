/* test_migrate_fake.h: an in-test backend (plain memory, writer threads, a dirty bitmap, fault injection) for the migration tests. */
#ifndef RMAPVM_TEST_MIGRATE_FAKE_H
#define RMAPVM_TEST_MIGRATE_FAKE_H

/*
 * fake_vm: regions of anonymous memory; each "vCPU" is a thread writing
 * stamps (vcpu, seq, page) into random pages of its own share of memory,
 * then logging the page in the dirty bitmap (write first, log second, as a
 * write fault that logs before the write becomes visible would lose pages
 * against an xchg harvest). harvest_range xchg's bitmap words. Every bit
 * handed out is also recorded in `handed` so tests can check the carry.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "rmapvm/backend.h"
#include "rmapvm/types.h"
#include "rmapvm/workload.h"

#define FAKE_MAX_REGIONS 8
#define FAKE_MAX_VCPUS 4

struct fake_vcpu {
	struct fake_vm *vm;
	int idx;
	pthread_t thread;
	bool started;
	uint64_t seq;		/* writes done (state saved / loaded) */
	uint64_t rng;
	uint64_t bad;		/* impossible stamps read back */
};

struct fake_vm {
	struct backend be;
	int nr_regions;
	struct backend_region regions[FAKE_MAX_REGIONS];
	uint64_t *dirty[FAKE_MAX_REGIONS];
	uint64_t *handed[FAKE_MAX_REGIONS];
	int nr_vcpus;
	struct fake_vcpu vcpus[FAKE_MAX_VCPUS];
	uint64_t total_pages;
	uint64_t pages_per_vcpu;
	uint64_t hot_pages;	/* each vCPU writes its first hot_pages pages (0 = all) */
	uint64_t write_delay_ns;/* per write */
	bool tracking;		/* relaxed atomic */
	bool stop;		/* relaxed atomic */
	int throttle;		/* relaxed atomic */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int paused;		/* under lock: pause requested */
	int parked;		/* under lock: writers parked */
	int running;		/* writers started */
	int harvest_calls;	/* atomic */
	int fail_harvest_at;	/* harvest call number that fails with -EIO (0 = never) */
	int fail_save_vcpu;	/* save_vcpu fails with -EIO */
	int throttle_calls;
};

static inline uint8_t *fake_page(struct fake_vm *f, uint64_t gpage)
{
	int i;

	for (i = 0; i < f->nr_regions; i++) {
		uint64_t np = f->regions[i].size / PAGE_SIZE;

		if (gpage < np)
			return f->regions[i].hva + gpage * PAGE_SIZE;
		gpage -= np;
	}
	return NULL;
}

static inline void fake_log(struct fake_vm *f, uint64_t gpage)
{
	int i;

	if (!__atomic_load_n(&f->tracking, __ATOMIC_RELAXED))
		return;
	for (i = 0; i < f->nr_regions; i++) {
		uint64_t np = f->regions[i].size / PAGE_SIZE;

		if (gpage < np) {
			__atomic_fetch_or(&f->dirty[i][gpage / 64], 1ull << (gpage % 64),
					  __ATOMIC_SEQ_CST);
			return;
		}
		gpage -= np;
	}
}

static void *fake_vcpu_fn(void *arg)
{
	struct fake_vcpu *v = arg;
	struct fake_vm *f = v->vm;
	uint64_t span = f->hot_pages ? f->hot_pages : f->pages_per_vcpu;

	while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
		uint64_t r, page, g, stamp, old;
		uint64_t *w;

		pthread_mutex_lock(&f->lock);
		if (f->paused) {
			f->parked++;
			pthread_cond_broadcast(&f->cond);
			while (f->paused && !__atomic_load_n(&f->stop, __ATOMIC_RELAXED))
				pthread_cond_wait(&f->cond, &f->lock);
			f->parked--;
		}
		pthread_mutex_unlock(&f->lock);
		r = v->rng;
		r ^= r >> 12;
		r ^= r << 25;
		r ^= r >> 27;
		v->rng = r;
		page = (r * 0x2545F4914F6CDD1Dull) % span;
		g = (uint64_t)v->idx * f->pages_per_vcpu + page;
		w = (uint64_t *)fake_page(f, g);
		old = __atomic_load_n(w, __ATOMIC_RELAXED);
		if (old && (stamp_vcpu(old) != (uint32_t)v->idx || stamp_page(old) != page))
			v->bad++;
		__atomic_store_n(&v->seq, v->seq + 1, __ATOMIC_RELAXED);
		stamp = stamp_make((uint32_t)v->idx, (uint32_t)(v->seq & STAMP_ROUND_MASK) | 1, page);
		__atomic_store_n(w, stamp, __ATOMIC_RELAXED);
		/* a second word so pages are not all-zero-but-one */
		__atomic_store_n(w + 1 + (page % 500), v->seq, __ATOMIC_RELAXED);
		fake_log(f, g);
		if (f->write_delay_ns || __atomic_load_n(&f->throttle, __ATOMIC_RELAXED)) {
			long ns = (long)f->write_delay_ns;
			int t = __atomic_load_n(&f->throttle, __ATOMIC_RELAXED);
			struct timespec ts;

			if (t)
				ns = ns * 100 / (100 - t) + 1000L * t;
			ts = (struct timespec){ 0, ns };
			nanosleep(&ts, NULL);
		}
	}
	return NULL;
}

static int fake_get_regions(struct backend *be, struct backend_region *r, int max)
{
	struct fake_vm *f = be->priv;
	int i;

	for (i = 0; i < f->nr_regions && i < max; i++)
		r[i] = f->regions[i];
	return f->nr_regions;
}

static int fake_nr_vcpus(struct backend *be)
{
	return ((struct fake_vm *)be->priv)->nr_vcpus;
}

static int fake_pause(struct backend *be)
{
	struct fake_vm *f = be->priv;

	pthread_mutex_lock(&f->lock);
	f->paused = 1;
	while (f->parked < f->running)
		pthread_cond_wait(&f->cond, &f->lock);
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static int fake_resume(struct backend *be)
{
	struct fake_vm *f = be->priv;

	pthread_mutex_lock(&f->lock);
	f->paused = 0;
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static int fake_dirty_start(struct backend *be, const struct dirty_config *cfg)
{
	struct fake_vm *f = be->priv;
	int i;

	if (cfg->mode != DIRTY_MODE_BITMAP && cfg->mode != DIRTY_MODE_MANUAL)
		return -EOPNOTSUPP;
	for (i = 0; i < f->nr_regions; i++) {
		size_t w = (f->regions[i].size / PAGE_SIZE + 63) / 64;

		for (size_t j = 0; j < w; j++)
			__atomic_store_n(&f->dirty[i][j], 0, __ATOMIC_RELAXED);
	}
	__atomic_store_n(&f->tracking, true, __ATOMIC_SEQ_CST);
	return 0;
}

static int fake_dirty_stop(struct backend *be)
{
	struct fake_vm *f = be->priv;

	__atomic_store_n(&f->tracking, false, __ATOMIC_SEQ_CST);
	return 0;
}

static int fake_harvest_range(struct backend *be, uint32_t slot, uint64_t first, uint64_t n,
			      uint64_t *bm)
{
	struct fake_vm *f = be->priv;
	int i, call = __atomic_add_fetch(&f->harvest_calls, 1, __ATOMIC_RELAXED);
	uint64_t w;

	if (f->fail_harvest_at && call == f->fail_harvest_at)
		return -EIO;
	for (i = 0; i < f->nr_regions; i++)
		if (f->regions[i].slot == slot)
			break;
	if (i == f->nr_regions || first % 64 || first + n > f->regions[i].size / PAGE_SIZE)
		return -EINVAL;
	for (w = 0; w < (n + 63) / 64; w++) {
		bm[w] = __atomic_exchange_n(&f->dirty[i][first / 64 + w], 0, __ATOMIC_SEQ_CST);
		__atomic_fetch_or(&f->handed[i][first / 64 + w], bm[w], __ATOMIC_RELAXED);
	}
	return 0;
}

static int fake_harvest_rings(struct backend *be, ring_entry_fn fn, void *opaque)
{
	return -EOPNOTSUPP;
}

struct fake_vcpu_state {
	uint32_t magic;
	uint32_t idx;
	uint64_t seq, rng;
};

static int fake_save_vcpu(struct backend *be, int v, void *buf, size_t len, size_t *used)
{
	struct fake_vm *f = be->priv;
	struct fake_vcpu_state s = { 0xfa4e, (uint32_t)v, f->vcpus[v].seq, f->vcpus[v].rng };

	if (f->fail_save_vcpu)
		return -EIO;
	if (len < sizeof(s))
		return -ENOSPC;
	memcpy(buf, &s, sizeof(s));
	*used = sizeof(s);
	return 0;
}

static int fake_load_vcpu(struct backend *be, int v, const void *buf, size_t len)
{
	struct fake_vm *f = be->priv;
	struct fake_vcpu_state s;

	if (len != sizeof(s))
		return -EINVAL;
	memcpy(&s, buf, sizeof(s));
	if (s.magic != 0xfa4e || s.idx != (uint32_t)v)
		return -EINVAL;
	f->vcpus[v].seq = s.seq;
	f->vcpus[v].rng = s.rng;
	return 0;
}

static int fake_throttle(struct backend *be, int pct)
{
	struct fake_vm *f = be->priv;

	__atomic_store_n(&f->throttle, pct, __ATOMIC_RELAXED);
	f->throttle_calls++;
	return 0;
}

static void fake_destroy(struct backend *be);

static const struct backend_ops fake_ops = {
	.name = "fake",
	.get_regions = fake_get_regions,
	.nr_vcpus = fake_nr_vcpus,
	.pause = fake_pause,
	.resume = fake_resume,
	.dirty_start = fake_dirty_start,
	.dirty_stop = fake_dirty_stop,
	.harvest_range = fake_harvest_range,
	.harvest_rings = fake_harvest_rings,
	.save_vcpu = fake_save_vcpu,
	.load_vcpu = fake_load_vcpu,
	.throttle = fake_throttle,
	.destroy = fake_destroy,
};

/* Layout: @nr regions of @pages_each pages at gpa 0, 1 GiB, ... (slot i | (i == 3 ? 1 << 16 : 0)). */
static inline struct fake_vm *fake_create(int nr, uint64_t pages_each, int vcpus)
{
	struct fake_vm *f = calloc(1, sizeof(*f));
	int i;

	f->be.ops = &fake_ops;
	f->be.priv = f;
	f->nr_regions = nr;
	f->nr_vcpus = vcpus;
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->cond, NULL);
	for (i = 0; i < nr; i++) {
		void *m = mmap(NULL, pages_each * PAGE_SIZE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

		if (m == MAP_FAILED)
			abort();
		f->regions[i] = (struct backend_region){ .slot = (uint32_t)i | (i == 3 ? 1u << 16 : 0),
							 .gpa = (uint64_t)i << 30,
							 .size = pages_each * PAGE_SIZE,
							 .hva = m };
		f->dirty[i] = calloc((pages_each + 63) / 64 + 1, 8);
		f->handed[i] = calloc((pages_each + 63) / 64 + 1, 8);
	}
	f->total_pages = (uint64_t)nr * pages_each;
	f->pages_per_vcpu = f->total_pages / (uint64_t)vcpus;
	for (i = 0; i < vcpus; i++) {
		f->vcpus[i].vm = f;
		f->vcpus[i].idx = i;
		f->vcpus[i].rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) | 1;
	}
	return f;
}

static inline void fake_start(struct fake_vm *f)
{
	int i;

	__atomic_store_n(&f->stop, false, __ATOMIC_RELAXED);
	for (i = 0; i < f->nr_vcpus; i++) {
		pthread_create(&f->vcpus[i].thread, NULL, fake_vcpu_fn, &f->vcpus[i]);
		f->vcpus[i].started = true;
	}
	pthread_mutex_lock(&f->lock);
	f->running = f->nr_vcpus;
	pthread_mutex_unlock(&f->lock);
}

static inline void fake_stop(struct fake_vm *f)
{
	int i;

	__atomic_store_n(&f->stop, true, __ATOMIC_RELAXED);
	pthread_mutex_lock(&f->lock);
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
	for (i = 0; i < f->nr_vcpus; i++)
		if (f->vcpus[i].started) {
			pthread_join(f->vcpus[i].thread, NULL);
			f->vcpus[i].started = false;
		}
	pthread_mutex_lock(&f->lock);
	f->running = 0;
	pthread_mutex_unlock(&f->lock);
}

static inline uint64_t fake_writes(struct fake_vm *f)
{
	uint64_t n = 0;
	int i;

	for (i = 0; i < f->nr_vcpus; i++)
		n += __atomic_load_n(&f->vcpus[i].seq, __ATOMIC_RELAXED);
	return n;
}

/* Every page holds 0 or a stamp of its owner naming that page. 0 or the first bad global page + 1. */
static inline uint64_t fake_verify(struct fake_vm *f)
{
	uint64_t g;

	for (g = 0; g < f->total_pages; g++) {
		uint64_t s = *(uint64_t *)fake_page(f, g);
		uint64_t v = g / f->pages_per_vcpu;

		if (!s)
			continue;
		if (v >= (uint64_t)f->nr_vcpus || stamp_vcpu(s) != v ||
		    stamp_page(s) != g - v * f->pages_per_vcpu)
			return g + 1;
	}
	return 0;
}

static void fake_destroy(struct backend *be)
{
	struct fake_vm *f = be->priv;
	int i;

	fake_stop(f);
	for (i = 0; i < f->nr_regions; i++) {
		munmap(f->regions[i].hva, f->regions[i].size);
		free(f->dirty[i]);
		free(f->handed[i]);
	}
	pthread_mutex_destroy(&f->lock);
	pthread_cond_destroy(&f->cond);
	free(f);
}

/* The machine description: "nr pages_each" as text. */
static inline int fake_dest_create(void *opaque, const char *kind, const void *desc, size_t len,
				   uint32_t nr_vcpus, struct backend **out, char *err, size_t errlen)
{
	char buf[64];
	int nr;
	unsigned long long pages;

	if (strcmp(kind, "fake")) {
		snprintf(err, errlen, "backend kind '%s', expected fake", kind);
		return -EPROTONOSUPPORT;
	}
	if (!desc || len >= sizeof(buf)) {
		snprintf(err, errlen, "bad description");
		return -EINVAL;
	}
	memcpy(buf, desc, len);
	buf[len] = 0;
	if (sscanf(buf, "%d %llu", &nr, &pages) != 2 || nr < 1 || nr > FAKE_MAX_REGIONS ||
	    nr_vcpus > FAKE_MAX_VCPUS) {
		snprintf(err, errlen, "bad description '%s'", buf);
		return -EINVAL;
	}
	*out = &fake_create(nr, pages, (int)nr_vcpus)->be;
	return 0;
}

#endif /* RMAPVM_TEST_MIGRATE_FAKE_H */
