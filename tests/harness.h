/* harness.h: shared helpers for the cmocka test executables. */
#ifndef RMAPVM_TEST_HARNESS_H
#define RMAPVM_TEST_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* True when /dev/kvm can be opened read-write. */
bool test_have_kvm(void);

/* Skip the current test with a one-line reason printed to stdout. */
#define TEST_SKIP(...)                                                                             \
	do {                                                                                       \
		printf("# SKIP: " __VA_ARGS__);                                                    \
		printf("\n");                                                                      \
		skip();                                                                            \
	} while (0)

#define TEST_REQUIRE_KVM()                                                                         \
	do {                                                                                       \
		if (!test_have_kvm())                                                              \
			TEST_SKIP("/dev/kvm is not available; test needs real KVM");               \
	} while (0)

/* Scale factor for slow builds (sanitizers): iterations are divided by it. */
int test_scale(void);

/* Deterministic PRNG for tests. */
uint64_t test_rand(uint64_t *state);

#endif /* RMAPVM_TEST_HARNESS_H */
