/* test_conc_tlb.c: a remote TLB flush returns only after every vCPU dropped its translations. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "harness.h"
#include "mmu/mmu_internal.h"

#define GPA 0x200000ull

struct tlb_test {
	struct vm *vm;
	uint8_t *mem[2];	/* two host pages: old and new backing of GPA */
	uint32_t epoch;		/* reads starting at epoch e must see value e (e even) */
	uint64_t stale;		/* reads that saw an older value */
	uint64_t reads;
	bool stop;
};

static void *reader(void *arg)
{
	struct tlb_test *t = arg;
	struct vcpu *vcpu = vm_get_vcpu(t->vm, 0);

	vcpu_load(vcpu);
	while (!__atomic_load_n(&t->stop, __ATOMIC_ACQUIRE)) {
		uint32_t e = __atomic_load_n(&t->epoch, __ATOMIC_ACQUIRE);
		uint64_t v;

		if (vcpu_read_u64(vcpu, GPA, &v))
			continue; /* between delete and create: an MMIO exit */
		if (!(e & 1) && v < e)
			__atomic_fetch_add(&t->stale, 1, __ATOMIC_RELAXED);
		__atomic_fetch_add(&t->reads, 1, __ATOMIC_RELAXED);
	}
	vcpu_put(vcpu);
	return NULL;
}

static void set_slot(struct vm *vm, uint8_t *hva, uint64_t size)
{
	struct vm_memory_region r = { 0, 0, GPA, size, (hva_t)hva };

	assert_int_equal(vm_set_user_memory_region(vm, &r), 0);
}

static uint64_t run(unsigned int faults, int rounds)
{
	struct vm_config cfg;
	struct tlb_test t = { 0 };
	pthread_t th;
	int i;

	vm_config_default(&cfg);
	assert_int_equal(vm_create(&cfg, &t.vm), 0);
	mmu_debug_set_faults(t.vm, faults);
	for (i = 0; i < 2; i++) {
		t.mem[i] = mmap(NULL, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				-1, 0);
		assert_true(t.mem[i] != MAP_FAILED);
	}
	t.epoch = 2;
	*(uint64_t *)t.mem[0] = 2;
	set_slot(t.vm, t.mem[0], PAGE_SIZE);
	pthread_create(&th, NULL, reader, &t);
	for (i = 1; i <= rounds; i++) {
		uint64_t seen = __atomic_load_n(&t.reads, __ATOMIC_RELAXED);
		uint8_t *next = t.mem[i % 2];

		/* Let the vCPU cache the current translation. */
		while (__atomic_load_n(&t.reads, __ATOMIC_RELAXED) < seen + 100)
			sched_yield();
		__atomic_store_n(&t.epoch, 2 * i + 1, __ATOMIC_RELEASE);
		__atomic_store_n((uint64_t *)next, 2 * i + 2, __ATOMIC_RELAXED);
		/* Delete (zap + flush) and re-create the slot on the other host page. */
		set_slot(t.vm, NULL, 0);
		set_slot(t.vm, next, PAGE_SIZE);
		__atomic_store_n(&t.epoch, 2 * i + 2, __ATOMIC_RELEASE);
	}
	{
		uint64_t seen = __atomic_load_n(&t.reads, __ATOMIC_RELAXED);

		while (__atomic_load_n(&t.reads, __ATOMIC_RELAXED) < seen + 1000)
			sched_yield();
	}
	__atomic_store_n(&t.stop, true, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
	vm_destroy(t.vm);
	munmap(t.mem[0], PAGE_SIZE);
	munmap(t.mem[1], PAGE_SIZE);
	return t.stale;
}

static void test_remote_flush_drops_translations(void **state)
{
	assert_int_equal(run(0, 2000 / test_scale()), 0);
}

/* The same test with the flush broken must see stale reads: it can fail. */
static void test_broken_flush_is_caught(void **state)
{
	assert_true(run(MMU_DEBUG_SKIP_REMOTE_FLUSH, 20) > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_remote_flush_drops_translations),
		cmocka_unit_test(test_broken_flush_is_caught),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
