/* demo.c: `rmapvm demo`: a short, real run of each available backend (extended by migration later). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#pragma weak cli_run_kvm

int cli_demo(int argc, char **argv)
{
	struct run_options opt = {
		.backend = "soft",
		.mem_bytes = 512ull << 20,
		.vcpus = 2,
		.slots = 4,
		.backing = BACKING_THP,
		.duration_s = 2,
	};
	char err[128];
	int r;

	printf("== rmapvm demo: soft MMU, 2 vCPUs writing self-verifying stamps ==\n");
	workload_parse("hotset,write=80,hot=10,frac=90", &opt.workload, err, sizeof(err));
	r = cli_run_soft(&opt);
	if (r)
		return r;
	return 0;
}
