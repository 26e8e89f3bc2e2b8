/* bench_prefault.c: `rmapvm bench prefault`: build the page tables of a large guest, and what they cost. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "rmapvm/backing.h"
#include "rmapvm/mmu.h"
#include "rmapvm/util.h"

static int prefault_one(uint64_t bytes, int level, bool json)
{
	struct vm_config cfg;
	struct vm *vm;
	struct mem_backing b;
	struct vm_memory_region mr = { 0 };
	struct vm_stats st;
	uint64_t t0, t1;
	int64_t mapped;
	char buf[32];
	int r;

	vm_config_default(&cfg);
	r = vm_create(&cfg, &vm);
	if (r)
		return r;
	/* Reserved, never touched: prefault does not read guest memory. */
	r = backing_alloc(&b, level > PG_LEVEL_4K ? BACKING_THP : BACKING_ANON_4K, bytes);
	if (r)
		goto out_vm;
	mr.memory_size = b.size;
	mr.userspace_addr = b.hva;
	r = vm_set_user_memory_region(vm, &mr);
	if (r)
		goto out;
	t0 = now_ns();
	mapped = vm_prefault_memory(vm, 0, 0, b.size, level);
	t1 = now_ns();
	if (mapped < 0) {
		r = (int)mapped;
		goto out;
	}
	vm_get_stats(vm, &st);
	{
		double secs = (double)(t1 - t0) / 1e9;
		double pages = (double)st.guest_pages;
		double meta = (double)(st.rmap_bytes + st.lpage_info_bytes) / pages;

		if (json)
			printf("{\"bench\":\"prefault\",\"guest_bytes\":%llu,\"level\":%d,"
			       "\"prefault_s\":%.4f,\"ns_per_mapping\":%.2f,\"mmu_pages\":%llu,"
			       "\"page_table_bytes\":%llu,\"rmap_bytes\":%llu,\"rmap_descs\":%llu,"
			       "\"metadata_bytes_per_page\":%.4f}\n",
			       (unsigned long long)bytes, level, secs,
			       (double)(t1 - t0) / (double)(st.leaf_sptes[0] + st.leaf_sptes[1] +
							    st.leaf_sptes[2]),
			       (unsigned long long)st.mmu_pages,
			       (unsigned long long)st.page_table_bytes,
			       (unsigned long long)st.rmap_bytes, (unsigned long long)st.rmap_descs,
			       meta);
		else
			printf("%s guest at %s: prefault %.3f s (%.1f ns per mapping), %llu mmu pages "
			       "(%.0f MiB), rmap+lpage_info %.3f B per 4 KiB page (%.3f%%)\n",
			       fmt_bytes(bytes, buf, sizeof(buf)), level == 1 ? "4K" : level == 2 ? "2M" : "1G",
			       secs,
			       (double)(t1 - t0) / (double)(st.leaf_sptes[0] + st.leaf_sptes[1] +
							    st.leaf_sptes[2]),
			       (unsigned long long)st.mmu_pages, st.page_table_bytes / 1048576.0, meta,
			       meta / 40.96);
	}
out:
	backing_free(&b);
out_vm:
	vm_destroy(vm);
	return r;
}

static int bench_prefault_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "size", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t size = 64ull << 30;
	bool json = false;
	int c, level, r;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 's':
			if (parse_size(optarg, &size) || size < SZ_2M || size % SZ_2M) {
				fprintf(stderr, "rmapvm: --size: '%s' is not a multiple of 2M\n", optarg);
				return 2;
			}
			break;
		case 'h':
			printf("usage: rmapvm bench prefault [--size 64G] [--json]\n"
			       "Time to build page tables and rmaps for the whole guest without touching\n"
			       "its memory (KVM_PRE_FAULT_MEMORY), at 4 KiB and 2 MiB mappings.\n");
			return 0;
		default:
			return 2;
		}
	}
	for (level = PG_LEVEL_4K; level <= PG_LEVEL_2M; level++) {
		r = prefault_one(size, level, json);
		if (r) {
			fprintf(stderr, "rmapvm: prefault %d: %s\n", level, strerror(-r));
			return 1;
		}
	}
	return 0;
}

BENCH_REGISTER("prefault", bench_prefault_main, "build page tables of a large guest (KVM_PRE_FAULT_MEMORY)")
