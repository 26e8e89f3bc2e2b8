/* test_faults_proc.c: process faults: a killed destination, a full disk under file:, a destination out of memory (cgroup). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faultproxy.h"
#include "faultvm.h"
#include "harness.h"
#include "rmapvm/util.h"

static void warm_up(struct fvm *v, uint64_t writes)
{
	uint64_t t0 = now_ns();

	while (fvm_writes(v->svm) < writes && now_ns() - t0 < 3000000000ull)
		fsleep_ms(5);
}

static void kill_hook(void *arg)
{
	kill(*(pid_t *)arg, SIGKILL);
}

/* After a failed attempt: a clear reason, the source runs; then a clean retry verifies. */
static void after_failure(struct fvm *v, int r, const char *what, const char *msg)
{
	printf("# %s: source: %s\n", what, r ? msg : "completed");
	if (r == 0)
		fail_msg("%s: the migration completed", what);
	assert_true(strlen(msg) > 8);
	fvm_assert_running(v->svm, "source after the failed attempt");
	fvm_retry_and_check(v);
	fvm_destroy_verified(v);
}

/* SIGKILL the destination process when 4 MiB of round 0 went through. */
static void test_kill_destination(void **state)
{
	uint16_t port = fp_free_port();
	struct fp_fault f = { .kind = FP_HOOK, .dir = FP_S2D, .conn = 0, .at = 4 << 20,
			      .hook = kill_hook };
	struct faultproxy *px;
	struct fchild ch;
	struct mig_params p;
	struct fvm v;
	char uri[64], msg[300];
	int r, st;

	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%u", port);
	fchild_start(&ch, uri, 15000, NULL, NULL);
	f.hook_arg = &ch.pid;
	assert_int_equal(fp_start(port, &f, &px), 0);
	fvm_create(&v, 32ull << 20, 2, 2, "random,write=60");
	warm_up(&v, 20000);
	fvm_params(&v, &p, fp_uri(px));
	r = fvm_migrate(&v, &p, msg, sizeof(msg));
	fp_stop(px);
	st = fchild_wait(&ch);
	printf("# kill -9 destination mid round 0: destination %s\n",
	       WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "exited");
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
	after_failure(&v, r, "kill -9 destination mid round 0", msg);
}

struct kill_at_round0 {
	pid_t pid;
	bool killed;
};

static void kill_cb(void *opaque, const struct mig_round_info *ri)
{
	struct kill_at_round0 *k = opaque;

	if (!k->killed) {
		k->killed = true;
		kill(k->pid, SIGKILL);
	}
}

/*
 * The destination process dies as the switch-over starts: round 0 converges
 * (a generous downtime limit), the callback kills the destination, and the
 * stop-and-copy (vCPUs paused) runs into a dead peer. The source must
 * resume its vCPUs.
 */
static void test_kill_destination_at_switchover(void **state)
{
	struct kill_at_round0 k = { 0 };
	struct mig_params p;
	struct mig_info info;
	struct fchild ch;
	struct fvm v;
	char uri[64], msg[300];
	int r, st;

	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%u", fp_free_port());
	fchild_start(&ch, uri, 15000, NULL, NULL);
	k.pid = ch.pid;
	fvm_create(&v, 16ull << 20, 2, 1, "random,write=60");
	warm_up(&v, 10000);
	fvm_params(&v, &p, uri);
	p.downtime_ms = 60000;
	p.ack_timeout_ms = 4000;
	r = mig_source_migrate(v.ms, &p, kill_cb, &k);
	mig_source_info(v.ms, &info);
	snprintf(msg, sizeof(msg), "%s", r ? info.error_msg : "completed");
	st = fchild_wait(&ch);
	printf("# destination killed at the switch-over: destination %s; source state %s, "
	       "%llu pages sent while paused\n",
	       WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "exited", mig_state_name(info.state),
	       (unsigned long long)info.final_pages);
	after_failure(&v, r, "destination killed at the switch-over", msg);
}

/* file: migration onto a 1 MiB tmpfs: ENOSPC. */
static void test_disk_full(void **state)
{
	char dir[] = "/tmp/rmapvm-faults-fsXXXXXX", uri[200], path[128], msg[300];
	struct mig_params p;
	struct fvm v;
	int r;

	assert_non_null(mkdtemp(dir));
	if (mount("rmapvm-faults", dir, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=700")) {
		int e = errno;

		rmdir(dir);
		TEST_SKIP("cannot mount a small tmpfs (%s): needs root / CAP_SYS_ADMIN", strerror(e));
	}
	snprintf(path, sizeof(path), "%s/vm.img", dir);
	snprintf(uri, sizeof(uri), "file:%s", path);
	fvm_create(&v, 8ull << 20, 2, 2, "random,write=60");
	warm_up(&v, 10000);
	fvm_params(&v, &p, uri);
	r = fvm_migrate(&v, &p, msg, sizeof(msg));
	umount2(dir, MNT_DETACH);
	rmdir(dir);
	if (r == 0)
		fail_msg("file: migration onto a full disk completed");
	if (!strstr(msg, "No space left"))
		fail_msg("disk full: unclear reason '%s'", msg);
	after_failure(&v, r, "file: onto a full 1 MiB tmpfs", msg);
}

/* file: migration: a retry onto a disk with room, then restore from the file and verify. */
static void test_file_retry_restores(void **state)
{
	char path[128], uri[200], msg[300];
	struct mig_params p;
	struct fdest d;
	struct fvm v;

	snprintf(path, sizeof(path), "/tmp/rmapvm-faults-%d.img", getpid());
	snprintf(uri, sizeof(uri), "file:%s", path);
	fvm_create(&v, 8ull << 20, 2, 2, "random,write=60");
	warm_up(&v, 10000);
	/* an unwritable place first */
	fvm_params(&v, &p, "file:/proc/rmapvm-no-such-dir/vm.img");
	assert_true(fvm_migrate(&v, &p, msg, sizeof(msg)) < 0);
	printf("# file: into a missing directory: %s\n", msg);
	fvm_assert_running(v.svm, "source after the failed attempt");
	fvm_params(&v, &p, uri);
	if (fvm_migrate(&v, &p, msg, sizeof(msg)))
		fail_msg("file: migration failed: %s", msg);
	fdest_start(&d, uri, 5000);
	fdest_check_and_destroy(&d, &v);
	unlink(path);
	fvm_destroy_verified(&v);
}

/* ---- out of memory: the destination process under a memory cgroup ---- */

static char cg_dir[256];
static bool cg_v2;

static bool write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	bool ok;

	if (fd < 0)
		return false;
	ok = write(fd, s, strlen(s)) == (ssize_t)strlen(s);
	close(fd);
	return ok;
}

static bool file_has(const char *path, const char *word)
{
	char buf[512] = "";
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	return strstr(buf, word) != NULL;
}

/* A memory cgroup of @limit bytes (v2, else v1); false (with @why) if none can be made. */
static bool cg_create(uint64_t limit, char *why, size_t len)
{
	static const char *const v2_roots[] = { "/sys/fs/cgroup", "/sys/fs/cgroup/unified" };
	char p[320], v[32];
	unsigned int i;

	snprintf(v, sizeof(v), "%llu", (unsigned long long)limit);
	for (i = 0; i < 2; i++) {
		snprintf(p, sizeof(p), "%s/cgroup.controllers", v2_roots[i]);
		if (!file_has(p, "memory"))
			continue;
		snprintf(p, sizeof(p), "%s/cgroup.subtree_control", v2_roots[i]);
		write_file(p, "+memory");
		snprintf(cg_dir, sizeof(cg_dir), "%s/rmapvm-faults-%d", v2_roots[i], getpid());
		if (mkdir(cg_dir, 0755))
			continue;
		snprintf(p, sizeof(p), "%s/memory.max", cg_dir);
		if (!write_file(p, v)) {
			rmdir(cg_dir);
			continue;
		}
		snprintf(p, sizeof(p), "%s/memory.swap.max", cg_dir);
		write_file(p, "0");
		cg_v2 = true;
		return true;
	}
	snprintf(cg_dir, sizeof(cg_dir), "/sys/fs/cgroup/memory/rmapvm-faults-%d", getpid());
	if (!mkdir(cg_dir, 0755)) {
		snprintf(p, sizeof(p), "%s/memory.limit_in_bytes", cg_dir);
		if (write_file(p, v)) {
			snprintf(p, sizeof(p), "%s/memory.memsw.limit_in_bytes", cg_dir);
			write_file(p, v);
			cg_v2 = false;
			return true;
		}
		rmdir(cg_dir);
	}
	snprintf(why, len, "no cgroup v2 memory controller and no writable v1 memory hierarchy");
	return false;
}

static void cg_join(void *arg)
{
	char p[320];

	snprintf(p, sizeof(p), "%s/cgroup.procs", cg_dir);
	if (!write_file(p, "0"))
		_exit(126);
}

static void test_destination_oom(void **state)
{
	uint16_t port = fp_free_port();
	struct mig_params p;
	struct fchild ch;
	struct fvm v;
	char uri[64], msg[300], why[200];
	int r, st, i;

	if (!cg_create(64ull << 20, why, sizeof(why)))
		TEST_SKIP("destination OOM: %s", why);
	printf("# memory cgroup %s (%s), limit 64 MiB\n", cg_dir, cg_v2 ? "v2" : "v1");
	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%u", port);
	fchild_start(&ch, uri, 15000, cg_join, NULL);
	/* a 256 MiB guest whose every page is written */
	fvm_create(&v, 256ull << 20, 2, 4, "random,write=100");
	warm_up(&v, 600000);
	fvm_params(&v, &p, uri);
	r = fvm_migrate(&v, &p, msg, sizeof(msg));
	st = fchild_wait(&ch);
	for (i = 0; i < 50 && rmdir(cg_dir); i++)
		fsleep_ms(20);
	printf("# destination under a 64 MiB memory limit: %s%s\n",
	       WIFSIGNALED(st) ? "killed by " : "exited: ",
	       WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : ch.out);
	if (!WIFSIGNALED(st) && WEXITSTATUS(st) == 0)
		fail_msg("the destination fit in 64 MiB: the test does not exercise OOM");
	after_failure(&v, r, "destination out of memory (cgroup)", msg);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kill_destination),
		cmocka_unit_test(test_kill_destination_at_switchover),
		cmocka_unit_test(test_disk_full),
		cmocka_unit_test(test_file_retry_restores),
		cmocka_unit_test(test_destination_oom),
	};

	fchild_main(argc, argv);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
