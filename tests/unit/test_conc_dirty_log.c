/* test_conc_dirty_log.c: the kernel's dirty_log_test semantics for every mode x algorithm, and proof it can fail. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "mmu/mmu_internal.h"
#include "rmapvm/dirty_log.h"
#include "rmapvm/workload.h"

#define NR_VCPUS 2
#define SLOT_ID	 0

/* How the host collects: the kernel's modes, plus the talk's ranged get-and-clear. */
enum collect {
	C_BITMAP,	/* GET_DIRTY_LOG (get-and-clear) */
	C_MANUAL,	/* GET then CLEAR in random 64-aligned chunks */
	C_RANGE,	/* get-and-clear over random 64-aligned ranges */
	C_RING,		/* harvest every ring, reset */
	C_DBIT,		/* GET_DIRTY_LOG with D-bit logging */
	C_DBIT_RING,	/* rings fed by D-bit logging */
	C_INITSET,	/* manual + INITIALLY_SET */
};

struct dlt {
	struct vm *vm;
	struct mem_backing b;
	uint64_t npages;
	enum collect collect;
	/* vCPU <-> host sync point (GUEST_SYNC): vCPUs leave guest mode and wait */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int sync_req;		/* atomic: host wants a sync point */
	int arrived;		/* under lock */
	uint64_t gen;		/* under lock: bumped to release the vCPUs */
	uint32_t round;		/* under lock */
	bool stop;		/* under lock */
	uint64_t *dirty;	/* pages reported this round */
	uint64_t *pending;	/* pages that must be reported next round */
	uint64_t violations;
	char first_err[200];
	uint64_t rng;
};

struct vcpu_arg {
	struct dlt *t;
	int id;
};

static void *vcpu_thread(void *arg)
{
	struct vcpu_arg *va = arg;
	struct dlt *t = va->t;
	struct vcpu *vcpu = vm_get_vcpu(t->vm, va->id);
	uint64_t rng = 0x1234567ull * (va->id + 1), seq = 0, gen;
	uint32_t round;

	pthread_mutex_lock(&t->lock);
	round = t->round;
	gen = t->gen;
	pthread_mutex_unlock(&t->lock);
	vcpu_load(vcpu);
	for (;;) {
		uint64_t page;

		if (__atomic_load_n(&t->sync_req, __ATOMIC_ACQUIRE)) {
			/* Exit to the host (PML drains on the way out), wait for the next round. */
			vcpu_put(vcpu);
			pthread_mutex_lock(&t->lock);
			t->arrived++;
			pthread_cond_broadcast(&t->cond);
			while (t->gen == gen && !t->stop)
				pthread_cond_wait(&t->cond, &t->lock);
			gen = t->gen;
			round = t->round;
			if (t->stop) {
				pthread_mutex_unlock(&t->lock);
				return NULL;
			}
			pthread_mutex_unlock(&t->lock);
			vcpu_load(vcpu);
		}
		/* vCPU 0 random pages, vCPU 1 a sequential sweep (as dirty_log_test's mix). */
		if (va->id % 2 == 0) {
			page = test_rand(&rng) % t->npages;
		} else {
			page = seq++;
			if (seq == t->npages)
				seq = 0;
		}
		if (vcpu_write_u64(vcpu, page * PAGE_SIZE, stamp_make(va->id, round, page)))
			abort();
	}
}

static void violation(struct dlt *t, const char *what, uint64_t page, uint64_t v, uint32_t round);

/* Inside a run: never leave with vCPU threads alive; a failed call counts as a violation. */
#define CHECK(_t_, _cond_)                                                                         \
	do {                                                                                       \
		if (!(_cond_))                                                                     \
			violation(_t_, "host call failed: " #_cond_, 0, 0, 0);                     \
	} while (0)

static void set_bit_u64(uint64_t *bm, uint64_t i)
{
	bm[i / 64] |= 1ull << (i % 64);
}

static bool test_bit_u64(const uint64_t *bm, uint64_t i)
{
	return (bm[i / 64] >> (i % 64)) & 1;
}

static void ring_collect_fn(void *opaque, uint32_t slot, uint64_t offset)
{
	struct dlt *t = opaque;

	if (slot != SLOT_ID || offset >= t->npages) {
		t->violations++;
		return;
	}
	set_bit_u64(t->dirty, offset);
}

static void collect_rings(struct dlt *t)
{
	int i, n = 0, reset;

	for (i = 0; i < NR_VCPUS; i++) {
		int r = dirty_ring_harvest(t->vm, i, ring_collect_fn, t);

		CHECK(t, r >= 0);
		n += r;
	}
	reset = dirty_ring_reset(t->vm);
	/* The selftest's assertion: everything harvested is reset. */
	CHECK(t, reset == n);
}

/* 64-aligned chunk length, up to the slot's end. */
static uint64_t chunk_len(struct dlt *t, uint64_t first)
{
	uint64_t n = 64 * (1 + test_rand(&t->rng) % 8);

	return MIN(n, t->npages - first);
}

static void collect(struct dlt *t)
{
	uint64_t nw = DIV_ROUND_UP(t->npages, 64), first, w;
	uint64_t bm[DIV_ROUND_UP(t->npages, 64)];

	switch (t->collect) {
	case C_RING:
	case C_DBIT_RING:
		collect_rings(t);
		return;
	case C_RANGE:
		for (first = 0; first < t->npages;) {
			uint64_t n = chunk_len(t, first);

			CHECK(t, !dirty_log_get_and_clear_range(t->vm, SLOT_ID, first, n, bm));
			for (w = 0; w < DIV_ROUND_UP(n, 64); w++)
				t->dirty[first / 64 + w] |= bm[w];
			first += n;
		}
		return;
	case C_MANUAL:
	case C_INITSET:
		CHECK(t, !dirty_log_get(t->vm, SLOT_ID, bm));
		for (first = 0; first < t->npages;) {
			uint64_t n = chunk_len(t, first);

			CHECK(t, !dirty_log_clear(t->vm, SLOT_ID, first, n, &bm[first / 64]));
			first += n;
		}
		break;
	default:
		CHECK(t, !dirty_log_get(t->vm, SLOT_ID, bm));
		break;
	}
	for (w = 0; w < nw; w++)
		t->dirty[w] |= bm[w];
}

static void violation(struct dlt *t, const char *what, uint64_t page, uint64_t v, uint32_t round)
{
	if (!t->violations++)
		snprintf(t->first_err, sizeof(t->first_err),
			 "round %u page %llu value round %u vcpu %u: %s", round,
			 (unsigned long long)page, stamp_round(v), stamp_vcpu(v), what);
}

/* With every vCPU stopped at the sync point: the selftest's rules. */
static void verify(struct dlt *t, uint32_t r)
{
	uint64_t p, nw = DIV_ROUND_UP(t->npages, 64);
	uint64_t next[nw];

	memset(next, 0, sizeof(next));
	for (p = 0; p < t->npages; p++) {
		uint64_t v = __atomic_load_n((uint64_t *)(t->b.hva + p * PAGE_SIZE), __ATOMIC_RELAXED);
		uint32_t vr = v ? stamp_round(v) : 0;
		bool reported = test_bit_u64(t->dirty, p);

		if (v && (stamp_page(v) != p || stamp_vcpu(v) >= NR_VCPUS))
			violation(t, "corrupt stamp", p, v, r);
		if (vr > r)
			violation(t, "stamp from the future", p, v, r);
		if (test_bit_u64(t->pending, p) && !reported)
			violation(t, "write after the last harvest never reported (lost)", p, v, r);
		if (reported) {
			if (vr + 1 < r && !(t->collect == C_INITSET && r == 1))
				violation(t, "reported page holds an old stamp", p, v, r);
		} else if (vr == r) {
			set_bit_u64(next, p); /* written after this harvest: due next time */
		}
	}
	memcpy(t->pending, next, sizeof(next));
	memset(t->dirty, 0, nw * sizeof(uint64_t));
}

static void sync_vcpus(struct dlt *t)
{
	__atomic_store_n(&t->sync_req, 1, __ATOMIC_RELEASE);
	pthread_mutex_lock(&t->lock);
	while (t->arrived < NR_VCPUS) {
		struct timespec ts;

		if (t->collect == C_RING || t->collect == C_DBIT_RING) {
			/* A vCPU stopped on a full ring needs a reset to reach the sync point. */
			pthread_mutex_unlock(&t->lock);
			collect_rings(t);
			pthread_mutex_lock(&t->lock);
			continue;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 200000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&t->cond, &t->lock, &ts);
	}
	pthread_mutex_unlock(&t->lock);
}

static void release_vcpus(struct dlt *t, uint32_t round, bool stop)
{
	pthread_mutex_lock(&t->lock);
	__atomic_store_n(&t->sync_req, 0, __ATOMIC_RELEASE);
	t->arrived = 0;
	t->round = round;
	t->stop = stop;
	t->gen++;
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
}

struct dlt_params {
	enum collect collect;
	enum dirty_log_algo algo;
	enum backing_type backing;
	enum dirty_log_lock lock;
	bool eager_split;
	int frames;		/* slot size in 2 MiB frames (+3 pages); 0 = 2 */
	unsigned int faults;	/* MMU_DEBUG_* injected */
	int rounds;
};

/* Run the selftest loop; returns the number of rule violations. */
static uint64_t dlt_run(const struct dlt_params *pp)
{
	struct dlt t = { .collect = pp->collect, .rng = 42 };
	struct vm_memory_region mr = { .slot = SLOT_ID };
	struct dirty_log_config dcfg;
	struct vcpu_arg va[NR_VCPUS];
	pthread_t th[NR_VCPUS];
	struct vm_config cfg;
	struct vm_stats st;
	uint64_t bytes;
	int i, r;

	vm_config_default(&cfg);
	cfg.nr_vcpus = NR_VCPUS;
	cfg.lock_mode = pp->lock == DIRTY_LOCK_SHARED ? MMU_LOCK_SHARED : MMU_LOCK_EXCLUSIVE;
	assert_int_equal(vm_create(&cfg, &t.vm), 0);
	/* 2 MiB frames plus 3 pages: the slot does not end on a bitmap word. */
	bytes = (pp->frames ? pp->frames : 2) * SZ_2M + 3 * PAGE_SIZE;
	assert_int_equal(backing_alloc(&t.b, pp->backing, bytes), 0);
	vm_register_backing(t.vm, &t.b);
	t.npages = bytes / PAGE_SIZE;
	t.dirty = calloc(DIV_ROUND_UP(t.npages, 64), 8);
	t.pending = calloc(DIV_ROUND_UP(t.npages, 64), 8);
	pthread_mutex_init(&t.lock, NULL);
	pthread_cond_init(&t.cond, NULL);

	dirty_log_config_default(&dcfg);
	dcfg.algo = pp->algo;
	dcfg.lock = pp->lock;
	dcfg.chunk_pages = 128;
	dcfg.eager_split = pp->eager_split;
	dcfg.ring_entries = 1024;
	switch (pp->collect) {
	case C_MANUAL:
		dcfg.mode = DIRTY_MODE_MANUAL;
		break;
	case C_INITSET:
		dcfg.mode = DIRTY_MODE_MANUAL;
		dcfg.initially_set = true;
		break;
	case C_RING:
		dcfg.mode = DIRTY_MODE_RING;
		break;
	case C_DBIT:
		dcfg.dbit = true;
		break;
	case C_DBIT_RING:
		dcfg.mode = DIRTY_MODE_RING;
		dcfg.dbit = true;
		break;
	default:
		break;
	}
	assert_int_equal(vm_configure_dirty_log(t.vm, &dcfg), 0);

	mr.memory_size = bytes;
	mr.userspace_addr = t.b.hva;
	assert_int_equal(vm_set_user_memory_region(t.vm, &mr), 0);
	if (pp->backing == BACKING_THP)
		memset((void *)t.b.hva, 0, t.b.size); /* host THPs: faults map 2 MiB */
	/* Huge mappings to be broken by logging (prefault does not touch memory). */
	assert_true(vm_prefault_memory(t.vm, 0, 0, bytes, PG_LEVEL_2M) > 0);
	vm_get_stats(t.vm, &st);
	assert_int_equal(st.leaf_sptes[PG_LEVEL_2M - 1], bytes / SZ_2M);

	mr.flags = KVM_MEM_LOG_DIRTY_PAGES;
	assert_int_equal(vm_set_user_memory_region(t.vm, &mr), 0);
	mmu_debug_set_faults(t.vm, pp->faults);

	t.round = 1;
	for (i = 0; i < NR_VCPUS; i++) {
		va[i].t = &t;
		va[i].id = i;
		pthread_create(&th[i], NULL, vcpu_thread, &va[i]);
	}
	for (r = 1; r <= pp->rounds; r++) {
		struct timespec ts = { 0, (long)(300000 + test_rand(&t.rng) % 1200000) };

		nanosleep(&ts, NULL);
		collect(&t);
		sync_vcpus(&t);
		verify(&t, r);
		release_vcpus(&t, r + 1, r == pp->rounds);
	}
	for (i = 0; i < NR_VCPUS; i++)
		pthread_join(th[i], NULL);
	if (t.violations && getenv("DLT_VERBOSE"))
		print_message("# %s (%llu violations)\n", t.first_err,
			      (unsigned long long)t.violations);

	if (!pp->faults) {
		/*
		 * Logging broke the huge mappings the vCPUs wrote through; a frame
		 * no vCPU wrote after protection may stay huge, but never writable.
		 */
		uint64_t g;

		vm_get_stats(t.vm, &st);
		assert_true(st.leaf_sptes[PG_LEVEL_2M - 1] < bytes / SZ_2M);
		for (g = 0; g < bytes / PAGE_SIZE; g += 512) {
			int level = 0;
			uint64_t *sptep = mmu_lookup_leaf(t.vm, 0, g, &level);

			if (sptep && level == PG_LEVEL_2M)
				assert_false(is_writable_pte(spte_read(sptep)));
		}
	}
	mr.flags = 0;
	assert_int_equal(vm_set_user_memory_region(t.vm, &mr), 0);
	vm_destroy(t.vm);
	backing_free(&t.b);
	free(t.dirty);
	free(t.pending);
	pthread_mutex_destroy(&t.lock);
	pthread_cond_destroy(&t.cond);
	return t.violations;
}

static int rounds(int n)
{
	return MAX(4, n / test_scale());
}

static void run_all_algos(enum collect c, enum backing_type backing, enum dirty_log_lock lock)
{
	int a;

	for (a = 0; a < DIRTY_ALGO_NR; a++) {
		struct dlt_params p = { .collect = c, .algo = a, .backing = backing, .lock = lock,
					.rounds = rounds(16) };

		if (lock == DIRTY_LOCK_SHARED && a == DIRTY_ALGO_WALK)
			continue; /* the walk always takes the lock for write */
		assert_int_equal(dlt_run(&p), 0);
	}
}

#define MODE_TESTS(_name_, _c_)                                                                    \
	static void test_##_name_##_4k(void **state)                                               \
	{                                                                                          \
		run_all_algos(_c_, BACKING_ANON_4K, DIRTY_LOCK_WHOLE);                             \
	}                                                                                          \
	static void test_##_name_##_thp(void **state)                                              \
	{                                                                                          \
		struct dlt_params p = { .collect = _c_, .algo = DIRTY_ALGO_RMAP,                   \
					.backing = BACKING_THP, .rounds = rounds(16) };            \
                                                                                                   \
		if (test_scale() > 1) /* sanitizers: one algorithm on THP */                      \
			assert_int_equal(dlt_run(&p), 0);                                          \
		else                                                                               \
			run_all_algos(_c_, BACKING_THP, DIRTY_LOCK_WHOLE);                         \
	}

MODE_TESTS(bitmap, C_BITMAP)
MODE_TESTS(manual, C_MANUAL)
MODE_TESTS(range, C_RANGE)
MODE_TESTS(ring, C_RING)
MODE_TESTS(dbit, C_DBIT)
MODE_TESTS(dbit_ring, C_DBIT_RING)
MODE_TESTS(initially_set, C_INITSET)

/* Fine-grained locking: shared (faults and harvests as readers) and chunked holds. */
static void test_shared_lock(void **state)
{
	run_all_algos(C_BITMAP, BACKING_THP, DIRTY_LOCK_SHARED);
	run_all_algos(C_RANGE, BACKING_ANON_4K, DIRTY_LOCK_SHARED);
	run_all_algos(C_RING, BACKING_ANON_4K, DIRTY_LOCK_SHARED);
}

static void test_chunked_lock(void **state)
{
	run_all_algos(C_BITMAP, BACKING_ANON_4K, DIRTY_LOCK_CHUNKED);
	run_all_algos(C_MANUAL, BACKING_THP, DIRTY_LOCK_CHUNKED);
}

static void test_eager_split(void **state)
{
	int a;

	for (a = 0; a < DIRTY_ALGO_NR; a++) {
		struct dlt_params p = { .collect = C_BITMAP, .algo = a, .backing = BACKING_THP,
					.eager_split = true, .rounds = rounds(8) };

		assert_int_equal(dlt_run(&p), 0);
		p.collect = C_INITSET;
		assert_int_equal(dlt_run(&p), 0);
	}
}

/* The test can fail: a harvest that skips the TLB flush loses writes. */
static void test_catches_skipped_flush(void **state)
{
	struct dlt_params p = { .collect = C_BITMAP, .algo = DIRTY_ALGO_RMAP,
				.backing = BACKING_ANON_4K, .faults = MMU_DEBUG_SKIP_REMOTE_FLUSH,
				.frames = 1, .rounds = 12 };

	assert_true(dlt_run(&p) > 0);
	p.collect = C_DBIT;
	assert_true(dlt_run(&p) > 0);
}

/* ... and so does one that leaves one word of dirty pages writable, in every mode and algorithm. */
static void test_catches_skipped_reprotect(void **state)
{
	static const enum collect modes[] = { C_BITMAP, C_MANUAL, C_RANGE, C_RING, C_DBIT };
	size_t m;
	int a;

	for (m = 0; m < ARRAY_SIZE(modes); m++) {
		for (a = 0; a < DIRTY_ALGO_NR; a++) {
			struct dlt_params p = { .collect = modes[m], .algo = a,
						.backing = BACKING_ANON_4K,
						.faults = MMU_DEBUG_SKIP_REPROTECT_WORD,
						.frames = 1, .rounds = 8 };

			if (getenv("DLT_VERBOSE"))
				print_message("# mode %d algo %d\n", (int)modes[m], a);
			assert_true(dlt_run(&p) > 0);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bitmap_4k),
		cmocka_unit_test(test_bitmap_thp),
		cmocka_unit_test(test_manual_4k),
		cmocka_unit_test(test_manual_thp),
		cmocka_unit_test(test_range_4k),
		cmocka_unit_test(test_range_thp),
		cmocka_unit_test(test_ring_4k),
		cmocka_unit_test(test_ring_thp),
		cmocka_unit_test(test_dbit_4k),
		cmocka_unit_test(test_dbit_thp),
		cmocka_unit_test(test_dbit_ring_4k),
		cmocka_unit_test(test_dbit_ring_thp),
		cmocka_unit_test(test_initially_set_4k),
		cmocka_unit_test(test_initially_set_thp),
		cmocka_unit_test(test_shared_lock),
		cmocka_unit_test(test_chunked_lock),
		cmocka_unit_test(test_eager_split),
		cmocka_unit_test(test_catches_skipped_flush),
		cmocka_unit_test(test_catches_skipped_reprotect),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
