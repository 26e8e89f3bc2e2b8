/* test_conc_invalidate.c: vCPUs racing discards and backing replacements never see stale pages; racing faults retry. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "mmu/mmu_internal.h"
#include "rmapvm/invalidate.h"
#include "rmapvm/util.h"

/*
 * Every page's first word is a stamp written only by the host when it gives
 * the page new contents: (gen << 24) | (page + 1); a discarded page reads 0.
 * After host_mem_replace()/host_mem_discard() returns (invalidate_range_end
 * returned), the host publishes (gen, kind) for each page of the range. A
 * vCPU loads that record first, then reads the stamp: it must come from that
 * operation or a later one. A translation that survived the invalidation
 * (missed zap, missed flush, fault installed a page resolved too early)
 * reaches the old pool page, whose stamp is older or belongs to another page.
 *
 * RMAPVM_INVALIDATE_SKIP_SEQ_CHECK=1 (MMU_DEBUG_SKIP_SEQ_CHECK) or
 * RMAPVM_INVALIDATE_SKIP_FLUSH=1 (MMU_DEBUG_SKIP_REMOTE_FLUSH) in the
 * environment break the MMU on purpose: the retry and stress tests then
 * fail, which shows they can.
 */

#define STAMP(gen, page) (((uint64_t)(gen) << 24) | ((page) + 1))
#define STAMP_PAGE(s)	 (((s) & ((1u << 24) - 1)) - 1)
#define STAMP_GEN(s)	 ((s) >> 24)
#define KIND_REPLACE	 1u
#define KIND_DISCARD	 0u

static unsigned int env_debug_faults(void)
{
	const char *seq = getenv("RMAPVM_INVALIDATE_SKIP_SEQ_CHECK");
	const char *flush = getenv("RMAPVM_INVALIDATE_SKIP_FLUSH");

	return (seq && *seq == '1' ? MMU_DEBUG_SKIP_SEQ_CHECK : 0) |
	       (flush && *flush == '1' ? MMU_DEBUG_SKIP_REMOTE_FLUSH : 0);
}

struct fill_arg {
	hva_t base;
	uint64_t gen;
};

static void fill_stamps(void *opaque, hva_t hva, void *page, size_t len)
{
	struct fill_arg *f = opaque;
	size_t off;

	for (off = 0; off < len; off += PAGE_SIZE)
		__atomic_store_n((uint64_t *)((uint8_t *)page + off),
				 STAMP(f->gen, (hva + off - f->base) >> PAGE_SHIFT), __ATOMIC_RELAXED);
}

static struct vm *new_vm(int nr_vcpus, enum mmu_lock_mode mode)
{
	struct vm_config cfg;
	struct vm *vm;

	vm_config_default(&cfg);
	cfg.nr_vcpus = nr_vcpus;
	cfg.lock_mode = mode;
	assert_int_equal(vm_create(&cfg, &vm), 0);
	return vm;
}

static void add_slot(struct vm *vm, const struct mem_backing *b)
{
	struct vm_memory_region r = { .memory_size = b->size, .userspace_addr = b->hva };

	assert_int_equal(vm_register_backing(vm, b), 0);
	assert_int_equal(vm_set_user_memory_region(vm, &r), 0);
}

/* ---- the stress test ---- */

#define NR_VCPUS 2

struct stress {
	struct vm *vm;
	struct host_mem *hm;
	hva_t base;
	uint64_t npages;
	uint64_t *published; /* per page: gen << 1 | kind, release/acquire */
	uint64_t *discard_started; /* per page: gen of the last discard begun */
	uint64_t max_gen;
	int stop;
	uint64_t errors;
	uint64_t reads;
	char first_error[160];
};

struct vcpu_arg {
	struct stress *s;
	int id;
};

static void report(struct stress *s, const char *msg)
{
	if (__atomic_fetch_add(&s->errors, 1, __ATOMIC_RELAXED) == 0)
		snprintf(s->first_error, sizeof(s->first_error), "%s", msg);
}

static void *stress_vcpu(void *arg)
{
	struct vcpu_arg *a = arg;
	struct stress *s = a->s;
	struct vcpu *vcpu = vm_get_vcpu(s->vm, a->id);
	uint64_t rng = 0x9e3779b97f4a7c15ull * (a->id + 1), reads = 0;
	char msg[160];

	vcpu_load(vcpu);
	while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
		uint64_t page = test_rand(&rng) % s->npages, rec, stamp, gen;
		gpa_t gpa = page << PAGE_SHIFT;
		bool ok;

		if (test_rand(&rng) % 4 == 0) {
			/* Writes go to this vCPU's own word: they exercise W faults only. */
			if (vcpu_write_u64(vcpu, gpa + 8 * (a->id + 1), rng))
				report(s, "write failed");
			continue;
		}
		rec = __atomic_load_n(&s->published[page], __ATOMIC_ACQUIRE);
		if (vcpu_read_u64(vcpu, gpa, &stamp)) {
			report(s, "read failed");
			continue;
		}
		reads++;
		gen = rec >> 1;
		if (!stamp)
			/* Zeros: this discard, or one that began after the record was read. */
			ok = (rec & 1) == KIND_DISCARD ||
			     __atomic_load_n(&s->discard_started[page], __ATOMIC_ACQUIRE) > gen;
		else if ((rec & 1) == KIND_REPLACE)
			ok = STAMP_PAGE(stamp) == page && STAMP_GEN(stamp) >= gen;
		else
			ok = STAMP_PAGE(stamp) == page && STAMP_GEN(stamp) > gen;
		if (ok && stamp && STAMP_GEN(stamp) > __atomic_load_n(&s->max_gen, __ATOMIC_ACQUIRE))
			ok = false;
		if (!ok) {
			snprintf(msg, sizeof(msg),
				 "vcpu%d page %llu: read stamp gen %llu page %lld, published %s gen %llu",
				 a->id, (unsigned long long)page, (unsigned long long)STAMP_GEN(stamp),
				 stamp ? (long long)STAMP_PAGE(stamp) : -1LL,
				 (rec & 1) == KIND_REPLACE ? "replace" : "discard",
				 (unsigned long long)gen);
			report(s, msg);
		}
	}
	vcpu_put(vcpu);
	__atomic_fetch_add(&s->reads, reads, __ATOMIC_RELAXED);
	return NULL;
}

static void publish(struct stress *s, hva_t start, hva_t end, uint64_t gen, unsigned int kind)
{
	uint64_t p;

	for (p = (ALIGN_DOWN(start, PAGE_SIZE) - s->base) >> PAGE_SHIFT;
	     p < (ALIGN_UP(end, PAGE_SIZE) - s->base) >> PAGE_SHIFT; p++)
		__atomic_store_n(&s->published[p], gen << 1 | kind, __ATOMIC_RELEASE);
}

static void run_stress(enum mmu_lock_mode mode, enum unmap_variant variant)
{
	struct stress s = { 0 };
	struct vcpu_arg args[NR_VCPUS];
	pthread_t th[NR_VCPUS];
	const struct mem_backing *b;
	uint64_t rng = 7, gen = 1, deadline, rounds = 0, ops[4] = { 0 };
	struct fill_arg f;
	struct vm_stats st;
	int i;

	s.vm = new_vm(NR_VCPUS, mode);
	mmu_debug_set_faults(s.vm, env_debug_faults());
	assert_int_equal(invalidate_set_variant(s.vm, variant), 0);
	assert_int_equal(host_mem_create(&s.hm, 4 * SZ_2M, 16 * SZ_2M, true), 0);
	b = host_mem_backing(s.hm);
	s.base = b->hva;
	s.npages = b->size >> PAGE_SHIFT;
	s.published = calloc(s.npages, sizeof(uint64_t));
	s.discard_started = calloc(s.npages, sizeof(uint64_t));
	assert_non_null(s.published);
	assert_non_null(s.discard_started);
	add_slot(s.vm, b);
	f.base = s.base;
	f.gen = gen;
	s.max_gen = gen;
	assert_int_equal(host_mem_replace(s.vm, s.base, b->size, HOST_MEM_HUGE, fill_stamps, &f), 0);
	publish(&s, s.base, s.base + b->size, gen, KIND_REPLACE);

	for (i = 0; i < NR_VCPUS; i++) {
		args[i].s = &s;
		args[i].id = i;
		assert_int_equal(pthread_create(&th[i], NULL, stress_vcpu, &args[i]), 0);
	}
	deadline = now_ns() + 1500000000ull;
	while (now_ns() < deadline || rounds < 50) {
		unsigned int op = test_rand(&rng) % 4;
		uint64_t first = test_rand(&rng) % s.npages;
		hva_t start, end;
		uint64_t p;
		int r;

		gen++;
		f.gen = gen;
		__atomic_store_n(&s.max_gen, gen, __ATOMIC_RELEASE);
		if (op == 0 || op == 3) {
			/* Byte range with partial pages at both ends. */
			start = s.base + (first << PAGE_SHIFT) + test_rand(&rng) % PAGE_SIZE;
			end = start + 1 + test_rand(&rng) % (300 * PAGE_SIZE);
			end = MIN(end, s.base + b->size);
		} else {
			start = s.base + ALIGN_DOWN(first << PAGE_SHIFT, SZ_2M);
			end = start + SZ_2M;
		}
		switch (op) {
		case 0: /* new small pages with new stamps */
		case 1: /* a new huge page with new stamps (collapse) */
			r = host_mem_replace(s.vm, start, end - start, op ? HOST_MEM_HUGE : 0,
					     fill_stamps, &f);
			if (!r)
				publish(&s, start, end, gen, KIND_REPLACE);
			break;
		case 2: /* split, contents kept (nothing new to publish) */
			r = host_mem_replace(s.vm, start, end - start, HOST_MEM_SMALL | HOST_MEM_COPY,
					     NULL, NULL);
			break;
		default:
			for (p = (ALIGN_DOWN(start, PAGE_SIZE) - s.base) >> PAGE_SHIFT;
			     p < (ALIGN_UP(end, PAGE_SIZE) - s.base) >> PAGE_SHIFT; p++)
				__atomic_store_n(&s.discard_started[p], gen, __ATOMIC_RELEASE);
			r = host_mem_discard(s.vm, start, end - start);
			if (!r)
				publish(&s, start, end, gen, KIND_DISCARD);
			break;
		}
		/* The pool may be out of free huge blocks: the host then falls back or fails. */
		assert_true(r == 0 || r == -ENOMEM);
		ops[op] += !r;
		rounds++;
		/* Let faults through: back-to-back invalidations move the sequence constantly. */
		usleep(200 + test_rand(&rng) % 400);
	}
	__atomic_store_n(&s.stop, 1, __ATOMIC_RELEASE);
	for (i = 0; i < NR_VCPUS; i++)
		pthread_join(th[i], NULL);

	vm_get_stats(s.vm, &st);
	printf("# %s/%s: %llu host ops (%llu small, %llu huge, %llu split, %llu discard), "
	       "%llu checked reads, %llu faults, %llu retries, %llu errors\n",
	       mode == MMU_LOCK_SHARED ? "shared" : "exclusive", unmap_variant_name(variant),
	       (unsigned long long)rounds, (unsigned long long)ops[0], (unsigned long long)ops[1],
	       (unsigned long long)ops[2], (unsigned long long)ops[3], (unsigned long long)s.reads,
	       (unsigned long long)st.faults_slow, (unsigned long long)st.fault_retries,
	       (unsigned long long)s.errors);
	if (s.errors)
		fail_msg("stale contents: %s", s.first_error);
	assert_true(s.reads > 100);
	assert_int_equal(s.vm->mmu_invalidate_in_progress, 0);
	assert_int_equal(s.vm->mn_active_invalidate_count, 0);
	vm_destroy(s.vm);
	host_mem_destroy(s.hm);
	free(s.published);
	free(s.discard_started);
}

static void test_stress_exclusive(void **state)
{
	run_stress(MMU_LOCK_EXCLUSIVE, UNMAP_LEVEL_RANGE);
	run_stress(MMU_LOCK_EXCLUSIVE, UNMAP_PER_PAGE);
}

static void test_stress_shared(void **state)
{
	run_stress(MMU_LOCK_SHARED, UNMAP_TDP);
	run_stress(MMU_LOCK_SHARED, UNMAP_SLOT_RANGE);
}

/* ---- deterministic races: a fault against one invalidation ---- */

struct race {
	struct vm *vm;
	struct host_mem *hm;
	hva_t base;
	uint64_t page;
	uint64_t r1, r2;
	int done1, go, done2;
	/* resolve hook handshake */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int resolved, resume;
};

static void *race_vcpu(void *arg)
{
	struct race *r = arg;
	struct vcpu *vcpu = vm_get_vcpu(r->vm, 0);

	/* No cmocka asserts off the main thread: a failed read leaves an impossible stamp. */
	vcpu_load(vcpu);
	if (vcpu_read_u64(vcpu, r->page << PAGE_SHIFT, &r->r1))
		r->r1 = ~0ull;
	__atomic_store_n(&r->done1, 1, __ATOMIC_RELEASE);
	while (!__atomic_load_n(&r->go, __ATOMIC_ACQUIRE))
		usleep(100);
	if (vcpu_read_u64(vcpu, r->page << PAGE_SHIFT, &r->r2))
		r->r2 = ~0ull;
	vcpu_put(vcpu);
	return NULL;
}

static void race_setup(struct race *r, enum mmu_lock_mode mode, unsigned int debug_faults)
{
	struct fill_arg f;

	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	r->vm = new_vm(1, mode);
	mmu_debug_set_faults(r->vm, debug_faults);
	assert_int_equal(host_mem_create(&r->hm, SZ_2M, 4 * SZ_2M, false), 0);
	r->base = host_mem_backing(r->hm)->hva;
	r->page = 5;
	add_slot(r->vm, host_mem_backing(r->hm));
	f.base = r->base;
	f.gen = 1;
	assert_int_equal(host_mem_replace(r->vm, r->base, SZ_2M, 0, fill_stamps, &f), 0);
}

static void race_teardown(struct race *r)
{
	vm_destroy(r->vm);
	host_mem_destroy(r->hm);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
}

/* The host's change inside the bracket: page @r->page gets gen 2. */
static void race_host_change(struct race *r)
{
	struct fill_arg f = { .base = r->base, .gen = 2 };

	assert_int_equal(__host_mem_replace(r->hm, r->base + (r->page << PAGE_SHIFT), PAGE_SIZE, 0,
					    fill_stamps, &f), 0);
}

/*
 * In-progress range: the invalidation starts, then the vCPU faults on the
 * page while the host changes it. The fault must retry until the end, then
 * map the new page. Returns the stamp the vCPU read after the end.
 */
static uint64_t race_in_progress(enum mmu_lock_mode mode, unsigned int debug_faults,
				 uint64_t *retries)
{
	struct race r;
	hva_t h;
	pthread_t th;
	uint64_t t0;
	struct vm_stats st;

	race_setup(&r, mode, debug_faults);
	h = r.base + (r.page << PAGE_SHIFT);
	assert_int_equal(invalidate_range_start(r.vm, h, h + PAGE_SIZE), 0);
	assert_int_equal(pthread_create(&th, NULL, race_vcpu, &r), 0);
	/* Wait until the fault has been turned back at least once, or went through. */
	t0 = now_ns();
	for (;;) {
		/* Not vm_get_stats(): it walks structures that shared-lock faults change. */
		if (READ_ONCE(vm_get_vcpu(r.vm, 0)->stats.fault_retries) ||
		    __atomic_load_n(&r.done1, __ATOMIC_ACQUIRE))
			break;
		assert_true(now_ns() - t0 < 10000000000ull);
		usleep(200);
	}
	race_host_change(&r);
	assert_int_equal(invalidate_range_end(r.vm, h, h + PAGE_SIZE), 0);
	__atomic_store_n(&r.go, 1, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
	vm_get_stats(r.vm, &st);
	*retries = st.fault_retries;
	race_teardown(&r);
	return r.r2;
}

/* Resolve hook: the fault has its (old) page; hold it until the host is done. */
static void hold_fault(void *opaque, hva_t host)
{
	struct race *r = opaque;

	pthread_mutex_lock(&r->lock);
	r->resolved = 1;
	pthread_cond_broadcast(&r->cond);
	while (!r->resume)
		pthread_cond_wait(&r->cond, &r->lock);
	pthread_mutex_unlock(&r->lock);
}

/*
 * Sequence: the fault resolves the old page before the invalidation starts
 * and takes mmu_lock after it ended. Only the sequence number tells.
 */
static uint64_t race_sequence(enum mmu_lock_mode mode, unsigned int debug_faults,
			      uint64_t *retries)
{
	struct race r;
	hva_t h;
	pthread_t th;
	struct vm_stats st;

	race_setup(&r, mode, debug_faults);
	h = r.base + (r.page << PAGE_SHIFT);
	host_mem_set_resolve_hook(r.hm, hold_fault, &r);
	assert_int_equal(pthread_create(&th, NULL, race_vcpu, &r), 0);
	pthread_mutex_lock(&r.lock);
	while (!r.resolved)
		pthread_cond_wait(&r.cond, &r.lock);
	pthread_mutex_unlock(&r.lock);

	assert_int_equal(invalidate_range_start(r.vm, h, h + PAGE_SIZE), 0);
	race_host_change(&r);
	assert_int_equal(invalidate_range_end(r.vm, h, h + PAGE_SIZE), 0);

	pthread_mutex_lock(&r.lock);
	r.resume = 1;
	pthread_cond_broadcast(&r.cond);
	pthread_mutex_unlock(&r.lock);
	while (!__atomic_load_n(&r.done1, __ATOMIC_ACQUIRE))
		usleep(100);
	__atomic_store_n(&r.go, 1, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
	vm_get_stats(r.vm, &st);
	*retries = st.fault_retries;
	race_teardown(&r);
	return r.r2;
}

static void test_fault_racing_invalidation_retries(void **state)
{
	unsigned int dbg = env_debug_faults();
	enum mmu_lock_mode modes[] = { MMU_LOCK_EXCLUSIVE, MMU_LOCK_SHARED };
	uint64_t retries;
	unsigned int m;

	for (m = 0; m < ARRAY_SIZE(modes); m++) {
		assert_int_equal(race_in_progress(modes[m], dbg, &retries), STAMP(2, 5));
		assert_true(retries >= 1);
		assert_int_equal(race_sequence(modes[m], dbg, &retries), STAMP(2, 5));
		assert_true(retries >= 1);
	}
}

/* Negative control: without the sequence check, the same races leave a stale page mapped. */
static void test_without_seq_check_goes_stale(void **state)
{
	enum mmu_lock_mode modes[] = { MMU_LOCK_EXCLUSIVE, MMU_LOCK_SHARED };
	uint64_t retries;
	unsigned int m;

	for (m = 0; m < ARRAY_SIZE(modes); m++) {
		assert_int_equal(race_in_progress(modes[m], MMU_DEBUG_SKIP_SEQ_CHECK, &retries),
				 STAMP(1, 5));
		assert_int_equal(retries, 0);
		assert_int_equal(race_sequence(modes[m], MMU_DEBUG_SKIP_SEQ_CHECK, &retries),
				 STAMP(1, 5));
		assert_int_equal(retries, 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fault_racing_invalidation_retries),
		cmocka_unit_test(test_without_seq_check_goes_stale),
		cmocka_unit_test(test_stress_exclusive),
		cmocka_unit_test(test_stress_shared),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
