/* incoming.c: `rmapvm incoming --listen URI`: receive a migrating VM, verify it, resume it, run it on. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "cli_migrate.h"
#include "rmapvm/kvm.h"
#include "rmapvm/migrate.h"
#include "rmapvm/soft_vm.h"
#include "rmapvm/util.h"

struct dest_ctx {
	struct cli_vm vm;
	bool built;
};

static int dest_create(void *opaque, const char *kind, const void *desc, size_t len,
		       uint32_t nr_vcpus, struct backend **out, char *err, size_t errlen)
{
	struct dest_ctx *c = opaque;
	char d[MIG_MAX_DESC + 1];
	int r;

	if (len > MIG_MAX_DESC || !desc) {
		snprintf(err, errlen, "no machine description");
		return -EINVAL;
	}
	memcpy(d, desc, len);
	d[len] = 0;
	r = cli_vm_from_desc(&c->vm, kind, d, nr_vcpus, err, errlen);
	if (r)
		return r;
	c->built = true;
	*out = c->vm.be;
	return 0;
}

static void usage(FILE *f)
{
	fputs("usage: rmapvm incoming --listen URI [--json] [--duration T] [--accept-timeout T]\n"
	      "  URI: tcp:HOST:PORT | unix:PATH | file:PATH (restore a snapshot)\n"
	      "  --duration T  run the resumed guest this long (default: until its workload\n"
	      "                ends; 2 s for a workload without an end)\n"
	      "exit status 0 only when the VM was received, verified and resumed, and its\n"
	      "workload verified at the end\n",
	      f);
}

int cli_incoming(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "json", no_argument, NULL, 'j' },
		{ "duration", required_argument, NULL, 'd' },
		{ "accept-timeout", required_argument, NULL, 'a' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct mig_dest_params p = { 0 };
	struct mig_dest_info info;
	struct dest_ctx ctx = { 0 };
	struct mig_dest_ops ops = { .create = dest_create, .opaque = &ctx };
	struct mig_listener *l;
	struct backend *be;
	const char *uri = NULL;
	double duration = -1, accept_s = 0;
	bool json = false, workload_ends;
	char err[600], a[32];
	uint64_t t0, w0;
	int c, r;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'l':
			uri = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'd':
			duration = cli_parse_duration("--duration", optarg);
			break;
		case 'a':
			accept_s = cli_parse_duration("--accept-timeout", optarg);
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
		die("incoming: unexpected argument '%s'", argv[optind]);
	if (!uri)
		die("incoming: --listen URI is required");
	r = mig_listen(uri, &l, err, sizeof(err));
	if (r)
		die("incoming: %s", err);
	p.accept_timeout_ms = (uint32_t)(accept_s * 1000);
	if (!json)
		fprintf(stderr, "rmapvm incoming: waiting on %s\n", mig_listener_uri(l));
	else
		printf("{\"event\":\"listening\",\"uri\":\"%s\"}\n", mig_listener_uri(l));
	fflush(stdout);
	r = mig_incoming(l, &p, &ops, &be, &info, err, sizeof(err));
	mig_listener_close(l);
	if (r) {
		if (ctx.built && ctx.vm.svm)
			soft_vm_destroy(ctx.vm.svm); /* the backend is gone, the soft VM is ours */
		if (json)
			printf("{\"event\":\"incoming\",\"status\":\"rejected\",\"error\":\"%s\"}\n", err);
		fprintf(stderr, "rmapvm incoming: rejected, the VM was not resumed: %s\n", err);
		return 1;
	}
	if (json)
		printf("{\"event\":\"incoming\",\"status\":\"verified\",\"backend\":\"%s\",\"channels\":%u,"
		       "\"rounds\":%u,\"records\":%llu,\"pages\":%llu,\"zero-pages\":%llu,\"bytes\":%llu,"
		       "\"total-ms\":%llu,\"verify-ms\":%llu,\"load-ms\":%llu,\"tail-ms\":%llu,\"digest\":\"%016llx%016llx\"}\n",
		       info.kind, info.channels, info.rounds, (unsigned long long)info.records,
		       (unsigned long long)info.pages, (unsigned long long)info.zero_pages,
		       (unsigned long long)info.bytes, (unsigned long long)info.total_ms,
		       (unsigned long long)info.verify_ms, (unsigned long long)info.load_ms,
		       (unsigned long long)info.tail_ms, (unsigned long long)info.total_hi,
		       (unsigned long long)info.total_lo);
	else
		printf("incoming: received a %s VM over %u channel(s): %u rounds, %llu pages + %llu zero "
		       "pages, %s; memory digest %016llx%016llx verified in %llu ms; resuming\n",
		       info.kind, info.channels, info.rounds, (unsigned long long)info.pages,
		       (unsigned long long)info.zero_pages, fmt_bytes(info.bytes, a, sizeof(a)),
		       (unsigned long long)info.total_hi, (unsigned long long)info.total_lo,
		       (unsigned long long)info.verify_ms);
	fflush(stdout);
	r = cli_vm_start(&ctx.vm);
	if (r) {
		fprintf(stderr, "rmapvm incoming: cannot resume: %s\n", strerror(-r));
		cli_vm_destroy(&ctx.vm);
		return 1;
	}
	t0 = now_ns();
	w0 = cli_vm_writes(&ctx.vm);
	workload_ends = ctx.vm.svm ? soft_vm_config(ctx.vm.svm)->max_accesses != 0
				   : kvm_vm_config(ctx.vm.kvm)->max_rounds != 0;
	for (;;) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		double el = (double)(now_ns() - t0) / 1e9;

		if (cli_vm_done(&ctx.vm))
			break;
		if (duration >= 0 ? el >= duration : (!workload_ends && el >= 2))
			break;
		nanosleep(&ts, NULL);
	}
	r = cli_vm_finish(&ctx.vm, err, sizeof(err));
	if (json)
		printf("{\"event\":\"resumed-run\",\"seconds\":%.3f,\"writes\":%llu,\"verify\":\"%s\"}\n",
		       (double)(now_ns() - t0) / 1e9,
		       (unsigned long long)(cli_vm_writes(&ctx.vm) - w0), r ? err : "ok");
	else
		printf("incoming: the resumed VM ran %.2f s here, %llu more writes, verify: %s\n",
		       (double)(now_ns() - t0) / 1e9,
		       (unsigned long long)(cli_vm_writes(&ctx.vm) - w0), r ? err : "ok");
	cli_vm_destroy(&ctx.vm);
	return r ? 1 : 0;
}
