/* backing.c: host memory for guest RAM and the host page-table queries that pick mapping levels. */
#include <errno.h>
#include <fcntl.h>
#include <linux/mman.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rmapvm/backing.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

/* /proc/self/pagemap entry bits and /proc/kpageflags bits (Documentation/admin-guide/mm). */
#define PM_PRESENT	(1ull << 63)
#define PM_PFN_MASK	((1ull << 55) - 1)
#define KPF_HUGE	17
#define KPF_THP		22

static const char *const backing_names[BACKING_NR_TYPES] = {
	[BACKING_ANON_4K] = "4k",
	[BACKING_THP] = "thp",
	[BACKING_HUGETLB_2M] = "hugetlb",
	[BACKING_HUGETLB_1G] = "hugetlb1g",
};

const char *backing_name(enum backing_type type)
{
	return type < BACKING_NR_TYPES ? backing_names[type] : "?";
}

int backing_parse(const char *s, enum backing_type *type)
{
	int i;

	for (i = 0; i < BACKING_NR_TYPES; i++) {
		if (!strcasecmp(s, backing_names[i])) {
			*type = i;
			return 0;
		}
	}
	if (!strcasecmp(s, "hugetlb2m")) {
		*type = BACKING_HUGETLB_2M;
		return 0;
	}
	return -EINVAL;
}

static size_t backing_page_size(enum backing_type type)
{
	switch (type) {
	case BACKING_THP:
	case BACKING_HUGETLB_2M:
		return SZ_2M;
	case BACKING_HUGETLB_1G:
		return SZ_1G;
	default:
		return SZ_4K;
	}
}

int backing_max_level(enum backing_type type)
{
	switch (type) {
	case BACKING_THP:
	case BACKING_HUGETLB_2M:
		return PG_LEVEL_2M;
	case BACKING_HUGETLB_1G:
		return PG_LEVEL_1G;
	default:
		return PG_LEVEL_4K;
	}
}

int backing_alloc(struct mem_backing *b, enum backing_type type, size_t size)
{
	size_t page = backing_page_size(type), len;
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
	void *p;

	if (type >= BACKING_NR_TYPES || !size)
		return -EINVAL;
	len = ALIGN_UP(size, page);
	if (len < size)
		return -EINVAL;
	memset(b, 0, sizeof(*b));

	if (type == BACKING_HUGETLB_2M || type == BACKING_HUGETLB_1G) {
		flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB |
			(type == BACKING_HUGETLB_2M ? MAP_HUGE_2MB : MAP_HUGE_1GB);
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0);
		if (p == MAP_FAILED)
			return errno == ENOMEM || errno == EINVAL ? -EOPNOTSUPP : -errno;
		b->hva = (hva_t)p;
	} else {
		/* Over-allocate to align to 2 MiB, so THP can back whole frames. */
		size_t map_len = len + SZ_2M;
		uint8_t *raw = mmap(NULL, map_len, PROT_READ | PROT_WRITE, flags, -1, 0);
		uint8_t *start;

		if (raw == MAP_FAILED)
			return -ENOMEM;
		start = (uint8_t *)ALIGN_UP((uintptr_t)raw, SZ_2M);
		if (start > raw)
			munmap(raw, start - raw);
		if (start + len < raw + map_len)
			munmap(start + len, raw + map_len - (start + len));
		madvise(start, len, type == BACKING_THP ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
		b->hva = (hva_t)start;
	}
	b->type = type;
	b->size = len;
	b->page_size = page;
	return 0;
}

void backing_free(struct mem_backing *b)
{
	if (b->hva)
		munmap((void *)b->hva, b->size);
	memset(b, 0, sizeof(*b));
}

int backing_populate(hva_t hva, size_t len, bool write)
{
	hva_t start = ALIGN_DOWN(hva, PAGE_SIZE);

	len = ALIGN_UP(hva + len, PAGE_SIZE) - start;
	if (madvise((void *)start, len, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ))
		return errno == EINVAL ? -EFAULT : -errno;
	return 0;
}

static int pagemap_fd = -1, kpageflags_fd = -1;
static pthread_once_t host_pt_once = PTHREAD_ONCE_INIT;

static void host_pt_open(void)
{
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	kpageflags_fd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
}

/*
 * Ask the host page tables: pagemap gives the pfn of @hva (root only sees
 * pfns), kpageflags says whether that pfn belongs to a THP. hugetlbfs sizes
 * are those of the backing the VM registered.
 */
int host_mapping_level(const struct mem_backing *b, hva_t hva)
{
	uint64_t pm, flags;

	if (b && b->ops)
		return b->ops->mapping_level(b, hva);
	if (b && (b->type == BACKING_HUGETLB_2M || b->type == BACKING_HUGETLB_1G))
		return backing_max_level(b->type);
	if (b && b->type == BACKING_ANON_4K)
		return PG_LEVEL_4K; /* MADV_NOHUGEPAGE: the host never maps it huge */

	pthread_once(&host_pt_once, host_pt_open);
	if (pagemap_fd < 0 || kpageflags_fd < 0)
		return PG_LEVEL_4K;
	if (pread(pagemap_fd, &pm, sizeof(pm), (off_t)(hva >> PAGE_SHIFT) * 8) != sizeof(pm))
		return PG_LEVEL_4K;
	if (!(pm & PM_PRESENT) || !(pm & PM_PFN_MASK))
		return PG_LEVEL_4K;
	if (pread(kpageflags_fd, &flags, sizeof(flags), (off_t)(pm & PM_PFN_MASK) * 8) !=
	    sizeof(flags))
		return PG_LEVEL_4K;
	if (flags & (1ull << KPF_THP))
		return PG_LEVEL_2M;
	return PG_LEVEL_4K;
}
