/* test_qemu_guest.c: the Multiboot build of the guest boots under qemu-system-x86_64 (TCG, and KVM where it works), runs its workload, verifies itself, stops on a key, survives a QEMU live migration; skips without QEMU. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "rmapvm/util.h"

/*
 * QEMU is driven through QMP on its stdin (-qmp stdio; replies go to a
 * file): the guest's output goes to debugcon (another file), its verdict to
 * isa-debug-exit, which makes QEMU exit with status 1 when the guest verified
 * every page and 3 when it reported a failure.
 */

#define SEND_KEY "{\"execute\": \"send-key\", \"arguments\": {\"keys\": [{\"type\": \"qcode\", \"data\": \"ret\"}]}}"

static char qemu[PATH_MAX];
static char dir[64];

struct qproc {
	pid_t pid;
	int in;			/* QMP commands */
	char log[PATH_MAX];	/* debugcon */
	char out[PATH_MAX];	/* QEMU's stdout/stderr (QMP replies) */
};

static bool find_qemu(void)
{
	const char *path = getenv("PATH"), *p;

	for (p = path ? path : "/usr/bin:/bin"; p && *p;) {
		const char *e = strchr(p, ':');
		size_t n = e ? (size_t)(e - p) : strlen(p);

		snprintf(qemu, sizeof(qemu), "%.*s/qemu-system-x86_64", (int)n, p);
		if (n && !access(qemu, X_OK))
			return true;
		p = e ? e + 1 : NULL;
	}
	return false;
}

#define REQUIRE_QEMU()                                                                             \
	do {                                                                                       \
		if (!qemu[0])                                                                      \
			TEST_SKIP("qemu-system-x86_64 is not installed (apt-get install "        \
				  "qemu-system-x86); the QEMU guest tests need it");               \
	} while (0)

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* One QMP command (a JSON object); replies are read from the output file. */
static void qmp(struct qproc *q, const char *cmd)
{
	char line[512];
	ssize_t n;

	snprintf(line, sizeof(line), "%s\n", cmd);
	n = write(q->in, line, strlen(line));
	assert_int_equal(n, (ssize_t)strlen(line));
}

static void start(struct qproc *q, const char *name, const char *accel, const char *mem,
		  const char *append, const char *incoming)
{
	static int seq;
	char chardev[PATH_MAX + 32];
	const char *argv[40];
	int n = 0, p[2], fd;

	seq++;
	snprintf(q->log, sizeof(q->log), "%s/%s-%d.log", dir, name, seq);
	snprintf(q->out, sizeof(q->out), "%s/%s-%d.out", dir, name, seq);
	snprintf(chardev, sizeof(chardev), "file,id=dc,path=%s", q->log);
	argv[n++] = qemu;
	argv[n++] = "-accel";
	argv[n++] = accel;
	argv[n++] = "-cpu";
	argv[n++] = !strcmp(accel, "kvm") ? "host,-arch-capabilities" : "max";
	argv[n++] = "-m";
	argv[n++] = mem;
	argv[n++] = "-nodefaults";
	argv[n++] = "-no-user-config";
	argv[n++] = "-display";
	argv[n++] = "none";
	argv[n++] = "-qmp";
	argv[n++] = "stdio";
	argv[n++] = "-kernel";
	argv[n++] = RMAPVM_GUEST_MULTIBOOT;
	argv[n++] = "-append";
	argv[n++] = append;
	argv[n++] = "-chardev";
	argv[n++] = chardev;
	argv[n++] = "-device";
	argv[n++] = "isa-debugcon,iobase=0xe9,chardev=dc";
	argv[n++] = "-device";
	argv[n++] = "isa-debug-exit,iobase=0xf4,iosize=4";
	if (incoming) {
		argv[n++] = "-incoming";
		argv[n++] = incoming;
	}
	argv[n] = NULL;
	assert_int_equal(pipe(p), 0);
	q->pid = fork();
	assert_true(q->pid >= 0);
	if (!q->pid) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(p[0], 0);
		close(p[0]);
		close(p[1]);
		fd = open(q->out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(qemu, (char *const *)argv);
		_exit(127);
	}
	close(p[0]);
	q->in = p[1];
	qmp(q, "{\"execute\": \"qmp_capabilities\"}");
}

/* Last @len - 1 bytes of a file. */
static void slurp(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	off_t end = fd >= 0 ? lseek(fd, 0, SEEK_END) : 0;
	ssize_t n = 0;

	if (fd >= 0) {
		lseek(fd, end > (off_t)len - 1 ? end - ((off_t)len - 1) : 0, SEEK_SET);
		n = read(fd, buf, len - 1);
		close(fd);
	}
	buf[n > 0 ? n : 0] = 0;
}

static bool wait_text(const char *path, const char *what, int ms)
{
	char buf[16384];

	for (; ms > 0; ms -= 20) {
		slurp(path, buf, sizeof(buf));
		if (strstr(buf, what))
			return true;
		sleep_ms(20);
	}
	return false;
}

/* Wait for QEMU to exit (at most @ms); its exit status, or -1 (then it is killed). */
static int finish(struct qproc *q, int ms)
{
	int st;

	for (; ms > 0; ms -= 20) {
		if (waitpid(q->pid, &st, WNOHANG) == q->pid) {
			close(q->in);
			return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
		}
		sleep_ms(20);
	}
	kill(q->pid, SIGKILL);
	waitpid(q->pid, NULL, 0);
	close(q->in);
	return -1;
}

static void show(const struct qproc *q)
{
	char buf[4096];

	slurp(q->log, buf, sizeof(buf));
	printf("# guest log:\n%s", buf);
	slurp(q->out, buf, sizeof(buf));
	if (buf[0])
		printf("# qemu output:\n%s", buf);
}

/* Boot, run 20 batches of a 16 MiB region, verify: exit status 1 and the guest's own report. */
static void boot_and_verify(const char *accel)
{
	struct qproc q;
	char buf[4096];
	int st;

	start(&q, accel, accel, "1200M", "mem=16M workload=random write=50 rounds=20 rate=2000000",
	      NULL);
	st = finish(&q, 120000);
	slurp(q.log, buf, sizeof(buf));
	if (st != 1)
		show(&q);
	assert_int_equal(st, 1);
	assert_non_null(strstr(buf, "rmapvm guest: vCPU running"));
	assert_non_null(strstr(buf, "rmapvm guest: verified pages: 0x0000000000001000"));
	assert_non_null(strstr(buf, "rmapvm guest: rounds 20"));
	assert_non_null(strstr(buf, "rmapvm guest: done"));
	printf("# -accel %s: %s", accel, strstr(buf, "rmapvm guest: tsc khz"));
}

static void test_tcg_boot_verifies(void **state)
{
	REQUIRE_QEMU();
	boot_and_verify("tcg");
}

static void test_kvm_boot_verifies(void **state)
{
	REQUIRE_QEMU();
	TEST_REQUIRE_KVM();
	boot_and_verify("kvm");
}

/* The exit status tells a failure from a pass: too little RAM is a BAD_PARAMS report (status 3). */
static void test_failure_is_reported(void **state)
{
	struct qproc q;
	char buf[4096];
	int st;

	REQUIRE_QEMU();
	start(&q, "fail", "tcg", "512M", "mem=16M rounds=2", NULL);
	st = finish(&q, 60000);
	slurp(q.log, buf, sizeof(buf));
	assert_int_equal(st, 3);
	assert_non_null(strstr(buf, "rmapvm guest: FAIL reason 1"));
	assert_null(strstr(buf, "rmapvm guest: done"));
}

/* rounds=0: the guest runs until a key arrives (how the benchmark stops it after a migration). */
static void test_key_stops_the_guest(void **state)
{
	struct qproc q;
	char buf[4096];
	int st;

	REQUIRE_QEMU();
	start(&q, "key", "tcg", "1200M", "mem=16M workload=sweep rounds=0", NULL);
	assert_true(wait_text(q.log, "vCPU running", 60000));
	sleep_ms(300);
	slurp(q.log, buf, sizeof(buf));
	assert_null(strstr(buf, "done"));
	qmp(&q, SEND_KEY);
	st = finish(&q, 60000);
	slurp(q.log, buf, sizeof(buf));
	if (st != 1)
		show(&q);
	assert_int_equal(st, 1);
	assert_non_null(strstr(buf, "rmapvm guest: done"));
}

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (fd >= 0 && !bind(fd, (struct sockaddr *)&a, sizeof(a)) &&
	    !getsockname(fd, (struct sockaddr *)&a, &al))
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

/*
 * QEMU live-migrates the running guest (TCG, loopback TCP); the guest goes
 * on at the destination and, told to stop, verifies every page it wrote on
 * either side.
 */
static void test_tcg_live_migration_verifies(void **state)
{
	const char *append = "mem=32M workload=random write=100 rounds=0 rate=3000000";
	struct qproc src, dst;
	char incoming[64], cmd[128], buf[16384];
	int st, port = free_port();

	REQUIRE_QEMU();
	assert_true(port > 0);
	snprintf(incoming, sizeof(incoming), "tcp:127.0.0.1:%d", port);
	start(&dst, "dst", "tcg", "1200M", append, incoming);
	start(&src, "src", "tcg", "1200M", append, NULL);
	assert_true(wait_text(src.log, "vCPU running", 60000));
	sleep_ms(500);
	snprintf(cmd, sizeof(cmd),
		 "{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"%s\"}}", incoming);
	qmp(&src, "{\"execute\": \"migrate-set-parameters\", \"arguments\": "
		  "{\"downtime-limit\": 300, \"max-bandwidth\": 107374182400}}");
	qmp(&src, "{\"execute\": \"migrate-set-capabilities\", \"arguments\": {\"capabilities\": "
		  "[{\"capability\": \"auto-converge\", \"state\": true}]}}");
	qmp(&src, cmd);
	for (st = 0; st < 1500; st++) {
		qmp(&src, "{\"execute\": \"query-migrate\"}");
		sleep_ms(40);
		slurp(src.out, buf, 2048);
		if (strstr(buf, "\"status\": \"completed\"") || strstr(buf, "\"status\": \"failed\""))
			break;
	}
	if (!strstr(buf, "\"status\": \"completed\"")) {
		show(&src);
		fail_msg("the migration did not complete");
	}
	slurp(src.log, buf, sizeof(buf));
	assert_null(strstr(buf, "done"));
	sleep_ms(300);
	qmp(&dst, SEND_KEY);
	st = finish(&dst, 60000);
	qmp(&src, "{\"execute\": \"quit\"}");
	finish(&src, 10000);
	slurp(dst.log, buf, sizeof(buf));
	if (st != 1)
		show(&dst);
	assert_int_equal(st, 1);
	assert_non_null(strstr(buf, "rmapvm guest: verified pages: 0x0000000000002000"));
	assert_non_null(strstr(buf, "rmapvm guest: done"));
	printf("# migrated under TCG; destination: %s", strstr(buf, "rmapvm guest: writes"));
}

static void cleanup_dir(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (dir[0] && system(cmd))
		printf("# could not remove %s\n", dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tcg_boot_verifies),
		cmocka_unit_test(test_kvm_boot_verifies),
		cmocka_unit_test(test_failure_is_reported),
		cmocka_unit_test(test_key_stops_the_guest),
		cmocka_unit_test(test_tcg_live_migration_verifies),
	};
	int r;

	if (!find_qemu()) {
		qemu[0] = 0;
		printf("# SKIP: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86); "
		       "the QEMU guest tests are skipped\n");
	}
	snprintf(dir, sizeof(dir), "/tmp/rmapvm-test-qemu-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	r = cmocka_run_group_tests(tests, NULL, NULL);
	cleanup_dir();
	return r;
}
