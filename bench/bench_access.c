/* bench_access.c: `rmapvm bench access`: ns per guest access for each path (TLB hit, walk, faults). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "rmapvm/backing.h"
#include "rmapvm/mmu.h"
#include "rmapvm/util.h"

struct access_env {
	struct vm *vm;
	struct vcpu *vcpu;
	struct mem_backing b;
};

static int env_create(struct access_env *env, enum backing_type type, uint64_t bytes, bool touch)
{
	struct vm_config cfg;
	struct vm_memory_region mr = { 0 };
	int r;

	vm_config_default(&cfg);
	r = vm_create(&cfg, &env->vm);
	if (r)
		return r;
	r = backing_alloc(&env->b, type, bytes);
	if (r) {
		vm_destroy(env->vm);
		return r;
	}
	if (touch)
		memset((void *)env->b.hva, 1, env->b.size); /* host pages present: measure our path */
	vm_register_backing(env->vm, &env->b);
	mr.memory_size = env->b.size;
	mr.userspace_addr = env->b.hva;
	r = vm_set_user_memory_region(env->vm, &mr);
	env->vcpu = vm_get_vcpu(env->vm, 0);
	vcpu_load(env->vcpu);
	return r;
}

static void env_destroy(struct access_env *env)
{
	vcpu_put(env->vcpu);
	vm_destroy(env->vm);
	backing_free(&env->b);
}

static int set_logging(struct access_env *env, bool on)
{
	struct vm_memory_region mr = {
		.flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0,
		.memory_size = env->b.size,
		.userspace_addr = env->b.hva,
	};
	return vm_set_user_memory_region(env->vm, &mr);
}

enum access_case { TLB_HIT, TLB_MISS_WALK, FAULT_SLOW_4K, FAULT_SLOW_2M, FAULT_FAST, NR_CASES };
static const char *const case_names[NR_CASES] = { "tlb_hit", "tlb_miss_walk", "fault_slow_4k",
						  "fault_slow_2m", "fault_fast" };

/* One measurement of @c: ns per access, or a negative errno. */
static double measure(enum access_case c, uint64_t pages)
{
	struct access_env env;
	uint64_t i, n = 0, t0, t1, v;
	enum backing_type type = c == FAULT_SLOW_2M ? BACKING_THP : BACKING_ANON_4K;
	uint64_t bytes = c == FAULT_SLOW_2M ? pages * SZ_2M : pages * PAGE_SIZE;
	int r;

	r = env_create(&env, type, bytes, c != FAULT_SLOW_2M);
	if (r)
		return r;
	switch (c) {
	case TLB_HIT:
		vcpu_write_u64(env.vcpu, 0, 1);
		n = pages * 64;
		t0 = now_ns();
		for (i = 0; i < n; i++)
			vcpu_read_u64(env.vcpu, (i & 7) * 8, &v);
		t1 = now_ns();
		break;
	case TLB_MISS_WALK:
		/* Map everything, then stride so that every access misses the TLB. */
		for (i = 0; i < pages; i++)
			vcpu_read_u64(env.vcpu, i * PAGE_SIZE, &v);
		n = pages * 4;
		t0 = now_ns();
		for (i = 0; i < n; i++)
			vcpu_read_u64(env.vcpu, ((i * 4099) % pages) * PAGE_SIZE, &v);
		t1 = now_ns();
		break;
	case FAULT_SLOW_4K:
		n = pages;
		t0 = now_ns();
		for (i = 0; i < n; i++)
			vcpu_write_u64(env.vcpu, i * PAGE_SIZE, i);
		t1 = now_ns();
		break;
	case FAULT_SLOW_2M:
		/* Let the host allocate THPs first, so the fault maps 2 MiB. */
		for (i = 0; i < pages; i++)
			*(volatile uint64_t *)(env.b.hva + i * SZ_2M) = 1;
		n = pages;
		t0 = now_ns();
		for (i = 0; i < n; i++)
			vcpu_write_u64(env.vcpu, i * SZ_2M, i);
		t1 = now_ns();
		if (host_mapping_level(&env.b, env.b.hva) < PG_LEVEL_2M) {
			env_destroy(&env);
			return -EOPNOTSUPP;
		}
		break;
	case FAULT_FAST:
		for (i = 0; i < pages; i++)
			vcpu_read_u64(env.vcpu, i * PAGE_SIZE, &v);
		vcpu_put(env.vcpu);
		set_logging(&env, true);
		vcpu_load(env.vcpu);
		n = pages;
		t0 = now_ns();
		for (i = 0; i < n; i++)
			vcpu_write_u64(env.vcpu, i * PAGE_SIZE, i);
		t1 = now_ns();
		break;
	default:
		t0 = t1 = 0;
	}
	env_destroy(&env);
	return n ? (double)(t1 - t0) / (double)n : 0;
}

static int bench_access_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "pages", required_argument, NULL, 'p' },
		{ "runs", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t pages = 65536;
	int runs = 5, c, k;
	bool json = false;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'p':
			if (parse_u64(optarg, &pages) || pages < 64 || pages > (1u << 22)) {
				fprintf(stderr, "rmapvm: --pages: '%s' is not in [64, 4194304]\n", optarg);
				return 2;
			}
			break;
		case 'r':
			runs = atoi(optarg);
			if (runs < 1 || runs > 100) {
				fprintf(stderr, "rmapvm: --runs: '%s' is not in [1, 100]\n", optarg);
				return 2;
			}
			break;
		case 'h':
			printf("usage: rmapvm bench access [--pages N] [--runs N] [--json]\n"
			       "ns per guest access: TLB hit, TLB miss + page walk, slow fault mapping\n"
			       "4 KiB and 2 MiB (host memory already present), lockless fast fault.\n"
			       "Median of --runs runs, with the spread (max-min)/median.\n");
			return 0;
		default:
			return 2;
		}
	}
	for (c = 0; c < NR_CASES; c++) {
		double v[100];
		uint64_t n = c == FAULT_SLOW_2M ? MAX(pages / 512, 16) : pages;
		int got = 0;

		for (k = 0; k < runs; k++) {
			double ns = measure(c, n);

			if (ns < 0) {
				got = (int)ns;
				break;
			}
			v[got++] = ns;
		}
		if (got <= 0) {
			if (json)
				printf("{\"bench\":\"access\",\"case\":\"%s\",\"skipped\":\"%s\"}\n",
				       case_names[c], strerror(-got));
			else
				printf("%-14s skipped: %s\n", case_names[c], strerror(-got));
			continue;
		}
		double med = bench_median(v, got), spread = bench_spread(v, got);

		if (json)
			printf("{\"bench\":\"access\",\"case\":\"%s\",\"ns_per_access\":%.2f,"
			       "\"spread\":%.3f,\"runs\":%d,\"accesses\":%llu}\n",
			       case_names[c], med, spread, got, (unsigned long long)n);
		else
			printf("%-14s %10.2f ns/access  (median of %d, spread %.0f%%)\n",
			       case_names[c], med, got, spread * 100);
	}
	return 0;
}

BENCH_REGISTER("access", bench_access_main, "ns per guest access: TLB hit, walk, slow/fast faults")
