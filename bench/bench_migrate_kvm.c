/* bench_migrate_kvm.c: `rmapvm bench migrate-kvm`: rmapvm live-migrates a KVM guest per working-set size, range size and threads. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "rmapvm/util.h"

/*
 * The same setup as `bench migrate-qemu` (figure 4): one vCPU writing
 * random pages over a working set of W MiB (the guest's RAM is W MiB),
 * migrated after a warm-up over loopback TCP to an `rmapvm incoming`
 * process with a 300 ms downtime limit; the destination verifies the
 * memory digest and the guest's own stamps. Each point is a separate pair
 * of processes (the CLI, as a user would run it).
 */

struct config {
	const char *name;	/* series label */
	const char *range;	/* --range-size (NULL = the whole guest in one range) */
	int threads;
};

static const struct config configs[] = {
	{ "rmapvm-kvm 1-range", NULL, 1 },	/* the whole guest as one range: QEMU's way */
	{ "rmapvm-kvm 64M x1", "64M", 1 },
	{ "rmapvm-kvm 4M x2", "4M", 2 },
};

static pid_t spawn(const char *out, char *const argv[])
{
	pid_t pid = fork();

	if (!pid) {
		FILE *f = freopen(out, "w", stdout);

		(void)f;
		if (!freopen(getenv("RMAPVM_BENCH_STDERR") ? getenv("RMAPVM_BENCH_STDERR") : "/dev/null", "a", stderr))
			_exit(127);
		execv(argv[0], argv);
		_exit(127);
	}
	return pid;
}

static int one_point(const char *self, const struct config *c, unsigned ws_mib, const char *wl,
		     double warmup, bool json, const char *tmp)
{
	static int seq;
	char port[16], uri[64], mem[32], after[32], inc_out[512], src_out[512], line[8192];
	const char *range = c->range ? c->range : mem;
	double total = -1, down = -1, xfer = -1, syncs = -1, throttle = -1;
	int st_inc = 0, st_src = 0;
	bool verified = false;
	pid_t inc, src;
	FILE *f;

	/* A fresh loopback port per point: the previous pair may still hold its own. */
	snprintf(port, sizeof(port), "%d", 30000 + (int)(getpid() % 500) * 40 + seq++ % 40);
	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%s", port);
	snprintf(mem, sizeof(mem), "%uM", ws_mib);
	snprintf(after, sizeof(after), "%.1f", warmup);
	snprintf(inc_out, sizeof(inc_out), "%s/incoming.json", tmp);
	snprintf(src_out, sizeof(src_out), "%s/source.json", tmp);
	{
		char *argv[] = { (char *)self, "incoming", "--listen", uri, "--json", "--duration", "1",
				 NULL };

		inc = spawn(inc_out, argv);
	}
	usleep(300 * 1000);
	{
		char threads[8];
		char *argv[] = { (char *)self, "run", "--backend", "kvm", "--mem", mem, "--vcpus", "1",
				 "--workload", (char *)wl, "--duration", "120", "--migrate-to", uri,
				 "--migrate-after", after, "--range-size", (char *)range, "--threads",
				 threads, "--downtime-ms", "300", "--timeout", "90", "--json", NULL };

		snprintf(threads, sizeof(threads), "%d", c->threads);
		src = spawn(src_out, argv);
	}
	waitpid(src, &st_src, 0);
	/* The destination runs the guest on for 1 s, verifies, exits. */
	for (int i = 0; i < 100 && waitpid(inc, &st_inc, WNOHANG) == 0; i++)
		usleep(100 * 1000);
	if (waitpid(inc, &st_inc, WNOHANG) == 0) {
		kill(inc, SIGKILL);
		waitpid(inc, &st_inc, 0);
	}
	f = fopen(src_out, "r");
	while (f && fgets(line, sizeof(line), f)) {
		if (!strstr(line, "\"event\":\"migration\"") || !strstr(line, "\"completed\""))
			continue;
		total = bench_json_num(line, "total-time");
		down = bench_json_num(line, "downtime");
		xfer = bench_json_num(line, "transferred");
		syncs = bench_json_num(line, "dirty-sync-count");
		throttle = bench_json_num(line, "cpu-throttle-percentage");
	}
	if (f)
		fclose(f);
	f = fopen(inc_out, "r");
	while (f && fgets(line, sizeof(line), f))
		if (strstr(line, "\"verify\":\"ok\""))
			verified = true;
	if (f)
		fclose(f);
	verified = verified && WIFEXITED(st_inc) && !WEXITSTATUS(st_inc);
	if (json)
		printf("{\"bench\":\"migrate-kvm\",\"system\":\"%s\",\"working_set_mib\":%u,"
		       "\"range\":\"%s\",\"threads\":%d,\"total_ms\":%.0f,\"downtime_ms\":%.0f,"
		       "\"transferred_bytes\":%.0f,\"dirty_syncs\":%.0f,\"throttle_pct\":%.0f,"
		       "\"verified\":%s}\n",
		       c->name, ws_mib, range, c->threads, total, down, xfer, syncs, throttle,
		       verified ? "true" : "false");
	else
		printf("%-20s %5u MiB: total %6.0f ms, downtime %4.0f ms, %5.0f MiB sent, %2.0f syncs, "
		       "throttle %2.0f%%, destination verified: %s\n",
		       c->name, ws_mib, total, down, xfer / 1048576, syncs, throttle,
		       verified ? "yes" : "NO");
	fflush(stdout);
	return total >= 0 && verified ? 0 : -EIO;
}

static int bench_migrate_kvm_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "quick", no_argument, NULL, 'q' },
		{ "sizes", required_argument, NULL, 's' },
		{ "workload", required_argument, NULL, 'w' },
		{ "warmup", required_argument, NULL, 'W' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sizes = "64,128,256,512", *wl = "random,write=100";
	char self[512], tmp[] = "/tmp/rmapvm-migkvm-XXXXXX", buf[128], *tok, *save;
	double warmup = 2;
	bool json = false;
	int c, failed = 0;
	size_t k;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'q':
			sizes = "32,64";
			warmup = 1;
			break;
		case 's':
			sizes = optarg;
			break;
		case 'w':
			wl = optarg;
			break;
		case 'W':
			if (parse_duration(optarg, &warmup)) {
				fprintf(stderr, "rmapvm: --warmup: '%s' is not a duration\n", optarg);
				return 2;
			}
			break;
		case 'h':
			printf("usage: rmapvm bench migrate-kvm [--sizes MiB,...] [--workload SPEC] "
			       "[--warmup T] [--quick] [--json]\n"
			       "rmapvm live-migrates a 1-vCPU KVM guest writing WORKLOAD over a working set\n"
			       "of each size (default 64,128,256,512 MiB, random,write=100: the setup of\n"
			       "`bench migrate-qemu`), for one whole-guest range, 64M ranges x 1 thread\n"
			       "and 4M ranges x 2 threads; incoming and run are separate processes.\n"
			       "Env: RMAPVM_BENCH_STDERR=FILE collects their stderr (default: dropped).\n");
			return 0;
		default:
			return 2;
		}
	}
	if (!bench_kvm_available("migrate-kvm", json))
		return 0;
	if (bench_self_exe(self, sizeof(self)) || !mkdtemp(tmp))
		return 1;
	snprintf(buf, sizeof(buf), "%s", sizes);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		unsigned ws = (unsigned)atoi(tok);

		if (ws < 8 || ws > 65536) {
			fprintf(stderr, "rmapvm: --sizes: '%s' is not a MiB count in [8, 65536]\n", tok);
			return 2;
		}
		for (k = 0; k < ARRAY_SIZE(configs); k++)
			failed |= one_point(self, &configs[k], ws, wl, warmup, json, tmp) != 0;
	}
	{
		char cmd[600];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
		if (system(cmd))
			fprintf(stderr, "rmapvm: could not remove %s\n", tmp);
	}
	return failed;
}

BENCH_REGISTER("migrate-kvm", bench_migrate_kvm_main,
	       "rmapvm migrates a KVM guest per working set, range size, threads (figure 4)")
