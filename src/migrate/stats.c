/* stats.c: migration statistics as JSON objects (QEMU query-migrate field names where they exist). */
#include <stdio.h>

#include "migrate_internal.h"

char *mig_info_json(const struct mig_info *i, char *buf, size_t len)
{
	snprintf(buf, len,
		 "{\"status\":\"%s\",\"total-time\":%llu,\"setup-time\":%llu,\"downtime\":%llu,"
		 "\"expected-downtime\":%llu,\"ram\":{\"transferred\":%llu,\"remaining\":%llu,"
		 "\"total\":%llu,\"duplicate\":%llu,\"normal\":%llu,\"normal-bytes\":%llu,"
		 "\"dirty-pages-rate\":%.0f,\"mbps\":%.2f,\"dirty-sync-count\":%llu,"
		 "\"page-size\":%lu},\"cpu-throttle-percentage\":%d,\"harvest-ms\":%.3f,"
		 "\"max-harvest-us\":%.1f,\"downtime-breakdown\":{\"final-pages\":%llu,"
		 "\"final-ms\":%llu,\"vcpu-ms\":%llu,\"ack-ms\":%llu},\"teardown-ms\":%llu%s%s%s}",
		 mig_state_name(i->state), (unsigned long long)i->total_ms,
		 (unsigned long long)i->setup_ms, (unsigned long long)i->downtime_ms,
		 (unsigned long long)i->expected_downtime_ms, (unsigned long long)i->transferred,
		 (unsigned long long)i->remaining, (unsigned long long)i->total,
		 (unsigned long long)i->zero_pages, (unsigned long long)i->normal_pages,
		 (unsigned long long)i->normal_bytes, i->dirty_pages_rate, i->mbps,
		 (unsigned long long)i->dirty_sync_count, PAGE_SIZE, i->throttle_pct,
		 (double)i->harvest_ns / 1e6, (double)i->max_harvest_ns / 1e3,
		 (unsigned long long)i->final_pages, (unsigned long long)i->final_ms,
		 (unsigned long long)i->vcpu_ms, (unsigned long long)i->ack_ms,
		 (unsigned long long)i->teardown_ms, i->error ? ",\"error-desc\":\"" : "",
		 i->error ? i->error_msg : "", i->error ? "\"" : "");
	/* error messages are ours and contain no quotes or backslashes worth escaping */
	for (char *p = buf; *p; p++)
		if (*p == '\n')
			*p = ' ';
	return buf;
}

char *mig_round_json(const struct mig_round_info *r, char *buf, size_t len)
{
	snprintf(buf, len,
		 "{\"round\":%u,\"est-dirty-pages\":%llu,\"dirty-pages\":%llu,\"pages\":%llu,"
		 "\"zero-pages\":%llu,\"bytes\":%llu,\"ms\":%.3f,\"mbps\":%.2f,"
		 "\"dirty-pages-rate\":%.0f,\"harvest-ms\":%.3f,\"harvest-calls\":%llu,"
		 "\"max-harvest-us\":%.1f,\"est-remaining-pages\":%llu,\"expected-downtime\":%llu,"
		 "\"cpu-throttle-percentage\":%d}",
		 r->round, (unsigned long long)r->est_dirty_pages, (unsigned long long)r->dirty_pages,
		 (unsigned long long)r->pages, (unsigned long long)r->zero_pages,
		 (unsigned long long)r->bytes, (double)r->duration_ns / 1e6,
		 r->bandwidth * 8 / 1e6, r->dirty_rate, (double)r->harvest_ns / 1e6,
		 (unsigned long long)r->harvest_calls, (double)r->max_harvest_ns / 1e3,
		 (unsigned long long)r->est_remaining_pages,
		 (unsigned long long)r->expected_downtime_ms, r->throttle_pct);
	return buf;
}
