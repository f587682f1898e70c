/*
 * nj-virt.h: the libvirt calls the agent makes, with libvirt's error
 * captured into nightjar's last error at once (every libvirt call resets
 * libvirt's own).  Handles are libvirt's; nothing here is cached.
 */
#ifndef NJ_VIRT_H
#define NJ_VIRT_H

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdbool.h>

/* Silence libvirt's default error printing (we report errors ourselves). */
void nj_virt_init(void);

/* Set the last error to "what: libvirt's message".  Returns -1. */
int nj_virt_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

virConnectPtr nj_virt_connect(const char *uri);
/* By UUID (when it looks like one) or name. */
virDomainPtr nj_virt_domain(virConnectPtr conn, const char *name_or_uuid);

/* The domain's XML: live when running (with the DAC label), else the
 * inactive definition.  New string. */
char *nj_virt_domain_xml(virDomainPtr dom);

/* True when a backup job is active on the domain; *xml gets its XML. */
bool nj_virt_backup_active(virDomainPtr dom, char **xml);

#endif
