/* backend.c: names of the dirty-tracking modes of the backend interface. */
#include <errno.h>
#include <string.h>

#include "rmapvm/backend.h"

static const char *const dirty_mode_names[DIRTY_MODE_NR] = {
	[DIRTY_MODE_BITMAP] = "bitmap",
	[DIRTY_MODE_MANUAL] = "manual",
	[DIRTY_MODE_RING] = "ring",
	[DIRTY_MODE_DBIT] = "dbit",
};

int dirty_mode_parse(const char *s, enum dirty_mode *mode)
{
	int i;

	for (i = 0; i < DIRTY_MODE_NR; i++) {
		if (s && !strcmp(s, dirty_mode_names[i])) {
			*mode = (enum dirty_mode)i;
			return 0;
		}
	}
	return -EINVAL;
}

const char *dirty_mode_name(enum dirty_mode mode)
{
	return (unsigned int)mode < DIRTY_MODE_NR ? dirty_mode_names[mode] : "?";
}
