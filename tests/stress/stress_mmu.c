/* stress_mmu.c: long run of vCPUs, ranged harvests, invalidations and memslot changes, checking the dirty-log invariant. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rmapvm/backend.h"
#include "rmapvm/dirty_log.h"
#include "rmapvm/invalidate.h"
#include "rmapvm/soft_vm.h"
#include "rmapvm/util.h"

/*
 * Three vCPUs, six memslots. vCPUs 0 and 1 write stamps into slots 0-3,
 * which are dirty-logged: a harvester copies every page it is told is dirty
 * into a shadow, range by range, as a migration would, and every few rounds
 * pauses the VM, drains, and requires shadow == memory (a lost write shows
 * as a difference). vCPU 2 works in slots 4-5, where another thread
 * discards pages, changes their host page size and ages them; its reads
 * accept only zero or its own stamp for that page. Slot 5's logging is
 * toggled on and off meanwhile.
 */

struct stress {
	struct soft_vm *svm;
	struct backend *be;
	struct backend_region reg[6];
	uint8_t *shadow[4];
	double seconds;
	bool stop;		/* relaxed atomic */
	uint64_t rounds, checks, invalidations, toggles;
	int failed;
};

static void harvest_slot(struct stress *s, int i, uint64_t *bm)
{
	uint64_t pages = s->reg[i].size / PAGE_SIZE, first, p;
	uint64_t range = 64 * (1 + rand() % 8);

	for (first = 0; first < pages; first += range) {
		uint64_t cnt = MIN(range, pages - first);
		int r = s->be->ops->harvest_range(s->be, s->reg[i].slot, first, cnt, bm);

		if (r) {
			fprintf(stderr, "stress: harvest slot %d [%llu,+%llu): %s\n", i,
				(unsigned long long)first, (unsigned long long)cnt, strerror(-r));
			s->failed = 1;
			return;
		}
		for (p = 0; p < cnt; p++)
			if (bm[p / 64] & (1ull << (p % 64)))
				guest_memcpy(s->shadow[i] + (first + p) * PAGE_SIZE,
					     s->reg[i].hva + (first + p) * PAGE_SIZE, PAGE_SIZE);
	}
}

static void *harvester(void *arg)
{
	struct stress *s = arg;
	struct vm *vm = soft_vm_vm(s->svm);
	uint64_t bm[8];
	uint32_t round = 1;
	int i;

	while (!__atomic_load_n(&s->stop, __ATOMIC_RELAXED) && !s->failed) {
		enum dirty_log_algo algo = (enum dirty_log_algo)(rand() % DIRTY_ALGO_NR);
		enum dirty_log_lock lock = (enum dirty_log_lock)(rand() % DIRTY_LOCK_NR);
		bool check = round % 8 == 0;

		dirty_log_set_harvest(vm, algo, lock);
		soft_vm_set_round(s->svm, ++round);
		if (check)
			s->be->ops->pause(s->be);
		for (i = 0; i < 4; i++)
			harvest_slot(s, i, bm);
		if (check) {
			for (i = 0; i < 4 && !s->failed; i++) {
				uint64_t p;

				for (p = 0; p < s->reg[i].size / PAGE_SIZE; p++) {
					uint8_t *a = s->shadow[i] + p * PAGE_SIZE, *b = s->reg[i].hva + p * PAGE_SIZE;

					if (memcmp(a, b, PAGE_SIZE)) {
						fprintf(stderr,
							"stress: LOST WRITE: slot %d page %llu: harvested copy %#llx, "
							"memory %#llx (algo %s, lock %s, round %u)\n",
							i, (unsigned long long)p,
							(unsigned long long)*(uint64_t *)a,
							(unsigned long long)*(uint64_t *)b, dirty_log_algo_name(algo),
							dirty_log_lock_name(lock), round);
						s->failed = 1;
						break;
					}
				}
			}
			s->checks++;
			s->be->ops->resume(s->be);
		}
		s->rounds++;
	}
	return NULL;
}

static void *invalidator(void *arg)
{
	struct stress *s = arg;
	struct vm *vm = soft_vm_vm(s->svm);

	while (!__atomic_load_n(&s->stop, __ATOMIC_RELAXED) && !s->failed) {
		int i = 4 + rand() % 2;
		uint64_t pages = s->reg[i].size / PAGE_SIZE;
		uint64_t first = rand() % pages, len = 1 + rand() % MIN(pages - first, 1024);
		hva_t start = (hva_t)s->reg[i].hva + first * PAGE_SIZE;
		int r = 0;

		switch (rand() % 5) {
		case 0:
		case 1:
			r = host_mem_discard(vm, start, len * PAGE_SIZE);
			break;
		case 2:
			r = host_mem_replace(vm, start, len * PAGE_SIZE,
					     rand() % 2 ? HOST_MEM_HUGE : HOST_MEM_SMALL, NULL, NULL);
			break;
		case 3:
			invalidate_clear_flush_young(vm, start, start + len * PAGE_SIZE);
			break;
		case 4: {
			struct vm_memory_region mr = {
				.slot = s->reg[5].slot,
				.flags = s->toggles % 2 ? 0 : KVM_MEM_LOG_DIRTY_PAGES,
				.guest_phys_addr = s->reg[5].gpa,
				.memory_size = s->reg[5].size,
				.userspace_addr = (hva_t)s->reg[5].hva,
			};

			r = vm_set_user_memory_region(vm, &mr);
			s->toggles++;
			break;
		}
		}
		if (r && r != -EINVAL) {
			fprintf(stderr, "stress: host memory operation failed: %s\n", strerror(-r));
			s->failed = 1;
		}
		s->invalidations++;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct soft_vm_config cfg = { .mem_bytes = 48ull << 20, .vcpus = 3, .slots = 6,
				      .backing = BACKING_THP };
	struct stress s = { .seconds = argc > 1 ? atof(argv[1]) : 60 };
	struct dirty_config dc = { .mode = DIRTY_MODE_BITMAP };
	pthread_t th[2];
	char err[256];
	uint64_t t0;
	int i, n, v;

	if (argc > 2 && !strcmp(argv[2], "shared"))
		cfg.lock_mode = MMU_LOCK_SHARED;
	srand(1);
	workload_parse("random,write=70", &cfg.workload, err, sizeof(err));
	if (soft_vm_create(&cfg, &s.svm) || soft_backend_create(s.svm, &s.be)) {
		fprintf(stderr, "stress: cannot create the VM\n");
		return 1;
	}
	n = s.be->ops->get_regions(s.be, s.reg, 6);
	if (n != 6)
		return 1;
	/* Log slots 0-3 only: dirty_start logs all, then slots 4-5 are turned back. */
	if (s.be->ops->dirty_start(s.be, &dc))
		return 1;
	for (i = 4; i < 6; i++) {
		struct vm_memory_region mr = { s.reg[i].slot, 0, s.reg[i].gpa, s.reg[i].size,
					       (hva_t)s.reg[i].hva };

		vm_set_user_memory_region(soft_vm_vm(s.svm), &mr);
	}
	for (i = 0; i < 4; i++) {
		s.shadow[i] = calloc(1, s.reg[i].size);
		memcpy(s.shadow[i], s.reg[i].hva, s.reg[i].size);
	}
	soft_vm_start(s.svm);
	pthread_create(&th[0], NULL, harvester, &s);
	pthread_create(&th[1], NULL, invalidator, &s);
	t0 = now_ns();
	while (!s.failed && (double)(now_ns() - t0) / 1e9 < s.seconds) {
		struct timespec ts = { 0, 100 * 1000 * 1000 };

		nanosleep(&ts, NULL);
	}
	__atomic_store_n(&s.stop, true, __ATOMIC_RELAXED);
	pthread_join(th[0], NULL);
	pthread_join(th[1], NULL);
	soft_vm_stop(s.svm);
	for (v = 0; v < 3; v++) {
		struct soft_vcpu_stats st;

		soft_vm_vcpu_stats(s.svm, v, &st);
		if (st.bad_reads || st.error) {
			fprintf(stderr, "stress: vCPU %d: %llu impossible reads, error %d\n", v,
				(unsigned long long)st.bad_reads, st.error);
			s.failed = 1;
		}
	}
	if (soft_vm_verify(s.svm, err, sizeof(err))) {
		fprintf(stderr, "stress: final verify: %s\n", err);
		s.failed = 1;
	}
	printf("stress (%s lock): %.0f s, %llu harvest rounds, %llu pause+compare checks, "
	       "%llu host memory operations (%llu logging toggles): %s\n",
	       cfg.lock_mode == MMU_LOCK_SHARED ? "shared" : "exclusive",
	       (double)(now_ns() - t0) / 1e9, (unsigned long long)s.rounds,
	       (unsigned long long)s.checks, (unsigned long long)s.invalidations,
	       (unsigned long long)s.toggles, s.failed ? "INVARIANT VIOLATED" : "no violation");
	s.be->ops->destroy(s.be);
	soft_vm_destroy(s.svm);
	for (i = 0; i < 4; i++)
		free(s.shadow[i]);
	return s.failed;
}
