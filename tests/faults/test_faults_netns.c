/* test_faults_netns.c: tc netem delay/loss (tbf where netem is missing) on the loopback of a network namespace of our own. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faultvm.h"
#include "harness.h"
#include "rmapvm/util.h"

/*
 * The test creates a namespace (`ip netns add rmapvm-faults-PID`), brings
 * its loopback up, shapes it with tc, and moves the test's main thread into
 * it with setns() before the VM, the destination thread and their sockets
 * are created, so source and destination talk over that namespace's
 * 127.0.0.1 and nothing else. Needs root and iproute2; skips otherwise.
 */

static char ns_name[64];
static int orig_ns = -1;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int sh(const char *fmt, ...)
{
	char cmd[512];
	va_list ap;
	int r;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	r = system(cmd);
	return r == -1 ? -1 : WEXITSTATUS(r);
}

static int setup(void **state)
{
	snprintf(ns_name, sizeof(ns_name), "rmapvm-faults-%d", getpid());
	return 0;
}

static int teardown(void **state)
{
	if (orig_ns >= 0) {
		setns(orig_ns, CLONE_NEWNET);
		close(orig_ns);
		orig_ns = -1;
	}
	sh("ip netns del %s >/dev/null 2>&1", ns_name);
	return 0;
}

/* Create the namespace and enter it (this thread). False with @why if impossible. */
static bool ns_enter(char *why, size_t len)
{
	char path[128];
	int fd;

	if (geteuid() != 0) {
		snprintf(why, len, "needs root for ip netns / tc");
		return false;
	}
	if (sh("command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1")) {
		snprintf(why, len, "iproute2 (ip, tc) is not installed");
		return false;
	}
	if (sh("ip netns add %s >/dev/null 2>&1", ns_name) ||
	    sh("ip -n %s link set lo up >/dev/null 2>&1", ns_name)) {
		snprintf(why, len, "cannot create network namespace %s", ns_name);
		return false;
	}
	snprintf(path, sizeof(path), "/run/netns/%s", ns_name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	orig_ns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || orig_ns < 0 || setns(fd, CLONE_NEWNET)) {
		snprintf(why, len, "cannot enter namespace %s: %s", ns_name, strerror(errno));
		if (fd >= 0)
			close(fd);
		return false;
	}
	close(fd);
	return true;
}

/* Apply a root qdisc on this namespace's lo ("" removes it). 0 or the tc exit status. */
static int qdisc(const char *spec)
{
	sh("tc qdisc del dev lo root >/dev/null 2>&1");
	if (!spec[0])
		return 0;
	return sh("tc qdisc add dev lo root %s >/dev/null 2>&1", spec);
}

/* One attempt over the shaped loopback; on failure, clear the qdisc and retry. */
static void shaped_attempt(const char *what, uint64_t mem, double timeout_s)
{
	struct mig_params p;
	struct fdest d;
	struct fvm v;
	char uri[64], msg[300];
	uint64_t t0;
	int r;

	fvm_create(&v, mem, 2, 2, "hotset,write=50,hot=10,frac=90");
	fsleep_ms(100);
	fdest_start(&d, "tcp:127.0.0.1:0", 8000);
	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%u", fdest_port(&d));
	fvm_params(&v, &p, uri);
	p.timeout_s = timeout_s;
	p.ack_timeout_ms = 8000;
	t0 = now_ns();
	r = fvm_migrate(&v, &p, msg, sizeof(msg));
	printf("# %s: source %s after %llu ms: %s\n", what, r ? "failed" : "completed",
	       (unsigned long long)((now_ns() - t0) / 1000000), msg);
	if (r == 0) {
		fdest_check_and_destroy(&d, &v);
		fvm_destroy_verified(&v);
		return;
	}
	fdest_join(&d);
	printf("# %s: destination: %s\n", what, d.r ? d.err : "verified");
	assert_int_not_equal(d.r, 0);
	fdest_cleanup(&d);
	fvm_assert_running(v.svm, "source after the failed attempt");
	assert_int_equal(qdisc(""), 0);
	fvm_retry_and_check(&v);
	fvm_destroy_verified(&v);
}

static void test_netns_netem(void **state)
{
	char why[200];

	if (!ns_enter(why, sizeof(why)))
		TEST_SKIP("netns: %s", why);
	if (qdisc("netem delay 10ms 2ms loss 2%")) {
		printf("# SKIP netem: the kernel has no netem qdisc (CONFIG_NET_SCH_NETEM); "
		       "using a tbf rate limit on the namespace's loopback instead\n");
		assert_int_equal(qdisc("tbf rate 400mbit burst 512kb latency 100ms"), 0);
		shaped_attempt("netns lo: tbf 400 Mbit/s", 24ull << 20, 10);
		assert_int_equal(qdisc("tbf rate 40mbit burst 64kb latency 50ms"), 0);
		shaped_attempt("netns lo: tbf 40 Mbit/s, 3 s timeout", 24ull << 20, 3);
		return;
	}
	shaped_attempt("netns lo: netem delay 10 ms, loss 2 %", 16ull << 20, 15);
	assert_int_equal(qdisc("netem delay 50ms loss 25%"), 0);
	shaped_attempt("netns lo: netem delay 50 ms, loss 25 %, 3 s timeout", 16ull << 20, 3);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_netns_netem, setup, teardown),
	};

	fchild_main(argc, argv);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
