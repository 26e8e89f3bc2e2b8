/* backing.h: host memory behind guest RAM (anonymous 4 KiB, THP, hugetlbfs) and host page-size queries. */
#ifndef RMAPVM_BACKING_H
#define RMAPVM_BACKING_H

#include <stddef.h>
#include "rmapvm/types.h"

enum backing_type {
	BACKING_ANON_4K,     /* anonymous, MADV_NOHUGEPAGE: host maps 4 KiB */
	BACKING_THP,	     /* anonymous, 2 MiB aligned, MADV_HUGEPAGE */
	BACKING_HUGETLB_2M,  /* MAP_HUGETLB | MAP_HUGE_2MB */
	BACKING_HUGETLB_1G,  /* MAP_HUGETLB | MAP_HUGE_1GB */
	BACKING_NR_TYPES,
};

struct mem_backing;

/*
 * mem_backing_ops - a backing whose pages the host can swap under the guest
 * (src/mmu/host_mem.c: a memfd page pool). NULL ops: the spte holds the hva.
 *  host_addr      where the page now behind @hva can be reached for good
 *                 (the host "pfn"); what a leaf spte records. Lockless.
 *  mapping_level  level at which the host maps @hva now.
 */
struct mem_backing_ops {
	hva_t (*host_addr)(const struct mem_backing *b, hva_t hva);
	int (*mapping_level)(const struct mem_backing *b, hva_t hva);
};

/* mem_backing - one host mapping that guest memory slots point into. */
struct mem_backing {
	enum backing_type type;
	hva_t hva;	       /* start of the mapping (aligned to page_size) */
	size_t size;	       /* bytes, a multiple of page_size */
	size_t page_size;      /* page size the mapping was created with */
	const struct mem_backing_ops *ops; /* NULL for plain anonymous/hugetlbfs memory */
	void *priv;			   /* owner of @ops */
};

/*
 * backing_host_addr() - the host address a leaf spte for @hva records, as
 * get_user_pages would resolve it (hva -> pfn): @hva itself unless the
 * backing can replace pages under the same hva (then a stale spte keeps
 * pointing at the old page, as a stale pfn would in KVM).
 */
static inline hva_t backing_host_addr(const struct mem_backing *b, hva_t hva)
{
	if (!b || !b->ops)
		return hva;
	return b->ops->host_addr(b, hva);
}

/*
 * backing_alloc() - map @size bytes of @type (rounded up to its page size).
 * Returns 0, -EINVAL (bad type/size), -ENOMEM, or -EOPNOTSUPP when the host
 * has no hugetlbfs pages of that size (callers skip cleanly).
 */
int backing_alloc(struct mem_backing *b, enum backing_type type, size_t size);
void backing_free(struct mem_backing *b);

/* Parse "4k" | "thp" | "hugetlb" (2 MiB) | "hugetlb1g"; -EINVAL otherwise. */
int backing_parse(const char *s, enum backing_type *type);
const char *backing_name(enum backing_type type);

/*
 * host_mapping_level() - the level at which the host currently maps @hva,
 * asked of the host's page tables: /proc/self/pagemap gives the pfn and
 * /proc/kpageflags whether it is a THP or hugetlb page; hugetlb sizes come
 * from the backing. @b may be NULL (unknown memory). Where the host cannot
 * be asked (no permission) the answer is PG_LEVEL_4K, which is always safe.
 * A page that is not populated maps at PG_LEVEL_4K.
 */
int host_mapping_level(const struct mem_backing *b, hva_t hva);

/*
 * backing_populate() - make [hva, hva + len) present in the host page
 * tables without changing its contents (MADV_POPULATE_WRITE/READ), as
 * get_user_pages does for a fault. Returns 0 or -errno (-EFAULT: no memory).
 */
int backing_populate(hva_t hva, size_t len, bool write);

/* Nominal largest level a backing type can give (prefault without touching memory). */
int backing_max_level(enum backing_type type);

#endif /* RMAPVM_BACKING_H */
