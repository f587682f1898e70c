/*
 * nj-virt.c: libvirt helpers.  See nj-virt.h.
 */
#include "nj-util.h"
#include "nj-virt.h"

#include <libvirt/virterror.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void silent(void *opaque, virErrorPtr err)
{
    (void)opaque;
    (void)err;
}

void nj_virt_init(void)
{
    virInitialize();
    virSetErrorFunc(NULL, silent);
}

int nj_virt_error(const char *fmt, ...)
{
    /* Read libvirt's message before anything else can reset it. */
    const char *lv = virGetLastErrorMessage();
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return nj_error("%s: %s", what, lv && *lv ? lv : "unknown libvirt error");
}

virConnectPtr nj_virt_connect(const char *uri)
{
    virConnectPtr c = virConnectOpenAuth(uri, virConnectAuthPtrDefault, 0);
    if (!c)
        nj_virt_error("connect to '%s'", uri);
    return c;
}

static bool looks_like_uuid(const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++) {
        if (*p == '-')
            continue;
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') ||
              (*p >= 'A' && *p <= 'F')))
            return false;
        n++;
    }
    return n == 32;
}

virDomainPtr nj_virt_domain(virConnectPtr conn, const char *name_or_uuid)
{
    virDomainPtr d = NULL;
    if (looks_like_uuid(name_or_uuid))
        d = virDomainLookupByUUIDString(conn, name_or_uuid);
    if (!d)
        d = virDomainLookupByName(conn, name_or_uuid);
    if (!d)
        nj_virt_error("domain '%s'", name_or_uuid);
    return d;
}

char *nj_virt_domain_xml(virDomainPtr dom)
{
    int active = virDomainIsActive(dom);
    char *x = virDomainGetXMLDesc(dom, active == 1 ? 0 : VIR_DOMAIN_XML_INACTIVE);
    if (!x) {
        nj_virt_error("XML of domain '%s'", virDomainGetName(dom));
        return NULL;
    }
    /* libvirt allocates with malloc: hand it on as ours. */
    return x;
}

bool nj_virt_backup_active(virDomainPtr dom, char **xml)
{
    char *x = virDomainBackupGetXMLDesc(dom, 0);
    if (!x) {
        virResetLastError();
        return false;
    }
    if (xml)
        *xml = x;
    else
        free(x);
    return true;
}
