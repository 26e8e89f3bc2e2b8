/* test_kvm_state.c: vCPU state save/restore: a VM stopped mid-run continues in another process to a verified end; damaged state is caught. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "rmapvm/kvm.h"
#include "rmapvm/kvm_guest_abi.h"

#define NR_VCPUS   2
#define MAX_ROUNDS 3000

static const struct kvm_vm_config base_cfg = {
	.mem_bytes = 32ull << 20,
	.nr_vcpus = NR_VCPUS,
	.nr_slots = 2,
	.backing = BACKING_ANON_4K,
	.workload = { .pattern = WL_RANDOM, .write_pct = 70, .seed = 7 },
	.guest_flags = GUEST_F_VERIFY_READS | GUEST_F_VERIFY_END | GUEST_F_SYNC_EXITS,
	.batch = 2048,
	.max_rounds = MAX_ROUNDS,
};

static const char *self_exe;

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000l };

	nanosleep(&ts, NULL);
}

/* Run until every vCPU finished a few batches (and none all of them), then pause. */
static struct kvm_vm *run_partway(uint64_t min_batches)
{
	struct kvm_vm *vm;
	char err[512];
	int i, tries;

	if (kvm_vm_create(&base_cfg, &vm, err, sizeof(err)))
		fail_msg("kvm_vm_create: %s", err);
	assert_int_equal(kvm_vm_start(vm), 0);
	for (tries = 0; tries < 2000; tries++) {
		struct kvm_vcpu_stats st;
		uint64_t min = UINT64_MAX;

		for (i = 0; i < NR_VCPUS; i++) {
			kvm_vm_vcpu_stats(vm, i, &st);
			min = MIN(min, st.guest_batches);
		}
		if (min >= min_batches)
			break;
		sleep_ms(2);
	}
	assert_int_equal(kvm_vm_pause(vm), 0);
	for (i = 0; i < NR_VCPUS; i++) {
		struct kvm_vcpu_stats st;

		kvm_vm_vcpu_stats(vm, i, &st);
		assert_true(st.guest_batches >= min_batches);
		assert_true(st.guest_batches < MAX_ROUNDS);
		assert_int_equal(st.state, KVM_VCPU_PAUSED);
	}
	return vm;
}

static void tmp_path(char *buf, size_t len, const char *tag)
{
	snprintf(buf, len, "/tmp/rmapvm-kvm-%s-%d.snap", tag, (int)getpid());
}

/* Child side: restore @path, run to the end; exit 0 if the guest verified. */
static int restore_main(const char *path)
{
	struct kvm_vm *vm;
	struct kvm_vcpu_stats st;
	char err[512];
	int r, i;

	r = kvm_vm_restore(path, NULL, NULL, &vm, err, sizeof(err));
	if (r) {
		printf("# restore: %s\n", err);
		return 2;
	}
	for (i = 0; i < NR_VCPUS; i++) {
		kvm_vm_vcpu_stats(vm, i, &st);
		printf("# restored vCPU %d at batch %llu of %d\n", i,
		       (unsigned long long)st.guest_batches, MAX_ROUNDS);
		if (st.guest_batches < 3)
			return 3; /* memory did not come along */
	}
	kvm_vm_start(vm);
	r = kvm_vm_wait(vm, 60);
	if (r) {
		printf("# restored guest: %s\n", r == -ETIMEDOUT ? "timed out" : kvm_vm_error(vm));
		kvm_vm_destroy(vm);
		return 1;
	}
	for (i = 0; i < NR_VCPUS; i++) {
		kvm_vm_vcpu_stats(vm, i, &st);
		if (st.state != KVM_VCPU_DONE || st.guest_batches != MAX_ROUNDS) {
			printf("# vCPU %d ended in state %d after %llu batches\n", i, st.state,
			       (unsigned long long)st.guest_batches);
			kvm_vm_destroy(vm);
			return 1;
		}
	}
	printf("# restored VM ran to the end; guest verification passed\n");
	kvm_vm_destroy(vm);
	return 0;
}

/* Save mid-run, destroy the source, continue in a fresh process. */
static void test_restore_in_other_process(void **state)
{
	struct kvm_vm *vm;
	char path[128];
	pid_t pid;
	int status;

	TEST_REQUIRE_KVM();
	vm = run_partway(3);
	tmp_path(path, sizeof(path), "xproc");
	if (kvm_vm_save(vm, path))
		fail_msg("save: %s", kvm_vm_error(vm));
	kvm_vm_destroy(vm);

	fflush(stdout);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		execl(self_exe, self_exe, "--restore", path, (char *)NULL);
		_exit(127);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	unlink(path);
	assert_true(WIFEXITED(status));
	if (WEXITSTATUS(status))
		fail_msg("restored VM failed in the other process (exit %d)", WEXITSTATUS(status));
}

/* The blob round-trips through the backend interface, and a bad blob is refused. */
static void test_blob_roundtrip(void **state)
{
	struct kvm_vm *vm;
	struct backend be;
	struct kvm_vcpu_state *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
	size_t used = 0;

	TEST_REQUIRE_KVM();
	vm = run_partway(3);
	kvm_backend_init(&be, vm);
	assert_int_equal(be.ops->save_vcpu(&be, 1, a, sizeof(*a), &used), 0);
	assert_int_equal(used, sizeof(*a));
	assert_int_equal(be.ops->save_vcpu(&be, 1, a, 100, &used), -ENOSPC);
	assert_true(a->nr_msrs > 0);
	assert_int_equal(be.ops->load_vcpu(&be, 1, a, sizeof(*a)), 0);
	assert_int_equal(kvm_vcpu_save_state(vm, 1, b), 0);
	assert_memory_equal(a->regs, b->regs, sizeof(a->regs));
	assert_memory_equal(a->sregs, b->sregs, sizeof(a->sregs));
	a->version = KVM_VCPU_STATE_VERSION + 1;
	assert_int_equal(be.ops->load_vcpu(&be, 1, a, sizeof(*a)), -EINVAL);
	assert_non_null(strstr(kvm_vm_error(vm), "version"));
	assert_int_equal(be.ops->load_vcpu(&be, 1, a, sizeof(*a) - 8), -EINVAL);
	printf("# vCPU state blob: %zu bytes, %u MSRs, xsave %u bytes, flags 0x%x\n", sizeof(*b),
	       b->nr_msrs, b->xsave_len, b->flags);
	be.ops->destroy(&be);
	free(a);
	free(b);
}

/*
 * The guest's checks bite: restoring with xmm7 damaged in the XSAVE image
 * makes the guest report an FPU failure; a flipped stamp in RAM makes its
 * verification fail.
 */
static void test_damage_is_caught(void **state)
{
	struct kvm_vm *vm;
	struct kvm_vcpu_state *st = malloc(sizeof(*st));
	uint64_t first, n, p, damaged;
	int r;

	TEST_REQUIRE_KVM();
	vm = run_partway(3);
	assert_int_equal(kvm_vcpu_save_state(vm, 0, st), 0);
	assert_true(st->flags & KVM_STATE_F_XSAVE);
	st->xsave[160 + 7 * 16] ^= 0x5a; /* legacy area: XMM7 starts at byte 288 - 128 */
	assert_int_equal(kvm_vcpu_load_state(vm, 0, st), 0);
	assert_int_equal(kvm_vm_resume(vm), 0);
	r = kvm_vm_wait(vm, 60);
	assert_int_equal(r, -EIO);
	printf("# damaged xmm7: %s\n", kvm_vm_error(vm));
	assert_non_null(strstr(kvm_vm_error(vm), "FPU"));
	kvm_vm_destroy(vm);

	vm = run_partway(12);
	kvm_vm_vcpu_region(vm, 1, &first, &n);
	/* Damage every written page of vCPU 1: one batch cannot rewrite them all. */
	for (p = first, damaged = 0; p < first + n; p++)
		if (*kvm_vm_ram_page(vm, p)) {
			*kvm_vm_ram_page(vm, p) ^= 1ull << 40;
			damaged++;
		}
	assert_true(damaged > base_cfg.batch); /* deterministic: >= damaged - batch survive */
	assert_int_equal(kvm_vm_request_stop(vm), 0);
	assert_int_equal(kvm_vm_resume(vm), 0);
	assert_int_equal(kvm_vm_wait(vm, 60), -EIO);
	printf("# damaged stamp: %s\n", kvm_vm_error(vm));
	assert_non_null(strstr(kvm_vm_error(vm), "vCPU 1: guest failure"));
	kvm_vm_destroy(vm);
	free(st);
}

/* A damaged snapshot file is refused with a clear message. */
static void test_bad_snapshot(void **state)
{
	struct kvm_vm *vm, *vm2 = NULL;
	char path[128], err[512];
	uint8_t byte;
	int fd;

	TEST_REQUIRE_KVM();
	vm = run_partway(3);
	tmp_path(path, sizeof(path), "bad");
	assert_int_equal(kvm_vm_save(vm, path), 0);
	kvm_vm_destroy(vm);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &byte, 1, 1 << 20), 1);
	byte ^= 0xff;
	assert_int_equal(pwrite(fd, &byte, 1, 1 << 20), 1);
	close(fd);
	assert_int_equal(kvm_vm_restore(path, NULL, NULL, &vm2, err, sizeof(err)), -EBADMSG);
	assert_null(vm2);
	assert_non_null(strstr(err, "checksum"));
	fd = open(path, O_RDWR | O_TRUNC);
	assert_int_equal(write(fd, "junk", 4), 4);
	close(fd);
	assert_true(kvm_vm_restore(path, NULL, NULL, &vm2, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "not a version"));
	unlink(path);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_restore_in_other_process),
		cmocka_unit_test(test_blob_roundtrip),
		cmocka_unit_test(test_damage_is_caught),
		cmocka_unit_test(test_bad_snapshot),
	};

	self_exe = "/proc/self/exe";
	if (argc == 3 && !strcmp(argv[1], "--restore"))
		return restore_main(argv[2]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
