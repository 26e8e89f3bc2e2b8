/* test_kvm_bad_input.c: bad requests to the VMM and to the kernel end in a clear error, never a crash; unexpected guest exits are reported. */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"
#include "rmapvm/kvm.h"
#include "rmapvm/kvm_guest_abi.h"

static struct kvm_vm_config small_cfg(void)
{
	struct kvm_vm_config cfg = {
		.mem_bytes = 4ull << 20,
		.nr_vcpus = 1,
		.nr_slots = 1,
		.backing = BACKING_ANON_4K,
		.workload = { .pattern = WL_SWEEP, .write_pct = 100 },
		.guest_flags = GUEST_F_VERIFY_END,
		.max_rounds = 2,
	};

	return cfg;
}

static struct kvm_vm *make_vm(const struct kvm_vm_config *cfg)
{
	struct kvm_vm *vm;
	char err[512];

	if (kvm_vm_create(cfg, &vm, err, sizeof(err)))
		fail_msg("kvm_vm_create: %s", err);
	return vm;
}

static void test_ring_size(void **state)
{
	struct kvm_vm_config cfg = small_cfg();
	struct kvm_caps caps;
	struct kvm_vm *vm = NULL;
	char err[512];
	int kvm_fd, vm_fd;
	struct kvm_enable_cap ec = { .cap = KVM_CAP_DIRTY_LOG_RING, .args = { 1000 * 16 } };

	TEST_REQUIRE_KVM();
	assert_int_equal(kvm_probe(&caps), 0);
	if (!caps.ring_max_bytes)
		TEST_SKIP("this kernel has no KVM_CAP_DIRTY_LOG_RING");
	cfg.ring_entries = 1000;
	assert_int_equal(kvm_vm_create(&cfg, &vm, err, sizeof(err)), -EINVAL);
	assert_null(vm);
	assert_non_null(strstr(err, "not a power of two"));
	printf("# ring of 1000 entries: %s\n", err);
	cfg.ring_entries = 16; /* 256 bytes: below one page */
	assert_int_equal(kvm_vm_create(&cfg, &vm, err, sizeof(err)), -EINVAL);
	cfg.ring_entries = caps.ring_max_bytes / 16 * 2;
	assert_int_equal(kvm_vm_create(&cfg, &vm, err, sizeof(err)), -EINVAL);
	printf("# ring too large: %s\n", err);

	/* The kernel says the same when asked directly. */
	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	assert_true(vm_fd >= 0);
	assert_int_equal(ioctl(vm_fd, KVM_ENABLE_CAP, &ec), -1);
	assert_int_equal(errno, EINVAL);
	close(vm_fd);
	close(kvm_fd);
}

static void test_unsupported_caps(void **state)
{
	struct kvm_vm_config cfg = small_cfg();
	struct dirty_config dc = { 0 };
	struct kvm_vm *vm;
	int r;

	TEST_REQUIRE_KVM();
	vm = make_vm(&cfg);
	/* A capability this kernel lacks, or one that makes no sense: refused, named. */
	r = kvm_vm_enable_cap(vm, 0x7fff, 0);
	assert_int_equal(r, -EOPNOTSUPP);
	assert_non_null(strstr(kvm_vm_error(vm), "not supported"));
	if (!kvm_vm_caps(vm)->ring_with_bitmap) {
		assert_int_equal(kvm_vm_enable_cap(vm, 225 /* DIRTY_LOG_RING_WITH_BITMAP */, 1),
				 -EOPNOTSUPP);
		printf("# %s\n", kvm_vm_error(vm));
	}
	dc.mode = DIRTY_MODE_DBIT;
	assert_int_equal(kvm_vm_dirty_start(vm, &dc), -EOPNOTSUPP);
	printf("# dbit: %s\n", kvm_vm_error(vm));
	dc.mode = DIRTY_MODE_RING;
	assert_int_equal(kvm_vm_dirty_start(vm, &dc), -EINVAL);
	printf("# ring without a ring: %s\n", kvm_vm_error(vm));
	/* Harvests without logging, and the ring calls in bitmap mode. */
	{
		uint64_t bm[64];

		assert_int_equal(kvm_vm_harvest_range(vm, 1, 0, 64, bm), -EINVAL);
		dc.mode = DIRTY_MODE_BITMAP;
		assert_int_equal(kvm_vm_dirty_start(vm, &dc), 0);
		assert_int_equal(kvm_vm_dirty_start(vm, &dc), -EBUSY);
		assert_true(kvm_vm_harvest_rings(vm, NULL, NULL) < 0);
		assert_int_equal(kvm_vm_harvest_range(vm, 99, 0, 64, bm), -ENOENT);
		assert_int_equal(kvm_vm_dirty_stop(vm), 0);
	}
	kvm_vm_destroy(vm);
}

static void test_ring_vm_refuses_bitmap(void **state)
{
	struct kvm_vm_config cfg = small_cfg();
	struct dirty_config dc = { .mode = DIRTY_MODE_BITMAP };
	struct kvm_caps caps;
	struct kvm_vm *vm;

	TEST_REQUIRE_KVM();
	assert_int_equal(kvm_probe(&caps), 0);
	if (!caps.ring_max_bytes)
		TEST_SKIP("this kernel has no KVM_CAP_DIRTY_LOG_RING");
	if (caps.ring_with_bitmap)
		TEST_SKIP("this kernel has KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP");
	cfg.ring_entries = 512;
	vm = make_vm(&cfg);
	assert_int_equal(kvm_vm_dirty_start(vm, &dc), -EOPNOTSUPP);
	printf("# %s\n", kvm_vm_error(vm));
	dc.mode = DIRTY_MODE_RING;
	dc.ring_entries = 1024;
	assert_int_equal(kvm_vm_dirty_start(vm, &dc), -EINVAL);
	dc.ring_entries = 0;
	assert_int_equal(kvm_vm_dirty_start(vm, &dc), 0);
	kvm_vm_destroy(vm);
}

static void test_memslot_overlap(void **state)
{
	struct kvm_vm_config cfg = small_cfg();
	struct kvm_vm *vm;
	size_t len = 2 << 20;
	void *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct kvm_userspace_memory_region raw = {
		.slot = 40,
		.guest_phys_addr = GUEST_RAM_GPA + (1 << 20),
		.memory_size = len,
		.userspace_addr = (uint64_t)(uintptr_t)mem,
	};

	TEST_REQUIRE_KVM();
	assert_true(mem != MAP_FAILED);
	vm = make_vm(&cfg);
	/* Overlaps RAM slot 1: the VMM refuses with both ranges named... */
	assert_int_equal(kvm_vm_add_memslot(vm, 40, GUEST_RAM_GPA + (1 << 20), len, mem), -EEXIST);
	assert_non_null(strstr(kvm_vm_error(vm), "overlaps memslot 1"));
	printf("# %s\n", kvm_vm_error(vm));
	/* ...and the kernel agrees when asked directly. */
	assert_int_equal(ioctl(kvm_vm_fd(vm), KVM_SET_USER_MEMORY_REGION, &raw), -1);
	assert_int_equal(errno, EEXIST);
	/* Id in use, misaligned, id out of range. */
	assert_int_equal(kvm_vm_add_memslot(vm, 1, 1ull << 40, len, mem), -EEXIST);
	assert_int_equal(kvm_vm_add_memslot(vm, 41, (1ull << 40) + 100, len, mem), -EINVAL);
	assert_int_equal(kvm_vm_add_memslot(vm, 1u << 20, 1ull << 40, len, mem), -EINVAL);
	/* A good one works, and is a region like any other. */
	assert_int_equal(kvm_vm_add_memslot(vm, 41, 1ull << 40, len, mem), 0);
	assert_int_equal(kvm_vm_nr_regions(vm), 3);
	kvm_vm_destroy(vm);
	munmap(mem, len);
}

static void test_harvest_range_rules(void **state)
{
	struct kvm_vm_config cfg = small_cfg();
	struct dirty_config dc = { .mode = DIRTY_MODE_MANUAL };
	struct kvm_clear_dirty_log clr;
	uint64_t bm[32] = { 0 };
	struct kvm_vm *vm;

	TEST_REQUIRE_KVM();
	cfg.mem_bytes = (4ull << 20) + 3 * 4096; /* slot 1: 1027 pages */
	vm = make_vm(&cfg);
	assert_int_equal(kvm_vm_dirty_start(vm, &dc), 0);
	assert_int_equal(kvm_vm_harvest_range(vm, 1, 3, 64, bm), -EINVAL);	  /* first % 64 */
	assert_non_null(strstr(kvm_vm_error(vm), "64-page rule"));
	assert_int_equal(kvm_vm_harvest_range(vm, 1, 0, 100, bm), -EINVAL);	  /* n % 64 mid-slot */
	assert_int_equal(kvm_vm_harvest_range(vm, 1, 1024, 64, bm), -EINVAL);	  /* past the end */
	assert_int_equal(kvm_vm_harvest_range(vm, 1, 1024, 3, bm), 0);		  /* tail: fine */
	assert_int_equal(kvm_vm_harvest_range(vm, 1, 0, 0, bm), -EINVAL);
	/* The kernel's own rule, asked directly. */
	memset(&clr, 0, sizeof(clr));
	clr.slot = 1;
	clr.first_page = 3;
	clr.num_pages = 64;
	clr.dirty_bitmap = bm;
	assert_int_equal(ioctl(kvm_vm_fd(vm), KVM_CLEAR_DIRTY_LOG, &clr), -1);
	assert_int_equal(errno, EINVAL);
	kvm_vm_destroy(vm);
}

static void test_config_rules(void **state)
{
	struct kvm_vm_config cfg = small_cfg();
	struct kvm_vm *vm = NULL;
	char err[512];

	TEST_REQUIRE_KVM();
	cfg.mem_bytes = 4096 * 3 + 1;
	assert_int_equal(kvm_vm_create(&cfg, &vm, err, sizeof(err)), -EINVAL);
	cfg = small_cfg();
	cfg.nr_vcpus = GUEST_MAX_VCPUS + 1;
	assert_int_equal(kvm_vm_create(&cfg, &vm, err, sizeof(err)), -EINVAL);
	cfg = small_cfg();
	cfg.nr_slots = 0;
	assert_int_equal(kvm_vm_create(&cfg, &vm, err, sizeof(err)), -EINVAL);
	cfg = small_cfg();
	cfg.mem_bytes = 600ull << 30;
	assert_int_equal(kvm_vm_create(&cfg, &vm, err, sizeof(err)), -E2BIG);
	printf("# %s\n", err);
	cfg = small_cfg();
	cfg.backing = BACKING_HUGETLB_1G;
	if (kvm_vm_create(&cfg, &vm, err, sizeof(err)) == -EOPNOTSUPP)
		printf("# hugetlb1g: %s\n", err);
	kvm_vm_destroy(vm);
	assert_true(1);
}

/* Overwrite the guest's entry with @code: the VMM must report the exit and the registers. */
static void run_broken_guest(const uint8_t *code, size_t len, const char *expect)
{
	struct kvm_vm_config cfg = small_cfg();
	struct kvm_vm *vm = make_vm(&cfg);
	struct kvm_vcpu_stats st;
	void *entry = kvm_vm_gpa_to_hva(vm, GUEST_CODE_GPA, len);

	assert_non_null(entry);
	memcpy(entry, code, len);
	assert_int_equal(kvm_vm_start(vm), 0);
	assert_int_equal(kvm_vm_wait(vm, 30), -EIO);
	printf("# %s\n", kvm_vm_error(vm));
	assert_non_null(strstr(kvm_vm_error(vm), expect));
	assert_non_null(strstr(kvm_vm_error(vm), "rip 0x40"));
	kvm_vm_vcpu_stats(vm, 0, &st);
	assert_int_equal(st.state, KVM_VCPU_ERROR);
	kvm_vm_destroy(vm);
}

static void test_unexpected_exits(void **state)
{
	static const uint8_t ud2[] = { 0x0f, 0x0b };
	static const uint8_t in_port[] = { 0x66, 0xba, 0x00, 0x05, 0xed }; /* mov $0x500,%dx; in */
	static const uint8_t bad_port[] = { 0x66, 0xba, 0x04, 0x05, 0xef }; /* out to 0x504 */
	static const uint8_t wild[] = { 0x48, 0xb8, 0, 0, 0, 0, 0, 0x80, 0, 0, /* movabs $2^55, %rax */
					0xc7, 0x00, 1, 0, 0, 0 };	    /* movl $1, (%rax) */

	TEST_REQUIRE_KVM();
	run_broken_guest(ud2, sizeof(ud2), "SHUTDOWN");
	run_broken_guest(in_port, sizeof(in_port), "unexpected port access");
	run_broken_guest(bad_port, sizeof(bad_port), "exit");
	run_broken_guest(wild, sizeof(wild), "exit");
}

static void test_guest_reports_bad_params(void **state)
{
	struct kvm_vm_config cfg = small_cfg();
	struct kvm_vm *vm;
	uint32_t bad = 99;

	TEST_REQUIRE_KVM();
	vm = make_vm(&cfg);
	assert_int_equal(kvm_vm_write_guest(vm, GUEST_PARAMS_GPA +
						       offsetof(struct guest_params, abi_version),
					    &bad, sizeof(bad)),
			 0);
	assert_int_equal(kvm_vm_start(vm), 0);
	assert_int_equal(kvm_vm_wait(vm, 30), -EIO);
	printf("# %s\n", kvm_vm_error(vm));
	assert_non_null(strstr(kvm_vm_error(vm), "bad parameters"));
	assert_int_equal(kvm_vm_write_guest(vm, 1ull << 45, &bad, 4), -EFAULT);
	kvm_vm_destroy(vm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ring_size),
		cmocka_unit_test(test_unsupported_caps),
		cmocka_unit_test(test_ring_vm_refuses_bitmap),
		cmocka_unit_test(test_memslot_overlap),
		cmocka_unit_test(test_harvest_range_rules),
		cmocka_unit_test(test_config_rules),
		cmocka_unit_test(test_unexpected_exits),
		cmocka_unit_test(test_guest_reports_bad_params),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
