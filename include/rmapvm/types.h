/* types.h: address typedefs, page-size levels and small helpers shared by every layer. */
#ifndef RMAPVM_TYPES_H
#define RMAPVM_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * One typedef per address kind, so a mix-up is visible in review:
 *   gfn_t  guest frame number (gpa >> PAGE_SHIFT)
 *   gpa_t  guest physical address
 *   hva_t  host virtual address (where the VMM mapped guest memory)
 */
typedef uint64_t gfn_t;
typedef uint64_t gpa_t;
typedef uintptr_t hva_t;

#define PAGE_SHIFT 12
#define PAGE_SIZE  (1ul << PAGE_SHIFT)
#define PAGE_MASK  (~(PAGE_SIZE - 1))

/* Mapping levels: 1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB; the root table is level 4. */
enum pg_level {
	PG_LEVEL_NONE = 0,
	PG_LEVEL_4K = 1,
	PG_LEVEL_2M = 2,
	PG_LEVEL_1G = 3,
	PG_LEVEL_512G = 4,
};
#define PG_LEVEL_MAX_LEAF PG_LEVEL_1G
#define PT64_ROOT_LEVEL	  PG_LEVEL_512G
#define PT64_ENT_PER_PAGE 512

/* gfn shift, page count and byte size of one mapping at @level. */
#define KVM_HPAGE_GFN_SHIFT(level) (((level) - 1) * 9)
#define KVM_PAGES_PER_HPAGE(level) (1ull << KVM_HPAGE_GFN_SHIFT(level))
#define KVM_HPAGE_SIZE(level)	   (PAGE_SIZE << KVM_HPAGE_GFN_SHIFT(level))

#define SZ_4K (1ull << 12)
#define SZ_2M (1ull << 21)
#define SZ_1G (1ull << 30)

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define ALIGN_UP(x, a)	 (((x) + (a) - 1) & ~((__typeof__(x))(a) - 1))
#define ALIGN_DOWN(x, a) ((x) & ~((__typeof__(x))(a) - 1))
#define IS_ALIGNED(x, a) (((x) & ((__typeof__(x))(a) - 1)) == 0)
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

static inline gfn_t gpa_to_gfn(gpa_t gpa)
{
	return gpa >> PAGE_SHIFT;
}

static inline gpa_t gfn_to_gpa(gfn_t gfn)
{
	return gfn << PAGE_SHIFT;
}

#endif /* RMAPVM_TYPES_H */
