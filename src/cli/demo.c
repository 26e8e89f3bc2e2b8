/* demo.c: `rmapvm demo`: a short, real run of each available backend, then a live migration between two processes. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "cli_migrate.h"
#include "rmapvm/util.h"

/* A free TCP port on 127.0.0.1 (the kernel's pick). */
static int free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl))
		die("demo: cannot find a free TCP port");
	port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

/* Is someone listening on 127.0.0.1:@port? (/proc/net/tcp, state 0A) */
static bool port_listening(int port)
{
	char line[256], want[32];
	FILE *f = fopen("/proc/net/tcp", "r");
	bool found = false;

	if (!f)
		return false;
	snprintf(want, sizeof(want), ":%04X ", port);
	while (fgets(line, sizeof(line), f))
		if (strstr(line, want) && strstr(line, " 0A "))
			found = true;
	fclose(f);
	return found;
}

/*
 * The main job: a guest running a dirtying workload is live-migrated over
 * loopback TCP to an `rmapvm incoming` process, which verifies the memory
 * digest, resumes the guest and checks its workload.
 */
static int demo_migration(bool kvm)
{
	struct run_options opt = {
		.backend = kvm ? "kvm" : "soft",
		.mem_bytes = kvm ? 2ull << 30 : 1ull << 30,
		.vcpus = 2,
		.slots = 4,
		.backing = BACKING_THP,
		.duration_s = 40,
		.migrate_after_s = 3,
		.threads = 2,
		.range_bytes = 64ull << 20,
		.timeout_s = 30,
		.timeout_force = true,
	};
	char uri[64], exe[4096], err[160];
	ssize_t n;
	pid_t child;
	int port = free_port(), status, r, i;

	workload_parse(kvm ? "hotset,write=80,hot=10,frac=90" : "hotset,write=80,hot=10,frac=90,rate=2000000",
		       &opt.workload, err, sizeof(err));
	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%d", port);
	opt.migrate_to = uri;
	printf("\n== live migration: %s guest, %s RAM, 2 vCPUs dirtying a hot set (%s), over %s ==\n",
	       kvm ? "KVM" : "soft-MMU", kvm ? "2 GiB" : "1 GiB", "hotset,write=80,hot=10,frac=90", uri);
	printf("   destination: `rmapvm incoming --listen %s --duration 2` (another process)\n", uri);
	printf("   source: range-wise pre-copy, 2 harvester/sender threads, 64 MiB ranges, "
	       "downtime limit 300 ms\n");
	fflush(stdout);
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		die("demo: cannot find my own executable");
	exe[n] = 0;
	child = fork();
	if (child < 0)
		die("demo: fork: %s", strerror(errno));
	if (child == 0) {
		execl(exe, exe, "incoming", "--listen", uri, "--duration", "2", "--accept-timeout", "60",
		      (char *)NULL);
		_exit(127);
	}
	for (i = 0; i < 500 && !port_listening(port); i++) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };

		nanosleep(&ts, NULL);
	}
	r = cli_run_migrate(&opt);
	if (waitpid(child, &status, 0) < 0)
		die("demo: waitpid: %s", strerror(errno));
	if (r) {
		printf("== demo: the migration did not complete (source exit %d) ==\n", r);
		return 1;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		printf("== demo: the destination did not verify and resume the VM ==\n");
		return 1;
	}
	printf("== demo: migrated, verified (memory digest + the guest's own check) and resumed at the "
	       "destination ==\n");
	return 0;
}

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
	fflush(stdout);
	{
		int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
		bool kvm = fd >= 0 && cli_run_kvm;

		if (fd >= 0)
			close(fd);
		if (!kvm)
			printf("\n(/dev/kvm is not usable here: the migration demo uses the soft MMU)\n");
		return demo_migration(kvm);
	}
}
