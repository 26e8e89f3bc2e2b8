/* backend.h: the dirty-tracking backend interface: all that migrate/ knows about a VM. */
#ifndef RMAPVM_BACKEND_H
#define RMAPVM_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include "rmapvm/types.h"

/* How dirty pages are tracked. */
enum dirty_mode {
	DIRTY_MODE_BITMAP,	/* classic GET_DIRTY_LOG: get-and-clear per call */
	DIRTY_MODE_MANUAL,	/* manual protect: get copies, ranged clear re-protects */
	DIRTY_MODE_RING,	/* per-vCPU dirty rings */
	DIRTY_MODE_DBIT,	/* D-bit / PML-like logging (soft backend only) */
	DIRTY_MODE_NR,
};

/* Parse "bitmap|manual|ring|dbit"; -EINVAL otherwise. */
int dirty_mode_parse(const char *s, enum dirty_mode *mode);
const char *dirty_mode_name(enum dirty_mode mode);

/* backend_region - one guest RAM memslot as the migration sees it. */
struct backend_region {
	uint32_t slot;		/* (as_id << 16) | id */
	gpa_t gpa;		/* guest physical start */
	uint64_t size;		/* bytes */
	uint8_t *hva;		/* where the host reads and writes the contents */
};

struct dirty_config {
	enum dirty_mode mode;
	bool initially_set;	/* manual mode: KVM_DIRTY_LOG_INITIALLY_SET */
	uint32_t ring_entries;	/* ring mode: entries per vCPU, a power of two */
};

/* Called for each harvested ring entry (slot, page offset in slot). */
typedef void (*ring_entry_fn)(void *opaque, uint32_t slot, uint64_t offset);

struct backend;

/*
 * backend_ops - every call returns 0 or -errno and never exits. Calls that
 * touch dirty state are safe from several harvester threads at once when
 * they name disjoint ranges.
 */
struct backend_ops {
	const char *name;
	/* Memory layout: fill up to @max regions, return how many there are. */
	int (*get_regions)(struct backend *be, struct backend_region *regions, int max);
	int (*nr_vcpus)(struct backend *be);
	/* Stop / restart all vCPUs (at an exit / access boundary). */
	int (*pause)(struct backend *be);
	int (*resume)(struct backend *be);
	/* Start / stop dirty tracking on every RAM slot. */
	int (*dirty_start)(struct backend *be, const struct dirty_config *cfg);
	int (*dirty_stop)(struct backend *be);
	/*
	 * Harvest [first_page, first_page + npages) of @slot: get the dirty bits
	 * into @bitmap (bit i = page first_page + i, little-endian 64-bit words)
	 * and re-protect those pages. first_page is a multiple of 64; npages is
	 * a multiple of 64 unless the range reaches the slot's end.
	 */
	int (*harvest_range)(struct backend *be, uint32_t slot, uint64_t first_page,
			     uint64_t npages, uint64_t *bitmap);
	/*
	 * Ring mode: deliver every published entry of every vCPU, then reset
	 * (re-protect) them. Read the pages only after the call returns: a
	 * write may still land between the push and the reset.
	 */
	int (*harvest_rings)(struct backend *be, ring_entry_fn fn, void *opaque);
	/* vCPU state into / from an opaque, versioned blob (vCPUs paused). */
	int (*save_vcpu)(struct backend *be, int vcpu, void *buf, size_t len, size_t *used);
	int (*load_vcpu)(struct backend *be, int vcpu, const void *buf, size_t len);
	/* Throttle vCPUs to @pct percent of their time (auto-converge); 0 = off. */
	int (*throttle)(struct backend *be, int pct);
	void (*destroy)(struct backend *be);
};

struct backend {
	const struct backend_ops *ops;
	void *priv;
};

#endif /* RMAPVM_BACKEND_H */
