/* main.c: `rmapvm` command dispatch: run, incoming, bench, demo. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"
#include "cli_migrate.h"
#include "rmapvm/migrate.h"
#include "rmapvm/util.h"

/* Linked in when the KVM backend is built (src/cli/run_kvm.c). */
#pragma weak cli_run_kvm

static void usage(FILE *f)
{
	fputs("usage: rmapvm <command> [options]\n"
	      "\n"
	      "commands:\n"
	      "  run      run a VM: --backend soft|kvm|auto --mem SIZE --vcpus N --slots N\n"
	      "           --backing 4k|thp|hugetlb|hugetlb1g --workload SPEC --duration T\n"
	      "           [--lock exclusive|shared] [--json]\n"
	      "           migration: --migrate-to URI [--migrate-after T] [--control PATH]\n"
	      "           [--dirty-mode bitmap|manual|ring|dbit] [--harvest rmap|walk|tdp]\n"
	      "           [--range-size SIZE] [--threads N] [--downtime-ms MS] [--timeout T]\n"
	      "           [--timeout-action cancel|force] [--bandwidth SIZE/s] [--compress]\n"
	      "  incoming receive a migrating VM: --listen URI [--json] [--duration T]\n"
	      "           URI: tcp:HOST:PORT | unix:PATH | file:PATH\n"
	      "  bench    run a benchmark: rmapvm bench --help lists them\n"
	      "  demo     the end-to-end demonstration (what `make demo` runs)\n"
	      "\n"
	      "workload SPEC: sweep|random|hotset[,write=PCT][,hot=PCT][,frac=PCT][,rate=N][,seed=N]\n",
	      f);
}

static bool kvm_available(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

static int cmd_run(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "backend", required_argument, NULL, 'B' },
		{ "mem", required_argument, NULL, 'm' },
		{ "vcpus", required_argument, NULL, 'v' },
		{ "slots", required_argument, NULL, 's' },
		{ "backing", required_argument, NULL, 'b' },
		{ "workload", required_argument, NULL, 'w' },
		{ "duration", required_argument, NULL, 'd' },
		{ "lock", required_argument, NULL, 'l' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ "migrate-to", required_argument, NULL, 'M' },
		{ "migrate-after", required_argument, NULL, 'A' },
		{ "control", required_argument, NULL, 'C' },
		{ "dirty-mode", required_argument, NULL, 'D' },
		{ "harvest", required_argument, NULL, 'H' },
		{ "range-size", required_argument, NULL, 'R' },
		{ "threads", required_argument, NULL, 'T' },
		{ "downtime-ms", required_argument, NULL, 'W' },
		{ "timeout", required_argument, NULL, 'O' },
		{ "timeout-action", required_argument, NULL, 'X' },
		{ "bandwidth", required_argument, NULL, 'N' },
		{ "compress", no_argument, NULL, 'Z' },
		{ NULL, 0, NULL, 0 },
	};
	struct run_options opt = {
		.backend = "auto",
		.mem_bytes = 256ull << 20,
		.vcpus = 2,
		.slots = 1,
		.backing = BACKING_THP,
		.duration_s = 2,
	};
	char err[160];
	int c;

	workload_parse("random", &opt.workload, err, sizeof(err));
	optind = 1;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'B':
			if (strcmp(optarg, "soft") && strcmp(optarg, "kvm") && strcmp(optarg, "auto"))
				die("--backend: '%s' is not soft, kvm or auto", optarg);
			opt.backend = optarg;
			break;
		case 'm':
			opt.mem_bytes = cli_parse_size("--mem", optarg);
			if (!opt.mem_bytes || !IS_ALIGNED(opt.mem_bytes, PAGE_SIZE))
				die("--mem: %s is not a positive multiple of 4 KiB", optarg);
			break;
		case 'v':
			opt.vcpus = (int)cli_parse_int("--vcpus", optarg, 1, 256);
			break;
		case 's':
			opt.slots = (int)cli_parse_int("--slots", optarg, 1, 32764);
			break;
		case 'b':
			if (backing_parse(optarg, &opt.backing))
				die("--backing: '%s' is not 4k, thp, hugetlb or hugetlb1g", optarg);
			break;
		case 'w':
			if (workload_parse(optarg, &opt.workload, err, sizeof(err)))
				die("--workload: %s", err);
			break;
		case 'd':
			opt.duration_s = cli_parse_duration("--duration", optarg);
			break;
		case 'l':
			if (strcmp(optarg, "exclusive") && strcmp(optarg, "shared"))
				die("--lock: '%s' is not exclusive or shared", optarg);
			opt.lock_shared = !strcmp(optarg, "shared");
			break;
		case 'j':
			opt.json = true;
			break;
		case 'M': {
			struct mig_uri u;

			if (mig_uri_parse(optarg, &u, err, sizeof(err)))
				die("--migrate-to: %s", err);
			opt.migrate_to = optarg;
			break;
		}
		case 'A':
			opt.migrate_after_s = cli_parse_duration("--migrate-after", optarg);
			break;
		case 'C':
			opt.control = optarg;
			break;
		case 'D': {
			enum dirty_mode m;

			if (dirty_mode_parse(optarg, &m))
				die("--dirty-mode: '%s' is not bitmap, manual, ring or dbit", optarg);
			opt.dirty_mode = optarg;
			break;
		}
		case 'H':
			if (strcmp(optarg, "rmap") && strcmp(optarg, "walk") && strcmp(optarg, "tdp"))
				die("--harvest: '%s' is not rmap, walk or tdp", optarg);
			opt.harvest = optarg;
			break;
		case 'R':
			opt.range_bytes = cli_parse_size("--range-size", optarg);
			if (!opt.range_bytes || opt.range_bytes % (256 << 10))
				die("--range-size: %s is not a positive multiple of 256 KiB (64 pages)",
				    optarg);
			break;
		case 'T':
			opt.threads = (int)cli_parse_int("--threads", optarg, 1, 64);
			break;
		case 'W':
			opt.downtime_ms = (uint32_t)cli_parse_int("--downtime-ms", optarg, 1, 2000000);
			break;
		case 'O':
			opt.timeout_s = cli_parse_duration("--timeout", optarg);
			break;
		case 'X':
			if (strcmp(optarg, "cancel") && strcmp(optarg, "force"))
				die("--timeout-action: '%s' is not cancel or force", optarg);
			opt.timeout_force = !strcmp(optarg, "force");
			break;
		case 'N': {
			char b[64];
			size_t n = strlen(optarg);

			/* accept "100M" and "100M/s" */
			snprintf(b, sizeof(b), "%s", optarg);
			if (n > 2 && n < sizeof(b) && !strcmp(b + n - 2, "/s"))
				b[n - 2] = 0;
			opt.bandwidth = cli_parse_size("--bandwidth", b);
			break;
		}
		case 'Z':
			opt.compress = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc)
		die("run: unexpected argument '%s'", argv[optind]);
	if (opt.mem_bytes / PAGE_SIZE < (uint64_t)opt.vcpus ||
	    opt.mem_bytes / PAGE_SIZE < (uint64_t)opt.slots)
		die("--mem %s is too small for %d vCPUs and %d slots",
		    fmt_bytes(opt.mem_bytes, err, sizeof(err)), opt.vcpus, opt.slots);

	if (!strcmp(opt.backend, "auto")) {
		bool kvm = kvm_available() && cli_run_kvm;

		opt.backend = kvm ? "kvm" : "soft";
		fprintf(stderr, "rmapvm: --backend auto: using %s (%s)\n", opt.backend,
			kvm ? "/dev/kvm opened" : "/dev/kvm not usable, software MMU");
	}
	if (opt.migrate_to || opt.control) {
		if (!strcmp(opt.backend, "kvm") && !cli_run_kvm)
			die("--backend kvm: this build has no KVM backend");
		return cli_run_migrate(&opt);
	}
	if (!strcmp(opt.backend, "kvm")) {
		if (!cli_run_kvm)
			die("--backend kvm: this build has no KVM backend");
		return cli_run_kvm(&opt);
	}
	return cli_run_soft(&opt);
}

static int cmd_bench(int argc, char **argv)
{
	struct bench_cmd *b;

	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		FILE *f = argc < 2 ? stderr : stdout;

		fputs("usage: rmapvm bench <name> [options]   (each takes --help)\n\nbenchmarks:\n", f);
		for (b = bench_list(); b; b = b->next)
			fprintf(f, "  %-16s %s\n", b->name, b->help);
		return argc < 2 ? 2 : 0;
	}
	b = bench_find(argv[1]);
	if (!b)
		die("bench: no benchmark named '%s' (rmapvm bench --help lists them)", argv[1]);
	optind = 1;
	return b->main(argc - 1, argv + 1);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "run"))
		return cmd_run(argc - 1, argv + 1);
	if (!strcmp(argv[1], "incoming"))
		return cli_incoming(argc - 1, argv + 1);
	if (!strcmp(argv[1], "bench"))
		return cmd_bench(argc - 1, argv + 1);
	if (!strcmp(argv[1], "demo"))
		return cli_demo(argc - 1, argv + 1);
	if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	die("unknown command '%s' (rmapvm help)", argv[1]);
}
