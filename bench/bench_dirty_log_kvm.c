/* bench_dirty_log_kvm.c: `rmapvm bench dirty-log-kvm`: the guest's cost of the kernel's dirty logging, per mode (figure 3). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "rmapvm/util.h"

/*
 * Runs `rmapvm run --backend kvm` (a real guest at CPL3, one vCPU sweeping
 * its memory) for a few seconds in each kernel logging mode, harvesting the
 * whole guest every 100 ms; the guest's time divided by the dirty pages the
 * harvests reported is the cost the guest pays per dirtied page (write
 * faults on re-protected pages, as dirty_log_perf_test's "dirty memory
 * time"). Untracked, for reference, the same run writes without faults.
 */
static int bench_dirty_log_kvm_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const char *const modes[] = { "none", "bitmap", "manual", "ring" };
	const char *mem = "512M", *secs = "4";
	char self[512], cmd[1024], line[4096];
	bool json = false;
	size_t m;
	int c;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'q':
			mem = "64M";
			secs = "1";
			break;
		case 'h':
			printf("usage: rmapvm bench dirty-log-kvm [--quick] [--json]\n"
			       "Guest time per dirtied page under the kernel's dirty logging (classic,\n"
			       "manual, ring; harvests every 100 ms), one vCPU sweeping 512 MiB for 4 s.\n");
			return 0;
		default:
			return 2;
		}
	}
	if (!bench_kvm_available("dirty-log-kvm", json))
		return 0;
	if (bench_self_exe(self, sizeof(self)))
		return 1;
	for (m = 0; m < ARRAY_SIZE(modes); m++) {
		double s = -1, writes = -1, pages = -1;
		FILE *f;

		snprintf(cmd, sizeof(cmd),
			 "%s run --backend kvm --mem %s --vcpus 1 --workload sweep --duration %s %s%s "
			 "--json 2>/dev/null",
			 self, mem, secs, m ? "--dirty-mode " : "", m ? modes[m] : "");
		f = popen(cmd, "r");
		while (f && fgets(line, sizeof(line), f)) {
			if (!strstr(line, "\"backend\":\"kvm\""))
				continue;
			s = bench_json_num(line, "seconds");
			writes = bench_json_num(line, "writes");
			pages = bench_json_num(line, "dirty_pages");
		}
		if (f && pclose(f)) {
			fprintf(stderr, "rmapvm: dirty-log-kvm: %s failed\n", modes[m]);
			continue;
		}
		if (json)
			printf("{\"bench\":\"dirty-log-kvm\",\"backend\":\"kvm\",\"mode\":\"%s\","
			       "\"seconds\":%.3f,\"writes\":%.0f,\"dirty_pages\":%.0f,"
			       "\"dirty_ns_per_page\":%.1f,\"ns_per_write\":%.2f}\n",
			       modes[m], s, writes, pages, pages > 0 ? s * 1e9 / pages : -1,
			       writes > 0 ? s * 1e9 / writes : -1);
		else
			printf("%-7s %.0f writes, %.0f dirty pages reported in %.2f s: %.1f ns per dirtied "
			       "page, %.2f ns per write\n",
			       modes[m], writes, pages, s, pages > 0 ? s * 1e9 / pages : -1,
			       writes > 0 ? s * 1e9 / writes : -1);
		fflush(stdout);
	}
	return 0;
}

BENCH_REGISTER("dirty-log-kvm", bench_dirty_log_kvm_main,
	       "guest cost per dirtied page under the kernel's dirty logging, per mode")
