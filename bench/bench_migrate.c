/* bench_migrate.c: `rmapvm bench migrate`: live migration of a soft VM over a UNIX socket for several range sizes and thread counts. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "cli/cli.h"
#include "cli/cli_migrate.h"
#include "rmapvm/migrate.h"
#include "rmapvm/soft_vm.h"
#include "rmapvm/util.h"

struct bdest {
	struct mig_listener *l;
	struct cli_vm vm;
	bool built;
	struct backend *be;
	int r;
	char err[512];
	pthread_t t;
};

static int bdest_create(void *opaque, const char *kind, const void *desc, size_t len,
			uint32_t nr_vcpus, struct backend **out, char *err, size_t errlen)
{
	struct bdest *d = opaque;
	char buf[MIG_MAX_DESC + 1];
	int r;

	memcpy(buf, desc, len);
	buf[len] = 0;
	r = cli_vm_from_desc(&d->vm, kind, buf, nr_vcpus, err, errlen);
	if (!r) {
		d->built = true;
		*out = d->vm.be;
	}
	return r;
}

static void *bdest_thread(void *arg)
{
	struct bdest *d = arg;
	struct mig_dest_ops ops = { .create = bdest_create, .opaque = d };
	struct mig_dest_params p = { .accept_timeout_ms = 30000 };

	d->r = mig_incoming(d->l, &p, &ops, &d->be, NULL, d->err, sizeof(d->err));
	return NULL;
}

static int bench_migrate(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "mem", required_argument, NULL, 'm' },
		{ "workload", required_argument, NULL, 'w' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const uint64_t ranges[] = { 4ull << 20, 64ull << 20, 1ull << 30 };
	static const int threads[] = { 1, 2 };
	uint64_t mem = 1ull << 30;
	const char *wl = "hotset,write=80,hot=10,frac=90,rate=1000000";
	bool json = false;
	char err[256], uri[128];
	size_t ri, ti;
	int c;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'm':
			mem = cli_parse_size("--mem", optarg);
			break;
		case 'w':
			wl = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			printf("usage: rmapvm bench migrate [--mem SIZE] [--workload SPEC] [--json]\n"
			       "  migrates a running 2-vCPU soft VM over a UNIX socket (in-process destination)\n"
			       "  for range sizes 4M, 64M, 1G and 1, 2 threads; prints total time, downtime,\n"
			       "  rounds, pages and the longest single harvest (an mmu_lock hold bound)\n");
			return 0;
		default:
			return 2;
		}
	}
	snprintf(uri, sizeof(uri), "unix:/tmp/rmapvm-bench-mig-%d.sock", getpid());
	for (ri = 0; ri < ARRAY_SIZE(ranges); ri++)
		for (ti = 0; ti < ARRAY_SIZE(threads); ti++) {
			struct soft_vm_config cfg = { .mem_bytes = mem, .vcpus = 2, .slots = 1,
						      .backing = BACKING_THP };
			struct run_options opt = { .json = true, .threads = threads[ti],
						   .range_bytes = ranges[ri] };
			struct cli_vm v;
			struct mig_source *ms;
			struct mig_params p = { 0 };
			struct mig_info i;
			struct bdest d = { 0 };
			char desc[MIG_MAX_DESC];
			struct timespec ts = { 1, 0 };
			int r;

			if (workload_parse(wl, &cfg.workload, err, sizeof(err)))
				die("--workload: %s", err);
			if (cli_vm_create_soft(&v, &cfg, err, sizeof(err)))
				die("%s", err);
			if (cli_vm_start(&v) || mig_source_create(v.be, &ms))
				die("cannot start the VM");
			nanosleep(&ts, NULL);
			if (mig_listen(uri, &d.l, err, sizeof(err)))
				die("%s", err);
			pthread_create(&d.t, NULL, bdest_thread, &d);
			cli_vm_desc(&v, desc, sizeof(desc));
			p.uri = uri;
			p.kind = "soft";
			p.desc = desc;
			p.desc_len = strlen(desc);
			p.threads = opt.threads;
			p.range_bytes = opt.range_bytes;
			p.timeout_s = 60;
			p.timeout_action = MIG_TIMEOUT_FORCE;
			r = mig_source_migrate(ms, &p, NULL, NULL);
			pthread_join(d.t, NULL);
			mig_listener_close(d.l);
			mig_source_info(ms, &i);
			if (json)
				printf("{\"bench\":\"migrate\",\"range_bytes\":%llu,\"threads\":%d,\"ok\":%s,"
				       "\"total_ms\":%llu,\"downtime_ms\":%llu,\"rounds\":%llu,\"pages\":%llu,"
				       "\"final_pages\":%llu,\"harvest_ms\":%.2f,\"max_harvest_us\":%.1f}\n",
				       (unsigned long long)ranges[ri], threads[ti], r || d.r ? "false" : "true",
				       (unsigned long long)i.total_ms, (unsigned long long)i.downtime_ms,
				       (unsigned long long)i.dirty_sync_count,
				       (unsigned long long)i.normal_pages, (unsigned long long)i.final_pages,
				       (double)i.harvest_ns / 1e6, (double)i.max_harvest_ns / 1e3);
			else
				printf("range %5llu MiB, %d thread(s): %s total %5llu ms, downtime %4llu ms, "
				       "%2llu rounds, %7llu pages (%6llu final), harvest %7.2f ms, longest "
				       "harvest %8.1f us\n",
				       (unsigned long long)(ranges[ri] >> 20), threads[ti],
				       r || d.r ? "FAILED" : "ok", (unsigned long long)i.total_ms,
				       (unsigned long long)i.downtime_ms,
				       (unsigned long long)i.dirty_sync_count,
				       (unsigned long long)i.normal_pages, (unsigned long long)i.final_pages,
				       (double)i.harvest_ns / 1e6, (double)i.max_harvest_ns / 1e3);
			fflush(stdout);
			if (d.built)
				cli_vm_destroy(&d.vm);
			mig_source_destroy(ms);
			cli_vm_destroy(&v);
		}
	return 0;
}

BENCH_REGISTER("migrate", bench_migrate,
	       "live-migrate a running soft VM in-process: range size x threads (total, downtime, harvest)")
