/* bench_dirty_scaling.c: `rmapvm bench dirty-scaling`: harvest time vs dirty pages and guest size for walk, rmap, tdp (the talk's figure). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "rmapvm/backing.h"
#include "rmapvm/dirty_log.h"
#include "rmapvm/mmu.h"
#include "rmapvm/util.h"

static const uint64_t default_counts[] = { 0, 1, 16, 256, 1024, 4096, 65536, 1048576 };

struct scaling_opts {
	uint64_t gib[8];
	int nr_gib;
	int reps;
	bool json;
};

/*
 * One guest: a logged slot of @gib GiB, page tables built by prefault at
 * 4 KiB (what logging maps; memory is never touched), then for each
 * algorithm and dirty count: dirty the pages as write faults would
 * (evenly spread), time one GET_DIRTY_LOG (get + re-protect + flush).
 */
static int scaling_guest(uint64_t gib, const struct scaling_opts *o)
{
	uint64_t bytes = gib << 30, npages = bytes >> PAGE_SHIFT;
	uint64_t *bitmap = malloc(DIV_ROUND_UP(npages, 64) * 8);
	struct vm_memory_region mr = { 0 };
	struct dirty_log_stats st;
	struct mem_backing b;
	struct vm_config cfg;
	struct vm *vm;
	uint64_t t0;
	int64_t mapped;
	int r, a;
	size_t c;

	if (!bitmap)
		return -ENOMEM;
	vm_config_default(&cfg);
	r = vm_create(&cfg, &vm);
	if (r)
		goto out_bm;
	r = backing_alloc(&b, BACKING_ANON_4K, bytes);
	if (r)
		goto out_vm;
	mr.memory_size = bytes;
	mr.userspace_addr = b.hva;
	mr.flags = KVM_MEM_LOG_DIRTY_PAGES;
	r = vm_set_user_memory_region(vm, &mr);
	if (r)
		goto out;
	t0 = now_ns();
	mapped = vm_prefault_memory(vm, 0, 0, bytes, PG_LEVEL_4K);
	if (mapped < 0) {
		r = (int)mapped;
		goto out;
	}
	if (!o->json)
		printf("# %llu GiB guest: %llu pages mapped 4 KiB in %.2f s\n",
		       (unsigned long long)gib, (unsigned long long)npages,
		       (now_ns() - t0) / 1e9);

	for (a = 0; a < DIRTY_ALGO_NR; a++) {
		r = dirty_log_set_harvest(vm, a, DIRTY_LOCK_WHOLE);
		if (r)
			goto out;
		/* Start clean: nothing dirty, everything protected. */
		dirty_log_get(vm, 0, bitmap);
		for (c = 0; c < ARRAY_SIZE(default_counts); c++) {
			uint64_t count = default_counts[c], stride, k;
			double v[16], med;
			int reps = o->reps;

			if (count > npages)
				continue;
			stride = count ? npages / count : 1;
			/* The walk costs O(guest): fewer repetitions on big guests. */
			if (a == DIRTY_ALGO_WALK && gib >= 16)
				reps = MIN(reps, 3);
			for (k = 0; k < (uint64_t)reps; k++) {
				int64_t n = count ? dirty_log_inject_writes(vm, 0, k % stride, count, stride)
						  : 0;

				if (n < 0 || (uint64_t)n != count) {
					r = n < 0 ? (int)n : -EIO;
					goto out;
				}
				t0 = now_ns();
				r = dirty_log_get(vm, 0, bitmap);
				v[k] = (double)(now_ns() - t0);
				if (r)
					goto out;
			}
			med = bench_median(v, reps);
			dirty_log_get_stats(vm, &st);
			if (o->json)
				printf("{\"bench\":\"dirty-scaling\",\"algo\":\"%s\",\"guest_gib\":%llu,"
				       "\"dirty_pages\":%llu,\"harvest_ns\":%.0f,\"ns_per_dirty_page\":%.2f,"
				       "\"mmu_lock_hold_ns\":%llu,\"reps\":%d}\n",
				       dirty_log_algo_name(a), (unsigned long long)gib,
				       (unsigned long long)count, med, count ? med / count : 0.0,
				       (unsigned long long)st.last_lock_hold_ns, reps);
			else
				printf("%-5s %3llu GiB %8llu dirty: %12.0f ns  (%.2f ns/page)\n",
				       dirty_log_algo_name(a), (unsigned long long)gib,
				       (unsigned long long)count, med, count ? med / count : 0.0);
			fflush(stdout);
		}
	}
	r = 0;
out:
	backing_free(&b);
out_vm:
	vm_destroy(vm);
out_bm:
	free(bitmap);
	return r;
}

static int bench_dirty_scaling_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "quick", no_argument, NULL, 'q' },
		{ "max-gib", required_argument, NULL, 'm' },
		{ "gib", required_argument, NULL, 'g' },
		{ "reps", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct scaling_opts o = { .gib = { 1, 16, 64 }, .nr_gib = 3, .reps = 5 };
	uint64_t max_gib = UINT64_MAX, v;
	int c, i;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			o.json = true;
			break;
		case 'q':
			max_gib = 1;
			o.reps = 3;
			break;
		case 'm':
			if (parse_u64(optarg, &max_gib) || !max_gib) {
				fprintf(stderr, "rmapvm: --max-gib: '%s' is not a positive integer\n", optarg);
				return 2;
			}
			break;
		case 'g':
			if (parse_u64(optarg, &v) || !v || v > 1024) {
				fprintf(stderr, "rmapvm: --gib: '%s' is not in 1..1024\n", optarg);
				return 2;
			}
			if (o.nr_gib == 3 && o.gib[0] == 1 && o.gib[2] == 64)
				o.nr_gib = 0; /* first --gib replaces the defaults */
			if (o.nr_gib < (int)ARRAY_SIZE(o.gib))
				o.gib[o.nr_gib++] = v;
			break;
		case 'r':
			if (parse_u64(optarg, &v) || !v || v > 16) {
				fprintf(stderr, "rmapvm: --reps: '%s' is not in 1..16\n", optarg);
				return 2;
			}
			o.reps = (int)v;
			break;
		case 'h':
			printf("usage: rmapvm bench dirty-scaling [--json] [--quick] [--max-gib N] [--gib N]...\n"
			       "                                  [--reps N]\n"
			       "GET_DIRTY_LOG time against the number of dirty pages, for guests of 1, 16 and\n"
			       "64 GiB (page tables built by prefault at 4 KiB, memory untouched) and the\n"
			       "harvest algorithms walk (2012), rmap (the talk) and tdp. Dirty pages are\n"
			       "spread evenly and dirtied as write faults would. --quick: 1 GiB only.\n"
			       "--json: one object per point: algo, guest_gib, dirty_pages, harvest_ns.\n");
			return 0;
		default:
			return 2;
		}
	}
	for (i = 0; i < o.nr_gib; i++) {
		int r;

		if (o.gib[i] > max_gib)
			continue;
		r = scaling_guest(o.gib[i], &o);
		if (r) {
			fprintf(stderr, "rmapvm: dirty-scaling %llu GiB: %s\n",
				(unsigned long long)o.gib[i], strerror(-r));
			return 1;
		}
	}
	return 0;
}

BENCH_REGISTER("dirty-scaling", bench_dirty_scaling_main,
	       "GET_DIRTY_LOG time vs dirty pages and guest size: walk, rmap, tdp (the talk's figure)")
