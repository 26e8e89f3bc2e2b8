/* cli_migrate.h: the CLI's VMs of either backend, shared by `run --migrate-to`, `incoming` and the demo. */
#ifndef RMAPVM_CLI_MIGRATE_H
#define RMAPVM_CLI_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cli.h"
#include "rmapvm/backend.h"

struct soft_vm;
struct soft_vm_config;
struct kvm_vm;
struct kvm_vm_config;
struct mig_source;
struct mig_info;

/* cli_vm - a VM of either backend with its dirty-tracking backend. */
struct cli_vm {
	const char *kind;	/* "soft" | "kvm" */
	struct soft_vm *svm;	/* soft: the VM (owned) */
	struct kvm_vm *kvm;	/* kvm: the VM (owned through kbe) */
	struct backend *be;	/* the backend over either */
	struct backend kbe;	/* storage of the KVM backend */
	bool ring;		/* kvm: created with dirty rings */
};

/* Create / destroy; errors are -errno with a reason in @err. */
int cli_vm_create_soft(struct cli_vm *v, const struct soft_vm_config *cfg, char *err, size_t errlen);
int cli_vm_create_kvm(struct cli_vm *v, const struct kvm_vm_config *cfg, char *err, size_t errlen);
/* Build a VM from a source's machine description (cli_vm_desc()). */
int cli_vm_from_desc(struct cli_vm *v, const char *kind, const char *desc, uint32_t nr_vcpus,
		     char *err, size_t errlen);
void cli_vm_desc(const struct cli_vm *v, char *buf, size_t len);
void cli_vm_destroy(struct cli_vm *v);
int cli_vm_start(struct cli_vm *v);
bool cli_vm_done(struct cli_vm *v);
uint64_t cli_vm_writes(struct cli_vm *v);
/* Stop the workload and verify it (soft: every stamp; kvm: the guest's own check). */
int cli_vm_finish(struct cli_vm *v, char *err, size_t errlen);

/* Migrate @v with @opt's parameters to @uri, progress bar or JSON lines; 0 = completed. */
int cli_migrate_vm(struct cli_vm *v, struct mig_source *ms, const struct run_options *opt,
		   const char *uri);
void cli_print_mig_info(const struct mig_info *i, bool json);

/* `rmapvm run` with --migrate-to / --control. */
int cli_run_migrate(const struct run_options *opt);
/* `rmapvm incoming`. */
int cli_incoming(int argc, char **argv);

#endif /* RMAPVM_CLI_MIGRATE_H */
